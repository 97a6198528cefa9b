//! `backend --h2`: an HTTP/2 origin (h2c with prior knowledge, no TLS) on the `h2` crate's
//! server, for benchmarks of HTTP/2 and gRPC upstreams.
//! Runs on each backend worker thread: a tokio current-thread runtime (epoll; `h2` needs tokio's
//! `AsyncRead`/`AsyncWrite`) with a `LocalSet`. A connection task owns its `h2` connection and
//! answers bodiless requests inline; a request with a body gets a task of its own that drains the
//! body (releasing flow-control capacity as it goes) and then answers. The canned answers are
//! built once per thread and shared (`Rc`).
//!
//! Answers: a `POST` whose `content-type` starts with `application/grpc` gets a unary gRPC
//! answer: HEADERS (`:status 200`, `content-type: application/grpc`), one DATA frame with the
//! first length-prefixed message of the request echoed (a fixed small message when the request
//! had none), then trailers `grpc-status: 0`. Broken framing gets `grpc-status: 13`, a compressed
//! message `12`, a message over 4 MiB `8` (gRPC's default receive limit). Any other request gets
//! `200` with the same `text/plain` body as the HTTP/1.1 backend (`--body-bytes`).

use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response};

/// Flow-control windows granted to clients: large, so a request body never waits on a
/// WINDOW_UPDATE round trip (bodies are drained and released at once).
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 1 << 24;
/// Largest gRPC message echoed (gRPC's default `max_receive_message_length`).
const MAX_GRPC_MESSAGE: usize = 4 * 1024 * 1024;
/// The message sent back when a gRPC request carries none: a protobuf-style
/// `field 1 (string) = "hello world"`.
const FIXED_MESSAGE: &[u8] = b"\x0a\x0bhello world";

/// What every connection of the origin is told and answers with.
#[derive(Clone, Debug)]
pub struct H2Opts {
    /// Body of non-gRPC answers.
    pub body: Bytes,
    /// Delay before each answer.
    pub delay: Duration,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to each client.
    pub max_streams: u32,
}

/// The prebuilt parts of the answers (one per thread).
struct Canned {
    body: Bytes,
    body_len: HeaderValue,
    text_plain: HeaderValue,
    grpc_type: HeaderValue,
    grpc_status: HeaderName,
    grpc_message: HeaderName,
    ok_trailers: HeaderMap,
    fixed_message: Bytes,
    delay: Duration,
}

impl Canned {
    fn new(o: &H2Opts) -> Canned {
        let grpc_status = HeaderName::from_static("grpc-status");
        let mut ok_trailers = HeaderMap::with_capacity(1);
        ok_trailers.insert(grpc_status.clone(), HeaderValue::from_static("0"));
        Canned {
            body: o.body.clone(),
            body_len: HeaderValue::from(o.body.len()),
            text_plain: HeaderValue::from_static("text/plain"),
            grpc_type: HeaderValue::from_static("application/grpc"),
            grpc_status,
            grpc_message: HeaderName::from_static("grpc-message"),
            ok_trailers,
            fixed_message: grpc_frame(FIXED_MESSAGE),
            delay: o.delay,
        }
    }

    fn plain_head(&self) -> Response<()> {
        let mut r = Response::new(());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, self.text_plain.clone());
        h.insert(CONTENT_LENGTH, self.body_len.clone());
        r
    }

    fn grpc_head(&self) -> Response<()> {
        let mut r = Response::new(());
        r.headers_mut().insert(CONTENT_TYPE, self.grpc_type.clone());
        r
    }

    fn trailers(&self, status: GrpcStatus) -> HeaderMap {
        match status {
            GrpcStatus::Ok => self.ok_trailers.clone(),
            GrpcStatus::Error(code, why) => {
                let mut t = HeaderMap::with_capacity(2);
                t.insert(self.grpc_status.clone(), HeaderValue::from(code));
                t.insert(self.grpc_message.clone(), HeaderValue::from_static(why));
                t
            }
        }
    }
}

/// A gRPC message with its 5-byte prefix (uncompressed flag, big-endian length).
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

enum GrpcStatus {
    Ok,
    Error(u16, &'static str),
}

/// The answer to a gRPC request body: the first message echoed with its prefix (the fixed
/// message when the body is empty), or the error status.
fn grpc_answer(body: &Bytes, fixed: &Bytes) -> Result<Bytes, GrpcStatus> {
    if body.is_empty() {
        return Ok(fixed.clone());
    }
    if body.len() < 5 {
        return Err(GrpcStatus::Error(13, "truncated message prefix"));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len > MAX_GRPC_MESSAGE {
        return Err(GrpcStatus::Error(8, "message larger than 4 MiB"));
    }
    if body.len() < 5 + len {
        return Err(GrpcStatus::Error(13, "truncated message"));
    }
    if body[0] != 0 {
        return Err(GrpcStatus::Error(
            12,
            "compressed messages are not supported",
        ));
    }
    Ok(body.slice(..5 + len))
}

/// Serves `l` on this thread until a fatal accept error.
pub fn serve(l: std::net::TcpListener, o: &H2Opts) -> io::Result<()> {
    l.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(l)?;
        let canned = Rc::new(Canned::new(o));
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_concurrent_streams(o.max_streams);
        let builder = Rc::new(builder);
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::task::spawn_local(serve_conn(tcp, builder.clone(), canned.clone()));
                }
                Err(e) if crate::backend::is_fatal_accept(&e) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
}

/// One client connection: the HTTP/2 handshake, then every request until the client goes away.
async fn serve_conn(tcp: tokio::net::TcpStream, builder: Rc<h2::server::Builder>, c: Rc<Canned>) {
    let Ok(mut conn) = builder.handshake::<_, Bytes>(tcp).await else {
        return;
    };
    while let Some(next) = conn.accept().await {
        let Ok((req, respond)) = next else { break };
        let grpc = is_grpc(&req);
        if req.body().is_end_stream() && c.delay.is_zero() {
            let head = req.method() == Method::HEAD;
            answer(&c, respond, grpc, head, Ok(Bytes::new()));
        } else {
            tokio::task::spawn_local(drain_and_answer(req, respond, grpc, c.clone()));
        }
    }
}

fn is_grpc(req: &Request<RecvStream>) -> bool {
    req.method() == Method::POST
        && req
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Reads the request body to its end (kept only for gRPC, up to one message past the limit),
/// releasing flow-control capacity as it arrives, then answers.
async fn drain_and_answer(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    grpc: bool,
    c: Rc<Canned>,
) {
    let head = req.method() == Method::HEAD;
    let mut body = req.into_body();
    let mut kept: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return; // reset by the client: nothing to answer
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        total = total.saturating_add(chunk.len());
        if !grpc || total > MAX_GRPC_MESSAGE + 5 {
            continue;
        }
        // One chunk (the usual case) is kept without a copy.
        match (&mut kept, &mut joined) {
            (None, None) => kept = Some(chunk),
            (Some(first), None) => {
                let mut j = BytesMut::with_capacity(first.len() + chunk.len());
                j.extend_from_slice(first);
                j.extend_from_slice(&chunk);
                kept = None;
                joined = Some(j);
            }
            (_, Some(j)) => j.extend_from_slice(&chunk),
        }
    }
    if !c.delay.is_zero() {
        tokio::time::sleep(c.delay).await;
    }
    let body = if total > MAX_GRPC_MESSAGE + 5 {
        Err(GrpcStatus::Error(8, "message larger than 4 MiB"))
    } else {
        Ok(joined.map_or_else(|| kept.unwrap_or_default(), BytesMut::freeze))
    };
    answer(&c, respond, grpc, head, body);
}

/// Sends the whole answer (queued in `h2`; the connection task writes it).
fn answer(
    c: &Canned,
    mut respond: SendResponse<Bytes>,
    grpc: bool,
    head: bool,
    body: Result<Bytes, GrpcStatus>,
) {
    if grpc {
        let (message, status) = match body.and_then(|b| grpc_answer(&b, &c.fixed_message)) {
            Ok(m) => (Some(m), GrpcStatus::Ok),
            Err(s) => (None, s),
        };
        let Ok(mut send) = respond.send_response(c.grpc_head(), false) else {
            return;
        };
        if let Some(m) = message {
            if send.send_data(m, false).is_err() {
                return;
            }
        }
        let _ = send.send_trailers(c.trailers(status));
        return;
    }
    let r = c.plain_head();
    let empty = head || c.body.is_empty();
    let Ok(mut send) = respond.send_response(r, empty) else {
        return;
    };
    if !empty {
        let _ = send.send_data(c.body.clone(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_answer_echoes_the_first_message() {
        let fixed = grpc_frame(FIXED_MESSAGE);
        let msg = grpc_frame(b"\x0a\x03abc");
        let mut two = BytesMut::from(&msg[..]);
        two.extend_from_slice(&grpc_frame(b"zz"));
        assert_eq!(grpc_answer(&msg, &fixed).ok(), Some(msg.clone()));
        assert_eq!(grpc_answer(&two.freeze(), &fixed).ok(), Some(msg.clone()));
        assert_eq!(grpc_answer(&Bytes::new(), &fixed).ok(), Some(fixed.clone()));
        assert!(matches!(
            grpc_answer(&msg.slice(..msg.len() - 1), &fixed),
            Err(GrpcStatus::Error(13, _))
        ));
        assert!(matches!(
            grpc_answer(&Bytes::from_static(b"\0\0"), &fixed),
            Err(GrpcStatus::Error(13, _))
        ));
        let mut compressed = BytesMut::from(&msg[..]);
        compressed[0] = 1;
        assert!(matches!(
            grpc_answer(&compressed.freeze(), &fixed),
            Err(GrpcStatus::Error(12, _))
        ));
    }

    /// A real server thread and the `h2` client: a gRPC call (echo, trailers), a GET, a POST
    /// with a body larger than the initial windows (capacity must be released).
    #[test]
    fn serves_grpc_and_plain_requests() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let opts = H2Opts {
            body: Bytes::from_static(b"hello world\n"),
            delay: Duration::ZERO,
            max_streams: 100,
        };
        std::thread::spawn(move || serve(l, &opts));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let req = |method: Method, grpc: bool| {
                let mut b = Request::builder()
                    .method(method)
                    .uri(format!("http://{addr}/svc.Echo/Call"));
                if grpc {
                    b = b
                        .header("content-type", "application/grpc")
                        .header("te", "trailers");
                }
                b.body(()).unwrap()
            };
            // gRPC unary call.
            let msg = grpc_frame(b"\x0a\x05hello");
            let (resp, mut body) = send.send_request(req(Method::POST, true), false).unwrap();
            body.send_data(msg.clone(), true).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "application/grpc");
            let mut rb = resp.into_body();
            let mut got = Vec::new();
            while let Some(d) = rb.data().await {
                let d = d.unwrap();
                let _ = rb.flow_control().release_capacity(d.len());
                got.extend_from_slice(&d);
            }
            assert_eq!(got, msg);
            let trailers = rb.trailers().await.unwrap().unwrap();
            assert_eq!(trailers["grpc-status"], "0");
            // Plain GET.
            let (resp, _) = send.send_request(req(Method::GET, false), true).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-length"], "12");
            let mut rb = resp.into_body();
            let mut got = Vec::new();
            while let Some(d) = rb.data().await {
                got.extend_from_slice(&d.unwrap());
            }
            assert_eq!(got, b"hello world\n");
            // A 3 MiB POST: more than the server's 1 MiB stream window; it only gets through
            // if the server releases the capacity it read.
            let (resp, mut body) = send.send_request(req(Method::POST, false), false).unwrap();
            body.send_data(Bytes::from(vec![b'x'; 3 << 20]), true)
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(10), resp)
                .await
                .expect("the server never answered the large POST")
                .unwrap();
            assert_eq!(resp.status(), 200);
        });
    }
}
