//! The integration tests, one binary (one link of the crate and its
//! dependencies), a module per area: the core without a mount, real mounts
//! driven with std::fs and coreutils, spool mode, the lattice with its own
//! nats-server per test, faults, concurrency, and the fuzz targets' corpora.
//! `cargo test --test it AREA::` runs one area.

mod common;
mod lattice_support;
mod spool_support;

mod concurrency;
mod config;
mod core;
mod faults;
mod fuzz_corpus;
mod fuzz_regressions;
mod history;
mod intake;
mod lattice;
mod lattice_move;
mod lattice_rogue;
mod metrics;
mod mount_bad_input;
mod mount_hardened;
mod mount_lifecycle;
mod mount_peer_files;
mod mount_policy;
mod mount_scripts;
mod mount_state;
mod operator;
mod policy;
mod replica;
mod spool;
mod spool_crash;
mod spool_lattice;
mod spool_tables;
mod store_model;
mod tables;
mod tables_model;
mod top;
mod transport;
mod trust;
mod vfs;
mod vfs_model;
