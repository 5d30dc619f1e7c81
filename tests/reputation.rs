//! Reputation providers through the gateway, end to end over loopback against the
//! provider emulator: the example rules of policy.example.yaml, faults with each `on_error`, private
//! addresses, readiness, and no API key anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::emulator::*;
use common::{TestGateway, client, spawn_run_with, upstream};
use serde_json::Value;

const KEY: &str = "KEY-sekrit-1234567890";
const KEYS: EmuKeys = EmuKeys {
    iocscout: KEY,
    ipswamp: KEY,
};

const RULES: &str = "rules:
  - { name: allow-scanners, when: { status: safe }, action: allow }
  - { name: block-threats,  when: { status: threat }, action: block }
  - { name: block-score,    when: { score_above: 70 }, action: block }
  - { name: block-tor,      when: { tor: true }, action: block }
  - { name: block-vpn,      when: { vpn: true }, action: block }
default: allow
";

fn policy(emu: &Emulator, on_error: &str, timeout: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
upstream: {{upstream}}
client_ip: {{ trusted_proxies: [127.0.0.1/32] }}
providers:
  iocscout: {{ api_key: {KEY}, base_url: '{}', timeout: 2s, daily_quota: 100 }}
  ipswamp: {{ api_key: {KEY}, base_url: '{}', timeout: 2s }}
lookup: {{ timeout: {timeout}, on_error: {on_error} }}
{RULES}",
        emu.iocscout_url(),
        emu.ipswamp_url()
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Requests as client `addr` (trusted X-Forwarded-For from loopback); returns the status
/// and the decision's rule (from the JSON block page, or "-" when allowed).
async fn visit(gw: &TestGateway, addr: &str) -> (u16, String) {
    let r = client()
        .get(gw.url("/"))
        .header("x-forwarded-for", addr)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let rule = if status == 403 {
        r.json::<Value>().await.unwrap()["rule"]
            .as_str()
            .unwrap()
            .to_string()
    } else {
        "-".into()
    };
    (status, rule)
}

#[tokio::test]
async fn spec_example_rules_over_emulated_answers() {
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let gw = TestGateway::start(&policy(&emu, "allow", "1500ms"), &up.url()).await;

    emu.set_iocscout(
        ip("198.51.100.1"),
        Answer::Json(iocscout_threat(90, &["attack"])),
    );
    let mut scanner = iocscout_safe_scanner("Googlebot");
    scanner["threat"]["score"] = 95.into();
    emu.set_iocscout(ip("198.51.100.2"), Answer::Json(scanner));
    emu.set_iocscout(ip("198.51.100.3"), Answer::Json(iocscout_suspicious(71)));
    emu.set_iocscout(ip("198.51.100.4"), Answer::Json(iocscout_suspicious(70)));
    emu.set_iocscout(ip("198.51.100.5"), Answer::Json(iocscout_tor()));
    emu.set_iocscout(ip("198.51.100.6"), Answer::Json(iocscout_vpn()));
    emu.set_ipswamp(ip("198.51.100.7"), Answer::Json(ipswamp_malicious(85)));
    emu.set_ipswamp(ip("198.51.100.8"), Answer::Json(ipswamp_clean()));

    let expect = [
        ("198.51.100.1", 403, "block-threats"),
        ("198.51.100.2", 200, "-"),
        ("198.51.100.3", 403, "block-score"),
        ("198.51.100.4", 200, "-"),
        ("198.51.100.5", 403, "block-tor"),
        ("198.51.100.6", 403, "block-vpn"),
        ("198.51.100.7", 403, "block-threats"),
        ("198.51.100.8", 200, "-"),
    ];
    for (addr, status, rule) in expect {
        assert_eq!(
            visit(&gw, addr).await,
            (status, rule.to_string()),
            "client {addr}"
        );
    }
    // The allowed ones, and only they, reached the upstream.
    assert_eq!(up.seen.count(), 3);
    // Each IP cost one call per provider; a second visit is served from the cache.
    assert_eq!(emu.calls(Api::Iocscout), 8);
    assert_eq!(emu.calls(Api::Ipswamp), 8);
    for (addr, status, _) in expect {
        assert_eq!(visit(&gw, addr).await.0, status);
    }
    assert_eq!(
        emu.calls(Api::Iocscout),
        8,
        "a cached IP was looked up again"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn providers_are_asked_concurrently() {
    // Each provider takes 400 ms; the whole look-up may take 700 ms. Asked one after the
    // other they could not both answer in time; the IPSwamp-only rule needs both.
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let yaml = policy(&emu, "allow", "700ms").replace(
        RULES,
        "rules:\n  - { name: both, when: { provider: ipswamp, score_above: 80 }, action: block }\n  - { name: ioc, when: { provider: iocscout, status: threat }, action: block }\n",
    );
    let gw = TestGateway::start(&yaml, &up.url()).await;
    emu.set_fault(
        Api::Iocscout,
        Scope::All,
        Fault::Delay(Duration::from_millis(400)),
    );
    emu.set_fault(
        Api::Ipswamp,
        Scope::All,
        Fault::Delay(Duration::from_millis(400)),
    );
    emu.set_ipswamp(ip("198.51.100.20"), Answer::Json(ipswamp_malicious(85)));
    emu.set_iocscout(
        ip("198.51.100.20"),
        Answer::Json(iocscout_threat(90, &["c2"])),
    );
    let e = gw.gate.explain(ip("198.51.100.20"), true).await;
    assert_eq!(e.rule, "both");
    assert!(
        e.reputation.contains_key(&ipgate::ProviderId::Iocscout)
            && e.reputation.contains_key(&ipgate::ProviderId::Ipswamp),
        "{e:?}"
    );
    gw.shutdown().await;
}

fn faults() -> Vec<(&'static str, Fault)> {
    vec![
        ("delay", Fault::Delay(Duration::from_secs(3))),
        ("429", Fault::Status(429, Some(60))),
        ("500", Fault::Status(500, None)),
        ("bad json", Fault::BadJson),
        ("closed connection", Fault::Close),
        ("usage limit", Fault::UsageLimit),
    ]
}

#[tokio::test]
async fn every_fault_is_decided_by_on_error_within_the_timeout() {
    let timeout = Duration::from_millis(500);
    for on_error in ["allow", "block"] {
        for (name, fault) in faults() {
            let emu = Emulator::start(KEYS).await;
            let up = upstream::start().await;
            let gw = TestGateway::start(&policy(&emu, on_error, "500ms"), &up.url()).await;
            emu.set_fault(Api::Iocscout, Scope::All, fault.clone());
            emu.set_fault(Api::Ipswamp, Scope::All, fault);
            let started = Instant::now();
            let (status, rule) = visit(&gw, "198.51.100.30").await;
            let took = started.elapsed();
            let want = if on_error == "allow" { 200 } else { 403 };
            assert_eq!(status, want, "{name} with on_error: {on_error}");
            if on_error == "block" {
                assert_eq!(rule, "lookup-error", "{name}");
            }
            assert!(
                took <= timeout + Duration::from_millis(100),
                "{name} with on_error: {on_error} took {took:?}"
            );
            gw.shutdown().await;
        }
    }
}

#[tokio::test]
async fn private_addresses_are_never_sent_to_a_provider() {
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let gw = TestGateway::start(&policy(&emu, "block", "500ms"), &up.url()).await;
    for addr in [
        "10.1.2.3",
        "192.168.0.9",
        "100.64.1.1",
        "169.254.3.3",
        "fd00::5",
        "fe80::1",
        "127.0.0.5",
    ] {
        let (status, _) = visit(&gw, addr).await;
        assert_eq!(status, 200, "{addr}: a skipped look-up is not a failure");
    }
    assert_eq!(emu.calls(Api::Iocscout) + emu.calls(Api::Ipswamp), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn unauthorized_disables_the_provider_until_reload() {
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let good = policy(&emu, "allow", "500ms");
    let bad = good.replacen(&format!("api_key: {KEY}"), "api_key: wrong-key", 1);
    let gw = TestGateway::start(&bad, &up.url()).await;
    assert!(gw.gate.readiness_problems().is_empty());
    visit(&gw, "198.51.100.40").await;
    let problems = gw.gate.readiness_problems();
    assert!(
        problems.iter().any(|p| p.contains("iocscout")),
        "{problems:?}"
    );
    let calls = emu.calls(Api::Iocscout);
    visit(&gw, "198.51.100.41").await;
    assert_eq!(
        emu.calls(Api::Iocscout),
        calls,
        "a disabled provider was called"
    );
    let cfg = ipgate::Config::from_yaml(&good.replace("{upstream}", &up.url()), "t").unwrap();
    gw.gate.reload(cfg).await.unwrap();
    assert!(gw.gate.readiness_problems().is_empty());
    gw.shutdown().await;
}

/// The real binary, every fault, trace logging: the key appears in no log line, no
/// response, no admin answer and no `check` output.
#[tokio::test]
async fn the_api_key_never_leaks() {
    let emu = Emulator::start(KEYS).await;
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("policy.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0
upstream: {}
client_ip: {{ trusted_proxies: [127.0.0.1/32] }}
admin: {{ listen: '127.0.0.1:0' }}
providers:
  iocscout: {{ api_key: '${{IPGATE_TEST_IOC_KEY}}', base_url: '{}' }}
  ipswamp: {{ api_key: '${{IPGATE_TEST_SWAMP_KEY}}', base_url: '{}', auth: header }}
lookup: {{ timeout: 500ms, on_error: block }}
cache: {{ error_ttl: 1s }}
{RULES}",
        up.url(),
        emu.iocscout_url(),
        emu.ipswamp_url()
    );
    std::fs::write(&f, yaml).unwrap();
    let bin = env!("CARGO_BIN_EXE_ipgate");
    let mut run = spawn_run_with(&f, |cmd| {
        cmd.env("IPGATE_LOG", "trace")
            .env("IPGATE_TEST_IOC_KEY", KEY)
            .env("IPGATE_TEST_SWAMP_KEY", KEY)
            .stderr(Stdio::piped());
    })
    .await;
    let base = run.url("/");
    let mut seen = String::new();
    let mut faults = faults();
    faults.push(("echo key", Fault::EchoKey(400)));
    faults.push(("redirect", Fault::Redirect));
    faults.push(("401", Fault::Status(401, None)));
    for (i, (_, fault)) in faults.into_iter().enumerate() {
        emu.set_fault(Api::Iocscout, Scope::All, fault.clone());
        emu.set_fault(Api::Ipswamp, Scope::All, fault);
        let addr = format!("198.51.100.{}", 100 + i);
        let r = client()
            .get(&base)
            .header("x-forwarded-for", &addr)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let headers = format!("{:?}", r.headers());
        seen.push_str(&format!("{headers}\n{}\n", r.text().await.unwrap()));
        let d = client()
            .get(run.admin_url(&format!("/v1/decision?ip={addr}&lookup=true")))
            .send()
            .await
            .unwrap();
        seen.push_str(&d.text().await.unwrap());
    }
    for path in ["metrics", "readyz", "v1/bans"] {
        let r = client()
            .get(run.admin_url(&format!("/{path}")))
            .send()
            .await
            .unwrap();
        seen.push_str(&r.text().await.unwrap());
    }
    // `ipgate check --lookup`, answered and failing.
    emu.clear_faults();
    emu.set_iocscout(
        ip("198.51.100.200"),
        Answer::Json(iocscout_threat(80, &["malware"])),
    );
    for extra in [vec![], vec!["--json"]] {
        let out = tokio::process::Command::new(bin)
            .args([
                "check",
                "-c",
                f.to_str().unwrap(),
                "198.51.100.200",
                "--lookup",
            ])
            .args(&extra)
            .env("IPGATE_LOG", "trace")
            .env("IPGATE_TEST_IOC_KEY", KEY)
            .env("IPGATE_TEST_SWAMP_KEY", KEY)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if extra.is_empty() {
            assert!(
                text.contains("iocscout") && text.contains("status=\"threat\""),
                "{text}"
            );
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["reputation"]["iocscout"]["status"], "threat");
            assert_eq!(v["rule"], "block-threats");
        }
        seen.push_str(&text);
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    run.child.kill().await.unwrap();
    let out = run.child.wait_with_output().await.unwrap();
    let stdout = run.stdout.await.unwrap();
    let logs = String::from_utf8_lossy(&out.stderr).to_string() + &stdout;
    assert!(logs.contains("iocscout"), "trace logs were not captured");
    seen.push_str(&logs);
    assert!(emu.calls(Api::Iocscout) > 0);
    for needle in [KEY, "sekrit", "KEY-sekrit", "KEY%2Dsekrit"] {
        assert!(
            !seen.contains(needle),
            "`{needle}` leaked:\n{}",
            &seen[seen.find(needle).unwrap().saturating_sub(300)..]
        );
    }
}
