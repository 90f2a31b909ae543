//! peerfs: decentralized backend ownership. Every peer is a directory on a FUSE
//! mount backed by its own SQLite file; peers cooperate by sending each other Rhai
//! scripts that each receiver checks against its own Cedar policy.
//!
//! The layers, bottom up: [`store`] (the storage trait and SQLite), [`script`] (the
//! sandboxed Rhai engine), [`peer`] (names and the registry), [`exec`] (per-peer
//! serial actors on a worker pool), [`policy`] (Cedar), [`vfs`] (the mount's tree as
//! plain Rust) and [`fuse`] (the thin fuser adapter); [`watch`] serves the same
//! tree as plain folders (spool mode).

pub mod config;
pub mod demo;
pub mod error;
pub mod exec;
pub mod fuse;
pub mod lattice;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod script;
pub mod store;
pub mod top;
pub mod util;
pub mod vfs;
pub mod watch;

pub use error::{Error, Result};
pub use exec::{Config, Core};
