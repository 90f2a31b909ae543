//! The per-peer `groups` file: which other peers belong to which group.

use std::collections::HashMap;

use cedar_policy::{EntityId, EntityUid};

use super::{entity_type, PolicyError};

/// Group membership as read from a peer's `groups` file.
///
/// Format: one `group: peer peer ...` line per group. Blank lines and `#`
/// comments (whole-line or trailing) are allowed. Group and peer names are
/// 1-64 characters of ASCII letters, digits, `-`, `_` and `.`, not starting
/// with `.`. A group may appear on several lines (the members are merged) and
/// may have no members.
///
/// `Groups::default()` has no groups.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    /// peer name -> its groups (sorted, deduplicated) and their Cedar uids.
    by_peer: HashMap<String, PeerGroups>,
    /// all group names seen (sorted, deduplicated), including empty groups.
    groups: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PeerGroups {
    pub(crate) names: Vec<String>,
    pub(crate) uids: Vec<EntityUid>,
}

/// Is `name` a valid peer or group name?
/// 1-64 chars of ASCII letters, digits, `-`, `_`, `.`; not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Groups {
    /// Parse a `groups` file. Errors name the (1-based) line number.
    pub fn parse(text: &str) -> Result<Groups, PolicyError> {
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        let mut groups: Vec<String> = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let lineno = idx + 1;
            let line = match raw.find('#') {
                Some(pos) => &raw[..pos],
                None => raw,
            }
            .trim();
            if line.is_empty() {
                continue;
            }
            let err = |msg: String| PolicyError {
                message: format!("groups line {lineno}: {msg}"),
            };
            let Some((group, rest)) = line.split_once(':') else {
                return Err(err(format!(
                    "expected `group: peer peer ...`, got `{line}`"
                )));
            };
            let group = group.trim();
            if !valid_name(group) {
                return Err(err(format!(
                    "invalid group name `{group}` (1-64 of letters, digits, `-`, `_`, `.`; not starting with `.`)"
                )));
            }
            groups.push(group.to_string());
            for peer in rest.split_whitespace() {
                if !valid_name(peer) {
                    return Err(err(format!(
                        "invalid peer name `{peer}` in group `{group}` (1-64 of letters, digits, `-`, `_`, `.`; not starting with `.`)"
                    )));
                }
                members
                    .entry(peer.to_string())
                    .or_default()
                    .push(group.to_string());
            }
        }
        groups.sort();
        groups.dedup();
        let group_type = entity_type("Group")?;
        let by_peer = members
            .into_iter()
            .map(|(peer, mut names)| {
                names.sort();
                names.dedup();
                let uids = names
                    .iter()
                    .map(|g| EntityUid::from_type_name_and_id(group_type.clone(), EntityId::new(g)))
                    .collect();
                (peer, PeerGroups { names, uids })
            })
            .collect();
        Ok(Groups { by_peer, groups })
    }

    /// The groups `peer` belongs to, sorted.
    pub fn groups_of(&self, peer: &str) -> Vec<String> {
        self.by_peer
            .get(peer)
            .map(|g| g.names.clone())
            .unwrap_or_default()
    }

    /// All group names defined in the file (including groups with no members), sorted.
    pub fn group_names(&self) -> &[String] {
        &self.groups
    }

    /// True when the file defined no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub(crate) fn uids_of(&self, peer: &str) -> &[EntityUid] {
        self.by_peer
            .get(peer)
            .map(|g| g.uids.as_slice())
            .unwrap_or(&[])
    }
}
