//! `wasmpod serve`: the CRI (runtime.v1 RuntimeService + ImageService) over a unix socket,
//! with wasmpod's own `wasmpod.v1.Images` beside it for the CLI.
//! Transport and conversion only; all behaviour is in `wasmpod-runtime`.

pub(crate) mod convert;
#[cfg(test)]
mod fuzz;
mod image_service;
mod listing;
mod newer;
mod routes;
mod runtime_service;
mod stats;
mod streams;
pub mod wasmpod_images;

use std::future::Future;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use wasmpod_runtime::runtime::Runtime;

/// The `info` map of a status response: empty unless `verbose`, else one key `info` holding
/// JSON, as containerd answers (crictl prints it parsed).
fn verbose_info(
    verbose: bool,
    info: impl FnOnce() -> serde_json::Value,
) -> std::collections::HashMap<String, String> {
    if !verbose {
        return Default::default();
    }
    [("info".to_owned(), info().to_string())].into()
}

/// Messages up to this size either way, as kubelet and containerd allow.
pub const MAX_MESSAGE: usize = 16 << 20;

/// The streaming server's backend: exec, attach and port-forward sessions run by `rt`.
pub fn streaming_backend(rt: Arc<Runtime>) -> Arc<dyn crate::streaming::Backend> {
    Arc::new(streams::RuntimeBackend { rt })
}

/// Serves the CRI on `listener` until `shutdown` resolves, then drains in-flight calls.
/// Exec, Attach and PortForward answer with URLs of `streaming`.
pub async fn serve(
    rt: Arc<Runtime>,
    streaming: Arc<crate::streaming::StreamingServer>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
    metrics: Option<crate::metrics::Metrics>,
) -> Result<(), tonic::transport::Error> {
    let api = Arc::new(runtime_service::RuntimeApi {
        rt: rt.clone(),
        streaming,
        lists: Default::default(),
    });
    let runtime = routes::Routes {
        inner: RuntimeServiceServer::from_arc(api.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        api,
    };
    let images = ImageServiceServer::new(image_service::ImageApi { rt: rt.clone() })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let own_images =
        crate::proto::images_server::ImagesServer::new(wasmpod_images::ImagesApi { rt });
    // Large lists (ListContainers at 10,000) must not crawl through 64 KiB flow-control
    // windows: let them grow with the connection's bandwidth-delay product, as grpc-go does.
    tonic::transport::Server::builder()
        .http2_adaptive_window(Some(true))
        .layer(crate::metrics::CriLayer { metrics })
        .add_service(runtime)
        .add_service(images)
        .add_service(own_images)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}
