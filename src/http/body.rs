//! Streaming validator of a chunked body that passes through ringlb unchanged: it walks the
//! framing (sizes, extensions, data, CRLFs, trailers) byte by byte, keeps no chunk data, and says
//! where the body ends. Runs on the worker thread that owns the connection; the decoder is owned
//! by that connection's request or response state.

use crate::http::syntax::{is_field_vchar, is_ows, is_tchar};

/// Longest chunk-size line (size, extensions, CRLF) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section (all trailer fields plus the final CRLF) accepted.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most hex digits in a chunk size, leading zeros included (16 fill a u64).
pub const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// How much of the data passed to `advance` belonged to the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkProgress {
    /// Bytes of the input that are part of the chunked body (forward exactly these).
    pub consumed: usize,
    /// The body ended within them; bytes after `consumed` belong to the next message.
    pub done: bool,
}

/// Why a chunked body is refused.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    #[error("body exceeds max_body_bytes ({limit} bytes): send less, or raise listener.limits.max_body_bytes")]
    TooLarge { limit: u64 },
    #[error("invalid chunk size: hex digits only (no sign, no 0x, at most 16 digits), then `;ext` or CRLF")]
    BadChunkSize,
    #[error("chunk-size line longer than {MAX_CHUNK_LINE} bytes (oversized chunk extensions)")]
    ChunkLineTooLong,
    #[error("invalid byte in a chunk extension")]
    BadChunkExtension,
    #[error("bare LF in chunked framing: chunk lines and data must end with CRLF")]
    BareLf,
    #[error("missing CRLF in chunked framing (after a chunk-size line, chunk data or a trailer)")]
    MissingCrlf,
    #[error("chunked trailer section exceeds {MAX_TRAILER_BYTES} bytes")]
    TrailerTooLarge,
    #[error("malformed trailer field in a chunked body (name token, colon, no folding or control bytes)")]
    BadTrailer,
}

impl BodyError {
    /// 413 for an oversized body, 400 for broken framing.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            _ => 400,
        }
    }

    /// Short snake_case label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "body_too_large",
            BodyError::BadChunkSize => "bad_chunk_size",
            BodyError::ChunkLineTooLong => "chunk_line_too_long",
            BodyError::BadChunkExtension => "bad_chunk_extension",
            BodyError::BareLf => "chunked_bare_lf",
            BodyError::MissingCrlf => "chunked_missing_crlf",
            BodyError::TrailerTooLarge => "trailer_too_large",
            BodyError::BadTrailer => "bad_trailer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Start of a chunk-size line: a hex digit must come.
    SizeStart,
    /// More hex digits, BWS, `;` or CR.
    Size,
    /// BWS after the size: only more SP/HTAB or `;`.
    SizeWs,
    /// Chunk extensions up to CR.
    Ext,
    /// CR of the size line seen: LF must come.
    SizeLf,
    /// Chunk data: `remaining` bytes left.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen: LF must come.
    EndLf,
    Done,
    Failed(BodyError),
}

/// Streaming validator of a chunked body; feed it the bytes after the head, in any pieces.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_body: u64,
    /// Size being read, then the data bytes left in the current chunk.
    size: u64,
    digits: u8,
    line_len: usize,
    trailer_len: usize,
    /// Sum of all chunk sizes announced so far.
    announced: u64,
    decoded: u64,
    /// A request body: trailer fields named like ringlb's client-certificate fields are
    /// refused (they pass through byte for byte, and some servers merge trailers into headers).
    refuse_identity: bool,
    /// The trailer name being read (its first `TRAILER_NAME_KEPT` bytes) and its length.
    name: [u8; TRAILER_NAME_KEPT],
    name_len: usize,
}

/// Longest trailer name kept for the client-certificate check (the longest such name).
const TRAILER_NAME_KEPT: usize = 25;

impl ChunkedDecoder {
    /// A decoder for one body of at most `max_body` data bytes.
    pub fn new(max_body: u64) -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            max_body,
            size: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
            announced: 0,
            decoded: 0,
            refuse_identity: false,
            name: [0; TRAILER_NAME_KEPT],
            name_len: 0,
        }
    }

    /// A decoder for a client's request body: like [`ChunkedDecoder::new`], and a trailer field
    /// named `X-Client-Cert*` is a `BadTrailer`.
    pub fn for_request(max_body: u64) -> Self {
        ChunkedDecoder {
            refuse_identity: true,
            ..ChunkedDecoder::new(max_body)
        }
    }

    /// True once the final CRLF after the last chunk and trailers was consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True once the last chunk (size 0) was read: every data byte has passed, only trailers and
    /// the final CRLF may be left.
    pub fn data_done(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::EndLf
                | State::Done
        )
    }

    /// Data bytes (the decoded body, without framing) passed so far.
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded
    }

    /// Walks `data`, the next bytes of the connection. Consumes the bytes that belong to the
    /// body and stops at its end. After an error, every call returns that error again.
    pub fn advance(&mut self, data: &[u8]) -> Result<ChunkProgress, BodyError> {
        let mut rest = data;
        loop {
            match self.state {
                State::Done => break,
                State::Failed(e) => return Err(e),
                State::Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    let (_, tail) = rest.split_at(take);
                    rest = tail;
                    self.size -= take as u64;
                    self.decoded += take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    if rest.is_empty() {
                        break;
                    }
                }
                _ => {
                    let Some((&b, tail)) = rest.split_first() else {
                        break;
                    };
                    rest = tail;
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                }
            }
        }
        Ok(ChunkProgress {
            consumed: data.len() - rest.len(),
            done: self.state == State::Done,
        })
    }

    /// As [`advance`](Self::advance), and also moves the chunk data of `buf` to its front, for a
    /// recipient that cannot read chunked framing (an HTTP/1.0 client, an HTTP/2 stream). Works in
    /// place: data only ever moves towards the start, and bytes after the consumed ones are left
    /// as they were. With `trailers`, the trailer section's bytes (its lines and the final CRLF)
    /// are appended there. Returns the progress and how many data bytes now lead `buf`.
    pub fn advance_dechunked(
        &mut self,
        buf: &mut [u8],
        mut trailers: Option<&mut Vec<u8>>,
    ) -> Result<(ChunkProgress, usize), BodyError> {
        let (mut pos, mut out) = (0, 0);
        while pos < buf.len() && !self.is_done() {
            let in_data = self.state == State::Data;
            let in_trailers = self.data_done();
            // A data run goes in one piece; framing bytes one at a time.
            let len = if in_data {
                usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len() - pos)
            } else {
                1
            };
            let p = self.advance(&buf[pos..pos + len])?;
            if in_data {
                buf.copy_within(pos..pos + p.consumed, out);
                out += p.consumed;
            } else if in_trailers {
                if let Some(t) = trailers.as_deref_mut() {
                    t.extend_from_slice(&buf[pos..pos + p.consumed]);
                }
            }
            pos += p.consumed;
        }
        Ok((
            ChunkProgress {
                consumed: pos,
                done: self.is_done(),
            },
            out,
        ))
    }

    /// One byte of framing (any state but Data, Done, Failed).
    fn step(&mut self, b: u8) -> Result<(), BodyError> {
        match self.state {
            State::SizeStart | State::Size | State::SizeWs | State::Ext | State::SizeLf => {
                self.line_len += 1;
                if self.line_len > MAX_CHUNK_LINE {
                    return Err(BodyError::ChunkLineTooLong);
                }
                self.size_line(b)
            }
            State::DataCr => match b {
                b'\r' => {
                    self.state = State::DataLf;
                    Ok(())
                }
                b'\n' => Err(BodyError::BareLf),
                _ => Err(BodyError::MissingCrlf),
            },
            State::DataLf => self.expect_lf(b, State::SizeStart),
            _ => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILER_BYTES {
                    return Err(BodyError::TrailerTooLarge);
                }
                self.trailer(b)
            }
        }
    }

    fn expect_lf(&mut self, b: u8, next: State) -> Result<(), BodyError> {
        if b == b'\n' {
            self.state = next;
            Ok(())
        } else {
            Err(BodyError::MissingCrlf)
        }
    }

    fn size_line(&mut self, b: u8) -> Result<(), BodyError> {
        match (self.state, b) {
            (State::SizeStart | State::Size, _) if b.is_ascii_hexdigit() => {
                self.digits += 1;
                if self.digits > MAX_CHUNK_SIZE_DIGITS {
                    return Err(BodyError::BadChunkSize);
                }
                let digit = u64::from(hex_value(b));
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(BodyError::BadChunkSize)?;
                if self.announced.saturating_add(self.size) > self.max_body {
                    return Err(BodyError::TooLarge {
                        limit: self.max_body,
                    });
                }
                self.state = State::Size;
                Ok(())
            }
            (State::SizeStart, _) => Err(BodyError::BadChunkSize),
            (State::Size | State::SizeWs, b';') => {
                self.state = State::Ext;
                Ok(())
            }
            (State::Size | State::SizeWs, _) if is_ows(b) => {
                self.state = State::SizeWs;
                Ok(())
            }
            (State::Size | State::Ext, b'\r') => {
                self.state = State::SizeLf;
                Ok(())
            }
            (State::Size | State::Ext, b'\n') => Err(BodyError::BareLf),
            (State::Size | State::SizeWs, _) => Err(BodyError::BadChunkSize),
            (State::Ext, _) if is_field_vchar(b) => Ok(()),
            (State::Ext, _) => Err(BodyError::BadChunkExtension),
            (_, b'\n') => {
                // End of the size line.
                self.line_len = 0;
                self.digits = 0;
                self.announced += self.size;
                self.state = if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                };
                Ok(())
            }
            _ => Err(BodyError::MissingCrlf),
        }
    }

    fn trailer(&mut self, b: u8) -> Result<(), BodyError> {
        if self.refuse_identity {
            match (self.state, b) {
                (State::TrailerStart | State::TrailerName, _) if is_tchar(b) => {
                    if self.state == State::TrailerStart {
                        self.name_len = 0;
                    }
                    if let Some(slot) = self.name.get_mut(self.name_len) {
                        *slot = b;
                    }
                    self.name_len += 1;
                }
                (State::TrailerName, b':')
                    if self.name_len <= TRAILER_NAME_KEPT
                        && crate::http::parse::is_client_cert_name(&self.name[..self.name_len]) =>
                {
                    return Err(BodyError::BadTrailer);
                }
                _ => {}
            }
        }
        self.state = match (self.state, b) {
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::TrailerValue, b'\n') => return Err(BodyError::BareLf),
            (State::TrailerStart | State::TrailerName, _) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, _) if is_field_vchar(b) => State::TrailerValue,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            (State::TrailerLf | State::EndLf, _) => return Err(BodyError::MissingCrlf),
            _ => return Err(BodyError::BadTrailer),
        };
        Ok(())
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b.wrapping_sub(b'A').wrapping_add(10),
    }
}

#[cfg(test)]
mod tests;
