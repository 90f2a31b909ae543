//! peerfs: decentralized backend ownership. Every peer is a directory on a FUSE
//! mount backed by its own SQLite file; peers cooperate by sending each other Rhai
//! scripts that each receiver checks against its own Cedar policy.
//!
//! The layers, top down (each imports only from layers below it):
//!
//! * the `peerfs` command (`main.rs`), over
//! * [`fuse`] (the thin fuser adapter) and [`spool`] (the same tree as plain
//!   folders: spool mode), over
//! * [`vfs`] (the mount's tree as plain Rust) and [`config`] (the config file
//!   and flags), side by side, over
//! * [`layout`] (a peer's folder as data, from which the mount and the spool are
//!   derived; its policy texts applied or refused), over
//! * [`metrics`] (the Prometheus export) and [`lattice`] (daemons as one system
//!   over NATS JetStream: the directory, the transport, credentials), over
//! * [`exec`] (per-peer serial actors on a runner pool; messages leave through
//!   its `Transport` seam), over
//! * [`replica`] (every store shipped to object storage; restores), over
//! * [`policy`] (Cedar: what another peer's script may do), over
//! * [`script`] (the sandboxed Rhai engine and its limits) and [`peer`] (the open
//!   peer and the registry), side by side, over
//! * [`store`] (the storage trait and its SQLite backend), over
//! * [`tables`] (declared tables: `schema.toml`, its checks, changes and SQL), over
//! * [`names`] (what a peer name, key or script name may be), over
//! * [`error`] and [`util`].
//!
//! [`demo`] prepares the demo's peers; [`top`] is `peerfs top`'s view; [`lock`]
//! keeps a data or spool folder to one process.

pub mod config;
pub mod demo;
pub mod error;
pub mod exec;
pub mod fuse;
pub mod lattice;
pub mod layout;
pub mod lock;
pub mod metrics;
pub mod names;
pub mod peer;
pub mod policy;
pub mod replica;
pub mod script;
pub mod spool;
pub mod store;
pub mod tables;
pub mod top;
pub mod util;
pub mod vfs;

pub use error::{Error, Result};
