//! A peer's policy texts as files (`policy.cedar`, `groups`, `schema.toml`):
//! the one rule both the mount and the spool follow when a new text arrives.
//! It is validated whole; a valid text is applied, an invalid one is refused with
//! the reason in the peer's log and the old text stays in force. A schema that
//! parses can still be refused when applied (rows that do not meet a tightening,
//! data dropped without consent): the same refusal, logged the same way.

use crate::error::err;
use crate::exec::{Ack, Core, Op};
use crate::policy::PolicyText;

/// Applies `data` as `peer`'s `text`, or refuses it: the reason goes to the
/// peer's log and `done` gets `EINVAL` with it once the log line has committed
/// (so the log shows it as soon as the writer learns of the refusal). Any other
/// error is the store's, from applying a valid text.
pub fn apply_text(core: &Core, peer: &str, text: PolicyText, data: Vec<u8>, done: Ack) {
    if text == PolicyText::Policy {
        // Validated at the peer, against the tables its schema declares.
        return defer(core, peer, text, data, done);
    }
    match text.check(&data) {
        Ok(()) if text == PolicyText::Schema => defer(core, peer, text, data, done),
        Ok(()) => core.apply_async(peer, Op::SetMeta(text.key().to_string(), data), Some(done)),
        Err(e) => refuse(core, peer, text, &e.to_string(), done),
    }
}

/// A text whose last check needs the peer's store (a policy against the declared
/// tables, a schema against the rows and the policy): applied at the peer, and a
/// refusal there (`EINVAL`) logged like one here.
fn defer(core: &Core, peer: &str, text: PolicyText, data: Vec<u8>, done: Ack) {
    let (c, p) = (core.clone(), peer.to_string());
    let after: Ack = Box::new(move |r| match r {
        Err(e) if e.errno == libc::EINVAL => refuse(&c, &p, text, &e.message, done),
        r => done(r),
    });
    core.apply_async(peer, Op::SetMeta(text.key().to_string(), data), Some(after))
}

fn refuse(core: &Core, peer: &str, text: PolicyText, why: &str, done: Ack) {
    let msg = format!(
        "{} refused, the old one stays in force: {why} (check a file with `{}` before \
         copying it in)",
        text.key(),
        text.check_command()
    );
    let refusal = err!(libc::EINVAL, "{msg}");
    core.apply_async(
        peer,
        Op::Log(msg),
        Some(Box::new(move |_| done(Err(refusal)))),
    );
}
