//! The client side of an HTTP/1.1 busy spell: reading request heads (idle, header and
//! slowloris timeouts), ringlb's own short error responses, and writes to the client, where a
//! connection's last response is held back to leave with its FIN.
//!
//! Runs in the client connection's task on the worker that accepted it; `ClientConn` owns the
//! socket and its buffers.

use super::*;

impl ClientConn {
    /// Reads until `rbuf` holds a complete request head. Waits `idle_timeout` for the first byte
    /// of a request and `header_timeout` for the rest of the head (408 then: slowloris).
    pub(super) async fn read_head(&mut self) -> HeadRead {
        let header_timeout = self.plan.limits.header_timeout;
        // Set once the head has begun (its first byte's time, `ex.start`, plus header_timeout).
        let mut deadline: Option<tokio::time::Instant> = None;
        // Length before the last read: only bytes that could end a head trigger a re-parse, so a
        // client sending one byte per packet costs linear, not quadratic, parse time.
        let mut prev_len = 0;
        loop {
            if !self.rbuf.is_empty() {
                if deadline.is_none() {
                    let first_byte = self.ex.started();
                    deadline = Some(tokio::time::Instant::from_std(first_byte) + header_timeout);
                }
                if self.plan.http2.is_some()
                    && self.rbuf.len() >= 16
                    && crate::http2::is_preface(&self.rbuf)
                    && matches!(self.client, MaybeTls::Plain(_))
                {
                    return HeadRead::Http2;
                }
                let worth_parsing = prev_len == 0
                    || could_complete(&self.rbuf, prev_len)
                    || self.rbuf.len() > self.plan.head_limits.max_uri_bytes;
                if worth_parsing {
                    match parse_request(&self.rbuf, &self.plan.head_limits, &mut self.head) {
                        Ok(Some(n)) => return HeadRead::Complete(n),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(listener = %self.plan.name, client = %self.peer, error = %e, "bad request");
                            return HeadRead::Reject(e.status(), ErrorKind::BadRequest);
                        }
                    }
                }
            }
            prev_len = self.rbuf.len();
            let got = match deadline {
                None if self.w.idle_closing() => return HeadRead::Closed,
                None => match self.read_idle().await {
                    IdleRead::Bytes(n) => Some(n),
                    IdleRead::Closed => None,
                    IdleRead::Parked => return HeadRead::Parked,
                },
                Some(d) => match self.read_partial(d).await {
                    Err(()) => return HeadRead::Reject(408, ErrorKind::ClientTimeout),
                    Ok(got) => got,
                },
            };
            match got {
                Some(n) => self.stats().bytes(n as u64, 0),
                None => return HeadRead::Closed,
            }
        }
    }

    /// Reads the first bytes of a request. The connection holds a read buffer only while bytes
    /// are expected soon: a read that brings nothing for a while is withdrawn (see `io::park`)
    /// and the buffer goes back to the worker's free list ([`IdleRead::Parked`]).
    pub(super) async fn read_idle(&mut self) -> IdleRead {
        if self.rbuf.capacity() == 0 {
            self.rbuf = bufs::take_small();
        }
        let key = self.w.idle_enter(self.client.as_raw_fd());
        let buf = std::mem::take(&mut self.rbuf);
        let got = match self.client.read_or_park(buf).await {
            ParkRead::Read(Ok(n), buf) if n > 0 => {
                self.rbuf = buf;
                IdleRead::Bytes(n)
            }
            ParkRead::Read(_, buf) => {
                self.rbuf = buf;
                IdleRead::Closed
            }
            ParkRead::Parked(buf) => {
                bufs::give(buf);
                IdleRead::Parked
            }
        };
        self.w.idle_leave(key);
        got
    }

    /// Reads more of a head that has begun, until `deadline`. `Err`: too slow (the pending read
    /// is ended by the shutdown that follows the 408); `Ok(None)`: closed or failed.
    pub(super) async fn read_partial(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<Option<usize>, ()> {
        // Room for the rest of a head, never past the limit (+1 so an over-long head is seen).
        let want = (self.plan.head_limits.max_header_bytes + 1).saturating_sub(self.rbuf.len());
        if self.rbuf.capacity() == self.rbuf.len() {
            self.rbuf.reserve(want.clamp(1, CLIENT_BUF));
        }
        let buf = std::mem::take(&mut self.rbuf);
        match timeout_at(deadline, self.client.read(buf)).await {
            Err(_) => Err(()),
            Ok((res, buf)) => {
                self.rbuf = buf;
                Ok(res.ok().filter(|&n| n > 0))
            }
        }
    }

    /// Writes a short error response (with `Connection: close` when `close`).
    pub(super) async fn send_error(&mut self, status: u16, close: bool, extra: &[(&str, &str)]) {
        self.stats().response(status);
        self.ex.status.set(status);
        let mut out = self.w.take_buf();
        let id = self.ex.request_id.get();
        match self.plan.request_id.as_deref().zip(id.as_ref()) {
            // The request id goes back on ringlb's own answers too.
            Some((name, id)) => {
                let mut all = extra.to_vec();
                all.push((name, id.as_str()));
                write_own(&mut out, status, &all, close);
            }
            None => write_own(&mut out, status, extra, close),
        }
        if !close && self.head.method == Method::Head {
            // A HEAD request on a kept connection gets the head alone (a body would be taken for
            // the next response).
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                out.truncate(end + 4);
            }
        }
        if close {
            self.last_response();
        }
        let (res, out) = self.write_client(out).await;
        self.w.give_buf(out);
        if res.is_err() || close {
            let _ = self.client.shutdown(std::net::Shutdown::Both);
            // Shut down: the tail went with the FIN.
            self.corked.set(false);
        }
    }

    /// The response about to be written ends the connection, whole: its tail goes out with
    /// the FIN (see [`crate::io::Stream::cork`]). A plain socket takes it with MSG_MORE sends in
    /// `write_client_range`; TLS, whose records are written by the TLS layer, is corked now. The
    /// caller shuts the socket down right after the write (`run` does when the exchange says
    /// close).
    pub(super) fn last_response(&self) {
        self.corked.set(true);
        if let MaybeTls::Tls(_) = self.client {
            let _ = self.client.cork();
        }
    }

    pub(super) async fn write_client(&self, buf: Vec<u8>) -> (Result<(), ()>, Vec<u8>) {
        let end = buf.len();
        self.write_client_range(buf, 0, end).await
    }

    pub(super) async fn write_client_range(
        &self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    ) -> (Result<(), ()>, Vec<u8>) {
        let end = end.min(buf.len());
        let len = end.saturating_sub(start) as u64;
        let mut start = start.min(end);
        if let (true, MaybeTls::Plain(s)) = (self.corked.get(), &self.client) {
            // The connection's last bytes go straight to the socket, held for the FIN; what
            // it cannot take now follows, corked, the usual way.
            match s.send_last_now(&buf[start..end]) {
                Ok(n) => start += n,
                Err(_) => return (Err(()), buf),
            }
            if start == end {
                self.stats().bytes(0, len);
                self.ex.add_out(len);
                return (Ok(()), buf);
            }
            let _ = s.cork();
        }
        // A client that does not read for `idle_timeout`: the watchdog shuts its socket down.
        let watch =
            crate::io::deadline::arm(self.client.as_raw_fd(), self.plan.limits.idle_timeout);
        let (res, buf) = self.client.write_range(buf, start, end).await;
        match res {
            Ok(()) if !watch.expired() => {
                self.stats().bytes(0, len);
                self.ex.add_out(len);
                (Ok(()), buf)
            }
            _ => (Err(()), buf),
        }
    }
}
