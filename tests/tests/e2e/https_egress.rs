//! Outgoing HTTPS of a wasi:http guest: http-hello fetches from TLS servers on the host's
//! 127.0.0.9 whose certificates the test makes. One signed by the CA in the configured bundle
//! answers; one signed by a CA nobody trusts is refused with a TLS error code in the guest,
//! and the handler goes on serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use wasmpod_runtime::error::ErrorKind;
use wasmpod_tests::*;

/// The host network as pods see it (the pod's own localhost is 127.0.0.1).
const SERVER_IP: &str = "127.0.0.9";
const BODY: &str = "from tls\n";

/// A CA for the test, made now.
fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// An HTTPS server on 127.0.0.9 with a certificate for that IP signed by `ca`, answering every
/// request with [`BODY`], one connection at a time. Returns its address.
fn tls_server(ca: &CertifiedIssuer<'static, KeyPair>) -> SocketAddr {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![SERVER_IP.to_owned()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    wasmpod_runtime::tls::install_provider();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind((SERVER_IP, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // A client refusing the certificate ends the handshake here, with an alert.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                BODY.len()
            );
            let _ = tls.write_all(response.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    addr
}

#[tokio::test]
async fn https_from_a_guest_trusts_the_configured_ca_and_refuses_others() {
    let tmp = tempfile::tempdir().unwrap();
    let trusted = new_ca("wasmpod test CA");
    let untrusted = new_ca("nobody's CA");
    let good = tls_server(&trusted);
    let bad = tls_server(&untrusted);

    // A bundle without a certificate is a configuration error that names the file.
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = wasmpod_runtime::tls::trust(std::slice::from_ref(&empty)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("empty.pem"), "{e}");
    let bundle = tmp.path().join("ca.pem");
    std::fs::write(&bundle, trusted.pem()).unwrap();
    wasmpod_runtime::tls::trust(std::slice::from_ref(&bundle)).unwrap();

    let rt = runtime(&tmp.path().join("state"));
    let pod_id = rt.run_pod(pod("fetch")).unwrap();
    let id = rt
        .create_container(&pod_id, container("fetch", &wasm("http-hello.p2"), &[]))
        .await
        .unwrap();
    rt.start_container(&id).unwrap();
    let ip = rt.pod(&pod_id).unwrap().ip().expect("the pod has an IP");
    let handler = SocketAddr::new(ip.into(), 8080);
    within(60, "the handler to listen", async {
        while TcpStream::connect(handler).is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let fetch = |server: SocketAddr| format!("http://{handler}/fetch?url=https://{server}/");

    let (code, body) = curl(&fetch(good)).await;
    assert_eq!((code, body.as_str()), (200, BODY));

    let (code, body) = curl(&fetch(bad)).await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("TlsCertificateError"), "{body}");

    // The refusal cost one request, not the handler.
    let (code, body) = curl(&fetch(good)).await;
    assert_eq!((code, body.as_str()), (200, BODY));

    // The process trusts one set of CAs.
    let e = wasmpod_runtime::tls::trust(&[]).unwrap_err();
    assert!(e.to_string().contains("ca.pem"), "{e}");
}
