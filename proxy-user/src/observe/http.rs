//! The small HTTP plumbing the observe servers share: bind synchronously (so
//! a bad `--health-bind` is a clear error at start, not a log line later),
//! then serve an axum router on the tokio runtime until told to stop.

use std::net::SocketAddr;

use axum::Router;
use tokio::{sync::oneshot, task::JoinHandle};

use super::{Error, Result};

/// A running HTTP server. Dropping it stops the server (gracefully: the
/// listener closes at once, open requests finish).
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address actually bound (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and waits until its listener is closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds `addr` for the server called `what` (e.g. "health"), with a clear
/// error when the address is taken or not local.
pub(crate) fn bind(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { what, addr, source })?;
    listener.set_nonblocking(true).map_err(|source| Error::Bind { what, addr, source })?;
    Ok(listener)
}

/// Serves `router` on `listener` on `runtime`.
pub(crate) fn spawn(
    what: &'static str,
    runtime: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    router: Router,
) -> Result<ServerHandle> {
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        what,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let _guard = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Bind {
        what,
        addr,
        source,
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = runtime.spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
            tracing::error!(server = what, %addr, error = %e, "HTTP server stopped");
        }
    });
    tracing::debug!(server = what, %addr, "serving");
    Ok(ServerHandle { local_addr: addr, stop: Some(stop), task: Some(task) })
}

/// Test client: one HTTP/1.1 GET with `Connection: close`; returns the status,
/// the `Content-Type` header and the body. Bounded by a timeout.
#[cfg(test)]
pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        String::from_utf8(buf).expect("utf-8 response")
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fut).await.expect("GET timed out");
    let (head, body) = raw.split_once("\r\n\r\n").expect("no header end");
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}
