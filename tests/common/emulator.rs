//! A local emulator of the two reputation providers, written from their documentation
//! (`iocscout-api.txt`, `ipswamp-api.txt`), for end-to-end tests.
//!
//! One HTTP server on `127.0.0.1:0` serves both:
//!
//! - IOCScout: `GET /iocscout/v1?apiKey=KEY&ip=IP[&realTimeData=0|1]`
//!   (missing or wrong key → 401; missing/bad `ip` or `realTimeData` → 400);
//! - IPSwamp: `GET /ipswamp/api/v1/checkIP?ip=IP[&detailed=true]` with
//!   `Authorization: Bearer KEY` or `X-API-Key: KEY` (no key → 401, wrong key → 403
//!   "Invalid API key", missing/bad `ip` → 400, all as `{error, statusCode, message}`;
//!   `ipInfo` only with `detailed=true`).
//!
//! Tests script answers per IP ([`Emulator::set_iocscout`], [`Emulator::set_ipswamp`])
//! and faults per IP or for every IP ([`Emulator::set_fault`]); the emulator counts the
//! calls it received and records their query strings and headers.
//!
//! ```ignore
//! let emu = Emulator::start(EmuKeys { iocscout: "k1", ipswamp: "k2" }).await;
//! emu.set_iocscout(ip, Answer::Json(iocscout_threat(90, &["attack"])));
//! emu.set_fault(Api::Ipswamp, Scope::All, Fault::Status(429, Some(60)));
//! assert_eq!(emu.calls(Api::Iocscout), 1);
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Extension, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// The keys the emulator accepts.
#[derive(Debug, Clone, Copy)]
pub struct EmuKeys {
    /// IOCScout's `apiKey`.
    pub iocscout: &'static str,
    /// IPSwamp's bearer / `X-API-Key` key.
    pub ipswamp: &'static str,
}

/// Which emulated provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Iocscout,
    Ipswamp,
}

/// Where a fault applies: one IP, or every IP (a per-IP fault wins over `All`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    All,
    Ip(IpAddr),
}

impl From<IpAddr> for Scope {
    fn from(ip: IpAddr) -> Self {
        Scope::Ip(ip)
    }
}

/// A scripted answer for one IP (when no fault applies and the request is valid).
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with this JSON body (IPSwamp: `ipInfo` is removed unless `detailed=true`,
    /// and added from [`ipswamp_ip_info`] when missing and `detailed=true`).
    Json(Value),
    /// This status and body, as is, with `Content-Type: application/json`.
    Raw { status: u16, body: String },
    /// 200 with this JSON body where `{key}` in any string (object keys too) is
    /// replaced by the key the client sent, and `{key_urlencoded}` by it percent-encoded:
    /// a provider that echoes the caller's key inside a valid answer.
    EchoKey(Value),
}

/// `v` with `{key}` / `{key_urlencoded}` in every string and object key replaced.
fn echo_key(v: &Value, key: &str) -> Value {
    let sub = |s: &str| {
        let encoded: String = key
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        s.replace("{key_urlencoded}", &encoded)
            .replace("{key}", key)
    };
    match v {
        Value::String(s) => Value::String(sub(s)),
        Value::Array(items) => Value::Array(items.iter().map(|i| echo_key(i, key)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (sub(k), echo_key(v, key)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A scripted misbehaviour.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Wait, then handle the request normally.
    Delay(Duration),
    /// Answer this status with the provider's error body; `Retry-After: N` when `Some(N)`.
    Status(u16, Option<u64>),
    /// Answer this status with the provider's error body and this `Retry-After` text
    /// (an HTTP date, say).
    StatusRetryAfter(u16, &'static str),
    /// A spent quota as the provider signals it: IPSwamp 403 "Usage limit exceeded",
    /// IOCScout 429 (no `Retry-After`).
    UsageLimit,
    /// 200 with a body that is not JSON.
    BadJson,
    /// Close the connection without answering.
    Close,
    /// Answer this status with an error message that repeats the key the client sent
    /// (to test that clients redact it).
    EchoKey(u16),
    /// 302 to the same URL.
    Redirect,
}

/// One request as the emulator saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub api: Api,
    /// The `ip` parameter, as sent.
    pub ip: Option<String>,
    /// The raw query string.
    pub query: String,
    /// Query parameters, decoded, in order.
    pub params: Vec<(String, String)>,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Inner {
    answers: HashMap<(Api, IpAddr), Answer>,
    faults: HashMap<(Api, Scope), Fault>,
    seen: Vec<Seen>,
    calls: HashMap<Api, usize>,
    calls_for: HashMap<(Api, String), usize>,
}

struct Shared {
    keys: EmuKeys,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes the connection a request came on.
#[derive(Clone)]
struct Kill(Arc<Notify>);

/// The running emulator; the server stops when it is dropped.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Emulator {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start(keys: EmuKeys) -> Emulator {
        let shared = Arc::new(Shared {
            keys,
            inner: Mutex::new(Inner::default()),
        });
        let router = Router::new()
            .route("/iocscout/v1", get(iocscout))
            .route("/ipswamp/api/v1/checkIP", get(ipswamp))
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the emulator");
        let addr = listener.local_addr().expect("emulator address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let kill = Arc::new(Notify::new());
                let app = router.clone().layer(Extension(Kill(kill.clone())));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        app.clone().oneshot(req)
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    // Dropping the connection closes the socket: the `Close` fault.
                    tokio::select! {
                        _ = conn => {}
                        _ = kill.notified() => {}
                    }
                });
            }
        });
        Emulator { addr, shared, task }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// IOCScout's `base_url`.
    pub fn iocscout_url(&self) -> String {
        format!("{}/iocscout/v1", self.base())
    }

    /// IPSwamp's `base_url` (the client appends `/checkIP`).
    pub fn ipswamp_url(&self) -> String {
        format!("{}/ipswamp/api/v1", self.base())
    }

    /// The keys the emulator accepts.
    pub fn keys(&self) -> EmuKeys {
        self.shared.keys
    }

    /// Scripts IOCScout's answer for `ip`.
    pub fn set_iocscout(&self, ip: IpAddr, answer: Answer) {
        self.set_answer(Api::Iocscout, ip, answer);
    }

    /// Scripts IPSwamp's answer for `ip`.
    pub fn set_ipswamp(&self, ip: IpAddr, answer: Answer) {
        self.set_answer(Api::Ipswamp, ip, answer);
    }

    /// Scripts `api`'s answer for `ip` (unscripted IPs get an "unknown"/"clean" answer).
    pub fn set_answer(&self, api: Api, ip: IpAddr, answer: Answer) {
        self.shared.lock().answers.insert((api, ip), answer);
    }

    /// Forgets every scripted answer.
    pub fn clear_answers(&self) {
        self.shared.lock().answers.clear();
    }

    /// Sets (replaces) the fault of `api` for `scope`.
    pub fn set_fault(&self, api: Api, scope: impl Into<Scope>, fault: Fault) {
        self.shared.lock().faults.insert((api, scope.into()), fault);
    }

    /// Removes the fault of `api` for `scope`.
    pub fn clear_fault(&self, api: Api, scope: impl Into<Scope>) {
        self.shared.lock().faults.remove(&(api, scope.into()));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Requests `api` received (valid or not).
    pub fn calls(&self, api: Api) -> usize {
        self.shared.lock().calls.get(&api).copied().unwrap_or(0)
    }

    /// Requests `api` received for `ip` (by the `ip` parameter as sent).
    pub fn calls_for(&self, api: Api, ip: IpAddr) -> usize {
        self.shared
            .lock()
            .calls_for
            .get(&(api, ip.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every request `api` received, oldest first.
    pub fn seen(&self, api: Api) -> Vec<Seen> {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| s.api == api)
            .cloned()
            .collect()
    }

    /// The last request `api` received.
    pub fn last(&self, api: Api) -> Option<Seen> {
        self.shared
            .lock()
            .seen
            .iter()
            .rev()
            .find(|s| s.api == api)
            .cloned()
    }

    /// Forgets counts and recorded requests (answers and faults stay).
    pub fn reset_counts(&self) {
        let mut inner = self.shared.lock();
        inner.seen.clear();
        inner.calls.clear();
        inner.calls_for.clear();
    }
}

/// Records the request; returns the fault that applies and the scripted answer.
fn record(
    shared: &Shared,
    api: Api,
    params: &[(String, String)],
    query: Option<String>,
    headers: &HeaderMap,
) -> (Option<Fault>, Option<Answer>) {
    let ip = params
        .iter()
        .find(|(k, _)| k == "ip")
        .map(|(_, v)| v.clone());
    let mut inner = shared.lock();
    *inner.calls.entry(api).or_default() += 1;
    if let Some(ip) = &ip {
        *inner.calls_for.entry((api, ip.clone())).or_default() += 1;
    }
    inner.seen.push(Seen {
        api,
        ip: ip.clone(),
        query: query.unwrap_or_default(),
        params: params.to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let parsed: Option<IpAddr> = ip.as_deref().and_then(|s| s.parse().ok());
    let fault = parsed
        .and_then(|ip| inner.faults.get(&(api, Scope::Ip(ip))))
        .or_else(|| inner.faults.get(&(api, Scope::All)))
        .cloned();
    let answer = parsed.and_then(|ip| inner.answers.get(&(api, ip))).cloned();
    (fault, answer)
}

fn json_response(status: u16, body: Value, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn raw_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// What a fault answers, or `None` to go on handling the request.
async fn apply_fault(
    api: Api,
    fault: Option<Fault>,
    kill: &Kill,
    uri: &str,
    sent_key: &str,
) -> Option<Response> {
    let error = |status: u16, message: &str| match api {
        Api::Iocscout => iocscout_error(status, message),
        Api::Ipswamp => ipswamp_error(status, message),
    };
    match fault? {
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::Status(status, retry_after) => {
            let message = match api {
                Api::Iocscout => iocscout_message(status),
                Api::Ipswamp => ipswamp_message(status),
            };
            Some(json_response(status, error(status, message), retry_after))
        }
        Fault::StatusRetryAfter(status, text) => {
            let message = match api {
                Api::Iocscout => iocscout_message(status),
                Api::Ipswamp => ipswamp_message(status),
            };
            let mut resp = json_response(status, error(status, message), None);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(text));
            Some(resp)
        }
        Fault::UsageLimit => Some(match api {
            Api::Iocscout => json_response(429, error(429, iocscout_message(429)), None),
            Api::Ipswamp => json_response(403, error(403, "Usage limit exceeded"), None),
        }),
        Fault::BadJson => Some(raw_response(200, "<html><body>Bad gateway</body>".into())),
        Fault::Close => {
            kill.0.notify_one();
            Some(std::future::pending::<Response>().await)
        }
        Fault::EchoKey(status) => Some(json_response(
            status,
            error(status, &format!("API key {sent_key} is not valid")),
            None,
        )),
        Fault::Redirect => {
            let mut resp = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(uri) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Some(resp)
        }
    }
}

async fn iocscout(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<Kill>,
    RawQuery(query): RawQuery,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (fault, answer) = record(&shared, Api::Iocscout, &params, query, &headers);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let sent_key = param("apiKey").unwrap_or("");
    if let Some(resp) = apply_fault(Api::Iocscout, fault, &kill, &uri.to_string(), sent_key).await {
        return resp;
    }
    if sent_key.is_empty() || sent_key != shared.keys.iocscout {
        return json_response(401, iocscout_error(401, iocscout_message(401)), None);
    }
    let ip_ok = matches!(param("ip").map(str::parse::<IpAddr>), Some(Ok(_)));
    if !ip_ok || !matches!(param("realTimeData"), None | Some("0") | Some("1")) {
        return json_response(400, iocscout_error(400, iocscout_message(400)), None);
    }
    match answer {
        Some(Answer::Json(v)) => json_response(200, v, None),
        Some(Answer::Raw { status, body }) => raw_response(status, body),
        Some(Answer::EchoKey(v)) => json_response(200, echo_key(&v, sent_key), None),
        None => json_response(200, iocscout_unknown(), None),
    }
}

async fn ipswamp(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<Kill>,
    RawQuery(query): RawQuery,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (fault, answer) = record(&shared, Api::Ipswamp, &params, query, &headers);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let x_api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let sent_key = bearer.or(x_api_key).unwrap_or("");
    if let Some(resp) = apply_fault(Api::Ipswamp, fault, &kill, &uri.to_string(), sent_key).await {
        return resp;
    }
    if sent_key.is_empty() {
        return json_response(401, ipswamp_error(401, ipswamp_message(401)), None);
    }
    if sent_key != shared.keys.ipswamp {
        return json_response(403, ipswamp_error(403, ipswamp_message(403)), None);
    }
    let ip = match param("ip") {
        None | Some("") => {
            return json_response(400, ipswamp_error(400, "IP address is required"), None);
        }
        Some(s) => match s.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return json_response(400, ipswamp_error(400, "Invalid IP address"), None),
        },
    };
    let detailed = param("detailed") == Some("true");
    let mut body = match answer {
        Some(Answer::Raw { status, body }) => return raw_response(status, body),
        Some(Answer::Json(v)) => v,
        Some(Answer::EchoKey(v)) => echo_key(&v, sent_key),
        None => ipswamp_clean(),
    };
    if let Some(obj) = body.as_object_mut() {
        if detailed {
            obj.entry("ipInfo").or_insert_with(|| ipswamp_ip_info(ip));
        } else {
            obj.remove("ipInfo");
        }
        if let Some(Value::String(s)) = obj.get_mut("details").and_then(|d| d.get_mut("ip")) {
            *s = ip.to_string();
        }
        if let Some(Value::String(s)) = obj.get_mut("ipInfo").and_then(|d| d.get_mut("ip")) {
            *s = ip.to_string();
        }
    }
    json_response(200, body, None)
}

// ---- error bodies ----------------------------------------------------------------------

/// IOCScout's documented error texts.
pub fn iocscout_message(status: u16) -> &'static str {
    match status {
        400 => "Invalid input parameters.",
        401 => "Unauthorized. Verify your API key or check your subscription limits.",
        429 => "Too many requests. Try your call again later.",
        500..=599 => "Server error. Please try your call again later or contact support.",
        _ => "Error.",
    }
}

/// IOCScout's error body (its shape is not documented: `{"status", "message"}` here).
pub fn iocscout_error(status: u16, message: &str) -> Value {
    json!({ "status": status, "message": message })
}

/// IPSwamp's documented error texts.
pub fn ipswamp_message(status: u16) -> &'static str {
    match status {
        400 => "IP address is required",
        401 => "API key required. Provide it with Authorization: Bearer <api-key> or X-API-Key.",
        403 => "Invalid API key",
        429 => "Too many requests",
        500..=599 => "Failed to fetch IP details",
        _ => "Error",
    }
}

/// IPSwamp's error body `{error, statusCode, message}`.
pub fn ipswamp_error(status: u16, message: &str) -> Value {
    json!({ "error": true, "statusCode": status, "message": message })
}

// ---- realistic answers -------------------------------------------------------------------

/// The IOCScout documentation's example, verbatim.
pub fn iocscout_doc_example() -> Value {
    serde_json::from_str(include_str!(
        "../../src/providers/fixtures/iocscout-doc-example.json"
    ))
    .expect("the documented example is JSON")
}

/// The IPSwamp documentation's detailed example, verbatim (`ipInfo` included).
pub fn ipswamp_doc_example() -> Value {
    serde_json::from_str(include_str!(
        "../../src/providers/fixtures/ipswamp-doc-detailed.json"
    ))
    .expect("the documented example is JSON")
}

/// An IOCScout answer with every documented object, nothing detected.
fn iocscout_base(status: &str) -> Value {
    json!({
        "detection": { "first": null, "last": null },
        "status": status,
        "threat": { "score": 0, "class": null },
        "known": { "service": [] },
        "location": { "country": "Germany", "region": "Hesse", "city": "Frankfurt am Main" },
        "net": {
            "vpn": { "detected": false, "name": "" },
            "tor": false,
            "ptr": { "value": null, "iprev": false },
            "as": { "number": 64496, "name": "EXAMPLE-AS", "url": "https://as64496.example.net" },
            "route": {
                "score": 0,
                "source": "ripe",
                "netname": "EXAMPLE-NET",
                "update": "2024-05-23T10:19:53-04:00",
                "inetnum": "198.51.100.0 - 198.51.100.255",
                "org": {
                    "id": "ORG-EX1-RIPE", "name": "Example GmbH", "email": "noc@example.net",
                    "phone": "+49 69 0000000", "address": ["Example Str. 1", "60311 Frankfurt", "Germany"]
                },
                "contact": {
                    "admin": { "id": "EX1-RIPE", "name": "Example NOC", "email": "noc@example.net",
                               "phone": "+49 69 0000000", "address": ["Example Str. 1"] },
                    "tech": { "id": "EX1-RIPE", "name": "Example NOC", "email": "noc@example.net",
                              "phone": "+49 69 0000000", "address": ["Example Str. 1"] },
                    "abuse": { "id": "AB1-RIPE", "name": "Example Abuse", "email": "abuse@example.net",
                               "phone": "+49 69 0000000", "address": ["Example Str. 1"] }
                }
            }
        }
    })
}

/// IOCScout: nothing known (`status: unknown`).
pub fn iocscout_unknown() -> Value {
    iocscout_base("unknown")
}

/// IOCScout: a threat with `score` and `classes` (e.g. `&["attack", "c2"]`).
pub fn iocscout_threat(score: u8, classes: &[&str]) -> Value {
    let mut v = iocscout_base("threat");
    v["detection"] = json!({ "first": 1_643_720_870, "last": 1_738_415_270 });
    v["threat"] = json!({ "score": score, "class": classes });
    v["net"]["route"]["score"] = json!(31);
    v
}

/// IOCScout: suspicious with `score` (`class` is null unless threat).
pub fn iocscout_suspicious(score: u8) -> Value {
    let mut v = iocscout_base("suspicious");
    v["threat"] = json!({ "score": score, "class": null });
    v
}

/// IOCScout: a legitimate scanner (`status: safe`, `known.scanner`).
pub fn iocscout_safe_scanner(name: &str) -> Value {
    let mut v = iocscout_base("safe");
    v["known"]["scanner"] = json!([{
        "name": name,
        "description": format!("{name} web crawler"),
        "info": ["https://example.com/crawler"]
    }]);
    v["net"]["ptr"] = json!({ "value": "crawl-198-51-100-1.example.com.", "iprev": true });
    v
}

/// IOCScout: a recognized service that does not scan (`known.service`).
pub fn iocscout_known_service(name: &str) -> Value {
    let mut v = iocscout_base("unknown");
    v["known"]["service"] = json!([{
        "name": name,
        "description": format!("{name} webhooks"),
        "info": ["https://example.com/meta"]
    }]);
    v
}

/// IOCScout: a Tor exit node (`net.tor: true`), nothing else detected.
pub fn iocscout_tor() -> Value {
    let mut v = iocscout_base("unknown");
    v["net"]["tor"] = json!(true);
    v
}

/// IOCScout: an address of a VPN pool (`net.vpn.detected: true`).
pub fn iocscout_vpn() -> Value {
    let mut v = iocscout_base("unknown");
    v["net"]["vpn"] = json!({ "detected": true, "name": "Example VPN provider" });
    v
}

/// IPSwamp's `ipInfo` for `ip`.
pub fn ipswamp_ip_info(ip: IpAddr) -> Value {
    json!({
        "ip": ip.to_string(),
        "asn": "AS64496",
        "as_name": "Example ISP",
        "as_domain": "example.com",
        "country_code": "DE",
        "country": "Germany",
        "continent_code": "EU",
        "continent": "Europe",
        "isp": "Example Internet Services"
    })
}

fn ipswamp_answer(
    message: &str,
    description: &str,
    score: Value,
    rep: &str,
    hits: u64,
    last: Value,
) -> Value {
    json!({
        "message": message,
        "description": description,
        "details": {
            "score": score,
            "ip": "0.0.0.0",
            "last_attack": last,
            "ip_rep": rep,
            "total_hits": hits,
            "whitelist": null,
            "whitelist_description": null,
            "whitelist_note": null,
            "whitelist_value": null
        },
        "ipInfo": ipswamp_ip_info(IpAddr::from([0, 0, 0, 0]))
    })
}

/// IPSwamp: malicious with `score`.
pub fn ipswamp_malicious(score: u8) -> Value {
    ipswamp_answer(
        "IP found in database",
        "This IP has been flagged as malicious",
        json!(score),
        "malicious",
        42,
        json!("2025-12-10T12:00:00Z"),
    )
}

/// IPSwamp: suspicious with `score`.
pub fn ipswamp_suspicious(score: u8) -> Value {
    ipswamp_answer(
        "IP found in database",
        "This IP has been flagged as suspicious",
        json!(score),
        "suspicious",
        3,
        json!("2025-12-10 12:00:00 +0000"),
    )
}

/// IPSwamp: clean (not in the database).
pub fn ipswamp_clean() -> Value {
    ipswamp_answer(
        "IP not found in database",
        "No malicious activity recorded",
        json!(0),
        "clean",
        0,
        json!(null),
    )
}

/// IPSwamp: whitelisted (`whitelist` object), e.g. a search engine crawler.
pub fn ipswamp_whitelisted(name: &str) -> Value {
    let mut v = ipswamp_clean();
    v["details"]["whitelist"] = json!({
        "description": format!("{name} crawler"),
        "note": "verified by reverse DNS",
        "value": name
    });
    v
}

/// IPSwamp: whitelisted with the flat `whitelist_*` fields.
pub fn ipswamp_whitelisted_flat(name: &str) -> Value {
    let mut v = ipswamp_clean();
    v["details"]["whitelist_description"] = json!(format!("{name} crawler"));
    v["details"]["whitelist_note"] = json!("verified by reverse DNS");
    v["details"]["whitelist_value"] = json!(name);
    v
}
