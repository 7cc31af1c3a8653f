//! Compiles wasmpod's own gRPC service (shim/proto/wasmpod.proto), served beside the CRI.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/wasmpod.proto");
    tonic_prost_build::configure().compile_protos(&["proto/wasmpod.proto"], &["proto"])?;
    Ok(())
}
