//! `backend`: a fast fixed-response HTTP/1.x origin. One pinned worker thread per `--workers`,
//! each with its own SO_REUSEPORT listener and runtime (tokio-uring, epoll fallback); handles
//! keep-alive, pipelining, HTTP/1.0, `Connection: close` and request bodies (read and discarded).
//! With `--h2` the workers serve HTTP/2 (h2c) and gRPC instead (`h2origin`), same threads.
//! The main thread binds every listener, prints `listening on ADDR`, then waits on the workers;
//! each connection's buffers belong to its task.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::http::{has_token, last_token_is, Chunked, MAX_HEADERS};
use crate::io::{self, Listener, Stream};

/// Per-connection read buffer; a request head must fit in it.
const READ_BUF: usize = 16 * 1024;
/// Listen backlog per worker.
const BACKLOG: i32 = 4096;
/// Most workers accepted.
const MAX_WORKERS: usize = 1024;
/// Largest response body accepted by `--body-bytes`.
const MAX_BODY: usize = 64 * 1024 * 1024;
const BODY_PATTERN: &[u8] = b"hello world\n";

/// The response body: "hello world\n" repeated/truncated to `n` bytes.
fn body_of(n: usize) -> Vec<u8> {
    BODY_PATTERN.iter().copied().cycle().take(n).collect()
}

#[derive(Clone, Debug)]
pub struct BackendOpts {
    pub bind: String,
    pub body_bytes: usize,
    pub workers: usize,
    pub delay: Duration,
    pub cpus: Option<Vec<usize>>,
    /// Serve HTTP/2 with prior knowledge (h2c) and gRPC instead of HTTP/1.x.
    pub h2: bool,
    /// With `h2`: SETTINGS_MAX_CONCURRENT_STREAMS per connection.
    pub max_streams: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("bad --bind '{addr}': {why}")]
    BadBind { addr: String, why: String },
    #[error("cannot listen on {addr}: {err} (is the port in use?)")]
    Listen {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error(
        "cannot listen on {addr}: already in use by {holder}; if that is a backend left from an \
         earlier run (or anything else with SO_REUSEPORT), the two would share the connections \
         without a word: stop it or choose another port"
    )]
    Taken { addr: SocketAddr, holder: String },
    #[error("cannot start worker thread {0}: {1}")]
    Thread(usize, std::io::Error),
    #[error("worker {0} failed: {1}")]
    Worker(usize, String),
}

/// The prebuilt responses: (full response, head length).
struct Responses {
    keep: (Vec<u8>, usize),
    keep10: (Vec<u8>, usize),
    close: (Vec<u8>, usize),
    bad: Vec<u8>,
}

impl Responses {
    fn new(body_bytes: usize) -> Responses {
        let body = body_of(body_bytes);
        let mk = |conn: &str| {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{conn}\r\n",
                body.len()
            );
            let n = head.len();
            let mut v = head.into_bytes();
            v.extend_from_slice(&body);
            (v, n)
        };
        Responses {
            keep: mk(""),
            keep10: mk("Connection: keep-alive\r\n"),
            close: mk("Connection: close\r\n"),
            bad: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
        }
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Binds, announces `listening on ADDR` on stdout, and serves until killed.
pub fn run(o: &BackendOpts) -> Result<(), BackendError> {
    let bad = |why: String| BackendError::BadBind {
        addr: o.bind.clone(),
        why,
    };
    let addr: SocketAddr = o
        .bind
        .parse()
        .map_err(|_| bad("expected IP:PORT, e.g. 127.0.0.1:9001".into()))?;
    if o.workers == 0 || o.workers > MAX_WORKERS {
        return Err(bad(format!("--workers must be 1..={MAX_WORKERS}")));
    }
    if o.h2 && o.max_streams == 0 {
        return Err(bad("--max-streams must be at least 1".into()));
    }
    if o.body_bytes > MAX_BODY {
        return Err(bad(format!("--body-bytes must be at most {MAX_BODY}")));
    }
    // The listeners have SO_REUSEPORT (for the backend's own workers), so another process's
    // listener on the port would not make the bind fail: both would share the connections, and
    // a benchmark would measure against half a backend. Ask first, as `ringlb run` does.
    if let Some(holder) = ringlb::listener::owner::listening_holder(addr) {
        return Err(BackendError::Taken {
            addr,
            holder: holder.to_string(),
        });
    }
    // Bind the first listener, then the others on its actual port (port 0 picks one for all).
    let first = reuseport_listener(addr).map_err(|err| BackendError::Listen { addr, err })?;
    let bound = first
        .local_addr()
        .map_err(|err| BackendError::Listen { addr, err })?;
    let mut listeners = vec![first];
    for _ in 1..o.workers {
        listeners.push(
            reuseport_listener(bound).map_err(|err| BackendError::Listen { addr: bound, err })?,
        );
    }
    let mut handles = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let opts = o.clone();
        let h = std::thread::Builder::new()
            .name(format!("backend-{i}"))
            .spawn(move || {
                io::pin_thread(i, opts.cpus.as_deref());
                if opts.h2 {
                    let h2 = crate::h2origin::H2Opts {
                        body: body_of(opts.body_bytes).into(),
                        delay: opts.delay,
                        max_streams: opts.max_streams,
                    };
                    return crate::h2origin::serve(l, &h2);
                }
                io::block_on(|kind| async move {
                    let listener = Listener::from_std(kind, l)?;
                    let resp = Rc::new(Responses::new(opts.body_bytes));
                    loop {
                        match listener.accept().await {
                            Ok(s) => {
                                tokio::task::spawn_local(serve(s, resp.clone(), opts.delay));
                            }
                            Err(e) if is_fatal_accept(&e) => return Err(e),
                            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                })?
            })
            .map_err(|e| BackendError::Thread(i, e))?;
        handles.push(h);
    }
    println!("listening on {bound}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BackendError::Worker(i, e.to_string())),
            Err(_) => return Err(BackendError::Worker(i, "panicked".into())),
        }
    }
    Ok(())
}

/// Accept errors that will not go away by retrying (EMFILE etc. are transient).
pub(crate) fn is_fatal_accept(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK)
    )
}

/// What the connection is doing with the bytes after a request head.
enum Body {
    None,
    Length(u64),
    Chunked(Chunked),
}

/// Serves one connection: parse every complete request in the buffer, queue the answers, write
/// them in one go (pipelining), repeat.
async fn serve(mut s: Stream, resp: Rc<Responses>, delay: Duration) {
    let mut buf = Vec::with_capacity(READ_BUF);
    let mut out: Vec<u8> = Vec::with_capacity(resp.keep.0.len() * 4);
    let mut body = Body::None;
    loop {
        let (res, b) = s.read_append(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut pos = 0;
        let mut close = false;
        loop {
            // Skip the body of the previous request first.
            match &mut body {
                Body::None => {}
                Body::Length(n) => {
                    let take = (buf.len() - pos).min(usize::try_from(*n).unwrap_or(usize::MAX));
                    pos += take;
                    *n -= take as u64;
                    if *n > 0 {
                        break;
                    }
                    body = Body::None;
                }
                Body::Chunked(c) => match c.feed(&buf[pos..]) {
                    Ok(used) => {
                        pos += used;
                        if !c.is_done() {
                            break;
                        }
                        body = Body::None;
                    }
                    Err(_) => {
                        out.extend_from_slice(&resp.bad);
                        close = true;
                        break;
                    }
                },
            }
            if pos == buf.len() {
                break;
            }
            match parse_request(&buf[pos..]) {
                Ok(None) => break,
                Ok(Some(req)) => {
                    pos += req.head_len;
                    body = req.body;
                    let (full, head_len) = if req.close {
                        &resp.close
                    } else if req.http10 {
                        &resp.keep10
                    } else {
                        &resp.keep
                    };
                    let bytes = if req.head {
                        &full[..*head_len]
                    } else {
                        &full[..]
                    };
                    out.extend_from_slice(bytes);
                    if req.close {
                        close = true;
                        break;
                    }
                }
                Err(()) => {
                    out.extend_from_slice(&resp.bad);
                    close = true;
                    break;
                }
            }
        }
        buf.drain(..pos);
        if buf.len() == buf.capacity() && !close {
            // A head larger than the buffer: refuse it.
            out.extend_from_slice(&resp.bad);
            close = true;
        }
        if !out.is_empty() {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let (res, o) = s.write_all(out).await;
            out = o;
            out.clear();
            if res.is_err() {
                break;
            }
        }
        if close {
            break;
        }
    }
    s.shutdown();
}

struct Req {
    head_len: usize,
    http10: bool,
    close: bool,
    head: bool,
    body: Body,
}

/// Parses one request head; `Ok(None)` when incomplete.
fn parse_request(buf: &[u8]) -> Result<Option<Req>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let http10 = r.version == Some(0);
    let mut close = http10;
    let mut body = Body::None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, b"close") {
                close = true;
            } else if has_token(h.value, b"keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if !matches!(body, Body::Chunked(_)) {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(())?;
                body = Body::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !last_token_is(h.value, b"chunked") {
                return Err(());
            }
            body = Body::Chunked(Chunked::default());
        }
    }
    Ok(Some(Req {
        head_len,
        http10,
        close,
        head: r.method == Some("HEAD"),
        body,
    }))
}
