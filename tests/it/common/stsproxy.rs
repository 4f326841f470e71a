//! An HTTP/1.1 proxy in front of RGW's STS endpoint (= `S3_ENDPOINT`), for the daemon's
//! credential tests: point the daemon at [`StsProxy::url`] with `--sts-endpoint-url`.
//!
//! It listens on `127.0.0.1:<random port>`, run as [`super::standin`] says (like
//! [`super::idp::Idp`]; keep-alive), forwards each request to the upstream and answers with
//! the upstream's status and body. It records:
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

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use s3_oidc_mount::http::serve;

use super::iam::xml_text;
use super::standin::{Port, StandIn, target};

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
    server: StandIn,
}

impl StsProxy {
    /// A proxy in front of `S3_ENDPOINT` (RGW serves STS there).
    pub fn start() -> StsProxy {
        StsProxy::start_for(&super::endpoint())
    }

    /// A proxy in front of `upstream` (`http://host:port`).
    pub fn start_for(upstream: &str) -> StsProxy {
        let port = Port::take();
        let addr = port.addr();
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
        let sh = shared.clone();
        let server = port.serve("sts-proxy", Duration::from_secs(60), move |req| {
            answer(sh.clone(), req)
        });
        StsProxy {
            shared,
            addr,
            server,
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
        self.server.connections() as usize
    }

    /// Failures to reach the upstream (answered 502 to the client).
    pub fn upstream_errors(&self) -> Vec<String> {
        self.shared.record.lock().unwrap().upstream_errors.clone()
    }
}

async fn answer(shared: Arc<Shared>, req: Request<Bytes>) -> hyper::Response<serve::Body> {
    let (status, content_type, body) = handle(&req, &shared).await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = hyper::Response::new(serve::full(body));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        r.headers_mut().insert("content-type", v);
    }
    r
}

/// Answers one request: an injected failure, or the upstream's answer (rewritten).
async fn handle(req: &Request<Bytes>, shared: &Shared) -> (u16, String, Vec<u8>) {
    let fields = form_fields(&String::from_utf8_lossy(req.body()));
    let mut rec = StsRequest {
        at: SystemTime::now(),
        method: req.method().to_string(),
        target: target(req),
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
async fn forward(req: &Request<Bytes>, shared: &Shared) -> Result<(u16, String, Vec<u8>), String> {
    let url = format!("{}{}", shared.upstream, target(req));
    let mut out = shared
        .http
        .request(req.method().clone(), &url)
        .body(req.body().clone());
    for (name, value) in req.headers() {
        let skip = [
            "host",
            "content-length",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "expect",
        ];
        if !skip.iter().any(|s| name.as_str().eq_ignore_ascii_case(s)) {
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
