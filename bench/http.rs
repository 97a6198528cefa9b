//! Minimal HTTP/1.x framing shared by the load client and the backend: response-head parsing
//! (status, body framing, connection close) and an incremental chunked-body decoder.
//! Pure functions and small state machines owned by the connection task that calls them.

/// Most headers accepted in one head; more is treated as malformed.
pub const MAX_HEADERS: usize = 64;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Until the peer closes the connection (responses only).
    UntilClose,
}

/// What a parsed response head says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespHead {
    pub status: u16,
    pub head_len: usize,
    pub body: BodyKind,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Why a head could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    Malformed,
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<RespHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    let status = resp.code.ok_or(HeadError::Malformed)?;
    let http10 = resp.version == Some(0);
    let mut close = http10;
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| HeadError::Malformed)?;
            let n: u64 = v.trim().parse().map_err(|_| HeadError::Malformed)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Malformed);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = last_token_is(h.value, b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, b"close") {
                close = true;
            } else if has_token(h.value, b"keep-alive") {
                close = false;
            }
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::None
    } else if chunked {
        BodyKind::Chunked
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else {
        close = true;
        BodyKind::UntilClose
    };
    Ok(Some(RespHead {
        status,
        head_len,
        body,
        close,
    }))
}

/// True when the comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// True when the last comma-separated token of `value` is `token` (Transfer-Encoding rule).
pub fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .next_back()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Incremental decoder for a chunked body; it only finds the end, the data is discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunked {
    Size { val: u64, digits: u8 },
    Ext { val: u64 },
    SizeLf { val: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    Done,
}

/// The chunked framing is broken.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

/// Most hex digits accepted in a chunk size (a u64).
const MAX_CHUNK_DIGITS: u8 = 15;

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size { val: 0, digits: 0 }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        *self == Chunked::Done
    }

    /// Consumes bytes of the body from `data`; returns how many belonged to it (stops at the end).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            *self = match *self {
                Chunked::Done => return Ok(i),
                Chunked::Data(n) => {
                    let take = (data.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    i += take;
                    let left = n - take as u64;
                    *self = if left == 0 {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left)
                    };
                    continue;
                }
                Chunked::Size { val, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= MAX_CHUNK_DIGITS {
                            return Err(BadChunk);
                        }
                        let d = (b as char).to_digit(16).ok_or(BadChunk)? as u64;
                        Chunked::Size {
                            val: val * 16 + d,
                            digits: digits + 1,
                        }
                    }
                    b';' | b' ' | b'\t' if digits > 0 => Chunked::Ext { val },
                    b'\r' if digits > 0 => Chunked::SizeLf { val },
                    b'\n' if digits > 0 => Self::after_size(val),
                    _ => return Err(BadChunk),
                },
                Chunked::Ext { val } => match b {
                    b'\n' => Self::after_size(val),
                    _ => Chunked::Ext { val },
                },
                Chunked::SizeLf { val } => match b {
                    b'\n' => Self::after_size(val),
                    _ => return Err(BadChunk),
                },
                Chunked::DataCr => match b {
                    b'\r' => Chunked::DataLf,
                    b'\n' => Chunked::default(),
                    _ => return Err(BadChunk),
                },
                Chunked::DataLf => match b {
                    b'\n' => Chunked::default(),
                    _ => return Err(BadChunk),
                },
                Chunked::TrailerStart => match b {
                    b'\r' => Chunked::TrailerLf,
                    b'\n' => Chunked::Done,
                    _ => Chunked::TrailerLine,
                },
                Chunked::TrailerLine => match b {
                    b'\n' => Chunked::TrailerStart,
                    _ => Chunked::TrailerLine,
                },
                Chunked::TrailerLf => match b {
                    b'\n' => Chunked::Done,
                    _ => return Err(BadChunk),
                },
            };
            i += 1;
        }
        Ok(i)
    }

    fn after_size(val: u64) -> Chunked {
        if val == 0 {
            Chunked::TrailerStart
        } else {
            Chunked::Data(val)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_head_framing() {
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.body, BodyKind::Length(12));
        assert!(!h.close);
        assert_eq!(h.head_len, 39);
        let h = parse_response_head(
            b"HTTP/1.1 404 No\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.status, h.body, h.close), (404, BodyKind::Chunked, true));
        let h = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.body, h.close), (BodyKind::UntilClose, true));
        let h = parse_response_head(b"HTTP/1.1 204 No\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::None);
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Ok(None)
        );
        assert!(parse_response_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        )
        .is_err());
    }

    #[test]
    fn chunked_decoder_finds_the_end_across_splits() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let a = c.feed(&body[..split]).unwrap();
            let b = c.feed(&body[split..]).unwrap();
            assert_eq!(a + b, end, "split at {split}");
            assert!(c.is_done());
        }
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok(5));
        assert!(c.is_done());
    }

    #[test]
    fn chunked_decoder_rejects_garbage() {
        assert_eq!(Chunked::default().feed(b"zz\r\n"), Err(BadChunk));
        assert_eq!(Chunked::default().feed(b"3\r\nabcX"), Err(BadChunk));
        assert_eq!(
            Chunked::default().feed(b"ffffffffffffffff1\r\n"),
            Err(BadChunk)
        );
        assert_eq!(Chunked::default().feed(b"\r\n"), Err(BadChunk));
    }
}
