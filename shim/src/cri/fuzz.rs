//! Fuzz target (bolero) for the CRI request conversion: the bytes are a RunPodSandbox or
//! CreateContainer request as the gRPC server decodes it, seeded with `examples/crictl`
//! (`__fuzz__/cri__fuzz__requests/corpus`). Conversion answers a config that holds what the
//! runtime relies on, or InvalidArgument with a message of bounded size.

use k8s_cri::v1 as cri;
use prost::Message;
use wasmpod_runtime::spec::MountSource;

use super::convert::{container_config, pod_config};

/// Random inputs in a plain `cargo test` run (`BOLERO_RANDOM_ITERATIONS` overrides it).
const ITERATIONS: usize = 50_000;

fn check_status(status: &tonic::Status, input_len: usize) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // The message travels in a gRPC header: it may quote a field (escaped), nothing more.
    assert!(
        status.message().len() <= 256 + 10 * input_len,
        "status message of {} bytes",
        status.message().len()
    );
}

fn check_pod(config: cri::PodSandboxConfig, input_len: usize) {
    let mappings = config.port_mappings.len();
    match pod_config(config) {
        Ok(p) => {
            assert!(!p.name.is_empty() && !p.namespace.is_empty() && !p.hostname.is_empty());
            assert!(p
                .log_directory
                .as_ref()
                .is_none_or(|d| !d.as_os_str().is_empty()));
            assert_eq!(p.port_mappings.len(), mappings);
        }
        Err(s) => check_status(&s, input_len),
    }
}

fn check_container(config: cri::ContainerConfig, input_len: usize) {
    match container_config(config) {
        Ok(c) => {
            assert!(!c.name.is_empty() && !c.image.is_empty());
            assert!(c.memory_limit.is_none_or(|m| m > 0));
            assert!(c
                .log_path
                .as_ref()
                .is_none_or(|p| !p.as_os_str().is_empty()));
            for m in &c.mounts {
                assert!(!m.container_path.is_empty());
                assert!(matches!(&m.source, MountSource::Host(p) if !p.as_os_str().is_empty()));
            }
        }
        Err(s) => check_status(&s, input_len),
    }
}

#[test]
fn requests() {
    bolero::check!()
        .with_iterations(ITERATIONS)
        .for_each(|bytes: &[u8]| {
            if let Ok(req) = cri::RunPodSandboxRequest::decode(bytes) {
                if let Some(c) = req.config {
                    check_pod(c, bytes.len());
                }
            }
            if let Ok(req) = cri::CreateContainerRequest::decode(bytes) {
                if let Some(c) = req.sandbox_config {
                    check_pod(c, bytes.len());
                }
                if let Some(c) = req.config {
                    check_container(c, bytes.len());
                }
            }
        });
}
