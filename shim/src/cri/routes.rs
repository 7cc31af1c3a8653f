//! The RuntimeService as tonic serves it: the methods this server answers itself, in front of
//! the server `k8s-cri` generates, which answers every other method.
//!
//! - ListContainers and ListPodSandbox, answered from cached encodings through
//!   [`ListingCodec`] (see [`super::listing`]).
//! - UpdatePodSandboxResources, which `k8s-cri` 0.11 lacks (its messages are in
//!   [`super::newer`]), through prost's codec.
//!
//! Each gets the message size limits of the generated server. A method neither knows is
//! answered Unimplemented by the generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use k8s_cri::v1 as cri;
use tonic::body::Body;
use tonic::codec::Codec;
use tonic::server::{Grpc, NamedService};

use super::listing::ListingCodec;
use super::newer::UpdatePodSandboxResourcesRequest;
use super::runtime_service::RuntimeApi;

const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";
const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";
pub const UPDATE_POD_SANDBOX_RESOURCES: &str =
    "/runtime.v1.RuntimeService/UpdatePodSandboxResources";

/// The RuntimeService: the methods above answered here, every other one by the generated
/// server `inner`.
#[derive(Clone)]
pub struct Routes<S> {
    pub inner: S,
    pub api: Arc<RuntimeApi>,
}

impl<S: NamedService> NamedService for Routes<S> {
    const NAME: &'static str = S::NAME;
}

/// A gRPC server for one method through `codec`, with the message limits of the generated one.
fn grpc<C: Codec>(codec: C) -> Grpc<C> {
    Grpc::new(codec)
        .max_decoding_message_size(super::MAX_MESSAGE)
        .max_encoding_message_size(super::MAX_MESSAGE)
}

impl<S> tower::Service<http::Request<Body>> for Routes<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let api = self.api.clone();
        match req.uri().path() {
            LIST_CONTAINERS => Box::pin(async move {
                let list = tower::service_fn(|r: tonic::Request<cri::ListContainersRequest>| {
                    let listing = api.container_listing(r.into_inner());
                    async move { listing.map(tonic::Response::new) }
                });
                Ok(grpc(ListingCodec::default()).unary(list, req).await)
            }),
            LIST_POD_SANDBOX => Box::pin(async move {
                let list = tower::service_fn(|r: tonic::Request<cri::ListPodSandboxRequest>| {
                    let listing = api.pod_listing(r.into_inner());
                    async move { listing.map(tonic::Response::new) }
                });
                Ok(grpc(ListingCodec::default()).unary(list, req).await)
            }),
            UPDATE_POD_SANDBOX_RESOURCES => Box::pin(async move {
                let update =
                    tower::service_fn(|r: tonic::Request<UpdatePodSandboxResourcesRequest>| {
                        let answer = api.update_pod_sandbox_resources(r.into_inner());
                        async move { answer.map(tonic::Response::new) }
                    });
                Ok(grpc(tonic_prost::ProstCodec::default())
                    .unary(update, req)
                    .await)
            }),
            _ => Box::pin(self.inner.call(req)),
        }
    }
}
