//! wasmpod-runtime: the core of wasmpod. All behaviour lives here; front ends (the CLI, the CRI
//! server, the containerd shim) only convert between their wire types and these.
pub mod container;
pub mod describe;
pub mod engine;
pub mod error;
pub mod exec;
pub mod exit;
pub mod image;
pub mod log;
pub mod manifest;
pub mod mounts;
pub mod network;
pub mod phase;
pub mod pod;
pub mod runner;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod stats;
pub mod stdio;
pub mod tls;
pub mod volume;
