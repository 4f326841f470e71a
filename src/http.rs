//! Opt-in HTTP endpoints (`--http-addr`) for probes and scrapers:
//! - `/healthz`: 200 while the FUSE mount is attached;
//! - `/readyz`: 200 while the mount answers and the credentials stay valid for at least
//!   `--ready-min-validity` (web-identity modes; the AWS chain manages its own expiry);
//! - `/metrics`: Prometheus text format (see `crate::metrics`).
//!
//! Three GET routes with small bodies need no framework: a minimal HTTP/1.1 responder on
//! tokio, one request per connection, bounded in size, time and concurrency. Nothing it
//! answers carries a secret: states, counts, times.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::auth::refresh::Refresher;
use crate::cache::BlockCache;
use crate::metrics;

/// Longest a client may take to send its request head, or to take the answer (a slow client
/// holds one of the few connection slots for at most about twice this).
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head accepted.
const MAX_HEAD: usize = 8 << 10;
/// Connections served at once; more are closed at once (probes and scrapers are few).
const MAX_CONNECTIONS: usize = 32;
/// How long the mount may take to answer a statfs before /readyz says it does not answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--http-addr): {why}")]
pub struct HttpError {
    addr: SocketAddr,
    why: String,
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
pub struct Server {
    listener: TcpListener,
}

pub async fn bind(addr: SocketAddr) -> Result<Server, HttpError> {
    let listener = TcpListener::bind(addr).await.map_err(|e| HttpError {
        addr,
        why: if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("{e}; another process uses this port: pick another one")
        } else {
            e.to_string()
        },
    })?;
    Ok(Server { listener })
}

impl Server {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until the task is aborted.
    pub fn spawn(self, status: Arc<Status>) -> tokio::task::JoinHandle<()> {
        if let Some(addr) = self.local_addr() {
            tracing::info!(addr = %addr, "HTTP endpoints listening: /healthz /readyz /metrics");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let (stream, _) = match self.listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, say: wait a little rather than spin.
                        tracing::debug!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue; // too many at once: dropped, the client sees a reset
                };
                let status = status.clone();
                tokio::spawn(async move {
                    handle(stream, &status).await;
                    drop(permit);
                });
            }
        })
    }
}

struct Response {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(code: u16, body: impl Into<String>) -> Self {
        Response {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Reads the request head; the method and the path (query dropped), or the status to
/// answer with.
async fn read_request(stream: &mut TcpStream) -> Result<(String, String), u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if end > MAX_HEAD {
                return Err(431);
            }
            break;
        }
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(400),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version)) if version.starts_with("HTTP/1.") => {
            let path = target.split('?').next().unwrap_or("");
            Ok((method.to_string(), path.to_string()))
        }
        _ => Err(400),
    }
}

async fn route(method: &str, path: &str, status: &Status) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET and HEAD\n");
    }
    match path {
        "/healthz" => match status.healthy() {
            Ok(()) => Response::text(200, "ok\n"),
            Err(why) => Response::text(503, format!("not healthy: {why}\n")),
        },
        "/readyz" => match status.ready().await {
            Ok(what) => Response::text(200, format!("ready: {what}\n")),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/metrics" => Response {
            code: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: status.metrics(),
        },
        _ => Response::text(404, "not found: try /healthz, /readyz or /metrics\n"),
    }
}

async fn handle(mut stream: TcpStream, status: &Status) {
    // `refused`: the head was not read whole, so the client may still be sending it.
    let (head_only, refused, resp) =
        match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
            Ok(Ok((method, path))) => {
                let resp = route(&method, &path, status).await;
                tracing::debug!(method, path, code = resp.code, "HTTP request");
                (method == "HEAD", false, resp)
            }
            Ok(Err(code)) => (false, true, Response::text(code, "bad request\n")),
            Err(_) => (
                false,
                true,
                Response::text(400, "request head not received in time\n"),
            ),
        };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        resp.code,
        reason(resp.code),
        resp.content_type,
        resp.body.len()
    );
    if resp.code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&resp.body);
    }
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        let _ = stream.write_all(out.as_bytes()).await;
        let _ = stream.shutdown().await;
        if !refused {
            return;
        }
        // Read what the client still sends (a refused oversized head) before closing:
        // closing with unread input would reset the connection and lose the answer.
        let mut sink = [0u8; 4096];
        let mut left = 64usize << 10;
        while let Ok(n @ 1..) = stream.read(&mut sink).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let addr = server.local_addr().unwrap();
        // The port is taken now: a second bind fails with a clear error.
        let e = bind(addr).await.err().expect("second bind must fail");
        assert!(e.to_string().contains("pick another"), "{e}");
        let task = server.spawn(status.clone());

        let h = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(h.starts_with("HTTP/1.1 503 "), "{h}");
        assert!(h.contains("not mounted"), "{h}");
        let r = get(addr, "GET /readyz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        let m = get(addr, "GET /metrics?x=1 HTTP/1.1\r\n\r\n").await;
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
        let hd = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(hd.ends_with("\r\n\r\n"), "HEAD has no body: {hd}");
        assert!(
            get(addr, "GET /nope HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404 ")
        );
        let p = get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
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
        task.abort();
    }
}
