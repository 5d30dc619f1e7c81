//! The files under deploy/ hang together: every file a compose service mounts exists,
//! each policy it mounts passes `ipgate validate`, the load balancer sends traffic to
//! services that exist on the port the gateways listen on, and the container file
//! builds the binary the services run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn compose() -> serde_json::Value {
    let text = std::fs::read_to_string("deploy/cluster/compose.yaml").unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn the_cluster_compose_file_refers_to_what_exists() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    for name in ["redis", "app", "gw1", "gw2", "gw3", "lb"] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let dir = Path::new("deploy/cluster");
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            assert!(dir.join(host).exists(), "{name} mounts a missing {host}");
        }
        if let Some(build) = svc.get("build") {
            let file = dir
                .join(build["context"].as_str().unwrap())
                .join(build["dockerfile"].as_str().unwrap());
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.contains("cargo build --release --locked --bin ipgate"));
            assert!(text.contains("USER 10001"), "runs as root");
        }
    }
    // The gateways' policy is valid (with the variables the compose file sets).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipgate"))
        .args(["validate", "-c", "deploy/cluster/policy.yaml"])
        .env("IPGATE_ADMIN_TOKEN", "t")
        .env("REDIS_PASSWORD", "p")
        .env_remove("IPGATE_UPSTREAM")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = std::fs::read_to_string(dir.join("policy.yaml")).unwrap();
    assert!(policy.contains("listen: 0.0.0.0:8080") && policy.contains("redis: redis://"));
    assert!(policy.contains("upstream: http://app:80"));
    // The load balancer's upstreams are the gateways, on the port they listen on.
    let nginx = std::fs::read_to_string(dir.join("nginx.conf")).unwrap();
    for gw in ["gw1", "gw2", "gw3"] {
        assert!(
            nginx.contains(&format!("server {gw}:8080;")),
            "{gw} not balanced"
        );
    }
}
