//! Command-line entry points (docs/cli.md). Exit codes: 0 ok, 2 bad configuration or
//! usage, 1 runtime failure.

mod check;
mod demo;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ipgate::Config;

#[derive(Parser)]
#[command(
    name = "ipgate",
    version,
    about = "IP access gateway: lists, feeds, bans and reputation under one policy"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file (default ./policy.yaml; built-in defaults when it does not exist).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Upstream URL (overrides the file's `upstream`).
        #[arg(long, env = "IPGATE_UPSTREAM")]
        upstream: Option<String>,
    },
    /// Self-contained tour: demo upstream + gateway + curl lines to try.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the admin API (status page, /metrics, bans) listens; a free port when
        /// this one is taken.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: std::net::SocketAddr,
    },
    /// Print the decision for an IP and why.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        ip: String,
        /// Ask the providers (spends quota); otherwise only cached reputation is used.
        #[arg(long)]
        lookup: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file: exit 0, or print every error and exit 2.
    Validate {
        #[arg(short, long)]
        config: PathBuf,
    },
}

/// A failure with its exit code.
pub(crate) enum Failure {
    /// Bad configuration or usage: exit 2.
    Config(anyhow::Error),
    /// Runtime failure: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// `TOKIO_WORKER_THREADS`: unset (None), or the number of workers of tokio's
/// multi-threaded runtime (a positive integer; anything else is refused).
fn worker_threads() -> Result<Option<usize>, String> {
    match std::env::var_os("TOKIO_WORKER_THREADS") {
        None => Ok(None),
        Some(v) => match v.to_str().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!(
                "TOKIO_WORKER_THREADS={}: expected a positive number of worker threads",
                v.to_string_lossy()
            )),
        },
    }
}

/// Threads that serve connections: one per CPU the process may use (affinity mask,
/// cgroup CPU quota), each with a one-thread runtime; 1 (the multi-threaded runtime's
/// workers serve them all) when `TOKIO_WORKER_THREADS` is set.
pub(crate) fn serve_threads() -> usize {
    match worker_threads() {
        Ok(None) => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        _ => 1,
    }
}

/// The main runtime: one thread (a thread-per-core server, see [`serve_threads`]), or
/// tokio's multi-threaded runtime with the workers `TOKIO_WORKER_THREADS` asks for.
fn runtime_builder() -> Result<tokio::runtime::Builder, String> {
    Ok(match worker_threads()? {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One-shot commands print their answer; their logs only matter when something is wrong.
    // Only ipgate's own lines by default (hyper, h2, rustls and redis stay quiet);
    // IPGATE_LOG (or RUST_LOG) replaces the filter, e.g. `IPGATE_LOG=ipgate=debug`.
    let default_level = match cli.command {
        Command::Run { .. } | Command::Demo { .. } => "ipgate=info",
        Command::Check { .. } | Command::Validate { .. } => "ipgate=warn",
    };
    init_tracing(cli.log_format, default_level);
    let mut builder = match runtime_builder() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Run { config, upstream } => run::run(config, upstream).await,
            Command::Demo {
                listen,
                admin_listen,
            } => demo::demo(listen, admin_listen).await,
            Command::Check {
                config,
                ip,
                lookup,
                json,
            } => check::check(&config, &ip, lookup, json).await,
            Command::Validate { config } => validate(&config),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("IPGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; none in files, pipes and journald.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        // One object per line, the event's fields beside `timestamp`, `level`,
        // `target` and `message` (not nested under `fields`).
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Loads and fully checks a configuration file (including files it names).
pub(crate) fn load(path: &Path) -> Result<Config, Failure> {
    let cfg = Config::from_file(path).map_err(|e| Failure::Config(anyhow::Error::new(e)))?;
    let problems = file_problems(&cfg);
    refuse(path, problems)?;
    Ok(cfg)
}

/// Problems with the files the configuration names (block page template, TLS pair).
fn file_problems(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = ipgate::BlockPage::from_config(&cfg.block_response) {
        problems.push(format!("{:#}", anyhow::Error::new(e)));
    }
    if let Some(tls) = &cfg.tls
        && let Err(e) = ipgate::server::tls_acceptor(&tls.cert.0, &tls.key.0)
    {
        problems.push(format!("{:#}", anyhow::Error::new(e)));
    }
    problems
}

/// Every problem at once, each line naming the file.
fn refuse(path: &Path, problems: Vec<String>) -> Result<(), Failure> {
    if problems.is_empty() {
        return Ok(());
    }
    let file = path.display();
    let lines: Vec<String> = problems.iter().map(|p| format!("{file}: {p}")).collect();
    Err(Failure::Config(anyhow::anyhow!("{}", lines.join("\n"))))
}

/// Loads a file the gateway is to run on: everything [`load`] checks, and an upstream
/// (from the file, or `upstream` when given, which replaces it). `run`, a reload and
/// `validate` refuse the same files, and report every problem at once.
pub(crate) fn load_for_gateway(path: &Path, upstream: Option<&str>) -> Result<Config, Failure> {
    let mut cfg = Config::from_file(path).map_err(|e| Failure::Config(anyhow::Error::new(e)))?;
    let mut problems = file_problems(&cfg);
    match with_upstream(&mut cfg, upstream) {
        Err(e) => problems.push(e),
        Ok(()) if cfg.upstream.is_none() => problems.push(NO_UPSTREAM.to_string()),
        Ok(()) => {}
    }
    if let Some(ca) = &cfg.upstream_ca {
        let url = cfg.upstream.as_ref().map(|u| u.0.as_str());
        for e in ipgate::server::check_upstream_ca(url, &ca.0) {
            problems.push(format!("{:#}", anyhow::Error::new(e)));
        }
    }
    refuse(path, problems)?;
    Ok(cfg)
}

pub(crate) const NO_UPSTREAM: &str = "key `upstream`: required to run the gateway: set `upstream:` in the file, or pass --upstream URL (or IPGATE_UPSTREAM)";

/// Applies `--upstream` / `IPGATE_UPSTREAM` when given.
pub(crate) fn with_upstream(cfg: &mut Config, upstream: Option<&str>) -> Result<(), String> {
    if let Some(u) = upstream {
        let u = ipgate::config::parse_url(u)
            .map_err(|e| format!("--upstream / IPGATE_UPSTREAM: {e}"))?;
        cfg.upstream = Some(ipgate::config::Url(u));
    }
    Ok(())
}

fn validate(path: &Path) -> Result<(), Failure> {
    let upstream = std::env::var("IPGATE_UPSTREAM")
        .ok()
        .filter(|u| !u.is_empty());
    load_for_gateway(path, upstream.as_deref())?;
    println!("{}: valid", path.display());
    Ok(())
}
