//! The CRI RuntimeService over [`Runtime`]: conversion and status mapping only.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use wasmpod_runtime::container::{Container, EventKind};
use wasmpod_runtime::describe;
use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::pod::Pod;
use wasmpod_runtime::runtime::Runtime;

use super::convert::{self, nanos, status};
use super::listing::{ListCache, Listing};
use super::newer::{UpdatePodSandboxResourcesRequest, UpdatePodSandboxResourcesResponse};
use super::stats;
use super::verbose_info;
use crate::streaming::{Request as Session, StreamingServer};

pub struct RuntimeApi {
    pub rt: Arc<Runtime>,
    pub streaming: Arc<StreamingServer>,
    /// The encoded messages ListContainers and ListPodSandbox answer with.
    pub lists: Arc<ListCache>,
}

type Result<T> = std::result::Result<Response<T>, Status>;

/// Stop and remove succeed when the object is already gone, as the CRI asks.
fn idempotent(r: wasmpod_runtime::error::Result<()>) -> std::result::Result<(), Status> {
    match r {
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        other => other.map_err(status),
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented by wasmpod yet"))
}

impl RuntimeApi {
    /// A URL of the streaming server for one session.
    fn session(&self, request: Session) -> std::result::Result<String, Status> {
        self.streaming
            .url(request)
            .map_err(Status::invalid_argument)
    }

    /// Containers whose id and pod id start with the filter's and whose labels match, and
    /// how many containers the runtime holds.
    fn select_containers(
        &self,
        id: &str,
        pod: &str,
        selector: &HashMap<String, String>,
    ) -> std::result::Result<(Vec<Arc<Container>>, usize), Status> {
        convert::check_selector(selector)?;
        let all = self.rt.containers();
        let live = all.len();
        let selected = all
            .into_iter()
            .filter(|c| c.id.starts_with(id) && c.pod_id.starts_with(pod))
            .filter(|c| c.in_wasmpod_pod() && convert::matches(&c.config.labels, selector))
            .collect();
        Ok((selected, live))
    }

    /// Pods whose id starts with the filter's and whose labels match, and how many pods the
    /// runtime holds.
    fn select_pods(
        &self,
        id: &str,
        selector: &HashMap<String, String>,
    ) -> std::result::Result<(Vec<Arc<Pod>>, usize), Status> {
        convert::check_selector(selector)?;
        let all = self.rt.pods();
        let live = all.len();
        let selected = all
            .into_iter()
            .filter(|p| p.id.starts_with(id) && convert::matches(&p.config.labels, selector))
            .filter(|p| is_ours(p))
            .collect();
        Ok((selected, live))
    }

    /// ListContainers' answer: the selected containers in the state asked for, if any.
    pub fn container_listing(
        &self,
        r: cri::ListContainersRequest,
    ) -> std::result::Result<Listing, Status> {
        let filter = r.filter.unwrap_or_default();
        let (selected, live) =
            self.select_containers(&filter.id, &filter.pod_sandbox_id, &filter.label_selector)?;
        let containers = in_state(
            selected,
            convert::container_state,
            filter.state.map(|s| s.state),
        );
        Ok(self.lists.containers(&containers, live))
    }

    /// ListPodSandbox's answer: the selected pods in the state asked for, if any.
    pub fn pod_listing(
        &self,
        r: cri::ListPodSandboxRequest,
    ) -> std::result::Result<Listing, Status> {
        let filter = r.filter.unwrap_or_default();
        let (selected, live) = self.select_pods(&filter.id, &filter.label_selector)?;
        let pods = in_state(selected, convert::pod_state, filter.state.map(|s| s.state));
        Ok(self.lists.pods(&pods, live))
    }

    /// UpdatePodSandboxResources (served by [`super::routes::Routes`]): the pod's new memory
    /// limit and overhead; CPU figures are checked, not kept (no pod-level CPU limit).
    pub fn update_pod_sandbox_resources(
        &self,
        r: UpdatePodSandboxResourcesRequest,
    ) -> std::result::Result<UpdatePodSandboxResourcesResponse, Status> {
        let figures = |r: Option<cri::LinuxContainerResources>| {
            convert::cri_resources(&r.unwrap_or_default())
        };
        self.rt
            .update_pod_resources(&r.pod_sandbox_id, figures(r.resources), figures(r.overhead))
            .map_err(status)?;
        Ok(UpdatePodSandboxResourcesResponse {})
    }

    fn container_stats(&self, c: &Container) -> cri::ContainerStats {
        stats::container_stats(c, &self.rt.container_stats(c))
    }

    fn pod_stats(&self, pod: &Pod) -> cri::PodSandboxStats {
        stats::pod_stats(pod, &self.rt.pod_stats(pod))
    }

    fn event(&self, e: wasmpod_runtime::container::ContainerEvent) -> cri::ContainerEventResponse {
        let kind = match e.kind {
            EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        };
        let pod = self.rt.pod(&e.pod_id).ok();
        // The event's container as it was when the event happened; the others as they are.
        let containers_statuses = pod
            .as_ref()
            .map(|p| self.rt.pod_containers(p))
            .unwrap_or_default()
            .iter()
            .map(|c| match c.id == e.container_id {
                true => convert::container_status_in(c, e.state.clone()),
                false => convert::container_status(c),
            })
            .collect();
        cri::ContainerEventResponse {
            container_id: e.container_id,
            container_event_type: kind as i32,
            created_at: nanos(e.at),
            pod_sandbox_status: pod.as_ref().map(|p| convert::pod_status(p)),
            containers_statuses,
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Result<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "wasmpod".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Result<cri::RunPodSandboxResponse> {
        let config = r
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = self
            .rt
            .run_pod(convert::pod_config(config)?)
            .map_err(status)?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Result<cri::StopPodSandboxResponse> {
        idempotent(
            self.rt
                .stop_pod(&r.into_inner().pod_sandbox_id, Duration::ZERO)
                .await,
        )?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<cri::RemovePodSandboxResponse> {
        idempotent(self.rt.remove_pod(&r.into_inner().pod_sandbox_id).await)?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let r = r.into_inner();
        let pod = self.rt.pod(&r.pod_sandbox_id).map_err(status)?;
        let containers_statuses = self
            .rt
            .pod_containers(&pod)
            .iter()
            .map(|c| convert::container_status(c))
            .collect();
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(convert::pod_status(&pod)),
            info: verbose_info(r.verbose, || describe::pod(&self.rt, &pod)),
            containers_statuses,
            timestamp: nanos(SystemTime::now()),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Result<cri::ListPodSandboxResponse> {
        // Served by `listing::ListRoutes` without decoding; answered the same here.
        Ok(Response::new(self.pod_listing(r.into_inner())?.decode()?))
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Result<cri::CreateContainerResponse> {
        let r = r.into_inner();
        if r.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument("pod_sandbox_id is required"));
        }
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = self
            .rt
            .create_container(&r.pod_sandbox_id, convert::container_config(config)?)
            .await
            .map_err(status)?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Result<cri::StartContainerResponse> {
        self.rt
            .start_container(&r.into_inner().container_id)
            .map_err(status)?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Result<cri::StopContainerResponse> {
        let r = r.into_inner();
        let grace = Duration::from_secs(r.timeout.max(0) as u64);
        idempotent(self.rt.stop_container(&r.container_id, grace).await)?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Result<cri::RemoveContainerResponse> {
        idempotent(self.rt.remove_container(&r.into_inner().container_id).await)?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Result<cri::ListContainersResponse> {
        // Served by `listing::ListRoutes` without decoding; answered the same here.
        Ok(Response::new(
            self.container_listing(r.into_inner())?.decode()?,
        ))
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Result<cri::ContainerStatusResponse> {
        let r = r.into_inner();
        let c = self.rt.container(&r.container_id).map_err(status)?;
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(convert::container_status(&c)),
            info: verbose_info(r.verbose, || describe::container(&c)),
        }))
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<cri::UpdateContainerResourcesResponse> {
        let r = r.into_inner();
        let linux = r.linux.unwrap_or_default();
        self.rt
            .update_container_resources(&r.container_id, convert::cri_resources(&linux))
            .map_err(status)?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<cri::ReopenContainerLogResponse> {
        self.rt
            .reopen_container_log(&r.into_inner().container_id)
            .map_err(status)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Result<cri::ExecSyncResponse> {
        let r = req.into_inner();
        // As kubelet means it: 0 is no timeout.
        let timeout = (r.timeout > 0).then(|| Duration::from_secs(r.timeout as u64));
        let out = self
            .rt
            .exec_sync(&r.container_id, &r.cmd, timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Result<cri::ExecResponse> {
        let r = req.into_inner();
        if r.cmd.is_empty() {
            return Err(Status::invalid_argument("exec: the command is empty"));
        }
        self.rt.running_container(&r.container_id).map_err(status)?;
        let url = self.session(Session::Exec {
            container_id: r.container_id,
            cmd: r.cmd,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        })?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Result<cri::AttachResponse> {
        let r = req.into_inner();
        self.rt.running_container(&r.container_id).map_err(status)?;
        let url = self.session(Session::Attach {
            container_id: r.container_id,
            tty: r.tty,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
        })?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<cri::PortForwardResponse> {
        let r = req.into_inner();
        let ports =
            r.port
                .iter()
                .map(|&p| {
                    u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                        Status::invalid_argument(format!("port {p} is not a TCP port"))
                    })
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
        self.rt.ready_pod(&r.pod_sandbox_id).map_err(status)?;
        let url = self.session(Session::PortForward {
            pod_id: r.pod_sandbox_id,
            ports,
        })?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Result<cri::ContainerStatsResponse> {
        let c = self
            .rt
            .container(&r.into_inner().container_id)
            .map_err(status)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(self.container_stats(&c)),
        }))
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<cri::ListContainerStatsResponse> {
        let filter = r.into_inner().filter.unwrap_or_default();
        let stats = self
            .select_containers(&filter.id, &filter.pod_sandbox_id, &filter.label_selector)?
            .0
            .iter()
            .map(|c| self.container_stats(c))
            .collect();
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<cri::PodSandboxStatsResponse> {
        let pod = self
            .rt
            .pod(&r.into_inner().pod_sandbox_id)
            .map_err(status)?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(self.pod_stats(&pod)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<cri::ListPodSandboxStatsResponse> {
        let filter = r.into_inner().filter.unwrap_or_default();
        let stats = self
            .select_pods(&filter.id, &filter.label_selector)?
            .0
            .iter()
            .map(|p| self.pod_stats(p))
            .collect();
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<cri::UpdateRuntimeConfigResponse> {
        if let Some(net) = r.into_inner().runtime_config.and_then(|c| c.network_config) {
            self.rt.set_pod_cidr(&net.pod_cidr).map_err(status)?;
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Result<cri::StatusResponse> {
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            if self.rt.network().ready() {
                cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: true,
                    ..Default::default()
                }
            } else {
                cri::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: false,
                    reason: "NoPodCIDR".into(),
                    message: "node network mode is waiting for the node's pod CIDR".into(),
                }
            },
        ];
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info: verbose_info(r.into_inner().verbose, || describe::runtime(&self.rt)),
            // A read-only mount is read-only in its whole tree (one WASI preopen, one
            // permission); Wasm guests have no uids to map. The default handler ("") is
            // wasmpod too: clients that name no handler look it up.
            runtime_handlers: ["", describe::RUNTIME_HANDLER]
                .into_iter()
                .map(|name| cri::RuntimeHandler {
                    name: name.into(),
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: true,
                        user_namespaces: false,
                    }),
                })
                .collect(),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<cri::CheckpointContainerResponse> {
        Err(unimplemented("CheckpointContainer"))
    }

    type GetContainerEventsStream = Pin<
        Box<dyn Stream<Item = std::result::Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Self::GetContainerEventsStream> {
        let api = RuntimeApi {
            rt: self.rt.clone(),
            streaming: self.streaming.clone(),
            lists: self.lists.clone(),
        };
        let events =
            BroadcastStream::new(self.rt.subscribe_events()).filter_map(move |e| match e {
                Ok(e) => Some(Ok(api.event(e))),
                Err(_lagged) => None,
            });
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: stats::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<cri::ListPodSandboxMetricsResponse> {
        let pod_metrics = self
            .select_pods("", &HashMap::new())?
            .0
            .iter()
            .map(|p| stats::pod_metrics(p, &self.rt.pod_stats(p)))
            .collect();
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<cri::RuntimeConfigResponse> {
        Err(Status::unimplemented(
            "wasmpod uses no cgroups: there is no cgroup driver to report",
        ))
    }
}

/// Whether a pod is this CRI server's to list: containerd's pods are containerd's to show.
fn is_ours(pod: &Pod) -> bool {
    pod.config.owner == wasmpod_runtime::spec::PodOwner::Wasmpod
}

/// Each object with its CRI state now, keeping those in the state asked for (all without one).
fn in_state<T>(
    objects: Vec<Arc<T>>,
    state: impl Fn(&T) -> i32,
    wanted: Option<i32>,
) -> Vec<(Arc<T>, i32)> {
    objects
        .into_iter()
        .map(|o| {
            let now = state(&o);
            (o, now)
        })
        .filter(|(_, now)| wanted.is_none_or(|w| w == *now))
        .collect()
}
