//! CRI messages newer than the `k8s-cri` crate (0.11): defined here by their field numbers in
//! the CRI's `api.proto` (runtime.v1), served by [`super::routes::Routes`].

use k8s_cri::v1 as cri;

/// `UpdatePodSandboxResourcesRequest` (Kubernetes 1.33): kubelet tells the runtime a pod's
/// new pod-level resources after an in-place resize. Fields a later CRI may add are skipped
/// when decoding, as protobuf skips unknown fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdatePodSandboxResourcesRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    /// The pod's overhead (its RuntimeClass's), as at RunPodSandbox.
    #[prost(message, optional, tag = "2")]
    pub overhead: Option<cri::LinuxContainerResources>,
    /// The pod's resources without the overhead: its containers' together.
    #[prost(message, optional, tag = "3")]
    pub resources: Option<cri::LinuxContainerResources>,
}

/// `UpdatePodSandboxResourcesResponse`: empty.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdatePodSandboxResourcesResponse {}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn the_request_has_the_cri_field_numbers() {
        let r = UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "p".into(),
            overhead: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 1,
                ..Default::default()
            }),
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 2,
                ..Default::default()
            }),
        };
        // Field 1 (string "p"), 2 and 3 (each a message holding field 4, memory_limit_in_bytes).
        assert_eq!(
            r.encode_to_vec(),
            [0x0a, 1, b'p', 0x12, 2, 0x20, 1, 0x1a, 2, 0x20, 2]
        );
        assert_eq!(
            UpdatePodSandboxResourcesRequest::decode(r.encode_to_vec().as_slice()).unwrap(),
            r
        );
    }
}
