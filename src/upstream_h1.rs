//! One HTTP/1.1 exchange on an upstream connection, written and read in place.
//!
//! The request's head is written with one write from a buffer the connection keeps, its
//! body (when it has one) follows with `Content-Length` or chunked framing, and the
//! response's head is parsed (`httparse`) straight out of the connection's read buffer:
//! its header values share that buffer, and the body is decoded from it as the server
//! polls it. No task, channel or wake-up stands between the request and its connection,
//! which is where hyper's connection-level client spends its time (see
//! docs/benchmarks.md, eighth round).
//!
//! Framing follows RFC 9112 §6: a response to `HEAD`, and a 1xx, 204 or 304 response,
//! has no body; a `Transfer-Encoding` ending in `chunked` is decoded (and overrides any
//! `Content-Length`, and the connection is then not reused); a valid `Content-Length` is
//! a length; anything else is read until the upstream closes. Interim responses (100,
//! 103) are skipped. Responses that cannot be framed safely are errors, never guessed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// At most this many headers in a response head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// A response head (or a chunked body's trailers) longer than this is refused.
const MAX_HEAD: usize = 64 * 1024 - 1;
/// A chunk-size line (with its extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Each read asks for at least this much room in the read buffer...
const READ_ROOM: usize = 8 * 1024;
/// ...and up to this much while reads keep filling it (a large body).
const READ_ROOM_MAX: usize = 256 * 1024;

/// Boxed errors of a client's request body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An open upstream connection, between exchanges or in one.
pub(crate) struct Conn<T> {
    pub(crate) io: T,
    /// Bytes read and not yet consumed.
    pub(crate) rbuf: BytesMut,
    /// The request head being written; kept, with its capacity, between requests.
    wbuf: Vec<u8>,
    /// The room the next read asks for: doubled while reads fill it, back to
    /// [`READ_ROOM`] after one that does not.
    room: usize,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The upstream closed the connection before a byte of the response; `stale` when
    /// no byte of the request's body had been taken either, so the request may be sent
    /// again on another connection.
    #[error("the upstream closed the connection before answering")]
    Closed { stale: bool },
    /// Reading or writing failed.
    #[error("upstream connection failed: {0}")]
    Io(#[source] io::Error),
    /// The client's request body failed (bad chunked framing, a reset): the client's
    /// error, not the upstream's.
    #[error("the client's request body failed: {0}")]
    ClientBody(#[source] BoxError),
    /// The response cannot be read as HTTP/1.1.
    #[error("malformed response from the upstream: {0}")]
    Malformed(&'static str),
}

/// The parsed head of a response, its body's framing, and whether the connection can
/// serve another request once the body is read.
pub(crate) struct ResponseHead {
    pub(crate) response: http::response::Parts,
    pub(crate) framing: Framing,
    pub(crate) reusable: bool,
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes.
    Close,
    /// 101: the connection now carries another protocol.
    Upgrade,
}

impl<T> Conn<T> {
    pub(crate) fn new(io: T) -> Conn<T> {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_ROOM),
            wbuf: Vec::with_capacity(1024),
            room: READ_ROOM,
        }
    }

    /// Lets go of buffers a large answer or request head grew, before the connection
    /// waits in the pool (its read buffer is empty then).
    pub(crate) fn shrink(&mut self) {
        if self.rbuf.capacity() > 2 * READ_ROOM && self.rbuf.is_empty() {
            self.rbuf = BytesMut::with_capacity(READ_ROOM);
        }
        if self.wbuf.capacity() > 16 * 1024 {
            self.wbuf = Vec::with_capacity(1024);
        }
        self.room = READ_ROOM;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    /// Reads more into the read buffer: the number of bytes read, 0 at the end.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < self.room / 2 {
            self.rbuf.reserve(self.room);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf);
        if let Poll::Ready(Ok(n)) = read {
            // A large body arrives in fewer, larger reads; a small answer keeps a small
            // buffer.
            self.room = if n == spare {
                (self.room * 2).min(READ_ROOM_MAX)
            } else {
                READ_ROOM
            };
        }
        read
    }

    /// Whether a connection that sat in the pool still looks usable: nothing has
    /// arrived on it (an unasked-for byte, or the upstream's close). Costs no system
    /// call unless the runtime has seen the socket become readable.
    pub(crate) fn looks_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(self.poll_fill(&mut cx), Poll::Pending)
    }

    /// Sends `req` and reads the response's head. Its URI is the request target as
    /// sent (origin form); its headers are sent as they are, apart from the body's
    /// framing, which this sets. Its body is taken as it is sent.
    pub(crate) async fn exchange<B>(
        &mut self,
        req: &mut http::Request<B>,
    ) -> Result<ResponseHead, ExchangeError>
    where
        B: Body + Unpin,
        B::Data: Buf,
        B::Error: Into<BoxError>,
    {
        let body_framing = if req.body().is_end_stream() {
            BodyFraming::None
        } else {
            match req.body().size_hint().exact() {
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::Chunked,
            }
        };
        encode_head(&mut self.wbuf, req, body_framing);
        let mut body_started = false;
        let sent = async {
            self.io.write_all(&self.wbuf).await?;
            if body_framing != BodyFraming::None {
                body_started = true;
                self.write_body(req.body_mut(), body_framing).await?;
            }
            self.io.flush().await
        }
        .await;
        if let Err(e) = sent {
            return Err(match e.downcast::<ClientBodyError>() {
                Ok(ClientBodyError(e)) => ExchangeError::ClientBody(e),
                // The upstream may have answered early (an error before reading the
                // whole body) and closed: that answer is the response.
                Err(e) => match self.read_head(req.method(), body_started).await {
                    Ok(mut r) => {
                        r.reusable = false;
                        return Ok(r);
                    }
                    Err(ExchangeError::Closed { .. }) if is_reset(&e) => ExchangeError::Closed {
                        stale: !body_started,
                    },
                    Err(_) => ExchangeError::Io(e),
                },
            });
        }
        self.read_head(req.method(), body_started).await
    }

    /// Streams the request body upstream with `framing`.
    async fn write_body<B>(&mut self, body: &mut B, framing: BodyFraming) -> io::Result<()>
    where
        B: Body + Unpin,
        B::Data: Buf,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| io::Error::other(ClientBodyError(e.into())))?;
            match frame.into_data() {
                Ok(mut data) => {
                    if !data.has_remaining() {
                        continue;
                    }
                    if framing == BodyFraming::Chunked {
                        let size = format!("{:x}\r\n", data.remaining());
                        let mut chunk = size.as_bytes().chain(data).chain(&b"\r\n"[..]);
                        self.io.write_all_buf(&mut chunk).await?;
                    } else {
                        self.io.write_all_buf(&mut data).await?;
                    }
                }
                Err(frame) => {
                    if let (BodyFraming::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                        let mut out = b"0\r\n".to_vec();
                        encode_headers(&mut out, &trailers);
                        out.extend_from_slice(b"\r\n");
                        return self.io.write_all(&out).await;
                    }
                }
            }
        }
        if framing == BodyFraming::Chunked {
            self.io.write_all(b"0\r\n\r\n").await?;
        }
        Ok(())
    }

    /// Reads until a final response head is complete, skipping interim (1xx) ones.
    async fn read_head(
        &mut self,
        method: &Method,
        body_started: bool,
    ) -> Result<ResponseHead, ExchangeError> {
        let mut got_any = false;
        loop {
            if !self.rbuf.is_empty() {
                got_any = true;
                if let Some(head) = parse_head(&mut self.rbuf, method)? {
                    return Ok(head);
                }
                if self.rbuf.len() > MAX_HEAD {
                    return Err(ExchangeError::Malformed("response head too large"));
                }
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(|e| {
                    if !got_any && is_reset(&e) {
                        ExchangeError::Closed {
                            stale: !body_started,
                        }
                    } else {
                        ExchangeError::Io(e)
                    }
                })?;
            if n == 0 {
                return Err(if got_any {
                    ExchangeError::Malformed("connection closed inside the response head")
                } else {
                    ExchangeError::Closed {
                        stale: !body_started,
                    }
                });
            }
        }
    }
}

/// A client body's error, carried through `io::Error` to tell it from the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ClientBodyError(BoxError);

/// Whether an I/O error says the peer closed or reset the connection.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// How the request's body is framed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Writes the request line and headers into `out` (cleared first), with `framing`'s
/// header in place of the client's.
fn encode_head<B>(out: &mut Vec<u8>, req: &http::Request<B>, framing: BodyFraming) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        // The framing is this hop's: set below from the body as it is sent.
        if framing != BodyFraming::None
            && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING)
        {
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn encode_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `buf`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Parses a complete response head at the front of `rbuf` and takes it out: `None`
/// while it is incomplete. An interim (1xx other than 101) response is taken out and
/// skipped.
fn parse_head(rbuf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, ExchangeError> {
    loop {
        // Where each header's name and value lie in the head (offsets from its start;
        // a head is at most MAX_HEAD < 64 KiB long).
        let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
        let (len, code, minor, count) = {
            // Not initialized first: httparse writes what it parses (5 KB less to clear).
            let mut hs = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut r, rbuf, &mut hs);
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(ExchangeError::Malformed("more than 100 headers"));
                }
                Err(_) => return Err(ExchangeError::Malformed("not an HTTP/1.x response head")),
            };
            if len > MAX_HEAD {
                return Err(ExchangeError::Malformed("response head too large"));
            }
            let base = rbuf.as_ptr() as usize;
            let count = r.headers.len();
            let at = |p: *const u8, extra: usize| (p as usize - base + extra) as u16;
            for (span, h) in spans.iter_mut().zip(r.headers.iter()) {
                // Within the head, shorter than 64 KiB: the offsets fit.
                *span = (
                    at(h.name.as_ptr(), 0),
                    at(h.name.as_ptr(), h.name.len()),
                    at(h.value.as_ptr(), 0),
                    at(h.value.as_ptr(), h.value.len()),
                );
            }
            let code = r.code.unwrap_or(0);
            (len, code, r.version.unwrap_or(1), count)
        };
        let status = StatusCode::from_u16(code)
            .map_err(|_| ExchangeError::Malformed("invalid status code"))?;
        let head = rbuf.split_to(len).freeze();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
        let mut headers = HeaderMap::with_capacity(count);
        let mut length: Option<u64> = None;
        let mut chunked: Option<bool> = None;
        // HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 keeps alive unless asked
        // to close.
        let (mut close_token, mut keep_alive_token) = (false, false);
        let mut keep_connection_header = false;
        for &(ns, ne, vs, ve) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
                .map_err(|_| ExchangeError::Malformed("invalid header name"))?;
            let raw = &head[vs as usize..ve as usize];
            if name == header::CONTENT_LENGTH {
                let n = parse_content_length(raw)
                    .ok_or(ExchangeError::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ExchangeError::Malformed("conflicting Content-Length"));
                }
                length = Some(n);
            } else if name == header::TRANSFER_ENCODING {
                // The last coding of the last header decides.
                let last = raw.rsplit(|b| *b == b',').next().unwrap_or(b"");
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !upgrade {
                    continue;
                }
            } else if name == header::CONNECTION {
                for token in raw.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close_token = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"upgrade") {
                        // It names other headers: hop-by-hop removal needs it.
                        keep_connection_header = true;
                    }
                }
                if !upgrade && !keep_connection_header {
                    continue;
                }
            } else if !upgrade
                && name != header::TRAILER
                && crate::headers::is_hop_by_hop_name(name.as_str())
            {
                // Keep-Alive, Proxy-Connection, Upgrade, TE...: this hop's only (the list
                // `headers::remove_hop_by_hop` removes). `Trailer` stays: it names the
                // trailers passed on (RFC 9110 §6.6.2), and hyper's server sends only
                // the trailers it names.
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice_ref(raw))
                .map_err(|_| ExchangeError::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        let close = close_token || (minor == 0 && !keep_alive_token);
        let mut reusable = !close;
        let framing = if upgrade {
            Framing::Upgrade
        } else if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Empty
        } else if let Some(chunked) = chunked {
            // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and such a
            // message may be an attempt at smuggling: the connection is not reused.
            if length.is_some() {
                headers.remove(header::CONTENT_LENGTH);
                reusable = false;
            }
            if chunked {
                Framing::Chunked
            } else {
                reusable = false;
                Framing::Close
            }
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            reusable = false;
            Framing::Close
        };
        if keep_connection_header {
            crate::headers::remove_hop_by_hop(&mut headers);
        }
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        *response.headers_mut() = headers;
        let (response, ()) = response.into_parts();
        return Ok(Some(ResponseHead {
            response,
            framing,
            reusable,
        }));
    }
}

/// A `Content-Length` value: digits, or a list of equal ones (RFC 9110 §8.6).
fn parse_content_length(raw: &[u8]) -> Option<u64> {
    let mut found: Option<u64> = None;
    for part in raw.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// Where a response body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    /// This many bytes are left.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk: this many bytes are left.
    ChunkData(u64),
    /// After a chunk's data: its CRLF.
    ChunkEnd,
    /// After the last chunk: trailers, or the final CRLF.
    Trailers,
    /// Until the upstream closes.
    Close,
    /// The body has ended.
    Done,
}

impl Decode {
    pub(crate) fn of(framing: Framing) -> Decode {
        match framing {
            Framing::Empty | Framing::Upgrade | Framing::Length(0) => Decode::Done,
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::ChunkSize,
            Framing::Close => Decode::Close,
        }
    }
}

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("upstream connection failed inside the response body: {0}")]
    Io(#[source] io::Error),
    #[error("the upstream closed the connection before the end of the response body")]
    Truncated,
    #[error("malformed chunked response body: {0}")]
    Chunk(&'static str),
}

/// Decodes the next frame of a response body from `conn`, reading as needed. Returns
/// `Ready(None)` once `state` is `Done`.
pub(crate) fn poll_body<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<T>,
    state: &mut Decode,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    loop {
        match *state {
            Decode::Done => return Poll::Ready(None),
            Decode::Length(left) | Decode::ChunkData(left) if !conn.rbuf.is_empty() => {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(conn.rbuf.len());
                let left = left - take as u64;
                *state = match (*state, left) {
                    (Decode::Length(_), 0) => Decode::Done,
                    (Decode::Length(_), n) => Decode::Length(n),
                    (_, 0) => Decode::ChunkEnd,
                    (_, n) => Decode::ChunkData(n),
                };
                return Poll::Ready(Some(Ok(Frame::data(conn.rbuf.split_to(take).freeze()))));
            }
            Decode::Close if !conn.rbuf.is_empty() => {
                return Poll::Ready(Some(Ok(Frame::data(conn.rbuf.split().freeze()))));
            }
            Decode::ChunkSize => {
                if let Some(end) = find_crlf(&conn.rbuf) {
                    let size = parse_chunk_size(&conn.rbuf[..end])?;
                    conn.rbuf.advance(end + 2);
                    *state = if size == 0 {
                        Decode::Trailers
                    } else {
                        Decode::ChunkData(size)
                    };
                    continue;
                }
                if conn.rbuf.len() > MAX_CHUNK_LINE {
                    return Poll::Ready(Some(Err(BodyError::Chunk("chunk-size line too long"))));
                }
            }
            Decode::ChunkEnd if conn.rbuf.len() >= 2 => {
                if &conn.rbuf[..2] != b"\r\n" {
                    return Poll::Ready(Some(Err(BodyError::Chunk("no CRLF after a chunk"))));
                }
                conn.rbuf.advance(2);
                *state = Decode::ChunkSize;
                continue;
            }
            Decode::Trailers => {
                if conn.rbuf.starts_with(b"\r\n") {
                    conn.rbuf.advance(2);
                    *state = Decode::Done;
                    return Poll::Ready(None);
                }
                if let Some(end) = find(&conn.rbuf, b"\r\n\r\n") {
                    let trailers = parse_trailers(&conn.rbuf[..end + 4])?;
                    conn.rbuf.advance(end + 4);
                    *state = Decode::Done;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                if conn.rbuf.len() > MAX_HEAD {
                    return Poll::Ready(Some(Err(BodyError::Chunk("trailers too large"))));
                }
            }
            _ => {}
        }
        match std::task::ready!(conn.poll_fill(cx)) {
            Ok(0) if *state == Decode::Close => {
                *state = Decode::Done;
                return Poll::Ready(None);
            }
            Ok(0) => return Poll::Ready(Some(Err(BodyError::Truncated))),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Some(Err(BodyError::Io(e)))),
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    find(buf, b"\r\n")
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// The size of a chunk from its line (without the CRLF): hex digits, then optional
/// extensions after `;` (ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() {
        return Err(BodyError::Chunk("no chunk size"));
    }
    if digits.len() > 15 {
        return Err(BodyError::Chunk("chunk size too large"));
    }
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(BodyError::Chunk("invalid chunk-size line"));
    }
    Ok(digits.iter().fold(0u64, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n * 16 + u64::from(v)
    }))
}

fn parse_trailers(block: &[u8]) -> Result<HeaderMap, BodyError> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(block, &mut hs) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(BodyError::Chunk("malformed trailers")),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| BodyError::Chunk("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| BodyError::Chunk("invalid trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Reads `answer` (arriving `piece` bytes at a time) as the response to a `method`
/// request, its body to the end, checking what must hold whatever the bytes are: the
/// fuzz target `upstream_response` (`crate::fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) async fn read_answer(answer: &[u8], piece: usize, method: Method) {
    let mut conn = Conn::new(Pieces {
        left: answer,
        piece,
    });
    let Ok(head) = conn.read_head(&method, false).await else {
        return;
    };
    let mut state = Decode::of(head.framing);
    let mut total: u64 = 0;
    while let Some(frame) = std::future::poll_fn(|cx| poll_body(&mut conn, &mut state, cx)).await {
        match frame {
            Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => return,
        }
    }
    match head.framing {
        Framing::Length(n) => assert_eq!(total, n, "a length-framed body read to its end"),
        Framing::Empty | Framing::Upgrade => assert_eq!(total, 0),
        Framing::Chunked | Framing::Close => {}
    }
}

/// A byte slice read `piece` bytes at a time; writes vanish.
#[cfg(any(test, feature = "fuzzing"))]
struct Pieces<'a> {
    left: &'a [u8],
    piece: usize,
}

#[cfg(any(test, feature = "fuzzing"))]
impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.piece.min(self.left.len()).min(buf.remaining());
        let (now, later) = self.left.split_at(n);
        buf.put_slice(now);
        self.left = later;
        Poll::Ready(Ok(()))
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl AsyncWrite for Pieces<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn get<B>(method: Method, target: &str, body: B) -> http::Request<B> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(target)
            .header("host", "up")
            .body(body)
            .unwrap();
        req.headers_mut()
            .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        req
    }

    /// Collects a body decoded from `conn` with `framing`.
    async fn body_of(
        conn: &mut Conn<DuplexStream>,
        framing: Framing,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), BodyError> {
        let mut state = Decode::of(framing);
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| poll_body(conn, &mut state, cx)).await {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        Ok((data, trailers))
    }

    /// An exchange against `answer`, returning what the upstream read and the result.
    async fn run(
        mut req: http::Request<Full<Bytes>>,
        answer: &'static [u8],
    ) -> (Vec<u8>, Result<(ResponseHead, Vec<u8>), String>) {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(ours);
        let upstream = tokio::spawn(async move {
            let mut seen = vec![0u8; 64 * 1024];
            let n = theirs.read(&mut seen).await.unwrap();
            seen.truncate(n);
            theirs.write_all(answer).await.unwrap();
            drop(theirs);
            seen
        });
        let result = match conn.exchange(&mut req).await {
            Ok(h) => match body_of(&mut conn, h.framing).await {
                Ok((b, _)) => Ok((h, b)),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        (upstream.await.unwrap(), result)
    }

    #[tokio::test]
    async fn writes_the_head_and_reads_a_length_framed_answer() {
        let (seen, r) = run(
            get(Method::GET, "/a?b=1", Full::new(Bytes::new())),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello",
        )
        .await;
        assert_eq!(
            String::from_utf8(seen).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nhost: up\r\n\r\n",
            "the client's transfer-encoding is not forwarded"
        );
        let (h, body) = r.unwrap();
        assert_eq!(h.response.status, 200);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.reusable);
        assert_eq!(body, b"hello");
        assert_eq!(h.response.headers["x-a"], "1");
        assert_eq!(h.response.headers["content-length"], "5");
        assert!(!h.response.headers.contains_key("connection"));
    }

    #[tokio::test]
    async fn a_body_is_sent_with_its_length() {
        let (seen, r) = run(
            get(Method::POST, "/p", Full::new(Bytes::from_static(b"abc"))),
            b"HTTP/1.1 204 No Content\r\n\r\n",
        )
        .await;
        assert_eq!(
            String::from_utf8(seen).unwrap(),
            "POST /p HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert_eq!(r.unwrap().0.framing, Framing::Empty);
    }

    /// An upstream that reads the start of the request, answers 413 and closes.
    fn refusing_upstream(mut theirs: DuplexStream) -> tokio::task::JoinHandle<[u8; 64]> {
        tokio::spawn(async move {
            let mut start = [0u8; 64];
            theirs.read_exact(&mut start).await.unwrap();
            theirs
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            start
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_early_answer_is_read_though_the_body_cannot_be_sent() {
        // Through the write batching of the gateway's upstream connections: the
        // upstream's answer is the response, not the failed send. One body large enough
        // to be written directly, one streamed in pieces that are held and stall.
        let pieces = || {
            let chunks = (0..50).map(|_| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                    b'x';
                    4096
                ])))
            });
            http_body_util::Either::Right(http_body_util::StreamBody::new(
                futures_util::stream::iter(chunks),
            ))
        };
        let bodies = [
            http_body_util::Either::Left(Full::new(Bytes::from(vec![b'x'; 200_000]))),
            pieces(),
        ];
        for body in bodies {
            let (ours, theirs) = tokio::io::duplex(256);
            let mut conn = Conn::new(crate::batched_io::Batched::new(ours));
            let upstream = refusing_upstream(theirs);
            let mut req = http::Request::builder()
                .method(Method::POST)
                .uri("/upload")
                .header("host", "up")
                .body(body)
                .unwrap();
            let head =
                tokio::time::timeout(std::time::Duration::from_secs(5), conn.exchange(&mut req))
                    .await
                    .expect("no hang")
                    .unwrap();
            assert_eq!(head.response.status, 413);
            assert!(!head.reusable);
            assert!(
                upstream
                    .await
                    .unwrap()
                    .starts_with(b"POST /upload HTTP/1.1\r\n")
            );
        }
    }

    #[tokio::test]
    async fn chunked_answers_with_extensions_and_trailers() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Conn::new(ours);
        theirs
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n")
            .await
            .unwrap();
        let head = conn.read_head(&Method::GET, false).await.unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!head.response.headers.contains_key("transfer-encoding"));
        let (data, trailers) = body_of(&mut conn, head.framing).await.unwrap();
        assert_eq!(data, b"abc");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert!(conn.rbuf.is_empty());
    }

    #[tokio::test]
    async fn framing_rules() {
        async fn framing(answer: &'static [u8], method: Method) -> Result<(Framing, bool), String> {
            let (ours, mut theirs) = tokio::io::duplex(1024);
            let mut conn = Conn::new(ours);
            theirs.write_all(answer).await.unwrap();
            drop(theirs);
            conn.read_head(&method, false)
                .await
                .map(|h| (h.framing, h.reusable))
                .map_err(|e| e.to_string())
        }
        use Framing::*;
        let get = || Method::GET;
        // (answer, method, framing, reusable, why)
        let cases: [(&[u8], Method, Framing, bool, &str); 10] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", Method::HEAD, Empty, true, "HEAD"),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", get(), Empty, true, "304"),
            (b"HTTP/1.1 200 OK\r\n\r\n", get(), Close, false, "no length"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", get(), Length(3), false, "close"),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", get(), Length(3), false, "1.0"),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n", get(), Length(3), true, "1.0 keep-alive"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", get(), Length(3), true, "equal lengths"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", get(), Chunked, false, "TE overrides CL, and the connection is not reused"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", get(), Close, false, "TE not ending in chunked"),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", get(), Upgrade, true, "101"),
        ];
        for (answer, method, want, reusable, why) in cases {
            assert_eq!(framing(answer, method).await, Ok((want, reusable)), "{why}");
        }
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: 1",
        ] {
            assert!(
                framing(bad, get()).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            framing(b"", get()).await,
            Err(ExchangeError::Closed { stale: true }.to_string())
        );
    }

    #[tokio::test]
    async fn hop_by_hop_headers_of_an_answer_stay_behind() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Conn::new(ours);
        theirs
            .write_all(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: x-sum\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let h = conn.read_head(&Method::GET, false).await.unwrap();
        let names: Vec<&str> = h.response.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["trailer", "x-end", "content-length"]);
    }

    #[tokio::test]
    async fn a_connection_header_naming_others_removes_them() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Conn::new(ours);
        theirs
            .write_all(b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let h = conn.read_head(&Method::GET, false).await.unwrap();
        assert!(!h.response.headers.contains_key("x-hop"));
        assert!(!h.response.headers.contains_key("connection"));
        assert_eq!(h.response.headers["x-end"], "2");
    }

    #[tokio::test]
    async fn a_large_body_is_read_in_growing_pieces_and_the_buffer_shrinks_after() {
        const SIZE: usize = 4 << 20;
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut conn = Conn::new(ours);
        let writer = tokio::spawn(async move {
            theirs
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let chunk = vec![7u8; 1 << 16];
            for _ in 0..SIZE / chunk.len() {
                theirs.write_all(&chunk).await.unwrap();
            }
            theirs
        });
        let head = conn.read_head(&Method::GET, false).await.unwrap();
        let mut state = Decode::of(head.framing);
        let (mut total, mut largest) = (0, 0);
        while let Some(frame) =
            std::future::poll_fn(|cx| poll_body(&mut conn, &mut state, cx)).await
        {
            let n = frame.unwrap().into_data().unwrap().len();
            total += n;
            largest = largest.max(n);
        }
        assert_eq!(total, SIZE);
        assert!(
            largest > 4 * READ_ROOM,
            "reads did not grow: largest {largest}"
        );
        // A reservation may round the buffer up, never past twice the largest room.
        assert!(largest <= 2 * READ_ROOM_MAX, "largest {largest}");
        conn.shrink();
        assert!(conn.rbuf.capacity() <= 2 * READ_ROOM);
        assert_eq!(conn.room, READ_ROOM);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn broken_chunked_bodies_are_errors() {
        for (bad, what) in [
            (&b"zz\r\n"[..], "no chunk size"),
            (b"3\r\nabcX\r\n", "no CRLF"),
            (b"3\r\nab", "closed"),
            (b"1234567890abcdef0\r\n", "too large"),
        ] {
            let (ours, mut theirs) = tokio::io::duplex(1024);
            let mut conn = Conn::new(ours);
            theirs.write_all(bad).await.unwrap();
            drop(theirs);
            let e = body_of(&mut conn, Framing::Chunked).await.unwrap_err();
            assert!(e.to_string().contains(what), "{e} for {bad:?}");
        }
    }

    #[tokio::test]
    async fn an_empty_client_body_is_not_framed_and_a_streamed_one_is_chunked() {
        let head = get(Method::DELETE, "/d", ());
        let mut out = Vec::new();
        encode_head(&mut out, &head, BodyFraming::None);
        assert_eq!(out, b"DELETE /d HTTP/1.1\r\nhost: up\r\n\r\n");
        encode_head(&mut out, &head, BodyFraming::Chunked);
        assert_eq!(
            out,
            b"DELETE /d HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n"
        );

        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Conn::new(ours);
        let mut body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::from_static(b" world!"))),
        ]));
        conn.write_body(&mut body, BodyFraming::Chunked)
            .await
            .unwrap();
        drop(conn);
        let mut seen = Vec::new();
        theirs.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n");
    }
}
