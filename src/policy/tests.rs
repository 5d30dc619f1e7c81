#![allow(clippy::unwrap_used)]
use super::*;
use crate::reputation::{ErrorSource, Reputation};

struct Facts {
    lists: Vec<Vec<IpAddr>>,
    tor: Vec<IpAddr>,
}

impl LocalFacts for Facts {
    fn in_list(&self, index: usize, ip: IpAddr) -> bool {
        self.lists.get(index).is_some_and(|l| l.contains(&ip))
    }
    fn tagged(&self, tag: FeedTag, ip: IpAddr) -> bool {
        tag == FeedTag::Tor && self.tor.contains(&ip)
    }
}

const RULES: &str = r#"
lists:
  feeds:
    - { name: tor-exits, source: /dev/null, tag: tor }
    - { name: partners, source: /dev/null }
rules:
  - { name: partners, when: { in_list: partners }, action: allow }
  - { name: allow-scanners, when: { status: safe }, action: allow }
  - { name: block-threats, when: { status: threat }, action: block }
  - { name: block-score, when: { score_above: 70 }, action: block }
  - { name: block-tor, when: { tor: true }, action: block }
  - { name: block-vpn, when: { vpn: true }, action: block }
  - { name: block-c2-ru, when: { class: [c2], country: [RU, Russia] }, action: block }
  - { name: ipswamp-only, when: { provider: ipswamp, score_above: 50 }, action: block }
  - { name: not-us, when: { asn: [64496], not: { country: US } }, action: block }
default: allow
"#;

fn policy() -> Policy {
    let cfg = crate::Config::from_yaml(RULES, "test").unwrap();
    Policy::compile(&cfg, &|n| match n {
        "tor-exits" => Some(0),
        "partners" => Some(1),
        _ => None,
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn facts() -> Facts {
    Facts {
        lists: vec![vec![ip("198.51.100.9")], vec![ip("192.0.2.1")]],
        tor: vec![ip("198.51.100.9")],
    }
}

fn rep(f: impl FnOnce(&mut Reputation)) -> Lookup {
    let mut r = Reputation::unknown(ProviderId::Iocscout);
    f(&mut r);
    Lookup {
        answers: vec![r],
        ..Lookup::default()
    }
}

fn decide(p: &Policy, addr: &str, l: &Lookup) -> (String, Action) {
    let facts = facts();
    let out = match p.evaluate(ip(addr), &facts, None, 0, None) {
        Evaluation::Decided(o) => o,
        Evaluation::NeedsReputation { from } => {
            match p.evaluate(ip(addr), &facts, Some(l), from, None) {
                Evaluation::Decided(o) => o,
                e => panic!("still needs reputation: {e:?}"),
            }
        }
    };
    match out {
        Outcome::Rule { index, action } => (p.rules()[index].name.to_string(), action),
        Outcome::Default(action) => ("default".into(), action),
        Outcome::LookupFailed { action, .. } => ("lookup-error".into(), action),
    }
}

#[test]
fn local_list_decides_without_lookup() {
    let p = policy();
    let out = p.evaluate(ip("192.0.2.1"), &facts(), None, 0, None);
    assert_eq!(
        out,
        Evaluation::Decided(Outcome::Rule {
            index: 0,
            action: Action::Allow
        })
    );
}

#[test]
fn first_reputation_rule_asks_for_a_lookup() {
    let p = policy();
    assert_eq!(
        p.evaluate(ip("203.0.113.5"), &facts(), None, 0, None),
        Evaluation::NeedsReputation { from: 1 }
    );
}

#[test]
fn spec_example_rules() {
    let p = policy();
    let a = "203.0.113.5";
    assert_eq!(
        decide(&p, a, &rep(|r| r.status = Status::Threat)),
        ("block-threats".into(), Action::Block)
    );
    assert_eq!(
        decide(
            &p,
            a,
            &rep(|r| {
                r.status = Status::Safe;
                r.score = Some(99);
                r.scanner = true;
            })
        ),
        ("allow-scanners".into(), Action::Allow)
    );
    assert_eq!(
        decide(&p, a, &rep(|r| r.score = Some(71))),
        ("block-score".into(), Action::Block)
    );
    assert_eq!(
        decide(&p, a, &rep(|r| r.score = Some(70))),
        ("default".into(), Action::Allow)
    );
    assert_eq!(
        decide(&p, a, &rep(|r| r.tor = Some(true))),
        ("block-tor".into(), Action::Block)
    );
    assert_eq!(
        decide(&p, a, &rep(|r| r.vpn = Some(true))),
        ("block-vpn".into(), Action::Block)
    );
    assert_eq!(
        decide(&p, a, &rep(|_| {})),
        ("default".into(), Action::Allow)
    );
}

#[test]
fn tor_feed_proves_tor_without_lookup() {
    let p = policy();
    // 198.51.100.9 is in the tor-tagged feed; the rules before block-tor need reputation,
    // so a lookup is asked for; with an empty (skipped) lookup the tor rule still matches.
    let skipped = Lookup::default();
    assert_eq!(
        decide(&p, "198.51.100.9", &skipped),
        ("block-tor".into(), Action::Block)
    );
}

#[test]
fn all_conditions_of_a_rule_must_hold() {
    let p = policy();
    let a = "203.0.113.5";
    let only_c2 = rep(|r| r.classes = vec![ThreatClass::C2]);
    assert_eq!(decide(&p, a, &only_c2).0, "default");
    let c2_ru = rep(|r| {
        r.classes = vec![ThreatClass::C2];
        r.country = Some("russia".into());
    });
    assert_eq!(decide(&p, a, &c2_ru).0, "block-c2-ru");
}

#[test]
fn provider_restricts_to_that_answer() {
    let p = policy();
    let a = "203.0.113.5";
    let ioc_60 = rep(|r| r.score = Some(60));
    assert_eq!(decide(&p, a, &ioc_60).0, "default");
    let mut sw = Reputation::unknown(ProviderId::Ipswamp);
    sw.score = Some(60);
    let l = Lookup {
        answers: vec![sw],
        ..Lookup::default()
    };
    assert_eq!(decide(&p, a, &l).0, "ipswamp-only");
}

#[test]
fn not_negates() {
    let p = policy();
    let a = "203.0.113.5";
    let us = rep(|r| {
        r.asn = Some(64496);
        r.country = Some("US".into());
    });
    assert_eq!(decide(&p, a, &us).0, "default");
    let de = rep(|r| {
        r.asn = Some(64496);
        r.country = Some("DE".into());
    });
    assert_eq!(decide(&p, a, &de).0, "not-us");
}

#[test]
fn failed_lookup_goes_to_on_error() {
    let p = policy();
    let failed = Lookup {
        errors: vec![(
            ErrorSource::Provider(ProviderId::Iocscout),
            "timeout".into(),
        )],
        ..Lookup::default()
    };
    assert_eq!(
        decide(&p, "203.0.113.5", &failed),
        ("lookup-error".into(), Action::Allow)
    );
    let cfg = crate::Config::from_yaml(&format!("{RULES}\nlookup: {{ on_error: block }}\n"), "t")
        .unwrap();
    let p = Policy::compile(&cfg, &|n| (n == "partners").then_some(1));
    assert_eq!(
        decide(&p, "203.0.113.5", &failed),
        ("lookup-error".into(), Action::Block)
    );
}

#[test]
fn trace_records_each_step() {
    let p = policy();
    let l = rep(|r| r.status = Status::Threat);
    let mut trace = Vec::new();
    let facts = facts();
    let Evaluation::NeedsReputation { from } =
        p.evaluate(ip("203.0.113.5"), &facts, None, 0, Some(&mut trace))
    else {
        panic!("the first reputation rule must ask for a look-up");
    };
    p.evaluate(ip("203.0.113.5"), &facts, Some(&l), from, Some(&mut trace));
    let results: Vec<_> = trace.iter().map(|s| (s.rule.as_str(), s.result)).collect();
    assert_eq!(
        results,
        vec![
            ("partners", "not matched"),
            ("allow-scanners", "needs reputation"),
            ("allow-scanners", "not matched"),
            ("block-threats", "matched")
        ]
    );
}

#[test]
fn a_rule_naming_a_failed_provider_goes_to_on_error() {
    let p = policy();
    // IPSwamp failed, IOCScout answered: the IPSwamp-only rule cannot be decided.
    let l = Lookup {
        answers: vec![Reputation::unknown(ProviderId::Iocscout)],
        errors: vec![(ErrorSource::Provider(ProviderId::Ipswamp), "timeout".into())],
        ..Lookup::default()
    };
    assert_eq!(
        decide(&p, "203.0.113.5", &l),
        ("lookup-error".into(), Action::Allow)
    );
}

#[test]
fn not_inherits_the_provider() {
    let cfg = crate::Config::from_yaml(
        "rules:\n  - { name: ioc-not-safe, when: { provider: iocscout, not: { status: safe } }, action: block }\n",
        "t",
    )
    .unwrap();
    let p = Policy::compile(&cfg, &|_| None);
    // IPSwamp says safe, IOCScout says threat: IOCScout's answer is not safe, so block.
    let mut ioc = Reputation::unknown(ProviderId::Iocscout);
    ioc.status = Status::Threat;
    let mut sw = Reputation::unknown(ProviderId::Ipswamp);
    sw.status = Status::Safe;
    let l = Lookup {
        answers: vec![ioc, sw],
        ..Lookup::default()
    };
    assert_eq!(
        decide(&p, "203.0.113.5", &l),
        ("ioc-not-safe".into(), Action::Block)
    );
}

#[test]
fn with_reputation_unavailable_local_facts_still_decide() {
    let p = policy();
    let failed = Lookup {
        errors: vec![(
            ErrorSource::Provider(ProviderId::Iocscout),
            "HTTP 500".into(),
        )],
        ..Lookup::default()
    };
    // A listed Tor exit: allow-scanners .. block-score are skipped (they need
    // reputation), block-tor holds on the tagged feed alone.
    let tor = facts().tor[0].to_string();
    assert_eq!(
        decide(&p, &tor, &failed),
        ("block-tor".into(), Action::Block)
    );
    let mut trace = Vec::new();
    let facts = facts();
    p.evaluate(ip(&tor), &facts, Some(&failed), 1, Some(&mut trace));
    assert_eq!(
        (trace[0].rule.as_str(), trace[0].result),
        ("allow-scanners", "skipped: reputation unavailable")
    );
    // Nothing local applies: on_error decides.
    assert_eq!(
        decide(&p, "203.0.113.5", &failed),
        ("lookup-error".into(), Action::Allow)
    );
}
