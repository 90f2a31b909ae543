//! Reads of a remote peer's state (`caller_get` of a caller served by another
//! daemon) by NATS request/reply on `peerfs.<lattice>.read.<owner>.<reader>`: the
//! owner's worker decides with the owner's policy, as within one daemon. Only the
//! reader's worker may publish on that subject, so the reader is who it says.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Lattice;
use crate::policy::Action;

#[derive(Serialize, Deserialize)]
struct Req {
    key: String,
    script: String,
    params: Value,
}

#[derive(Serialize, Deserialize)]
struct Resp {
    value: Option<Value>,
    error: Option<String>,
}

impl super::Names {
    pub fn read_subject(&self, owner: &str, reader: &str) -> String {
        format!("peerfs.{}.read.{owner}.{reader}", self.lattice)
    }
}

/// Answers reads of the local `peer`'s state for as long as the lattice runs.
pub(super) async fn serve(l: Arc<Lattice>, peer: String) {
    let subject = format!("peerfs.{}.read.{peer}.*", l.names.lattice);
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
                let resp = answer(&l, &peer, &reader, &m.payload);
                let body = serde_json::to_vec(&resp).unwrap_or_default();
                let _ = l.client.publish(reply, body.into()).await;
            }
        }
    }
}

fn answer(l: &Lattice, owner: &str, reader: &str, body: &[u8]) -> Resp {
    let fail = |e: String| Resp {
        value: None,
        error: Some(e),
    };
    let Ok(req) = serde_json::from_slice::<Req>(body) else {
        return fail("a read request that does not parse".into());
    };
    let p = match l.core.peer(owner) {
        Ok(p) => p,
        Err(e) => return fail(e.message),
    };
    let st = match l.core.policy().state(&p) {
        Ok(s) => s,
        Err(e) => return fail(e.message),
    };
    let d = st.decide(
        reader,
        owner,
        Action::Read,
        &req.key,
        &req.script,
        &req.params,
    );
    if !d.allowed {
        return fail(format!(
            "denied: caller_get {:?}: the policy.cedar of {owner} does not let {reader} read it: {}",
            req.key,
            d.explain()
        ));
    }
    match p.read(|s| s.get(&req.key)) {
        Ok(v) => Resp {
            value: v,
            error: None,
        },
        Err(e) => fail(e.message),
    }
}

/// `caller_get(key)` at `reader` (local) of `owner`'s state (another daemon's).
pub fn remote_get(
    owner: &str,
    reader: &str,
    key: &str,
    script: &str,
    params: &Value,
) -> Result<Option<Value>, String> {
    let Some(l) = super::current() else {
        return Err(format!("no peer {owner} here"));
    };
    let subject = l.names.read_subject(owner, reader);
    let body = serde_json::to_vec(&Req {
        key: key.to_string(),
        script: script.to_string(),
        params: params.clone(),
    })
    .unwrap_or_default();
    let client = l.client.clone();
    let timeout = l.opts.timeout;
    let r = l.block_on(async move {
        match tokio::time::timeout(timeout, client.request(subject, body.into())).await {
            Ok(Ok(m)) => Ok(m.payload.to_vec()),
            Ok(Err(e)) => Err(crate::error::err!(libc::EHOSTUNREACH, "{e}")),
            Err(_) => Err(crate::error::err!(
                libc::ETIMEDOUT,
                "no answer within {timeout:?}"
            )),
        }
    });
    let bytes = r.map_err(|e| {
        format!(
            "caller_get {key:?}: {owner} is served by another daemon, which cannot be reached: {} (errno {})",
            e.message, e.errno
        )
    })?;
    let resp: Resp =
        serde_json::from_slice(&bytes).map_err(|e| format!("caller_get {key:?}: {e}"))?;
    match resp.error {
        Some(e) => Err(e),
        None => Ok(resp.value),
    }
}
