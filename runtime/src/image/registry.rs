//! Talking to OCI registries through oci-client: which protocol for which host, credentials
//! (CRI AuthConfig, docker `config.json`), mirrors, and registry errors as core errors.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::reference::is_loopback;
use crate::error::{Error, ErrorKind, Result};

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registry host → mirror hosts tried first, in order (e.g. `docker.io` → `mirror:5000`).
    pub mirrors: HashMap<String, Vec<String>>,
    /// Hosts reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    pub timeouts: RegistryTimeouts,
}

/// How long a registry may take: a stalled or trickling registry fails the pull instead of
/// hanging it (and the kubelet call waiting on it) forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryTimeouts {
    /// To open a connection.
    pub connect: Duration,
    /// For the registry to send anything (each read, of headers and bodies alike).
    pub read: Duration,
    /// For all the downloads of one pull (manifests and blobs, mirrors included): a registry
    /// sending a byte now and then never trips `read`.
    pub pull: Duration,
}

impl RegistryTimeouts {
    pub const DEFAULT: Self = Self {
        connect: Duration::from_secs(10),
        read: Duration::from_secs(60),
        pull: Duration::from_secs(30 * 60),
    };

    /// These timeouts with the ones given (in seconds) replaced; zero is refused.
    pub fn with_secs(
        self,
        connect: Option<u64>,
        read: Option<u64>,
        pull: Option<u64>,
    ) -> Result<Self> {
        let secs = |name: &str, given: Option<u64>, current: Duration| match given {
            Some(0) => Err(Error::invalid(format!(
                "the registry {name} timeout must be at least 1 second"
            ))),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(current),
        };
        Ok(Self {
            connect: secs("connect", connect, self.connect)?,
            read: secs("read", read, self.read)?,
            pull: secs("pull", pull, self.pull)?,
        })
    }
}

impl Default for RegistryTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Credentials for one pull, as a CRI AuthConfig or a docker config carries them.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64 of `user:password`.
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl Credentials {
    pub(crate) fn to_auth(&self) -> Result<RegistryAuth> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.username.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Error::invalid("auth is not base64 of user:password"))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| Error::invalid("auth does not hold user:password"))?;
            return Ok(RegistryAuth::Basic(user.into(), pass.into()));
        }
        if !self.identity_token.is_empty() {
            // An identity token is presented as the password of the `<token>` user.
            return Ok(RegistryAuth::Basic(
                "<token>".into(),
                self.identity_token.clone(),
            ));
        }
        Ok(RegistryAuth::Anonymous)
    }

    /// The credentials docker's `config.json` holds for `registry`, if any.
    pub fn from_docker_config(path: &Path, registry: &str) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let keys = match registry {
            "docker.io" => vec![
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
            ],
            r => vec![r],
        };
        let auths = &json["auths"];
        Ok(keys.iter().find_map(|k| {
            let entry = auths
                .get(*k)
                .or_else(|| auths.get(format!("https://{k}")))?;
            Some(Credentials {
                auth: entry["auth"].as_str().unwrap_or_default().into(),
                identity_token: entry["identitytoken"].as_str().unwrap_or_default().into(),
                ..Default::default()
            })
        }))
    }
}

/// A client for one registry (and its mirrors): plain HTTP for loopback and insecure hosts.
pub(crate) fn client(config: &RegistryConfig, hosts: &[String]) -> Client {
    let plain: Vec<String> = hosts
        .iter()
        .filter(|h| is_loopback(h) || config.insecure.contains(h))
        .cloned()
        .collect();
    crate::tls::install_provider();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        platform_resolver: None,
        connect_timeout: Some(config.timeouts.connect),
        read_timeout: Some(config.timeouts.read),
        ..Default::default()
    })
}

/// The references to try for `r`: its mirrors first, then the registry itself.
pub(crate) fn candidates(config: &RegistryConfig, r: &Reference) -> Vec<Reference> {
    let mut out: Vec<Reference> = config
        .mirrors
        .get(r.registry())
        .into_iter()
        .flatten()
        .map(|m| {
            let mut mirrored = r.clone();
            mirrored.set_mirror_registry(m.clone());
            mirrored
        })
        .collect();
    out.push(r.clone());
    out
}

/// A registry failure in the terms a caller acts on.
pub(crate) fn registry_error(what: &str, e: OciDistributionError) -> Error {
    use OciDistributionError as E;
    let kind = match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => ErrorKind::Unauthenticated,
        E::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        E::ServerError { code, .. } => match code {
            401 => ErrorKind::Unauthenticated,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            429 | 500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        E::RegistryError { envelope, .. } => {
            let text = format!("{envelope}").to_ascii_lowercase();
            if text.contains("unauthorized") {
                ErrorKind::Unauthenticated
            } else if text.contains("denied") {
                ErrorKind::PermissionDenied
            } else if text.contains("unknown") || text.contains("not found") {
                ErrorKind::NotFound
            } else {
                ErrorKind::Internal
            }
        }
        E::RequestError(r) if r.is_connect() || r.is_timeout() => ErrorKind::Unavailable,
        E::DigestError(_) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    };
    let hint = match kind {
        ErrorKind::Unauthenticated => " (check the registry credentials)",
        ErrorKind::PermissionDenied => " (the credentials may not pull this image)",
        ErrorKind::Unavailable if matches!(&e, E::RequestError(r) if r.is_timeout()) => {
            " (timed out: the registry's connect or read timeout passed)"
        }
        ErrorKind::Unavailable => " (is the registry reachable?)",
        _ => "",
    };
    Error::new(kind, format!("{what}: {e}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_forms() {
        let basic = Credentials {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        assert!(
            matches!(basic.to_auth().unwrap(), RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        let token = Credentials {
            registry_token: "t".into(),
            ..Default::default()
        };
        assert!(matches!(token.to_auth().unwrap(), RegistryAuth::Bearer(t) if t == "t"));
        assert!(matches!(
            Credentials::default().to_auth().unwrap(),
            RegistryAuth::Anonymous
        ));
        let bad = Credentials {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(bad.to_auth().is_err());
    }

    #[test]
    fn docker_config_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}}}"#,
        )
        .unwrap();
        let c = Credentials::from_docker_config(&path, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(c.auth, "dXNlcjpwYXNz");
        assert!(Credentials::from_docker_config(&path, "other")
            .unwrap()
            .is_none());
        assert!(
            Credentials::from_docker_config(&dir.path().join("none"), "x")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn registry_statuses_become_error_kinds() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "https://r/v2/x/manifests/1".into(),
            message: "m".into(),
        };
        for (code, kind) in [
            (401, ErrorKind::Unauthenticated),
            (403, ErrorKind::PermissionDenied),
            (404, ErrorKind::NotFound),
            (429, ErrorKind::Unavailable),
            (503, ErrorKind::Unavailable),
        ] {
            let e = registry_error("pulling x", server(code));
            assert_eq!(e.kind, kind, "{code}: {e}");
            assert!(e.message.starts_with("pulling x"), "{e}");
        }
        assert!(registry_error("p", server(403))
            .message
            .contains("may not pull"));
    }

    #[test]
    fn mirrors_come_first() {
        let config = RegistryConfig {
            mirrors: HashMap::from([("docker.io".into(), vec!["127.0.0.1:5001".into()])]),
            ..Default::default()
        };
        let r: Reference = "hello".parse().unwrap();
        let c = candidates(&config, &r);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].resolve_registry(), "127.0.0.1:5001");
        assert_eq!(c[1].resolve_registry(), "index.docker.io");
    }
}
