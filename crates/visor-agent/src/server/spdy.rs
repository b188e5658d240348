//! The subset of SPDY/3.1 that Kubernetes port-forwarding speaks, server side.
//!
//! kubectl forwards ports over SPDY/3.1 streams: plain (`Upgrade: SPDY/3.1`) or tunneled inside
//! WebSocket binary messages (subprotocol `SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and
//! later). No maintained SPDY crate exists, so this module implements what those clients use:
//!
//! - frames: SYN_STREAM, SYN_REPLY, DATA (with FIN), RST_STREAM, SETTINGS, PING, GOAWAY,
//!   HEADERS and WINDOW_UPDATE ([`Frame`], [`Codec`]);
//! - header blocks as one zlib stream per direction per connection, primed with the SPDY/3
//!   dictionary ([`DICTIONARY`]);
//! - a server connection ([`serve_connection`]) that replies to each stream the client opens,
//!   hands it to the caller as a [`Stream`] and answers pings.
//!
//! Caveat: flow control is not enforced. The peer Kubernetes uses (`moby/spdystream`) neither
//! honours nor sends WINDOW_UPDATE frames, and treats one it does not expect as an error, so
//! none are sent and those received are ignored.

use std::collections::HashMap;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Control frame types (SPDY/3 section 2.6).
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// The protocol version control frames carry.
const VERSION: u16 = 3;
/// `FLAG_FIN` on DATA, SYN_STREAM, SYN_REPLY and HEADERS frames.
pub const FLAG_FIN: u8 = 0x01;
/// Frame lengths are 24-bit.
const MAX_FRAME_LENGTH: usize = (1 << 24) - 1;
/// A decompressed header block larger than this is refused (a zlib bomb guard; real port-forward
/// headers are a few dozen bytes).
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The most data one DATA frame carries when this side sends.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_INVALID_STREAM: u32 = 2;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

/// The zlib dictionary SPDY/3 header blocks are compressed with (SPDY/3 section 2.6.10.1):
/// the 65 header names and values below, each preceded by its length as a big-endian u32,
/// followed by common status lines, dates and media types. 1,423 bytes.
pub static DICTIONARY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    const WORDS: &[&str] = &[
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
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivate",
        "max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut out = Vec::with_capacity(1423);
    for word in WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
});

/// Header name/value pairs as SPDY carries them (names lower-case; a value holding several
/// values separates them with NUL).
pub type Headers = Vec<(String, String)>;

/// Looks up a header by name, ignoring case.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One SPDY frame, unpacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
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
    Settings {
        flags: u8,
        /// `(flags, id, value)` per entry.
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
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
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this implementation does not know; SPDY says to ignore it.
    Unknown {
        frame_type: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed {what} frame: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("header block: {0}")]
    HeaderBlock(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn malformed(what: &'static str, why: impl Into<String>) -> SpdyError {
    SpdyError::Malformed {
        what,
        why: why.into(),
    }
}

/// Encodes and decodes frames of one connection. Header compression is stateful (one zlib
/// stream per direction for the connection's lifetime), so a connection uses exactly one codec
/// for reading and one for writing, frames in wire order.
pub struct Codec {
    inflate: Decompress,
    deflate: Compress,
    deflate_primed: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Self {
        Codec {
            inflate: Decompress::new(true),
            deflate: Compress::new(Compression::default(), true),
            deflate_primed: false,
        }
    }

    /// Takes one whole frame off the front of `buf`, or returns `None` if `buf` does not hold
    /// one yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + length {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let mut payload = buf.split_to(length).freeze();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let frame_type = u16::from_be_bytes([head[2], head[3]]);
        let need = |what: &'static str, n: usize, payload: &Bytes| {
            if payload.len() < n {
                Err(malformed(
                    what,
                    format!("{} bytes, need {n}", payload.len()),
                ))
            } else {
                Ok(())
            }
        };
        let frame = match frame_type {
            SYN_STREAM => {
                need("SYN_STREAM", 10, &payload)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let associated_to = payload.get_u32() & 0x7fff_ffff;
                let priority = payload.get_u8() >> 5;
                let _slot = payload.get_u8();
                let headers = self.inflate_headers(&payload)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            SYN_REPLY => {
                need("SYN_REPLY", 4, &payload)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let headers = self.inflate_headers(&payload)?;
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            }
            HEADERS => {
                need("HEADERS", 4, &payload)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let headers = self.inflate_headers(&payload)?;
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
            RST_STREAM => {
                need("RST_STREAM", 8, &payload)?;
                Frame::RstStream {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            SETTINGS => {
                need("SETTINGS", 4, &payload)?;
                let count = payload.get_u32() as usize;
                if payload.len() != count.saturating_mul(8) {
                    return Err(malformed(
                        "SETTINGS",
                        format!("{count} entries in {} bytes", payload.len()),
                    ));
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = payload.get_u32();
                        ((word >> 24) as u8, word & 0x00ff_ffff, payload.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                need("PING", 4, &payload)?;
                Frame::Ping {
                    id: payload.get_u32(),
                }
            }
            GOAWAY => {
                need("GOAWAY", 4, &payload)?;
                let last_good_stream_id = payload.get_u32() & 0x7fff_ffff;
                let status = if payload.len() >= 4 {
                    payload.get_u32()
                } else {
                    0
                };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            WINDOW_UPDATE => {
                need("WINDOW_UPDATE", 8, &payload)?;
                Frame::WindowUpdate {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }

    /// Appends the wire form of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        let mut payload = BytesMut::new();
        let (frame_type, flags) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_FRAME_LENGTH {
                    return Err(malformed("DATA", "payload longer than 2^24-1 bytes"));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u8(*flags);
                put_u24(out, data.len());
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(associated_to & 0x7fff_ffff);
                payload.put_u8((priority & 0x7) << 5);
                payload.put_u8(0);
                self.deflate_headers(headers, &mut payload)?;
                (SYN_STREAM, *flags)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                self.deflate_headers(headers, &mut payload)?;
                (SYN_REPLY, *flags)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                self.deflate_headers(headers, &mut payload)?;
                (HEADERS, *flags)
            }
            Frame::RstStream { stream_id, status } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(*status);
                (RST_STREAM, 0)
            }
            Frame::Settings { flags, entries } => {
                payload.put_u32(entries.len() as u32);
                for (entry_flags, id, value) in entries {
                    payload.put_u32(((*entry_flags as u32) << 24) | (id & 0x00ff_ffff));
                    payload.put_u32(*value);
                }
                (SETTINGS, *flags)
            }
            Frame::Ping { id } => {
                payload.put_u32(*id);
                (PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                payload.put_u32(last_good_stream_id & 0x7fff_ffff);
                payload.put_u32(*status);
                (GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(delta & 0x7fff_ffff);
                (WINDOW_UPDATE, 0)
            }
            Frame::Unknown { frame_type } => {
                return Err(malformed(
                    "control",
                    format!("cannot send a frame of unknown type {frame_type}"),
                ));
            }
        };
        if payload.len() > MAX_FRAME_LENGTH {
            return Err(malformed("control", "payload longer than 2^24-1 bytes"));
        }
        out.put_u16(0x8000 | VERSION);
        out.put_u16(frame_type);
        out.put_u8(flags);
        put_u24(out, payload.len());
        out.extend_from_slice(&payload);
        Ok(())
    }

    /// Inflates one header block with the connection's decompressor (priming it with the
    /// dictionary when zlib asks for it) and parses the name/value pairs.
    fn inflate_headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut plain = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if plain.len() == plain.capacity() {
                if plain.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::HeaderBlock("header block too large".into()));
                }
                plain.reserve(plain.len().max(256));
            }
            let before_in = self.inflate.total_in();
            let before_out = plain.len();
            let result = self
                .inflate
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - before_in) as usize;
            input = &input[consumed..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    let progressed = consumed > 0 || plain.len() > before_out;
                    if input.is_empty() && plain.len() < plain.capacity() {
                        break;
                    }
                    if !progressed && plain.len() < plain.capacity() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| SpdyError::HeaderBlock(format!("dictionary: {e}")))?;
                }
                Err(e) => return Err(SpdyError::HeaderBlock(e.to_string())),
            }
        }
        parse_header_block(&plain)
    }

    /// Serialises `headers` and compresses them with a sync flush, so the block stands alone
    /// on the wire while the zlib stream continues.
    fn deflate_headers(&mut self, headers: &Headers, out: &mut BytesMut) -> Result<(), SpdyError> {
        let mut plain = Vec::new();
        plain.put_u32(headers.len() as u32);
        for (name, value) in headers {
            plain.put_u32(name.len() as u32);
            plain.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            plain.put_u32(value.len() as u32);
            plain.extend_from_slice(value.as_bytes());
        }
        if !self.deflate_primed {
            self.deflate
                .set_dictionary(&DICTIONARY)
                .map_err(|e| SpdyError::HeaderBlock(format!("dictionary: {e}")))?;
            self.deflate_primed = true;
        }
        let mut compressed = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            if compressed.len() == compressed.capacity() {
                compressed.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut compressed, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done once all input is taken and zlib had room to spare for the flush.
            if input.is_empty() && compressed.len() < compressed.capacity() {
                break;
            }
        }
        out.extend_from_slice(&compressed);
        Ok(())
    }
}

fn put_u24(out: &mut BytesMut, n: usize) {
    out.put_u8((n >> 16) as u8);
    out.put_u8((n >> 8) as u8);
    out.put_u8(n as u8);
}

fn parse_header_block(mut block: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |why: &str| SpdyError::HeaderBlock(why.to_string());
    if block.len() < 4 {
        return Err(bad("truncated pair count"));
    }
    let count = block.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    let take = |block: &mut &[u8]| -> Result<String, SpdyError> {
        if block.len() < 4 {
            return Err(bad("truncated length"));
        }
        let len = block.get_u32() as usize;
        if block.len() < len {
            return Err(bad("truncated name or value"));
        }
        let text = String::from_utf8(block[..len].to_vec())
            .map_err(|_| bad("name or value is not UTF-8"))?;
        block.advance(len);
        Ok(text)
    };
    for _ in 0..count {
        let name = take(&mut block)?;
        let value = take(&mut block)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// A stream the client opened, already answered with SYN_REPLY.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The client's data, in order; ends when the client half-closes (FIN) or resets the
    /// stream, or the connection ends.
    pub incoming: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

/// Sends on one stream. Cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends `data` in DATA frames of at most [`MAX_DATA_CHUNK`] bytes.
    pub async fn send(&self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_CHUNK));
            self.frame(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes the stream: an empty DATA frame with FIN.
    pub async fn finish(&self) -> io::Result<()> {
        self.frame(Frame::Data {
            stream_id: self.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    pub async fn reset(&self, status: u32) -> io::Result<()> {
        self.frame(Frame::RstStream {
            stream_id: self.id,
            status,
        })
        .await
    }

    async fn frame(&self, frame: Frame) -> io::Result<()> {
        self.frames
            .send(frame)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "SPDY connection closed"))
    }
}

/// Serves one SPDY connection as the server side until the client goes away.
///
/// Flow: a writer task owns the write half and the compressing codec, so frames go out in the
/// order they are queued. The reader loop answers each SYN_STREAM with a SYN_REPLY (queued
/// before any data the caller may send on it, which the peer requires) and passes the stream
/// to `streams`; routes DATA to the stream's `incoming` channel (closing it on FIN or
/// RST_STREAM); echoes the client's PINGs; and stops at GOAWAY, end of input, a protocol error
/// or when `cancel` fires. On return every `incoming` channel has ended and `cancel` has been
/// triggered, so the caller's stream tasks can stop.
///
/// Guarantees: stream IDs the client opens must be odd and increasing, else the stream is reset
/// with PROTOCOL_ERROR; data for unknown streams is dropped (the peer may race a reset).
pub async fn serve_connection<IO>(
    io: IO,
    streams: mpsc::Sender<Stream>,
    cancel: CancellationToken,
) -> Result<(), SpdyError>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(64);
    let writer_cancel = cancel.clone();
    let writing = tokio::spawn(async move {
        let mut codec = Codec::new();
        let mut out = BytesMut::with_capacity(MAX_DATA_CHUNK + 64);
        loop {
            let frame = tokio::select! {
                frame = frames_rx.recv() => frame,
                _ = writer_cancel.cancelled() => None,
            };
            let Some(frame) = frame else { break };
            out.clear();
            if let Err(e) = codec.encode(&frame, &mut out) {
                tracing::debug!(error = %e, "dropping a SPDY frame that cannot be encoded");
                continue;
            }
            if writer.write_all(&out).await.is_err() {
                break;
            }
            // Flush only when nothing else is queued: batches small frames without delaying any.
            if frames_rx.is_empty() && writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_client_stream = 0u32;
    let result = loop {
        let frame = match codec.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let read = tokio::select! {
                    read = reader.read_buf(&mut buf) => read,
                    _ = cancel.cancelled() => break Ok(()),
                };
                match read {
                    Ok(0) => break Ok(()),
                    Ok(_) => continue,
                    Err(e) => break Err(e.into()),
                }
            }
            Err(e) => break Err(e),
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                if stream_id % 2 == 0 || stream_id <= last_client_stream {
                    let _ = frames_tx
                        .send(Frame::RstStream {
                            stream_id,
                            status: RST_PROTOCOL_ERROR,
                        })
                        .await;
                    continue;
                }
                last_client_stream = stream_id;
                let _ = frames_tx
                    .send(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: Vec::new(),
                    })
                    .await;
                let (data_tx, data_rx) = mpsc::channel(32);
                if flags & FLAG_FIN == 0 {
                    open.insert(stream_id, data_tx);
                }
                let stream = Stream {
                    id: stream_id,
                    headers,
                    incoming: data_rx,
                    writer: StreamWriter {
                        id: stream_id,
                        frames: frames_tx.clone(),
                    },
                };
                if streams.send(stream).await.is_err() {
                    break Ok(());
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if let Some(tx) = open.get(&stream_id)
                    && !data.is_empty()
                    && tx.send(data).await.is_err()
                {
                    // The stream's consumer is gone; later data is dropped.
                    open.remove(&stream_id);
                }
                if flags & FLAG_FIN != 0 {
                    open.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                open.remove(&stream_id);
            }
            Frame::Ping { id } => {
                // Odd IDs are the client's; even ones would answer pings this side never sends.
                if id % 2 == 1 {
                    let _ = frames_tx.send(Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => break Ok(()),
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    };
    open.clear();
    cancel.cancel();
    drop(frames_tx);
    let _ = writing.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Two SYN_STREAM frames as kubectl opens them for one forwarded port (error stream, then
    /// data stream), compressed by an independent zlib (CPython's) with the SPDY/3 dictionary;
    /// the second block relies on the compression state the first left behind.
    const KUBECTL_STREAMS: &str = "800300010000003d0000000100000000000078f9e3c6a7c202253a48f95b044eea16061606409ab308125f99a074cc68004e892545a989b9d0c2863515141500000000ffff800300010000001600000003000000000000225333a8a44a04000000ffff";

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn decodes_syn_streams_compressed_by_another_implementation() {
        let mut codec = Codec::new();
        let mut buf = BytesMut::from(&hex(KUBECTL_STREAMS)[..]);
        let first = codec.decode(&mut buf).unwrap().unwrap();
        let second = codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        let pairs = |v: &[(&str, &str)]| -> Headers {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            first,
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: pairs(&[
                    ("port", "8080"),
                    ("requestid", "0"),
                    ("streamtype", "error")
                ]),
            }
        );
        assert_eq!(
            second,
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: pairs(&[("port", "8080"), ("requestid", "0"), ("streamtype", "data")]),
            }
        );
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = hex(KUBECTL_STREAMS);
        let mut codec = Codec::new();
        let mut buf = BytesMut::from(&bytes[..20]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&bytes[20..]);
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::SynStream { stream_id: 1, .. })
        ));
    }

    #[test]
    fn fixed_layout_frames_have_their_wire_form() {
        let mut codec = Codec::new();
        let mut out = BytesMut::new();
        codec
            .encode(
                &Frame::Data {
                    stream_id: 3,
                    flags: FLAG_FIN,
                    data: Bytes::from_static(b"hi"),
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 3, 1, 0, 0, 2, b'h', b'i']);
        out.clear();
        codec.encode(&Frame::Ping { id: 7 }, &mut out).unwrap();
        assert_eq!(&out[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
        out.clear();
        codec
            .encode(
                &Frame::RstStream {
                    stream_id: 5,
                    status: RST_CANCEL,
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(
            &out[..],
            &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5]
        );
        out.clear();
        codec
            .encode(
                &Frame::GoAway {
                    last_good_stream_id: 9,
                    status: 0,
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(
            &out[..],
            &[0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0]
        );
    }

    #[test]
    fn every_frame_round_trips_and_compression_state_carries_over() {
        let frames = vec![
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::SynStream {
                stream_id: 2,
                associated_to: 1,
                priority: 3,
                flags: FLAG_FIN,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "80".into()),
                ],
            },
            Frame::Headers {
                stream_id: 2,
                flags: 0,
                headers: vec![("streamtype".into(), "data".into())],
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 4, 100), (1, 7, 65536)],
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 4096,
            },
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from(vec![7u8; 70_000]),
            },
            Frame::GoAway {
                last_good_stream_id: 1,
                status: 2,
            },
        ];
        let (mut sender, mut receiver) = (Codec::new(), Codec::new());
        let mut wire = BytesMut::new();
        for frame in &frames {
            sender.encode(frame, &mut wire).unwrap();
        }
        for frame in &frames {
            assert_eq!(&receiver.decode(&mut wire).unwrap().unwrap(), frame);
        }
        assert!(wire.is_empty());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut codec = Codec::new();
        // Version 2 control frame.
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(codec.decode(&mut buf), Err(SpdyError::Version(2))));
        // A SYN_STREAM whose header block is not zlib.
        let mut buf = BytesMut::from(
            &[
                0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ][..],
        );
        assert!(matches!(
            codec.decode(&mut buf),
            Err(SpdyError::HeaderBlock(_))
        ));
        // A short RST_STREAM.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            Codec::new().decode(&mut buf),
            Err(SpdyError::Malformed { .. })
        ));
    }

    #[tokio::test]
    async fn connection_replies_routes_data_and_answers_pings() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (streams_tx, mut streams_rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let serving = tokio::spawn(serve_connection(server, streams_tx, cancel.clone()));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut codec = Codec::new();
        let mut out = BytesMut::new();
        codec
            .encode(
                &Frame::SynStream {
                    stream_id: 1,
                    associated_to: 0,
                    priority: 0,
                    flags: 0,
                    headers: vec![("streamtype".into(), "data".into())],
                },
                &mut out,
            )
            .unwrap();
        codec
            .encode(
                &Frame::Data {
                    stream_id: 1,
                    flags: FLAG_FIN,
                    data: Bytes::from_static(b"ping?"),
                },
                &mut out,
            )
            .unwrap();
        codec.encode(&Frame::Ping { id: 1 }, &mut out).unwrap();
        client_write.write_all(&out).await.unwrap();

        let mut stream = streams_rx.recv().await.unwrap();
        assert_eq!(header(&stream.headers, "StreamType"), Some("data"));
        assert_eq!(
            stream.incoming.recv().await.unwrap(),
            Bytes::from_static(b"ping?")
        );
        assert!(
            stream.incoming.recv().await.is_none(),
            "FIN ends the stream"
        );
        stream
            .writer
            .send(Bytes::from_static(b"pong!"))
            .await
            .unwrap();
        stream.writer.finish().await.unwrap();

        let mut reader = Codec::new();
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        while seen.len() < 4 {
            match reader.decode(&mut buf).unwrap() {
                Some(frame) => seen.push(frame),
                None => {
                    assert!(client_read.read_buf(&mut buf).await.unwrap() > 0);
                }
            }
        }
        assert!(matches!(seen[0], Frame::SynReply { stream_id: 1, .. }));
        assert!(seen.contains(&Frame::Ping { id: 1 }));
        let data: Vec<&Frame> = seen
            .iter()
            .filter(|f| matches!(f, Frame::Data { .. }))
            .collect();
        assert_eq!(
            data,
            vec![
                &Frame::Data {
                    stream_id: 1,
                    flags: 0,
                    data: Bytes::from_static(b"pong!")
                },
                &Frame::Data {
                    stream_id: 1,
                    flags: FLAG_FIN,
                    data: Bytes::new()
                }
            ]
        );
        // The client hangs up: the connection ends and takes its streams with it.
        drop((client_read, client_write));
        drop(stream);
        serving.await.unwrap().unwrap();
        assert!(cancel.is_cancelled());
    }
}
