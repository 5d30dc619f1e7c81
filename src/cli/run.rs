//! `ipgate run`: the gateway, the admin API, reload on SIGHUP / file change, drain on
//! SIGTERM / SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use futures_util::FutureExt;

use ipgate::config::Config;
use ipgate::{Gate, admin, server};

use super::{Failure, NO_UPSTREAM, load_for_gateway, with_upstream};

/// Prints `WHAT ADDR` on stdout with the address `listener` is bound to (the port the
/// system chose for `:0`) and flushes, so whoever started the process can connect.
pub(crate) fn announce(
    what: &str,
    listener: &tokio::net::TcpListener,
) -> Result<std::net::SocketAddr, Failure> {
    use std::io::Write;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("{what}: {e}")))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} {addr}");
    let _ = out.flush();
    Ok(addr)
}

pub async fn run(config: Option<PathBuf>, upstream: Option<String>) -> Result<(), Failure> {
    let explicit = config.is_some();
    let path = config.unwrap_or_else(|| PathBuf::from("policy.yaml"));
    let from_file = explicit || path.exists();
    // The file's time as of before it is read: a change made at any time after (even
    // before the watcher's first look) is a change the watcher reloads.
    let read_stamp = file_stamp(&path);
    let cfg = if from_file {
        load_for_gateway(&path, upstream.as_deref())?
    } else {
        tracing::info!("no ./policy.yaml: using the built-in defaults");
        let mut cfg = Config::default();
        with_upstream(&mut cfg, upstream.as_deref()).map_err(|e| Failure::Config(anyhow!(e)))?;
        if cfg.upstream.is_none() {
            return Err(Failure::Config(anyhow!(NO_UPSTREAM)));
        }
        cfg
    };

    let exporter =
        ipgate::metrics::install_exporter().context("installing the metrics recorder")?;

    let watch = cfg.reload.watch && from_file;
    let admin_cfg = cfg.admin.clone();
    let gate = Gate::from_config(cfg)
        .await
        .map_err(|e| Failure::Config(anyhow::Error::new(e)))?;
    let listeners = server::bind(&gate)
        .await
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e)))?;
    // Signal handlers first: a script may signal as soon as it reads the addresses.
    let shutdown = shutdown_signal();

    let reload: Option<admin::Reload> = from_file.then(|| {
        let gate = gate.clone();
        let path = path.clone();
        let upstream = upstream.clone();
        let f: admin::Reload = Arc::new(move || {
            let gate = gate.clone();
            let path = path.clone();
            let upstream = upstream.clone();
            async move {
                let cfg = match load_for_gateway(&path, upstream.as_deref()) {
                    Ok(c) => c,
                    Err(Failure::Config(e) | Failure::Runtime(e)) => {
                        metrics::counter!(ipgate::metrics::CONFIG_RELOADS, "result" => "error").increment(1);
                        tracing::warn!(error = %format!("{e:#}"), "reload refused; the previous configuration stays in force");
                        return Err(format!("{e:#}"));
                    }
                };
                gate.reload(cfg).await.map_err(|e| e.to_string())
            }
            .boxed()
        });
        f
    });

    if let Some(reload) = reload.clone() {
        spawn_sighup(reload.clone());
        if watch {
            spawn_watch(path.clone(), reload, read_stamp);
        }
    }

    if let Some(admin_cfg) = admin_cfg {
        let addr = admin_cfg.listen.0;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (admin)"))?;
        let addr = announce("admin listening on", &listener)?;
        let render: admin::MetricsRender = Arc::new(move || exporter.render());
        let app = admin::router(gate.clone(), Some(render), reload.clone());
        tracing::info!(listen = %addr, "admin API listening");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }

    for l in &listeners {
        announce("listening on", l)?;
    }
    server::serve_threads(gate, listeners, shutdown, super::serve_threads())
        .await
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e)))
}

/// Reloads on SIGHUP; the handler is installed before this returns.
fn spawn_sighup(reload: admin::Reload) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /v1/reload");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                let _ = reload().await;
            }
        });
    }
}

/// The modification time of `path`, when it can be read.
fn file_stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Polls `path`'s modification time once a second (robust to editors that replace the
/// file) and reloads when it differs from the last one seen (`read_stamp`: the time
/// before the running configuration was read).
fn spawn_watch(path: PathBuf, reload: admin::Reload, read_stamp: Option<SystemTime>) {
    tokio::spawn(async move {
        let mut last = read_stamp;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = file_stamp(&path);
            if now.is_some() && now != last {
                last = now;
                tracing::info!(file = %path.display(), "configuration file changed: reloading");
                let _ = reload().await;
            }
        }
    });
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: a signal that comes at any time after (even before the
/// server's first wait) stops the server gracefully instead of killing the process.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
