//! `GET /metrics` over HTTP/1.x: the listener and the one-request
//! connections, on a glommio executor thread of its own.
//!
//! Its own thread, not a task on shard 0: a scrape renders a few tens of
//! KiB of text and reads `/proc` and the spool directories (blocking
//! `std::fs`), which would stall that shard's connections and make shard 0
//! unlike the others; and a busy shard 0 would delay scrapes. The thread is
//! not pinned (`Placement::Unbound`): it wakes a few times a minute.
//! glommio, not tokio or a blocking server: the house rule for async code
//! in the server, and its io_uring accept needs no second runtime.
//!
//! One request per connection (`Connection: close`); the request head must
//! arrive within [`REQUEST_TIMEOUT`] and fit in [`MAX_REQUEST_BYTES`], and at
//! most [`MAX_CONNECTIONS`] are served at once, so a silent or flooding
//! client holds little and never blocks a scrape for long.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream, UnixStream};
use glommio::sync::Semaphore;
use glommio::timer::sleep;
use glommio::{LocalExecutorBuilder, Placement};

use super::Scrape;

/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read; a longer one gets `431`.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: u64 = 16;
/// io_uring buffer memory of this executor: it does no file I/O through
/// glommio, so the minimum.
const IO_MEMORY_BYTES: usize = 256 << 10;

/// The running metrics listener. Dropping it stops the thread (its stop
/// socket reads EOF); a scrape in progress is cut off.
pub(crate) struct MetricsServer {
    /// The bound addresses (port 0 resolved).
    pub(crate) addrs: Vec<SocketAddr>,
    _stop: std::os::unix::net::UnixStream,
}

/// Binds every address (so a port in use is reported at start-up, like the
/// SMTP listeners) and starts the thread.
///
/// # Errors
/// A bind or the thread failing, as one line naming the address.
pub(crate) fn start(addrs: &[SocketAddr], scrape: Scrape) -> Result<MetricsServer, String> {
    let mut socks = Vec::with_capacity(addrs.len());
    let mut bound = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l = std::net::TcpListener::bind(a)
            .map_err(|e| format!("server.metrics: cannot listen on {a}: {e}"))?;
        bound.push(l.local_addr().unwrap_or(*a));
        socks.push(OwnedFd::from(l));
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("server.metrics: cannot create a socket pair: {e}"))?;
    let theirs = OwnedFd::from(theirs);
    let scrape = Arc::new(scrape);
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("ringmx-metrics")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || run(socks, theirs, scrape))
        .map_err(|e| format!("server.metrics: cannot start its thread: {e}"))?;
    Ok(MetricsServer {
        addrs: bound,
        _stop: ours,
    })
}

async fn run(socks: Vec<OwnedFd>, stop: OwnedFd, scrape: Arc<Scrape>) {
    let permits = Rc::new(Semaphore::new(MAX_CONNECTIONS));
    let loops: Vec<_> = socks
        .into_iter()
        // SAFETY: each fd is a bound, listening TCP socket we own and give away.
        .map(|fd| unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) })
        .map(|l| glommio::spawn_local(accept_loop(l, Rc::clone(&permits), Arc::clone(&scrape))))
        .collect();
    // SAFETY: one end of a Unix socket pair, owned and given away.
    let mut stop = unsafe { UnixStream::from_raw_fd(stop.into_raw_fd()) };
    // A byte or EOF (the server dropped its end): stop.
    let _ = stop.read(&mut [0u8; 1]).await;
    // Returning ends the executor; the loops and connections are dropped.
    drop(loops);
}

async fn accept_loop(listener: TcpListener, permits: Rc<Semaphore>, scrape: Arc<Scrape>) {
    loop {
        let Ok(permit) = permits.acquire_static_permit(1).await else {
            return;
        };
        match listener.accept().await {
            Ok(stream) => {
                let scrape = Arc::clone(&scrape);
                glommio::spawn_local(async move {
                    serve(stream, &scrape).await;
                    drop(permit);
                })
                .detach();
            }
            Err(e) => {
                crate::warn!("metrics: accept failed: {e}");
                // Out of descriptors or memory: do not spin on it.
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics` (or HEAD): the exposition.
    Metrics { head: bool },
    /// Another path: 404.
    NotFound,
    /// Another method: 405.
    BadMethod,
    /// Not an HTTP/1.x request line: 400.
    Malformed,
    /// The head did not fit: 431.
    TooLarge,
}

/// Reads one request head and answers it, then closes.
async fn serve(mut stream: TcpStream, scrape: &Arc<Scrape>) {
    let req = future::or(async { Some(read_request(&mut stream).await) }, async {
        sleep(REQUEST_TIMEOUT).await;
        None
    })
    .await;
    let answer = match req {
        // Silent, or closed before a whole head: nothing to answer.
        None | Some(None) => return,
        Some(Some(r)) => respond(&r, scrape),
    };
    let _ = future::or(
        async {
            let _ = stream.write_all(&answer).await;
        },
        sleep(WRITE_TIMEOUT),
    )
    .await;
    let _ = stream.close().await;
}

/// Reads until the end of the request head (a blank line). `None`: the
/// client closed or failed first.
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    loop {
        if let Some(end) = head_end(&buf[..len]) {
            return Some(parse(&buf[..end]));
        }
        if len == buf.len() {
            return Some(Request::TooLarge);
        }
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => len += n,
        }
    }
}

/// The length of the head up to its blank line (CRLF or bare LF lines).
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(b, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(b, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses a request head's first line (RFC 9112 §3).
fn parse(head: &[u8]) -> Request {
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with(b"HTTP/1.") || method.is_empty() || !target.starts_with(b"/") {
        return Request::Malformed;
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Request::BadMethod,
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path == b"/metrics" {
        Request::Metrics { head: head_only }
    } else {
        Request::NotFound
    }
}

/// The whole HTTP response to `req`.
fn respond(req: &Request, scrape: &Arc<Scrape>) -> Vec<u8> {
    let (status, ctype, body, head) = match req {
        Request::Metrics { head } => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            scrape.render(),
            *head,
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "Not found; metrics are at /metrics\n".into(),
            false,
        ),
        Request::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "Only GET and HEAD\n".into(),
            false,
        ),
        Request::Malformed => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "Bad request\n".into(),
            false,
        ),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "Request head too large\n".into(),
            false,
        ),
    };
    let mut out = Vec::with_capacity(body.len() + 256);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if matches!(req, Request::BadMethod) {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_sorted_by_what_they_ask() {
        let cases: &[(&[u8], Request)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Request::Metrics { head: false },
            ),
            (
                b"GET /metrics?x=1 HTTP/1.0\n\n",
                Request::Metrics { head: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Request::Metrics { head: true },
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Request::BadMethod),
            (b"GET /metrics\r\n\r\n", Request::Malformed),
            (b"EHLO example.com\r\n\r\n", Request::Malformed),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Request::Malformed),
            (b"GET metrics HTTP/1.1\r\n\r\n", Request::Malformed),
            (b"\xff\xfe\r\n\r\n", Request::Malformed),
        ];
        for (head, want) in cases {
            let end = head_end(head).expect("a whole head");
            assert_eq!(
                &parse(&head[..end]),
                want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        assert_eq!(head_end(b"GET /metrics HTTP/1.1\r\n"), None);
    }
}
