//! OCI manifests and the four ways Wasm is packaged in them today:
//!
//! - **compat**: an ordinary image (`FROM scratch`, `COPY app.wasm /`) whose tar layers hold
//!   the `.wasm` that the entrypoint names;
//! - **runwasi layers**: an ordinary manifest with a `…wasm.component.layer.v0+wasm` or
//!   `application/wasm` layer;
//! - **CNCF Wasm artifact**: config `application/vnd.wasm.config.v0+json`, one
//!   `application/wasm` layer;
//! - **legacy**: `application/vnd.wasm.content.layer.v1+wasm` layers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
pub const RUNWASI_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
pub const LEGACY_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Every manifest media type wasmpod accepts.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Manifests and configs larger than this are refused: real ones are a few KiB.
pub const MAX_METADATA_SIZE: u64 = 4 << 20;

/// Refuses a manifest, config or layout file over [`MAX_METADATA_SIZE`]: the one limit that
/// pulls and imports share.
pub fn check_metadata_size(what: &str, size: u64) -> Result<()> {
    if size > MAX_METADATA_SIZE {
        return Err(Error::invalid(format!(
            "{what} is {size} bytes, over the {MAX_METADATA_SIZE}-byte limit"
        )));
    }
    Ok(())
}

/// A JSON error about image content that does not repeat the content: serde quotes the values
/// it rejects, and the bytes may not be what the image claims (a host file, a secret).
pub fn json_error(what: &str, e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let problem = match e.classify() {
        Category::Syntax => "not JSON",
        Category::Eof => "truncated JSON",
        Category::Data => "JSON of the wrong shape",
        Category::Io => "unreadable",
    };
    // Errors from an already parsed value have no position.
    let at = match e.line() {
        0 => String::new(),
        line => format!(" at line {line}, column {}", e.column()),
    };
    Error::invalid(format!("malformed {what}: {problem}{at}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WasmFormat {
    /// Tar layers with the `.wasm` inside (the image's files are the guest's `/`).
    Compat,
    /// runwasi's Wasm layers in an ordinary image manifest.
    RunwasiLayer,
    /// The CNCF Wasm OCI artifact.
    CncfArtifact,
    /// Legacy `application/vnd.wasm.content.layer.v1+wasm` layers.
    LegacyContent,
    /// A bare `.wasm` imported with a tag.
    Bare,
}

impl WasmFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WasmFormat::Compat => "compat",
            WasmFormat::RunwasiLayer => "wasm-layer",
            WasmFormat::CncfArtifact => "wasm-artifact",
            WasmFormat::LegacyContent => "wasm-legacy",
            WasmFormat::Bare => "wasm",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// A manifest or an index (the two are told apart by their fields).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug)]
pub enum Manifest {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        check_metadata_size("manifest", bytes.len() as u64)?;
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| json_error("manifest", &e))?;
        match (raw.manifests, raw.config, raw.layers) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(Error::invalid(
                "manifest is both an index and an image manifest",
            )),
            (Some(list), None, None) => Ok(Manifest::Index(list)),
            (None, Some(config), layers) => {
                if raw
                    .media_type
                    .as_deref()
                    .is_some_and(|m| m == OCI_INDEX || m == DOCKER_LIST)
                {
                    return Err(Error::invalid(
                        "manifest says it is an index but has a config",
                    ));
                }
                Ok(Manifest::Image {
                    config,
                    layers: layers.unwrap_or_default(),
                })
            }
            (None, None, _) => Err(Error::invalid(
                "manifest has neither a config nor manifests",
            )),
        }
    }
}

/// Picks the Wasm entry of an index: platform `wasm` on a `wasi*` OS (or `wasm`/`wasi`).
pub fn select_wasm_platform(entries: &[Descriptor]) -> Result<&Descriptor> {
    entries
        .iter()
        .find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.architecture == "wasm" && (p.os.starts_with("wasi") || p.os == "wasm")
            })
        })
        .ok_or_else(|| {
            let found: Vec<_> = entries
                .iter()
                .filter_map(|d| {
                    d.platform
                        .as_ref()
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                })
                .collect();
            Error::invalid(format!(
                "the image index has no wasi/wasm entry (platforms: {})",
                if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                }
            ))
        })
}

/// What the image config says about running it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub created: Option<String>,
    /// The config's `User` (`1002`, `www-data`, `1003:1004`): reported in image status, never
    /// applied (a Wasm guest has no uid).
    #[serde(default)]
    pub user: Option<String>,
}

impl RunConfig {
    /// The user part of `User` (before any `:group`) as a uid when numeric, else as a name.
    pub fn uid_or_name(&self) -> Option<Result<i64, &str>> {
        let user = self.user.as_deref()?.split(':').next()?;
        if user.is_empty() {
            return None;
        }
        Some(user.parse().map_err(|_| user))
    }
}

#[derive(Deserialize, Default)]
struct RawImageConfig {
    created: Option<String>,
    #[serde(default)]
    config: Option<RawContainerConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawContainerConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

impl RunConfig {
    /// Reads an OCI/Docker image config (or a Wasm artifact config, which has no run settings).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        check_metadata_size("image config", bytes.len() as u64)?;
        let raw: RawImageConfig =
            serde_json::from_slice(bytes).map_err(|e| json_error("image config", &e))?;
        let c = raw.config.unwrap_or_default();
        let entrypoint = c
            .entrypoint
            .unwrap_or_default()
            .into_iter()
            .chain(c.cmd.unwrap_or_default())
            .collect();
        let env = c
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect();
        Ok(RunConfig {
            entrypoint,
            env,
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            created: raw.created,
            user: c.user.filter(|u| !u.is_empty()),
        })
    }
}

/// Whether an image config names the content of its layers (docker/OCI `rootfs.diff_ids`, the
/// Wasm artifact's `layerDigests`), so that its digest identifies the image.
pub fn config_pins_layers(config: &[u8]) -> bool {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(config) else {
        return false;
    };
    let non_empty = |v: &serde_json::Value| v.as_array().is_some_and(|a| !a.is_empty());
    non_empty(&json["rootfs"]["diff_ids"]) || non_empty(&json["layerDigests"])
}

/// How an image carries its Wasm, and which layer holds it (for the non-tar formats).
pub fn classify(config: &Descriptor, layers: &[Descriptor]) -> Result<(WasmFormat, Option<usize>)> {
    let find = |types: &[&str]| {
        layers
            .iter()
            .position(|l| types.contains(&l.media_type.as_str()))
    };
    if config.media_type == WASM_CONFIG {
        return match find(&[WASM_LAYER]) {
            Some(i) => Ok((WasmFormat::CncfArtifact, Some(i))),
            None => Err(Error::invalid(
                "Wasm artifact has no application/wasm layer",
            )),
        };
    }
    if let Some(i) = find(&[LEGACY_LAYER]) {
        return Ok((WasmFormat::LegacyContent, Some(i)));
    }
    if let Some(i) = find(&[RUNWASI_LAYER, WASM_LAYER]) {
        return Ok((WasmFormat::RunwasiLayer, Some(i)));
    }
    if layers.iter().any(|l| is_tar_layer(&l.media_type)) {
        return Ok((WasmFormat::Compat, None));
    }
    Err(Error::invalid(
        "image has no Wasm in it: no Wasm layer and no filesystem layer",
    ))
}

pub fn is_tar_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_is_a_uid_or_a_name_before_any_group() {
        let user = |u: &str| {
            let config = format!(r#"{{"config":{{"User":"{u}"}}}}"#);
            let run = RunConfig::parse(config.as_bytes()).unwrap();
            run.uid_or_name().map(|r| r.map_err(str::to_owned))
        };
        assert_eq!(user("1002"), Some(Ok(1002)));
        assert_eq!(user("1003:1004"), Some(Ok(1003)));
        assert_eq!(user("www-data"), Some(Err("www-data".to_owned())));
        assert_eq!(user("www-data:1004"), Some(Err("www-data".to_owned())));
        assert_eq!(user(""), None);
        assert_eq!(user(":1004"), None);
    }

    fn d(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn classifies_the_four_formats() {
        let image_config = d("application/vnd.oci.image.config.v1+json");
        assert_eq!(
            classify(&d(WASM_CONFIG), &[d(WASM_LAYER)]).unwrap(),
            (WasmFormat::CncfArtifact, Some(0))
        );
        assert_eq!(
            classify(&image_config, &[d(LEGACY_LAYER)]).unwrap().0,
            WasmFormat::LegacyContent
        );
        assert_eq!(
            classify(&image_config, &[d("x"), d(RUNWASI_LAYER)]).unwrap(),
            (WasmFormat::RunwasiLayer, Some(1))
        );
        assert_eq!(
            classify(
                &image_config,
                &[d("application/vnd.oci.image.layer.v1.tar+gzip")]
            )
            .unwrap()
            .0,
            WasmFormat::Compat
        );
        assert!(classify(&image_config, &[])
            .unwrap_err()
            .message
            .contains("no Wasm"));
    }

    #[test]
    fn tells_index_from_manifest_and_refuses_both() {
        let both = br#"{"manifests":[],"config":{"mediaType":"x","digest":"sha256:0","size":1},"layers":[]}"#;
        assert!(Manifest::parse(both).unwrap_err().message.contains("both"));
        assert!(matches!(
            Manifest::parse(br#"{"manifests":[]}"#).unwrap(),
            Manifest::Index(_)
        ));
        assert!(Manifest::parse(b"not json").is_err());
        let big = vec![b' '; MAX_METADATA_SIZE as usize + 1];
        assert!(Manifest::parse(&big).unwrap_err().message.contains("limit"));
    }

    #[test]
    fn json_errors_do_not_repeat_the_content() {
        let secret = br#"{"schemaVersion":2,"config":"root:$6$secret-hash:19000:0:99999:7:::"}"#;
        let e = Manifest::parse(secret).unwrap_err();
        assert!(!e.message.contains("secret"), "{e}");
        assert!(e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn reads_entrypoint_and_env() {
        let c = RunConfig::parse(
            br#"{"config":{"Entrypoint":["/app.wasm"],"Cmd":["x"],"Env":["A=1","B"]}}"#,
        )
        .unwrap();
        assert_eq!(c.entrypoint, ["/app.wasm", "x"]);
        assert_eq!(
            c.env,
            [("A".into(), "1".into()), ("B".into(), String::new())]
        );
    }
}
