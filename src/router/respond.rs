//! Writes the answer of a rule that does not forward: a redirect (`Location` built from the
//! request) or a fixed response.
//!
//! Pure function over the request's bytes, run by the worker serving the request into a buffer
//! that worker owns.

use std::net::SocketAddr;

use super::redirect::{location, RequestParts};
use super::Route;
use crate::http::error::write_response;
use crate::http::parse::{Method, RequestHead};

/// Appends the answer of `route` (a redirect or a fixed response) to `out`, with
/// `Connection: close` when `close`; returns its status. `None` for a forward (nothing written).
pub fn write_answer(
    out: &mut Vec<u8>,
    route: &Route<'_>,
    buf: &[u8],
    head: &RequestHead,
    scheme: &'static str,
    bound: SocketAddr,
    close: bool,
) -> Option<u16> {
    match route {
        Route::Forward(..) => None,
        Route::Redirect(r) => {
            let listener_host = bound.ip().to_string();
            let parts = RequestParts {
                scheme,
                host: head.host.map(|s| s.of(buf)),
                path: head.path.of(buf),
                query: head.query.map(|s| s.of(buf)),
                listener_port: bound.port(),
                listener_host: &listener_host,
            };
            let loc = location(r, &parts);
            write_response(out, r.status, &[("Location", &loc)], "", b"", close);
            Some(r.status)
        }
        Route::Fixed(f) => {
            let body = f.body.as_bytes();
            write_response(out, f.status, &[], &f.content_type, body, close);
            if head.method == Method::Head {
                out.truncate(out.len().saturating_sub(body.len()));
            }
            Some(f.status)
        }
    }
}
