//! HTTP/1.1 for the proxy: strict head parsing in place (`parse`), chunked body framing (`body`)
//! and ringlb's own short responses (`error`). Everything here is pure code without I/O, run on
//! the worker thread that owns the connection; the caller owns every buffer and head passed in.

pub mod body;
pub mod error;
pub mod parse;
pub mod proxy;
pub mod relay;
pub mod rewrite;

mod syntax;
