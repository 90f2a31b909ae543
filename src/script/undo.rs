//! `undo("<run id>")`, `undo("<run id>", #{ cascade: true })` and
//! `restore_to("<run id or RFC 3339 time>")`: the owner's scripts only (a
//! script from another peer, or one another peer's script led to, is denied
//! whatever the policy says). Their changes are the run's own, so the run is an
//! entry of the history that can be undone in turn.

use rhai::{Array, Dynamic, Engine, Map};

use super::host::{fatal, with_ctx, Ctx, RhaiResult};
use super::Status;
use crate::store::history::Point;

pub(super) fn register(engine: &mut Engine) {
    engine.register_fn("undo", |run: &str| undo(run, Map::new()));
    engine.register_fn("undo", undo);
    engine.register_fn("restore_to", restore_to);
}

/// Refuses a run that is not the owner's own, whatever the policy says.
fn owner_only(c: &mut Ctx, what: &str) -> RhaiResult<()> {
    if c.caller != c.target || c.origin != c.target {
        let msg = format!(
            "{what} is for {}'s own scripts: a script from {} (or one it led to) may not use it, whatever the policy says",
            c.target, c.origin
        );
        return Err(fatal(c, Status::Denied, msg));
    }
    Ok(())
}

fn undone(ids: Vec<String>) -> Dynamic {
    ids.into_iter().map(Dynamic::from).collect::<Array>().into()
}

/// Undoes one run (with `cascade`, the later runs in the way too); the run ids undone.
fn undo(run: &str, opts: Map) -> RhaiResult<Dynamic> {
    let cascade = match opts.get("cascade") {
        None => false,
        Some(v) => v
            .as_bool()
            .map_err(|_| "undo: cascade must be true or false")?,
    };
    with_ctx(|c| {
        owner_only(c, "undo")?;
        // Rows may be set back too: the mount and the spool hear of it.
        let st = c.store_w()?;
        let r = match st.history() {
            Some(h) => h.undo(run, cascade),
            None => return Err("undo: this peer's store keeps no history".into()),
        };
        match r {
            Ok(ids) => Ok(undone(ids)),
            Err(e) => Err(fatal(c, Status::Error, e.message)),
        }
    })
}

/// Returns the whole peer to right after a run, or to a time; the run ids undone.
fn restore_to(point: &str) -> RhaiResult<Dynamic> {
    let point = Point::parse(point).map_err(|e| e.message)?;
    with_ctx(|c| {
        owner_only(c, "restore_to")?;
        // Rows may be set back too: the mount and the spool hear of it.
        let st = c.store_w()?;
        let r = match st.history() {
            Some(h) => h.restore(&point),
            None => return Err("restore_to: this peer's store keeps no history".into()),
        };
        match r {
            Ok(ids) => Ok(undone(ids)),
            Err(e) => Err(fatal(c, Status::Error, e.message)),
        }
    })
}
