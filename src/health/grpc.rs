//! The gRPC health check: one `grpc.health.v1.Health/Check` call over HTTP/2 (h2c, or h2 by
//! ALPN for https groups), healthy when the answer is `SERVING`.
//!
//! Runs on the health thread (plain tokio); each probe owns its connection and closes it. The
//! two messages are one field each, so they are written and read here by hand (a protobuf
//! string field 1 out, an enum field 1 back) rather than through generated code.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::target::CheckOutcome;
use crate::tls::UpstreamTls;

/// The method every gRPC health service answers (grpc/grpc doc/health-checking.md).
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;
/// Largest answer read: a health response is a few bytes.
const MAX_ANSWER: usize = 16 * 1024;

/// One check of `addr`: `Pass` on SERVING with grpc-status 0; `ResponseCodeMismatch` for any
/// other status (NOT_SERVING, an unknown service, UNIMPLEMENTED); `None` when the call could not
/// be made (refused, reset, not HTTP/2, malformed).
pub async fn check(
    s: TcpStream,
    addr: SocketAddr,
    service: &str,
    tls: Option<&UpstreamTls>,
) -> Option<CheckOutcome> {
    let _ = s.set_nodelay(true);
    match tls {
        None => call(s, "http", addr, service).await,
        Some(t) => {
            let connector = tokio_rustls::TlsConnector::from(t.config.clone());
            let s = connector.connect(t.name_for(addr), s).await.ok()?;
            if s.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_H2) {
                return None;
            }
            call(s, "https", addr, service).await
        }
    }
}

async fn call<T>(io: T, scheme: &str, addr: SocketAddr, service: &str) -> Option<CheckOutcome>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .max_header_list_size(MAX_ANSWER as u32)
        .handshake::<_, Bytes>(io)
        .await
        .ok()?;
    // Aborted when the check ends, or when its timeout drops this future: a target that stops
    // reading cannot keep a probe's connection alive.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    exchange(send, scheme, addr, service).await
}

async fn exchange(
    send: h2::client::SendRequest<Bytes>,
    scheme: &str,
    addr: SocketAddr,
    service: &str,
) -> Option<CheckOutcome> {
    let mut send = send.ready().await.ok()?;
    let req = Request::post(format!("{scheme}://{addr}{CHECK_PATH}"))
        .version(Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "ringlb-health-check")
        .body(())
        .ok()?;
    let (resp, mut body) = send.send_request(req, false).ok()?;
    body.send_data(Bytes::from(request_message(service)), true)
        .ok()?;
    let resp = resp.await.ok()?;
    if resp.status() != http::StatusCode::OK {
        return Some(CheckOutcome::ResponseCodeMismatch);
    }
    // A trailers-only answer carries the status in its head.
    if let Some(code) = grpc_status(resp.headers()) {
        if code != 0 {
            return Some(CheckOutcome::ResponseCodeMismatch);
        }
    }
    let mut recv = resp.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.ok()?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        if data.len() + chunk.len() > MAX_ANSWER {
            return None;
        }
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.ok()?;
    match trailers.as_ref().and_then(grpc_status) {
        Some(0) => {}
        Some(_) => return Some(CheckOutcome::ResponseCodeMismatch),
        None if data.is_empty() => return Some(CheckOutcome::ResponseCodeMismatch),
        None => return None,
    }
    let status = serving_status(&data)?;
    Some(if status == SERVING {
        CheckOutcome::Pass
    } else {
        CheckOutcome::ResponseCodeMismatch
    })
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// A length-prefixed `HealthCheckRequest { service }` (field 1, length-delimited; an empty
/// service is the empty message).
pub fn request_message(service: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.first()?;
        b.advance(1);
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `HealthCheckResponse.status` from one length-prefixed message (absent field = UNKNOWN, 0).
/// Unknown fields are skipped, as protobuf readers do.
pub fn serving_status(framed: &[u8]) -> Option<u64> {
    let (&flag, rest) = framed.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = get_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(&mut msg)?,
            (_, 0) => {
                get_varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..)?,
            (_, 2) => {
                let n = get_varint(&mut msg)? as usize;
                msg = msg.get(n..)?;
            }
            (_, 5) => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_messages_name_the_service() {
        assert_eq!(request_message(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            request_message("a.B"),
            vec![0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
    }

    #[test]
    fn serving_status_reads_field_one_and_skips_others() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        // Empty message: UNKNOWN.
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        // An unknown string field 2 before the status.
        assert_eq!(
            serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
            Some(1)
        );
        // Truncated or compressed.
        assert_eq!(serving_status(&[0, 0, 0, 0, 3, 0x08]), None);
        assert_eq!(serving_status(&[1, 0, 0, 0, 0]), None);
    }
}
