//! `ipgate check`: the decision for one IP and why. When the configured gateway is
//! running, its admin API answers (so its bans and live cache count, and a look-up is
//! counted against its quota); otherwise the decision is made here.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use ipgate::Config;

use super::{Failure, load};

pub async fn check(path: &Path, ip: &str, lookup: bool, json: bool) -> Result<(), Failure> {
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| Failure::Config(anyhow::anyhow!("`{ip}` is not an IP address")))?;
    let cfg = load(path)?;
    let explained = match ask_the_gateway(&cfg, ip, lookup).await {
        Some((admin, v)) => {
            eprintln!("note: answered by the running gateway (admin API on {admin})");
            v
        }
        None => decide_here(cfg, ip, lookup).await?,
    };
    if json {
        let text = serde_json::to_string_pretty(&explained).context("rendering JSON")?;
        println!("{text}");
    } else {
        print_text(&explained);
    }
    Ok(())
}

/// The running gateway's answer (`GET /v1/decision`), when its admin API answers.
async fn ask_the_gateway(cfg: &Config, ip: IpAddr, lookup: bool) -> Option<(String, Value)> {
    let admin = cfg.admin.as_ref()?;
    let mut addr = admin.listen.0;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(500))
        .timeout(cfg.lookup.timeout.0 + Duration::from_secs(2))
        .build()
        .ok()?;
    let mut req = client
        .get(format!("http://{addr}/v1/decision"))
        .query(&[("ip", ip.to_string()), ("lookup", lookup.to_string())]);
    if let Some(token) = admin.token.as_ref().filter(|t| !t.0.is_empty()) {
        req = req.bearer_auth(&token.0);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        eprintln!(
            "note: the admin API on {addr} answered {}; deciding here instead",
            resp.status()
        );
        return None;
    }
    Some((addr.to_string(), resp.json().await.ok()?))
}

/// The decision made by a gate built here.
async fn decide_here(cfg: Config, ip: IpAddr, lookup: bool) -> Result<Value, Failure> {
    let gate = match ipgate::Gate::from_config(cfg.clone()).await {
        Ok(g) => g,
        // A running gateway holds the store: read-only questions go on without it (and
        // say so); a look-up would spend quota the gateway cannot count, so it is refused.
        Err(ipgate::GateError::Cache(ipgate::CacheError::Store(ipgate::StoreError::Locked {
            path: store,
        }))) => {
            if lookup {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "cache.path {store} is held by a running gateway: --lookup would spend quota it cannot count; ask the gateway instead: GET /v1/decision?ip={ip}&lookup=true on its admin API"
                )));
            }
            eprintln!(
                "note: cache.path {store} is held by a running gateway, so cached reputation is not shown; the gateway's admin API answers with it: GET /v1/decision?ip={ip}"
            );
            let mut cfg = cfg;
            cfg.cache.path = None;
            ipgate::Gate::from_config(cfg)
                .await
                .map_err(|e| Failure::Config(anyhow::Error::new(e)))?
        }
        Err(e) => return Err(Failure::Config(anyhow::Error::new(e))),
    };
    let e = gate.explain(ip, lookup).await;
    serde_json::to_value(&e)
        .context("rendering the decision")
        .map_err(Failure::Runtime)
}

fn print_text(e: &Value) {
    let s = |k: &str| match &e[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    println!("ip:        {}", s("ip"));
    println!(
        "decision:  {}{}",
        s("decision"),
        if e["decision"] != e["verdict"] {
            " (dry_run: policy says block)"
        } else {
            ""
        }
    );
    println!("rule:      {}", s("rule"));
    println!("reason:    {}", s("reason"));
    let lists: Vec<String> = e["lists"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "lists:     {}",
        if lists.is_empty() {
            "-".to_string()
        } else {
            lists.join(", ")
        }
    );
    if let Some(trace) = e["trace"].as_array().filter(|t| !t.is_empty()) {
        println!("trace:");
        for step in trace {
            println!(
                "  {:<24} {}",
                step["rule"].as_str().unwrap_or("-"),
                step["result"].as_str().unwrap_or("-")
            );
        }
    }
    let reputation = e["reputation"].as_object();
    let errors = e["reputation_errors"].as_array();
    if reputation.is_some_and(|r| !r.is_empty()) || errors.is_some_and(|r| !r.is_empty()) {
        let cached = e["cached"].as_bool().unwrap_or(false);
        println!("reputation{}:", if cached { " (cached)" } else { "" });
        for (provider, rep) in reputation.into_iter().flatten() {
            let get = |k: &str| {
                rep.get(k)
                    .filter(|v| !v.is_null())
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "  {provider:<9} status={} score={} tor={} vpn={} scanner={} country={} asn={}",
                get("status"),
                get("score"),
                get("tor"),
                get("vpn"),
                get("scanner"),
                get("country"),
                get("asn")
            );
        }
        for err in errors.into_iter().flatten() {
            println!(
                "  {:<9} no answer: {}",
                err[0].as_str().unwrap_or("-"),
                err[1].as_str().unwrap_or("-")
            );
        }
    }
}
