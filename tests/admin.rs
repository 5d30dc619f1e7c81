//! The admin API (docs/admin-api.md) over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::emulator::*;
use common::{client, upstream};
use serde_json::{Value, json};

async fn admin(yaml: &str, reload: Option<ipgate::admin::Reload>) -> (SocketAddr, ipgate::Gate) {
    let gate = ipgate::Gate::from_config(ipgate::Config::from_yaml(yaml, "t").unwrap())
        .await
        .unwrap();
    let app = ipgate::admin::router(
        gate.clone(),
        Some(std::sync::Arc::new(|| "ipgate_test_metric 1\n".to_string())),
        reload,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, gate)
}

#[tokio::test]
async fn token_guards_everything_but_healthz() {
    let (a, _) = admin("admin: { token: s3cret-token }\n", None).await;
    let c = client();
    assert_eq!(
        c.get(format!("http://{a}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in [
        "",
        "v1/status",
        "readyz",
        "metrics",
        "v1/bans",
        "v1/decision?ip=192.0.2.1",
    ] {
        let r = c.get(format!("http://{a}/{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        let r = c
            .get(format!("http://{a}/{path}"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = c
            .get(format!("http://{a}/{path}"))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    let m = c
        .get(format!("http://{a}/metrics"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("ipgate_test_metric 1"));
    // A browser asks for credentials on the status page: the token as password.
    let r = c.get(format!("http://{a}/")).send().await.unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    for path in ["", "v1/status"] {
        let r = c
            .get(format!("http://{a}/{path}"))
            .basic_auth("anyone", Some("s3cret-token"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token as password");
        let r = c
            .get(format!("http://{a}/{path}"))
            .basic_auth("anyone", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong password");
    }
}

#[tokio::test]
async fn status_reports_decisions_bans_and_cache() {
    let (a, gate) = admin(
        "lists: { block: [203.0.113.0/24] }
rules:
  - { name: block-tor, when: { tor: true }, action: block }
",
        None,
    )
    .await;
    // Decisions come from the layer: guard a tiny app with it.
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(gate.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let c = client();
    assert_eq!(
        c.get(format!("http://{app_addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gate.ban(
        "127.0.0.0/8".parse().unwrap(),
        std::time::Duration::from_secs(60),
        "note".into(),
    )
    .await;
    assert_eq!(
        c.get(format!("http://{app_addr}/"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let v: Value = c
        .get(format!("http://{a}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["mode"], "enforce");
    assert_eq!(
        v["window"]["by_decision"],
        json!({"allow": 1, "block": 1, "dry_run_block": 0})
    );
    assert_eq!(v["recent"][0]["rule"], "ban");
    assert_eq!(v["recent"][0]["client"], "127.0.0.1");
    assert_eq!(v["recent"][0]["reason"], "note");
    assert_eq!(v["recent"][1]["rule"], "lookup-error");
    assert_eq!(v["recent_blocked"].as_array().unwrap().len(), 1);
    assert_eq!(v["bans"][0]["cidr"], "127.0.0.0/8");
    assert_eq!(v["redis"], Value::Null);
    assert_eq!(v["cache"], Value::Null, "no provider, no cache");
    assert_eq!(v["providers"], json!([]));
    let page = c.get(format!("http://{a}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("v1/status") && !html.contains("http://") && !html.contains("https://"));
}

#[tokio::test]
async fn decision_explains() {
    let (a, _) = admin("lists: { block: [203.0.113.0/24] }\n", None).await;
    let v: Value = client()
        .get(format!("http://{a}/v1/decision?ip=203.0.113.9"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["decision"], "block");
    assert_eq!(v["rule"], "block-list");
    assert_eq!(v["lists"], json!(["block"]));
    assert_eq!(v["cached"], false);
    let r = client()
        .get(format!("http://{a}/v1/decision?ip=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("nope"));
}

#[tokio::test]
async fn bans_are_added_listed_enforced_and_removed() {
    let up = upstream::start().await;
    let (a, gate) = admin(
        &format!("upstream: {}\nlisten: 127.0.0.1:0\n", up.url()),
        None,
    )
    .await;
    let gw = common::TestGateway::start_gate(gate).await;
    let c = client();
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    let r = c
        .post(format!("http://{a}/v1/bans"))
        .json(&json!({"cidr": "127.0.0.0/8", "ttl": "1h", "reason": "abuse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let bans: Value = c
        .get(format!("http://{a}/v1/bans"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bans[0]["cidr"], "127.0.0.0/8");
    assert_eq!(bans[0]["reason"], "abuse");
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 403);
    // Bad input: a clear 400 naming the cause; nothing stored changes.
    for (body, needle) in [
        (json!({"cidr": "10.0.0.0/33"}), "10.0.0.0/33"),
        (json!({"cidr": "10.0.0.0/8", "ttl": "forever"}), "forever"),
        (json!({"cidr": "10.0.0.0/8", "tll": "1h"}), "tll"),
    ] {
        let r = c
            .post(format!("http://{a}/v1/bans"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains(needle));
    }
    let r = c
        .post(format!("http://{a}/v1/bans"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let bans: Value = c
        .get(format!("http://{a}/v1/bans"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bans.as_array().unwrap().len(), 1);
    assert_eq!(
        c.delete(format!("http://{a}/v1/bans/127.0.0.0/8"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.delete(format!("http://{a}/v1/bans/127.0.0.0/8"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn wide_bans_need_force() {
    let (a, gate) = admin("{}", None).await;
    let c = client();
    let post = |body: Value| {
        let c = c.clone();
        async move {
            let r = c
                .post(format!("http://{a}/v1/bans"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for (cidr, limit) in [
        ("0.0.0.0/0", "/8"),
        ("10.0.0.0/7", "/8"),
        ("::ffff:0.0.0.0/96", "/8"),
        ("2001:db8::/31", "/32"),
        ("::/0", "/32"),
    ] {
        let (status, body) = post(json!({"cidr": cidr, "reason": "oops"})).await;
        assert_eq!(status, 400, "{cidr}: {body}");
        let msg = serde_json::from_str::<Value>(&body).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            msg.contains(limit) && msg.contains("\"force\": true"),
            "{cidr}: {msg}"
        );
        let (status, _) = post(json!({"cidr": cidr, "force": false})).await;
        assert_eq!(status, 400, "{cidr} with force: false");
    }
    assert!(gate.bans().list().is_empty(), "a refused ban was stored");
    for cidr in ["10.0.0.0/8", "2001:db8::/32", "203.0.113.7"] {
        let (status, body) = post(json!({"cidr": cidr})).await;
        assert_eq!(status, 201, "{cidr}: {body}");
    }
    let (status, body) = post(json!({"cidr": "0.0.0.0/0", "force": true})).await;
    assert_eq!(status, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cidr"], "0.0.0.0/0");
    let (status, _) = post(json!({"cidr": "2001:db8::/31", "force": true})).await;
    assert_eq!(status, 201);
    assert_eq!(gate.bans().list().len(), 5);
}

#[tokio::test]
async fn cache_entries_can_be_evicted() {
    let emu = Emulator::start(EmuKeys {
        iocscout: "k",
        ipswamp: "k",
    })
    .await;
    let yaml = format!(
        "providers: {{ iocscout: {{ api_key: k, base_url: '{}', daily_quota: 10 }} }}\nrules: [{{ name: t, when: {{ status: threat }}, action: block }}]\n",
        emu.iocscout_url()
    );
    let (a, gate) = admin(&yaml, None).await;
    gate.decide("198.51.100.1".parse().unwrap()).await;
    let v: Value = client()
        .get(format!("http://{a}/v1/decision?ip=198.51.100.1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["cached"], true);
    let r: Value = client()
        .delete(format!("http://{a}/v1/cache/198.51.100.1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["removed"], true);
    gate.decide("198.51.100.1".parse().unwrap()).await;
    assert_eq!(emu.calls(Api::Iocscout), 2);
    assert_eq!(
        client()
            .delete(format!("http://{a}/v1/cache/junk"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

#[tokio::test]
async fn reload_reports_errors_and_readyz_reports_disabled_providers() {
    let reload: ipgate::admin::Reload = std::sync::Arc::new(|| {
        Box::pin(async {
            Err(
                "policy.yaml:3:5: key `lists.block`: `junk` is not a valid IP address or CIDR"
                    .to_string(),
            )
        })
    });
    let emu = Emulator::start(EmuKeys {
        iocscout: "right",
        ipswamp: "right",
    })
    .await;
    let yaml = format!(
        "providers: {{ iocscout: {{ api_key: wrong, base_url: '{}', daily_quota: 10 }} }}\nrules: [{{ name: t, when: {{ status: threat }}, action: block }}]\n",
        emu.iocscout_url()
    );
    let (a, gate) = admin(&yaml, Some(reload)).await;
    let r = client()
        .post(format!("http://{a}/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("lists.block"));
    assert_eq!(
        client()
            .get(format!("http://{a}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gate.decide("198.51.100.1".parse().unwrap()).await;
    let r = client()
        .get(format!("http://{a}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("iocscout"));
}
