//! Opt-in HTTP endpoints (`--http-addr`) for probes and scrapers:
//! - `/healthz`: 200 while the FUSE mount is attached;
//! - `/readyz`: 200 while the mount answers and the credentials stay valid for at least
//!   `--ready-min-validity` (web-identity modes; the AWS chain manages its own expiry);
//! - `/metrics`: Prometheus text format (see `crate::metrics`).
//!
//! Three GET routes with small bodies, served by [`serve`] (hyper): keep-alive, bounded in
//! head size, time and concurrency. Nothing it answers carries a secret: states, counts,
//! times.

pub mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};

use crate::auth::refresh::Refresher;
use crate::cache::BlockCache;
use crate::metrics;
use serve::Body;

/// Longest a client may take to send its request head, or keep an idle connection open (a
/// slow client holds one of the few connection slots for about this long).
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head accepted.
const MAX_HEAD: usize = 8 << 10;
/// Connections served at once; more are closed at once (probes and scrapers are few).
const MAX_CONNECTIONS: usize = 32;
/// How long the mount may take to answer a statfs before /readyz says it does not answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--http-addr{})", hint(source))]
pub struct HttpError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// What to do about a bind error, before the cause (printed after it in the error chain).
fn hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "; another process uses this port: pick another one"
    } else {
        ""
    }
}

/// What the endpoints report on: the parts of a mount, filled in as it comes up.
pub struct Status {
    mountpoint: PathBuf,
    min_validity: Duration,
    started: Instant,
    mounted: AtomicBool,
    cache: OnceLock<Arc<BlockCache>>,
    refresher: OnceLock<Refresher>,
    /// A statfs of the mount is under way: a hung mount must not pile up blocked threads.
    probing: Arc<AtomicBool>,
}

impl Status {
    pub fn new(mountpoint: &Path, min_validity: Duration) -> Arc<Self> {
        Arc::new(Status {
            mountpoint: mountpoint.to_path_buf(),
            min_validity,
            started: Instant::now(),
            mounted: AtomicBool::new(false),
            cache: OnceLock::new(),
            refresher: OnceLock::new(),
            probing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The web-identity refresher, once credentials are set up (none with the AWS chain).
    pub fn set_refresher(&self, r: Option<Refresher>) {
        if let Some(r) = r {
            let _ = self.refresher.set(r);
        }
    }

    pub fn set_mounted(&self, cache: Arc<BlockCache>) {
        let _ = self.cache.set(cache);
        self.mounted.store(true, Ordering::SeqCst);
    }

    pub fn set_unmounted(&self) {
        self.mounted.store(false, Ordering::SeqCst);
    }

    pub fn cache(&self) -> Option<&Arc<BlockCache>> {
        self.cache.get()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Attached: mounted by us, not unmounted since, and still in the mount table (someone
    /// may have run `fusermount3 -u`).
    pub fn healthy(&self) -> Result<(), String> {
        if !self.mounted.load(Ordering::SeqCst) {
            return Err("not mounted".into());
        }
        if !crate::mount::is_mount_point(&self.mountpoint) {
            return Err(format!(
                "{} is no longer mounted",
                self.mountpoint.display()
            ));
        }
        Ok(())
    }

    /// Seconds the current web-identity credentials stay valid; `None` with the AWS chain.
    fn credentials_valid_for(&self) -> Option<Duration> {
        let r = self.refresher.get()?;
        Some(
            r.current()
                .and_then(|s| s.expiry.duration_since(SystemTime::now()).ok())
                .unwrap_or_default(),
        )
    }

    /// Ready: attached, credentials valid long enough, and the mount answers a statfs
    /// (which the kernel always passes to us, unlike a cached stat).
    pub async fn ready(&self) -> Result<String, String> {
        self.healthy()?;
        let creds = match self.credentials_valid_for() {
            Some(left) if left < self.min_validity => {
                return Err(format!(
                    "credentials valid for {} s, less than {} s (--ready-min-validity); renewals are failing, see the log",
                    left.as_secs(),
                    self.min_validity.as_secs()
                ));
            }
            Some(left) => format!("credentials valid for {} s", left.as_secs()),
            None => "credentials from the AWS chain".to_string(),
        };
        self.probe_mount().await?;
        Ok(format!("mount answers; {creds}"))
    }

    async fn probe_mount(&self) -> Result<(), String> {
        if self.probing.swap(true, Ordering::SeqCst) {
            return Err("the mount is not answering (an earlier check still waits)".into());
        }
        let probing = self.probing.clone();
        let mp = self.mountpoint.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = statfs(&mp);
            probing.store(false, Ordering::SeqCst);
            r
        });
        match tokio::time::timeout(PROBE_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("the mount does not answer: {e}")),
            Ok(Err(e)) => Err(format!("mount check failed: {e}")),
            // The blocked thread clears `probing` whenever the kernel lets it go.
            Err(_) => Err(format!(
                "the mount did not answer within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        }
    }

    pub fn metrics(&self) -> String {
        metrics::render(&metrics::Sources {
            cache: self.cache.get().map(|c| &**c),
            refresher: self.refresher.get(),
            uptime: self.uptime(),
            mounted: self.healthy().is_ok(),
        })
    }
}

fn statfs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a valid out pointer for the call.
    let rc = unsafe {
        let mut buf: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c.as_ptr(), &mut buf)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A bound listener, not yet serving. Binding comes first, before anything is mounted, so
/// a port in use fails the start with a clear error.
pub struct Server(serve::Server);

pub async fn bind(addr: SocketAddr) -> Result<Server, HttpError> {
    let server = serve::Server::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    Ok(Server(server.with_options(serve::Options {
        head_timeout: READ_TIMEOUT,
        max_head: MAX_HEAD,
        // Only GET and HEAD are answered (a POST with a small body still gets its 405).
        max_body: MAX_HEAD,
        max_connections: MAX_CONNECTIONS,
    })))
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Serves until the returned handle is shut down or dropped.
    pub fn spawn(self, status: Arc<Status>) -> serve::Serving {
        tracing::info!(addr = %self.local_addr(), "HTTP endpoints listening: /healthz /readyz /metrics");
        self.0.serve(move |req| {
            let status = status.clone();
            async move {
                let resp = route(req.method(), req.uri().path(), &status).await;
                tracing::debug!(method = %req.method(), path = req.uri().path(), code = resp.status().as_u16(), "HTTP request");
                resp
            }
        })
    }
}

async fn route(method: &Method, path: &str, status: &Status) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(405, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/healthz" => match status.healthy() {
            Ok(()) => text(200, "ok\n"),
            Err(why) => text(503, format!("not healthy: {why}\n")),
        },
        "/readyz" => match status.ready().await {
            Ok(what) => text(200, format!("ready: {what}\n")),
            Err(why) => text(503, format!("not ready: {why}\n")),
        },
        "/metrics" => {
            let mut r = text(200, status.metrics());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => text(404, "not found: try /healthz, /readyz or /metrics\n"),
    }
}

/// A text answer nothing may cache (states change from one probe to the next).
fn text(code: u16, body: impl Into<String>) -> Response<Body> {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = serve::text(code, body);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_and_refusals() {
        let dir = std::env::temp_dir();
        let status = Status::new(&dir, Duration::from_secs(60));
        let server = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr();
        // The port is taken now: a second bind fails with a clear error.
        let e = bind(addr).await.err().expect("second bind must fail");
        assert!(e.to_string().contains("pick another"), "{e}");
        let serving = server.spawn(status.clone());

        let h = get(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(h.starts_with("HTTP/1.1 503 "), "{h}");
        assert!(h.contains("not mounted"), "{h}");
        let r = get(addr, "GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        let m = get(
            addr,
            "GET /metrics?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(m.starts_with("HTTP/1.1 200 "), "{m}");
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        let (head, body) = m.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        assert!(body.contains("s3om_up 0"), "{body}");
        let hd = get(addr, "HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(hd.ends_with("\r\n\r\n"), "HEAD has no body: {hd}");
        // The length of what a GET would get (which changes from one scrape to the next).
        assert!(hd.contains("Content-Length: "), "{hd}");
        // Kept alive: two requests, two answers, on one connection.
        let two = get(
            addr,
            "GET /healthz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            two.starts_with("HTTP/1.1 503 ") && two.contains("HTTP/1.1 404 "),
            "{two}"
        );
        assert!(
            get(addr, "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404 ")
        );
        let p = get(addr, "POST /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(
            p.starts_with("HTTP/1.1 405 ") && p.contains("Allow: GET, HEAD"),
            "{p}"
        );
        assert!(
            get(addr, "garbage\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 400 ")
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD + 10));
        let r = get(addr, &huge).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        serving.shutdown(Duration::from_secs(1)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
