//! The end-to-end tests: one test binary (one link of wasmtime and tonic instead of thirty),
//! one module per subject. Tests that measure this process itself (its CPU time, its thread
//! count) are binaries of their own: `cpu_limits`, `scale` and `stop`.

mod aot_cache;
mod bad_input;
mod cli;
mod cli_daemon;
mod cluster;
mod cluster_containerd;
mod containerd_peer;
mod containerd_shim;
mod cri;
mod crictl;
mod descriptors;
mod disk_full;
mod escapes;
mod exec;
mod exit_codes;
mod https_egress;
mod image_attacks;
mod images;
mod kube_stream;
mod kubelet;
mod lists;
mod logs;
mod manifests;
mod memory;
mod metrics;
mod network;
mod pod_memory;
mod restart;
mod stats;
mod streaming;
mod toolbox;
mod two_nodes;
mod volumes;
