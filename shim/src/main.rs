//! The `wasmpod` binary: a thin front end over `wasmpod-runtime`.
mod cli;
mod containerd;
mod cri;
mod metrics;
mod streaming;

/// wasmpod's own gRPC calls (`shim/proto/wasmpod.proto`), served beside the CRI.
mod proto {
    tonic::include_proto!("wasmpod.v1");
}

fn main() -> std::process::ExitCode {
    cli::main()
}
