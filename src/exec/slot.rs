//! Where a peer keeps results: its own outbox, its views of others' outboxes
//! (rows under the other peer's name), and the slots of the callers that dropped
//! scripts at it (rows under `@caller`).

/// The outbox row target under which a peer keeps the results of scripts `caller`
/// dropped at it (`@caller`: `@` is never part of a peer name, so these rows never
/// mix with the peer's own outbox or its views of others).
pub fn caller_slot(caller: &str) -> String {
    format!("@{caller}")
}

/// The caller whose slot an outbox row's target is, if it is one.
pub fn slot_caller(target: &str) -> Option<&str> {
    target.strip_prefix('@')
}

/// Where `peer` keeps the result of a run for `caller`: its own outbox, or the
/// caller's slot.
pub(crate) fn result_slot(peer: &str, caller: &str) -> String {
    if peer == caller {
        peer.to_string()
    } else {
        caller_slot(caller)
    }
}
