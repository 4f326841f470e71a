//! An HTTP/1.1 proxy in front of RGW's STS endpoint (= `S3_ENDPOINT`), for the daemon's
//! credential tests: point the daemon at [`StsProxy::url`] with `--sts-endpoint-url`.
//!
//! It listens on `127.0.0.1:<random port>` on a thread of its own with its own tokio runtime
//! (like [`super::idp::Idp`]), serves several requests per connection (keep-alive; bodies read
//! by `Content-Length`), forwards each request to the upstream and answers with the upstream's
//! status and body. It records:
//! - every request: method, path and the form fields of the body, decoded
//!   ([`StsProxy::requests`]);
//! - every successful answer's `AccessKeyId`, `SecretAccessKey`, `SessionToken` and
//!   `Expiration` ([`StsProxy::issued`]), as RGW sent them and as the client got them.
//!
//! Controls:
//! - [`StsProxy::set_fail`]: answer every request with that HTTP status and an AWS-shaped
//!   `<ErrorResponse><Error><Code>ServiceUnavailable</Code>..` body, without forwarding;
//! - [`StsProxy::set_expiry_override`]: rewrite `<Expiration>` of successful answers to
//!   now + d (RFC 3339, `Z`), so the client believes the credentials expire soon (RGW still
//!   honours them for their real lifetime: only the client can refuse to use them).
//!
//! The proxy stops (closing open connections) when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::iam::xml_text;

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct StsRequest {
    pub at: SystemTime,
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// Form fields of the body (`application/x-www-form-urlencoded`), decoded, in order.
    pub fields: Vec<(String, String)>,
    /// Status of the answer given to the client (0 if none was given).
    pub status: u16,
    /// Whether the answer was injected by [`StsProxy::set_fail`] (not forwarded).
    pub injected: bool,
}

impl StsRequest {
    /// The first form field called `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Credentials of one successful answer.
#[derive(Clone, Debug)]
pub struct Issued {
    pub at: SystemTime,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// `<Expiration>` as the upstream sent it.
    pub expiration: String,
    /// `<Expiration>` as the client got it (differs under an expiry override).
    pub expiration_sent: String,
    /// The expiry the client was told, as a time.
    pub expiry_sent: SystemTime,
}

#[derive(Default)]
struct Record {
    connections: usize,
    requests: Vec<StsRequest>,
    issued: Vec<Issued>,
    upstream_errors: Vec<String>,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    fail: Mutex<Option<u16>>,
    expiry_override: Mutex<Option<Duration>>,
    record: Mutex<Record>,
}

pub struct StsProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StsProxy {
    /// A proxy in front of `S3_ENDPOINT` (RGW serves STS there).
    pub fn start() -> StsProxy {
        StsProxy::start_for(&super::endpoint())
    }

    /// A proxy in front of `upstream` (`http://host:port`).
    pub fn start_for(upstream: &str) -> StsProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind STS proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("proxy http client"),
            fail: Mutex::new(None),
            expiry_override: Mutex::new(None),
            record: Mutex::new(Record::default()),
        });
        let (stop, stopped) = oneshot::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sts-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("STS proxy runtime");
                rt.block_on(serve(listener, sh, stopped));
                // Dropping the runtime cancels the connection tasks.
            })
            .expect("spawn STS proxy thread");
        StsProxy {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the value for `--sts-endpoint-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, answer every request with `status` and a `ServiceUnavailable` error
    /// document without forwarding it (`None`: forward again).
    pub fn set_fail(&self, status: Option<u16>) {
        *self.shared.fail.lock().unwrap() = status;
    }

    /// From now on, rewrite `<Expiration>` of successful answers to now + `d` (`None`: pass
    /// the upstream's through).
    pub fn set_expiry_override(&self, d: Option<Duration>) {
        *self.shared.expiry_override.lock().unwrap() = d;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<StsRequest> {
        self.shared.record.lock().unwrap().requests.clone()
    }

    /// Credentials of every successful answer, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        self.shared.record.lock().unwrap().issued.clone()
    }

    /// Requests received (forwarded or not).
    pub fn request_count(&self) -> usize {
        self.shared.record.lock().unwrap().requests.len()
    }

    /// Requests answered with an injected failure.
    pub fn injected_count(&self) -> usize {
        let r = self.shared.record.lock().unwrap();
        r.requests.iter().filter(|q| q.injected).count()
    }

    /// Successful (2xx, with credentials) answers passed to the client.
    pub fn success_count(&self) -> usize {
        self.shared.record.lock().unwrap().issued.len()
    }

    /// TCP connections accepted.
    pub fn connection_count(&self) -> usize {
        self.shared.record.lock().unwrap().connections
    }

    /// Failures to reach the upstream (answered 502 to the client).
    pub fn upstream_errors(&self) -> Vec<String> {
        self.shared.record.lock().unwrap().upstream_errors.clone()
    }
}

impl Drop for StsProxy {
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
                    shared.record.lock().unwrap().connections += 1;
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
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Serves requests on one connection until the client closes it (or asks to).
async fn connection(mut conn: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        // Idle keep-alive connections are closed after a minute.
        let req =
            match tokio::time::timeout(Duration::from_secs(60), read_request(&mut conn, &mut buf))
                .await
            {
                Ok(Some(r)) => r,
                _ => return,
            };
        let close = req.wants_close();
        let (status, content_type, body) = handle(&req, &shared).await;
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            reason(status),
            body.len()
        );
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        if conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if req.method != "HEAD" && conn.write_all(&body).await.is_err() {
            return;
        }
        if close {
            let _ = conn.shutdown().await;
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads one request (head, then `Content-Length` bytes of body) from `conn`; `buf` keeps
/// bytes read past it (a pipelined next request). `None` at EOF or on a malformed request.
async fn read_request(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if find("transfer-encoding").is_some() {
        // Not needed by the SDK's form posts; refuse rather than misread.
        return None;
    }
    let len: usize = match find("content-length") {
        Some(v) => v.parse().ok()?,
        None => 0,
    };
    if len > 1 << 20 {
        return None;
    }
    while buf.len() < len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

/// Answers one request: an injected failure, or the upstream's answer (rewritten).
async fn handle(req: &Request, shared: &Shared) -> (u16, String, Vec<u8>) {
    let fields = form_fields(&String::from_utf8_lossy(&req.body));
    let mut rec = StsRequest {
        at: SystemTime::now(),
        method: req.method.clone(),
        target: req.target.clone(),
        fields,
        status: 0,
        injected: false,
    };
    let fail = *shared.fail.lock().unwrap();
    if let Some(status) = fail {
        rec.status = status;
        rec.injected = true;
        shared.record.lock().unwrap().requests.push(rec);
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>\
             <Message>injected by the test STS proxy</Message></Error>\
             <RequestId>stsproxy-{}</RequestId></ErrorResponse>",
            std::process::id()
        );
        return (status, "text/xml".into(), body.into_bytes());
    }
    let (status, content_type, body) = match forward(req, shared).await {
        Ok(r) => r,
        Err(e) => {
            shared
                .record
                .lock()
                .unwrap()
                .upstream_errors
                .push(e.clone());
            rec.status = 502;
            shared.record.lock().unwrap().requests.push(rec);
            return (502, "text/plain".into(), e.into_bytes());
        }
    };
    rec.status = status;
    let mut text = String::from_utf8_lossy(&body).into_owned();
    let mut issued = None;
    if (200..300).contains(&status)
        && let (Some(ak), Some(sk), Some(st), Some(exp)) = (
            xml_text(&text, "AccessKeyId"),
            xml_text(&text, "SecretAccessKey"),
            xml_text(&text, "SessionToken"),
            xml_text(&text, "Expiration"),
        )
    {
        let over = *shared.expiry_override.lock().unwrap();
        let (sent, expiry_sent) = match over {
            Some(d) => {
                let at = SystemTime::now() + d;
                let s = rfc3339(at);
                text = replace_element(&text, "Expiration", &s);
                (s, at)
            }
            None => {
                let at = aws_smithy_types::DateTime::from_str(
                    &exp,
                    aws_smithy_types::date_time::Format::DateTime,
                )
                .ok()
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH);
                (exp.clone(), at)
            }
        };
        issued = Some(Issued {
            at: SystemTime::now(),
            access_key_id: ak,
            secret_access_key: sk,
            session_token: st,
            expiration: exp,
            expiration_sent: sent,
            expiry_sent,
        });
    }
    {
        let mut r = shared.record.lock().unwrap();
        r.requests.push(rec);
        if let Some(i) = issued {
            r.issued.push(i);
        }
    }
    (status, content_type, text.into_bytes())
}

/// Sends the request on to the upstream: (status, content type, body).
async fn forward(req: &Request, shared: &Shared) -> Result<(u16, String, Vec<u8>), String> {
    let url = format!("{}{}", shared.upstream, req.target);
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = shared.http.request(method, &url).body(req.body.clone());
    for (name, value) in &req.headers {
        let skip = [
            "host",
            "content-length",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "expect",
        ];
        if !skip.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            out = out.header(name, value);
        }
    }
    let resp = out
        .send()
        .await
        .map_err(|e| format!("upstream {url}: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/xml")
        .to_string();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("upstream {url} body: {e}"))?;
    Ok((status, content_type, body.to_vec()))
}

/// `2024-05-06T07:08:09Z` (whole seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    aws_smithy_types::DateTime::from_secs(secs)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .expect("format date")
}

/// `xml` with the text of the first `<tag>..</tag>` replaced by `value`.
fn replace_element(xml: &str, tag: &str, value: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    match xml.find(&open) {
        Some(i) => {
            let start = i + open.len();
            match xml[start..].find(&close) {
                Some(j) => format!("{}{value}{}", &xml[..start], &xml[start + j..]),
                None => xml.to_string(),
            }
        }
        None => xml.to_string(),
    }
}

/// The fields of an `application/x-www-form-urlencoded` text, decoded.
pub fn form_fields(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
