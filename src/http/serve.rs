//! One small HTTP/1.1 server on hyper, for the daemon's endpoints (`crate::http`) and the
//! test stand-ins: bind first (so a port in use fails before anything else happens), then
//! serve a handler `Fn(Request<Bytes>) -> Future<Response<Body>>` on every connection, with
//! keep-alive, bounds on heads, bodies, idle time and connections, and a graceful stop.
//!
//! The handler gets the request body read whole (bounded by [`Options::max_body`]) and the
//! connection it came on as a [`Conn`] in the request's extensions. Two things hyper cannot
//! do by itself, for the fault-injecting test proxy: [`Conn::reset`] drops the connection
//! with a TCP reset instead of answering, and [`Conn::flushed`] tells when what was sent so
//! far has reached the socket (so a body cut short is cut after those bytes, not before:
//! hyper drops its unsent buffer when a body fails).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// A response body: whole ([`full`], [`empty`]) or streamed ([`stream`]). A stream that
/// yields an error ends the connection where it stands (a body cut short). The error type
/// is concrete (not a boxed error) because hyper's bounds on a boxed one do not hold inside
/// a spawned task.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn stream<S>(chunks: S) -> Body
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(chunks.map_ok(Frame::data)).boxed_unsync()
}

/// A `text/plain` answer.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Bounds of what one server accepts.
#[derive(Clone, Debug)]
pub struct Options {
    /// Longest wait for a whole request head, the idle time of a kept-alive connection
    /// before its next request included.
    pub head_timeout: Duration,
    /// Largest request head (request line and headers); larger ones get a 431.
    pub max_head: usize,
    /// Largest request body; larger ones get a 413.
    pub max_body: usize,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            head_timeout: Duration::from_secs(30),
            max_head: 64 << 10,
            max_body: 1 << 20,
            max_connections: 1024,
        }
    }
}

/// The connection a request came on, in the request's extensions.
#[derive(Clone, Debug)]
pub struct Conn {
    /// 1 for the first connection accepted, and so on.
    pub id: u64,
    pub peer: SocketAddr,
    reset: Arc<AtomicBool>,
    flushes: watch::Receiver<u64>,
}

impl Conn {
    /// Waits until everything hyper has buffered for this connection so far is written to
    /// the socket. hyper flushes while a response body waits, so a body stream that awaits
    /// this after yielding a chunk knows the chunk is out.
    pub async fn flushed(&self) {
        let mut rx = self.flushes.clone();
        rx.mark_unchanged();
        let _ = rx.changed().await;
    }

    /// Ends the connection with a TCP reset and no answer: whatever the handler returns
    /// (this placeholder) is not sent.
    pub fn reset(&self) -> Response<Body> {
        self.reset.store(true, Ordering::SeqCst);
        Response::new(empty())
    }
}

/// A bound listener, not serving yet.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    options: Options,
}

impl Server {
    pub async fn bind(addr: SocketAddr) -> io::Result<Server> {
        Server::from_tokio(TcpListener::bind(addr).await?)
    }

    /// A listener bound outside a runtime (a test stand-in knows its port before its runtime
    /// runs). Must be called within a tokio runtime.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        Server::from_tokio(TcpListener::from_std(listener)?)
    }

    fn from_tokio(listener: TcpListener) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        Ok(Server {
            listener,
            addr,
            options: Options::default(),
        })
    }

    pub fn with_options(mut self, options: Options) -> Server {
        self.options = options;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `handler` on a task of its own until [`Serving::shutdown`] (or the drop of the
    /// [`Serving`], which stops at once).
    pub fn serve<H, F>(self, handler: H) -> Serving
    where
        H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let connections = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            self.listener,
            self.options,
            Arc::new(handler),
            connections.clone(),
            stopped,
        ));
        Serving {
            addr: self.addr,
            stop,
            task: Some(task),
            connections,
        }
    }
}

/// A running server. Dropping it stops it at once, open connections included.
pub struct Serving {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    connections: Arc<AtomicU64>,
}

impl Serving {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets the requests under way finish (kept-alive connections close
    /// after their answer) for at most `grace`, then drops whatever is left.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    options: Options,
    handler: Arc<H>,
    connections: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) where
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.head_timeout)
        .max_header_size(options.max_head)
        // The hand-written servers this replaces wrote `Content-Length:`, and clients that
        // read the head by hand (tests) look for it so.
        .title_case_headers(true);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    // Owned here: aborting this task (dropping the Serving) ends every connection with it.
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            // The only change is to "stop" (or the Serving gone, which aborts this task).
            _ = stopped.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::debug!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let id = connections.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // too many at once: dropped, the client sees the connection close
        };
        let _ = stream.set_nodelay(true);
        let reset = Arc::new(AtomicBool::new(false));
        let (flushed, flushes) = watch::channel(0u64);
        let conn = Conn {
            id,
            peer,
            reset: reset.clone(),
            flushes,
        };
        let handler = handler.clone();
        let max_body = options.max_body;
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let handler = handler.clone();
            let conn = conn.clone();
            async move { serve_one(&*handler, conn, req, max_body).await }
        });
        let io = TokioIo::new(Tracked {
            stream,
            reset,
            flushed,
        });
        let served = graceful.watch(http.serve_connection(io, service));
        tasks.spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One request: its body read (bounded), the handler's answer, or no answer for a reset.
async fn serve_one<H, F>(
    handler: &H,
    conn: Conn,
    req: Request<hyper::body::Incoming>,
    max_body: usize,
) -> io::Result<Response<Body>>
where
    H: Fn(Request<Bytes>) -> F,
    F: Future<Output = Response<Body>>,
{
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            ));
        }
        // The client went away mid-body: nothing to answer.
        Err(e) => return Err(io::Error::other(e)),
    };
    let reset = conn.reset.clone();
    parts.extensions.insert(conn);
    let resp = handler(Request::from_parts(parts, body)).await;
    if reset.load(Ordering::SeqCst) {
        // An error makes hyper drop the connection without writing anything.
        return Err(io::Error::other("connection reset by the handler"));
    }
    Ok(resp)
}

/// A TCP stream that counts completed flushes and closes with a reset (SO_LINGER 0) when
/// its flag says so.
struct Tracked {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
    flushed: watch::Sender<u64>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_flush(cx);
        // hyper calls this once its buffer is written out.
        if let Poll::Ready(Ok(())) = r {
            self.flushed.send_modify(|n| *n += 1);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn exchange(addr: SocketAddr, request: &str) -> io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn resets_and_stops_gracefully() {
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr();
        let serving = server.serve(|req: Request<Bytes>| async move {
            match req.uri().path() {
                "/reset" => req.extensions().get::<Conn>().map_or_else(
                    || text(StatusCode::INTERNAL_SERVER_ERROR, "no Conn"),
                    Conn::reset,
                ),
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    text(StatusCode::OK, "slow")
                }
                _ => text(StatusCode::OK, format!("{} bytes", req.body().len())),
            }
        });
        let r = exchange(
            addr,
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .await
        .unwrap();
        assert!(
            r.starts_with("HTTP/1.1 200 ") && r.ends_with("3 bytes"),
            "{r}"
        );
        let e = exchange(addr, "GET /reset HTTP/1.1\r\n\r\n").await;
        assert_eq!(
            e.as_ref().map_err(io::Error::kind).err(),
            Some(io::ErrorKind::ConnectionReset),
            "{e:?}"
        );
        assert_eq!(serving.connections(), 2);
        // A request under way when the stop comes is answered.
        let slow = tokio::spawn(exchange(addr, "GET /slow HTTP/1.1\r\n\r\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        serving.shutdown(Duration::from_secs(5)).await;
        let r = slow.await.unwrap().unwrap();
        assert!(r.starts_with("HTTP/1.1 200 ") && r.ends_with("slow"), "{r}");
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
