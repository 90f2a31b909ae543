//! Rows read back from a store are untrusted input. A store is a file: one copied
//! in from elsewhere, or written by anyone who could reach it, may hold any bytes in
//! any column. Every queued script and every outgoing message is checked here as
//! the mount checks what it takes in (names, peer names, ids, sizes, encodings,
//! hop counts, chains) before the executor sees it; a row that fails is refused
//! with the reason and never runs.

use rusqlite::types::ValueRef;
use rusqlite::Row;

use super::{Job, Message};
use crate::names::{check_peer_name, check_segment, is_staging_name};

/// The queue's columns, in the order [`job`] reads them.
pub(crate) const JOB_COLS: &str =
    "seq,id,name,source,caller,params,msg_id,hops,submitted_at,chain,budget,attempts";
/// The `sent` table's columns, in the order [`outgoing`] reads them.
pub(crate) const SENT_COLS: &str =
    "seq,id,to_peer,kind,name,source,params,hops,payload,created_at,chain,budget";

/// Most sends a stored row may say led to it (the daemon's hop limit is lower).
pub const MAX_STORED_HOPS: i64 = 1024;
/// Most bytes of a script or a params/payload text in a stored row.
pub const MAX_ROW_BYTES: usize = 64 << 20;
/// Longest id (run ids are 26 characters; message ids add `-N` per hop).
pub const MAX_ID: usize = 256;

/// Why a stored row is refused (it names the column and the rule it breaks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow(pub String);

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRow {}

/// `bad!("{what} is ...")`: a [`BadRow`] with a formatted reason.
macro_rules! bad {
    ($($arg:tt)*) => {
        BadRow(format!($($arg)*))
    };
}

type Check<T> = std::result::Result<T, BadRow>;

fn text(r: &Row, i: usize, what: &str) -> rusqlite::Result<Check<String>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Text(b) => match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(bad!(
                "{what} is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            )),
        },
        other => Err(bad!("{what} is {:?}, not text", other.data_type())),
    })
}

fn opt_text(r: &Row, i: usize, what: &str) -> rusqlite::Result<Check<Option<String>>> {
    if let ValueRef::Null = r.get_ref(i)? {
        return Ok(Ok(None));
    }
    Ok(text(r, i, what)?.map(Some))
}

fn bytes(r: &Row, i: usize, what: &str) -> rusqlite::Result<Check<Vec<u8>>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Blob(b) | ValueRef::Text(b) if b.len() <= MAX_ROW_BYTES => Ok(b.to_vec()),
        ValueRef::Blob(b) | ValueRef::Text(b) => Err(bad!(
            "{what} is {} bytes: at most {MAX_ROW_BYTES} are allowed",
            b.len()
        )),
        other => Err(bad!("{what} is {:?}, not bytes", other.data_type())),
    })
}

fn int(r: &Row, i: usize, what: &str) -> rusqlite::Result<Check<i64>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Integer(n) => Ok(n),
        other => Err(bad!("{what} is {:?}, not an integer", other.data_type())),
    })
}

fn in_range(n: i64, lo: i64, hi: i64, what: &str) -> Check<i64> {
    if n < lo || n > hi {
        return Err(bad!("{what} is {n}: it must be between {lo} and {hi}"));
    }
    Ok(n)
}

/// A run or message id: letters, digits and `-`, at most [`MAX_ID`] bytes.
pub fn check_id(id: &str, what: &str) -> Check<()> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(bad!(
            "{what} has {} bytes: it must have 1 to {MAX_ID}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(bad!(
            "{what} {id:?} has {c:?}: only letters, digits and '-'"
        ));
    }
    Ok(())
}

/// A script's file name as an inbox takes it: one valid segment, not a staging name.
pub fn check_script_name(name: &str) -> Check<()> {
    check_segment("script name", name).map_err(|e| BadRow(e.message))?;
    if is_staging_name(name) {
        return Err(bad!(
            "script name {name:?} is a staging name (begins with '.' or ends with '~')"
        ));
    }
    Ok(())
}

fn peer(name: &str, what: &str) -> Check<()> {
    check_peer_name(name).map_err(|e| bad!("{what}: {}", e.message))
}

fn json_object(text: &str, what: &str) -> Check<()> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(bad!("{what} is not a JSON object")),
        Err(e) => Err(bad!("{what} is not JSON: {e}")),
    }
}

/// A stored chain: peer names separated by spaces, oldest first. Empty (rows from
/// before chains were kept) means the chain is just `last`.
pub fn parse_chain(text: Option<&str>, last: &str) -> Check<Vec<String>> {
    let text = text.unwrap_or("");
    if text.is_empty() {
        return Ok(vec![last.to_string()]);
    }
    let chain: Vec<String> = text.split(' ').map(str::to_string).collect();
    if chain.len() as i64 > MAX_STORED_HOPS + 1 {
        return Err(bad!("chain has {} peers: too many", chain.len()));
    }
    for p in &chain {
        peer(p, "chain")?;
    }
    Ok(chain)
}

pub fn chain_text(chain: &[String]) -> String {
    chain.join(" ")
}

/// A queued script, checked: its `seq` and the job, or why the row is bad.
pub(crate) fn job(r: &Row) -> rusqlite::Result<(i64, Check<Job>)> {
    let seq: i64 = r.get(0)?;
    let id = text(r, 1, "id")?;
    let name = text(r, 2, "script name")?;
    let source = bytes(r, 3, "script")?;
    let caller = text(r, 4, "caller")?;
    let params = text(r, 5, "params")?;
    let msg_id = opt_text(r, 6, "message id")?;
    let hops = int(r, 7, "hops")?;
    let submitted_at = int(r, 8, "submitted_at")?;
    let chain = opt_text(r, 9, "chain")?;
    let budget = match r.get_ref(10)? {
        ValueRef::Null => Ok(0),
        _ => int(r, 10, "budget")?,
    };
    let attempts = int(r, 11, "attempts")?;
    let check = || -> Check<Job> {
        let id = id?;
        check_id(&id, "id")?;
        let name = name?;
        check_script_name(&name)?;
        let caller = caller?;
        peer(&caller, "caller")?;
        let params = params?;
        json_object(&params, "params")?;
        let msg_id = msg_id?;
        if let Some(m) = &msg_id {
            check_id(m, "message id")?;
        }
        let chain = parse_chain(chain?.as_deref(), &caller)?;
        if chain.last() != Some(&caller) {
            return Err(bad!(
                "chain {:?} does not end with the caller {caller:?}",
                chain_text(&chain)
            ));
        }
        Ok(Job {
            seq,
            id,
            name,
            source: source?,
            caller,
            params,
            msg_id,
            hops: in_range(hops?, 0, MAX_STORED_HOPS, "hops")? as u32,
            submitted_at: in_range(submitted_at?, 0, i64::MAX, "submitted_at")?,
            chain,
            budget: in_range(budget?, 0, i64::MAX, "budget")? as u64,
            attempts: in_range(attempts?, 0, i64::from(u32::MAX), "attempts")? as u32,
        })
    };
    Ok((seq, check()))
}

/// An outgoing message, checked: its `seq` and the message, or why the row is bad.
pub(crate) fn outgoing(r: &Row) -> rusqlite::Result<(i64, Check<Message>)> {
    let seq: i64 = r.get(0)?;
    let id = text(r, 1, "id")?;
    let to = text(r, 2, "recipient")?;
    let kind = text(r, 3, "kind")?;
    let name = text(r, 4, "name")?;
    let source = bytes(r, 5, "script")?;
    let params = text(r, 6, "params")?;
    let hops = int(r, 7, "hops")?;
    let payload = text(r, 8, "payload")?;
    let created_at = int(r, 9, "created_at")?;
    let chain = opt_text(r, 10, "chain")?;
    let budget = match r.get_ref(11)? {
        ValueRef::Null => Ok(0),
        _ => int(r, 11, "budget")?,
    };
    let check = || -> Check<Message> {
        let id = id?;
        check_id(&id, "id")?;
        let to = to?;
        peer(&to, "recipient")?;
        let kind = kind?;
        let name = name?;
        check_script_name(&name)?;
        let params = params?;
        let payload = payload?;
        match kind.as_str() {
            "script" => json_object(&params, "params")?,
            "result" => json_object(&payload, "result")?,
            other => return Err(bad!("kind {other:?} is neither script nor result")),
        }
        // An empty chain is completed with the sender by the executor.
        let chain = match chain?.as_deref() {
            None | Some("") => Vec::new(),
            Some(t) => parse_chain(Some(t), "")?,
        };
        Ok(Message {
            id,
            to,
            kind,
            name,
            source: source?,
            params,
            hops: in_range(hops?, 0, MAX_STORED_HOPS, "hops")? as u32,
            payload,
            created_at: in_range(created_at?, 0, i64::MAX, "created_at")?,
            chain,
            budget: in_range(budget?, 0, i64::MAX, "budget")? as u64,
        })
    };
    Ok((seq, check()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_chains() {
        assert!(check_id("01JABC-1-2", "id").is_ok());
        assert!(check_id("", "id").is_err());
        assert!(check_id("a b", "id").is_err());
        assert!(check_id(&"x".repeat(MAX_ID + 1), "id").is_err());
        assert!(check_script_name("job.rhai").is_ok());
        for bad in ["../../sub/dir.rhai", "..", ".hidden.rhai", "x~", "a\nb", ""] {
            assert!(check_script_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_chain(None, "bob").unwrap(), vec!["bob"]);
        assert_eq!(
            parse_chain(Some("mal bob"), "bob").unwrap(),
            vec!["mal", "bob"]
        );
        assert!(parse_chain(Some("mal  bob"), "bob").is_err());
        assert!(parse_chain(Some("../x"), "bob").is_err());
    }
}
