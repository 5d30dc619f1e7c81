//! Shared test support: a recording upstream and an in-process gateway.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod emulator;
pub mod upstream;

use std::net::SocketAddr;

use ipgate::{Config, Gate};
use tokio::sync::oneshot;

/// A gateway running in this process over real sockets.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gate: Gate,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    /// Starts a gateway from YAML; `{upstream}` is replaced by `upstream`.
    pub async fn start(yaml: &str, upstream: &str) -> TestGateway {
        let yaml = yaml.replace("{upstream}", upstream);
        let cfg =
            Config::from_yaml(&yaml, "test").unwrap_or_else(|e| panic!("bad test config: {e}"));
        Self::start_config(cfg).await
    }

    pub async fn start_config(cfg: Config) -> TestGateway {
        let gate = Gate::from_config(cfg).await.expect("gate");
        Self::start_gate(gate).await
    }

    pub async fn start_gate(gate: Gate) -> TestGateway {
        let listeners = ipgate::server::bind(&gate).await.expect("bind");
        let addr = listeners[0].local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let g = gate.clone();
        let task = tokio::spawn(async move {
            ipgate::server::serve(g, listeners, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        TestGateway {
            addr,
            gate,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Asks the gateway to stop (drain) and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task).await;
    }
}

/// Reads until the server closes `s`; true when it did within `within`.
pub async fn closed_by_server(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// Sends a GET for `path` on `s` and returns the first bytes of the answer, or None
/// when nothing came back within `within`.
pub async fn get_raw(
    s: &mut tokio::net::TcpStream,
    path: &str,
    within: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    read_raw(s, within).await
}

/// The next bytes the server sends on `s`, or None when nothing came within `within`.
pub async fn read_raw(
    s: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Starts `ipgate run -c policy` (killed when dropped; its logs discarded).
pub fn spawn_run(policy: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ipgate"))
        .args(["run", "-c", policy.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits (at most 5 s) until `url` answers with status `want`.
pub async fn wait_for_status(url: &str, want: u16) {
    for _ in 0..100 {
        if let Ok(r) = client().get(url).send().await
            && r.status().as_u16() == want
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{url} never answered {want}");
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends a signal with the `kill` command.
pub fn kill(signal: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid} failed");
}

/// A plain HTTP client for tests (no proxy from the environment).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}
