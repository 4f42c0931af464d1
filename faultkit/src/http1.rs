//! Just enough HTTP/1.1 for the proxy: find where a request or response head ends, read the
//! few headers that matter (framing, upgrade, content type), and track where a chunked body
//! ends. Bytes are always forwarded exactly as they came; nothing here rewrites a message.

use crate::faults::Opening;

/// Largest head accepted (request line or status line plus headers).
pub const MAX_HEAD: usize = 64 * 1024;

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// The parts of a request head the proxy acts on.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: String,
    /// The request target, query included.
    pub target: String,
    pub body: Body,
    pub upgrade_websocket: bool,
    pub close: bool,
}

/// The parts of a response head the proxy acts on.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub event_stream: bool,
    pub chunked: bool,
    pub length: Option<u64>,
    pub close: bool,
}

/// The end of the head (index just past `\r\n\r\n`), if `buf` holds a whole one.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn header_has_token(value: &[u8], token: &str) -> bool {
    String::from_utf8_lossy(value).split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses a complete request head (`buf` ends at [`head_end`]).
pub fn parse_request(buf: &[u8]) -> Result<RequestHead, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(String::from("incomplete request head")),
        Err(e) => return Err(format!("bad request head: {e}")),
    }
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default().to_owned();
    let (mut length, mut chunked, mut upgrade_websocket, mut close) = (None, false, false, false);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= header_has_token(h.value, "chunked");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= header_has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            close |= header_has_token(h.value, "close");
        }
    }
    let body = if chunked {
        Body::Chunked
    } else {
        match length {
            Some(n) if n > 0 => Body::Length(n),
            _ => Body::None,
        }
    };
    Ok(RequestHead { method, target, body, upgrade_websocket, close })
}

/// Parses a complete response head.
pub fn parse_response(buf: &[u8]) -> Result<ResponseHead, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(String::from("incomplete response head")),
        Err(e) => return Err(format!("bad response head: {e}")),
    }
    let status = resp.code.unwrap_or(0);
    let (mut length, mut chunked, mut event_stream, mut close) = (None, false, false, false);
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= header_has_token(h.value, "chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            event_stream |= String::from_utf8_lossy(h.value).trim().starts_with("text/event-stream");
        } else if name.eq_ignore_ascii_case("connection") {
            close |= header_has_token(h.value, "close");
        }
    }
    Ok(ResponseHead { status, event_stream, chunked, length, close })
}

impl RequestHead {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    fn has_query_param(&self, name: &str) -> bool {
        self.target.split_once('?').is_some_and(|(_, q)| q.split('&').any(|kv| kv.split('=').next() == Some(name)))
    }

    /// Which opening request this is, if any.
    pub fn opening(&self) -> Option<Opening> {
        match (self.method.as_str(), self.path()) {
            ("POST", "/v1/ticket") => Some(Opening::Ticket),
            ("GET", "/v1/ws") => Some(Opening::Ws),
            ("GET", "/v1/sse") => Some(Opening::Sse),
            ("GET", "/v1/poll") if self.has_query_param("ticket") => Some(Opening::Poll),
            _ => None,
        }
    }
}

impl ResponseHead {
    /// The body framing of this response to a request with `method`.
    pub fn body(&self, method: &str) -> Body {
        if method == "HEAD" || (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
            Body::None
        } else if self.chunked {
            Body::Chunked
        } else {
            match self.length {
                Some(0) => Body::None,
                Some(n) => Body::Length(n),
                None => Body::UntilClose,
            }
        }
    }
}

/// Follows a chunked body byte by byte to find where it ends (after the last chunk and the
/// trailer section).
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkedEnd {
    state: ChunkState,
    size: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of the chunk size.
    #[default]
    Size,
    /// A chunk extension, up to the CR.
    Extension,
    /// The LF after the size line.
    SizeLf,
    /// `size` bytes of data remain.
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (an empty one ends the body).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// The LF ending the body.
    EndLf,
    /// The body ended.
    Done,
}

impl ChunkedEnd {
    /// Consumes `bytes`; returns how many of them belong to the body if it ends inside them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, String> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or("chunk size overflow")?;
                    }
                    None if b == b'\r' => self.state = ChunkState::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = ChunkState::Extension,
                    None => return Err(String::from("bad chunk size")),
                },
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(String::from("bad chunk size line"));
                    }
                    self.state = if self.size == 0 { ChunkState::TrailerStart } else { ChunkState::Data };
                }
                ChunkState::Data => {
                    let take = (bytes.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(String::from("chunk data not followed by CRLF"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(String::from("chunk data not followed by CRLF"));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' { ChunkState::EndLf } else { ChunkState::TrailerLine };
                }
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(String::from("bad end of chunked body"));
                    }
                    self.state = ChunkState::Done;
                    return Ok(Some(i + 1));
                }
                ChunkState::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

/// A complete response the proxy makes up itself (a refusal). It always closes the connection.
pub fn error_response(status: u16, retry_after_s: Option<u64>, code: &str, message: &str) -> Vec<u8> {
    let reason = match status {
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut body = serde_json::json!({ "error": code, "message": message });
    if let Some(s) = retry_after_s {
        body["retry_after_ms"] = serde_json::json!(s * 1000);
    }
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\naccess-control-allow-origin: *\r\naccess-control-expose-headers: retry-after\r\n",
        body.len()
    );
    if let Some(s) = retry_after_s {
        head.push_str(&format!("retry-after: {s}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_and_openings() {
        let raw = b"GET /v1/poll?v=1&ticket=abc HTTP/1.1\r\nHost: x\r\n\r\n";
        let head = parse_request(&raw[..head_end(raw).expect("complete")]).expect("parses");
        assert_eq!(head.opening(), Some(Opening::Poll));
        let held = parse_request(b"GET /v1/poll?session=s&cursor=3 HTTP/1.1\r\n\r\n").expect("parses");
        assert_eq!(held.opening(), None);
        let ws = parse_request(b"GET /v1/ws?ticket=t HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .expect("parses");
        assert!(ws.upgrade_websocket);
        assert_eq!(ws.opening(), Some(Opening::Ws));
        let post = parse_request(b"POST /v1/send HTTP/1.1\r\nContent-Length: 12\r\n\r\n").expect("parses");
        assert_eq!(post.body, Body::Length(12));
    }

    #[test]
    fn chunked_end_is_found_across_feeds() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut end = ChunkedEnd::default();
            let first = end.feed(&body[..split]).expect("valid");
            let found = match first {
                Some(n) => n,
                None => split + end.feed(&body[split..]).expect("valid").expect("ends"),
            };
            assert_eq!(&body[found..], b"NEXT", "split at {split}");
        }
        assert!(ChunkedEnd::default().feed(b"zz\r\n").is_err());
    }

    #[test]
    fn response_framing() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .expect("parses");
        assert!(r.event_stream);
        assert_eq!(r.body("GET"), Body::Chunked);
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").expect("parses");
        assert_eq!(r.body("POST"), Body::None);
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n").expect("parses");
        assert_eq!(r.body("GET"), Body::UntilClose);
    }
}
