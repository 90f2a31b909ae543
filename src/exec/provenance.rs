//! Provenance in the log and the results that stand in for undeliverable ones.

use serde_json::{json, Value};

use crate::names::script_stem;
use crate::store::Message;
use crate::util::{now_ns, rfc3339};

/// ` chain=mal>bob` for a script that came through more peers than its caller
/// (appended to the target's `run` and `receive` log lines); empty otherwise.
pub(crate) fn chain_note(chain: &[String], caller: &str) -> String {
    if chain.len() <= 1 && chain.first().is_none_or(|c| c == caller) {
        return String::new();
    }
    format!(" origin={} chain={}", chain[0], chain.join(">"))
}

/// An `error` result for the result message `msg` from `from` that cannot be
/// read or delivered: it names the script and the reason, and keeps the id of the
/// run when it can be found, so the reader waiting for it is answered.
pub(crate) fn unreadable_result(from: &str, msg: &Message, why: &str) -> Value {
    let id = msg
        .id
        .strip_suffix("-result")
        .or_else(|| msg.id.strip_suffix("-result-undeliverable"))
        .unwrap_or(&msg.id);
    let script = format!("{}.rhai", script_stem(&msg.name));
    let at = rfc3339(now_ns());
    json!({
        "id": id,
        "script": script,
        "caller": msg.to,
        "target": from,
        "status": "error",
        "value": null,
        "output": "",
        "error": format!("the result of {script} from {from} could not be delivered: {why}"),
        "submitted_at": rfc3339(msg.created_at),
        "finished_at": at,
        "duration_us": 0,
        "operations": 0,
    })
}

const REPLACEMENT: &str = "-undeliverable";

/// The id of the error result that replaces message `id`.
pub(crate) fn replacement_id(id: &str) -> String {
    format!("{id}{REPLACEMENT}")
}

/// Whether `id` is already such a replacement (it is not replaced again).
pub(crate) fn is_replacement(id: &str) -> bool {
    id.ends_with(REPLACEMENT)
}
