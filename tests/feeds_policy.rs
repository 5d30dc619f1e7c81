//! Feeds under the policy, through the real Gate: decisions follow a refreshed feed, a
//! bad refresh keeps the old list, a restart without the source uses the stored copy,
//! and a `tag: tor` feed blocks TOR with no provider call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use common::emulator::*;
use ipgate::{Config, Gate};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn gate(yaml: &str) -> Gate {
    Gate::from_config(Config::from_yaml(yaml, "t").unwrap())
        .await
        .unwrap()
}

/// A feed server whose body the test changes.
async fn feed_server(body: Arc<Mutex<String>>) -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new().route(
        "/list.txt",
        get(move || {
            let body = body.clone();
            async move { body.lock().unwrap().clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/list.txt", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, task)
}

#[tokio::test]
async fn decisions_follow_the_feed_and_survive_bad_refreshes_and_restarts() {
    let body = Arc::new(Mutex::new(
        "# bad hosts\n198.51.100.1\n2001:db8:bad::/48\n".to_string(),
    ));
    let (url, server) = feed_server(body.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "cache: {{ path: '{}' }}\nlists:\n  feeds:\n    - {{ name: bad, source: '{url}', refresh: 1h }}\nrules:\n  - {{ name: block-bad, when: {{ in_list: bad }}, action: block }}\n",
        dir.path().join("cache.redb").display()
    );
    let g = gate(&yaml).await;
    assert_eq!(g.decide(ip("198.51.100.1")).await.rule(), "block-bad");
    assert_eq!(g.decide(ip("2001:db8:bad:1::9")).await.rule(), "block-bad");
    assert_eq!(g.decide(ip("198.51.100.2")).await.rule(), "default");
    assert_eq!(
        g.explain(ip("198.51.100.1"), false).await.lists,
        vec!["bad".to_string()]
    );

    // The feed changes: after a refresh the decision follows.
    *body.lock().unwrap() = "198.51.100.2\n".into();
    let feeds = g.feeds();
    feeds
        .refresh_now(feeds.index_of("bad").unwrap())
        .await
        .unwrap();
    assert_eq!(g.decide(ip("198.51.100.1")).await.rule(), "default");
    assert_eq!(g.decide(ip("198.51.100.2")).await.rule(), "block-bad");

    // Garbage: the refresh fails and the old list stays.
    *body.lock().unwrap() = "198.51.100.3\n<html>oops</html>\n".into();
    assert!(feeds.refresh_now(0).await.is_err());
    assert_eq!(g.decide(ip("198.51.100.2")).await.rule(), "block-bad");
    assert_eq!(g.decide(ip("198.51.100.3")).await.rule(), "default");
    let status = &feeds.status()[0];
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("line 2"),
        "{status:?}"
    );
    g.close().await;
    drop(feeds);
    drop(g);

    // Restart with the source gone: the stored copy is used.
    server.abort();
    let _ = server.await;
    let g = gate(&yaml).await;
    assert_eq!(
        g.decide(ip("198.51.100.2")).await.rule(),
        "block-bad",
        "the stored copy was not used"
    );
    assert!(
        g.readiness_problems().is_empty(),
        "{:?}",
        g.readiness_problems()
    );
}

#[tokio::test]
async fn a_feed_that_never_loaded_makes_the_gate_unready() {
    let g = gate("lists:\n  feeds:\n    - { name: gone, source: 'http://127.0.0.1:9/list.txt' }\nrules:\n  - { name: b, when: { in_list: gone }, action: block }\n").await;
    let problems = g.readiness_problems();
    assert!(problems.iter().any(|p| p.contains("gone")), "{problems:?}");
    assert_eq!(g.decide(ip("198.51.100.1")).await.rule(), "default");
}

#[tokio::test]
async fn a_tor_feed_blocks_tor_without_any_provider() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tor.txt");
    std::fs::write(&list, "# Tor bulk exit list\n198.51.100.9\n198.51.100.10\n").unwrap();
    let g = gate(&format!(
        "lists:\n  feeds:\n    - {{ name: tor-exits, source: '{}', tag: tor }}\nrules:\n  - {{ name: block-tor, when: {{ tor: true }}, action: block }}\n",
        list.display()
    ))
    .await;
    let d = g.decide(ip("198.51.100.9")).await;
    assert_eq!((d.rule(), d.is_blocked()), ("block-tor", true));
    assert!(d.reputation.is_none(), "no look-up was needed");
    // Not a Tor exit: the rule needs a provider, none is configured, on_error (allow) decides.
    assert_eq!(g.decide(ip("198.51.100.11")).await.rule(), "lookup-error");
}

#[tokio::test]
async fn a_tor_feed_saves_the_provider_call() {
    let emu = Emulator::start(EmuKeys {
        iocscout: "k",
        ipswamp: "k",
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tor.txt");
    std::fs::write(&list, "198.51.100.9\n").unwrap();
    let g = gate(&format!(
        "providers:\n  iocscout: {{ api_key: k, base_url: '{}', daily_quota: 10 }}\nlists:\n  feeds:\n    - {{ name: tor-exits, source: '{}', tag: tor }}\nrules:\n  - {{ name: block-tor, when: {{ tor: true }}, action: block }}\n  - {{ name: block-threats, when: {{ status: threat }}, action: block }}\n",
        emu.iocscout_url(),
        list.display()
    ))
    .await;
    assert_eq!(g.decide(ip("198.51.100.9")).await.rule(), "block-tor");
    assert_eq!(
        emu.calls(Api::Iocscout),
        0,
        "a provider was asked about a listed Tor exit"
    );
    // Another client is looked up as usual (and the provider can say tor too).
    emu.set_iocscout(ip("198.51.100.20"), Answer::Json(iocscout_tor()));
    assert_eq!(g.decide(ip("198.51.100.20")).await.rule(), "block-tor");
    assert_eq!(emu.calls(Api::Iocscout), 1);
}

#[tokio::test]
async fn local_facts_decide_when_the_provider_fails() {
    let emu = Emulator::start(EmuKeys {
        iocscout: "k",
        ipswamp: "k",
    })
    .await;
    emu.set_fault(Api::Iocscout, Scope::All, Fault::Status(500, None));
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("vpn.txt");
    std::fs::write(&list, "198.51.100.30\n").unwrap();
    // The first rule needs reputation; the provider fails; on_error says allow. The
    // VPN rule holds on the tagged feed alone, so it decides.
    let g = gate(&format!(
        "providers:\n  iocscout: {{ api_key: k, base_url: '{}', daily_quota: 10 }}\nlookup: {{ on_error: allow }}\nlists:\n  feeds:\n    - {{ name: vpns, source: '{}', tag: vpn }}\nrules:\n  - {{ name: allow-scanners, when: {{ status: safe }}, action: allow }}\n  - {{ name: block-threats, when: {{ status: threat }}, action: block }}\n  - {{ name: block-vpn, when: {{ vpn: true }}, action: block }}\n",
        emu.iocscout_url(),
        list.display()
    ))
    .await;
    let d = g.decide(ip("198.51.100.30")).await;
    assert_eq!((d.rule(), d.is_blocked()), ("block-vpn", true));
    assert_eq!(emu.calls(Api::Iocscout), 1);
    // Not in the feed: nothing local applies, on_error decides.
    let d = g.decide(ip("198.51.100.31")).await;
    assert_eq!((d.rule(), d.is_blocked()), ("lookup-error", false));
}

#[tokio::test]
async fn a_reload_keeps_the_lists_of_feeds_whose_source_is_down() {
    let body = Arc::new(Mutex::new("198.51.100.50\n".to_string()));
    let (url, server) = feed_server(body).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.txt");
    std::fs::write(&file, "198.51.100.51\n").unwrap();
    let yaml = format!(
        "lists:\n  feeds:\n    - {{ name: remote, source: '{url}', refresh: 1h }}\n    - {{ name: local, source: '{}', refresh: 1h }}\nrules:\n  - {{ name: block-listed, when: {{ in_list: [remote, local] }}, action: block }}\n",
        file.display()
    );
    let g = gate(&yaml).await;
    assert_eq!(g.decide(ip("198.51.100.50")).await.rule(), "block-listed");
    assert_eq!(g.decide(ip("198.51.100.51")).await.rule(), "block-listed");

    // Both sources break: the server is gone, the file is removed. No cache.path, so
    // there is no stored copy to fall back on.
    server.abort();
    let _ = server.await;
    std::fs::remove_file(&file).unwrap();
    g.reload(Config::from_yaml(&yaml, "t").unwrap())
        .await
        .unwrap();
    assert_eq!(g.decide(ip("198.51.100.50")).await.rule(), "block-listed");
    assert_eq!(g.decide(ip("198.51.100.51")).await.rule(), "block-listed");
    assert!(
        g.readiness_problems().is_empty(),
        "{:?}",
        g.readiness_problems()
    );
    let status = g.feeds().status();
    assert!(
        status.iter().all(|f| f.loaded && f.entries == 1),
        "{status:?}"
    );
}
