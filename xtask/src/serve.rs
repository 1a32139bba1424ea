//! A tiny static HTTP/1.1 file server for `cargo xtask serve` (classroom mirrors) and loopback tests.
//!
//! It may face a whole classroom network, so every resource a client can make it hold is bounded: the
//! request head (line and headers) by size and by one deadline, the body by a write timeout, memory
//! per connection by streaming files in fixed chunks, and connections by a cap beyond which new ones wait
//! in the kernel's accept queue. Paths whose canonical form (symlinks resolved) leaves the root are 404.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Longest request line (method, target, version) accepted; longer gets 414. Mirror paths are < 200 bytes.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Most bytes of headers after the request line accepted; more gets 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Requests remembered for `Server::requests`, oldest forgotten first, so a long-running server's memory
/// does not grow with the number of requests it has answered.
const REQUEST_LOG_CAP: usize = 256;

/// What one client may make the server hold.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections served at once. Further connections are not refused but wait, unaccepted, in the
    /// kernel's listen queue until one finishes: a download client sees a delay rather than an error.
    max_connections: usize,
    /// The whole request head must arrive within this, however slowly it trickles in; else 408.
    head_timeout: Duration,
    /// Each write of the response must make progress within this, so a client that stops reading
    /// gives its connection back.
    write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_connections: 64, head_timeout: Duration::from_secs(10), write_timeout: Duration::from_secs(30) }
    }
}

/// A running server; it stops accepting connections when dropped.
pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    /// Canonical (symlink-free) root: every served file's canonical path must lie under it.
    root: PathBuf,
    limits: Limits,
    /// The last `REQUEST_LOG_CAP` requests as `"<METHOD> <path>"`, plus `" range=<value>"` when a Range
    /// header was sent.
    requests: Mutex<VecDeque<String>>,
    /// One-shot cuts: a request whose path ends with the suffix gets only this many body bytes.
    cuts: Mutex<Vec<(String, u64)>>,
    /// Connections being served; the accept loop waits on `slot_freed` while it is at the cap.
    active: Mutex<usize>,
    slot_freed: Condvar,
    stop: AtomicBool,
}

impl Server {
    /// `http://<addr>` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The requests received so far (at most the last `REQUEST_LOG_CAP`), oldest first.
    #[cfg(test)]
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().iter().cloned().collect()
    }

    /// The next request whose path ends with `path_suffix` announces the full Content-Length but
    /// the connection closes after `bytes` body bytes, as a flaky network would do. Happens once.
    #[cfg(test)]
    pub fn cut_after(&self, path_suffix: &str, bytes: u64) {
        self.state.cuts.lock().unwrap().push((path_suffix.to_string(), bytes));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop whether it waits for a free slot or in accept(), so it sees the flag and returns.
        drop(self.state.active.lock().unwrap_or_else(|e| e.into_inner()));
        self.state.slot_freed.notify_all();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Serves `root` on `bind` (e.g. `127.0.0.1:0` for a free port) from a background thread.
pub fn spawn(root: PathBuf, bind: &str) -> Result<Server> {
    spawn_with_limits(root, bind, Limits::default())
}

fn spawn_with_limits(root: PathBuf, bind: &str, limits: Limits) -> Result<Server> {
    let (listener, state) = listen(root, bind, limits)?;
    let addr = listener.local_addr().context("local address of the listening socket")?;
    let accept_state = Arc::clone(&state);
    std::thread::spawn(move || accept_loop(listener, accept_state));
    Ok(Server { addr, state })
}

/// Serves `root` on `bind` until the process is killed (`cargo xtask serve`).
pub fn serve_forever(root: PathBuf, bind: &str) -> Result<()> {
    let (listener, state) = listen(root, bind, Limits::default())?;
    let addr = listener.local_addr().context("local address of the listening socket")?;
    if let Some(warning) = exposure_warning(&state.root, addr) {
        eprintln!("{warning}");
    }
    println!("serving {} on http://{addr}/", state.root.display());
    accept_loop(listener, state);
    Ok(())
}

fn listen(root: PathBuf, bind: &str, limits: Limits) -> Result<(TcpListener, Arc<State>)> {
    let root =
        root.canonicalize().with_context(|| format!("serve {}: the directory must exist (create it or fix the path)", root.display()))?;
    let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}: pick a free address or port"))?;
    let state = Arc::new(State {
        root,
        limits,
        requests: Mutex::new(VecDeque::with_capacity(REQUEST_LOG_CAP)),
        cuts: Mutex::new(Vec::new()),
        active: Mutex::new(0),
        slot_freed: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    Ok((listener, state))
}

/// A warning for an address other machines can reach: the server has no authentication.
fn exposure_warning(root: &Path, addr: SocketAddr) -> Option<String> {
    if addr.ip().to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "warning: serving {} on {addr}, which is not a loopback address: anyone who can reach this host can read every \
         file under it; pass --bind 127.0.0.1:PORT to keep it local",
        root.display()
    ))
}

/// Frees the connection's slot when the connection's thread ends, however it ends.
struct Slot(Arc<State>);

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.active.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.slot_freed.notify_one();
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        {
            // Take a slot before accepting, so connections beyond the cap wait in the listen queue and
            // cost this process nothing.
            let mut active = state.active.lock().unwrap_or_else(|e| e.into_inner());
            while *active >= state.limits.max_connections && !state.stop.load(Ordering::SeqCst) {
                active = state.slot_freed.wait(active).unwrap_or_else(|e| e.into_inner());
            }
            *active += 1;
        }
        let slot = Slot(Arc::clone(&state));
        let accepted = listener.accept();
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            // Typically out of file descriptors: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let state = Arc::clone(&state);
        // A failed spawn drops the closure, and with it the stream and the slot.
        let _ = std::thread::Builder::new().name("serve".into()).spawn(move || {
            let _slot = slot;
            // A client that goes away mid-response is not the server's problem.
            let _ = handle(stream, &state);
        });
    }
}

struct Request {
    method: String,
    path: String,
    range: Option<String>,
}

/// How reading a request head ended.
enum Head {
    Request(Request),
    /// The client closed the connection before sending a whole head.
    Closed,
    Malformed,
    LineTooLong,
    HeadersTooLarge,
    TimedOut,
}

/// Reads the request line and headers, never holding more than the caps (plus one read) in memory and
/// never waiting past `deadline` in total.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Head> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        match buf.iter().position(|&b| b == b'\n') {
            None if buf.len() > MAX_REQUEST_LINE => return Ok(Head::LineTooLong),
            None => {}
            Some(eol) if eol > MAX_REQUEST_LINE => return Ok(Head::LineTooLong),
            Some(eol) => {
                let headers = &buf[eol + 1..];
                // One read can bring a whole oversized head at once: measure up to its end, not just the buffer.
                match blank_line(headers) {
                    Some(end) if end > MAX_HEADER_BYTES => return Ok(Head::HeadersTooLarge),
                    Some(end) => return Ok(parse_head(&buf[..eol], &headers[..end])),
                    None if headers.len() > MAX_HEADER_BYTES => return Ok(Head::HeadersTooLarge),
                    None => {}
                }
            }
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return Ok(Head::TimedOut);
        };
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Head::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(Head::TimedOut),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where the blank line that ends the headers starts in `headers` (the bytes after the request line).
fn blank_line(headers: &[u8]) -> Option<usize> {
    if headers.starts_with(b"\r\n") || headers.starts_with(b"\n") {
        return Some(0);
    }
    let crlf = headers.windows(3).position(|w| w == b"\n\r\n");
    let lf = headers.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min().map(|i| i + 1)
}

fn parse_head(line: &[u8], headers: &[u8]) -> Head {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Head::Malformed;
    };
    let mut range = None;
    for header in String::from_utf8_lossy(headers).lines() {
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    // WKD appends `?l=<local part>`; a static server ignores query strings.
    let path = target.split(['?', '#']).next().unwrap_or("").to_string();
    Head::Request(Request { method: method.to_string(), path, range })
}

fn handle(mut stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_write_timeout(Some(state.limits.write_timeout))?;
    let req = match read_head(&mut stream, Instant::now() + state.limits.head_timeout)? {
        Head::Request(req) => req,
        Head::Closed => return Ok(()),
        Head::Malformed => return refuse(stream, "400 Bad Request"),
        Head::LineTooLong => return refuse(stream, "414 URI Too Long"),
        Head::HeadersTooLarge => return refuse(stream, "431 Request Header Fields Too Large"),
        Head::TimedOut => return refuse(stream, "408 Request Timeout"),
    };
    let mut log = format!("{} {}", req.method, req.path);
    if let Some(range) = &req.range {
        log.push_str(&format!(" range={range}"));
    }
    {
        let mut requests = state.requests.lock().unwrap_or_else(|e| e.into_inner());
        if requests.len() == REQUEST_LOG_CAP {
            requests.pop_front();
        }
        requests.push_back(log);
    }

    if req.method != "GET" && req.method != "HEAD" {
        return respond_empty(&mut stream, "405 Method Not Allowed", &[]);
    }
    let Some(file_path) = resolve(&state.root, &req.path) else {
        return respond_empty(&mut stream, "400 Bad Request", &[]);
    };
    let Some(file) = open_under_root(&state.root, &file_path) else {
        return respond_empty(&mut stream, "404 Not Found", &[]);
    };
    let len = file.metadata()?.len();

    let start = match req.range.as_deref().map(parse_range_start) {
        None => None,
        Some(Some(start)) if start < len => Some(start),
        Some(_) => {
            let content_range = format!("Content-Range: bytes */{len}");
            return respond_empty(&mut stream, "416 Range Not Satisfiable", &[&content_range]);
        }
    };
    let (status, body_len, extra) = match start {
        Some(start) => ("206 Partial Content", len - start, format!("Content-Range: bytes {start}-{}/{len}\r\n", len - 1)),
        None => ("200 OK", len, String::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {body_len}\r\n{extra}Accept-Ranges: bytes\r\n\
         Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return Ok(());
    }

    let mut file = file;
    if let Some(start) = start {
        io::Seek::seek(&mut file, io::SeekFrom::Start(start))?;
    }
    let cut = take_cut(state, &req.path);
    let limit = cut.map_or(body_len, |n| n.min(body_len));
    // io::copy streams through a fixed buffer: memory per connection does not depend on the file size.
    io::copy(&mut file.take(limit), &mut stream)?;
    stream.flush()?;
    if cut.is_some() {
        // Hard close: the client sees a body shorter than Content-Length.
        let _ = stream.shutdown(Shutdown::Both);
    }
    Ok(())
}

fn take_cut(state: &State, path: &str) -> Option<u64> {
    let mut cuts = state.cuts.lock().unwrap_or_else(|e| e.into_inner());
    let i = cuts.iter().position(|(suffix, _)| path.ends_with(suffix.as_str()))?;
    Some(cuts.remove(i).1)
}

/// Maps a URL path to a path under `root`; `None` for anything that could leave it lexically.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(url_path)?;
    let rel = Path::new(decoded.trim_start_matches('/'));
    let mut out = root.to_path_buf();
    for component in rel.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Opens `path` if, with every symlink resolved, it is a regular file under the canonical `root`. The type
/// is checked before opening so a FIFO under the root cannot block the connection's thread in open().
fn open_under_root(root: &Path, path: &Path) -> Option<File> {
    let canonical = path.canonicalize().ok()?;
    if !canonical.starts_with(root) || !std::fs::metadata(&canonical).ok()?.is_file() {
        return None;
    }
    File::open(&canonical).ok()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `bytes=N-` or `bytes=N-M` (the end is ignored: the rest of the file is sent).
fn parse_range_start(value: &str) -> Option<u64> {
    let spec = value.strip_prefix("bytes=")?;
    let (start, _end) = spec.split_once('-')?;
    start.trim().parse().ok()
}

fn respond_empty(stream: &mut TcpStream, status: &str, headers: &[&str]) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

/// Answers a request that was not read to its end, then drains (briefly, and a bounded amount of) what the
/// client is still sending: closing with unread input makes the kernel send a reset, which can destroy the
/// answer before the client reads it.
fn refuse(mut stream: TcpStream, status: &str) -> io::Result<()> {
    respond_empty(&mut stream, status, &[])?;
    stream.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut chunk = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends a raw request and returns the whole response (headers and body).
    fn raw(server: &Server, request: &str) -> String {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn fixture() -> (PathBuf, Server) {
        let root = crate::testutil::scratch("serve");
        std::fs::create_dir_all(root.join("pub")).unwrap();
        std::fs::write(root.join("pub/hello.txt"), b"hello world").unwrap();
        std::fs::write(root.join("secret"), b"outside pub").unwrap();
        let server = spawn(root.clone(), "127.0.0.1:0").unwrap();
        (root, server)
    }

    #[test]
    fn serves_files_ranges_and_errors() {
        let (root, server) = fixture();
        let ok = raw(&server, "GET /pub/hello.txt?l=joe HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 11\r\n"));
        assert!(ok.ends_with("\r\n\r\nhello world"));

        let part = raw(&server, "GET /pub/hello.txt HTTP/1.1\r\nRange: bytes=6-\r\n\r\n");
        assert!(part.starts_with("HTTP/1.1 206 Partial Content\r\n"), "{part}");
        assert!(part.contains("Content-Range: bytes 6-10/11\r\n"));
        assert!(part.ends_with("\r\n\r\nworld"));

        let beyond = raw(&server, "GET /pub/hello.txt HTTP/1.1\r\nRange: bytes=11-\r\n\r\n");
        assert!(beyond.starts_with("HTTP/1.1 416 "), "{beyond}");
        assert!(beyond.contains("Content-Range: bytes */11"));

        let head = raw(&server, "HEAD /pub/hello.txt HTTP/1.1\r\n\r\n");
        assert!(head.contains("Content-Length: 11\r\n") && head.ends_with("\r\n\r\n"), "{head}");

        assert!(raw(&server, "GET /pub/missing HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(raw(&server, "GET /pub/ HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let escape = raw(&server, "GET /pub/../secret HTTP/1.1\r\n\r\n");
        assert!(escape.starts_with("HTTP/1.1 400 "), "{escape}");
        let encoded = raw(&server, "GET /pub/%2e%2e/secret HTTP/1.1\r\n\r\n");
        assert!(encoded.starts_with("HTTP/1.1 400 "), "{encoded}");

        let log = server.requests();
        assert_eq!(log[0], "GET /pub/hello.txt");
        assert_eq!(log[1], "GET /pub/hello.txt range=bytes=6-");
        assert_eq!(log[3], "HEAD /pub/hello.txt");
        drop(server);
        std::fs::remove_dir_all(root).unwrap();
    }

    /// Reads from `stream` until EOF, an error or `within` has passed; returns what arrived.
    fn read_for(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        let mut chunk = [0u8; 65536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            stream.set_read_timeout(Some(left)).unwrap();
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
        out
    }

    #[test]
    fn a_too_long_request_line_gets_414_and_too_many_header_bytes_get_431() {
        let (root, server) = fixture();
        let near = format!("GET /pub/{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE - 30));
        assert!(raw(&server, &near).starts_with("HTTP/1.1 404 "), "a long line under the cap is still served");
        // Far more than the cap, sent before reading: the server must answer without reading it all.
        let long = format!("GET /pub/{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE * 8));
        let answer = raw(&server, &long);
        assert!(answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{answer:.80}");

        let header = format!("X-Filler: {}\r\n", "b".repeat(100));
        let few = format!("GET /pub/hello.txt HTTP/1.1\r\n{}\r\n", header.repeat(20));
        assert!(raw(&server, &few).ends_with("\r\n\r\nhello world"));
        let many = format!("GET /pub/hello.txt HTTP/1.1\r\n{}\r\n", header.repeat(MAX_HEADER_BYTES / 100));
        let answer = raw(&server, &many);
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer:.80}");
        // Neither refused request reached the log.
        assert_eq!(server.requests().len(), 2);
        drop(server);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn symlinks_are_followed_only_while_they_stay_under_the_root() {
        let base = crate::testutil::scratch("serve-symlink");
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(root.join("pub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("pub/hello.txt"), b"hello world").unwrap();
        std::fs::write(outside.join("secret"), b"outside the root").unwrap();
        std::os::unix::fs::symlink("../../outside/secret", root.join("pub/relative")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("pub/absolute")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("pub/dir")).unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("pub/LATEST")).unwrap();
        // The root itself may be reached through a symlink: it is canonicalized once at start.
        std::os::unix::fs::symlink(&root, base.join("root-link")).unwrap();
        let server = spawn(base.join("root-link"), "127.0.0.1:0").unwrap();
        for path in ["/pub/relative", "/pub/absolute", "/pub/dir/secret"] {
            let answer = raw(&server, &format!("GET {path} HTTP/1.1\r\n\r\n"));
            assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
            assert!(!answer.contains("outside the root"), "{path}: {answer}");
        }
        let inside = raw(&server, "GET /pub/LATEST HTTP/1.1\r\n\r\n");
        assert!(inside.ends_with("\r\n\r\nhello world"), "{inside}");
        drop(server);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn connections_beyond_the_cap_wait_until_a_slot_frees() {
        let (root, server) = fixture();
        let cap = Limits::default().max_connections;
        assert_eq!(cap, 64);
        let mut idle: Vec<TcpStream> = (0..cap).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
        let mut extra = TcpStream::connect(server.addr).unwrap();
        extra.write_all(b"GET /pub/hello.txt HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_for(&mut extra, Duration::from_millis(500)), b"", "served although {cap} connections were open");
        drop(idle.pop());
        let answer = String::from_utf8(read_for(&mut extra, Duration::from_secs(10))).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("hello world"), "{answer}");
        drop(idle);
        drop(server);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_head_trickling_in_is_cut_off_at_the_deadline() {
        let root = crate::testutil::scratch("serve-slow-head");
        let limits = Limits { head_timeout: Duration::from_millis(300), ..Limits::default() };
        let server = spawn_with_limits(root.clone(), "127.0.0.1:0", limits).unwrap();
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.write_all(b"GET /x HTTP/1.1\r\n").unwrap();
        // One header byte every 50 ms: each read is quick, but the head never ends.
        let mut writer = stream.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..60 {
                if writer.write_all(b"X").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let answer = String::from_utf8(read_for(&mut stream, Duration::from_secs(3))).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        drop(stream);
        trickle.join().unwrap();
        drop(server);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
        let root = crate::testutil::scratch("serve-stalled-reader");
        // More than loopback socket buffers can hold, so the server's writes must block.
        let size = 48 << 20;
        std::fs::write(root.join("big"), vec![7u8; size]).unwrap();
        let limits = Limits { write_timeout: Duration::from_millis(300), max_connections: 1, ..Limits::default() };
        let server = spawn_with_limits(root.clone(), "127.0.0.1:0", limits).unwrap();
        let mut stalled = TcpStream::connect(server.addr).unwrap();
        stalled.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_secs(2));
        // The only slot was given back, so another client is served while the first still reads nothing.
        let mut next = TcpStream::connect(server.addr).unwrap();
        next.write_all(b"HEAD /big HTTP/1.1\r\n\r\n").unwrap();
        let answer = String::from_utf8(read_for(&mut next, Duration::from_secs(5))).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let got = read_for(&mut stalled, Duration::from_secs(10)).len();
        assert!(got < size, "the stalled client still got all {got} bytes");
        drop(server);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_request_log_keeps_only_the_latest_requests() {
        let (root, server) = fixture();
        let total = REQUEST_LOG_CAP + 40;
        for i in 0..total {
            raw(&server, &format!("GET /r{i} HTTP/1.1\r\n\r\n"));
        }
        let log = server.requests();
        assert_eq!(log.len(), REQUEST_LOG_CAP);
        assert_eq!(log[0], "GET /r40");
        assert_eq!(log[REQUEST_LOG_CAP - 1], format!("GET /r{}", total - 1));
        drop(server);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn warns_only_when_bound_beyond_loopback() {
        let root = Path::new("/srv/mirror");
        for local in ["127.0.0.1:8000", "127.8.0.1:8000", "[::1]:8000", "[::ffff:127.0.0.1]:8000"] {
            assert_eq!(exposure_warning(root, local.parse().unwrap()), None, "{local}");
        }
        for open in ["0.0.0.0:8000", "192.168.1.10:8000", "[::]:8000"] {
            let warning = exposure_warning(root, open.parse().unwrap()).unwrap_or_else(|| panic!("{open}: no warning"));
            assert!(warning.contains("/srv/mirror") && warning.contains("--bind 127.0.0.1"), "{warning}");
        }
    }

    #[test]
    fn cut_after_truncates_one_response() {
        let (root, server) = fixture();
        server.cut_after("hello.txt", 4);
        let cut = raw(&server, "GET /pub/hello.txt HTTP/1.1\r\n\r\n");
        assert!(cut.contains("Content-Length: 11\r\n"));
        assert!(cut.ends_with("\r\n\r\nhell"), "{cut}");
        let full = raw(&server, "GET /pub/hello.txt HTTP/1.1\r\n\r\n");
        assert!(full.ends_with("\r\n\r\nhello world"), "{full}");
        drop(server);
        std::fs::remove_dir_all(root).unwrap();
    }
}
