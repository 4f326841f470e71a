//! A fault-injecting HTTP/1.1 proxy in front of the S3 server (`S3_ENDPOINT`), for the
//! reliability tests: point the daemon at [`FaultProxy::url`] with `--endpoint-url`.
//!
//! It listens on `127.0.0.1:<random port>`, run as [`super::standin`] says (keep-alive), and
//! forwards each request (method, target, headers and body as received, so SigV4 signatures
//! stay valid) over a fresh upstream connection with hyper's client. The upstream's answer
//! is read whole and sent on with a Content-Length, unless a rule injects a fault:
//!
//! - [`Fault::Reset`]: the connection is reset (RST) without an answer;
//! - [`Fault::Delay`]: the request is held for a while, then forwarded;
//! - [`Fault::Error`]: an S3 error document (`SlowDown`, `InternalError`, ...) with a request
//!   id (`x-amz-request-id` and `<RequestId>`: `faultproxy-N`), not forwarded;
//! - [`Fault::CloseEarly`]: the full Content-Length is announced, part of the body sent, and
//!   the connection closed;
//! - [`Fault::ShortBody`] / [`Fault::LongBody`]: a body shorter / longer than the upstream's,
//!   with a Content-Length that matches it (the framing is right, the length is not);
//! - [`Fault::Corrupt`]: some body bytes flipped, same length (undetectable without TLS or
//!   checksums: used to show the tests' SHA-256 checks do catch wrong bytes);
//! - [`Fault::MangleXml`]: the body cut in half with a matching Content-Length (unparseable
//!   XML for a LIST);
//! - [`Fault::WrongEtag`], [`Fault::WrongRange`]: the `ETag` / `Content-Range` header changed;
//! - [`Fault::Stall`]: headers and part of the body sent, then silence (connection open);
//! - [`Fault::Trickle`]: the body sent a few bytes at a time, slowly.
//!
//! Rules ([`Rule`]) match on method, path, query and the presence of a Range header, and
//! fire on a schedule: after `skip` matching requests, every `every`-th one, at most `times`.
//! The first rule that fires wins. Every request is recorded ([`Seen`]).
//!
//! The proxy stops (closing open connections) when dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::ext::ReasonPhrase;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use s3_oidc_mount::http::serve::{self, Body, Conn};
use tokio::net::TcpStream;

use super::standin::{Port, StandIn, target};

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Reset,
    Delay(Duration),
    /// An S3 error answer: status and code (503 `SlowDown`, 500 `InternalError`).
    Error(u16, &'static str),
    /// Announce the whole body, send this fraction of it (0.0..1.0), close.
    CloseEarly(f64),
    ShortBody,
    LongBody(usize),
    Corrupt,
    MangleXml,
    WrongEtag,
    WrongRange,
    /// Send the head and this fraction of the body, then nothing for this long, then close.
    Stall(f64, Duration),
    /// Send the body `bytes` at a time, one piece every `every`.
    Trickle {
        bytes: usize,
        every: Duration,
    },
}

impl Fault {
    pub fn slow_down() -> Fault {
        Fault::Error(503, "SlowDown")
    }

    pub fn internal_error() -> Fault {
        Fault::Error(500, "InternalError")
    }
}

/// Which requests a rule applies to and when it fires.
#[derive(Clone, Debug)]
pub struct Rule {
    pub fault: Fault,
    /// `GET`, `HEAD`, ...; `None`: any.
    pub method: Option<String>,
    /// A substring of the path (URL-encoded, as sent); `None`: any.
    pub path: Option<String>,
    /// A substring of the query (e.g. `list-type=2` for ListObjectsV2); `None`: any.
    pub query: Option<String>,
    /// `Some(true)`: only requests with a Range header; `Some(false)`: only without.
    pub ranged: Option<bool>,
    /// Matching requests let through before the first fault.
    pub skip: u64,
    /// Then every `every`-th matching request gets the fault (1: all of them).
    pub every: u64,
    /// At most this many faults (`None`: no limit).
    pub times: Option<u64>,
}

impl Rule {
    /// Every request, from now on.
    pub fn all(fault: Fault) -> Rule {
        Rule {
            fault,
            method: None,
            path: None,
            query: None,
            ranged: None,
            skip: 0,
            every: 1,
            times: None,
        }
    }

    /// Ranged GETs (object reads) only.
    pub fn gets(fault: Fault) -> Rule {
        Rule {
            method: Some("GET".into()),
            ranged: Some(true),
            ..Rule::all(fault)
        }
    }

    /// ListObjectsV2 requests only.
    pub fn lists(fault: Fault) -> Rule {
        Rule {
            method: Some("GET".into()),
            query: Some("list-type=2".into()),
            ..Rule::all(fault)
        }
    }

    pub fn path(mut self, p: &str) -> Rule {
        self.path = Some(p.into());
        self
    }

    pub fn skip(mut self, n: u64) -> Rule {
        self.skip = n;
        self
    }

    pub fn every(mut self, n: u64) -> Rule {
        self.every = n.max(1);
        self
    }

    pub fn times(mut self, n: u64) -> Rule {
        self.times = Some(n);
        self
    }

    fn matches(&self, r: &Request<Bytes>) -> bool {
        let (path, query) = (r.uri().path(), r.uri().query().unwrap_or(""));
        self.method
            .as_ref()
            .is_none_or(|m| m == r.method().as_str())
            && self.path.as_ref().is_none_or(|p| path.contains(p.as_str()))
            && self
                .query
                .as_ref()
                .is_none_or(|q| query.contains(q.as_str()))
            && self
                .ranged
                .is_none_or(|want| want == r.headers().contains_key(header::RANGE))
    }
}

struct Armed {
    rule: Rule,
    seen: u64,
    fired: u64,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub n: u64,
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    /// Status of the answer (0: none was sent, e.g. a reset).
    pub status: u16,
    pub fault: Option<Fault>,
}

struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Vec<Armed>>,
    seen: Mutex<Vec<Seen>>,
    next: AtomicU64,
}

pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: StandIn,
}

impl FaultProxy {
    /// A proxy in front of `S3_ENDPOINT`.
    pub fn start() -> FaultProxy {
        let ep = super::endpoint();
        let hostport = ep
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let upstream: SocketAddr = hostport
            .parse()
            .unwrap_or_else(|e| panic!("S3_ENDPOINT {ep:?} is not http://IP:PORT: {e}"));
        let port = Port::take();
        let addr = port.addr();
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        });
        let sh = shared.clone();
        let server = port.serve("fault-proxy", Duration::from_secs(120), move |req| {
            handle(sh.clone(), req)
        });
        FaultProxy {
            shared,
            addr,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`: the value for `--endpoint-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule (after the existing ones).
    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(Armed {
            rule,
            seen: 0,
            fired: 0,
        });
    }

    /// Removes every rule: requests are forwarded untouched again.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// Requests that got a fault.
    pub fn fault_count(&self) -> usize {
        let seen = self.shared.seen.lock().unwrap();
        seen.iter().filter(|s| s.fault.is_some()).count()
    }

    /// Ranged GETs received so far.
    pub fn get_count(&self) -> usize {
        let seen = self.shared.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.method == "GET" && s.range.is_some())
            .count()
    }

    pub fn connection_count(&self) -> u64 {
        self.server.connections()
    }
}

/// The upstream's answer, read whole.
struct Upstream {
    status: StatusCode,
    reason: Option<ReasonPhrase>,
    /// Without Content-Length, Transfer-Encoding and Connection.
    headers: HeaderMap,
    /// Content-Length of a HEAD answer (which has no body).
    head_length: Option<HeaderValue>,
    body: Vec<u8>,
}

/// Answers one request, recording it.
async fn handle(shared: Arc<Shared>, req: Request<Bytes>) -> Response<Body> {
    let n = shared.next.fetch_add(1, Ordering::Relaxed);
    let fault = pick(&shared, &req);
    let mut seen = Seen {
        n,
        method: req.method().to_string(),
        target: target(&req),
        range: req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status: 0,
        fault: fault.clone(),
    };
    // Recorded now, so a request held by a delay or stall counts while it is held.
    let index = {
        let mut all = shared.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    let resp = answer(&shared, &req, n, fault, &mut seen).await;
    shared.seen.lock().unwrap()[index].status = seen.status;
    resp
}

/// The fault for this request, if a rule fires.
fn pick(shared: &Shared, req: &Request<Bytes>) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap();
    let mut chosen = None;
    for a in rules.iter_mut() {
        if !a.rule.matches(req) {
            continue;
        }
        a.seen += 1;
        if chosen.is_some() || a.seen <= a.rule.skip {
            continue;
        }
        let due = (a.seen - a.rule.skip - 1).is_multiple_of(a.rule.every);
        if due && a.rule.times.is_none_or(|t| a.fired < t) {
            a.fired += 1;
            chosen = Some(a.rule.fault.clone());
        }
    }
    chosen
}

/// The answer to one request: a fault, or the upstream's answer (perhaps altered).
async fn answer(
    shared: &Shared,
    req: &Request<Bytes>,
    n: u64,
    fault: Option<Fault>,
    seen: &mut Seen,
) -> Response<Body> {
    let rid = format!("faultproxy-{n}");
    match &fault {
        Some(Fault::Reset) => {
            return match req.extensions().get::<Conn>() {
                Some(conn) => conn.reset(),
                None => plain(StatusCode::INTERNAL_SERVER_ERROR, "no connection to reset"),
            };
        }
        Some(Fault::Error(status, code)) => {
            seen.status = *status;
            let body = if req.method() == Method::HEAD {
                String::new()
            } else {
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                     <Message>injected by the test fault proxy</Message>\
                     <RequestId>{rid}</RequestId><HostId>faultproxy</HostId></Error>"
                )
            };
            let mut r = Response::new(serve::full(body));
            *r.status_mut() =
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason: &'static [u8] = if *status == 503 {
                b"Slow Down"
            } else {
                b"Error"
            };
            r.extensions_mut().insert(ReasonPhrase::from_static(reason));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            );
            if let Ok(v) = HeaderValue::from_str(&rid) {
                h.insert("x-amz-request-id", v);
            }
            return r;
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }
    let mut up = match forward(shared.upstream, req).await {
        Ok(r) => r,
        Err(e) => {
            seen.status = 502;
            let mut r = plain(StatusCode::BAD_GATEWAY, e);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    seen.status = up.status.as_u16();
    let full = up.body.len();
    match &fault {
        Some(Fault::ShortBody) => up.body.truncate(full / 2),
        Some(Fault::LongBody(extra)) => up.body.extend(std::iter::repeat_n(b'#', *extra)),
        Some(Fault::Corrupt) => {
            for i in (0..up.body.len()).step_by(997) {
                up.body[i] ^= 0x5a;
            }
        }
        Some(Fault::MangleXml) => up.body.truncate(full / 2),
        Some(Fault::WrongEtag) => {
            up.headers.insert(
                header::ETAG,
                HeaderValue::from_static("\"0123456789abcdef\""),
            );
        }
        Some(Fault::WrongRange) => {
            if let Some(cr) = up
                .headers
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
            {
                // bytes A-B/T -> bytes A+1-B+1/T
                if let Ok(v) = HeaderValue::from_str(&shift_range(cr)) {
                    up.headers.insert(header::CONTENT_RANGE, v);
                }
            }
        }
        _ => {}
    }
    let part = |f: f64| ((full as f64 * f) as usize).min(full);
    let conn = req.extensions().get::<Conn>().cloned();
    let (body, announced) = match (&fault, &up.head_length, conn) {
        (_, Some(l), _) => (serve::empty(), Some(l.clone())),
        (Some(Fault::CloseEarly(f)), None, Some(conn)) => {
            let part = Bytes::from(up.body).slice(..part(*f));
            (cut(part, conn, Duration::ZERO), Some(full.into()))
        }
        (Some(Fault::Stall(f, d)), None, Some(conn)) => {
            let part = Bytes::from(up.body).slice(..part(*f));
            (cut(part, conn, *d), Some(full.into()))
        }
        (Some(Fault::Trickle { bytes, every }), None, _) => {
            let every = *every;
            let len = up.body.len();
            let pieces: Vec<Bytes> = Bytes::from(up.body)
                .chunks((*bytes).max(1))
                .map(Bytes::copy_from_slice)
                .collect();
            // One piece, then a pause before each next one.
            let stream = futures::stream::iter(pieces.into_iter().enumerate()).then(
                move |(i, piece)| async move {
                    if i > 0 {
                        tokio::time::sleep(every).await;
                    }
                    Ok(piece)
                },
            );
            (serve::stream(stream), Some(len.into()))
        }
        // hyper announces the length of a whole body itself.
        _ => (serve::full(up.body), None),
    };
    let mut r = Response::new(body);
    *r.status_mut() = up.status;
    *r.headers_mut() = up.headers;
    if let Some(l) = announced {
        r.headers_mut().insert(header::CONTENT_LENGTH, l);
    }
    if let Some(reason) = up.reason {
        r.extensions_mut().insert(reason);
    }
    r
}

/// A body that sends `part` and, once it is on the wire and `wait` has passed, ends the
/// connection: less than the announced Content-Length arrives.
fn cut(part: Bytes, conn: Conn, wait: Duration) -> Body {
    let sent = futures::stream::once(async move { Ok(part) });
    let then = futures::stream::once(async move {
        conn.flushed().await;
        tokio::time::sleep(wait).await;
        Err(std::io::Error::other("cut short by the fault proxy"))
    });
    serve::stream(sent.chain(then))
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(serve::full(text.into()));
    *r.status_mut() = status;
    r
}

fn shift_range(cr: &str) -> String {
    let parse = || -> Option<String> {
        let rest = cr.strip_prefix("bytes ")?;
        let (span, total) = rest.split_once('/')?;
        let (a, b) = span.split_once('-')?;
        let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
        Some(format!("bytes {}-{}/{total}", a + 1, b + 1))
    };
    parse().unwrap_or_else(|| "bytes 1-1/2".into())
}

/// Sends the request as it came over a fresh connection (with `Connection: close` so it ends
/// with the answer) and reads the whole answer.
async fn forward(upstream: SocketAddr, req: &Request<Bytes>) -> Result<Upstream, String> {
    let tcp = TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connect {upstream}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    tokio::spawn(conn);
    let mut out = Request::new(Full::new(req.body().clone()));
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.headers_mut() = req.headers().clone();
    out.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let resp = send
        .send_request(out)
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    let (mut parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("upstream body cut: {e}"))?
        .to_bytes()
        .to_vec();
    let length = parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.remove(header::CONNECTION);
    Ok(Upstream {
        status: parts.status,
        reason: parts.extensions.remove::<ReasonPhrase>(),
        headers: parts.headers,
        head_length: length.filter(|_| req.method() == Method::HEAD),
        body,
    })
}
