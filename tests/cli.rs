//! The `ipgate` binary: validate, check, run (signals, exit codes) and demo.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kill, spawn_run, upstream, wait_for_status};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_ipgate");

fn ipgate(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("IPGATE_UPSTREAM")
        .output()
        .unwrap()
}

#[test]
fn the_example_policy_validates_on_a_fresh_machine() {
    let out = Command::new(BIN)
        .args([
            "validate",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/policy.example.yaml"),
        ])
        .env_remove("IOCSCOUT_API_KEY")
        .env_remove("IPSWAMP_API_KEY")
        .env_remove("IPGATE_ADMIN_TOKEN")
        .env_remove("IPGATE_UPSTREAM")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_reports_every_error_with_position_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "listen: 127.0.0.1:8080\nlists:\n  block: [10.0.0.0/8, 300.1.1.1]\ncache:\n  error_ttl: 5min\nrules:\n  - { name: x, when: { in_list: nope }, action: block }\n").unwrap();
    let out = ipgate(&["validate", "-c", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = f.display().to_string();
    assert!(
        err.contains(&format!("{file}:3:"))
            && err.contains("lists.block")
            && err.contains("300.1.1.1"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:5:"))
            && err.contains("cache.error_ttl")
            && err.contains("5min"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:7:")) && err.contains("nope"),
        "{err}"
    );

    std::fs::write(&f, "listen: 127.0.0.1:8080\nlimts: {}\n").unwrap();
    let out = ipgate(&["validate", "-c", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{file}:2:1")) && err.contains("limts"),
        "{err}"
    );

    let out = ipgate(&["validate", "-c", "/nonexistent/policy.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/policy.yaml"));
}

#[test]
fn unset_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, "admin:\n  token: ${IPGATE_TEST_TOKEN_NOT_SET}\n").unwrap();
    let out = ipgate(&["validate", "-c", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IPGATE_TEST_TOKEN_NOT_SET") && err.contains(":2:"),
        "{err}"
    );
}

#[test]
fn check_explains_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        "lists: { block: [203.0.113.0/24], allow: [192.0.2.0/24] }\nrules:\n  - { name: block-threats, when: { status: threat }, action: block }\ndefault: allow\n",
    )
    .unwrap();
    let out = ipgate(&["check", "-c", f.to_str().unwrap(), "203.0.113.5"]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("decision:  block") && s.contains("rule:      block-list"),
        "{s}"
    );

    let out = ipgate(&["check", "-c", f.to_str().unwrap(), "198.51.100.1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // No provider configured: the rule needs reputation, nothing is cached, on_error (allow) decides.
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["rule"], "lookup-error");
    assert_eq!(v["trace"][0]["rule"], "block-threats");

    let out = ipgate(&["check", "-c", f.to_str().unwrap(), "not-an-ip"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_without_lookup_still_asks_the_local_file_provider() {
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("rep.yaml");
    std::fs::write(&rep, "198.51.100.40: { status: threat, score: 90 }\n").unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        format!(
            "providers: {{ file: {{ path: '{}' }} }}\nrules:\n  - {{ name: block-threats, when: {{ status: threat }}, action: block }}\n",
            rep.display()
        ),
    )
    .unwrap();
    let out = ipgate(&[
        "check",
        "-c",
        f.to_str().unwrap(),
        "198.51.100.40",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["decision"].as_str(), v["rule"].as_str()),
        (Some("block"), Some("block-threats")),
        "{v}"
    );
    assert_eq!(v["reputation"]["file"]["score"], 90, "{v}");
}

#[test]
fn run_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, "listen: 127.0.0.1:0\nupstream: ftp://x\n").unwrap();
    let out = ipgate(&["run", "-c", f.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Port in use: exit 1 with the address named.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    std::fs::write(
        &f,
        format!("listen: 127.0.0.1:{port}\nupstream: http://127.0.0.1:9\n"),
    )
    .unwrap();
    let out = ipgate(&["run", "-c", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    // No upstream anywhere: a usage error.
    std::fs::write(&f, "listen: 127.0.0.1:0\n").unwrap();
    let out = ipgate(&["run", "-c", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream"));
}

#[tokio::test]
async fn run_reloads_on_sighup_keeps_old_config_on_error_and_drains_on_sigterm() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    // Port 0 everywhere: the addresses are read from what the binary prints. A reload
    // keeps the sockets, so they stay valid.
    let base = format!(
        "listen: 127.0.0.1:0\nupstream: {}\nadmin: {{ listen: '127.0.0.1:0' }}\n",
        up.url()
    );
    std::fs::write(&f, &base).unwrap();
    let mut run = spawn_run(&f).await;
    let url = run.url("/");
    assert_eq!(
        common::client().get(&url).send().await.unwrap().status(),
        200
    );
    let pid = run.pid();

    std::fs::write(&f, format!("{base}lists: {{ block: [127.0.0.1] }}\n")).unwrap();
    kill("-HUP", pid);
    wait_for_status(&url, 403).await;

    // A broken file is refused; the running policy stays.
    std::fs::write(&f, format!("{base}lists: {{ block: [junk] }}\n")).unwrap();
    kill("-HUP", pid);
    let r = common::client()
        .post(run.admin_url("/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("junk"));
    assert_eq!(
        common::client().get(&url).send().await.unwrap().status(),
        403
    );

    let metrics = common::client()
        .get(run.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ipgate_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ipgate_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ipgate_requests_total{decision=\"block\",rule=\"block-list\"}"),
        "{metrics}"
    );

    kill("-TERM", pid);
    let status = tokio::time::timeout(Duration::from_secs(15), run.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn demo_curl_lines_behave_as_printed() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!(
            "!!! SKIPPED demo_curl_lines_behave_as_printed: curl is not installed (.ci/run installs it)"
        );
        return;
    }
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut curls = Vec::new();
    let mut listening = None;
    let mut admin_lines = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if line.starts_with("  ") {
            admin_lines.push(line.trim().to_string());
        }
        if let Some(addr) = line.strip_prefix("listening on ") {
            listening = Some(addr.parse::<std::net::SocketAddr>().unwrap());
        } else if line.starts_with("curl ") {
            curls.push(line);
        } else if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert_eq!(curls.len(), 11, "the demo's curl lines: {curls:?}");
    // `--listen 127.0.0.1:0`: the demo prints the port the system chose; the tour uses it.
    let addr = listening.expect("the demo printed no `listening on ADDR` line");
    assert_ne!(addr.port(), 0);
    assert!(
        curls.iter().all(|c| c.contains(&format!("http://{addr}/"))),
        "the curl lines do not use {addr}: {curls:?}"
    );
    // Every kind of decision the tour promises is among them.
    for what in [
        "lists.allow",
        "lists.block",
        "JSON",
        "invalid-client-ip",
        "block-threats",
        "above 70",
        "not above 70",
        "block-tor",
        "block-vpn",
        "allow-scanners",
    ] {
        assert!(
            curls.iter().any(|c| c.contains(what)),
            "no curl line shows {what}"
        );
    }
    let (mut allowed, mut blocked) = (0, 0);
    for line in &curls {
        let (cmd, comment) = line
            .split_once("# expect ")
            .expect("each curl line says what to expect");
        let want = &comment[..3];
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.trim_end().ends_with(&format!("HTTP {want}")),
            "`{cmd}` printed {text:?}, expected HTTP {want}"
        );
        if want == "200" {
            allowed += 1;
            assert!(text.contains("hello from the demo app"), "{text}");
        } else {
            blocked += 1;
        }
    }
    assert!(allowed >= 1 && blocked >= 1);
    // The admin API on loopback: the status page, the metrics, a ban that takes effect.
    let admin_line = |what: &str| {
        admin_lines
            .iter()
            .find_map(|l| l.strip_prefix(what))
            .unwrap_or_else(|| panic!("no `{what}` line: {admin_lines:?}"))
            .trim()
            .to_string()
    };
    let page = admin_line("status page:");
    let page = page.split_whitespace().next().unwrap();
    let html = common::client().get(page).send().await.unwrap();
    assert_eq!(html.status(), 200, "{page}");
    assert!(
        html.text()
            .await
            .unwrap()
            .contains("<title>ipgate status</title>")
    );
    let sh = |cmd: String| async move {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let metrics = sh(admin_line("metrics:")).await;
    assert!(
        metrics.contains(r#"ipgate_requests_total{decision="block",rule="block-list"} 2"#),
        "{metrics}"
    );
    let ban = admin_line("ban:");
    let ban = ban.split("   #").next().unwrap().to_string();
    assert!(sh(ban).await.contains("198.51.100.20/32"));
    let first = curls[0].split_once("# expect ").unwrap().0.to_string();
    assert!(
        sh(first.clone()).await.trim_end().ends_with("HTTP 403"),
        "the ban is not in force"
    );
    sh(admin_line("unban:")).await;
    assert!(
        sh(first).await.trim_end().ends_with("HTTP 200"),
        "the ban was not lifted"
    );
    kill("-INT", child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn run_reloads_when_the_watched_file_changes() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let base = format!(
        "listen: 127.0.0.1:0\nupstream: {}\nreload: {{ watch: true }}\n",
        up.url()
    );
    std::fs::write(&f, &base).unwrap();
    let mut run = spawn_run(&f).await;
    let url = run.url("/");
    assert_eq!(
        common::client().get(&url).send().await.unwrap().status(),
        200
    );
    // Write a new file and rename it over the old one, as editors do.
    let tmp = dir.path().join("p.yaml.new");
    std::fs::write(&tmp, format!("{base}lists: {{ block: [127.0.0.1] }}\n")).unwrap();
    std::fs::rename(&tmp, &f).unwrap();
    wait_for_status(&url, 403).await;
    kill("-TERM", run.pid());
    let status = tokio::time::timeout(Duration::from_secs(15), run.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn check_beside_a_running_gateway_that_holds_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rep.yaml"),
        "198.51.100.66: { status: threat, score: 95 }\n",
    )
    .unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\nclient_ip: { trusted_proxies: [127.0.0.1/32] }\ncache: { path: cache.redb }\nproviders: { file: { path: rep.yaml } }\nrules:\n  - { name: block-threats, when: { status: threat }, action: block }\n",
    )
    .unwrap();
    let mut run = spawn_run(&f).await;
    let r = common::client()
        .get(run.url("/"))
        .header("x-forwarded-for", "198.51.100.66")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let out = ipgate(&["check", "-c", f.to_str().unwrap(), "198.51.100.66"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("held by a running gateway") && err.contains("/v1/decision"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("decision:"));
    let out = ipgate(&[
        "check",
        "-c",
        f.to_str().unwrap(),
        "198.51.100.66",
        "--lookup",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would spend quota"));
    kill("-TERM", run.pid());
    run.child.wait().await.unwrap();
    // With the gateway gone, check reads the store: the answer the gateway cached.
    let out = ipgate(&["check", "-c", f.to_str().unwrap(), "198.51.100.66"]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("decision:  block")
            && s.contains("reputation (cached)")
            && s.contains("status=\"threat\""),
        "{s}"
    );
}

fn validate_env_free(f: &std::path::Path) -> std::process::Output {
    ipgate(&["validate", "-c", f.to_str().unwrap()])
}

#[test]
fn validate_refuses_what_run_refuses_and_reports_all_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let cases: [(&str, &[&str]); 6] = [
        ("", &["sets nothing"]),
        ("# only a comment\n\n", &["sets nothing"]),
        (
            "admin: { listen: 0.0.0.0:9090 }\nupstream: http://127.0.0.1:3000\n",
            &["1:10: key `admin.listen`", "admin.token"],
        ),
        // Every problem at once: no upstream, a block page that cannot be read.
        (
            "block_response: { html: /nonexistent/blocked.html }\n",
            &["key `upstream`", "/nonexistent/blocked.html"],
        ),
        // upstream_ca: a file that cannot be read; roots for a plain-HTTP upstream.
        (
            "upstream: https://127.0.0.1:3443\nupstream_ca: /nonexistent/ca.pem\n",
            &["upstream_ca", "/nonexistent/ca.pem"],
        ),
        (
            "upstream: http://127.0.0.1:3000\nupstream_ca: /nonexistent/ca.pem\n",
            &[
                "upstream_ca is set, but the upstream `http://127.0.0.1:3000` is not https://",
                "/nonexistent/ca.pem",
            ],
        ),
    ];
    for (text, wants) in cases {
        std::fs::write(&f, text).unwrap();
        let out = validate_env_free(&f);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        for want in wants {
            assert!(err.contains(want), "{text:?}: `{want}` not in {err}");
        }
    }
    // The admin API off loopback with a token is fine, and so is `run`'s refusal.
    std::fs::write(
        &f,
        "admin: { listen: 0.0.0.0:0 }\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:3000\n",
    )
    .unwrap();
    let out = ipgate(&["run", "-c", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token"));
    std::fs::write(
        &f,
        "admin: { listen: 0.0.0.0:9090, token: s3cret }\nupstream: http://127.0.0.1:3000\n",
    )
    .unwrap();
    assert_eq!(validate_env_free(&f).status.code(), Some(0));
}

#[test]
fn errors_name_the_key_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let cases = [
        (
            "upstream: http://127.0.0.1:3000\nlimits:\n  idle_timeout: 5s\nlimits2: 3\n",
            ":4:1: key `limits2`: unknown field",
        ),
        (
            "upstream: http://127.0.0.1:3000\nrules:\n  - name: a\n    when: { status: bogus }\n    action: block\n",
            ":4:13: key `rules.when.status`",
        ),
        (
            "upstream: http://127.0.0.1:3000\n# a comment\n  listen: 127.0.0.1:8080\n",
            ":3:3: key `listen`",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&f, text).unwrap();
        let out = validate_env_free(&f);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "`{want}` not in {err}");
    }
}

#[tokio::test]
async fn a_reload_refuses_an_emptied_or_upstream_less_file() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let good = format!(
        "listen: 127.0.0.1:0\nupstream: {}\nreload: {{ watch: true }}\nlists: {{ block: [127.0.0.1] }}\nadmin: {{ listen: 127.0.0.1:0, token: t0k }}\n",
        up.url()
    );
    std::fs::write(&f, &good).unwrap();
    let run = spawn_run(&f).await;
    let url = run.url("/");
    let admin = format!("http://{}", run.admin.unwrap());
    assert_eq!(
        common::client().get(&url).send().await.unwrap().status(),
        403
    );
    let reload_errors = || async {
        let text = common::client()
            .get(format!("{admin}/metrics"))
            .bearer_auth("t0k")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("ipgate_config_reloads_total{result=\"error\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Truncated to nothing, then a file without an upstream: both refused.
    let bad = [
        String::new(),
        good.replace(&format!("upstream: {}\n", up.url()), ""),
    ];
    for (i, text) in bad.iter().enumerate() {
        std::fs::write(&f, text).unwrap();
        common::eventually("the reload is refused", Duration::from_secs(5), || async {
            reload_errors().await > i as u64
        })
        .await;
        // The block list, and the admin token, are still in force.
        assert_eq!(
            common::client().get(&url).send().await.unwrap().status(),
            403
        );
        let r = common::client()
            .get(format!("{admin}/v1/bans"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
}

#[tokio::test]
async fn a_reload_replaces_the_certificate_refuses_a_bad_pair_and_reports_listen_changes() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let a = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let install = |c: &rcgen::CertifiedKey<rcgen::KeyPair>,
                   k: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, k.signing_key.serialize_pem()).unwrap();
    };
    install(&a, &a);
    let f = dir.path().join("p.yaml");
    let policy = |listen: &str| {
        format!(
            "listen: {listen}\nupstream: {}\ntls: {{ cert: '{}', key: '{}' }}\nadmin: {{ listen: 127.0.0.1:0 }}\n",
            up.url(),
            cert.display(),
            key.display()
        )
    };
    std::fs::write(&f, policy("127.0.0.1:0")).unwrap();
    let run = spawn_run(&f).await;
    let addr = run.gateway[0];
    let admin = format!("http://{}", run.admin.unwrap());
    // A new client (no pooled connection) that trusts only `root`.
    let served_to = |root: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        let c = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(root.cert.pem().as_bytes()).unwrap(),
            )
            .resolve("localhost", addr)
            .build()
            .unwrap();
        async move {
            c.get(format!("https://localhost:{}/", addr.port()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    };
    assert!(served_to(&a).await && !served_to(&b).await);

    // A new pair on disk, then SIGHUP: new connections get it.
    install(&b, &b);
    kill("-HUP", run.pid());
    common::eventually(
        "the new certificate is served",
        Duration::from_secs(5),
        || served_to(&b),
    )
    .await;
    assert!(!served_to(&a).await);

    // A certificate and key that do not fit: refused, the pair in force stays.
    install(&a, &b);
    kill("-HUP", run.pid());
    common::eventually(
        "the bad pair is refused",
        Duration::from_secs(5),
        || async {
            common::metric(&admin, "ipgate_config_reloads_total{result=\"error\"}").await == 1.0
        },
    )
    .await;
    assert!(served_to(&b).await);

    // A changed listen address needs a restart: said so, the listener is kept.
    install(&b, &b);
    std::fs::write(&f, policy("127.0.0.1:1")).unwrap();
    kill("-HUP", run.pid());
    common::eventually(
        "restart required is reported",
        Duration::from_secs(5),
        || async {
            common::metric(
                &admin,
                "ipgate_config_reloads_total{result=\"restart_required\"}",
            )
            .await
                == 1.0
        },
    )
    .await;
    assert!(served_to(&b).await);
}

/// Local files that are not what they should be (a feed file, the reputation file, each a
/// symlink to a secret): the binary's log names the file and the line, never the line.
#[tokio::test]
async fn run_never_logs_the_content_of_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("shadow");
    std::fs::write(
        &secret,
        "192.0.2.1\nroot:$6$secretHASH:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("list.txt")).unwrap();
    let secret_map = dir.path().join("secrets.yaml");
    std::fs::write(
        &secret_map,
        "192.0.2.1: { status: threat }\nsecretHASH: { status: threat }\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret_map, dir.path().join("rep.yaml")).unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\nlists:\n  feeds:\n    - { name: local, source: list.txt }\n",
    )
    .unwrap();
    let mut run = common::spawn_run_with(&f, |cmd| {
        cmd.stderr(Stdio::piped());
    })
    .await;
    let mut stderr = run.child.stderr.take().unwrap();
    kill("-TERM", run.pid());
    let mut log = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut log)
        .await
        .unwrap();
    run.child.wait().await.unwrap();
    assert!(
        log.contains("list.txt: line 2: not an IP address or CIDR"),
        "the feed error is not logged: {log}"
    );
    assert!(!log.contains("secretHASH"), "{log}");

    // The file provider's file: `run` refuses to start, naming the file and the line.
    std::fs::write(
        &f,
        "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\nproviders: { file: { path: rep.yaml } }\n",
    )
    .unwrap();
    let out = ipgate(&["run", "-c", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("rep.yaml") && err.contains("line 2"), "{err}");
    assert!(!err.contains("secretHASH"), "{err}");
}

/// Runs a gateway whose logs go to a pipe, sends one blocked and one allowed request,
/// stops it and returns what it logged.
async fn log_of_one_blocked_request(format: &str) -> String {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nclient_ip: {{ trusted_proxies: [127.0.0.1/32], header: x-forwarded-for }}\nlists: {{ block: [203.0.113.0/24] }}\n",
            up.url()
        ),
    )
    .unwrap();
    let format = format.to_string();
    let mut run = common::spawn_run_with(&f, move |cmd| {
        cmd.args(["--log-format", &format])
            .env_remove("IPGATE_LOG")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped());
    })
    .await;
    let c = common::client();
    for (ip, want) in [("203.0.113.7", 403), ("198.51.100.20", 200)] {
        let r = c
            .get(run.url("/login?token=abc"))
            .header("x-forwarded-for", ip)
            .header("user-agent", "curl/8.5.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want);
    }
    let mut stderr = run.child.stderr.take().unwrap();
    kill("-TERM", run.pid());
    let mut log = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut log)
        .await
        .unwrap();
    run.child.wait().await.unwrap();
    log
}

/// One INFO line per blocked request with what an operator needs; allowed requests
/// only at DEBUG; no colours into a pipe; readable addresses.
#[tokio::test]
async fn a_blocked_request_is_logged_once_with_its_context() {
    let log = log_of_one_blocked_request("text").await;
    let blocked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request blocked"))
        .collect();
    assert_eq!(blocked.len(), 1, "{log}");
    let line = blocked[0];
    for field in [
        " INFO ",
        "client=203.0.113.7",
        "peer=127.0.0.1",
        "method=GET",
        "host=127.0.0.1:",
        "path=/login",
        "user_agent=curl/8.5.0",
        "rule=block-list",
        "reason=block-list",
        "mode=enforce",
    ] {
        assert!(line.contains(field), "no {field:?} in {line}");
    }
    assert!(
        !line.contains("token=abc"),
        "the query string is logged: {line}"
    );
    assert!(
        !log.contains("request allowed"),
        "allowed requests at INFO: {log}"
    );
    assert!(!log.contains('\u{1b}'), "colours in a pipe: {log:?}");
    assert!(!log.contains("Some("), "{log}");
    assert!(log.contains("gateway listening listen=127.0.0.1:"), "{log}");
}

#[tokio::test]
async fn json_log_lines_have_flat_fields() {
    let log = log_of_one_blocked_request("json").await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let blocked: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["message"] == "request blocked")
        .collect();
    assert_eq!(blocked.len(), 1, "{log}");
    let v = blocked[0];
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["client"], "203.0.113.7");
    assert_eq!(v["peer"], "127.0.0.1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/login");
    assert_eq!(v["user_agent"], "curl/8.5.0");
    assert_eq!(v["rule"], "block-list");
    assert_eq!(v["mode"], "enforce");
    assert!(v.get("fields").is_none(), "{v}");
    assert!(v["timestamp"].is_string() && v["target"].is_string(), "{v}");
}

/// `/metrics` of a running gateway: histograms with buckets (never summaries), one
/// series per possible (rule, decision), the gateway's own gauges and counters, process
/// metrics, and `promtool check metrics` finds nothing to say (when installed).
#[tokio::test]
async fn metrics_are_histograms_without_impossible_series() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nclient_ip: {{ trusted_proxies: [127.0.0.1/32], header: x-forwarded-for }}\nlists: {{ allow: [192.0.2.0/24], block: [203.0.113.0/24] }}\nrules:\n  - {{ name: block-tor, when: {{ tor: true }}, action: block }}\nadmin: {{ listen: 127.0.0.1:0 }}\n",
            up.url()
        ),
    )
    .unwrap();
    let run = spawn_run(&f).await;
    let c = common::client();
    for ip in ["203.0.113.7", "192.0.2.1", "198.51.100.20"] {
        c.get(run.url("/"))
            .header("x-forwarded-for", ip)
            .send()
            .await
            .unwrap();
    }
    let text = c
        .get(run.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "# TYPE ipgate_decision_seconds histogram",
        "ipgate_decision_seconds_bucket{le=\"0.00001\"}",
        "# TYPE ipgate_upstream_seconds histogram",
        "ipgate_upstream_seconds_bucket{le=\"0.005\"}",
        "ipgate_decision_seconds_count 3",
        "ipgate_upstream_seconds_count 2",
        &format!(
            "ipgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "ipgate_connections_open ",
        "ipgate_upstream_errors_total{kind=\"timeout\"} 0",
        "ipgate_upstream_errors_total{kind=\"connect\"} 0",
        "ipgate_requests_total{decision=\"block\",rule=\"block-list\"} 1",
        "ipgate_requests_total{decision=\"allow\",rule=\"allow-list\"} 1",
        "ipgate_requests_total{decision=\"allow\",rule=\"lookup-error\"} 1",
        "ipgate_requests_total{decision=\"block\",rule=\"block-tor\"} 0",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    assert!(!text.contains("quantile="), "a summary:\n{text}");
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ipgate_requests_total{"))
        .collect();
    // ban, block-list, invalid-client-ip, allow-list, default, lookup-error, block-tor:
    // one each (no lookup-pending: lookup.mode is inline).
    assert_eq!(series.len(), 7, "{series:#?}");
    for impossible in [
        "decision=\"allow\",rule=\"block-list\"",
        "decision=\"block\",rule=\"allow-list\"",
        "decision=\"dry_run_block\"",
        "decision=\"block\",rule=\"default\"",
        "decision=\"allow\",rule=\"block-tor\"",
        "rule=\"lookup-pending\"",
    ] {
        assert!(!text.contains(impossible), "{impossible} in\n{text}");
    }
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Err(_) => eprintln!(
            "!!! promtool is not installed (.ci/run installs it: apt-get install prometheus): /metrics not checked by it"
        ),
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.trim().is_empty(),
                "promtool: {said}"
            );
        }
    }
}

/// Starts `ipgate run -c policy` restricted to `cpus` (a `taskset` list) with `env`
/// added to its environment (None when `taskset` is missing).
async fn run_on_cpus(
    cpus: &str,
    policy: &std::path::Path,
    env: &[(&str, &str)],
) -> Option<common::Running> {
    if Command::new("taskset").arg("-V").output().is_err() {
        eprintln!("SKIPPED: `taskset` (util-linux) is missing; the one-CPU runtime is not tested");
        return None;
    }
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.args(["-c", cpus, BIN, "run", "-c", policy.to_str().unwrap()])
        .envs(env.iter().copied())
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let (gateway, admin, stdout) = common::read_listening(&mut child, 1, true).await;
    Some(common::Running {
        child,
        gateway,
        admin,
        stdout,
    })
}

/// On one CPU the gateway runs its work on one thread (no work-stealing workers), and
/// everything that spawns or waits still works there: concurrent look-ups coalesced
/// into one provider call, the cache, the admin API, a graceful stop.
/// `TOKIO_WORKER_THREADS` brings back the multi-threaded runtime; on two CPUs there is
/// one serving thread per CPU.
#[tokio::test]
async fn on_one_cpu_the_gateway_serves_from_one_thread() {
    use common::emulator::{Answer, Api, EmuKeys, Emulator, iocscout_threat};
    const KEY: &str = "one-cpu-key";
    let emu = Emulator::start(EmuKeys {
        iocscout: KEY,
        ipswamp: KEY,
    })
    .await;
    emu.set_iocscout(
        "198.51.100.66".parse().unwrap(),
        Answer::Json(iocscout_threat(90, &["attack"])),
    );
    emu.set_fault(
        Api::Iocscout,
        common::emulator::Scope::All,
        common::emulator::Fault::Delay(Duration::from_millis(200)),
    );
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("policy.yaml");
    std::fs::write(
        &f,
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nadmin: {{ listen: '127.0.0.1:0' }}\nclient_ip: {{ trusted_proxies: [127.0.0.1/32] }}\nproviders:\n  iocscout: {{ api_key: {KEY}, base_url: '{}' }}\nrules:\n  - {{ name: block-threats, when: {{ status: threat }}, action: block }}\n",
            up.url(),
            emu.iocscout_url()
        ),
    )
    .unwrap();

    let Some(mut run) = run_on_cpus("0", &f, &[]).await else {
        return;
    };
    let workers = |pid| {
        common::thread_names(pid)
            .iter()
            .filter(|n| n.starts_with("tokio-r"))
            .count()
    };
    assert_eq!(
        workers(run.pid()),
        0,
        "threads on one CPU: {:?}",
        common::thread_names(run.pid())
    );
    let visit = |run: &common::Running, a: &'static str| {
        let url = run.url("/");
        async move {
            common::client()
                .get(url)
                .header("x-forwarded-for", a)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Eight requests at once for one new client: one call, the same answer for all.
    let statuses =
        futures_util::future::join_all((0..8).map(|_| visit(&run, "198.51.100.66"))).await;
    assert_eq!(statuses, vec![403; 8]);
    assert_eq!(
        emu.calls(Api::Iocscout),
        1,
        "the look-ups were not coalesced"
    );
    assert_eq!(
        visit(&run, "198.51.100.66").await,
        403,
        "the answer was not cached"
    );
    assert_eq!(visit(&run, "198.51.100.67").await, 200);
    assert_eq!(emu.calls(Api::Iocscout), 2);
    let admin = format!("http://{}", run.admin.unwrap());
    assert_eq!(
        common::metric(&admin, "ipgate_cache_lookups_total{result=\"hit\"}").await,
        1.0
    );
    common::kill("-TERM", run.pid());
    let status = tokio::time::timeout(Duration::from_secs(10), run.child.wait())
        .await
        .expect("no graceful stop within 10 s")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    let Some(run) = run_on_cpus("0", &f, &[("TOKIO_WORKER_THREADS", "1")]).await else {
        return;
    };
    // A worker thread carries the process's name until it has started and named itself.
    let pid = run.pid();
    common::eventually(
        "one named runtime worker with TOKIO_WORKER_THREADS=1",
        Duration::from_secs(5),
        || async move { workers(pid) == 1 },
    )
    .await;
    drop(run);

    // On two CPUs: a second serving thread with a runtime of its own, no worker pool.
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        eprintln!("SKIPPED: one CPU here; the thread-per-core server is not checked");
        return;
    }
    let Some(run) = run_on_cpus("0,1", &f, &[]).await else {
        return;
    };
    let pid = run.pid();
    common::eventually(
        "a second serving thread",
        Duration::from_secs(5),
        || async move {
            common::thread_names(pid)
                .iter()
                .any(|n| n == "ipgate-serve-1")
        },
    )
    .await;
    let names = common::thread_names(pid);
    assert_eq!(workers(pid), 0, "threads on two CPUs: {names:?}");
    assert_eq!(visit(&run, "198.51.100.66").await, 403);
}

#[test]
fn a_bad_worker_thread_count_is_refused_with_its_cause() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/policy.example.yaml");
    for bad in ["", "0", "many"] {
        let out = Command::new(BIN)
            .args(["validate", "-c", example])
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("TOKIO_WORKER_THREADS"), "{bad:?}: {err}");
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
    }
}

/// Signals and file changes that come as soon as the addresses are printed are not
/// lost: a change of the file is reloaded, SIGHUP reloads (it does not kill the
/// process, its default action), SIGTERM stops gracefully with exit 0.
#[tokio::test]
async fn a_change_or_a_signal_right_after_start_is_handled() {
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let policy = |block: &str| {
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nreload: {{ watch: true }}\nlists: {{ block: [{block}] }}\nadmin: {{ listen: 127.0.0.1:0 }}\n",
            up.url()
        )
    };
    std::fs::write(&f, policy("127.0.0.1")).unwrap();
    let mut run = spawn_run(&f).await;
    // At once: the file changes (127.0.0.1 no longer blocked).
    std::fs::write(&f, policy("192.0.2.1")).unwrap();
    let url = run.url("/");
    common::eventually(
        "the change made at start is reloaded",
        Duration::from_secs(5),
        || {
            let url = url.clone();
            async move { common::client().get(url).send().await.unwrap().status() == 200 }
        },
    )
    .await;
    drop(run);

    for _ in 0..3 {
        run = spawn_run(&f).await;
        kill("-HUP", run.pid());
        kill("-TERM", run.pid());
        let status = tokio::time::timeout(Duration::from_secs(10), run.child.wait())
            .await
            .expect("no stop within 10 s")
            .unwrap();
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}
