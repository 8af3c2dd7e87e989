//! A small HTTP/1.1 client for the load generator: keep-alive connections
//! from a pool, each request written with one `write_all`, each response read
//! by its `Content-Length` (httparse parses the head).
//!
//! A load generator must cost much less than what it measures. With a
//! general-purpose client (reqwest on hyper) the generator took about as much
//! CPU per request as the engine's whole HTTP layer, on the same two cores;
//! this one does only what the engine's replies need.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reply: the status and the raw body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

pub struct Client {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
    idle: Mutex<VecDeque<Conn>>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    last_used: Instant,
}

/// Idle connections older than this are dropped instead of reused: servers
/// close idle keep-alive connections (actix-web after 5 s by default).
const MAX_IDLE: Duration = Duration::from_secs(3);

const MAX_HEADERS: usize = 32;
/// Replies larger than this are refused (the engine's are a few KiB).
const MAX_RESPONSE: usize = 8 << 20;

impl Client {
    /// `base` is `http://host:port` (no TLS, no path).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, String> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("{base:?}: only http:// URLs are supported"))?;
        let host = rest.trim_end_matches('/');
        if host.contains('/') {
            return Err(format!("{base:?}: give the base URL without a path"));
        }
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .map_err(|e| format!("{base:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{base:?}: no address"))?;
        Ok(Self {
            addr,
            host: host.to_string(),
            timeout,
            idle: Mutex::default(),
        })
    }

    /// The least recently used idle connection that is not too old, if
    /// there is one. Taking the oldest keeps every connection in use warm:
    /// under an open loop a burst then finds open connections instead of
    /// opening new ones (a handshake each, for the server too), and they do
    /// not go stale and closed before the next burst. Measured at 17,800
    /// creates/s with 1,024 connections: 251-1,027 connections opened per
    /// 18 s run instead of 1,209-2,276.
    fn idle_conn(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap();
        // Returned connections are pushed at the end: the stale ones are in front.
        let stale = idle.partition_point(|c| c.last_used.elapsed() > MAX_IDLE);
        idle.drain(..stale);
        idle.pop_front()
    }

    /// Opens `n` connections into the idle pool, at most `at_once` handshakes
    /// at a time (a burst of thousands would overflow the server's accept
    /// queue). Returns how many opened.
    pub async fn open(&self, n: usize, at_once: usize) -> usize {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
        let opening = (0..n).map(|_| {
            let slots = slots.clone();
            async move {
                let _slot = slots.acquire().await;
                Conn::connect(self.addr).await.ok()
            }
        });
        let opened: Vec<Conn> = futures_util::future::join_all(opening)
            .await
            .into_iter()
            .flatten()
            .collect();
        let count = opened.len();
        self.idle.lock().unwrap().extend(opened);
        count
    }

    /// Sends one request on an idle connection (or a new one) and reads the
    /// reply. When a reused connection turns out to be closed before any
    /// reply came (the server timed it out), the request is sent once more
    /// on a new connection: the server never read it (and every call of this
    /// API is idempotent anyway).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        if let Some(conn) = self.idle_conn() {
            match self.send_on(conn, method, path, body).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                answer => return answer,
            }
        }
        let conn = Conn::connect(self.addr).await?;
        self.send_on(conn, method, path, body).await
    }

    async fn send_on(
        &self,
        mut conn: Conn,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let mut request = Vec::with_capacity(160 + body.map_or(0, <[u8]>::len));
        request.extend_from_slice(method.as_bytes());
        request.push(b' ');
        request.extend_from_slice(path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        request.extend_from_slice(self.host.as_bytes());
        if let Some(body) = body {
            request.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
            request.extend_from_slice(body.len().to_string().as_bytes());
            request.extend_from_slice(b"\r\n\r\n");
            request.extend_from_slice(body);
        } else {
            request.extend_from_slice(b"\r\n\r\n");
        }
        let (response, reusable) =
            match tokio::time::timeout(self.timeout, conn.round_trip(&request)).await {
                Ok(answer) => answer?,
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply in time")),
            };
        if reusable {
            conn.last_used = Instant::now();
            self.idle.lock().unwrap().push_back(conn);
        }
        Ok(response)
    }
}

impl Conn {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
            last_used: Instant::now(),
        })
    }

    /// Writes `request`, reads one reply; also says whether the connection
    /// can carry another request.
    /// A connection the server had already closed fails with
    /// `ConnectionAborted` before any byte of a reply.
    async fn round_trip(&mut self, request: &[u8]) -> io::Result<(Response, bool)> {
        self.buf.clear();
        if let Err(e) = self.stream.write_all(request).await {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, e));
        }
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut head = httparse::Response::new(&mut headers);
            match head.parse(&self.buf).map_err(invalid)? {
                httparse::Status::Complete(head_len) => {
                    let status = head.code.unwrap_or(0);
                    let mut length = None;
                    let mut keep_alive = true;
                    for h in head.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value).map_err(invalid)?;
                            length = Some(v.trim().parse::<usize>().map_err(invalid)?);
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err(invalid("chunked replies are not supported"));
                        }
                    }
                    let length = length.unwrap_or(0);
                    if length > MAX_RESPONSE {
                        return Err(invalid("reply too large"));
                    }
                    while self.buf.len() < head_len + length {
                        self.fill().await?;
                    }
                    let body = self.buf[head_len..head_len + length].to_vec();
                    // Nothing may follow a reply we did not ask for.
                    let clean = self.buf.len() == head_len + length;
                    return Ok((Response { status, body }, keep_alive && clean));
                }
                httparse::Status::Partial => {
                    if self.buf.len() > 64 * 1024 {
                        return Err(invalid("reply head too large"));
                    }
                    self.fill().await?;
                }
            }
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        let nothing_yet = self.buf.is_empty();
        // Read straight into the buffer's spare room (no zeroed scratch copy).
        self.buf.reserve(16 * 1024);
        let n = match self.stream.read_buf(&mut self.buf).await {
            Ok(n) => n,
            Err(e) if nothing_yet => {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, e));
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            let kind = if nothing_yet {
                io::ErrorKind::ConnectionAborted
            } else {
                io::ErrorKind::UnexpectedEof
            };
            return Err(io::Error::new(kind, "the server closed the connection"));
        }
        Ok(())
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert!(Client::new("http://127.0.0.1:8080", Duration::from_secs(1)).is_ok());
        assert!(Client::new("http://127.0.0.1:8080/", Duration::from_secs(1)).is_ok());
        assert!(Client::new("https://127.0.0.1:8080", Duration::from_secs(1)).is_err());
        assert!(Client::new("http://127.0.0.1:8080/v1", Duration::from_secs(1)).is_err());
    }

    /// Against a tiny server on loopback: keep-alive, bodies, a closing reply.
    #[tokio::test]
    async fn talks_http_1_1() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            // Two requests on one connection.
            for reply in [
                "HTTP/1.1 201 Created\r\ncontent-length: 13\r\n\r\n{\"order\":\"1\"}",
                "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            ] {
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    seen.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    // A whole request: a GET's head, or the POST's head and body.
                    let whole = text.contains("\r\n\r\n")
                        && (text.starts_with("GET") || text.ends_with("{\"a\":1}"));
                    if whole {
                        break;
                    }
                }
                s.write_all(reply.as_bytes()).await.unwrap();
                seen.clear();
            }
        });
        let client =
            Client::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let r = client
            .send("POST", "/v1/orders", Some(b"{\"a\":1}"))
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (201, b"{\"order\":\"1\"}".as_slice())
        );
        assert_eq!(client.idle.lock().unwrap().len(), 1, "kept alive");
        let r = client.send("GET", "/x", None).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, b"{}".as_slice()));
        assert_eq!(client.idle.lock().unwrap().len(), 0, "closed when asked");
        server.await.unwrap();
    }

    /// Connections opened up front are reused oldest first, so all of them
    /// stay warm.
    #[tokio::test]
    async fn the_least_recently_used_connection_goes_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Each connection answers every request with its own number.
        let server = tokio::spawn(async move {
            for n in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut chunk = [0u8; 4096];
                    loop {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => seen.extend_from_slice(&chunk[..k]),
                            }
                        }
                        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{n}");
                        s.write_all(reply.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        let client = Client::new(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
        // Opened up front, in order; the server accepts no third connection,
        // so a request that opened one would get no answer.
        assert_eq!(client.open(2, 1).await, 2);
        let mut served_by = Vec::new();
        for _ in 0..4 {
            let r = client.send("GET", "/", None).await.unwrap();
            served_by.push(String::from_utf8(r.body).unwrap());
        }
        assert_eq!(served_by, ["0", "1", "0", "1"]);
        server.await.unwrap();
    }

    /// A kept-alive connection the server closed is replaced, not an error.
    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut chunk = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap();
                    seen.extend_from_slice(&chunk[..n]);
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await
                    .unwrap();
                // Then the server drops the connection, as an idle timeout would.
            }
        });
        let client =
            Client::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        assert_eq!(client.send("GET", "/a", None).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(client.idle.lock().unwrap().len(), 1);
        assert_eq!(client.send("GET", "/b", None).await.unwrap().status, 200);
        server.await.unwrap();
    }
}
