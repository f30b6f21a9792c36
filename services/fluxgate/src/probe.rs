//! `fluxgate probe URL`: one HTTP GET, exit 0 on a 2xx answer: the container's
//! healthcheck, so the image needs no curl and no shell. `fluxgate probe mqtt://host:port`
//! sends an MQTT 3.1.1 CONNECT and exits 0 on a CONNACK, whatever its return code (the
//! probe has no credentials; a "not authorized" CONNACK still proves the listener speaks
//! MQTT): the Helm chart's `helm test`, with the same image.
//!
//! Written over `std::net` rather than with an HTTP or MQTT client crate: it asks one
//! plain question and reads one short answer; a client stack (TLS, pools, redirects,
//! sessions) would be most of the binary's new code for none of that.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

/// `http://host:port/path` split into the address to dial, the `Host` header and the path.
fn parse(url: &str) -> anyhow::Result<(String, String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("probe needs an http:// URL, got {url:?}");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("probe URL {url:?} has no host");
    }
    let dial = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((dial, authority.to_owned(), path.to_owned()))
}

/// Probes `url` (`http://` or `mqtt://`) within `timeout`; what it answered, or an error
/// naming what failed.
pub(crate) fn probe(url: &str, timeout: Duration) -> anyhow::Result<String> {
    if let Some(authority) = url.strip_prefix("mqtt://") {
        let code = mqtt(authority.trim_end_matches('/'), timeout)?;
        return Ok(format!("CONNACK, return code {code}"));
    }
    Ok(http(url, timeout)?.to_string())
}

/// A TCP connection to `dial` (`host:port`), with `timeout` on every read and write.
fn connect(dial: &str, timeout: Duration) -> anyhow::Result<TcpStream> {
    let addr = dial
        .to_socket_addrs()
        .with_context(|| format!("resolving {dial}"))?
        .next()
        .with_context(|| format!("{dial} resolves to no address"))?;
    let s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 10 s, client id `fluxgate-probe`, no
/// credentials); the CONNACK's return code.
fn mqtt(authority: &str, timeout: Duration) -> anyhow::Result<u8> {
    if authority.is_empty() || authority.contains('/') {
        bail!("probe needs mqtt://host:port, got mqtt://{authority}");
    }
    let dial = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:1883")
    };
    let mut s = connect(&dial, timeout)?;
    const ID: &[u8] = b"fluxgate-probe";
    let mut connect = vec![0x10, (10 + 2 + ID.len()) as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    connect.extend_from_slice(&[0, ID.len() as u8]);
    connect.extend_from_slice(ID);
    s.write_all(&connect)
        .with_context(|| format!("sending CONNECT to {dial}"))?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack)
        .with_context(|| format!("{dial} sent no CONNACK"))?;
    if connack[..2] != [0x20, 0x02] {
        bail!("{dial} did not answer MQTT: {connack:02x?}");
    }
    // DISCONNECT; the answer is in already.
    let _ = s.write_all(&[0xe0, 0x00]);
    Ok(connack[3])
}

/// GETs `url`; `Ok(status)` for a 2xx answer, an error naming the status otherwise.
fn http(url: &str, timeout: Duration) -> anyhow::Result<u16> {
    let (dial, host, path) = parse(url)?;
    let mut s = connect(&dial, timeout)?;
    let addr = dial;
    // One write: `write!` on the socket would send the request in pieces, and a server
    // that answers the first piece and closes makes the rest fail with a broken pipe.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fluxgate-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .with_context(|| format!("sending the request to {addr}"))?;
    // The status line is all that is read: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s
            .read(&mut head[n..])
            .with_context(|| format!("reading from {addr}"))?
        {
            0 => break,
            k => n += k,
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("{url} did not answer HTTP: {line:?}"))?;
    if !(200..300).contains(&status) {
        bail!("{url} answered {status}");
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_host_and_path() {
        let p = |u| parse(u).unwrap();
        assert_eq!(
            p("http://api:8080/readyz"),
            ("api:8080".into(), "api:8080".into(), "/readyz".into())
        );
        assert_eq!(
            p("http://front"),
            ("front:80".into(), "front".into(), "/".into())
        );
        assert!(parse("https://api/readyz").is_err());
        assert!(parse("http:///readyz").is_err());
    }

    /// One real socket: a 200 passes, a 503 fails naming the status, a closed port fails.
    #[test]
    fn a_probe_passes_on_2xx_only() {
        use std::net::TcpListener;
        let serve = |answer: &'static str| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                // The whole request, then the answer.
                let mut req = Vec::new();
                let mut buf = [0u8; 512];
                while !req.ends_with(b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(answer.as_bytes());
            });
            format!("http://{addr}/readyz")
        };
        let t = Duration::from_secs(5);
        let ok = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(probe(&ok, t).unwrap(), "200");
        let down = serve("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        let e = probe(&down, t).unwrap_err().to_string();
        assert!(e.contains("503"), "{e}");
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(probe(&format!("http://{closed}/readyz"), t).is_err());
    }
}
