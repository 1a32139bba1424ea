//! A tiny static HTTP/1.1 file server for `cargo xtask mirror --serve` and loopback tests.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

/// A running server; it stops accepting connections when dropped.
pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    root: PathBuf,
    /// Every request as `"<METHOD> <path>"`, plus `" range=<value>"` when a Range header was sent.
    requests: Mutex<Vec<String>>,
    /// One-shot cuts: a request whose path ends with the suffix gets only this many body bytes.
    cuts: Mutex<Vec<(String, u64)>>,
    stop: AtomicBool,
}

impl Server {
    /// `http://<addr>` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The requests received so far, oldest first.
    #[cfg(test)]
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The next request whose path ends with `path_suffix` announces the full Content-Length but
    /// the connection closes after `bytes` body bytes, as a flaky network would do. Happens once.
    #[cfg(test)]
    pub fn cut_after(&self, path_suffix: &str, bytes: u64) {
        self.state
            .cuts
            .lock()
            .unwrap()
            .push((path_suffix.to_string(), bytes));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Serves `root` on `bind` (e.g. `127.0.0.1:0` for a free port) from a background thread.
pub fn spawn(root: PathBuf, bind: &str) -> Result<Server> {
    let listener = TcpListener::bind(bind)
        .with_context(|| format!("bind {bind}: pick a free address or port"))?;
    let addr = listener
        .local_addr()
        .context("local address of the listening socket")?;
    let state = Arc::new(State {
        root,
        requests: Mutex::new(Vec::new()),
        cuts: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let accept_state = Arc::clone(&state);
    std::thread::spawn(move || accept_loop(listener, accept_state));
    Ok(Server { addr, state })
}

/// Serves `root` on `bind` until the process is killed (the CLI's `mirror --serve`).
pub fn serve_forever(root: PathBuf, bind: &str) -> Result<()> {
    let listener = TcpListener::bind(bind)
        .with_context(|| format!("bind {bind}: pick a free address or port"))?;
    let addr = listener
        .local_addr()
        .context("local address of the listening socket")?;
    println!("serving {} on http://{addr}/", root.display());
    let state = Arc::new(State {
        root,
        requests: Mutex::new(Vec::new()),
        cuts: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    accept_loop(listener, state);
    Ok(())
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
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

fn read_request(stream: &TcpStream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    // WKD appends `?l=<local part>`; a static server ignores query strings.
    let path = target.split(['?', '#']).next().unwrap_or("").to_string();
    Ok(Some(Request {
        method,
        path,
        range,
    }))
}

fn handle(mut stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    let mut log = format!("{} {}", req.method, req.path);
    if let Some(range) = &req.range {
        log.push_str(&format!(" range={range}"));
    }
    state.requests.lock().unwrap().push(log);

    if req.method != "GET" && req.method != "HEAD" {
        return respond_empty(&mut stream, "405 Method Not Allowed", &[]);
    }
    let Some(file_path) = resolve(&state.root, &req.path) else {
        return respond_empty(&mut stream, "400 Bad Request", &[]);
    };
    let file = match File::open(&file_path) {
        Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => f,
        _ => return respond_empty(&mut stream, "404 Not Found", &[]),
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
        Some(start) => (
            "206 Partial Content",
            len - start,
            format!("Content-Range: bytes {start}-{}/{len}\r\n", len - 1),
        ),
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
    io::copy(&mut file.take(limit), &mut stream)?;
    stream.flush()?;
    if cut.is_some() {
        // Hard close: the client sees a body shorter than Content-Length.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

fn take_cut(state: &State, path: &str) -> Option<u64> {
    let mut cuts = state.cuts.lock().unwrap();
    let i = cuts
        .iter()
        .position(|(suffix, _)| path.ends_with(suffix.as_str()))?;
    Some(cuts.remove(i).1)
}

/// Maps a URL path to a file under `root`; `None` for anything that could leave it.
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
        let ok = raw(
            &server,
            "GET /pub/hello.txt?l=joe HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 11\r\n"));
        assert!(ok.ends_with("\r\n\r\nhello world"));

        let part = raw(
            &server,
            "GET /pub/hello.txt HTTP/1.1\r\nRange: bytes=6-\r\n\r\n",
        );
        assert!(
            part.starts_with("HTTP/1.1 206 Partial Content\r\n"),
            "{part}"
        );
        assert!(part.contains("Content-Range: bytes 6-10/11\r\n"));
        assert!(part.ends_with("\r\n\r\nworld"));

        let beyond = raw(
            &server,
            "GET /pub/hello.txt HTTP/1.1\r\nRange: bytes=11-\r\n\r\n",
        );
        assert!(beyond.starts_with("HTTP/1.1 416 "), "{beyond}");
        assert!(beyond.contains("Content-Range: bytes */11"));

        let head = raw(&server, "HEAD /pub/hello.txt HTTP/1.1\r\n\r\n");
        assert!(
            head.contains("Content-Length: 11\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );

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
