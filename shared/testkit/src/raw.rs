//! Raw MQTT 3.1.1 and 5 packets, enough to speak to a server byte by byte: for tests
//! whose behaviour is about the wire (what is in one TCP segment, pipelining, acks), and
//! clients that must survive the server going away mid-packet.

/// The protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V {
    /// MQTT 3.1.1.
    V3,
    /// MQTT 5.
    V5,
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![first];
    varint(body.len(), &mut out);
    out.extend(body);
    out
}

/// CONNECT with clean session, keep-alive 60 s, username and password.
pub fn connect(v: V, client: &str, user: &str, pass: &str) -> Vec<u8> {
    connect_keepalive(v, client, user, pass, 60)
}

/// CONNECT with clean session, keep-alive `keepalive` seconds (0: none), username and
/// password.
pub fn connect_keepalive(v: V, client: &str, user: &str, pass: &str, keepalive: u16) -> Vec<u8> {
    let mut b = Vec::new();
    string(b"MQTT", &mut b);
    b.push(if v == V::V5 { 5 } else { 4 });
    b.push(0xC2);
    b.extend_from_slice(&keepalive.to_be_bytes());
    if v == V::V5 {
        b.push(0); // no properties
    }
    string(client.as_bytes(), &mut b);
    string(user.as_bytes(), &mut b);
    string(pass.as_bytes(), &mut b);
    packet(0x10, b)
}

/// PUBLISH at QoS 0 (`id` None) or QoS 1.
pub fn publish(v: V, topic: &str, id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    string(topic.as_bytes(), &mut b);
    if let Some(id) = id {
        b.extend_from_slice(&id.to_be_bytes());
    }
    if v == V::V5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    packet(if id.is_some() { 0x32 } else { 0x30 }, b)
}

/// SUBSCRIBE to one filter at QoS 1.
pub fn subscribe(v: V, id: u16, filter: &str) -> Vec<u8> {
    subscribe_at(v, id, filter, 1)
}

/// SUBSCRIBE to one filter at `qos` (0 or 1).
pub fn subscribe_at(v: V, id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    if v == V::V5 {
        b.push(0);
    }
    string(filter.as_bytes(), &mut b);
    b.push(qos);
    packet(0x82, b)
}

/// PUBACK of the server's QoS 1 PUBLISH `id` (success; for v5 the reason is implied).
pub fn puback(id: u16) -> Vec<u8> {
    let [hi, lo] = id.to_be_bytes();
    vec![0x40, 0x02, hi, lo]
}

/// DISCONNECT (no reason, no properties).
pub fn disconnect() -> Vec<u8> {
    vec![0xE0, 0x00]
}

/// A packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// The return (v3) or reason (v5) code.
    ConnAck(u8),
    /// Packet id and (v5) reason code.
    PubAck(u16, u8),
    /// The v5 reason code (0 for v3 or none given).
    Disconnect(u8),
    /// A PUBLISH from the server: its topic, and its packet id at QoS 1 or 2 (an MQTT 5
    /// publish's properties and payload are not read).
    Publish(String, Option<u16>),
    /// SUBACK: its packet id and the first reason (v3: return) code.
    SubAck(u16, u8),
    /// Another packet, by its type.
    Other(u8),
}

/// Splits `buf` into whole packets, leaving a partial one in it.
pub fn parse(buf: &mut Vec<u8>) -> Vec<Got> {
    let mut out = Vec::new();
    loop {
        let (mut len, mut mul, mut i) = (0usize, 1usize, 1usize);
        loop {
            let Some(&b) = buf.get(i) else { return out };
            len += usize::from(b & 0x7F) * mul;
            mul *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if buf.len() < i + len {
            return out;
        }
        let body = buf[i..i + len].to_vec();
        out.push(match buf[0] >> 4 {
            2 => Got::ConnAck(body.get(1).copied().unwrap_or(0)),
            4 => Got::PubAck(
                u16::from_be_bytes([body[0], body[1]]),
                body.get(2).copied().unwrap_or(0),
            ),
            3 => publish_of(buf[0], &body),
            9 => Got::SubAck(
                u16::from_be_bytes([body[0], body[1]]),
                // v3: the code follows the id; v5: after the properties (none sent here
                // by fluxgate: length 0).
                *body.last().unwrap_or(&0x80),
            ),
            14 => Got::Disconnect(body.first().copied().unwrap_or(0)),
            t => Got::Other(t),
        });
        buf.drain(..i + len);
    }
}

fn publish_of(first: u8, body: &[u8]) -> Got {
    let Some(len) = body
        .get(..2)
        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
    else {
        return Got::Other(3);
    };
    let Some(topic) = body.get(2..2 + len) else {
        return Got::Other(3);
    };
    let topic = String::from_utf8_lossy(topic).into_owned();
    let id = (first & 0x06 != 0)
        .then(|| body.get(2 + len..4 + len))
        .flatten()
        .map(|i| u16::from_be_bytes([i[0], i[1]]));
    Got::Publish(topic, id)
}

/// One raw MQTT connection over TCP, read packet by packet (several may come in one read).
#[derive(Debug)]
pub struct Wire {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
    got: std::collections::VecDeque<Got>,
}

impl Wire {
    /// Connects to `addr` and sends CONNECT; the CONNACK is the first packet [`Wire::next`]
    /// returns.
    pub async fn connect(
        addr: std::net::SocketAddr,
        v: V,
        client: &str,
        user: &str,
        pass: &str,
    ) -> Result<Wire, String> {
        Wire::connect_with(addr, &connect(v, client, user, pass)).await
    }

    /// Connects to `addr` and sends `connect` (a CONNECT packet of the caller's making).
    pub async fn connect_with(addr: std::net::SocketAddr, connect: &[u8]) -> Result<Wire, String> {
        let s = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let mut w = Wire {
            s,
            buf: Vec::new(),
            got: std::collections::VecDeque::new(),
        };
        w.send(connect).await?;
        Ok(w)
    }

    /// Connects as `client` and waits for a successful CONNACK.
    pub async fn open(
        addr: std::net::SocketAddr,
        v: V,
        client: &str,
        user: &str,
        pass: &str,
    ) -> Result<Wire, String> {
        let mut w = Wire::connect(addr, v, client, user, pass).await?;
        match w.next().await? {
            Got::ConnAck(0) => Ok(w),
            other => Err(format!("connect answered {other:?}")),
        }
    }

    /// Writes `bytes` (one or more packets).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(bytes).await.map_err(|e| e.to_string())
    }

    /// The next packet from the server (at most 10 s away); `Err("closed")` when the server
    /// closed the connection.
    pub async fn next(&mut self) -> Result<Got, String> {
        self.next_within(std::time::Duration::from_secs(10)).await
    }

    /// The next packet from the server, at most `wait` away.
    pub async fn next_within(&mut self, wait: std::time::Duration) -> Result<Got, String> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(g) = self.got.pop_front() {
                return Ok(g);
            }
            self.got.extend(parse(&mut self.buf));
            if !self.got.is_empty() {
                continue;
            }
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk))
                .await
                .map_err(|_| format!("no answer in {wait:?}"))?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
