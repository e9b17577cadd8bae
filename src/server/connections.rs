//! Serving HTTP connections: the accept loop, with the limits that keep clients from holding the
//! server's resources (slow-loris and idle floods).
//!
//! # Invariants
//!
//! - At most `max_connections` connections are open; one more is closed as soon as it is accepted
//!   (counted and logged), so a flood cannot exhaust file descriptors or memory.
//! - A request's head must arrive within `header_timeout` of its first byte; a body within
//!   `body_timeout` of its head (a slower one is answered 408 and the connection closed); a connection with no request in flight is closed after `idle_timeout`. The deadlines
//!   are watched by the connection's own task: a request in flight is never cut by them.
//! - On shutdown, idle connections close at once and busy ones once their answer is sent; the
//!   loop returns when every connection is gone.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::ApiError;

/// The connection limits (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request's head may take from its first byte.
    pub header_timeout: Duration,
    /// How long a request's body may take from its head.
    pub body_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
}

/// What happened to connections since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicUsize,
    refused: AtomicU64,
    timed_out: AtomicU64,
}

impl ConnectionStats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once for the cap.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed for a header, body or idle timeout.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// Where a connection stands, shared by its socket, its requests and its watchdog.
struct Activity {
    /// Requests in flight (from their head to the end of their answer).
    in_flight: AtomicUsize,
    /// When the connection last became idle, or the first byte of a head arrived.
    since: Mutex<(Instant, Phase)>,
    /// Wakes the watchdog when the phase changes.
    changed: Notify,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight, no byte of the next one yet.
    Idle,
    /// The first bytes of a request's head arrived.
    Head,
    /// A request is in flight.
    Busy,
}

impl Activity {
    fn set(&self, phase: Phase) {
        *self.since.lock().unwrap_or_else(PoisonError::into_inner) = (Instant::now(), phase);
        self.changed.notify_one();
    }

    fn get(&self) -> (Instant, Phase) {
        *self.since.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection must close if nothing changes, or `None` while a request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match self.get() {
            (since, Phase::Idle) => Some(since + limits.idle_timeout),
            (since, Phase::Head) => Some(since + limits.header_timeout),
            (_, Phase::Busy) => None,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then until every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (socket, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, max = limits.max_connections, "refused a connection: too many open");
            drop(socket);
            continue;
        };
        let (app, stats, stopped) = (app.clone(), stats.clone(), stopped.clone());
        tokio::spawn(async move {
            stats.open.fetch_add(1, Ordering::Relaxed);
            connection(socket, remote, app, limits, stats.clone(), stopped).await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop((listener, stopped));
    let _ = stop.send(true);
    // Every connection's task holds a receiver: closed once the last one has ended.
    stop.closed().await;
}

/// Serves one connection until it closes, times out or the server stops.
async fn connection(
    socket: TcpStream,
    remote: SocketAddr,
    app: Router,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        since: Mutex::new((Instant::now(), Phase::Idle)),
        changed: Notify::new(),
    });
    let io = TokioIo::new(Watched {
        inner: socket,
        activity: activity.clone(),
    });
    let (requests, service_stats) = (activity.clone(), stats.clone());
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        requests.in_flight.fetch_add(1, Ordering::Relaxed);
        requests.set(Phase::Busy);
        let done = InFlight(requests.clone());
        request.extensions_mut().insert(ConnectInfo(remote));
        let late = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            Body::new(Deadline {
                body: Body::new(body),
                sleep: Box::pin(tokio::time::sleep(limits.body_timeout)),
                late: late.clone(),
            })
        });
        let (app, stats) = (app.clone(), service_stats.clone());
        async move {
            let mut response = app.oneshot(request).await?;
            if late.load(Ordering::Relaxed) {
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "a request body took too long");
                response = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the request body did not arrive within {:?}",
                        limits.body_timeout
                    ),
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // The request is done when its answer's body is: a stream (server-sent events)
            // keeps it in flight.
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &done;
                    frame
                }))
            }))
        }
    });
    // The head's deadline is the watchdog's below, counted from the head's first byte; hyper's
    // own would count from the end of the previous answer, cutting idle connections short.
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        let deadline = activity.deadline(&limits);
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            () = expired => {
                // Still idle (or still in its head) after the deadline: close it.
                if activity.deadline(&limits).is_some_and(|at| at <= Instant::now()) {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "closed a connection: header or idle timeout");
                    return;
                }
            }
            () = stopped.wait_for(|s| *s).map(drop) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
                return;
            }
        }
    }
}

/// Marks a request done when dropped (with its answer's body).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.set(Phase::Idle);
        }
    }
}

/// The socket, noting when the first byte of a request's head arrives on an idle connection.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.activity.get().1 == Phase::Idle {
            self.activity.set(Phase::Head);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that fails once its time has passed since its head arrived, and says so in
/// `late` (the request is then answered 408).
struct Deadline {
    body: Body,
    sleep: Pin<Box<Sleep>>,
    late: Arc<AtomicBool>,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new("request body timeout"))));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
