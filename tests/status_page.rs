//! The status page (`GET /` on the admin listener) in a real browser: headless Chromium
//! (Debian's `chromium`, installed by .ci/run) loads it from a running `ipgate run`
//! after a few blocked and allowed requests, and the page shows them once its script
//! has polled `/v1/status`. A screenshot is left in the target directory
//! (`status-page.png`) for people to look at.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{client, spawn_run, upstream};

/// Debian's chromium, or another on PATH.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {name}"))
                .output()
                .ok()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
        })
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout. The
/// virtual time budget lets the page's script run its first poll before the dump or
/// the screenshot.
fn headless(browser: &Path, profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_shows_recent_decisions_in_a_browser() {
    let Some(browser) = chromium() else {
        eprintln!(
            "!!! SKIPPED status_page_shows_recent_decisions_in_a_browser: chromium is not installed (.ci/run installs it: apt-get install -y chromium)"
        );
        return;
    };
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "listen: 127.0.0.1:0\nupstream: {}\nclient_ip: {{ trusted_proxies: [127.0.0.1/32], header: x-forwarded-for }}\nlists: {{ allow: [192.0.2.0/24], block: [203.0.113.0/24] }}\nadmin: {{ listen: 127.0.0.1:0 }}\n",
            up.url()
        ),
    )
    .unwrap();
    let run = spawn_run(&policy).await;
    let c = client();
    // A ban from the admin API, then requests from four clients.
    let r = c
        .post(run.admin_url("/v1/bans"))
        .body(r#"{"cidr":"198.51.100.66/32","ttl":"1h","reason":"ticket 4711: scraping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for (client_ip, want) in [
        ("198.51.100.20", 200), // default: allowed
        ("192.0.2.10", 200),    // lists.allow
        ("203.0.113.7", 403),   // lists.block
        ("198.51.100.66", 403), // the ban
    ] {
        let r = c
            .get(run.url("/shop"))
            .header("x-forwarded-for", client_ip)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{client_ip}");
    }

    let profile = tempfile::tempdir().unwrap();
    let page = run.admin_url("/");
    let dom = headless(&browser, profile.path(), &page, &["--dump-dom"]);
    // Filled in by the page's script from /v1/status, not present in the HTML served.
    for shown in [
        "203.0.113.7",
        "block-list",
        "198.51.100.66",
        "ticket 4711: scraping",
        "198.51.100.20",
        "192.0.2.10",
        "allow-list",
        "198.51.100.66/32",
        "enforcing",
        "no shared tier",
    ] {
        assert!(
            dom.contains(shown),
            "the page does not show {shown:?}:\n{dom}"
        );
    }
    assert!(
        dom.contains(r#"<span id="err"></span>"#),
        "the poll failed:\n{dom}"
    );
    // The counts of the last minutes: 2 allowed, 2 blocked.
    assert!(dom.contains(r#"<b id="n-allow">2</b>"#), "{dom}");
    assert!(dom.contains(r#"<b id="n-block">2</b>"#), "{dom}");

    // A phone-sized screenshot, beside the test binaries' target directory.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        profile.path(),
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=412,1400",
        ],
    );
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());
}
