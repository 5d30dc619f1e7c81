//! Shared test support: a recording upstream and an in-process gateway.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod emulator;
pub mod redis;
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
        Self::start_gate_threads(gate, 1).await
    }

    /// As [`TestGateway::start`], serving on `threads` threads (`server::serve_threads`).
    pub async fn start_threads(yaml: &str, upstream: &str, threads: usize) -> TestGateway {
        let yaml = yaml.replace("{upstream}", upstream);
        let cfg =
            Config::from_yaml(&yaml, "test").unwrap_or_else(|e| panic!("bad test config: {e}"));
        let gate = Gate::from_config(cfg).await.expect("gate");
        Self::start_gate_threads(gate, threads).await
    }

    pub async fn start_gate_threads(gate: Gate, threads: usize) -> TestGateway {
        let listeners = ipgate::server::bind(&gate).await.expect("bind");
        let addr = listeners[0].local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let g = gate.clone();
        let task = tokio::spawn(async move {
            ipgate::server::serve_threads(
                g,
                listeners,
                async {
                    let _ = rx.await;
                },
                threads,
            )
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

/// A running `ipgate run`, with the addresses it printed once its sockets were bound
/// (killed when dropped).
pub struct Running {
    pub child: tokio::process::Child,
    /// The gateway's listeners (`listening on ADDR`), in the order printed.
    pub gateway: Vec<SocketAddr>,
    /// The admin API (`admin listening on ADDR`), when the policy has `admin`.
    pub admin: Option<SocketAddr>,
    /// All the process wrote on stdout, once it has closed it.
    pub stdout: tokio::task::JoinHandle<String>,
}

impl Running {
    /// `http://GATEWAY{path}` for the first gateway listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway[0], path)
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self.admin.expect("the policy has no admin API");
        format!("http://{admin}{path}")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("ipgate already reaped")
    }
}

/// Starts `ipgate run -c policy` (its logs discarded) and waits until it has printed
/// the addresses it listens on.
pub async fn spawn_run(policy: &std::path::Path) -> Running {
    spawn_run_with(policy, |_| {}).await
}

/// As [`spawn_run`], with `setup` adjusting the command (environment, stderr) first.
/// The policy's `listen` and `admin` keys say which lines to wait for.
pub async fn spawn_run_with(
    policy: &std::path::Path,
    setup: impl FnOnce(&mut tokio::process::Command),
) -> Running {
    let (gateways, admin) = listeners_in(policy);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ipgate"));
    cmd.args(["run", "-c", policy.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    setup(&mut cmd);
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (gateway, admin, stdout) = read_listening(&mut child, gateways, admin).await;
    Running {
        child,
        gateway,
        admin,
        stdout,
    }
}

/// How many gateway listeners the policy file asks for, and whether it has an admin API.
fn listeners_in(policy: &std::path::Path) -> (usize, bool) {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    #[derive(serde::Deserialize)]
    struct Shape {
        listen: Option<OneOrMany>,
        admin: Option<serde::de::IgnoredAny>,
    }
    let text = std::fs::read_to_string(policy).unwrap();
    let shape: Shape =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", policy.display()));
    let gateways = match shape.listen {
        None | Some(OneOrMany::One(_)) => 1,
        Some(OneOrMany::Many(v)) => v.len(),
    };
    (gateways, shape.admin.is_some())
}

/// Reads `child`'s stdout (at most 10 s) until it has printed `gateways` lines
/// `listening on ADDR` and, when `admin`, a line `admin listening on ADDR`. The rest of
/// stdout is read in the background (so the pipe never fills) and returned, with these
/// lines, by the handle.
pub async fn read_listening(
    child: &mut tokio::process::Child,
    gateways: usize,
    admin: bool,
) -> (
    Vec<SocketAddr>,
    Option<SocketAddr>,
    tokio::task::JoinHandle<String>,
) {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = String::new();
    let mut gateway = Vec::new();
    let mut admin_addr = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while gateway.len() < gateways || (admin && admin_addr.is_none()) {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None) | Err(_)) => {
                let status = child.wait().await;
                panic!("ipgate ended ({status:?}) before it was listening; stdout:\n{seen}")
            }
            Err(_) => panic!("ipgate printed no listening lines within 10 s; stdout:\n{seen}"),
        };
        seen.push_str(&line);
        seen.push('\n');
        if let Some(a) = line.strip_prefix("admin listening on ") {
            admin_addr = Some(a.parse().unwrap_or_else(|_| panic!("bad line {line:?}")));
        } else if let Some(a) = line.strip_prefix("listening on ") {
            gateway.push(a.parse().unwrap_or_else(|_| panic!("bad line {line:?}")));
        }
    }
    let rest = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    (gateway, admin_addr, rest)
}

/// Polls `cond` every 20 ms until it holds; panics saying `what` did not happen when
/// it still does not hold after `within`.
pub async fn eventually<F, Fut>(what: &str, within: std::time::Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

/// The value of a series in the `/metrics` text of the admin API at `admin`
/// (`http://ADDR`), 0 when absent. `series` is the name with its labels, exactly as
/// printed (`ipgate_redis_up`, `ipgate_config_reloads_total{result="ok"}`).
pub async fn metric(admin: &str, series: &str) -> f64 {
    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Names of the threads of process `pid` (`/proc/PID/task/*/comm`).
pub fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}
