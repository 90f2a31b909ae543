//! A message as it travels between daemons: the sender's row, provenance included
//! (chain, budget, hops), and the sender's name, which the target checks against
//! the subject it came on (only the sender's worker may publish there).

use serde::{Deserialize, Serialize};

use crate::error::err;
use crate::error::Result;
use crate::store::Message;

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

pub(super) fn encode(from: &str, m: &Message) -> Vec<u8> {
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

/// Several encoded messages (of one sender to one target, in order) as one
/// JetStream message: a JSON array of them.
pub(super) fn batch<'a>(encoded: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, e) in encoded.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    out
}

/// `(from, message)` of each message a JetStream message carries: one (an
/// object) or a batch (an array, see [`batch`]).
pub(super) fn decode_all(bytes: &[u8]) -> Result<Vec<(String, Message)>> {
    let bad =
        |e: serde_json::Error| err!(libc::EINVAL, "a lattice message that does not parse: {e}");
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return Ok(vec![decode(bytes)?]);
    }
    let all: Vec<Wire> = serde_json::from_slice(bytes).map_err(bad)?;
    if all.is_empty() {
        return Err(err!(libc::EINVAL, "a lattice batch without messages"));
    }
    Ok(all.into_iter().map(from_wire).collect())
}

/// `(from, message)`.
pub(super) fn decode(bytes: &[u8]) -> Result<(String, Message)> {
    let w: Wire = serde_json::from_slice(bytes)
        .map_err(|e| err!(libc::EINVAL, "a lattice message that does not parse: {e}"))?;
    Ok(from_wire(w))
}

fn from_wire(w: Wire) -> (String, Message) {
    let source = match w.source_bytes {
        Some(b) => b,
        None => w.source.into_bytes(),
    };
    (
        w.from,
        Message {
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_provenance() {
        let m = Message {
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
        let bin = Message {
            source: vec![0xff, 0],
            ..m
        };
        assert_eq!(
            decode(&encode("alice", &bin)).unwrap().1.source,
            vec![0xff, 0]
        );
    }

    #[test]
    fn a_batch_carries_its_messages_in_order() {
        let m = |id: &str| Message {
            id: id.into(),
            to: "bob".into(),
            kind: "script".into(),
            name: format!("{id}.rhai"),
            source: b"1".to_vec(),
            ..Default::default()
        };
        let one = encode("alice", &m("a"));
        assert_eq!(decode_all(&one).unwrap()[0].1.id, "a");
        let (a, b, c) = (
            encode("alice", &m("a")),
            encode("alice", &m("b")),
            encode("carol", &m("c")),
        );
        let all = decode_all(&batch([&a[..], &b[..], &c[..]])).unwrap();
        let ids: Vec<(&str, &str)> = all
            .iter()
            .map(|(f, m)| (f.as_str(), m.id.as_str()))
            .collect();
        assert_eq!(ids, [("alice", "a"), ("alice", "b"), ("carol", "c")]);
        assert!(decode_all(b"[]").is_err());
        assert!(decode_all(b"[{\"from\": 1}]").is_err());
        assert!(decode_all(&batch([&a[..], &b"{"[..]])).is_err());
    }
}
