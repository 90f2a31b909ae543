//! The intake thread: what people put into the spool tree becomes ops of the
//! executor. Watcher events and rescans find scripts in inboxes (taken when their
//! writer closes them or they are renamed in; staging names never run), policy,
//! groups and module files, and new peer folders; each script is submitted with an
//! `Op::Intake` and leaves its inbox only after that submission has committed.
//! Which folders are inboxes and which files are policy texts is the layout's
//! (`crate::layout`); a policy text is applied or refused by `layout::apply_text`.

use super::*;
use crate::exec::Dropped;

/// What a taken script becomes: a submission at a peer of this daemon, or a
/// message from the caller to a peer of another daemon.
/// The op that records the taken file (`key`, `record`) with its submission or
/// send, and the older records to `forget`.
fn intake_op(d: Dropped, key: String, record: Vec<u8>, forget: Vec<String>) -> Op {
    match d {
        Dropped::Submit(job) => Op::Intake {
            job,
            key,
            record,
            forget,
        },
        Dropped::Send(msg) => Op::IntakeSend {
            msg,
            key,
            record,
            forget,
        },
    }
}

impl Shared {
    pub(super) fn intake_loop(self: Arc<Self>, rx: Receiver<Msg>) {
        let mut last_flush = Instant::now();
        let mut last_follow = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let wait = self
                .retry
                .lock()
                .unwrap()
                .iter()
                .map(|(t, _, _)| t.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            match rx.recv_timeout(wait) {
                Ok(Msg::Fs(Ok(ev))) => self.event(ev),
                Ok(Msg::Fs(Err(e))) => {
                    tracing::warn!(error = %e, "file watcher error: rescanning");
                    self.scan_all(false);
                }
                Ok(Msg::Retake(p)) => self.path_changed(&p),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            let due: Vec<String> = {
                let mut later = self.later.lock().unwrap();
                let (due, keep) = later.drain(..).partition(|(t, _)| *t <= now);
                *later = keep;
                let mut due: Vec<String> = due.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
                due.sort();
                due.dedup();
                due
            };
            for peer in due {
                self.scan_peer(&peer, false);
            }
            let again: Vec<(PathBuf, u32)> = {
                let mut retry = self.retry.lock().unwrap();
                let (due, keep) = retry.drain(..).partition(|(t, _, _)| *t <= now);
                *retry = keep;
                due.into_iter().map(|(_, p, n)| (p, n)).collect()
            };
            for (p, n) in again {
                self.path_changed_try(&p, n);
            }
            if now.duration_since(last_flush) > Duration::from_millis(500) {
                self.flush_forget(false);
                last_flush = now;
            }
            if now.duration_since(last_follow) > Duration::from_secs(1) {
                self.follow_directory();
                last_follow = now;
            }
        }
    }

    pub(super) fn event(self: &Arc<Self>, ev: notify::Event) {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode,
        };
        if ev.need_rescan() {
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("inotify queue overflowed: rescanning every folder");
            self.scan_all(false);
            return;
        }
        match ev.kind {
            // Complete: closed after writing, or renamed in. Not at creation: a
            // file's creation is seen before its writer holds it open.
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                for p in &ev.paths {
                    self.path_changed(p);
                }
            }
            EventKind::Create(CreateKind::Folder) => {
                for p in &ev.paths {
                    match self.place(p) {
                        Some(Place::PeerDir(name)) => self.new_peer_dir(p, &name),
                        Some(place) => {
                            if let Some(peer) = self.peer_of(&place, p) {
                                // Files made in it before its watch existed.
                                self.scan_later(&peer, Duration::from_millis(100));
                                self.scan_later(&peer, Duration::from_secs(1));
                            }
                        }
                        None => {}
                    }
                }
            }
            EventKind::Remove(RemoveKind::File)
            | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for p in &ev.paths {
                    match self.place(p) {
                        Some(Place::Module(peer, rel)) => self.module_file(&peer, &rel, p),
                        Some(Place::State { viewer, owner }) => {
                            self.state_touched(&viewer, &owner, p)
                        }
                        Some(Place::Tables { viewer, owner }) => {
                            self.tables_touched(&viewer, &owner, p)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// The peer whose folder `p` is in.
    pub(super) fn peer_of(&self, place: &Place, p: &Path) -> Option<String> {
        match place {
            Place::Other | Place::State { .. } | Place::Tables { .. } => {
                let rel = p.strip_prefix(&self.root).ok()?;
                let first = rel.components().next()?.as_os_str().to_str()?.to_string();
                self.core.registry().exists(&first).then_some(first)
            }
            _ => None,
        }
    }

    pub(super) fn path_changed(self: &Arc<Self>, p: &Path) {
        self.path_changed_try(p, 0)
    }

    /// `tries`: how often this inbox file was found held by a writer already.
    pub(super) fn path_changed_try(self: &Arc<Self>, p: &Path, tries: u32) {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        if is_staging_name(name) {
            return;
        }
        match self.place(p) {
            Some(Place::Inbox {
                caller,
                target,
                name,
            }) => self.intake(&caller, &target, &name, p, false, tries),
            Some(Place::Text(peer, text)) => self.text_file(&peer, text, p),
            Some(Place::Module(peer, rel)) => self.module_file(&peer, &rel, p),
            Some(Place::State { viewer, owner }) => self.state_touched(&viewer, &owner, p),
            Some(Place::Tables { viewer, owner }) => self.tables_touched(&viewer, &owner, p),
            _ => {}
        }
    }

    pub(super) fn new_peer_dir(self: &Arc<Self>, path: &Path, name: &str) {
        if name.starts_with('.') || self.core.registry().exists(name) {
            return;
        }
        if let Err(e) = check_peer_name(name) {
            tracing::warn!(folder = %path.display(), error = %e, "not a peer: the folder's name is not a valid peer name");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::symlink_metadata(path).and_then(|m| {
            if m.is_dir() {
                Ok(m)
            } else {
                Err(std::io::ErrorKind::NotADirectory.into())
            }
        }) else {
            return;
        };
        match self.core.create_peer(name, m.uid(), m.gid()) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(peer = name, error = %e, "cannot create the peer of a new folder");
                return;
            }
        }
        if let Err(e) = self.layout(name) {
            tracing::error!(peer = name, error = %e, "cannot lay out the new peer's folder");
        }
        self.scan_peer(name, false);
        self.scan_later(name, Duration::from_millis(200));
    }

    pub(super) fn scan_later(&self, peer: &str, after: Duration) {
        let at = Instant::now() + after;
        self.later.lock().unwrap().push((at, peer.to_string()));
    }

    /// Every folder of every peer, as after an overflow (`startup`: skip what the
    /// stores recorded as taken).
    pub(super) fn scan_all(self: &Arc<Self>, startup: bool) {
        self.stats.rescans.fetch_add(1, Ordering::Relaxed);
        let peers = self.core.registry().list();
        // Folders made while nobody watched are peers too.
        if !startup {
            if let Ok(rd) = std::fs::read_dir(&self.root) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let dir = e.file_type().is_ok_and(|t| t.is_dir());
                    if dir && !self.core.registry().exists(&name) {
                        self.new_peer_dir(&e.path(), &name);
                    }
                }
            }
        }
        for (name, _) in peers {
            self.scan_peer(&name, startup);
        }
    }

    pub(super) fn scan_peer(self: &Arc<Self>, peer: &str, startup: bool) {
        self.scan_peer_inside(peer, startup);
        let _ = self.mirror.send(mirror::Note::Check {
            viewer: peer.to_string(),
            owner: None,
        });
        let _ = self.mirror.send(mirror::Note::Tables {
            viewer: peer.to_string(),
            owner: None,
        });
    }

    /// Listings as the peer's user (see `as_user`); each take does its own switch, and
    /// submissions (which may open stores) happen as the daemon.
    pub(super) fn scan_peer_inside(self: &Arc<Self>, peer: &str, startup: bool) {
        let user = user_of(&self.core, peer);
        let read_dir = |d: &Path| as_user(user, || std::fs::read_dir(d));
        let dir = self.peer_dir(peer);
        let submit = |e: &&Entry| e.close == Close::Submit;
        let mut inboxes: Vec<(String, PathBuf)> = (self.layout.entries().iter().filter(submit))
            .map(|e| (peer.to_string(), dir.join(e.name)))
            .collect();
        if let Ok(rd) = read_dir(&self.peers_dir(peer)) {
            for v in rd.flatten() {
                let t = v.file_name().to_string_lossy().into_owned();
                for e in self.layout.view().filter(submit) {
                    inboxes.push((t.clone(), v.path().join(e.name)));
                }
            }
        }
        for (target, inbox) in inboxes {
            let Ok(rd) = read_dir(&inbox) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !is_staging_name(n))
                .collect();
            // Oldest first is unknowable; names at least give a stable order.
            names.sort();
            for n in names {
                let path = inbox.join(&n);
                // An empty file this young may be one whose writer's open(2) has
                // not returned yet (creation is visible first): look again later.
                let meta = as_user(user, || std::fs::symlink_metadata(&path));
                if meta.is_ok_and(|m| m.len() == 0 && young(&m)) {
                    self.scan_later(peer, Duration::from_secs(1));
                    continue;
                }
                self.intake(peer, &target, &n, &path, startup, 0);
            }
        }
        for e in self.layout.entries() {
            if let Close::Apply(text) = e.close {
                self.text_file(peer, text, &dir.join(e.name));
            }
        }
        let modules = self.layout.of_room(Room::Modules);
        let mods = dir.join(modules.unwrap_or(&crate::layout::MODULES).name);
        let mut stack = vec![mods.clone()];
        while let Some(d) = stack.pop() {
            for e in read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&mods) {
                    let rel = rel.to_string_lossy().into_owned();
                    self.module_file(peer, &rel, &p);
                }
            }
        }
    }

    /// Takes the script `name` that `caller` dropped for `target` at `path`.
    pub(super) fn intake(
        self: &Arc<Self>,
        caller: &str,
        target: &str,
        name: &str,
        path: &Path,
        startup: bool,
        tries: u32,
    ) {
        if is_staging_name(name) || !self.core.registry().exists(caller) {
            return;
        }
        if !self.inflight.lock().unwrap().insert(path.to_path_buf()) {
            return;
        }
        let user = user_of(&self.core, caller);
        let Some(t) = self.take_file(caller, target, path, tries, user) else {
            return self.done(path);
        };
        let crash = crate::exec::test_hooks::take_marked(&t.data);
        // A drop for a peer that another daemon of the lattice serves leaves as a
        // message from the caller (`Core::drop_script`, the mount's rule): the
        // record then lives in the caller's store, in the transaction that writes
        // the outgoing row.
        let what = match self
            .core
            .drop_script(caller, target, name, t.data, &serde_json::json!({}))
        {
            Ok(w) => w,
            Err(e) => {
                self.done(path);
                return self.refuse(caller, path, &e.message);
            }
        };
        let store = what.store(caller, target);
        let key = match what {
            Dropped::Send(_) => sent_key(target, name),
            Dropped::Submit(_) => taken_key(caller, name),
        };
        let record = t.ident.record();
        if startup && self.taken_before_restart(store, &key, &record, path, user) {
            return self.done(path);
        }
        self.stats.taken.fetch_add(1, Ordering::Relaxed);
        let ack = self.acknowledgement(caller, store, &key, path, t.ident, user, crash);
        let mut forget = self.forget.lock().unwrap();
        let mut f = forget.remove(store).unwrap_or_default();
        // This op records `key` anew: an older record's removal must not follow it.
        f.retain(|k| *k != key);
        // Pushed under the lock: no Forget of the same key overtakes this op.
        self.core
            .apply_async(store, intake_op(what, key, record, f), Some(ack));
    }

    /// `path` is no longer being taken.
    fn done(&self, path: &Path) {
        self.inflight.lock().unwrap().remove(path);
    }

    /// The script file at `path`, read as its owner; `None` when it is not taken
    /// now (not a file, still being written: looked at again soon, refused: said
    /// in the caller's folder, unreadable: taken at the next rescan).
    fn take_file(
        self: &Arc<Self>,
        caller: &str,
        target: &str,
        path: &Path,
        tries: u32,
        user: (u32, u32),
    ) -> Option<files::Taken> {
        // The owner's own limit for its own scripts, others' for the rest: the
        // same as the mount and the submission itself (`check_script_size`).
        let mine = crate::policy::owns(caller, target);
        let (max, set) = (
            self.core.base_limits(mine).max_script_bytes,
            limit_set(mine),
        );
        match as_user(user, || files::take(path, user.0, max)) {
            Ok(Ok(t)) => Some(t),
            Ok(Err(files::Skip::NotAFile)) => None,
            Ok(Err(files::Skip::BeingWritten)) => {
                self.stats.held.fetch_add(1, Ordering::Relaxed);
                // The close's event can come before the kernel counts the writer
                // gone: look again soon (2 ms, doubling, for about a second). A
                // writer that really still holds it brings its own event.
                if tries < 10 {
                    let at = Instant::now() + Duration::from_millis(2 << tries);
                    let mut retry = self.retry.lock().unwrap();
                    retry.push((at, path.to_path_buf(), tries + 1));
                }
                None
            }
            Ok(Err(files::Skip::Foreign(uid))) => {
                let why = format!("owned by uid {uid}, not by the peer's owner");
                self.refuse(caller, path, &why);
                None
            }
            Ok(Err(files::Skip::TooBig(n))) => {
                let why = format!(
                    "{n} bytes: the most a script may have is {max} (limits.{set}.max_script_bytes)"
                );
                self.refuse(caller, path, &why);
                None
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a script; it is taken at the next rescan");
                None
            }
        }
    }

    /// At start: whether the file at `path` was taken before a restart (its
    /// record in `store` is `record`): its submission (or send) committed, so it
    /// is removed instead of taken again.
    fn taken_before_restart(
        &self,
        store: &str,
        key: &str,
        record: &[u8],
        path: &Path,
        user: (u32, u32),
    ) -> bool {
        let recorded = self.core.peer(store).and_then(|p| p.read(|s| s.meta(key)));
        if !matches!(recorded, Ok(Some((ref r, _))) if r.as_slice() == record) {
            return false;
        }
        tracing::info!(file = %path.display(), "already submitted before the restart: removing it");
        let _ = as_user(user, || std::fs::remove_file(path));
        self.forget
            .lock()
            .unwrap()
            .entry(store.to_string())
            .or_default()
            .push(key.to_string());
        true
    }

    /// What follows a taken script's commit: the file leaves the inbox (unless it
    /// was rewritten since, then it is taken again) and its record is forgotten
    /// later; a refusal is said in the caller's folder, a failure waits for a rescan.
    #[allow(clippy::too_many_arguments)]
    fn acknowledgement(
        self: &Arc<Self>,
        caller: &str,
        store: &str,
        key: &str,
        path: &Path,
        ident: files::Ident,
        user: (u32, u32),
        crash: bool,
    ) -> Box<dyn FnOnce(Result<()>) + Send> {
        let p = path.to_path_buf();
        let me = Arc::downgrade(self);
        let (caller_s, store_s, k2) = (caller.to_string(), store.to_string(), key.to_string());
        Box::new(move |r: Result<()>| {
            let Some(me) = me.upgrade() else { return };
            match r {
                Ok(()) => {
                    if crash {
                        crate::exec::test_hooks::abort_after_take(&p);
                    }
                    // Committed: now it may leave the inbox, unless it was rewritten
                    // since it was taken (then the new content is taken too).
                    let same = std::fs::symlink_metadata(&p).is_ok_and(|m| ident.same_file(&m));
                    if same {
                        if let Err(e) = as_user(user, || std::fs::remove_file(&p)) {
                            tracing::warn!(file = %p.display(), error = %e, "cannot remove a submitted script");
                        }
                    }
                    me.forget
                        .lock()
                        .unwrap()
                        .entry(store_s)
                        .or_default()
                        .push(k2);
                    me.inflight.lock().unwrap().remove(&p);
                    if !same && p.exists() {
                        let _ = me.tx.lock().unwrap().send(Msg::Retake(p));
                    }
                }
                Err(e) => {
                    me.inflight.lock().unwrap().remove(&p);
                    if matches!(e.errno, libc::EFBIG | libc::EINVAL | libc::ENOENT) {
                        me.refuse(&caller_s, &p, &e.message);
                    } else {
                        tracing::warn!(file = %p.display(), error = %e, "submission failed; the script stays in the inbox and is taken at the next rescan or restart");
                    }
                }
            }
        })
    }

    /// Sends the records of removed files to their stores (`wait`: durably, at stop).
    pub(super) fn flush_forget(&self, wait: bool) {
        let mut forget = self.forget.lock().unwrap();
        for (target, keys) in forget.drain() {
            if keys.is_empty() {
                continue;
            }
            if wait {
                if let Err(e) = self.core.apply(&target, Op::Forget(keys)) {
                    tracing::warn!(peer = %target, error = %e, "cannot drop intake records");
                }
            } else {
                self.core.apply_async(&target, Op::Forget(keys), None);
            }
        }
    }

    /// A script that can never be submitted: renamed to a staging name (so it never
    /// runs and no rescan takes it again) with the reason in the caller's log.
    pub(super) fn refuse(&self, caller: &str, path: &Path, why: &str) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = path.with_file_name(format!("{name}.refused~"));
        let _ = as_user(user_of(&self.core, caller), || {
            std::fs::rename(path, &aside)
        });
        let line = format!("spool: {name} refused: {why} (renamed to {name}.refused~)");
        tracing::warn!(peer = caller, "{line}");
        self.core.apply_async(caller, Op::Log(line), None);
    }

    /// `policy.cedar` or `groups` of `peer`, applied when it differs from the
    /// store's, or refused, as on the mount (`layout::apply_text`).
    pub(super) fn text_file(&self, peer: &str, text: PolicyText, path: &Path) {
        let user = user_of(&self.core, peer);
        let t = match as_user(user, || files::take(path, user.0, MAX_META_FILE)) {
            Ok(Ok(t)) => t,
            Ok(Err(files::Skip::BeingWritten)) => {
                // A writer still holds it: read it again shortly (its close may
                // have come and gone while the lease was refused).
                self.scan_later(peer, Duration::from_millis(100));
                return;
            }
            r => {
                tracing::debug!(peer, file = %path.display(), outcome = ?r.map(|_| ()), "text not taken");
                return;
            }
        };
        let Ok(p) = self.core.peer(peer) else { return };
        let cur = p
            .read(|s| s.meta(text.key()))
            .ok()
            .flatten()
            .map(|m| m.0)
            .unwrap_or_default();
        if cur == t.data {
            tracing::debug!(peer, file = %path.display(), "text as stored");
            return;
        }
        let fp = (peer.to_string(), text, t.ident.hash);
        if self.refused.lock().unwrap().contains(&fp) {
            return;
        }
        let applied = crate::exec::block_on("the text was applied", |done| {
            crate::layout::apply_text(&self.core, peer, text, t.data, done)
        });
        match applied {
            Ok(()) => {}
            // Refused: the reason is in the peer's log; not logged again on a rescan.
            Err(e) if e.errno == libc::EINVAL => {
                tracing::warn!(peer, "{}", e.message);
                self.refused.lock().unwrap().insert(fp);
            }
            Err(e) => tracing::warn!(peer, error = %e, "{} not applied", text.key()),
        }
    }

    /// `modules/<rel>`: stored when it is a `.rhai` file that differs from the
    /// store's copy, removed from the store when the file is gone.
    pub(super) fn module_file(&self, peer: &str, rel: &str, path: &Path) {
        let Some(m) = rel.strip_suffix(".rhai").filter(|m| !m.is_empty()) else {
            return;
        };
        if rel.split('/').any(is_staging_name) {
            return;
        }
        if let Err(e) = check_module_name(m) {
            tracing::warn!(peer, file = %path.display(), error = %e, "not a module");
            return;
        }
        let Ok(p) = self.core.peer(peer) else { return };
        let cur = p.read(|s| s.module(m)).ok().flatten();
        let user = user_of(&self.core, peer);
        // A module is written by its owner, as on the mount.
        let max = self.core.base_limits(true).max_script_bytes;
        let op = match as_user(user, || files::take(path, user.0, max)) {
            Ok(Ok(t)) if cur.as_deref() != Some(&t.data[..]) => {
                Op::SetModule(m.to_string(), t.data)
            }
            Ok(Err(files::Skip::NotAFile)) if cur.is_some() && !path.exists() => {
                Op::RemoveModule(m.to_string())
            }
            _ => return,
        };
        if let Err(e) = self.core.apply(peer, op) {
            tracing::warn!(peer, module = m, error = %e, "module change not applied");
        }
    }

    pub(super) fn state_touched(&self, viewer: &str, owner: &str, p: &Path) {
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
        {
            return;
        }
        let _ = self.mirror.send(mirror::Note::Check {
            viewer: viewer.to_string(),
            owner: Some(owner.to_string()),
        });
    }
}

impl Shared {
    /// Something changed under `viewer`'s `tables/` mirror of `owner`: the mirror
    /// thread takes the owner's row files and undoes the rest.
    pub(super) fn tables_touched(&self, viewer: &str, owner: &str, p: &Path) {
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
        {
            return;
        }
        let _ = self.mirror.send(mirror::Note::Tables {
            viewer: viewer.to_string(),
            owner: Some(owner.to_string()),
        });
    }
}

/// The name of a limit set in the config (`limits.own`, `limits.others`).
fn limit_set(own: bool) -> &'static str {
    if own {
        "own"
    } else {
        "others"
    }
}
