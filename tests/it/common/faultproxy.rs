//! A fault-injecting HTTP/1.1 proxy in front of the S3 server (`S3_ENDPOINT`), for the
//! reliability tests: point the daemon at [`FaultProxy::url`] with `--endpoint-url`.
//!
//! It listens on `127.0.0.1:<random port>` on a thread of its own with its own tokio runtime,
//! serves several requests per client connection (keep-alive), and forwards each request
//! byte for byte (so SigV4 signatures stay valid) over a fresh upstream connection. The
//! upstream's answer is read whole (Content-Length or chunked) and sent on with a
//! Content-Length, unless a rule injects a fault:
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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

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

    fn matches(&self, r: &Request) -> bool {
        let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
        self.method.as_ref().is_none_or(|m| *m == r.method)
            && self.path.as_ref().is_none_or(|p| path.contains(p.as_str()))
            && self
                .query
                .as_ref()
                .is_none_or(|q| query.contains(q.as_str()))
            && self
                .ranged
                .is_none_or(|want| want == r.header("range").is_some())
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
    connections: AtomicU64,
}

pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            connections: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fault proxy runtime");
                rt.block_on(serve(listener, sh, stopped));
            })
            .expect("spawn fault proxy thread");
        FaultProxy {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
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
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                if let Ok((conn, _)) = accepted {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.set_nodelay(true);
                    tokio::spawn(connection(conn, shared.clone()));
                }
            }
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// The request as received (head and body), forwarded as it is.
    raw: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The upstream's answer, read whole.
struct Response {
    status: u16,
    reason: String,
    /// Without Content-Length, Transfer-Encoding and Connection.
    headers: Vec<(String, String)>,
    /// Content-Length of a HEAD answer (which has no body).
    head_length: Option<String>,
    body: Vec<u8>,
}

/// Serves requests on one client connection until it closes.
async fn connection(mut conn: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        let req =
            match tokio::time::timeout(Duration::from_secs(120), read_request(&mut conn, &mut buf))
                .await
            {
                Ok(Some(r)) => r,
                _ => return,
            };
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let fault = pick(&shared, &req);
        let mut seen = Seen {
            n,
            method: req.method.clone(),
            target: req.target.clone(),
            range: req.header("range").map(str::to_string),
            status: 0,
            fault: fault.clone(),
        };
        // Recorded now, so a request held by a delay or stall counts while it is held.
        let index = {
            let mut all = shared.seen.lock().unwrap();
            all.push(seen.clone());
            all.len() - 1
        };
        let keep_going = answer(&mut conn, &shared, &req, n, fault, &mut seen).await;
        shared.seen.lock().unwrap()[index].status = seen.status;
        if !keep_going {
            return;
        }
    }
}

/// The fault for this request, if a rule fires.
fn pick(shared: &Shared, req: &Request) -> Option<Fault> {
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

/// Answers one request; `false` when the connection must not be used again.
async fn answer(
    conn: &mut TcpStream,
    shared: &Shared,
    req: &Request,
    n: u64,
    fault: Option<Fault>,
    seen: &mut Seen,
) -> bool {
    let rid = format!("faultproxy-{n}");
    match &fault {
        Some(Fault::Reset) => {
            let _ = conn.set_zero_linger();
            return false;
        }
        Some(Fault::Error(status, code)) => {
            seen.status = *status;
            let body = if req.method == "HEAD" {
                Vec::new()
            } else {
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                     <Message>injected by the test fault proxy</Message>\
                     <RequestId>{rid}</RequestId><HostId>faultproxy</HostId></Error>"
                )
                .into_bytes()
            };
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/xml\r\nx-amz-request-id: {rid}\r\n\
                 Content-Length: {}\r\n\r\n",
                if *status == 503 { "Slow Down" } else { "Error" },
                body.len()
            );
            return conn.write_all(head.as_bytes()).await.is_ok()
                && conn.write_all(&body).await.is_ok();
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }
    let mut resp = match forward(shared.upstream, req).await {
        Ok(r) => r,
        Err(e) => {
            seen.status = 502;
            let head = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\n\r\n",
                e.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(e.as_bytes()).await;
            return false;
        }
    };
    seen.status = resp.status;
    let full = resp.body.len();
    match &fault {
        Some(Fault::ShortBody) => resp.body.truncate(full / 2),
        Some(Fault::LongBody(extra)) => resp.body.extend(std::iter::repeat_n(b'#', *extra)),
        Some(Fault::Corrupt) => {
            for i in (0..resp.body.len()).step_by(997) {
                resp.body[i] ^= 0x5a;
            }
        }
        Some(Fault::MangleXml) => resp.body.truncate(full / 2),
        Some(Fault::WrongEtag) => set_header(&mut resp.headers, "ETag", "\"0123456789abcdef\""),
        Some(Fault::WrongRange) => {
            if let Some(cr) = header(&resp.headers, "content-range").map(str::to_string) {
                // bytes A-B/T -> bytes A+1-B+1/T
                let shifted = shift_range(&cr);
                set_header(&mut resp.headers, "Content-Range", &shifted);
            }
        }
        _ => {}
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let announced = match (&fault, &resp.head_length) {
        (_, Some(l)) => l.clone(),
        (Some(Fault::CloseEarly(_)) | Some(Fault::Stall(..)), _) => full.to_string(),
        _ => resp.body.len().to_string(),
    };
    head.push_str(&format!("Content-Length: {announced}\r\n\r\n"));
    if conn.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let part = |f: f64| ((full as f64 * f) as usize).min(full);
    match &fault {
        Some(Fault::CloseEarly(f)) => {
            let _ = conn.write_all(&resp.body[..part(*f)]).await;
            let _ = conn.flush().await;
            let _ = conn.shutdown().await;
            false
        }
        Some(Fault::Stall(f, d)) => {
            let _ = conn.write_all(&resp.body[..part(*f)]).await;
            let _ = conn.flush().await;
            tokio::time::sleep(*d).await;
            false
        }
        Some(Fault::Trickle { bytes, every }) => {
            for piece in resp.body.chunks((*bytes).max(1)) {
                if conn.write_all(piece).await.is_err() {
                    return false;
                }
                tokio::time::sleep(*every).await;
            }
            true
        }
        _ => conn.write_all(&resp.body).await.is_ok(),
    }
}

fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    headers.push((name.to_string(), value.to_string()));
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

/// Reads one request (head, then `Content-Length` bytes of body); `buf` keeps bytes read
/// past it. `None` at EOF or on a request this proxy does not handle.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let end = read_head(conn, buf).await?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers = parse_headers(lines);
    if header(&headers, "transfer-encoding").is_some() {
        // The daemon only reads; a chunked upload is not expected here.
        return None;
    }
    let len: usize = header(&headers, "content-length").map_or(Some(0), |v| v.parse().ok())?;
    let total = end + 4 + len;
    fill(conn, buf, total).await?;
    let raw: Vec<u8> = buf.drain(..total).collect();
    Some(Request {
        method,
        target,
        headers,
        raw,
    })
}

/// Reads until `buf` holds a whole head; returns where it ends (the `\r\n\r\n`).
async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i);
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Option<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    while buf.len() < len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Sends the request as it came (with `Connection: close` so the upstream connection ends
/// with the answer) and reads the whole answer.
async fn forward(upstream: SocketAddr, req: &Request) -> Result<Response, String> {
    let mut up = TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connect {upstream}: {e}"))?;
    let _ = up.set_nodelay(true);
    let head_end = req
        .raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no head")?;
    let head = String::from_utf8_lossy(&req.raw[..head_end]);
    let mut out = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        let is_conn = line
            .split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("connection"));
        if i == 0 || !is_conn {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let io = |e: std::io::Error| format!("upstream: {e}");
    up.write_all(out.as_bytes()).await.map_err(io)?;
    up.write_all(&req.raw[head_end + 4..]).await.map_err(io)?;
    let mut buf = Vec::new();
    let end = read_head(&mut up, &mut buf)
        .await
        .ok_or("upstream closed before answering")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty answer")?;
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = parse_headers(lines);
    buf.drain(..end + 4);
    let length = header(&headers, "content-length").map(str::to_string);
    let chunked =
        header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    headers.retain(|(k, _)| {
        !["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h))
    });
    let no_body = req.method == "HEAD" || status == 204 || status == 304 || status < 200;
    let (body, head_length) = if no_body {
        (Vec::new(), length.filter(|_| req.method == "HEAD"))
    } else if chunked {
        (read_chunked(&mut up, buf).await?, None)
    } else if let Some(l) = length {
        let l: usize = l.parse().map_err(|_| "bad Content-Length")?;
        fill(&mut up, &mut buf, l)
            .await
            .ok_or("upstream body cut")?;
        buf.truncate(l);
        (buf, None)
    } else {
        up.read_to_end(&mut buf).await.map_err(io)?;
        (buf, None)
    };
    Ok(Response {
        status,
        reason,
        headers,
        head_length,
        body,
    })
}

async fn read_chunked(up: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let len = buf.len() + 1;
            fill(up, &mut buf, len).await.ok_or("chunked body cut")?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, if any, are dropped: the answer is resent with a Content-Length.
            return Ok(body);
        }
        fill(up, &mut buf, size + 2)
            .await
            .ok_or("chunked body cut")?;
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}
