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
