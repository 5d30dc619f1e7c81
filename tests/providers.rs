//! The provider clients against the emulator over loopback: answers, every status and
//! fault, availability, no network call while disabled or cooling down, request
//! parameters and headers, and no API key in any message, `Debug` output or log line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use ipgate::clock::Clock;

use common::emulator::*;
use ipgate::config::{
    Dur, FileProviderConfig, IocscoutConfig, IpswampAuth, IpswampConfig, Providers, SecretText,
    Text, Url,
};
use ipgate::providers::{
    Availability, Iocscout, Ipswamp, Provider, ProviderBuildError, ProviderError, build,
    http_client, next_utc_midnight,
};
use ipgate::reputation::{Status, ThreatClass};

const KEY: &str = "KEY-sekrit-1234567890";
const KEYS: EmuKeys = EmuKeys {
    iocscout: KEY,
    ipswamp: KEY,
};

// ---- log capture ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every `tracing` event (and `log` record, e.g. reqwest's) of this test binary, at
/// TRACE level, captured in one buffer.
fn logs() -> &'static Buf {
    static LOGS: OnceLock<Buf> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::util::SubscriberInitExt;
        let buf = Buf::default();
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .try_init();
        buf
    })
}

/// The key in every form it could take in a message.
fn assert_no_key(what: &str, text: &str) {
    for form in [KEY, "KEY-sekrit", "sekrit-1234567890", "1234567890"] {
        assert!(
            !text.contains(form),
            "{what} contains the key ({form}): {text}"
        );
    }
}

// ---- helpers -------------------------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ioc_cfg(emu: &Emulator, real_time: bool, timeout: Duration) -> IocscoutConfig {
    IocscoutConfig {
        api_key: SecretText(KEY.into()),
        base_url: Url(emu.iocscout_url()),
        real_time,
        daily_quota: 5,
        timeout: Dur(timeout),
    }
}

fn swamp_cfg(
    emu: &Emulator,
    auth: IpswampAuth,
    detailed: bool,
    timeout: Duration,
) -> IpswampConfig {
    IpswampConfig {
        api_key: SecretText(KEY.into()),
        base_url: Url(emu.ipswamp_url()),
        auth,
        detailed,
        daily_quota: 1000,
        timeout: Dur(timeout),
    }
}

const T: Duration = Duration::from_secs(2);

fn ioc(emu: &Emulator) -> Iocscout {
    Iocscout::new(&ioc_cfg(emu, false, T), http_client().unwrap()).unwrap()
}

fn swamp(emu: &Emulator) -> Ipswamp {
    Ipswamp::new(
        &swamp_cfg(emu, IpswampAuth::Bearer, true, T),
        http_client().unwrap(),
    )
    .unwrap()
}

fn both(emu: &Emulator) -> Vec<(Api, Arc<dyn Provider>)> {
    vec![
        (Api::Iocscout, Arc::new(ioc(emu)) as Arc<dyn Provider>),
        (Api::Ipswamp, Arc::new(swamp(emu))),
    ]
}

// ---- answers and requests ------------------------------------------------------------------

#[tokio::test]
async fn iocscout_answers_are_normalized() {
    logs();
    let emu = Emulator::start(KEYS).await;
    let p = ioc(&emu);
    let cases = [
        ("198.51.100.1", iocscout_threat(90, &["attack", "c2"])),
        ("198.51.100.2", iocscout_safe_scanner("Googlebot")),
        ("198.51.100.3", iocscout_tor()),
        ("198.51.100.4", iocscout_vpn()),
        ("198.51.100.5", iocscout_doc_example()),
        ("198.51.100.6", iocscout_suspicious(40)),
        ("198.51.100.7", iocscout_known_service("GitHub")),
    ];
    for (a, body) in &cases {
        emu.set_iocscout(ip(a), Answer::Json(body.clone()));
    }
    let r = p.lookup(ip("198.51.100.1")).await.unwrap();
    assert_eq!((r.status, r.score), (Status::Threat, Some(90)));
    assert_eq!(r.classes, vec![ThreatClass::Attack, ThreatClass::C2]);
    assert_eq!(
        (r.country.as_deref(), r.asn, r.last_seen),
        (Some("Germany"), Some(64496), Some(1_738_415_270))
    );
    assert_eq!(r.raw, cases[0].1, "raw is the answer as received");
    let r = p.lookup(ip("198.51.100.2")).await.unwrap();
    assert_eq!((r.status, r.scanner), (Status::Safe, true));
    let r = p.lookup(ip("198.51.100.3")).await.unwrap();
    assert_eq!(
        (r.status, r.tor, r.vpn),
        (Status::Unknown, Some(true), Some(false))
    );
    let r = p.lookup(ip("198.51.100.4")).await.unwrap();
    assert_eq!((r.tor, r.vpn), (Some(false), Some(true)));
    let r = p.lookup(ip("198.51.100.5")).await.unwrap();
    assert_eq!(
        (r.status, r.score, r.asn),
        (Status::Threat, Some(75), Some(64496))
    );
    let r = p.lookup(ip("198.51.100.6")).await.unwrap();
    assert_eq!(
        (r.status, r.score, r.scanner),
        (Status::Suspicious, Some(40), false)
    );
    let r = p.lookup(ip("198.51.100.7")).await.unwrap();
    assert_eq!((r.status, r.scanner), (Status::Unknown, true));
    let r = p.lookup(ip("203.0.113.9")).await.unwrap();
    assert_eq!(r.status, Status::Unknown, "unscripted IPs are unknown");
    assert_eq!(emu.calls(Api::Iocscout), 8);
    assert_eq!(emu.calls_for(Api::Iocscout, ip("198.51.100.1")), 1);
    assert_eq!(p.availability(), Availability::Ready);
}

#[tokio::test]
async fn iocscout_sends_key_ip_and_real_time_only_when_asked() {
    logs();
    let emu = Emulator::start(KEYS).await;
    ioc(&emu).lookup(ip("198.51.100.1")).await.unwrap();
    let seen = emu.last(Api::Iocscout).unwrap();
    assert_eq!(seen.param("apiKey"), Some(KEY));
    assert_eq!(seen.param("ip"), Some("198.51.100.1"));
    assert_eq!(seen.param("realTimeData"), None, "{}", seen.query);

    let rt = Iocscout::new(&ioc_cfg(&emu, true, T), http_client().unwrap()).unwrap();
    rt.lookup(ip("2001:db8::1")).await.unwrap();
    let seen = emu.last(Api::Iocscout).unwrap();
    assert_eq!(seen.param("realTimeData"), Some("1"));
    assert_eq!(seen.param("ip"), Some("2001:db8::1"));
    assert!(
        seen.query.contains("ip=2001%3Adb8%3A%3A1"),
        "query params are url-encoded: {}",
        seen.query
    );

    // IPv4-mapped IPv6 is asked as IPv4.
    rt.lookup(ip("::ffff:198.51.100.9")).await.unwrap();
    assert_eq!(
        emu.last(Api::Iocscout).unwrap().param("ip"),
        Some("198.51.100.9")
    );
}

#[tokio::test]
async fn ipswamp_answers_are_normalized() {
    logs();
    let emu = Emulator::start(KEYS).await;
    let p = swamp(&emu);
    emu.set_ipswamp(ip("198.51.100.1"), Answer::Json(ipswamp_malicious(85)));
    emu.set_ipswamp(ip("198.51.100.2"), Answer::Json(ipswamp_suspicious(50)));
    emu.set_ipswamp(
        ip("198.51.100.3"),
        Answer::Json(ipswamp_whitelisted("Googlebot")),
    );
    emu.set_ipswamp(
        ip("198.51.100.4"),
        Answer::Json(ipswamp_whitelisted_flat("Bingbot")),
    );
    emu.set_ipswamp(ip("198.51.100.5"), Answer::Json(ipswamp_doc_example()));
    let mut odd = ipswamp_malicious(0);
    odd["details"]["score"] = serde_json::json!(72.6);
    odd["details"]["ip_rep"] = serde_json::json!("bot, crawler");
    odd["details"]["last_attack"] = serde_json::json!("");
    emu.set_ipswamp(ip("198.51.100.6"), Answer::Json(odd));

    let r = p.lookup(ip("198.51.100.1")).await.unwrap();
    assert_eq!(
        (r.status, r.score, r.last_seen),
        (Status::Threat, Some(85), Some(1_765_368_000))
    );
    assert_eq!((r.country.as_deref(), r.asn), (Some("DE"), Some(64496)));
    assert_eq!(r.raw.to_value()["details"]["ip"], "198.51.100.1");
    let r = p.lookup(ip("198.51.100.2")).await.unwrap();
    assert_eq!(
        (r.status, r.score, r.last_seen),
        (Status::Suspicious, Some(50), Some(1_765_368_000))
    );
    for a in ["198.51.100.3", "198.51.100.4"] {
        let r = p.lookup(ip(a)).await.unwrap();
        assert_eq!((r.status, r.scanner), (Status::Safe, true), "{a}");
    }
    let r = p.lookup(ip("198.51.100.5")).await.unwrap();
    assert_eq!(
        (r.status, r.score, r.country.as_deref(), r.asn),
        (Status::Threat, Some(85), Some("US"), Some(12345))
    );
    let r = p.lookup(ip("198.51.100.6")).await.unwrap();
    assert_eq!(
        (r.status, r.score, r.last_seen),
        (Status::Unknown, Some(73), None)
    );
    assert_eq!(r.raw.to_value()["details"]["ip_rep"], "bot, crawler");
    let r = p.lookup(ip("203.0.113.1")).await.unwrap();
    assert_eq!((r.status, r.score), (Status::Unknown, Some(0)));
}

#[tokio::test]
async fn ipswamp_auth_modes_and_detailed() {
    logs();
    let emu = Emulator::start(KEYS).await;
    let bearer = Ipswamp::new(
        &swamp_cfg(&emu, IpswampAuth::Bearer, true, T),
        http_client().unwrap(),
    )
    .unwrap();
    let r = bearer.lookup(ip("198.51.100.1")).await.unwrap();
    let seen = emu.last(Api::Ipswamp).unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.param("detailed"), Some("true"));
    assert_eq!(seen.param("ip"), Some("198.51.100.1"));
    assert!(r.raw.to_value().get("ipInfo").is_some());
    assert_eq!(r.country.as_deref(), Some("DE"));

    let header = Ipswamp::new(
        &swamp_cfg(&emu, IpswampAuth::Header, false, T),
        http_client().unwrap(),
    )
    .unwrap();
    let r = header.lookup(ip("198.51.100.1")).await.unwrap();
    let seen = emu.last(Api::Ipswamp).unwrap();
    assert_eq!(seen.header("x-api-key"), Some(KEY));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.param("detailed"), None, "{}", seen.query);
    assert!(
        !seen.query.contains("apiKey") && !seen.query.contains(KEY),
        "IPSwamp's key never goes in the URL"
    );
    assert!(
        r.raw.to_value().get("ipInfo").is_none(),
        "ipInfo only with detailed=true"
    );
    assert_eq!((r.country, r.asn), (None, None));
    assert_eq!(emu.calls(Api::Ipswamp), 2);
}

// ---- statuses and faults --------------------------------------------------------------------

#[tokio::test]
async fn transient_faults_map_to_errors_and_keep_the_provider_ready() {
    logs();
    let emu = Emulator::start(KEYS).await;
    let target = ip("198.51.100.1");
    type Check = fn(&ProviderError) -> bool;
    let faults: Vec<(Fault, Check)> = vec![
        (Fault::Status(400, None), |e| {
            matches!(e, ProviderError::BadRequest(_))
        }),
        (Fault::Status(500, None), |e| {
            matches!(e, ProviderError::Server(500, _))
        }),
        (Fault::Status(503, Some(5)), |e| {
            matches!(e, ProviderError::Server(503, _))
        }),
        (Fault::Status(404, None), |e| {
            matches!(e, ProviderError::Server(404, _))
        }),
        (Fault::BadJson, |e| matches!(e, ProviderError::Decode(_))),
        (Fault::Close, |e| matches!(e, ProviderError::Transport(_))),
        (Fault::Redirect, |e| {
            matches!(e, ProviderError::Server(302, _))
        }),
    ];
    for (api, p) in both(&emu) {
        for (fault, check) in &faults {
            emu.set_fault(api, target, fault.clone());
            let before = emu.calls(api);
            let e = p.lookup(target).await.unwrap_err();
            assert!(check(&e), "{api:?} {fault:?} gave {e:?}");
            assert_eq!(
                e.outcome(),
                if matches!(fault, Fault::Status(400, _)) {
                    "bad_request"
                } else {
                    "error"
                }
            );
            assert_eq!(
                emu.calls(api),
                before + 1,
                "{api:?} {fault:?}: exactly one call, no retry"
            );
            assert_eq!(p.availability(), Availability::Ready, "{api:?} {fault:?}");
        }
        // A fault for one IP leaves the others alone.
        assert!(p.lookup(ip("198.51.100.2")).await.is_ok());
        emu.clear_fault(api, target);
        assert!(p.lookup(target).await.is_ok());
    }
}

#[tokio::test]
async fn timeouts_use_the_provider_timeout() {
    logs();
    let emu = Emulator::start(KEYS).await;
    emu.set_fault(
        Api::Iocscout,
        Scope::All,
        Fault::Delay(Duration::from_secs(5)),
    );
    emu.set_fault(
        Api::Ipswamp,
        Scope::All,
        Fault::Delay(Duration::from_secs(5)),
    );
    let t = Duration::from_millis(300);
    let providers: Vec<Box<dyn Provider>> = vec![
        Box::new(Iocscout::new(&ioc_cfg(&emu, false, t), http_client().unwrap()).unwrap()),
        Box::new(
            Ipswamp::new(
                &swamp_cfg(&emu, IpswampAuth::Header, true, t),
                http_client().unwrap(),
            )
            .unwrap(),
        ),
    ];
    for p in providers {
        let start = std::time::Instant::now();
        let e = p.lookup(ip("198.51.100.1")).await.unwrap_err();
        assert_eq!(e, ProviderError::Timeout, "{}", p.id());
        assert_eq!(e.outcome(), "timeout");
        let took = start.elapsed();
        assert!(
            took >= t && took < Duration::from_secs(3),
            "{}: {took:?}",
            p.id()
        );
        assert_eq!(p.availability(), Availability::Ready);
    }
    // A delay under the timeout is just slow.
    emu.set_fault(
        Api::Iocscout,
        Scope::All,
        Fault::Delay(Duration::from_millis(50)),
    );
    assert!(ioc(&emu).lookup(ip("198.51.100.1")).await.is_ok());
}

#[tokio::test]
async fn connection_refused_is_transport() {
    logs();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = IocscoutConfig {
        api_key: SecretText(KEY.into()),
        base_url: Url(format!("http://127.0.0.1:{port}/v1")),
        real_time: false,
        daily_quota: 5,
        timeout: Dur(T),
    };
    let p = Iocscout::new(&cfg, http_client().unwrap()).unwrap();
    let e = p.lookup(ip("198.51.100.1")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Transport(_)), "{e:?}");
    assert_no_key("transport error", &format!("{e} {e:?}"));
    assert_eq!(p.availability(), Availability::Ready);
}

#[tokio::test]
async fn refused_keys_disable_the_provider_without_further_calls() {
    logs();
    let emu = Emulator::start(EmuKeys {
        iocscout: "the-right-key",
        ipswamp: "the-right-key",
    })
    .await;
    // The emulator refuses KEY: IOCScout 401, IPSwamp 403 "Invalid API key".
    for (api, p) in both(&emu) {
        let e = p.lookup(ip("198.51.100.1")).await.unwrap_err();
        assert!(
            matches!(&e, ProviderError::Unauthorized(m) if !m.is_empty()),
            "{api:?}: {e:?}"
        );
        assert_eq!(e.outcome(), "unauthorized");
        let Availability::Disabled(reason) = p.availability() else {
            panic!("{api:?} not disabled: {:?}", p.availability())
        };
        assert!(
            reason.contains(if api == Api::Iocscout { "401" } else { "403" }),
            "{reason}"
        );
        let calls = emu.calls(api);
        for _ in 0..3 {
            assert_eq!(
                p.lookup(ip("198.51.100.2")).await.unwrap_err(),
                ProviderError::Disabled
            );
        }
        assert_eq!(emu.calls(api), calls, "{api:?}: no call while disabled");
        assert!(!ProviderError::Disabled.reached_provider());
    }
    assert_eq!(
        emu.last(Api::Ipswamp).unwrap().header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[tokio::test]
async fn scripted_401_and_403_disable_too() {
    logs();
    let emu = Emulator::start(KEYS).await;
    for (api, status) in [
        (Api::Iocscout, 401),
        (Api::Iocscout, 403),
        (Api::Ipswamp, 401),
        (Api::Ipswamp, 403),
    ] {
        let p: Arc<dyn Provider> = if api == Api::Iocscout {
            Arc::new(ioc(&emu))
        } else {
            Arc::new(swamp(&emu))
        };
        emu.set_fault(api, Scope::All, Fault::Status(status, None));
        let e = p.lookup(ip("198.51.100.1")).await.unwrap_err();
        assert!(
            matches!(e, ProviderError::Unauthorized(_)),
            "{api:?} {status}: {e:?}"
        );
        assert!(matches!(p.availability(), Availability::Disabled(_)));
        emu.clear_faults();
        let calls = emu.calls(api);
        assert_eq!(
            p.lookup(ip("198.51.100.1")).await.unwrap_err(),
            ProviderError::Disabled
        );
        assert_eq!(emu.calls(api), calls);
    }
}

#[tokio::test]
async fn quota_exhausted_cools_down_until_next_utc_midnight() {
    logs();
    let emu = Emulator::start(KEYS).await;
    for (api, fault) in [
        (Api::Iocscout, Fault::Status(429, None)),
        (Api::Iocscout, Fault::UsageLimit),
        (Api::Ipswamp, Fault::Status(429, None)),
        (Api::Ipswamp, Fault::UsageLimit),
    ] {
        let p: Arc<dyn Provider> = if api == Api::Iocscout {
            Arc::new(ioc(&emu))
        } else {
            Arc::new(swamp(&emu))
        };
        emu.set_fault(api, Scope::All, fault.clone());
        let before = SystemTime::now();
        let e = p.lookup(ip("198.51.100.1")).await.unwrap_err();
        assert_eq!(
            e,
            ProviderError::QuotaExhausted { retry_after: None },
            "{api:?} {fault:?}"
        );
        assert_eq!(e.outcome(), "quota_exhausted");
        let Availability::CoolingDown { until } = p.availability() else {
            panic!("{api:?} {fault:?}: {:?}", p.availability())
        };
        let midnight = next_utc_midnight(before);
        assert!(
            until == midnight || until == next_utc_midnight(SystemTime::now()),
            "{until:?}"
        );
        // Even once the provider would answer again, nothing is asked within the day.
        emu.clear_faults();
        let calls = emu.calls(api);
        for other in ["198.51.100.1", "198.51.100.2"] {
            assert_eq!(
                p.lookup(ip(other)).await.unwrap_err(),
                ProviderError::CoolingDown
            );
        }
        assert_eq!(
            emu.calls(api),
            calls,
            "{api:?} {fault:?}: no call while cooling down"
        );
    }
}

#[tokio::test]
async fn retry_after_bounds_the_cool_down() {
    logs();
    let emu = Emulator::start(KEYS).await;
    let clock = ipgate::clock::ManualClock::starting_now();
    let shared: ipgate::clock::SharedClock = Arc::new(clock.clone());
    let both: Vec<(Api, Arc<dyn Provider>)> = vec![
        (
            Api::Iocscout,
            Arc::new(ioc(&emu).with_clock(shared.clone())),
        ),
        (
            Api::Ipswamp,
            Arc::new(swamp(&emu).with_clock(shared.clone())),
        ),
    ];
    for (api, p) in both {
        emu.set_fault(api, Scope::All, Fault::Status(429, Some(1)));
        let e = p.lookup(ip("198.51.100.1")).await.unwrap_err();
        assert_eq!(
            e,
            ProviderError::QuotaExhausted {
                retry_after: Some(Duration::from_secs(1))
            }
        );
        let Availability::CoolingDown { until } = p.availability() else {
            panic!("{:?}", p.availability())
        };
        assert!(until <= clock.now() + Duration::from_secs(1));
        emu.clear_faults();
        let calls = emu.calls(api);
        assert_eq!(
            p.lookup(ip("198.51.100.1")).await.unwrap_err(),
            ProviderError::CoolingDown
        );
        assert_eq!(emu.calls(api), calls);
        // Still cooling down just before the second is up; ready once it is.
        clock.advance(Duration::from_millis(900));
        assert!(!p.availability().is_ready());
        clock.advance(Duration::from_millis(100));
        assert_eq!(p.availability(), Availability::Ready);
        assert!(p.lookup(ip("198.51.100.1")).await.is_ok());
        assert_eq!(emu.calls(api), calls + 1);
    }
}

// ---- secrets --------------------------------------------------------------------------------

#[tokio::test]
async fn the_key_never_appears_in_errors_debug_or_logs() {
    let logs = logs();
    let emu = Emulator::start(KEYS).await;
    let faults = [
        Fault::Status(400, None),
        Fault::Status(401, None),
        Fault::Status(403, None),
        Fault::Status(429, Some(30)),
        Fault::Status(429, None),
        Fault::Status(500, None),
        Fault::UsageLimit,
        Fault::BadJson,
        Fault::Close,
        Fault::Redirect,
        Fault::Delay(Duration::from_secs(3)),
        Fault::EchoKey(400),
        Fault::EchoKey(401),
        Fault::EchoKey(403),
        Fault::EchoKey(500),
    ];
    let t = Duration::from_millis(300);
    let mut texts = Vec::new();
    for auth in [IpswampAuth::Bearer, IpswampAuth::Header] {
        for fault in &faults {
            let providers: Vec<(Api, Box<dyn Provider>)> = vec![
                (
                    Api::Iocscout,
                    Box::new(
                        Iocscout::new(&ioc_cfg(&emu, true, t), http_client().unwrap()).unwrap(),
                    ),
                ),
                (
                    Api::Ipswamp,
                    Box::new(
                        Ipswamp::new(&swamp_cfg(&emu, auth, true, t), http_client().unwrap())
                            .unwrap(),
                    ),
                ),
            ];
            for (api, p) in providers {
                emu.set_fault(api, Scope::All, fault.clone());
                let e = p.lookup(ip("198.51.100.1")).await.unwrap_err();
                texts.push(format!(
                    "{api:?} {fault:?}: {e} | {e:?} | {p:?} | {:?}",
                    p.availability()
                ));
                // And once more, disabled or cooling down or not.
                if let Err(e) = p.lookup(ip("198.51.100.2")).await {
                    texts.push(format!("{e} | {e:?}"));
                }
                emu.clear_faults();
            }
        }
    }
    // Echoed keys are redacted, not dropped with the message.
    assert!(
        texts.iter().any(|t| t.contains("API key *** is not valid")),
        "{texts:#?}"
    );
    for t in &texts {
        assert_no_key("error or Debug", t);
    }
    // Debug of a working provider and of the configuration types it came from.
    assert_no_key("Debug", &format!("{:?} {:?}", ioc(&emu), swamp(&emu)));
    let captured = logs.text();
    assert!(
        captured.contains("provider=\"iocscout\"") && captured.contains("provider=\"ipswamp\"")
    );
    assert!(
        captured.contains("outcome=\"quota_exhausted\""),
        "structured fields are logged"
    );
    assert_no_key("logs", &captured);
}

#[tokio::test]
async fn keys_with_odd_characters_are_redacted_in_every_form() {
    logs();
    let odd = "k3y with/odd+chars&=";
    let emu = Emulator::start(KEYS).await;
    emu.set_fault(Api::Iocscout, Scope::All, Fault::EchoKey(401));
    let mut cfg = ioc_cfg(&emu, false, T);
    cfg.api_key = SecretText(odd.into());
    let p = Iocscout::new(&cfg, http_client().unwrap()).unwrap();
    let e = p.lookup(ip("198.51.100.1")).await.unwrap_err();
    assert_eq!(
        emu.last(Api::Iocscout).unwrap().param("apiKey"),
        Some(odd),
        "sent url-encoded, decoded intact"
    );
    let text = format!("{e} {e:?} {p:?} {:?}", p.availability());
    assert!(!text.contains(odd) && !text.contains("k3y"), "{text}");
    assert!(text.contains("***"), "{text}");
}

// ---- build ----------------------------------------------------------------------------------

#[test]
fn build_skips_providers_without_a_key_with_one_warning() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reputation.yaml");
    std::fs::write(&file, "203.0.113.0/24: { status: threat, score: 90 }\n").unwrap();
    let cfg = Providers {
        iocscout: Some(IocscoutConfig {
            api_key: SecretText(String::new()),
            ..IocscoutConfig::default()
        }),
        ipswamp: Some(IpswampConfig {
            api_key: SecretText("  ".into()),
            ..IpswampConfig::default()
        }),
        file: Some(FileProviderConfig {
            path: Text(file.display().to_string()),
        }),
    };
    let built = tracing::subscriber::with_default(subscriber, || {
        build(&cfg, http_client().unwrap(), ipgate::clock::system())
    })
    .unwrap();
    let names: Vec<&str> = built.iter().map(|p| p.id().as_str()).collect();
    assert_eq!(names, ["file"]);
    let text = buf.text();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(
        warnings[0].contains("iocscout") && warnings[1].contains("ipswamp"),
        "{text}"
    );

    let cfg = Providers {
        iocscout: Some(IocscoutConfig {
            api_key: SecretText(KEY.into()),
            ..IocscoutConfig::default()
        }),
        ipswamp: Some(IpswampConfig {
            api_key: SecretText(KEY.into()),
            ..IpswampConfig::default()
        }),
        file: None,
    };
    let built = build(&cfg, http_client().unwrap(), ipgate::clock::system()).unwrap();
    let names: Vec<&str> = built.iter().map(|p| p.id().as_str()).collect();
    assert_eq!(names, ["iocscout", "ipswamp"]);
    assert_eq!(built[0].daily_quota(), Some(5));
    assert_eq!(built[1].daily_quota(), Some(1000));
    assert!(built.iter().all(|p| p.availability().is_ready()));
    assert!(
        build(
            &Providers::default(),
            http_client().unwrap(),
            ipgate::clock::system()
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn build_reports_bad_files_with_path_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("rep.yaml");
    std::fs::write(
        &yaml,
        "203.0.113.0/24: { status: threat }\n198.51.100.0/24: { status: threat, color: red }\n",
    )
    .unwrap();
    let cfg = Providers {
        file: Some(FileProviderConfig {
            path: Text(yaml.display().to_string()),
        }),
        ..Default::default()
    };
    let e = build(&cfg, http_client().unwrap(), ipgate::clock::system())
        .err()
        .unwrap();
    let ProviderBuildError::File { path, message } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(path, &yaml.display().to_string());
    // The kind of problem, never the file's content (the unknown key is content).
    assert!(
        message.contains("line 2")
            && message.contains("unknown field")
            && !message.contains("color"),
        "{e}"
    );
    assert!(e.to_string().contains("rep.yaml"), "{e}");

    let json = dir.path().join("rep.json");
    std::fs::write(
        &json,
        "{\"203.0.113.0/24\": {\"status\": \"threat\"},\n \"999.1.1.1\": {\"status\": \"safe\"}}",
    )
    .unwrap();
    let cfg = Providers {
        file: Some(FileProviderConfig {
            path: Text(json.display().to_string()),
        }),
        ..Default::default()
    };
    let e = build(&cfg, http_client().unwrap(), ipgate::clock::system())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("rep.json") && e.contains("line 2, entry 2") && !e.contains("999.1.1.1"),
        "{e}"
    );

    std::fs::write(
        &json,
        "{\"203.0.113.0/24\": {\"status\": \"threat\"},\n oops}",
    )
    .unwrap();
    let e = build(&cfg, http_client().unwrap(), ipgate::clock::system())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rep.json") && e.contains("line 2"), "{e}");
}

#[tokio::test]
async fn file_provider_through_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rep.yaml");
    std::fs::write(&path, "203.0.113.0/24: { status: threat, score: 90 }\n203.0.113.7: { status: safe, scanner: true }\n")
        .unwrap();
    let cfg = Providers {
        file: Some(FileProviderConfig {
            path: Text(path.display().to_string()),
        }),
        ..Default::default()
    };
    let built = build(&cfg, http_client().unwrap(), ipgate::clock::system()).unwrap();
    let p = &built[0];
    assert_eq!(
        p.lookup(ip("203.0.113.7")).await.unwrap().status,
        Status::Safe
    );
    assert_eq!(p.lookup(ip("203.0.113.8")).await.unwrap().score, Some(90));
    let r = p.lookup(ip("192.0.2.1")).await.unwrap();
    assert_eq!((r.provider.as_str(), r.status), ("file", Status::Unknown));
    assert_eq!(p.daily_quota(), None);
}

// ---- the emulator itself --------------------------------------------------------------------

#[tokio::test]
async fn emulator_checks_keys_and_parameters_like_the_documents() {
    let emu = Emulator::start(KEYS).await;
    let c = reqwest::Client::new();
    let get = |url: String| {
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let ioc = emu.iocscout_url();
    assert_eq!(get(format!("{ioc}?ip=1.2.3.4")).await.0, 401);
    assert_eq!(get(format!("{ioc}?apiKey=nope&ip=1.2.3.4")).await.0, 401);
    assert_eq!(get(format!("{ioc}?apiKey={KEY}")).await.0, 400);
    assert_eq!(get(format!("{ioc}?apiKey={KEY}&ip=1.2.3")).await.0, 400);
    assert_eq!(
        get(format!("{ioc}?apiKey={KEY}&ip=1.2.3.4&realTimeData=2"))
            .await
            .0,
        400
    );
    assert_eq!(
        get(format!("{ioc}?apiKey={KEY}&ip=1.2.3.4&realTimeData=1"))
            .await
            .0,
        200
    );

    let checkip = format!("{}/checkIP", emu.ipswamp_url());
    let r = c.get(format!("{checkip}?ip=1.2.3.4")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (body["error"].as_bool(), body["statusCode"].as_u64()),
        (Some(true), Some(401))
    );
    let r = c
        .get(format!("{checkip}?ip=1.2.3.4"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["message"],
        "Invalid API key"
    );
    let r = c
        .get(checkip.clone())
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["message"],
        "IP address is required"
    );
    let r = c
        .get(format!("{checkip}?ip=1.2.3.4"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body.get("ipInfo").is_none());
    assert_eq!(body["details"]["ip"], "1.2.3.4");
    let r = c
        .get(format!("{checkip}?ip=1.2.3.4&detailed=true"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ipInfo"]["ip"], "1.2.3.4");

    emu.set_fault(Api::Ipswamp, Scope::All, Fault::UsageLimit);
    let r = c
        .get(format!("{checkip}?ip=1.2.3.4"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["message"],
        "Usage limit exceeded"
    );
    emu.set_fault(Api::Iocscout, ip("1.2.3.4"), Fault::Status(429, Some(60)));
    let r = c
        .get(format!("{ioc}?apiKey={KEY}&ip=1.2.3.4"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "60")
    );
    assert_eq!(
        get(format!("{ioc}?apiKey={KEY}&ip=1.2.3.5")).await.0,
        200,
        "per-IP fault only"
    );

    assert_eq!(emu.calls(Api::Iocscout), 8);
    assert_eq!(emu.calls_for(Api::Iocscout, ip("1.2.3.4")), 5);
    assert_eq!(emu.calls(Api::Ipswamp), 6);
    emu.reset_counts();
    assert_eq!(emu.calls(Api::Ipswamp), 0);
}
