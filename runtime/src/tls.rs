//! The process's TLS: one crypto provider, and the roots a wasi:http guest's outgoing
//! `https://` requests trust. rustls refuses to pick between providers compiled in, and panics
//! when none is installed; every TLS user here (registry pulls, guests' outgoing requests) takes
//! ring, installed once before the first client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, OnceLock, PoisonError};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, Result};

/// Installs ring as the process-wide rustls provider (a no-op after the first call, or when
/// the embedding program installed one already).
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The client side of guests' outgoing `https://`, built once and shared by every request.
/// It is the process's, like the provider: a node runs one runtime, and the trust a node
/// operator configures is the node's.
static OUTGOING: Mutex<Option<Outgoing>> = Mutex::new(None);

struct Outgoing {
    ca_bundles: Vec<PathBuf>,
    config: Arc<ClientConfig>,
}

impl Outgoing {
    fn new(ca_bundles: Vec<PathBuf>, roots: RootCertStore) -> Self {
        install_provider();
        let config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            ca_bundles,
            config: Arc::new(config),
        }
    }
}

/// Makes guests' outgoing `https://` trust the CA certificates of `ca_bundles` (PEM files,
/// read now) besides the system's roots; for a front end to call at start, before the first
/// request. Fails on a bundle without a usable CA certificate, and on bundles other than
/// those the process trusts already.
pub fn trust(ca_bundles: &[PathBuf]) -> Result<()> {
    let mut outgoing = OUTGOING.lock().unwrap_or_else(PoisonError::into_inner);
    match &*outgoing {
        Some(o) if o.ca_bundles == ca_bundles => Ok(()),
        Some(o) => Err(Error::invalid(format!(
            "outgoing HTTPS trusts the CA bundles {:?} in this process already, not {ca_bundles:?}",
            o.ca_bundles
        ))),
        None => {
            let mut roots = system_roots();
            for path in ca_bundles {
                add_bundle(&mut roots, path)?;
            }
            *outgoing = Some(Outgoing::new(ca_bundles.to_vec(), roots));
            Ok(())
        }
    }
}

/// The client config of guests' outgoing `https://`: the trusted bundles' once [`trust`] was
/// called, else the system's roots alone. Reading it does not fix the choice, so a handler
/// started before the front end's [`trust`] does not make that call fail.
pub(crate) fn outgoing() -> Arc<ClientConfig> {
    if let Some(o) = &*OUTGOING.lock().unwrap_or_else(PoisonError::into_inner) {
        return o.config.clone();
    }
    static SYSTEM: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| Outgoing::new(Vec::new(), system_roots()).config)
        .clone()
}

/// The system's roots (what curl on the node trusts; `SSL_CERT_FILE` and `SSL_CERT_DIR`
/// apply), or Mozilla's, built in, on a system without any.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("system CA certificates: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// Adds the CA certificates of the PEM file at `path`.
fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<()> {
    let what = format!("CA bundle {}", path.display());
    let bad = |e: pem::Error| match e {
        pem::Error::Io(e) => Error::io(&what, e),
        e => Error::invalid(format!("{what}: {e}")),
    };
    let before = roots.len();
    for cert in CertificateDer::pem_file_iter(path).map_err(bad)? {
        roots
            .add(cert.map_err(bad)?)
            .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
    }
    if roots.len() == before {
        return Err(Error::invalid(format!("{what}: no PEM certificate in it")));
    }
    Ok(())
}
