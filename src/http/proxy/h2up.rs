//! An HTTP/1.1 client's request forwarded over HTTP/2 to a target (`protocol_version = "http2"`
//! or `"grpc"`): the forwarded head becomes HEADERS, the body (length or chunked) DATA frames
//! within the target's window, and the response comes back in HTTP/1.1 form (its length, or
//! chunked with the target's trailers; close-delimited to an HTTP/1.0 client).
//!
//! Runs in the client connection's task; the stream belongs to that task, its connection to
//! the worker's per-target HTTP/2 pool (`http2::upstream`).

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};

use super::*;
use crate::http2::upstream::{request, H2Up};
use crate::io::deadline;

/// How the request body ended.
enum Upload {
    Done,
    /// The target answered before the body was all sent: the rest is not read, so the
    /// connection closes after the response.
    Early,
    Fail(RelayError),
}

impl ClientConn {
    /// The exchange of one request (head at `rbuf[..head_len]`, forwarded form in `fwd`) with
    /// an HTTP/2 target.
    pub(super) async fn exchange_h2(
        &mut self,
        head_len: usize,
        framing: Framing,
        fwd: Vec<u8>,
        client_keep: bool,
        rw: &Rewrites,
    ) -> Next {
        let method = self.head.method;
        let scheme = if self.group.upstream_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let req = request::from_h1(&fwd, scheme, &self.plan.bound.to_string(), false);
        self.w.give_buf(fwd);
        let body_left = !framing.is_done();
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(listener = %self.plan.name, client = %self.peer, error = %e, "request has no HTTP/2 form");
                self.stats().error(ErrorKind::BadRequest);
                self.send_error(400, true, NO_HEADERS).await;
                return Next::Close;
            }
        };
        self.rbuf.drain(..head_len);
        let replayable = !body_left && method.is_idempotent();
        let mut failed: Vec<u64> = Vec::new();
        let mut resent = false;
        let mut framing = Some(framing);
        loop {
            let mut up = match self.cx().send_h2(&req, !body_left, &failed).await {
                Ok(up) => up,
                Err((status, extra)) => {
                    let close = body_left || !client_keep;
                    self.send_error(status, close, extra).await;
                    return if close { Next::Close } else { Next::KeepAlive };
                }
            };
            let mut response = up.response.take();
            let mut upload = Upload::Done;
            // The body bytes read so far, and then the bytes after the body (a pipelined request).
            let mut buf = std::mem::take(&mut self.rbuf);
            let mut relayed = None;
            if let Some(send) = up.body.take() {
                let Some(resp) = response.as_mut() else {
                    self.rbuf = buf;
                    return Next::Close;
                };
                let Some(framing) = framing.take() else {
                    self.rbuf = buf;
                    return Next::Close;
                };
                let pump = self.upload(send, framing, &mut buf);
                tokio::pin!(pump);
                let early = tokio::select! {
                    biased;
                    r = resp => Some(r),
                    u = &mut pump => {
                        upload = u;
                        None
                    }
                };
                match early {
                    Some(Ok(resp)) => {
                        response = None;
                        // The target answered before the body was all sent (a full-duplex target
                        // may want the rest): relay the response while the upload goes on, then
                        // close (what is left of the body is not read).
                        upload = Upload::Early;
                        let relay = self.relay_h2_response(&mut up, resp, method, false, rw);
                        tokio::pin!(relay);
                        relayed = Some(tokio::select! {
                            biased;
                            next = &mut relay => next,
                            _ = &mut pump => relay.await,
                        });
                    }
                    Some(Err(e)) => {
                        tracing::debug!(target = %up.target.target.addr, error = %e, "HTTP/2 upstream stream failed");
                        upload = Upload::Early;
                        response = None;
                    }
                    None => {}
                }
            }
            self.rbuf = buf;
            if let Some(next) = relayed {
                return next.min_close();
            }
            if let Upload::Fail(e) = upload {
                let status = match e {
                    RelayError::ReadTimeout => Some(408),
                    RelayError::Framing(b) => Some(b.status()),
                    RelayError::WriteFailed => Some(502),
                    RelayError::ReadFailed | RelayError::Truncated => None,
                };
                if let Some(status) = status {
                    match status {
                        502 => self.stats().error(ErrorKind::UpstreamReset),
                        408 => {
                            self.stats().error(ErrorKind::BadRequest);
                            self.rejected(Rejection::BodyTimeout, status);
                        }
                        _ => {
                            self.stats().error(ErrorKind::BadRequest);
                            self.rejected(Rejection::from_status(status), status);
                        }
                    }
                    self.send_error(status, true, NO_HEADERS).await;
                }
                return Next::Close;
            }
            let resp_timeout = self.group.settings.response_timeout;
            let resp = match response.take() {
                Some(f) => timeout(resp_timeout, f).await,
                // The stream failed while the body went up (logged above).
                None => Ok(Err(h2::Error::from(Reason::CANCEL))),
            };
            let resp = match resp {
                Ok(Ok(r)) => r,
                Ok(Err(e)) if crate::http2::upstream::unprocessed(&e) => {
                    // Refused unprocessed: not the target's failure; a bodyless idempotent
                    // request goes once more on a fresh connection.
                    up.retire_conn();
                    if replayable && !resent {
                        resent = true;
                        continue;
                    }
                    self.stats().error(ErrorKind::UpstreamReset);
                    let close = !client_keep || matches!(upload, Upload::Early);
                    self.send_error(502, close, NO_HEADERS).await;
                    return if close { Next::Close } else { Next::KeepAlive };
                }
                res => {
                    // A response that did not come counts toward the target's passive_failures.
                    let (kind, status) = if res.is_err() {
                        up.retire_conn();
                        (ErrorKind::UpstreamTimeout, 504)
                    } else {
                        (ErrorKind::UpstreamReset, 502)
                    };
                    self.cx().upstream_failed(&up.target, kind);
                    // A bodyless idempotent request goes to another target (`retry_on`).
                    failed.push(up.target.target.id);
                    let cause = if kind == ErrorKind::UpstreamTimeout {
                        RetryCause::Timeout
                    } else {
                        RetryCause::Reset
                    };
                    if self.cx().may_retry(cause, replayable, failed.len()) {
                        continue;
                    }
                    let close = !client_keep || matches!(upload, Upload::Early);
                    self.send_error(status, close, NO_HEADERS).await;
                    return if close { Next::Close } else { Next::KeepAlive };
                }
            };
            return self
                .relay_h2_response(&mut up, resp, method, client_keep, rw)
                .await;
        }
    }

    /// Streams the rest of the request body (bytes already in `rbuf`, then from the client) to
    /// the target as DATA. Bytes after the body (a pipelined request) stay in `rbuf`.
    async fn upload(
        &self,
        mut send: SendStream<Bytes>,
        mut framing: Framing,
        buf: &mut Vec<u8>,
    ) -> Upload {
        let idle = self.plan.limits.idle_timeout;
        let mut start = 0;
        loop {
            let avail = buf.len() - start;
            let (consumed, data) = match &mut framing {
                Framing::Length(n) => {
                    let take = (*n).min(avail as u64) as usize;
                    *n -= take as u64;
                    (take, take)
                }
                Framing::Chunked(d) => match d.advance_dechunked(&mut buf[start..], None) {
                    Ok((p, n)) => (p.consumed, n),
                    Err(e) => {
                        return Upload::Fail(RelayError::Framing(e));
                    }
                },
                _ => (avail, avail),
            };
            self.ex.add_in(consumed as u64);
            let done = framing.is_done();
            if data > 0 {
                let chunk = Bytes::copy_from_slice(&buf[start..start + data]);
                if crate::http2::send_flow(&mut send, chunk, done, idle)
                    .await
                    .is_err()
                {
                    return Upload::Fail(RelayError::WriteFailed);
                }
            } else if done && send.send_data(Bytes::new(), true).is_err() {
                return Upload::Fail(RelayError::WriteFailed);
            }
            if done {
                // A pipelined request after the body stays for the next round.
                buf.drain(..start + consumed);
                return Upload::Done;
            }
            buf.clear();
            start = 0;
            if buf.capacity() < RELAY_CHUNK {
                buf.reserve(RELAY_CHUNK);
            }
            // Past `idle`, only the client's receiving side is shut down: its 408 can go out.
            let watch = deadline::arm_read(self.client.as_raw_fd(), idle);
            let (res, b) = self.client.read(std::mem::take(buf)).await;
            *buf = b;
            if watch.expired() {
                return Upload::Fail(RelayError::ReadTimeout);
            }
            match res {
                Ok(0) => {
                    send.send_reset(Reason::CANCEL);
                    return Upload::Fail(RelayError::Truncated);
                }
                Ok(n) => self.stats().bytes(n as u64, 0),
                Err(_) => {
                    send.send_reset(Reason::CANCEL);
                    return Upload::Fail(RelayError::ReadFailed);
                }
            }
        }
    }

    /// Writes the target's response in HTTP/1.1 form: its length when it gave one, else chunked
    /// (trailers included) to an HTTP/1.1 client, or ended by a close to an HTTP/1.0 one.
    async fn relay_h2_response(
        &self,
        up: &mut H2Up,
        resp: http::Response<RecvStream>,
        method: Method,
        keep: bool,
        rw: &Rewrites,
    ) -> Next {
        let resp_timeout = self.group.settings.response_timeout;
        up.target.failures.set(0);
        let (parts, mut body) = resp.into_parts();
        let status = parts.status.as_u16();
        let no_body = method == Method::Head || status == 204 || status == 304;
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let http10 = self.head.version == Version::Http10;
        let chunked = !no_body && length.is_none() && !http10 && !body.is_end_stream();
        let close_delimited = !no_body && length.is_none() && http10 && !body.is_end_stream();
        let keep = keep && !close_delimited && !self.w.is_draining();
        self.ex.response_head();
        self.ex.status.set(status);
        self.stats().response(status);

        let mut out = self.w.take_buf();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        let cookie = self.response_cookie(&up.target, |name| {
            parts
                .headers
                .get_all(http::header::SET_COOKIE)
                .iter()
                .any(|v| crate::sticky::sets_cookie(v.as_bytes(), name))
        });
        let rid = self.ex.request_id.get();
        let adds = ResponseAdds {
            ops: &rw.response,
            id: self.plan.request_id.as_deref().zip(rid.as_ref()),
            cookie: cookie.as_ref().map(|c| c.as_bytes()),
        };
        for (name, value) in parts.headers.iter() {
            if adds.drops(name.as_str().as_bytes()) {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        adds.write_h1(&mut out);
        if length.is_none() && !no_body && body.is_end_stream() {
            out.extend_from_slice(b"Content-Length: 0\r\n");
        }
        if chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if !keep {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // The connection's last bytes (a closing response whose end is known before they are
        // written) leave with the FIN (`last_response`).
        if !keep && (no_body || body.is_end_stream()) {
            self.last_response();
        }
        let (res, mut out) = self.write_client(out).await;
        if res.is_err() {
            self.w.give_buf(out);
            return Next::Close;
        }
        if no_body || body.is_end_stream() {
            self.w.give_buf(out);
            return if keep { Next::KeepAlive } else { Next::Close };
        }
        let mut sent: u64 = 0;
        let mut terminated = false;
        loop {
            let data = match timeout(resp_timeout, body.data()).await {
                Ok(None) => break,
                Ok(Some(Ok(d))) => d,
                Ok(Some(Err(_))) | Err(_) => {
                    // Cut short: the client must not take what it got for the whole body.
                    self.stats().error(ErrorKind::UpstreamReset);
                    self.w.give_buf(out);
                    return Next::Reset;
                }
            };
            let n = data.len();
            out.clear();
            // END_STREAM on this DATA: it is the body's last (no trailers follow).
            let last = body.is_end_stream();
            if chunked {
                crate::http::relay::push_chunk(&mut out, &data);
                if last {
                    // The last chunk and the end of the body in one write.
                    out.extend_from_slice(b"0\r\n\r\n");
                    terminated = true;
                }
            } else {
                out.extend_from_slice(&data);
            }
            sent += n as u64;
            // The connection's last bytes leave with the FIN (`last_response`).
            if !keep && last && length.is_none_or(|l| l == sent) {
                self.last_response();
            }
            let (res, o) = self.write_client(out).await;
            out = o;
            if res.is_err() {
                self.w.give_buf(out);
                return Next::Close;
            }
            let _ = body.flow_control().release_capacity(n);
        }
        if length.is_some_and(|l| l != sent) {
            // h2 checks content-length against DATA; this is the belt to its braces.
            self.w.give_buf(out);
            return Next::Reset;
        }
        if chunked && !terminated {
            out.clear();
            out.extend_from_slice(b"0\r\n");
            if let Ok(Ok(Some(trailers))) = timeout(resp_timeout, body.trailers()).await {
                for (name, value) in trailers.iter() {
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"\r\n");
            if !keep {
                self.last_response();
            }
            let (res, o) = self.write_client(out).await;
            out = o;
            if res.is_err() {
                self.w.give_buf(out);
                return Next::Close;
            }
        }
        self.w.give_buf(out);
        if keep {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}
