//! A real Redis for the tests: `redis-server` started on a free loopback port, without
//! persistence, in its own directory; killed when dropped. Tests never touch a Redis
//! they did not start.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// True when `redis-server` can be run here; otherwise says loudly why the test is
/// skipped (CI installs it: see .ci/run).
pub fn available() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "\n*** SKIPPED: redis-server is not installed (apt-get install -y redis-server; .ci/run does it) ***\n"
        );
    }
    ok
}

impl Redis {
    /// Starts a Redis on a free loopback port. Redis binds the port itself, so a port
    /// taken in between is just tried again with another.
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..20u16 {
            let port = 20_000 + (std::process::id() as u16 % 20_000) + attempt * 997 % 20_000;
            if let Some(child) = spawn(port, dir.path()) {
                return Redis {
                    child: Some(child),
                    port,
                    dir,
                };
            }
        }
        panic!("could not start redis-server on any port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = spawn(self.port, self.dir.path()) {
                self.child = Some(c);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    /// Runs a command with `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts redis-server on `port` and waits until it answers PING; None when it could
/// not bind (or did not come up within 5 s).
fn spawn(port: u16, dir: &std::path::Path) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            // DEBUG SLEEP stands in for a stalled Redis.
            "--enable-debug-command",
            "local",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // it exited: the port was taken
        }
        // Answering, and it is ours (not another Redis that holds the port).
        let ours = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "INFO", "server"])
            .output()
            .ok()
            .is_some_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{}", child.id()))
            });
        if ours {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
