#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn issues(yaml: &str) -> Vec<ConfigIssue> {
    match Config::from_yaml(yaml, "policy.yaml") {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => {
            eprintln!("{e}");
            e.issues().to_vec()
        }
    }
}

#[test]
fn empty_file_gives_defaults() {
    let c = Config::from_yaml("{}", "t").unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.block_response.status, 403);
    assert_eq!(c.cache.ipv6_prefix, 64);
    assert_eq!(c.lookup.timeout.0, Duration::from_millis(1500));
    assert_eq!(c.default, Action::Allow);
    assert!(c.upstream.is_none());
}

#[test]
fn unknown_key_is_named_with_position() {
    let i = issues("listen: 127.0.0.1:8080\nlimits:\n  max_conections: 5\n");
    assert_eq!(i.len(), 1);
    assert_eq!((i[0].line, i[0].column), (3, 3));
    assert!(i[0].key.ends_with("max_conections"), "{:?}", i[0]);
    assert!(i[0].message.contains("max_conections"), "{:?}", i[0]);
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let yaml = "lists:\n  allow: [10.0.0.0/8, 10.0.0.0/33]\n  block:\n    - 010.1.2.3\ncache:\n  ttl: 5 minutes\nupstream: ${IPGATE_TEST_SURELY_UNSET}\n";
    let i = issues(yaml);
    assert_eq!(i.len(), 4, "{i:?}");
    assert_eq!((i[0].line, i[0].key.as_str()), (2, "lists.allow"));
    assert!(i[0].message.contains("10.0.0.0/33"));
    assert_eq!((i[1].line, i[1].key.as_str()), (4, "lists.block"));
    assert!(i[1].message.contains("010.1.2.3"));
    assert_eq!((i[2].line, i[2].key.as_str()), (6, "cache.ttl"));
    assert!(i[2].message.contains("5 minutes"));
    assert_eq!((i[3].line, i[3].key.as_str()), (7, "upstream"));
    assert!(i[3].message.contains("IPGATE_TEST_SURELY_UNSET"));
    assert!(i.iter().all(|x| x.column > 0));
}

#[test]
fn env_defaults_and_empty_values() {
    let c = Config::from_yaml(
        "upstream: ${IPGATE_TEST_UNSET_UP:-http://127.0.0.1:3000}\nproviders:\n  iocscout:\n    api_key: ${IPGATE_TEST_UNSET_KEY:-}\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.upstream.unwrap().0, "http://127.0.0.1:3000");
    assert_eq!(c.providers.iocscout.unwrap().api_key.0, "");
}

#[test]
fn dangling_references_are_errors() {
    let yaml = "rules:\n  - { name: a, when: { in_list: nope }, action: block }\n  - { name: a, when: { provider: virustotal }, action: block }\n";
    let i = issues(yaml);
    assert_eq!(i.len(), 3, "{i:?}");
    assert!(
        i.iter()
            .any(|x| x.message.contains("no feed named `nope`") && x.line == 2)
    );
    assert!(
        i.iter()
            .any(|x| x.message.contains("defined twice") && x.line == 3)
    );
    assert!(
        i.iter()
            .any(|x| x.message.contains("virustotal") && x.key == "rules[1].when.provider")
    );
}

#[test]
fn bad_enum_and_type_are_errors() {
    let i = issues("mode: enforcing\n");
    assert_eq!(i[0].line, 1);
    assert!(i[0].message.contains("enforcing"), "{:?}", i[0]);
    let i = issues("rules:\n  - { name: a, when: { status: evil }, action: block }\n");
    assert!(i[0].message.contains("evil"), "{:?}", i[0]);
    let i = issues("rules:\n  - { name: a, when: { score_above: 101 }, action: block }\n");
    assert!(i[0].message.contains("above 100"), "{:?}", i[0]);
    let i = issues("cache:\n  ipv6_prefix: 129\n");
    assert_eq!((i[0].line, i[0].key.as_str()), (2, "cache.ipv6_prefix"));
    let i = issues("listen: localhost\n");
    assert!(i[0].message.contains("localhost"), "{:?}", i[0]);
}

#[test]
fn listen_one_or_many_and_conditions_one_or_many() {
    let c = Config::from_yaml(
        "listen: ['[::]:8080', 127.0.0.1:8081]\nrules:\n  - { name: a, when: { status: threat, asn: 64496, in_list: f }, action: block }\n  - { name: b, when: { status: [safe, unknown], country: [US] }, action: allow }\nlists:\n  feeds: [{ name: f, source: /dev/null }]\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.rules[0].value.when.status, vec![Status::Threat]);
    assert_eq!(c.rules[0].value.when.asn, vec![64496]);
    assert_eq!(c.rules[0].value.when.in_list, vec!["f".to_string()]);
    assert_eq!(
        c.rules[1].value.when.status,
        vec![Status::Safe, Status::Unknown]
    );
}

#[test]
fn the_spec_example_parses() {
    // Every key of docs/configuration.md, with the env vars given defaults.
    let yaml = include_str!("../../policy.example.yaml");
    let c = Config::from_yaml(yaml, "policy.example.yaml").unwrap();
    assert!(!c.rules.is_empty());
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = Config::from_yaml(
        "providers:\n  iocscout: { api_key: KEY-in-debug-123 }\n  ipswamp: { api_key: KEY-in-debug-456 }\nadmin: { token: TOKEN-in-debug-789 }\n",
        "t",
    )
    .unwrap();
    let dbg = format!("{c:?}");
    for secret in ["KEY-in-debug-123", "KEY-in-debug-456", "TOKEN-in-debug-789"] {
        assert!(!dbg.contains(secret), "{secret} in {dbg}");
    }
    assert_eq!(c.providers.iocscout.unwrap().api_key.0, "KEY-in-debug-123");
}

#[test]
fn values_that_would_misbehave_are_refused() {
    for (yaml, key) in [
        ("block_response: { status: 101 }\n", "block_response.status"),
        ("limits: { idle_timeout: 0s }\n", "limits.idle_timeout"),
        (
            "limits: { header_read_timeout: 0ms }\n",
            "limits.header_read_timeout",
        ),
        ("cache: { error_ttl: 0s }\n", "cache.error_ttl"),
    ] {
        let i = issues(yaml);
        assert!(i.iter().any(|x| x.key == key), "{yaml}: {i:?}");
    }
}

#[test]
fn a_duplicate_feed_is_reported_where_it_stands() {
    let i = issues(
        "lists:\n  feeds:\n    - { name: tor, source: /a }\n    - { name: vpn, source: /b }\n    - { name: tor, source: /c }\n",
    );
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!((i[0].line, i[0].key.as_str()), (5, "lists.feeds[2].name"));
}
