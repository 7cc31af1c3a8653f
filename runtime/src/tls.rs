//! The process's one TLS crypto provider. rustls refuses to pick between providers compiled
//! in, and panics when none is installed; every TLS user here (registry pulls, a wasi:http
//! guest's outgoing `https://` requests) takes ring, installed once before the first client.

use std::sync::Once;

/// Installs ring as the process-wide rustls provider (a no-op after the first call, or when
/// the embedding program installed one already).
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
