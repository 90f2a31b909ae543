//! A credentials file (`<worker>.creds`, `admin.creds`): who connects, to which
//! server and lattice, and for which peers. Read by workers, `lattice provision`
//! and `lattice release`; written by `lattice init`. Its password is never shown.

use std::path::Path;

use crate::error::err;
use crate::error::Result;

/// The operator's user (`admin.creds`): `peerfs lattice provision` makes and
/// checks the lattice's stream, directory and consumers with it. No worker has
/// these rights.
pub const ADMIN: &str = "admin";

/// A worker's credentials file: `user` and `password` (TOML).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Creds {
    pub user: String,
    pub password: String,
    /// The lattice these credentials are for.
    #[serde(default)]
    pub lattice: Option<String>,
    /// Where the server listens (used when `--nats` is not given).
    #[serde(default)]
    pub url: Option<String>,
    /// The peers this worker may serve (the server's permissions say the same);
    /// absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
}

/// Never the password.
impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("user", &self.user)
            .field("password", &"<secret>")
            .field("lattice", &self.lattice)
            .field("url", &self.url)
            .field("peers", &self.peers)
            .finish()
    }
}

impl Creds {
    pub fn read(path: &Path) -> Result<Creds> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err!(
                e.raw_os_error().unwrap_or(libc::EIO),
                "credentials {}: {e}",
                path.display()
            )
        })?;
        toml::from_str(&text).map_err(|e| err!(libc::EINVAL, "credentials {}: {e}", path.display()))
    }
}
