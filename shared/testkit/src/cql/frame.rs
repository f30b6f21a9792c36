//! CQL native protocol v4 framing and the primitive notations of the spec
//! (`[int]`, `[short]`, `[string]`, `[long string]`, `[bytes]`, `[short bytes]`,
//! `[string map]`, `[string multimap]`, `[option]`).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Request/response opcodes.
#[allow(missing_docs)]
pub mod opcode {
    pub const ERROR: u8 = 0x00;
    pub const STARTUP: u8 = 0x01;
    pub const READY: u8 = 0x02;
    pub const OPTIONS: u8 = 0x05;
    pub const SUPPORTED: u8 = 0x06;
    pub const QUERY: u8 = 0x07;
    pub const RESULT: u8 = 0x08;
    pub const PREPARE: u8 = 0x09;
    pub const EXECUTE: u8 = 0x0A;
    pub const REGISTER: u8 = 0x0B;
    pub const BATCH: u8 = 0x0D;
}

/// The largest frame body accepted (the spec's default limit is 256 MB; tests need less).
const MAX_BODY: u32 = 64 * 1024 * 1024;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Header flags.
    pub flags: u8,
    /// Stream id, echoed in the response.
    pub stream: i16,
    /// Opcode.
    pub opcode: u8,
    /// Body.
    pub body: Vec<u8>,
}

/// Reads one request frame; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut header = [0u8; 9];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if header[0] != 0x04 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "protocol version byte {:#x}: only v4 requests are served",
                header[0]
            ),
        ));
    }
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    if len > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame body too large",
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    Ok(Some(Frame {
        flags: header[1],
        stream: i16::from_be_bytes([header[2], header[3]]),
        opcode: header[4],
        body,
    }))
}

/// Writes one response frame (version byte 0x84).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    stream: i16,
    opcode: u8,
    body: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(0x84);
    out.push(0);
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(opcode);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// A cursor over a frame body.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// `[byte]`
    pub fn byte(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1, "byte")?[0])
    }
    /// `[short]`
    pub fn short(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2, "short")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// `[int]`
    pub fn int(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4, "int")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// `[long]`
    pub fn long(&mut self) -> Result<i64, Malformed> {
        let b = self.take(8, "long")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    /// `[string]`
    pub fn string(&mut self) -> Result<String, Malformed> {
        let n = self.short()? as usize;
        let b = self.take(n, "string")?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed("string is not UTF-8"))
    }
    /// `[long string]`
    pub fn long_string(&mut self) -> Result<String, Malformed> {
        let n = self.int()?;
        let n = usize::try_from(n).map_err(|_| Malformed("negative long string length"))?;
        let b = self.take(n, "long string")?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed("long string is not UTF-8"))
    }
    /// `[bytes]` (`None` for null; "not set" values are also `None`).
    pub fn bytes(&mut self) -> Result<Option<Vec<u8>>, Malformed> {
        let n = self.int()?;
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(self.take(n as usize, "bytes")?.to_vec()))
    }
    /// `[short bytes]`
    pub fn short_bytes(&mut self) -> Result<Vec<u8>, Malformed> {
        let n = self.short()? as usize;
        Ok(self.take(n, "short bytes")?.to_vec())
    }
    /// `[string map]`
    pub fn string_map(&mut self) -> Result<Vec<(String, String)>, Malformed> {
        let n = self.short()?;
        (0..n)
            .map(|_| Ok((self.string()?, self.string()?)))
            .collect()
    }
    /// `[string list]`
    pub fn string_list(&mut self) -> Result<Vec<String>, Malformed> {
        let n = self.short()?;
        (0..n).map(|_| self.string()).collect()
    }
}

/// A frame body being written.
#[derive(Debug, Default)]
pub struct Writer {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An empty body.
    pub fn new() -> Self {
        Writer::default()
    }
    /// `[short]`
    pub fn short(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// `[int]`
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// `[string]`
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.short(s.len() as u16);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }
    /// `[bytes]` (`None` writes null).
    pub fn bytes(&mut self, b: Option<&[u8]>) -> &mut Self {
        match b {
            None => self.int(-1),
            Some(b) => {
                self.int(b.len() as i32);
                self.buf.extend_from_slice(b);
                self
            }
        }
    }
    /// `[short bytes]`
    pub fn short_bytes(&mut self, b: &[u8]) -> &mut Self {
        self.short(b.len() as u16);
        self.buf.extend_from_slice(b);
        self
    }
    /// `[string multimap]`
    pub fn string_multimap(&mut self, m: &[(&str, &[&str])]) -> &mut Self {
        self.short(m.len() as u16);
        for (k, vs) in m {
            self.string(k);
            self.short(vs.len() as u16);
            for v in *vs {
                self.string(v);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip() {
        let mut w = Writer::new();
        w.short(7)
            .int(-3)
            .string("héllo")
            .bytes(Some(b"ab"))
            .bytes(None)
            .short_bytes(b"id");
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.short(), Ok(7));
        assert_eq!(r.int(), Ok(-3));
        assert_eq!(r.string().as_deref(), Ok("héllo"));
        assert_eq!(r.bytes(), Ok(Some(b"ab".to_vec())));
        assert_eq!(r.bytes(), Ok(None));
        assert_eq!(r.short_bytes(), Ok(b"id".to_vec()));
        assert_eq!(r.byte(), Err(Malformed("byte")));
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_versions_are_refused() {
        let mut out = Vec::new();
        write_frame(&mut out, 5, opcode::READY, b"").await.unwrap();
        assert_eq!(out, [0x84, 0, 0, 5, 0x02, 0, 0, 0, 0]);
        let mut req = out.clone();
        req[0] = 0x04;
        let f = read_frame(&mut &req[..]).await.unwrap().unwrap();
        assert_eq!((f.stream, f.opcode), (5, opcode::READY));
        assert!(
            read_frame(&mut &out[..]).await.is_err(),
            "a response version byte is not a request"
        );
        assert!(read_frame(&mut &[][..]).await.unwrap().is_none());
    }
}
