//! Reads of a remote peer's state by NATS request/reply on
//! `peerfs.<lattice>.read.<owner>.<reader>`: `caller_get` of a caller served by
//! another daemon, and the mount's `peers/<owner>/state/` of a peer served by
//! another daemon (its listing, a key's attributes, a key's bytes). The owner's
//! worker decides with the owner's policy, with the same functions as within one
//! daemon ([`crate::peer::Peer::view_list`] and friends). Only the reader's worker
//! may publish on that subject, so the reader is who it says; the request's
//! `kind` says what is asked (a request without one is a `get`, as before kinds).
//!
//! Declared tables too: `tables` (the tables whose rows the reader may select)
//! and `rows` (one row, or a page of rows after a key, as many as fit a reply),
//! decided with [`Sight`] as for a reader of the owner's daemon.
//!
//! A reply is one JSON object; a reply to `bytes` is followed by a newline and one
//! chunk of the value's bytes (as much as fits the server's `max_payload`): the
//! reader asks again from the next offset until it has the whole value, and starts
//! over when the value changed in between.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Lattice;
use crate::error::err;
use crate::error::{Error, Result};
use crate::peer::Peer;
use crate::policy::sight::{Sight, MAX_ROWS};
use crate::policy::Action;
use crate::store::DirEntry;
use crate::tables::rows::Row;

/// The largest value a remote view shows (the largest a state file may be);
/// beyond it the read is `EFBIG`.
const MAX_VALUE: u64 = crate::vfs::MAX_STATE_FILE;
/// Room left in a reply beside a chunk of bytes (the JSON head, NATS' own).
const REPLY_ROOM: usize = 4096;
/// How often a read of a value that keeps changing between chunks starts over.
const BYTES_TRIES: usize = 3;
/// Rows an owner reads for one page of a remote view (fewer go when they do not
/// fit a reply).
const ROWS_PAGE: usize = 1000;

#[derive(Serialize, Deserialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Ask {
    /// `caller_get(key)`: the value, as JSON.
    #[default]
    Get,
    /// The children of the folder `key` the reader may see.
    List,
    /// `key` as the reader may see it (a value or a folder).
    Stat,
    /// The bytes of the value `key`, from `offset`.
    Bytes,
    /// The declared tables of which the reader may select rows.
    Tables,
    /// Rows of the table `key` the reader may select: the row whose key's text
    /// is `row`, or a page of rows in key order after the key `after`.
    Rows,
}

#[derive(Serialize, Deserialize, Default)]
struct Req {
    #[serde(default)]
    kind: Ask,
    key: String,
    #[serde(default)]
    script: String,
    #[serde(default)]
    params: Value,
    #[serde(default, skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    row: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Value>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Default)]
struct Resp {
    value: Option<Value>,
    error: Option<String>,
    /// With `error`: the errno the reader's caller gets (view kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    errno: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<DirEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<DirEntry>,
    /// `bytes`: the whole value's size and time (a chunk follows the JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtime_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tables: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rows: Option<Vec<Row>>,
    /// `rows`: more rows follow the last one (ask again after it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    more: bool,
}

impl Resp {
    fn failed(e: Error) -> Resp {
        Resp {
            error: Some(e.message),
            errno: Some(e.errno),
            ..Resp::default()
        }
    }
}

impl super::Names {
    pub fn read_subject(&self, owner: &str, reader: &str) -> String {
        format!("peerfs.{}.read.{owner}.{reader}", self.lattice)
    }
}

/// The server's largest message (1 MiB unless its configuration says otherwise).
pub(super) fn max_payload(l: &Lattice) -> usize {
    match l.client.server_info().max_payload {
        0 => 1 << 20,
        n => n,
    }
}

/// Answers reads of the local `peer`'s state for as long as the lattice runs.
/// Each answer reads the store on a blocking thread (a listing or a big value
/// must not hold up the lattice's runtime).
pub(super) async fn serve(l: Arc<Lattice>, peer: String) {
    let subject = l.names.read_all(&peer);
    let mut stop = l.stop.subscribe();
    let mut sub = match l.client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "cannot answer remote reads");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            m = sub.next() => {
                let Some(m) = m else { return };
                let Some(reply) = m.reply.clone() else { continue };
                let reader = m.subject.rsplit('.').next().unwrap_or_default().to_string();
                // Only the reader's worker may ask as the reader; the answer goes
                // only into that worker's inbox, whatever reply the request names.
                let goes = |to: &Option<String>| to.as_deref().is_some_and(|w| l.reply_goes_to(&reply, w));
                let known = goes(&l.worker_of(&reader));
                let (l, peer) = (l.clone(), peer.clone());
                tokio::spawn(async move {
                    if !known {
                        // The directory's copy may not show yet a reader that
                        // has just joined or moved: the server's says.
                        let to = l.worker_of_now(&reader).await;
                        if !to.as_deref().is_some_and(|w| l.reply_goes_to(&reply, w)) {
                            tracing::warn!(peer = %peer, reader = %reader, reply = %reply, worker = ?to, "a read request whose reply is not the reader's worker's inbox: not answered");
                            return;
                        }
                    }
                    let l2 = l.clone();
                    let body = tokio::task::spawn_blocking(move || {
                        encode(&l2, &peer, &reader, answer(&l2, &peer, &reader, &m.payload))
                    })
                    .await
                    .unwrap_or_default();
                    let _ = l.client.publish(reply, body.into()).await;
                });
            }
        }
    }
}

/// The reply's bytes: the JSON, and for `bytes` a newline and the chunk. A reply
/// that does not fit the server's `max_payload` (a listing of very many names)
/// becomes `EFBIG`.
fn encode(l: &Lattice, owner: &str, reader: &str, (resp, chunk): (Resp, Vec<u8>)) -> Vec<u8> {
    let mut body = serde_json::to_vec(&resp).unwrap_or_default();
    if !chunk.is_empty() {
        body.push(b'\n');
        body.extend_from_slice(&chunk);
    }
    if body.len() + REPLY_ROOM / 4 > max_payload(l) {
        tracing::warn!(
            owner,
            reader,
            bytes = body.len(),
            "a remote read's answer does not fit NATS' max_payload"
        );
        let e = err!(
            libc::EFBIG,
            "the answer of {owner}'s worker ({} bytes) is larger than the lattice's NATS max_payload ({})",
            body.len(),
            max_payload(l)
        );
        return serde_json::to_vec(&Resp::failed(e)).unwrap_or_default();
    }
    body
}

fn answer(l: &Lattice, owner: &str, reader: &str, body: &[u8]) -> (Resp, Vec<u8>) {
    let Ok(req) = serde_json::from_slice::<Req>(body) else {
        let e = err!(libc::EINVAL, "a read request that does not parse");
        return (Resp::failed(e), Vec::new());
    };
    let r = l.core.peer(owner).and_then(|p| match req.kind {
        Ask::Get => get(l, &p, reader, &req).map(|r| (r, Vec::new())),
        Ask::Tables | Ask::Rows => tables(l, &p, reader, &req).map(|r| (r, Vec::new())),
        _ => view(l, &p, reader, &req),
    });
    r.unwrap_or_else(|e| (Resp::failed(e), Vec::new()))
}

fn get(l: &Lattice, p: &Peer, reader: &str, req: &Req) -> Result<Resp> {
    let owner = &p.name;
    let st = l.core.policy().state(p)?;
    let d = st.decide(
        reader,
        owner,
        Action::Read,
        &req.key,
        &req.script,
        &req.params,
    );
    if !d.allowed {
        return Err(err!(
            libc::EACCES,
            "denied: caller_get {:?}: the policy.cedar of {owner} does not let {reader} read it: {}",
            req.key,
            d.explain()
        ));
    }
    Ok(Resp {
        value: p.read(|s| s.get(&req.key))?,
        ..Resp::default()
    })
}

/// A view kind, decided as the mount decides for a reader of this daemon
/// ([`crate::policy::PolicyGate::may_read`]).
fn view(l: &Lattice, p: &Peer, reader: &str, req: &Req) -> Result<(Resp, Vec<u8>)> {
    let core = &l.core;
    let may = |k: &str| core.policy().may_read(core, reader, &p.name, k);
    let key = &req.key;
    match req.kind {
        Ask::Get | Ask::Tables | Ask::Rows => unreachable!("answered by get and tables"),
        Ask::List => {
            let entries = p.view_list(key, may)?;
            let r = Resp {
                entries: Some(entries),
                ..Resp::default()
            };
            Ok((r, Vec::new()))
        }
        Ask::Stat => match p.view_stat(key, may)? {
            Some(e) => {
                let r = Resp {
                    entry: Some(e),
                    ..Resp::default()
                };
                Ok((r, Vec::new()))
            }
            None => Err(err!(libc::ENOENT, "no readable key {key:?} of {}", p.name)),
        },
        Ask::Bytes => {
            let bytes = p.view_bytes(key, may)?;
            let size = bytes.len() as u64;
            if size > MAX_VALUE {
                tracing::warn!(owner = %p.name, reader, key = %key, size, "a value too big for a remote view");
                return Err(err!(
                    libc::EFBIG,
                    "{key:?} of {} is {size} bytes: a remote view shows values up to {MAX_VALUE} bytes (read it with caller_get, or on {}'s daemon)",
                    p.name,
                    p.name
                ));
            }
            let mtime_ns = p.read(|s| s.stat_key(key))?.flatten().map(|st| st.mtime_ns);
            let chunk = max_payload(l).saturating_sub(REPLY_ROOM).max(1);
            let start = (req.offset as usize).min(bytes.len());
            let end = (start + chunk).min(bytes.len());
            let r = Resp {
                size: Some(size),
                mtime_ns: Some(mtime_ns.unwrap_or(0)),
                ..Resp::default()
            };
            Ok((r, bytes[start..end].to_vec()))
        }
    }
}

/// `tables` and `rows`, decided with `owner`'s policy as for a reader of this
/// daemon ([`Sight`]). A page of rows holds what fits the server's `max_payload`.
fn tables(l: &Lattice, p: &Peer, reader: &str, req: &Req) -> Result<Resp> {
    if reader == p.name {
        return Err(err!(libc::EACCES, "{reader} is served here, not elsewhere"));
    }
    let sight = Sight::of(l.core.policy(), p, reader)?;
    if req.kind == Ask::Tables {
        return Ok(Resp {
            tables: Some(sight.tables()),
            ..Resp::default()
        });
    }
    if let Some(k) = &req.row {
        let row = sight.row(p, &req.key, k)?;
        return Ok(Resp {
            rows: Some(row.into_iter().collect()),
            ..Resp::default()
        });
    }
    let page = sight.rows_after(p, &req.key, req.after.as_ref(), ROWS_PAGE)?;
    let budget = max_payload(l).saturating_sub(REPLY_ROOM);
    let mut more = page.len() == ROWS_PAGE;
    let (mut rows, mut size) = (Vec::new(), 0);
    for r in page {
        let n = serde_json::to_vec(&r)?.len() + 1;
        if size + n > budget && !rows.is_empty() {
            more = true;
            break;
        }
        size += n;
        rows.push(r);
    }
    Ok(Resp {
        rows: Some(rows),
        more,
        ..Resp::default()
    })
}

/// One request to `owner`'s worker, as `reader`: its reply (the JSON, and what
/// follows it). Fails fast: `EHOSTUNREACH` when NATS or the owner's worker is not
/// there, `ETIMEDOUT` when no answer comes within `lattice.timeout_ms`.
fn ask(l: &Lattice, owner: &str, reader: &str, req: &Req) -> Result<(Resp, Vec<u8>)> {
    if !l.ready() || l.client.connection_state() != async_nats::connection::State::Connected {
        return Err(err!(
            libc::EHOSTUNREACH,
            "NATS is unreachable, so is {owner}'s worker"
        ));
    }
    let subject = l.names.read_subject(owner, reader);
    let body = serde_json::to_vec(req).unwrap_or_default();
    let client = l.client.clone();
    let timeout = l.opts.timeout;
    let who = owner.to_string();
    let bytes = l.block_on(async move {
        use async_nats::RequestErrorKind as K;
        match tokio::time::timeout(timeout, client.request(subject, body.into())).await {
            Ok(Ok(m)) => Ok(m.payload.to_vec()),
            Ok(Err(e)) if e.kind() == K::NoResponders => Err(err!(
                libc::EHOSTUNREACH,
                "no worker serving {who} answers (is its daemon running?)"
            )),
            Ok(Err(e)) if e.kind() == K::TimedOut => {
                Err(err!(libc::ETIMEDOUT, "no answer within {timeout:?}"))
            }
            Ok(Err(e)) => Err(err!(libc::EHOSTUNREACH, "{e}")),
            Err(_) => Err(err!(libc::ETIMEDOUT, "no answer within {timeout:?}")),
        }
    })?;
    let (head, rest) = match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], bytes[i + 1..].to_vec()),
        None => (&bytes[..], Vec::new()),
    };
    let resp: Resp = serde_json::from_slice(head).map_err(|e| {
        err!(
            libc::EIO,
            "an answer of {owner}'s worker that does not parse: {e}"
        )
    })?;
    Ok((resp, rest))
}

/// `ask`, for a view kind: the owner's error becomes this side's, errno and all.
fn ask_view(
    l: &Lattice,
    owner: &str,
    reader: &str,
    kind: Ask,
    key: &str,
    offset: u64,
) -> Result<(Resp, Vec<u8>)> {
    let req = Req {
        kind,
        key: key.to_string(),
        offset,
        ..Req::default()
    };
    ask_ok(l, owner, reader, &req)
}

/// `ask`: the owner's error becomes this side's, errno and all.
fn ask_ok(l: &Lattice, owner: &str, reader: &str, req: &Req) -> Result<(Resp, Vec<u8>)> {
    let (resp, rest) = ask(l, owner, reader, req)?;
    match resp.error {
        Some(e) => Err(Error::new(resp.errno.unwrap_or(libc::EIO), e)),
        None => Ok((resp, rest)),
    }
}

/// The tables of `owner` of which `reader` may select rows.
pub(super) fn remote_tables(l: &Lattice, owner: &str, reader: &str) -> Result<Vec<String>> {
    let req = Req {
        kind: Ask::Tables,
        ..Req::default()
    };
    Ok(ask_ok(l, owner, reader, &req)?.0.tables.unwrap_or_default())
}

/// The rows of `table` of `owner` that `reader` may select (`key`: the one of
/// that key), page after page, up to [`MAX_ROWS`].
pub(super) fn remote_rows(
    l: &Lattice,
    owner: &str,
    reader: &str,
    table: &str,
    key: Option<&str>,
) -> Result<Vec<Row>> {
    let mut out: Vec<Row> = Vec::new();
    let mut after = None;
    loop {
        let req = Req {
            kind: Ask::Rows,
            key: table.to_string(),
            row: key.map(str::to_string),
            after: after.clone(),
            ..Req::default()
        };
        let resp = ask_ok(l, owner, reader, &req)?.0;
        let rows = resp.rows.unwrap_or_default();
        let more = resp.more && key.is_none() && !rows.is_empty();
        after = rows.last().and_then(|r| r.get(crate::tables::ID).cloned());
        out.extend(rows);
        if !more || out.len() >= MAX_ROWS {
            out.truncate(MAX_ROWS);
            return Ok(out);
        }
    }
}

/// `caller_get(key)` at `reader` (local) of `owner`'s state (another daemon's).
pub(super) fn remote_get(
    l: &Lattice,
    owner: &str,
    reader: &str,
    key: &str,
    script: &str,
    params: &Value,
) -> Result<Option<Value>> {
    let req = Req {
        kind: Ask::Get,
        key: key.to_string(),
        script: script.to_string(),
        params: params.clone(),
        ..Req::default()
    };
    let (resp, _) = ask(l, owner, reader, &req).map_err(|e| {
        err!(
            e.errno,
            "caller_get {key:?}: {owner} is served by another daemon, which cannot be reached: {}",
            e.message
        )
        .with_source(e)
    })?;
    match resp.error {
        // The owner's daemon answered with its refusal (its policy, its store).
        Some(e) => Err(Error::new(resp.errno.unwrap_or(libc::EACCES), e)),
        None => Ok(resp.value),
    }
}

/// The children of the folder `dir` of `owner` that `reader` may see.
pub(super) fn remote_view_list(
    l: &Lattice,
    owner: &str,
    reader: &str,
    dir: &str,
) -> Result<Vec<DirEntry>> {
    let (resp, _) = ask_view(l, owner, reader, Ask::List, dir, 0)?;
    Ok(resp.entries.unwrap_or_default())
}

/// `key` of `owner` as `reader` may see it (`None`: nothing readable there).
pub(super) fn remote_view_stat(
    l: &Lattice,
    owner: &str,
    reader: &str,
    key: &str,
) -> Result<Option<DirEntry>> {
    match ask_view(l, owner, reader, Ask::Stat, key, 0) {
        Ok((resp, _)) => Ok(resp.entry),
        Err(e) if e.errno == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bytes of `key` of `owner`, chunk by chunk; starts over when the value
/// changes between chunks (its size or time differ), `EAGAIN` when it keeps
/// changing.
pub(super) fn remote_view_bytes(
    l: &Lattice,
    owner: &str,
    reader: &str,
    key: &str,
) -> Result<Vec<u8>> {
    'again: for _ in 0..BYTES_TRIES {
        let mut out: Vec<u8> = Vec::new();
        let mut first = None;
        loop {
            let (resp, chunk) = ask_view(l, owner, reader, Ask::Bytes, key, out.len() as u64)?;
            let this = (resp.size.unwrap_or(0), resp.mtime_ns.unwrap_or(0));
            if *first.get_or_insert(this) != this {
                continue 'again;
            }
            if chunk.is_empty() && (out.len() as u64) < this.0 {
                return Err(err!(
                    libc::EIO,
                    "{owner}'s worker sent no bytes of {key:?} from offset {}",
                    out.len()
                ));
            }
            out.extend_from_slice(&chunk);
            if out.len() as u64 >= this.0 {
                out.truncate(this.0 as usize);
                return Ok(out);
            }
        }
    }
    Err(err!(
        libc::EAGAIN,
        "{key:?} of {owner} changed {BYTES_TRIES} times while it was read: try again"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_kind_is_a_get() {
        let r: Req = serde_json::from_str(r#"{"key":"k","script":"s","params":{}}"#).unwrap();
        assert_eq!(r.kind, Ask::Get);
        assert_eq!(r.offset, 0);
        let r: Req = serde_json::from_str(r#"{"kind":"bytes","key":"k","offset":7}"#).unwrap();
        assert_eq!((r.kind, r.offset), (Ask::Bytes, 7));
    }

    #[test]
    fn a_rows_request_names_its_table_and_where_to_go_on() {
        let r: Req =
            serde_json::from_str(r#"{"kind":"rows","key":"notes","after":"n05"}"#).unwrap();
        assert_eq!((r.kind, r.key.as_str()), (Ask::Rows, "notes"));
        assert_eq!((r.row, r.after), (None, Some(Value::from("n05"))));
        let r: Req = serde_json::from_str(r#"{"kind":"tables","key":""}"#).unwrap();
        assert_eq!(r.kind, Ask::Tables);
        // A page that ends the table says nothing of `more`.
        let last = Resp {
            rows: Some(Vec::new()),
            ..Resp::default()
        };
        let text = serde_json::to_string(&last).unwrap();
        assert!(!text.contains("more"), "{text}");
    }

    #[test]
    fn a_get_answer_keeps_its_old_shape() {
        let r = Resp {
            value: Some(Value::from(1)),
            ..Resp::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"value":1,"error":null}"#
        );
    }
}
