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

/// A test CA: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes its certificate to `dir/ca.pem`, for `upstream_ca`.
    fn write(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A certificate for `names` (host names or IP addresses) it signed: (PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// What a TLS upstream saw: TCP connections accepted, TLS handshakes completed.
#[derive(Clone, Default)]
struct Seen {
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
}

impl Seen {
    fn counts(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.handshakes.load(Ordering::SeqCst),
        )
    }
}

/// An HTTPS/1.1 upstream on `bind` (port 0) presenting `leaf`, answering `secure <path>`.
async fn tls_upstream(
    dir: &std::path::Path,
    bind: &str,
    (leaf, key): &(String, String),
) -> (SocketAddr, Seen) {
    let (cert_path, key_path) = (dir.join("up-cert.pem"), dir.join("up-key.pem"));
    std::fs::write(&cert_path, leaf).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let acceptor =
        ipgate::server::tls_acceptor(cert_path.to_str().unwrap(), key_path.to_str().unwrap())
            .unwrap();
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let handshakes = counts.handshakes.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                handshakes.fetch_add(1, Ordering::SeqCst);
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
    (addr, seen)
}

/// A gateway on loopback in front of `upstream` (`https://HOST:PORT`), trusting `ca`.
fn gateway_yaml(upstream: &str, ca: &std::path::Path) -> String {
    format!(
        "listen: 127.0.0.1:0\nupstream: {upstream}\nupstream_ca: '{}'\n",
        ca.display()
    )
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
    let ca = Ca::new();
    let (addr, seen) = tls_upstream(dir.path(), "127.0.0.1:0", &ca.leaf(&["127.0.0.1"])).await;
    let ca_path = ca.write(dir.path());
    let with_ca = |ca: &std::path::Path| config(&gateway_yaml(&format!("https://{addr}"), ca));

    // Trusted through upstream_ca: answered over TLS, on one pooled connection.
    let gw = TestGateway::start_config(with_ca(&ca_path)).await;
    for path in ["/a", "/b", "/c"] {
        assert_eq!(get(&gw, path).await, (200, format!("secure {path}")));
    }
    assert_eq!(seen.counts(), (1, 1), "the TLS connection was not reused");

    // A reload with the same roots keeps the pooled connection.
    gw.gate.reload(with_ca(&ca_path)).await.unwrap();
    assert_eq!(get(&gw, "/d").await, (200, "secure /d".to_string()));
    assert_eq!(
        seen.counts(),
        (1, 1),
        "a reload without change dropped the pool"
    );

    // Other roots in the same file: the pooled connection (verified against the old
    // roots) is not used, and the new ones do not trust the upstream.
    std::fs::write(&ca_path, Ca::new().pem).unwrap();
    gw.gate.reload(with_ca(&ca_path)).await.unwrap();
    assert_eq!(get(&gw, "/e").await.0, 502);
    assert_eq!(
        seen.counts(),
        (2, 1),
        "no new connection, or one that completed TLS"
    );
    gw.shutdown().await;

    // Without upstream_ca, the public roots: the test CA is not among them.
    let public = config(&format!("listen: 127.0.0.1:0\nupstream: https://{addr}\n"));
    let gw = TestGateway::start_config(public).await;
    assert_eq!(get(&gw, "/f").await.0, 502);
    gw.shutdown().await;
    assert_eq!(
        seen.counts(),
        (3, 1),
        "TLS was not tried, or an untrusted upstream was used"
    );
}

/// The certificate must be for the upstream's host: a trusted CA is not enough.
#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (addr, seen) = tls_upstream(
        dir.path(),
        "127.0.0.1:0",
        &ca.leaf(&["other.example", "10.0.0.1"]),
    )
    .await;
    let ca_path = ca.write(dir.path());
    let gw = TestGateway::start_config(config(&gateway_yaml(&format!("https://{addr}"), &ca_path)))
        .await;
    assert_eq!(get(&gw, "/").await.0, 502);
    assert_eq!(seen.counts(), (1, 0));
    gw.shutdown().await;
}

/// An IPv6 literal upstream (`https://[::1]:PORT`) is verified against its IP address.
#[tokio::test]
async fn an_ipv6_literal_upstream_is_verified_by_its_address() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback here; the [::1] upstream is not tested");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let ca_path = ca.write(dir.path());
    for (names, want) in [(&["::1"][..], 200), (&["127.0.0.1"][..], 502)] {
        let (addr, _) = tls_upstream(dir.path(), "[::1]:0", &ca.leaf(names)).await;
        let upstream = format!("https://[::1]:{}", addr.port());
        let gw = TestGateway::start_config(config(&gateway_yaml(&upstream, &ca_path))).await;
        assert_eq!(get(&gw, "/v6").await.0, want, "certificate for {names:?}");
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn a_bad_upstream_ca_is_refused_with_its_cause_and_a_reload_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (addr, _) = tls_upstream(dir.path(), "127.0.0.1:0", &ca.leaf(&["127.0.0.1"])).await;
    let ca_path = ca.write(dir.path());
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
    let good = gateway_yaml(&format!("https://{addr}"), &ca_path);
    let gw = TestGateway::start_config(config(&good)).await;
    let bad = good.replace(ca_path.to_str().unwrap(), empty.to_str().unwrap());
    assert!(gw.gate.reload(config(&bad)).await.is_err());
    assert_eq!(get(&gw, "/still").await, (200, "secure /still".to_string()));
    gw.shutdown().await;
}
