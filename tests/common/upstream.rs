//! An upstream application that records what reached it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::{any, get};

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn last(&self) -> Seen {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }
}

pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Recorder,
}

impl TestUpstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn record(State(rec): State<Recorder>, req: Request) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let len = body.len();
    rec.0.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let mut resp = axum::response::Response::new(axum::body::Body::from(body));
    resp.headers_mut()
        .insert("x-upstream", "yes".parse().unwrap());
    resp.headers_mut().insert("x-body-len", len.into());
    // A hop-by-hop header the gateway must not pass on.
    resp.headers_mut()
        .insert("keep-alive", "timeout=99".parse().unwrap());
    resp
}

async fn slow(State(rec): State<Recorder>, req: Request) -> impl IntoResponse {
    let _ = record(State(rec), req).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    "slow done"
}

/// Twelve lines, `00` to `11`, one every 100 ms: a response whose body outlasts short
/// timeouts.
async fn drip() -> impl IntoResponse {
    let lines = futures_util::stream::unfold(0u32, |i| async move {
        if i == 12 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("{i:02}\n"))),
            i + 1,
        ))
    });
    axum::body::Body::from_stream(lines)
}

async fn ws(ws: WebSocketUpgrade) -> impl IntoResponse {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(format!("echo: {}", t.as_str()).into()),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

/// Starts the upstream on 127.0.0.1:0: `/ws` echoes WebSocket messages, `/slow` answers
/// after 1.5 s, `/drip` sends its body over 1.2 s, everything else echoes the body and
/// records the request.
pub async fn start() -> TestUpstream {
    let seen = Recorder::default();
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/slow", any(slow))
        .route("/drip", get(drip))
        .fallback(record)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestUpstream { addr, seen }
}

/// An address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}
