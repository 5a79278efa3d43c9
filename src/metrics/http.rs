//! The metrics endpoint's HTTP server: one thread, one `poll(2)` loop, bounded in everything a
//! local user controls.
//!
//! This module owns accepting connections, reading one request head per connection, writing
//! one response and closing. What to answer is the caller's: a function from method and path to
//! a [`Reply`]. Parsing the head is a pure function ([`parse_head`]) tested without sockets.
//!
//! Bounds (see [`Limits`]): at most `max_conns` connections open; at the cap the oldest
//! connection still waiting for its request is closed to make room, so a scraper that sends its
//! request at once is served however many idle connections others hold. A request head is at
//! most `max_head` bytes (more is answered 431 and never stored); the request must arrive within
//! `timeout` of the connection, and the response must be taken within `timeout` too. No
//! keep-alive: one request per connection. After the response the server reads and discards
//! for at most `linger` (so a client still sending gets the answer, not a reset), then closes.
//!
//! It must never start a thread per connection, size a buffer from anything a client sends,
//! block on one client, or panic: an error on a connection closes that connection; an error
//! accepting (file descriptors exhausted, memory) is logged at most every ten seconds and pauses
//! accepting briefly, and the listener keeps serving.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one client may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_conns: usize,
    /// Bytes of a request head (request line and header fields).
    pub max_head: usize,
    /// Time to send the request, and then time to take the response.
    pub timeout: Duration,
    /// Time spent discarding what a client still sends after its response.
    pub linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conns: 64,
            max_head: 8192,
            timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
        }
    }
}

/// What the server did, for the metrics page itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Requests answered (any status).
    pub answered: u64,
    /// Idle connections closed to make room for a new one at the connection cap.
    pub evicted: u64,
    /// New connections closed at once: at the cap, with every open one busy answering.
    pub refused: u64,
    /// Connections closed because the request or the response took longer than the timeout.
    pub timed_out: u64,
    /// Requests answered 4xx/5xx because they were malformed or too large.
    pub rejected: u64,
    /// Errors accepting connections (descriptors or memory exhausted).
    pub accept_errors: u64,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Reply {
    /// A plain-text reply.
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: None,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The bytes of a response: status line, headers, body. Every response closes the connection.
pub fn encode(reply: &Reply) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    if let Some(allow) = reply.allow {
        head.push_str("Allow: ");
        head.push_str(allow);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(reply.body.as_bytes());
    out
}

/// What a request head read so far says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head<'a> {
    /// The head is not complete yet.
    Partial,
    /// A complete, well-formed head: the method and the path (query and fragment removed).
    Request { method: &'a str, path: &'a str },
    /// Answer with this status and close: 400 malformed, 431 too large, 505 not HTTP/1.x.
    Reject(u16),
}

/// Read a request head from the bytes received so far, of which at most `max` are kept: the
/// request line `METHOD SP TARGET SP HTTP/1.x`, header fields (not interpreted), and the empty
/// line that ends them. A bad request line is rejected as soon as it is complete; a head that
/// fills `max` bytes without ending is too large.
pub fn parse_head(buf: &[u8], max: usize) -> Head<'_> {
    let too_large = buf.len() >= max;
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if too_large {
            Head::Reject(431)
        } else {
            Head::Partial
        };
    };
    let line = buf.get(..nl).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (method, path) = match request_line(line) {
        Ok(parts) => parts,
        Err(status) => return Head::Reject(status),
    };
    // The head ends with an empty line: "\n\n" or "\n\r\n", from the request line's end on.
    let rest = buf.get(nl..).unwrap_or_default();
    let ended = rest.windows(2).any(|w| w == b"\n\n") || rest.windows(3).any(|w| w == b"\n\r\n");
    if ended {
        Head::Request { method, path }
    } else if too_large {
        Head::Reject(431)
    } else {
        Head::Partial
    }
}

/// Method and path of a request line, or the status to reject it with.
fn request_line(line: &[u8]) -> Result<(&str, &str), u16> {
    let text = std::str::from_utf8(line).map_err(|_| 400u16)?;
    if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(400);
    }
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let method_ok =
        (1..=16).contains(&method.len()) && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok {
        return Err(400);
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => return Err(505),
        _ => return Err(400),
    }
    // Origin form `/path?query`; absolute form `http://host:port/path` is allowed too.
    let target = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/")
        }
        Some(_) => return Err(400),
        None => target,
    };
    if !target.starts_with('/') {
        return Err(400);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok((method, path))
}

/// Where a connection is in its one exchange.
enum State {
    /// Reading the request head (at most `max_head` bytes kept).
    Reading(Vec<u8>),
    /// Writing the response; `sent` bytes of it are out.
    Writing { out: Vec<u8>, sent: usize },
    /// Response sent and write side shut: discarding input until the client closes.
    Lingering,
    /// To be closed.
    Done,
}

struct Conn {
    /// Accept order: the lowest is the oldest.
    seq: u64,
    stream: TcpStream,
    state: State,
    deadline: Instant,
}

/// Rate-limited warnings: one line every ten seconds at most, with how many were held back.
#[derive(Default)]
struct Warn {
    last: Option<Instant>,
    held: u64,
}

impl Warn {
    fn warn(&mut self, now: Instant, message: &str) {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            self.held += 1;
            return;
        }
        if self.held > 0 {
            log::warn!(
                "metrics: {message} ({} similar warnings held back)",
                self.held
            );
        } else {
            log::warn!("metrics: {message}");
        }
        self.last = Some(now);
        self.held = 0;
    }
}

/// How long to pause accepting after an accept error (descriptors or memory exhausted), so the
/// loop neither spins on a listener that stays readable nor stops serving.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait in `poll` before the stop flag is looked at again.
const TICK: Duration = Duration::from_millis(200);

/// A listening metrics endpoint.
pub struct Server {
    listener: TcpListener,
    limits: Limits,
    conns: Vec<Conn>,
    seq: u64,
    stats: HttpStats,
    accept_paused_until: Option<Instant>,
    warn: Warn,
}

impl Server {
    /// Bind `addr` (errors here, such as the port in use, are start-up errors).
    pub fn bind(addr: std::net::SocketAddr, limits: Limits) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            limits,
            conns: Vec::new(),
            seq: 0,
            stats: HttpStats::default(),
            accept_paused_until: None,
            warn: Warn::default(),
        })
    }

    /// The bound address (tests bind port 0).
    #[cfg(test)]
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `stop` is set. `answer` gets the method, the path and the server's own
    /// counters, and returns the reply.
    pub fn run<F>(mut self, stop: &AtomicBool, mut answer: F)
    where
        F: FnMut(&str, &str, &HttpStats) -> Reply,
    {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.limits.max_conns + 1);
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.expire(now);
            let accepting = self.accept_paused_until.is_none_or(|t| now >= t);
            if accepting {
                self.accept_paused_until = None;
            }
            fds.clear();
            fds.push(libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: if accepting { libc::POLLIN } else { 0 },
                revents: 0,
            });
            for c in &self.conns {
                let events = match c.state {
                    State::Writing { .. } => libc::POLLOUT,
                    _ => libc::POLLIN,
                };
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
            }
            let wait = self
                .conns
                .iter()
                .map(|c| c.deadline)
                .chain(self.accept_paused_until)
                .min()
                .map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
            if let Err(e) = poll(&mut fds, wait) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.warn.warn(now, &format!("poll failed: {e}"));
                    std::thread::sleep(TICK);
                }
                continue;
            }
            let now = Instant::now();
            let limits = self.limits;
            for (c, fd) in self.conns.iter_mut().zip(fds.iter().skip(1)) {
                if fd.revents != 0 {
                    c.advance(now, &limits, &mut self.stats, &mut answer);
                }
            }
            self.conns.retain(|c| !matches!(c.state, State::Done));
            if fds.first().is_some_and(|l| l.revents != 0) {
                self.accept(now);
            }
        }
    }

    /// Close connections past their deadline.
    fn expire(&mut self, now: Instant) {
        for c in &mut self.conns {
            if c.deadline <= now {
                if matches!(c.state, State::Reading(_) | State::Writing { .. }) {
                    self.stats.timed_out += 1;
                }
                c.state = State::Done;
            }
        }
        self.conns.retain(|c| !matches!(c.state, State::Done));
    }

    /// Take the connections waiting on the listener (at most `max_conns` per round, so
    /// established connections get their turn).
    fn accept(&mut self, now: Instant) {
        for _ in 0..self.limits.max_conns.max(1) {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted =>
                {
                    continue;
                }
                Err(e) => {
                    self.stats.accept_errors += 1;
                    self.warn.warn(
                        now,
                        &format!("cannot accept a connection: {e}; pausing accepts briefly"),
                    );
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Add a new connection, making room at the cap by closing the oldest one that is not
    /// being answered; with every open one being answered, the new one is closed at once.
    fn admit(&mut self, stream: TcpStream, now: Instant) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        self.stats.accepted += 1;
        if self.conns.len() >= self.limits.max_conns {
            let victim = self
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c.state, State::Reading(_) | State::Lingering))
                .min_by_key(|(_, c)| (!matches!(c.state, State::Lingering), c.seq))
                .map(|(i, _)| i);
            match victim {
                Some(i) => {
                    let old = self.conns.swap_remove(i);
                    if matches!(old.state, State::Reading(_)) {
                        self.stats.evicted += 1;
                    }
                }
                None => {
                    self.stats.refused += 1;
                    return;
                }
            }
        }
        self.seq += 1;
        self.conns.push(Conn {
            seq: self.seq,
            stream,
            state: State::Reading(Vec::new()),
            deadline: now + self.limits.timeout,
        });
    }
}

impl Conn {
    /// Do whatever the socket allows now: read the request, write the response, discard.
    fn advance<F>(&mut self, now: Instant, limits: &Limits, stats: &mut HttpStats, answer: &mut F)
    where
        F: FnMut(&str, &str, &HttpStats) -> Reply,
    {
        if matches!(self.state, State::Reading(_)) {
            self.read_request(now, limits, stats, answer);
        }
        if matches!(self.state, State::Writing { .. }) {
            self.write_response(now, limits);
        }
        if matches!(self.state, State::Lingering) {
            self.discard();
        }
    }

    fn read_request<F>(
        &mut self,
        now: Instant,
        limits: &Limits,
        stats: &mut HttpStats,
        answer: &mut F,
    ) where
        F: FnMut(&str, &str, &HttpStats) -> Reply,
    {
        let State::Reading(buf) = &mut self.state else {
            return;
        };
        let mut chunk = [0u8; 2048];
        let reply = loop {
            let room = limits.max_head.saturating_sub(buf.len()).min(chunk.len());
            let Some(into) = chunk.get_mut(..room) else {
                self.state = State::Done;
                return;
            };
            match self.stream.read(into) {
                Ok(0) => {
                    self.state = State::Done;
                    return;
                }
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.state = State::Done;
                    return;
                }
            }
            match parse_head(buf, limits.max_head) {
                Head::Partial => continue,
                Head::Request { method, path } => break answer(method, path, stats),
                Head::Reject(status) => {
                    stats.rejected += 1;
                    let why = match status {
                        431 => "request head too large\n",
                        505 => "only HTTP/1.0 and HTTP/1.1\n",
                        _ => "malformed request\n",
                    };
                    break Reply::text(status, why);
                }
            }
        };
        stats.answered += 1;
        self.state = State::Writing {
            out: encode(&reply),
            sent: 0,
        };
        self.deadline = now + limits.timeout;
    }

    fn write_response(&mut self, now: Instant, limits: &Limits) {
        let State::Writing { out, sent } = &mut self.state else {
            return;
        };
        while let Some(rest) = out.get(*sent..).filter(|r| !r.is_empty()) {
            match self.stream.write(rest) {
                Ok(0) => {
                    self.state = State::Done;
                    return;
                }
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.state = State::Done;
                    return;
                }
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        self.state = State::Lingering;
        self.deadline = now + limits.linger;
    }

    /// Read and drop what the client still sends; done at its end of stream or an error.
    fn discard(&mut self) {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.state = State::Done;
    }
}

/// `poll(2)` on `fds` for at most `wait` (rounded up to whole milliseconds).
fn poll(fds: &mut [libc::pollfd], wait: Duration) -> io::Result<usize> {
    let ms = wait.as_micros().div_ceil(1000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is an exclusively borrowed slice of initialised pollfd structures that lives
    // for the whole call, and `n` is its length (the slice is far smaller than nfds_t::MAX).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(rc).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64;

    fn req(method: &'static str, path: &'static str) -> Head<'static> {
        Head::Request { method, path }
    }

    #[test]
    fn complete_heads_give_method_and_path() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", MAX),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse_head(b"GET /health HTTP/1.0\n\n", MAX),
            req("GET", "/health")
        );
        assert_eq!(
            parse_head(b"GET /metrics?x=1#f HTTP/1.1\r\n\r\n", MAX),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse_head(b"GET http://127.0.0.1:9120/metrics HTTP/1.1\r\n\r\n", MAX),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse_head(b"POST /metrics HTTP/1.1\r\n\r\nbody", MAX),
            req("POST", "/metrics")
        );
    }

    #[test]
    fn heads_in_pieces_are_partial_until_the_empty_line() {
        let full = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        for cut in 0..full.len() {
            let head = parse_head(full.get(..cut).unwrap_or_default(), MAX * 2);
            assert_eq!(head, Head::Partial, "cut at {cut}");
        }
        assert_eq!(parse_head(full, MAX * 2), req("GET", "/metrics"));
    }

    #[test]
    fn malformed_request_lines_are_400_as_soon_as_complete() {
        for bad in [
            &b"GET /metrics\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n",
            b"get /metrics HTTP/1.1\r\n",
            b"GET metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n",
            b"GET /m\x01 HTTP/1.1\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n",
            b"\r\n",
            b"GET ftp://host/metrics HTTP/1.1\r\n",
            b"GET /metrics SPDY/3\r\n",
            b"AVERYVERYLONGMETHODNAME / HTTP/1.1\r\n",
        ] {
            assert_eq!(parse_head(bad, MAX), Head::Reject(400), "{bad:?}");
        }
        assert_eq!(parse_head(b"GET / HTTP/2.0\r\n", MAX), Head::Reject(505));
    }

    #[test]
    fn heads_that_fill_the_cap_without_ending_are_431() {
        let long_line = vec![b'A'; MAX];
        assert_eq!(parse_head(&long_line, MAX), Head::Reject(431));
        assert_eq!(parse_head(&long_line[..MAX - 1], MAX), Head::Partial);
        let mut long_headers = b"GET /metrics HTTP/1.1\r\n".to_vec();
        long_headers.resize(MAX, b'x');
        assert_eq!(parse_head(&long_headers, MAX), Head::Reject(431));
    }

    /// 200,000 heads: well-formed ones from HTTP's own pieces, then mutated (bytes replaced,
    /// inserted, removed, cut). Never a panic, a request's method and path are the text's own,
    /// and a head as long as the cap is never left partial.
    #[test]
    fn random_heads_keep_the_parser_invariants() {
        const METHODS: [&[u8]; 4] = [b"GET", b"POST", b"HEAD", b"get"];
        const TARGETS: [&[u8]; 5] = [b"/metrics", b"/health?x=1", b"/", b"http://h:1/m", b"*"];
        const VERSIONS: [&[u8]; 4] = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTX"];
        const HEADERS: [&[u8]; 4] = [b"", b"Host: x\r\n", b"A: b\nC: d\n", b"X: \xff\r\n"];
        const ENDS: [&[u8]; 3] = [b"\r\n\r\n", b"\n\n", b"\r\n"];
        const NOISE: [u8; 8] = [b' ', b'\r', b'\n', b'/', b'?', 0, 0x7f, 0xc3];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut seen = [0usize; 5];
        for _ in 0..200_000 {
            let mut buf = Vec::new();
            buf.extend_from_slice(METHODS[next(4)]);
            buf.push(b' ');
            buf.extend_from_slice(TARGETS[next(5)]);
            buf.push(b' ');
            buf.extend_from_slice(VERSIONS[next(4)]);
            let ends = ENDS[next(3)];
            if ends != b"\n\n" {
                buf.extend_from_slice(b"\r\n");
                buf.extend_from_slice(HEADERS[next(4)]);
                buf.extend_from_slice(b"\r\n");
            } else {
                buf.extend_from_slice(ends);
            }
            for _ in 0..next(3) {
                let at = next(buf.len() + 1);
                match next(4) {
                    0 if at < buf.len() => buf[at] = NOISE[next(8)],
                    1 => buf.insert(at, NOISE[next(8)]),
                    2 if at < buf.len() => {
                        buf.remove(at);
                    }
                    _ => buf.truncate(at),
                }
            }
            let max = if next(4) == 0 {
                next(buf.len() + 1).max(1)
            } else {
                8192
            };
            buf.truncate(max);
            let text = String::from_utf8_lossy(&buf).into_owned();
            let head = parse_head(&buf, max);
            seen[match head {
                Head::Request { .. } => 0,
                Head::Partial => 1,
                Head::Reject(400) => 2,
                Head::Reject(431) => 3,
                Head::Reject(_) => 4,
            }] += 1;
            match head {
                Head::Request { method, path } => {
                    assert!(text.starts_with(&format!("{method} ")), "{text:?}");
                    assert!(path.starts_with('/') && text.contains(path), "{text:?}");
                }
                Head::Partial => assert!(buf.len() < max, "{text:?} left partial at the cap"),
                Head::Reject(status) => assert!([400, 431, 505].contains(&status), "{status}"),
            }
        }
        // Every outcome is reached: requests, partial heads, 400, 431, 505.
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
    }

    #[test]
    fn replies_carry_length_and_close() {
        let r = encode(&Reply::text(200, "hi\n"));
        assert_eq!(
            String::from_utf8_lossy(&r),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\
             Connection: close\r\n\r\nhi\n"
        );
        let mut m = Reply::text(405, "");
        m.allow = Some("GET");
        let r = String::from_utf8_lossy(&encode(&m)).into_owned();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("\r\nAllow: GET\r\n"), "{r}");
    }

    /// A server on loopback in a thread, with a handler that says which path it got.
    fn server(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        std::thread::JoinHandle<()>,
        &'static AtomicBool,
    ) {
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let s = Server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), limits)
            .expect("bind loopback");
        let addr = s.local_addr().expect("address");
        let h = std::thread::spawn(move || {
            s.run(stop, |m, p, st| {
                Reply::text(200, format!("{m} {p} evicted={}\n", st.evicted))
            })
        });
        (addr, h, stop)
    }

    fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(request).expect("send");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[test]
    fn loopback_server_answers_and_survives_idle_connections_past_its_cap() {
        let limits = Limits {
            max_conns: 4,
            ..Limits::default()
        };
        let (addr, h, stop) = server(limits);
        let r = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("GET /metrics evicted=0\n"), "{r}");
        // Twenty idle connections against a cap of four: the oldest make room.
        let idle: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let r = get(addr, b"GET /x HTTP/1.1\r\n\r\n");
        assert!(r.contains("GET /x evicted="), "{r}");
        let evicted: u64 = r
            .rsplit('=')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .expect("a count");
        assert!(evicted >= 16, "{r}");
        let r = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        drop(idle);
        stop.store(true, Ordering::Relaxed);
        h.join().expect("server thread");
    }

    #[test]
    fn loopback_server_answers_a_huge_request_line_with_431() {
        let (addr, h, stop) = server(Limits::default());
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut writer = c.try_clone().expect("clone");
        let sender = std::thread::spawn(move || {
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = 0usize;
            let _ = writer.write_all(b"GET /");
            while sent < 4 << 20 {
                match writer.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            sent
        });
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        stop.store(true, Ordering::Relaxed);
        h.join().expect("server thread");
    }
}
