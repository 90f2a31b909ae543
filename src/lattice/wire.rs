//! A message as it travels between daemons: the sender's row, provenance included
//! (chain, budget, hops), and the sender's name, which the target checks against
//! the subject it came on (only the sender's worker may publish there).

use serde::{Deserialize, Serialize};

use crate::error::err;
use crate::error::Result;
use crate::store::Outgoing;

#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    from: String,
    id: String,
    to: String,
    kind: String,
    name: String,
    /// The script, when it is UTF-8 (always, for scripts that can run) ...
    #[serde(default)]
    source: String,
    /// ... or its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_bytes: Option<Vec<u8>>,
    params: String,
    hops: u32,
    payload: String,
    created_at: i64,
    chain: Vec<String>,
    budget: u64,
}

pub(super) fn encode(from: &str, m: &Outgoing) -> Vec<u8> {
    let (source, source_bytes) = match std::str::from_utf8(&m.source) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (String::new(), Some(m.source.clone())),
    };
    let w = Wire {
        from: from.to_string(),
        id: m.id.clone(),
        to: m.to.clone(),
        kind: m.kind.clone(),
        name: m.name.clone(),
        source,
        source_bytes,
        params: m.params.clone(),
        hops: m.hops,
        payload: m.payload.clone(),
        created_at: m.created_at,
        chain: m.chain.clone(),
        budget: m.budget,
    };
    serde_json::to_vec(&w).expect("a message serializes")
}

/// `(from, message)`.
pub(super) fn decode(bytes: &[u8]) -> Result<(String, Outgoing)> {
    let w: Wire = serde_json::from_slice(bytes)
        .map_err(|e| err!(libc::EINVAL, "a lattice message that does not parse: {e}"))?;
    let source = match w.source_bytes {
        Some(b) => b,
        None => w.source.into_bytes(),
    };
    Ok((
        w.from,
        Outgoing {
            id: w.id,
            to: w.to,
            kind: w.kind,
            name: w.name,
            source,
            params: w.params,
            hops: w.hops,
            payload: w.payload,
            created_at: w.created_at,
            chain: w.chain,
            budget: w.budget,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_provenance() {
        let m = Outgoing {
            id: "m1".into(),
            to: "bob".into(),
            kind: "script".into(),
            name: "job.rhai".into(),
            source: b"1 + 1".to_vec(),
            params: "{}".into(),
            hops: 2,
            payload: String::new(),
            created_at: 7,
            chain: vec!["carol".into(), "alice".into()],
            budget: 40,
        };
        let (from, back) = decode(&encode("alice", &m)).unwrap();
        assert_eq!(from, "alice");
        assert_eq!(back.chain, m.chain);
        assert_eq!(
            (back.hops, back.budget, back.source),
            (2, 40, m.source.clone())
        );
        let bin = Outgoing {
            source: vec![0xff, 0],
            ..m
        };
        assert_eq!(
            decode(&encode("alice", &bin)).unwrap().1.source,
            vec![0xff, 0]
        );
    }
}
