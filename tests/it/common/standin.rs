//! How the stand-ins (metadata server / IdP, STS proxy, fault proxy) run: the library's HTTP
//! server ([`s3_oidc_mount::http::serve`]) on `127.0.0.1:<random port>`, on a tokio runtime
//! of its own, so it works from sync tests and from any async runtime, and stops (closing
//! every open connection, hung ones included) when dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Request, Response};
use s3_oidc_mount::http::serve::{Body, Options, Server, Serving};

/// A port taken on 127.0.0.1, before the handler that will serve it is made (a stand-in may
/// need its own address for that).
pub struct Port(std::net::TcpListener);

impl Port {
    pub fn take() -> Port {
        Port(std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().expect("local addr")
    }

    /// Serves `handler` on this port until the [`StandIn`] is dropped. `idle`: how long a
    /// kept-alive connection may wait for its next request (longer than the clients' pools
    /// keep one, so the stand-in never closes one a client is about to use).
    pub fn serve<H, F>(self, name: &str, idle: Duration, handler: H) -> StandIn
    where
        H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = self.addr();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("stand-in runtime");
        // Entering (not blocking on) the runtime is allowed inside another one.
        let serving = {
            let _in = rt.enter();
            Server::from_std(self.0)
                .expect("stand-in listener")
                .with_options(Options {
                    head_timeout: idle,
                    ..Options::default()
                })
                .serve(handler)
        };
        StandIn {
            addr,
            serving: Some(serving),
            rt: Some(rt),
        }
    }
}

pub struct StandIn {
    addr: SocketAddr,
    serving: Option<Serving>,
    rt: Option<tokio::runtime::Runtime>,
}

impl StandIn {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.serving.as_ref().map_or(0, Serving::connections)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        drop(self.serving.take());
        // Dropping a runtime cancels its tasks and waits for its threads, which an async
        // context must not do: done on a thread of its own, waited for, so every connection
        // is closed when this returns.
        if let Some(rt) = self.rt.take() {
            let _ = std::thread::spawn(move || drop(rt)).join();
        }
    }
}

/// The request target as sent: path and query.
pub fn target<B>(req: &Request<B>) -> String {
    req.uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string())
}
