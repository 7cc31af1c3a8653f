//! SPDY/3.1 frames: the subset moby/spdystream (the Go client behind crictl, kubelet and the API
//! server) speaks. Both directions are here so tests can drive the server with the same codec
//! acting as a client.
//!
//! Header blocks are zlib-compressed with the SPDY/3 preset dictionary, one zlib stream per
//! direction for the whole connection (so every block must be decoded in order, even for a
//! stream that is then refused).

use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const VERSION: u16 = 3;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// FIN on data frames and on SYN_STREAM/SYN_REPLY/HEADERS.
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes (SPDY/3 §2.4.2).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const REFUSED_STREAM: u32 = 3;
    #[cfg(test)]
    pub const CANCEL: u32 = 5;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// Largest payload of one data frame the protocol can express (24-bit length).
pub const MAX_DATA_FRAME: usize = (1 << 24) - 1;
/// What we put in one outgoing data frame: small frames keep one busy stream from holding the
/// connection's writer for long.
pub const DATA_CHUNK: usize = 32 * 1024;
/// Control frames carry at most a header block; anything bigger is an attack or a bug.
pub const MAX_CONTROL_FRAME: usize = 1024 * 1024;
/// A decompressed header block past this ends the connection (decompression bombs).
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Header pairs per block.
const MAX_HEADER_PAIRS: usize = 256;

/// Header names (lower-case, as on the wire) and values, in order.
pub type Headers = Vec<(String, String)>;

/// First value of header `name` (case-insensitive). SPDY joins repeated values with NUL; like Go's
/// `http.Header.Get`, the first one wins.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// Contents are dropped: spdystream never sends meaningful settings and there is no flow
    /// control to configure.
    Settings,
    Ping(u32),
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A data frame, or a piece of one: the decoder hands out payload as it arrives so a 16 MiB
    /// frame is never buffered whole. `fin` is set only on the last piece.
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame type SPDY/3 says to ignore (NOOP, CREDENTIAL, future types).
    Unknown(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY control frame of {0} bytes is over the limit")]
    FrameTooLarge(usize),
    #[error("SPDY header block decompresses past {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("SPDY header block does not decompress: {0}")]
    Decompress(String),
    #[error("SPDY header block compression failed: {0}")]
    Compress(String),
}

fn protocol(msg: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(msg.into())
}

/// The SPDY/3 header dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1): 65 length-prefixed
/// words followed by a run of text. Written here as those words so it can be read; a test pins
/// its length and Adler-32 (the DICTID the peer's zlib header names).
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TEXT: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
        "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,",
        "sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut dict = Vec::with_capacity(1423);
    for word in WORDS {
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(TEXT.as_bytes());
    dict
});

/// Turns bytes into frames. Keeps the inbound zlib context and the state of a data frame whose
/// payload is still arriving.
pub struct FrameDecoder {
    inflate: Decompress,
    /// A data frame being handed out piecewise: (stream id, bytes still to come, FIN flag).
    partial_data: Option<(u32, usize, bool)>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            inflate: Decompress::new(true),
            partial_data: None,
        }
    }
}

impl FrameDecoder {
    /// Takes one frame (or a piece of a data frame) off the front of `buf`; `Ok(None)` when more
    /// bytes are needed. An error leaves the connection unusable (the zlib context or the framing
    /// is lost).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if let Some((stream_id, remaining, fin)) = self.partial_data {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = remaining.min(buf.len());
            let data = buf.split_to(n).freeze();
            let left = remaining - n;
            self.partial_data = (left > 0).then_some((stream_id, left, fin));
            return Ok(Some(Frame::Data {
                stream_id,
                fin: fin && left == 0,
                data,
            }));
        }
        if buf.len() < 8 {
            return Ok(None);
        }
        let flags = buf[4];
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let fin = flags & FLAG_FIN != 0;
            if length == 0 {
                buf.advance(8);
                return Ok(Some(Frame::Data {
                    stream_id,
                    fin,
                    data: Bytes::new(),
                }));
            }
            if buf.len() == 8 {
                return Ok(None);
            }
            buf.advance(8);
            let n = length.min(buf.len());
            let data = buf.split_to(n).freeze();
            let left = length - n;
            self.partial_data = (left > 0).then_some((stream_id, left, fin));
            return Ok(Some(Frame::Data {
                stream_id,
                fin: fin && left == 0,
                data,
            }));
        }
        let version = u16::from_be_bytes([buf[0] & 0x7f, buf[1]]);
        if version != VERSION {
            return Err(protocol(format!("unsupported SPDY version {version}")));
        }
        if length > MAX_CONTROL_FRAME {
            return Err(SpdyError::FrameTooLarge(length));
        }
        if buf.len() < 8 + length {
            buf.reserve(8 + length - buf.len());
            return Ok(None);
        }
        let kind = u16::from_be_bytes([buf[2], buf[3]]);
        buf.advance(8);
        let payload = buf.split_to(length);
        self.control(kind, flags, &payload).map(Some)
    }

    fn control(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<Frame, SpdyError> {
        let word = |at: usize| u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
        let need = |n: usize, exact: bool| {
            if p.len() < n || (exact && p.len() != n) {
                Err(protocol(format!(
                    "control frame type {kind} has a payload of {} bytes",
                    p.len()
                )))
            } else {
                Ok(())
            }
        };
        Ok(match kind {
            TYPE_SYN_STREAM => {
                need(10, false)?;
                let stream_id = word(0) & 0x7fff_ffff;
                let associated_id = word(4) & 0x7fff_ffff;
                let priority = p[8] >> 5;
                let headers = self.header_block(&p[10..])?;
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(4, false)?;
                let stream_id = word(0) & 0x7fff_ffff;
                let headers = self.header_block(&p[4..])?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(8, true)?;
                Frame::RstStream {
                    stream_id: word(0) & 0x7fff_ffff,
                    status: word(4),
                }
            }
            TYPE_SETTINGS => {
                need(4, false)?;
                let entries = word(0) as usize;
                if entries.checked_mul(8).and_then(|n| n.checked_add(4)) != Some(p.len()) {
                    return Err(protocol("SETTINGS length does not match its entry count"));
                }
                Frame::Settings
            }
            TYPE_PING => {
                need(4, true)?;
                Frame::Ping(word(0))
            }
            TYPE_GOAWAY => {
                need(8, true)?;
                Frame::GoAway {
                    last_good_stream_id: word(0) & 0x7fff_ffff,
                    status: word(4),
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(8, true)?;
                Frame::WindowUpdate {
                    stream_id: word(0) & 0x7fff_ffff,
                    delta: word(4) & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown(other),
        })
    }

    /// Inflates one header block (sync-flushed by the peer) and parses its pairs.
    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let mut out: Vec<u8> = Vec::with_capacity(MAX_HEADER_BLOCK + 1);
        let mut consumed = 0usize;
        // Every round consumes input or produces output (or fails); the output is capped, so
        // this ends. The bound is a belt on top of that.
        for _ in 0..(compressed.len() + MAX_HEADER_BLOCK + 16) {
            if consumed == compressed.len() {
                break;
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let result = self.inflate.decompress_vec(
                &compressed[consumed..],
                &mut out,
                FlushDecompress::Sync,
            );
            consumed += (self.inflate.total_in() - in_before) as usize;
            if out.len() > MAX_HEADER_BLOCK || out.len() == out.capacity() {
                return Err(SpdyError::HeaderBlockTooLarge);
            }
            match result {
                Ok(Status::StreamEnd) if consumed < compressed.len() => {
                    return Err(SpdyError::Decompress("zlib stream ended early".into()));
                }
                Ok(_) => {
                    if consumed < compressed.len()
                        && self.inflate.total_in() == in_before
                        && out.len() == out_before
                    {
                        return Err(SpdyError::Decompress("no progress".into()));
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| SpdyError::Decompress(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Decompress(e.to_string())),
            }
        }
        if consumed < compressed.len() {
            return Err(SpdyError::Decompress("header block did not inflate".into()));
        }
        parse_header_pairs(&out)
    }
}

fn parse_header_pairs(mut block: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
        if block.len() < 4 {
            return Err(protocol("truncated header block"));
        }
        let len = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) as usize;
        if block.len() - 4 < len {
            return Err(protocol("header length past the block"));
        }
        let (field, rest) = block[4..].split_at(len);
        *block = rest;
        Ok(field)
    }
    if block.is_empty() {
        return Ok(Vec::new());
    }
    let count = {
        let field_count = take_u32(&mut block)? as usize;
        if field_count > MAX_HEADER_PAIRS {
            return Err(protocol(format!("{field_count} header pairs")));
        }
        field_count
    };
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut block)?;
        let value = take(&mut block)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| protocol("header name is not UTF-8"))?
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(protocol("empty header name"));
        }
        let value = String::from_utf8_lossy(value).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

fn take_u32(block: &mut &[u8]) -> Result<u32, SpdyError> {
    if block.len() < 4 {
        return Err(protocol("truncated header block"));
    }
    let n = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
    *block = &block[4..];
    Ok(n)
}

/// Turns frames into bytes. Keeps the outbound zlib context, so frames must be encoded in the
/// order they are written.
pub struct FrameEncoder {
    deflate: Compress,
    dictionary_set: bool,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self {
            deflate: Compress::new(Compression::default(), true),
            dictionary_set: false,
        }
    }
}

impl FrameEncoder {
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_DATA_FRAME {
                    return Err(protocol("data frame too large"));
                }
                out.reserve(8 + data.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u8(if *fin { FLAG_FIN } else { 0 });
                put_u24(out, data.len());
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                let mut p = BytesMut::with_capacity(10 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(associated_id & 0x7fff_ffff);
                p.put_u8((priority & 0x7) << 5);
                p.put_u8(0);
                p.extend_from_slice(&block);
                control(out, TYPE_SYN_STREAM, *flags, &p);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.header_block(headers)?;
                let mut p = BytesMut::with_capacity(4 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.extend_from_slice(&block);
                control(out, kind, *flags, &p);
            }
            Frame::RstStream { stream_id, status } => {
                control(out, TYPE_RST_STREAM, 0, &words(&[*stream_id, *status]));
            }
            Frame::Settings => control(out, TYPE_SETTINGS, 0, &words(&[0])),
            Frame::Ping(id) => control(out, TYPE_PING, 0, &words(&[*id])),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => control(
                out,
                TYPE_GOAWAY,
                0,
                &words(&[*last_good_stream_id, *status]),
            ),
            Frame::WindowUpdate { stream_id, delta } => {
                control(out, TYPE_WINDOW_UPDATE, 0, &words(&[*stream_id, *delta]));
            }
            Frame::Unknown(kind) => control(out, *kind, 0, &[]),
        }
        Ok(())
    }

    /// Serializes and deflates one header block, sync-flushed so the peer can inflate it alone.
    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        self.compress(&raw)
    }

    /// Deflates raw bytes as the next header block (tests use it to send broken blocks).
    pub fn compress(&mut self, raw: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let err = |e: flate2::CompressError| SpdyError::Compress(e.to_string());
        if !self.dictionary_set {
            self.deflate.set_dictionary(&DICTIONARY).map_err(err)?;
            self.dictionary_set = true;
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut consumed = 0usize;
        // Deflate output is bounded by the input size plus a small overhead; each round either
        // consumes input or grows the buffer, and the buffer grows at least 64 bytes a round.
        for _ in 0..(raw.len() + 1024) {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(err)?;
            consumed += (self.deflate.total_in() - before) as usize;
            // A sync flush is complete once all input is in and deflate did not fill the buffer.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
        Err(SpdyError::Compress("deflate made no progress".into()))
    }
}

fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn put_u24(out: &mut BytesMut, n: usize) {
    out.put_u8((n >> 16) as u8);
    out.put_u8((n >> 8) as u8);
    out.put_u8(n as u8);
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) {
    out.reserve(8 + payload.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    put_u24(out, payload.len());
    out.extend_from_slice(payload);
}

/// Writes a control frame with a raw (already compressed, possibly broken) payload: tests use
/// it to send what a correct encoder never would.
#[cfg(test)]
pub fn raw_control(out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) {
    control(out, kind, flags, payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b",*,enq=0."));
    }

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = FrameEncoder::default();
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        for f in frames {
            enc.encode(f, &mut buf).unwrap();
        }
        let mut got = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.push(f);
        }
        assert!(buf.is_empty());
        got
    }

    #[test]
    fn frames_roundtrip_with_one_zlib_context_per_direction() {
        let headers = vec![
            ("streamtype".to_string(), "error".to_string()),
            ("port".to_string(), "80".to_string()),
        ];
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: headers.clone(),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_id: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: headers.clone(),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL,
            },
            Frame::Ping(7),
            Frame::GoAway {
                last_good_stream_id: 3,
                status: goaway::OK,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 100,
            },
            Frame::Settings,
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    #[test]
    fn data_frames_are_handed_out_as_they_arrive() {
        let mut enc = FrameEncoder::default();
        let mut wire = BytesMut::new();
        let payload = Bytes::from(vec![7u8; 1000]);
        enc.encode(
            &Frame::Data {
                stream_id: 5,
                fin: true,
                data: payload.clone(),
            },
            &mut wire,
        )
        .unwrap();
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut fins = 0;
        for piece in wire.chunks(300) {
            buf.extend_from_slice(piece);
            while let Some(Frame::Data { data, fin, .. }) = dec.decode(&mut buf).unwrap() {
                got.extend_from_slice(&data);
                fins += usize::from(fin);
            }
        }
        assert_eq!(got, payload);
        assert_eq!(fins, 1);
    }

    #[test]
    fn oversized_control_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u16(0x8003);
        buf.put_u16(TYPE_SYN_STREAM);
        buf.put_u8(0);
        put_u24(&mut buf, MAX_CONTROL_FRAME + 1);
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, SpdyError::FrameTooLarge(_)), "{err}");
    }

    #[test]
    fn decompression_bomb_is_refused() {
        let mut enc = FrameEncoder::default();
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.extend_from_slice(&4u32.to_be_bytes());
        raw.extend_from_slice(b"name");
        raw.extend_from_slice(&(1u32 << 20).to_be_bytes());
        raw.extend(std::iter::repeat_n(b'a', 1 << 20));
        let block = enc.compress(&raw).unwrap();
        assert!(block.len() < MAX_CONTROL_FRAME);
        let mut payload = words(&[1, 0]);
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&block);
        let mut buf = BytesMut::new();
        control(&mut buf, TYPE_SYN_STREAM, 0, &payload);
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, SpdyError::HeaderBlockTooLarge), "{err}");
    }

    #[test]
    fn garbage_header_block_is_an_error() {
        let mut payload = words(&[1, 0]);
        payload.extend_from_slice(&[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        let mut buf = BytesMut::new();
        control(&mut buf, TYPE_SYN_STREAM, 0, &payload);
        assert!(FrameDecoder::default().decode(&mut buf).is_err());
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_takes_the_first_value() {
        let h = vec![("streamtype".to_string(), "data\0error".to_string())];
        assert_eq!(header(&h, "streamType"), Some("data"));
        assert_eq!(header(&h, "port"), None);
    }
}
