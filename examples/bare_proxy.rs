//! The floor of the hyper stack: a reverse proxy on hyper-util's server (HTTP/1.1 +
//! h2c, as ipgate's) and its client (ipgate speaks HTTP/1.1 to the upstream itself),
//! with no decision at all. bench/run.sh measures ipgate against it.
//!
//! ```text
//! cargo run --release --example bare_proxy -- 127.0.0.1:8081 http://127.0.0.1:9000
//! ```

use std::convert::Infallible;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8081".into());
    let upstream: Uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9000".into())
        .parse()?;
    let authority = upstream
        .authority()
        .cloned()
        .ok_or("upstream has no host")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let authority = authority.clone();
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let uri = Uri::builder()
                        .scheme("http")
                        .authority(authority)
                        .path_and_query(pq)
                        .build();
                    let Ok(uri) = uri else {
                        return Ok::<_, Infallible>(bad_gateway());
                    };
                    *req.uri_mut() = uri;
                    *req.version_mut() = http::Version::HTTP_11;
                    Ok(match client.request(req).await {
                        Ok(resp) => resp.map(http_body_util::Either::Left),
                        Err(_) => bad_gateway(),
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Body = http_body_util::Either<Incoming, http_body_util::Full<bytes::Bytes>>;

fn bad_gateway() -> http::Response<Body> {
    let mut r = http::Response::new(http_body_util::Either::Right(http_body_util::Full::new(
        bytes::Bytes::from_static(b"bad gateway\n"),
    )));
    *r.status_mut() = http::StatusCode::BAD_GATEWAY;
    r
}
