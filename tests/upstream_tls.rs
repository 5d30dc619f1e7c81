//! An `https://` upstream behind the real gateway: verified against `upstream_ca` (and
//! not against anything else), its connections pooled, the roots re-read on reload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{TestGateway, client};
use http_body_util::Full;
use hyper::body::Bytes;
use ipgate::Config;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA, and a certificate for 127.0.0.1 it signed: (CA PEM, leaf PEM, leaf key PEM).
fn ca_and_leaf() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// An HTTPS/1.1 upstream on loopback answering `secure <path>`; counts the TLS
/// handshakes that completed.
async fn tls_upstream(
    dir: &std::path::Path,
    leaf: &str,
    key: &str,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let (cert_path, key_path) = (dir.join("up-cert.pem"), dir.join("up-key.pem"));
    std::fs::write(&cert_path, leaf).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let acceptor =
        ipgate::server::tls_acceptor(cert_path.to_str().unwrap(), key_path.to_str().unwrap())
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("secure {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, handshakes)
}

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, "test").unwrap()
}

async fn get(gw: &TestGateway, path: &str) -> (u16, String) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_upstream_ca_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = ca_and_leaf();
    let (addr, handshakes) = tls_upstream(dir.path(), &leaf, &key).await;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let with_ca = |ca: &std::path::Path| {
        config(&format!(
            "listen: 127.0.0.1:0\nupstream: https://{addr}\nupstream_ca: '{}'\n",
            ca.display()
        ))
    };

    // Trusted through upstream_ca: answered over TLS, on one pooled connection.
    let gw = TestGateway::start_config(with_ca(&ca_path)).await;
    for path in ["/a", "/b", "/c"] {
        assert_eq!(get(&gw, path).await, (200, format!("secure {path}")));
    }
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        1,
        "the TLS connection was not reused"
    );

    // A reload with the same roots keeps the pooled connection.
    gw.gate.reload(with_ca(&ca_path)).await.unwrap();
    assert_eq!(get(&gw, "/d").await, (200, "secure /d".to_string()));
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        1,
        "a reload without change dropped the pool"
    );

    // Other roots in the same file: the pooled connection (verified against the old
    // roots) is not used, and the new ones do not trust the upstream.
    let (other_ca, _, _) = ca_and_leaf();
    std::fs::write(&ca_path, &other_ca).unwrap();
    gw.gate.reload(with_ca(&ca_path)).await.unwrap();
    assert_eq!(get(&gw, "/e").await.0, 502);
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    gw.shutdown().await;

    // Without upstream_ca, the public roots: the test CA is not among them.
    let public = config(&format!("listen: 127.0.0.1:0\nupstream: https://{addr}\n"));
    let gw = TestGateway::start_config(public).await;
    assert_eq!(get(&gw, "/f").await.0, 502);
    gw.shutdown().await;
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        1,
        "an untrusted upstream was used"
    );
}

#[tokio::test]
async fn a_bad_upstream_ca_is_refused_with_its_cause_and_a_reload_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = ca_and_leaf();
    let (addr, _) = tls_upstream(dir.path(), &leaf, &key).await;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();

    let refused = |yaml: String| async move {
        match ipgate::Gate::from_config(config(&yaml)).await {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        }
    };
    let err = refused(format!(
        "upstream: http://{addr}\nupstream_ca: '{}'\n",
        ca_path.display()
    ))
    .await;
    assert!(
        err.contains("upstream_ca") && err.contains("not https"),
        "{err}"
    );
    let err = refused(format!(
        "upstream: https://{addr}\nupstream_ca: /nonexistent/ca.pem\n"
    ))
    .await;
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let err = refused(format!(
        "upstream: https://{addr}\nupstream_ca: '{}'\n",
        empty.display()
    ))
    .await;
    assert!(err.contains("holds no certificate"), "{err}");

    // A reload to a broken file is refused; the roots in force stay.
    let good = format!(
        "listen: 127.0.0.1:0\nupstream: https://{addr}\nupstream_ca: '{}'\n",
        ca_path.display()
    );
    let gw = TestGateway::start_config(config(&good)).await;
    let bad = good.replace(ca_path.to_str().unwrap(), empty.to_str().unwrap());
    assert!(gw.gate.reload(config(&bad)).await.is_err());
    assert_eq!(get(&gw, "/still").await, (200, "secure /still".to_string()));
    gw.shutdown().await;
}
