//! Commit: how bytes and names become durable. Creating a file, writing a handle
//! back at close ([`Vfs::flush`] → `flush_now` → `commit`: a script is submitted, a
//! value or module stored, a policy or groups file validated and applied), renames
//! (files and state folders), unlink, and submission to the executor. A policy
//! text is applied or refused by `layout::apply_text`, as in the spool.

use super::handle::{Changes, Open};
use super::staging::Key;
use super::*;
use crate::error::err;
use crate::error::Result;
use crate::exec::Op;
use crate::layout::Close;
use crate::names::{check_key, is_staging_name};
use crate::util::now_ns;

impl Vfs {
    pub fn unlink(&self, parent: &Node, name: &str) -> Result<()> {
        let r = self.unlink_inner(parent, name);
        if r.is_ok() {
            // Handles still open on it store nothing at their close: the name is
            // gone, and POSIX gives an unlinked file's bytes no name to come back to.
            if let Ok(node) = self.child(parent, name).or_else(|_| match parent {
                Node::State { peer, dir } => Ok(Node::StateFile {
                    peer: peer.clone(),
                    key: join_key(dir, name),
                }),
                _ => Err(err!(libc::ENOENT, "gone")),
            }) {
                for h in self.handles.all() {
                    let mut h = h.lock().unwrap();
                    if h.node == node {
                        if let Some(w) = h.writer() {
                            w.changes = Changes::Unlinked;
                        }
                    }
                }
            }
        }
        r
    }

    pub(super) fn unlink_inner(&self, parent: &Node, name: &str) -> Result<()> {
        if let Node::Inbox { peer, target } = parent {
            if self.submitting(parent, name) {
                // Its close is submitting it: the submission is on its way to the
                // queue, and a withdrawal sent now follows it there (a peer's
                // changes are applied in order), so it never runs and its result
                // says so. Removing only the listed name would let it run.
                if peer != target {
                    return Err(err!(
                        libc::EBUSY,
                        "{name} is being submitted to {target}: a submitted script cannot be withdrawn"
                    ));
                }
                self.staged.remove(&(parent.clone(), name.to_string()));
                return self.core.withdraw(peer, name);
            }
        }
        if self
            .staged
            .remove(&(parent.clone(), name.to_string()))
            .is_some()
        {
            return Ok(());
        }
        let node = self.child(parent, name)?;
        match &node {
            Node::StateFile { peer, key } => {
                // Its folders stay (the store keeps them, see `Op::Remove`).
                self.core.apply(peer, Op::Remove(key.clone()))?;
                self.entries_changed(parent);
                Ok(())
            }
            Node::ModuleFile { peer, name } => {
                let m = module_name(name)
                    .ok_or_else(|| err!(libc::ENOENT, "no module file {name:?}"))?;
                self.core.apply(peer, Op::RemoveModule(m.to_string()))
            }
            Node::OutboxFile { peer, target, name } => self.core.outbox_remove(peer, target, name),
            Node::TableFile {
                peer,
                table,
                key: Some(k),
                ..
            } if node.is_own_row_file() => self.core.apply(
                peer,
                Op::DeleteRow {
                    table: table.clone(),
                    key: k.clone(),
                },
            ),
            // The owner withdraws its own queued script (it ends unrun, with a
            // result saying so); another peer's queue is not the caller's to empty.
            Node::InboxFile { peer, target, .. } if peer == target => {
                // Listed, so queued a moment ago: if the withdrawal finds it gone,
                // it was taken to run in between, and the rm is refused saying so.
                let listed = self.attr(&node).is_ok();
                self.core.withdraw(peer, name).map_err(|e| match e.errno {
                    libc::ENOENT if listed => err!(
                        libc::EBUSY,
                        "{name} started to run before it could be withdrawn: its result \
                         will be in outbox/"
                    ),
                    _ => e,
                })
            }
            Node::InboxFile { .. } => {
                self.attr(&node)?;
                Err(err!(
                    libc::EBUSY,
                    "{name} is queued to run: a submitted script cannot be withdrawn"
                ))
            }
            Node::State { .. } => Err(err!(libc::EISDIR, "{name} is a folder: use rmdir")),
            _ => Err(err!(libc::EACCES, "{name} cannot be removed")),
        }
    }

    /// Whether a close is submitting the inbox file `name` of `inbox` now.
    fn submitting(&self, inbox: &Node, name: &str) -> bool {
        let Node::Inbox { peer, target } = inbox else {
            return false;
        };
        let node = Node::InboxFile {
            peer: peer.clone(),
            target: target.clone(),
            name: name.to_string(),
        };
        self.handles.all().iter().any(|h| {
            let h = h.lock().unwrap();
            h.node == node && matches!(&h.open, Open::Write(w) if w.committing > 0)
        })
    }

    pub fn rename(
        &self,
        parent: &Node,
        name: &str,
        newparent: &Node,
        newname: &str,
        flags: impl Into<RenameFlags>,
    ) -> Result<()> {
        if parent.peer() != newparent.peer() {
            return Err(err!(
                libc::EXDEV,
                "rename across peers: copy the file instead"
            ));
        }
        let flags = flags.into();
        if flags.exchange {
            return Err(err!(libc::EINVAL, "RENAME_EXCHANGE is not supported"));
        }
        let noreplace = flags.noreplace;
        if noreplace
            && self
                .child(newparent, newname)
                .and_then(|n| self.attr(&n))
                .is_ok()
        {
            return Err(err!(libc::EEXIST, "{newname} exists"));
        }
        let src_key = (parent.clone(), name.to_string());
        let staged = self.staged.get(&src_key);
        let to = (newparent.clone(), newname.to_string());
        match (parent, newparent) {
            (Node::Inbox { .. }, Node::Inbox { .. }) => self.rename_in_inbox(src_key, staged, to),
            (Node::State { peer, .. }, Node::State { .. }) => {
                self.rename_in_state(peer, src_key, staged, to)
            }
            (Node::Peer(peer), Node::Peer(_)) => self.rename_edit(peer, name, newname, staged),
            (Node::Modules(peer), Node::Modules(_)) => {
                self.rename_in_modules(peer, src_key, staged, to)
            }
            _ => Err(err!(libc::EACCES, "{name} cannot be moved there")),
        }
    }

    /// rename(2) in an inbox: a staging file moves to another staging name, or is
    /// submitted under a real one; a queued script stays where it is.
    fn rename_in_inbox(&self, src_key: Key, staged: Option<Staged>, to: Key) -> Result<()> {
        let (name, (newparent, newname)) = (&src_key.1, &to);
        let s = staged
            .ok_or_else(|| err!(libc::EBUSY, "{name} is queued to run: it cannot be renamed"))?;
        let dst = self.child(newparent, newname)?;
        if is_staging_name(newname) {
            self.staged.rename(&src_key, to, s);
            return Ok(());
        }
        // Renamed into the inbox under a real name: submitted, durably, now.
        self.submit(&dst, s.data)?;
        self.staged.remove(&src_key);
        Ok(())
    }

    /// rename(2) in `state/`: a key (or a file made and not yet closed) to a new
    /// key, a folder with every key under it.
    fn rename_in_state(
        &self,
        peer: &str,
        src_key: Key,
        staged: Option<Staged>,
        to: Key,
    ) -> Result<()> {
        let ((parent, name), (newparent, newname)) = (&src_key, &to);
        self.entries_changed(parent);
        self.entries_changed(newparent);
        let src = self.child(parent, name)?;
        if let Node::State { dir: from, .. } = &src {
            return self.rename_folder(peer, from, newparent, newname);
        }
        let dst = match self.child(newparent, newname) {
            Ok(n) => n,
            Err(_) => {
                let Node::State { peer, dir } = newparent else {
                    unreachable!()
                };
                let key = join_key(dir, newname);
                check_key(&key)?;
                Node::StateFile {
                    peer: peer.clone(),
                    key,
                }
            }
        };
        let Node::StateFile { key: to, .. } = &dst else {
            return Err(err!(libc::EISDIR, "{newname} is a folder"));
        };
        match (&src, staged) {
            (_, Some(s)) => {
                self.core.apply(peer, Op::SetBytes(to.clone(), s.data))?;
                if let Some(m) = s.mode {
                    self.core.apply(peer, Op::SetMode(to.clone(), m))?;
                }
                self.staged.remove(&src_key);
                Ok(())
            }
            (Node::StateFile { key: from, .. }, None) => {
                self.core
                    .apply(peer, Op::Rename(from.clone(), to.clone()))?;
                Ok(())
            }
            // mv falls back to copy-and-remove for folders.
            _ => Err(err!(
                libc::EXDEV,
                "renaming a state folder: mv copies it instead"
            )),
        }
    }

    /// rename(2) in `modules/`: a draft moves between staging names or becomes a
    /// module; a module gets a new name.
    fn rename_in_modules(
        &self,
        peer: &str,
        src_key: Key,
        staged: Option<Staged>,
        to: Key,
    ) -> Result<()> {
        let (name, newname) = (src_key.1.as_str(), to.1.as_str());
        if let Some(s) = staged {
            if is_staging_name(newname) || module_name(newname).is_none() {
                self.staged.rename(&src_key, to, s);
                return Ok(());
            }
            let m = module_name(newname).expect("checked");
            self.core
                .apply(peer, Op::SetModule(m.to_string(), s.data))?;
            self.staged.remove(&src_key);
            return Ok(());
        }
        let from =
            module_name(name).ok_or_else(|| err!(libc::ENOENT, "no module file {name:?}"))?;
        let to = module_name(newname)
            .ok_or_else(|| err!(libc::EINVAL, "module files end in .rhai: {newname:?}"))?;
        let p = self.core.peer(peer)?;
        let src = p
            .read(|s| s.module(from))?
            .ok_or_else(|| err!(libc::ENOENT, "no module {from:?}"))?;
        self.core.apply(peer, Op::SetModule(to.to_string(), src))?;
        self.core.apply(peer, Op::RemoveModule(from.to_string()))
    }

    /// rename(2) in a peer's own folder: an editor's file renamed onto
    /// `policy.cedar` or `groups` is validated and applied as at a close (`sed -i`,
    /// `mv .new policy.cedar`); between editor's names it just moves.
    fn rename_edit(
        &self,
        peer: &str,
        name: &str,
        newname: &str,
        staged: Option<Staged>,
    ) -> Result<()> {
        let src = (Node::Peer(peer.to_string()), name.to_string());
        let Some(s) = staged else {
            return Err(err!(
                libc::EACCES,
                "{name} stays where it is: edit it in place, or write a new one beside it \
                 and rename that onto it"
            ));
        };
        let text = self.layout.entry(newname).and_then(|e| match e.close {
            Close::Apply(text) => Some(text),
            _ => None,
        });
        let dst = match (text, newname) {
            (Some(text), _) => Node::text(peer, text),
            (None, n) if is_edit_name(n) => {
                let to = (Node::Peer(peer.to_string()), n.to_string());
                self.staged.rename(&src, to, s);
                return Ok(());
            }
            (None, _) => {
                let texts = self.layout.written(Kind::File, "", "or");
                return Err(err!(
                    libc::EACCES,
                    "{newname}: a file of the peer's folder can be renamed onto {texts} only"
                ));
            }
        };
        let what = format!("{newname} was applied");
        crate::exec::block_on(&what, |done| self.commit(dst, s.data, done))?;
        self.staged.remove(&src);
        self.entries_changed(&Node::Peer(peer.to_string()));
        Ok(())
    }

    /// rename(2) of a folder in `state/`: every key under it moves in one
    /// transaction; over an empty folder it replaces it, over one with entries it
    /// is `ENOTEMPTY`, over a file `ENOTDIR`.
    pub(super) fn rename_folder(
        &self,
        peer: &str,
        from: &str,
        newparent: &Node,
        newname: &str,
    ) -> Result<()> {
        let Node::State { dir, .. } = newparent else {
            return Err(err!(libc::EXDEV, "a state folder stays in state/"));
        };
        let to = join_key(dir, newname);
        check_key(&to)?;
        if to == from {
            return Ok(());
        }
        match self.child(newparent, newname) {
            Ok(Node::State { .. }) => {
                if !self
                    .readdir(&Node::State {
                        peer: peer.to_string(),
                        dir: to.clone(),
                    })?
                    .is_empty()
                {
                    return Err(err!(libc::ENOTEMPTY, "state/{to} is not empty"));
                }
            }
            Ok(_) => return Err(err!(libc::ENOTDIR, "state/{to} is a file")),
            Err(e) if e.errno == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(err!(libc::EINVAL, "state/{from} cannot move into itself"));
        }
        self.core
            .apply(peer, Op::RenameDir(from.to_string(), to.clone()))?;
        // Kept folders inside move along and the old folder's parents stay (the
        // store does both in the same transaction).
        Ok(())
    }

    /// Submits a complete script dropped at `node` (an inbox file), durably.
    pub(super) fn submit(&self, node: &Node, data: Vec<u8>) -> Result<()> {
        crate::exec::block_on("the script was submitted", |done| {
            self.submit_async(node, data, done)
        })
    }

    pub(super) fn submit_async(&self, node: &Node, data: Vec<u8>, reply: Reply<()>) {
        let Node::InboxFile { peer, target, name } = node else {
            return reply(Err(err!(libc::EINVAL, "not an inbox file")));
        };
        self.core.drop_script_async(peer, target, name, data, reply);
    }

    /// What a name that `lookup` did not find (`e`) becomes when it is created
    /// in `parent`: a state key, the owner's new row file, an editor's file
    /// beside the policy texts; elsewhere `EACCES` (a read-only place, not a
    /// missing one).
    fn new_child(&self, parent: &Node, name: &str, e: crate::Error) -> Result<Node> {
        match parent {
            Node::State { peer, dir } if e.errno == libc::ENOENT => {
                let key = join_key(dir, name);
                check_key(&key)?;
                Ok(Node::StateFile {
                    peer: peer.clone(),
                    key,
                })
            }
            // A new row file in the owner's own `tables/<table>/`.
            Node::Tables {
                peer,
                target,
                table: Some(t),
            } if e.errno == libc::ENOENT && peer == target && name.ends_with(".json") => {
                Ok(Node::TableFile {
                    peer: peer.clone(),
                    target: target.clone(),
                    table: t.clone(),
                    key: Some(name.trim_end_matches(".json").to_string()),
                })
            }
            // An editor's file beside policy.cedar and groups (`sed -i`, vim).
            Node::Peer(peer) if e.errno == libc::ENOENT && is_edit_name(name) => {
                Ok(Node::EditFile {
                    peer: peer.clone(),
                    name: name.to_string(),
                })
            }
            // Only the folders the owner writes (inbox, state, modules) take new
            // files: elsewhere a new name is a read-only place, not a missing one.
            _ if e.errno == libc::ENOENT => Err(err!(
                libc::EACCES,
                "{name:?}: files can only be made in {} (and an editor's temporary, swap or \
             backup files beside {})",
                self.layout.written(Kind::Dir, "/", "and"),
                self.layout.written(Kind::File, "", "and")
            )),
            _ => Err(e),
        }
    }

    pub fn create(
        &self,
        parent: &Node,
        name: &str,
        flags: impl Into<OpenFlags>,
        who: &Caller,
    ) -> Result<(Node, Attr, Opened)> {
        let flags = flags.into();
        let node = self
            .child(parent, name)
            .or_else(|e| self.new_child(parent, name, e))?;
        if !matches!(
            node,
            Node::InboxFile { .. }
                | Node::StateFile { .. }
                | Node::ModuleFile { .. }
                | Node::EditFile { .. }
        ) && !node.is_own_row_file()
        {
            return Err(ro(name));
        }
        if self.attr(&node).is_ok() {
            if flags.exclusive {
                return Err(err!(libc::EEXIST, "{name} exists"));
            }
            if !matches!(node, Node::InboxFile { .. }) {
                let opened = self.open(&node, flags.truncating(), who)?;
                let attr = self.getattr(&node, Some(opened.fh))?;
                return Ok((node, attr, opened));
            }
        }
        let staged = Staged {
            data: Vec::new(),
            uid: who.uid,
            gid: who.gid,
            mtime_ns: now_ns(),
            ctime_ns: now_ns(),
            mode: None,
        };
        let attr = self.staged_attr(&staged);
        self.staged
            .insert((parent.clone(), name.to_string()), staged);
        self.entries_changed(parent);
        let opened = self.open_writer(&node, who, Vec::new(), Changes::Created)?;
        Ok((node, attr, opened))
    }

    pub(super) fn flush_now(&self, fh: u64, reply: Reply<()>) {
        let Some(shared) = self.handles.get(fh) else {
            return reply(Ok(()));
        };
        let (node, data) = {
            let mut h = shared.lock().unwrap();
            let node = h.node.clone();
            let Some(w) = h.writer() else {
                return reply(Ok(()));
            };
            if !w.changes.due_at_flush(&node) {
                if w.committing > 0 {
                    // Another close of this handle took the bytes; answer with it.
                    w.waiters.push(reply);
                    return;
                }
                return reply(Ok(()));
            }
            w.changes.committed();
            w.committing += 1;
            (node, w.buf().bytes().to_vec())
        };
        let handle = handle::weak(&shared);
        self.commit(
            node,
            data,
            Box::new(move |r: Result<()>| {
                let waiters = handle.upgrade().and_then(|h| {
                    let mut h = h.lock().unwrap();
                    let w = h.writer()?;
                    w.committing -= 1;
                    (w.committing == 0).then(|| std::mem::take(&mut w.waiters))
                });
                for w in waiters.into_iter().flatten() {
                    w(r.clone());
                }
                reply(r)
            }),
        );
    }

    pub fn fsync(&self, fh: u64, reply: Reply<()>) {
        // Every commit is already durable when it returns: fsync only flushes a
        // handle's unsaved writes, whoever asks.
        self.flush_now(fh, reply)
    }

    /// Makes a handle's bytes the file's content: submission, value, module, policy.
    pub(super) fn commit(&self, node: Node, data: Vec<u8>, reply: Reply<()>) {
        let staged_key = Node::parent_of(&node);
        let unstage = {
            let staged = Arc::downgrade(&self.staged);
            let key = staged_key.clone();
            move || {
                if let (Some(s), Some(k)) = (staged.upgrade(), key) {
                    s.remove(&k);
                }
            }
        };
        match &node {
            Node::InboxFile { name, .. }
            | Node::ModuleFile { name, .. }
            | Node::EditFile { name, .. }
                if is_staging_name(name)
                    || matches!(node, Node::EditFile { .. })
                    || (matches!(node, Node::ModuleFile { .. }) && module_name(name).is_none()) =>
            {
                // Staging files live in memory until renamed to a real name.
                if let Some(k) = staged_key {
                    self.staged.store(k, data, self.uid, self.gid, now_ns());
                }
                reply(Ok(()))
            }
            Node::InboxFile { .. } => self.submit_async(
                &node,
                data,
                Box::new(move |r| {
                    unstage();
                    reply(r)
                }),
            ),
            Node::StateFile { peer, key } => {
                // A mode set before the first close (rsync's temporary files) is
                // stored once the value is.
                let mode = staged_key
                    .as_ref()
                    .and_then(|k| self.staged.get(k).and_then(|s| s.mode));
                self.commit_value(peer, key, data, mode, unstage, reply)
            }
            Node::ModuleFile { peer, name } => {
                let m = module_name(name).expect("checked above").to_string();
                self.core.apply_async(
                    peer,
                    Op::SetModule(m, data),
                    Some(Box::new(move |r| {
                        if r.is_ok() {
                            unstage();
                        }
                        reply(r)
                    })),
                )
            }
            Node::Policy(_) | Node::Groups(_) | Node::Schema(_) => {
                let (peer, text) = node.as_text().expect("a policy text");
                crate::layout::apply_text(&self.core, peer, text, data, reply)
            }
            Node::TableFile {
                peer,
                table,
                key: Some(k),
                ..
            } if node.is_own_row_file() => self.core.apply_async(
                peer,
                Op::PutRow {
                    table: table.clone(),
                    key: k.clone(),
                    json: data,
                },
                Some(Box::new(move |r| {
                    unstage();
                    reply(r)
                })),
            ),
            _ => reply(Err(ro("this file"))),
        }
    }

    /// Stores `data` as the value of `key`, then `mode` if one was set before it
    /// was stored; `unstage` drops its staging entry once both are.
    fn commit_value(
        &self,
        peer: &str,
        key: &str,
        data: Vec<u8>,
        mode: Option<u32>,
        unstage: impl FnOnce() + Send + 'static,
        reply: Reply<()>,
    ) {
        let (core, p, k) = (self.core.clone(), peer.to_string(), key.to_string());
        self.core.apply_async(
            peer,
            Op::SetBytes(key.to_string(), data),
            Some(Box::new(move |r| match (r, mode) {
                (Ok(()), Some(m)) => core.apply_async(
                    &p,
                    Op::SetMode(k, m),
                    Some(Box::new(move |r| {
                        if r.is_ok() {
                            unstage();
                        }
                        reply(r)
                    })),
                ),
                (r, _) => {
                    if r.is_ok() {
                        unstage();
                    }
                    reply(r)
                }
            })),
        )
    }

    pub fn release(&self, fh: u64) {
        let Some(shared) = self.handles.remove(fh) else {
            return;
        };
        let mut h = shared.lock().unwrap();
        let node = h.node.clone();
        let Some(w) = h.writer() else {
            return;
        };
        if w.changes.due_at_release(&node) {
            // No flush came (unusual): commit anyway; nobody waits for the answer.
            let data = w.buf_mut().take();
            drop(h);
            self.commit(
                node,
                data,
                Box::new(|r| {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "write at release failed");
                    }
                }),
            );
            return;
        }
        // A created file that was never written and is not a staging name: its
        // flush committed it; drop the in-memory entry if one is left.
        if let Some((p, n)) = Node::parent_of(&node) {
            if !is_staging_name(&n)
                && !matches!(node, Node::ModuleFile { .. } if module_name(&n).is_none())
                && !matches!(node, Node::EditFile { .. })
            {
                self.staged.remove(&(p, n));
            }
        }
    }
}
