//! The CRI ImageService over the runtime's image store.

use std::sync::Arc;
use std::time::SystemTime;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};
use wasmpod_runtime::describe;
use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::image::{Credentials, ImageRecord};
use wasmpod_runtime::runtime::Runtime;

use super::convert::{nanos, status};
use super::verbose_info;

pub struct ImageApi {
    pub rt: Arc<Runtime>,
}

type Result<T> = std::result::Result<Response<T>, Status>;

fn image(r: &ImageRecord) -> cri::Image {
    let (uid, username) = match r.run.uid_or_name() {
        Some(Ok(uid)) => (Some(cri::Int64Value { value: uid }), String::new()),
        Some(Err(name)) => (None, name.to_owned()),
        None => (None, String::new()),
    };
    cri::Image {
        id: r.id.clone(),
        uid,
        username,
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        spec: Some(cri::ImageSpec {
            image: r.id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn image_name(spec: Option<cri::ImageSpec>) -> std::result::Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("image.image is required"))
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Result<cri::ListImagesResponse> {
        let wanted = r
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|i| !i.is_empty());
        let store = self.rt.images();
        let images = match wanted {
            Some(name) => store
                .get(&name)
                .map_err(status)?
                .iter()
                .map(image)
                .collect(),
            None => store.list().map_err(status)?.iter().map(image).collect(),
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Result<cri::ImageStatusResponse> {
        let r = r.into_inner();
        let name = image_name(r.image)?;
        let record = self.rt.images().get(&name).map_err(status)?;
        let info = match &record {
            Some(rec) => verbose_info(r.verbose, || describe::image(&self.rt, rec)),
            None => Default::default(),
        };
        Ok(Response::new(cri::ImageStatusResponse {
            image: record.as_ref().map(image),
            info,
        }))
    }

    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> Result<cri::PullImageResponse> {
        let r = r.into_inner();
        let name = image_name(r.image)?;
        let credentials = r
            .auth
            .map(|a| Credentials {
                username: a.username,
                password: a.password,
                auth: a.auth,
                identity_token: a.identity_token,
                registry_token: a.registry_token,
            })
            .unwrap_or_default();
        let record = self
            .rt
            .images()
            .pull(&name, &credentials, None)
            .await
            .map_err(status)?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Result<cri::RemoveImageResponse> {
        let name = image_name(r.into_inner().image)?;
        match self.rt.images().remove(&name).await {
            Err(e) if e.kind != ErrorKind::NotFound => return Err(status(e)),
            _ => {}
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<cri::ImageFsInfoResponse> {
        let (dir, usage) = self.rt.images().disk_usage();
        let fs = cri::FilesystemUsage {
            timestamp: nanos(SystemTime::now()),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: dir.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: usage.bytes }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: vec![],
        }))
    }
}
