//! A minimal HTTP/1.1 server and client on `std::net`: enough for the KV service's client, admin
//! and node-to-node endpoints, `curl` and a Prometheus scrape. Bodies carry `Content-Length`
//! (no chunked encoding), connections are kept alive. A production service puts its framework of
//! choice here (hyper, axum, tonic); the layer does not care how bytes travel between nodes,
//! since everything above the cutover is sealed before it leaves the proposer.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// The largest body either side accepts (a snapshot travels in one request: a larger state needs
/// a transport that streams, issue 16).
pub const MAX_BODY: usize = 64 << 20;
/// Longest request, status or header line accepted, newline included.
pub const MAX_LINE: usize = 8 << 10;

/// How long a server connection may stay idle, or a request take to arrive, before it is closed.
const IDLE: Duration = Duration::from_secs(120);

/// A request as the handler sees it.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `PUT`, `POST`, `DELETE`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query parameters (no percent-decoding: the service uses plain ids and numbers).
    pub query: HashMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The query parameter `name` parsed as `T`.
    pub fn param<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.query.get(name).and_then(|v| v.parse().ok())
    }
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The content type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self { status, content_type: "application/json", body: value.to_string().into_bytes() }
    }

    /// A plain-text response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: text.into().into_bytes() }
    }

    /// A binary response.
    pub fn bytes(status: u16, body: Vec<u8>) -> Self {
        Self { status, content_type: "application/octet-stream", body }
    }
}

/// Handles one request.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Serves `listener` with `handler`: one thread per connection, keep-alive. Returns at once.
pub fn serve(listener: TcpListener, handler: Handler) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handler = handler.clone();
            thread::spawn(move || {
                let _ = connection(stream, &handler);
            });
        }
    });
}

fn connection(stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader)? else { return Ok(()) };
        let response = handler(request);
        let reason = match response.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            409 => "Conflict",
            503 => "Service Unavailable",
            _ => "Status",
        };
        let head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
            response.status,
            response.content_type,
            response.body.len()
        );
        writer.write_all(head.as_bytes())?;
        writer.write_all(&response.body)?;
        writer.flush()?;
    }
}

/// Reads one request (request line, headers, `Content-Length` body) from a connection: `None` at
/// a clean end of stream. What arrives from the network is untrusted: every malformed request is
/// an `InvalidData` error, never a panic, and a body is never allocated beyond what arrived
/// (fuzzed: `fuzz/`).
///
/// # Errors
/// `InvalidData` for a malformed request line, a bad `Content-Length` or a body over the
/// service's limit; `UnexpectedEof` for a request cut short; any read error.
pub fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if read_line(reader, &mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(invalid("malformed request line"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let (method, path) = (method.to_owned(), path.to_owned());
    let body = read_body(reader)?;
    Ok(Some(Request { method, path, query, body }))
}

/// Reads the headers and the `Content-Length` body that follows them.
fn read_body(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if read_line(reader, &mut header)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| invalid("bad content-length"))?;
            }
        }
    }
    if length > MAX_BODY {
        return Err(invalid("body too large"));
    }
    // Grown as the bytes arrive, not allocated up front on the sender's word.
    let mut body = Vec::with_capacity(length.min(64 << 10));
    reader.take(length as u64).read_to_end(&mut body)?;
    if body.len() != length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(body)
}

/// `BufRead::read_line`, but a line longer than [`MAX_LINE`] is an error: a peer sending bytes
/// without a newline must not grow the buffer without bound.
fn read_line(reader: &mut impl BufRead, line: &mut String) -> io::Result<usize> {
    let n = reader.by_ref().take(MAX_LINE as u64 + 1).read_line(line)?;
    if n > MAX_LINE {
        return Err(invalid("line too long"));
    }
    Ok(n)
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A client of one peer over one kept-alive connection (reconnects when it broke). Calls from
/// several threads take turns.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Arc<Mutex<Option<BufReader<TcpStream>>>>,
}

impl Client {
    /// A client of `addr`; every call gives up after `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self { addr, timeout, conn: Arc::new(Mutex::new(None)) }
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `method path` with `body`; returns the status and the body.
    ///
    /// # Errors
    /// Connecting, writing or reading failed (the peer is down or too slow).
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        // A kept-alive connection the peer closed meanwhile fails at once: the request did not
        // reach it, so it goes again on a fresh connection. Any other failure (a timeout after
        // the request was sent, a broken answer) is the caller's: the request may have been
        // carried out, and sending it again could carry it out twice.
        let reused = conn.is_some();
        match self.exchange(&mut conn, method, path, body) {
            Err(Failed { sent: false, .. }) if reused => {
                *conn = None;
                self.exchange(&mut conn, method, path, body).map_err(|f| f.error)
            }
            result => result.map_err(|f| f.error),
        }
    }

    fn exchange(
        &self,
        conn: &mut Option<BufReader<TcpStream>>,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), Failed> {
        let unsent = |error| Failed { error, sent: false };
        if conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(unsent)?;
            stream.set_nodelay(true).map_err(unsent)?;
            stream.set_read_timeout(Some(self.timeout)).map_err(unsent)?;
            stream.set_write_timeout(Some(self.timeout)).map_err(unsent)?;
            *conn = Some(BufReader::new(stream));
        }
        let result = (|| {
            let reader = conn.as_mut().ok_or_else(|| unsent(invalid("no connection")))?;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\r\n",
                self.addr,
                body.len()
            );
            let stream = reader.get_mut();
            stream.write_all(head.as_bytes()).map_err(unsent)?;
            stream.write_all(body).map_err(unsent)?;
            stream.flush().map_err(unsent)?;
            let mut status = String::new();
            match read_line(reader, &mut status) {
                // Closed before answering anything: a stale kept-alive connection.
                Ok(0) => return Err(unsent(io::ErrorKind::UnexpectedEof.into())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(unsent(e)),
                Err(error) => return Err(Failed { error, sent: true }),
                Ok(_) => {}
            }
            let sent = |error| Failed { error, sent: true };
            let code = status
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| sent(invalid("malformed status line")))?;
            Ok((code, read_body(reader).map_err(sent)?))
        })();
        if result.is_err() {
            *conn = None;
        }
        result
    }
}

/// A failed exchange, and whether the request may have reached the peer.
struct Failed {
    error: io::Error,
    sent: bool,
}
