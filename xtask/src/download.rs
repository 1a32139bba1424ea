//! Fetching over http(s) and file:// URLs: small files and WKD keys into memory, tarballs into a resumable, content-addressed cache.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use sha2::Digest as _;

use crate::hash;
use crate::layout::Layout;
use crate::progress;

/// Tries per request; the waits between them double from `FIRST_BACKOFF` (0.5 s, 1 s, 2 s).
const TRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const BUF_SIZE: usize = 256 * 1024;

/// The shared HTTP client. The blocking client's `timeout` bounds each body read separately when
/// the response is read through `Read`, so it acts as a read timeout, not a cap on a big download.
fn client() -> Result<&'static Client> {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = Client::builder()
        .user_agent(concat!("kernel-lab/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::custom(same_origin_redirect))
        .build()
        .context("build the HTTP client")?;
    Ok(CLIENT.get_or_init(|| client))
}

/// Follows a redirect only to the scheme, host and port of the URL first asked for: with a mirror
/// set, nothing else is contacted (README), and kernel.org's own files never leave their host.
fn same_origin_redirect(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    let Some(first) = attempt.previous().first() else {
        return attempt.follow();
    };
    if attempt.previous().len() > 10 {
        let err = format!("more than 10 redirects from {first}: refusing them (a redirect loop?)");
        return attempt.error(err);
    }
    if attempt.url().origin() != first.origin() {
        let err = format!(
            "refusing a redirect from {first} to {}: it leads to another host, scheme or port; use a URL that serves the file directly",
            attempt.url()
        );
        return attempt.error(err);
    }
    attempt.follow()
}

/// Why one attempt failed: worth another try, or not.
enum Failure {
    Transient(anyhow::Error),
    Fatal(anyhow::Error),
}

/// Connection failures, timeouts and cut bodies are worth another try; bad URLs are not.
fn send_failure(url: &str, err: reqwest::Error) -> Failure {
    let transient = err.is_connect() || err.is_timeout() || err.is_body() || err.is_decode() || err.is_request();
    let err = anyhow!(err).context(format!("GET {url}"));
    if transient {
        Failure::Transient(err)
    } else {
        Failure::Fatal(err)
    }
}

/// Runs `attempt` up to `TRIES` times with exponential backoff while it fails transiently.
fn with_retries<T>(url: &str, mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T> {
    let mut wait = FIRST_BACKOFF;
    for n in 1..=TRIES {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(err)) => return Err(err),
            Err(Failure::Transient(err)) if n == TRIES => {
                return Err(err.context(format!("GET {url}: gave up after {TRIES} tries; check the network or the mirror")))
            }
            Err(Failure::Transient(err)) => {
                eprintln!("warning: {err:#}; retrying in {:.1} s", wait.as_secs_f64());
                std::thread::sleep(wait);
                wait *= 2;
            }
        }
    }
    unreachable!("the last try returns")
}

/// Classifies a status that is neither 200 nor 206.
fn status_failure(url: &str, status: StatusCode) -> Failure {
    let err = anyhow!("GET {url}: {status}");
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS {
        Failure::Transient(err)
    } else {
        Failure::Fatal(err)
    }
}

/// The local path of a `file://` URL, percent-decoded (`lab fetch` resolves index entries into
/// encoded URLs; mirror URLs joined by hand are plain, and parse the same way).
/// `file://host/x` (another host) is not a local path: `None`, so the caller reports the URL.
fn file_url_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("file://")?;
    match reqwest::Url::parse(url) {
        Ok(u) => u.to_file_path().ok(),
        Err(_) => rest.starts_with('/').then(|| PathBuf::from(rest)),
    }
}

/// Bounds on a small download, which a hostile or broken server could otherwise make endless.
pub struct SmallLimits {
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Time for the whole fetch, retries included.
    pub deadline: Duration,
}

/// releases.json is ~20 KiB, a sha256sums.asc a few hundred KiB, a key a few KiB.
pub const SMALL: SmallLimits = SmallLimits { max_bytes: 8 << 20, deadline: Duration::from_secs(120) };

/// Fetches a small file (releases.json, sha256sums.asc, a key) fully into memory, within `SMALL`.
pub fn get_small(url: &str) -> Result<Vec<u8>> {
    get_small_within(url, &SMALL)
}

/// Fetches a small file fully into memory, refusing a body bigger than `limits.max_bytes` and
/// giving up when the whole fetch (retries included) takes longer than `limits.deadline`.
pub fn get_small_within(url: &str, limits: &SmallLimits) -> Result<Vec<u8>> {
    let too_big = |size: String| {
        anyhow!("GET {url}: {size} bytes: refusing it (a small file is at most {} bytes); check the mirror", limits.max_bytes)
    };
    if let Some(path) = file_url_path(url) {
        // Opened first, then checked: a FIFO or /dev/zero (len 0) must not be read unbounded.
        let file = File::open(&path).with_context(|| format!("read {url}: check the path"))?;
        let meta = file.metadata().with_context(|| format!("read {url}"))?;
        if !meta.is_file() {
            bail!("read {url}: not a regular file; refusing it");
        }
        if meta.len() > limits.max_bytes {
            return Err(too_big(format!("the file holds {}, larger than {}", meta.len(), limits.max_bytes)));
        }
        let mut bytes = Vec::new();
        file.take(limits.max_bytes + 1).read_to_end(&mut bytes).with_context(|| format!("read {url}"))?;
        if bytes.len() as u64 > limits.max_bytes {
            return Err(too_big(format!("more than {}", limits.max_bytes)));
        }
        return Ok(bytes);
    }
    if !url.starts_with("http://") && !url.starts_with("https://") {
        bail!("unsupported URL {url}: use http://, https:// or file://");
    }
    let client = client()?;
    let deadline = std::time::Instant::now() + limits.deadline;
    let late = || {
        Failure::Fatal(anyhow!(
            "GET {url}: no complete answer within {:.1} s: giving up; check the network or the mirror",
            limits.deadline.as_secs_f64()
        ))
    };
    with_retries(url, || {
        let remaining = deadline.checked_duration_since(std::time::Instant::now()).ok_or_else(late)?;
        let mut resp = client.get(url).timeout(remaining).send().map_err(|e| match e.is_timeout() {
            true if std::time::Instant::now() >= deadline => late(),
            _ => send_failure(url, e),
        })?;
        if resp.status() != StatusCode::OK {
            return Err(status_failure(url, resp.status()));
        }
        if let Some(len) = resp.content_length().filter(|&len| len > limits.max_bytes) {
            return Err(Failure::Fatal(too_big(format!("the answer announces {len} bytes, more than {}", limits.max_bytes))));
        }
        let mut body = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if std::time::Instant::now() >= deadline {
                return Err(late());
            }
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) if std::time::Instant::now() >= deadline => return Err(late()),
                Err(e) => return Err(Failure::Transient(anyhow!(e).context(format!("GET {url}: read the body")))),
            };
            if (body.len() + n) as u64 > limits.max_bytes {
                return Err(Failure::Fatal(too_big(format!("the body is larger than {}", limits.max_bytes))));
            }
            body.extend_from_slice(&buf[..n]);
        }
        Ok(body)
    })
}

/// z-base-32 (RFC 6189 alphabet), as WKD uses for the hashed local part.
fn zbase32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The WKD URL of `email`'s key under `base`: the domain or a mirror root (direct method), or a
/// base already ending in `.well-known/openpgpkey/<domain>` (advanced method, as kernel.org uses).
pub fn wkd_url(base: &str, email: &str) -> String {
    let local = email.rsplit_once('@').map_or(email, |(l, _)| l);
    let hash = zbase32(&<sha1::Sha1 as sha1::Digest>::digest(local.to_lowercase().as_bytes()));
    let escaped: String = local
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let base = base.trim_end_matches('/');
    if base.contains("/.well-known/openpgpkey") {
        format!("{base}/hu/{hash}?l={escaped}")
    } else {
        format!("{base}/.well-known/openpgpkey/hu/{hash}?l={escaped}")
    }
}

/// The key block `email` publishes over WKD under `base`, as served (binary or armored) and not
/// yet trusted: the caller pins it by fingerprint (`verify::key_with_fingerprint`).
pub fn wkd_key(base: &str, email: &str) -> Result<Vec<u8>> {
    get_small(&wkd_url(base, email)).with_context(|| format!("fetch the key of {email} over WKD"))
}

/// An exclusive `flock` on a lock file, held until dropped; the file is removed while still locked.
pub struct PathLock {
    path: PathBuf,
    _file: File,
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Removed before the lock goes with the descriptor: a waiter that locked this file after
        // we unlinked it sees the name gone (see `lock_path`) and starts over.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Locks `path` (creating it) against other kernel-lab runs, waiting for a run that holds it and
/// saying once, as "waiting for another kernel-lab run {doing}", why nothing happens.
pub fn lock_path(path: &Path, doing: &str) -> Result<PathLock> {
    use std::os::unix::fs::MetadataExt;
    let mut told = false;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("open the lock file {}: check permissions of its directory", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told {
                    eprintln!("waiting for another kernel-lab run {doing} (lock {})", path.display());
                    told = true;
                }
                file.lock().with_context(|| format!("lock {}", path.display()))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow!(e).context(format!("lock {}: the filesystem must support flock", path.display())))
            }
        }
        // The run before us removes the file when it is done: a lock on the unlinked file guards nothing.
        let held = file.metadata().with_context(|| format!("stat {}", path.display()))?;
        if std::fs::metadata(path).is_ok_and(|now| now.ino() == held.ino() && now.dev() == held.dev()) {
            return Ok(PathLock { path: path.to_path_buf(), _file: file });
        }
    }
}

/// `<cache>/partial/<sha256>.part`: a download in progress, kept across runs so it can resume.
fn partial_path(layout: &Layout, sha256: &str) -> PathBuf {
    layout.cache.join("partial").join(format!("{sha256}.part"))
}

/// Returns the cached file whose sha256 is `sha256`, downloading it from `url` first if needed.
///
/// A cache hit sends no request. A download resumes from an earlier partial file with a Range
/// request, and the result enters the cache only if its sha256 matches. Runs fetching the same
/// file take turns (a lock next to the partial file), so the second one finds the first one's blob.
pub fn fetch_verified(layout: &Layout, url: &str, sha256: &str, label: &str) -> Result<PathBuf> {
    fetch_verified_within(layout, url, sha256, label, u64::MAX)
}

/// `fetch_verified`, refusing to store more than `max_bytes` (a lab index states a pack's size:
/// a server that sends more is stopped before it fills the cache's disk).
pub fn fetch_verified_within(layout: &Layout, url: &str, sha256: &str, label: &str, max_bytes: u64) -> Result<PathBuf> {
    let sha256 = sha256.to_ascii_lowercase();
    let blob = layout.cache_blob(&sha256);
    if blob.is_file() {
        return Ok(blob);
    }
    let partial = partial_path(layout, &sha256);
    let dir = partial.parent().expect("partial path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}: check permissions of the cache", dir.display()))?;
    let _lock = lock_path(&partial.with_extension("lock"), &format!("downloading {label}"))?;
    if blob.is_file() {
        return Ok(blob);
    }

    let got = download_to(url, &partial, label, max_bytes)?;

    if got != sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "verify sha256 of {label}: expected {sha256}, got {got} (file removed from the cache; \
             the mirror may be corrupt or tampered)"
        );
    }
    let blob_dir = blob.parent().expect("blob path has a parent");
    std::fs::create_dir_all(blob_dir).with_context(|| format!("create {}", blob_dir.display()))?;
    std::fs::rename(&partial, &blob).with_context(|| format!("move {} to {}", partial.display(), blob.display()))?;
    Ok(blob)
}

/// Downloads (resuming) or copies `url` into `partial`, returning the sha256 of the result.
fn download_to(url: &str, partial: &Path, label: &str, max_bytes: u64) -> Result<String> {
    // The length is unknown until the server answers; download_attempt sets it.
    let bar = progress::bytes(label, None);
    let got = if let Some(src) = file_url_path(url) {
        let len = std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0);
        if len > max_bytes {
            bail!("{url} has {len} bytes, more than the {max_bytes} expected: refusing it");
        }
        copy_hashing(&src, partial, &bar).with_context(|| format!("copy {url} into the cache"))?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let client = client()?;
        with_retries(url, || download_attempt(client, url, partial, &bar, max_bytes))?;
        hash::sha256_file(partial)?
    } else {
        bail!("unsupported URL {url}: use http://, https:// or file://");
    };
    bar.finish_and_clear();
    Ok(got)
}

/// Downloads a file whose hash nobody published (unsigned -rc snapshots, with the user's
/// explicit opt-out) into the cache under the sha256 it turned out to have.
pub fn fetch_unverified(layout: &Layout, url: &str, label: &str) -> Result<PathBuf> {
    let partial = partial_path(layout, &hash::sha256_bytes(url.as_bytes()));
    let dir = partial.parent().expect("partial path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let _lock = lock_path(&partial.with_extension("lock"), &format!("downloading {label}"))?;
    let got = download_to(url, &partial, label, u64::MAX)?;
    let blob = layout.cache_blob(&got);
    std::fs::create_dir_all(blob.parent().expect("blob path has a parent"))?;
    std::fs::rename(&partial, &blob).with_context(|| format!("move {} to {}", partial.display(), blob.display()))?;
    Ok(blob)
}

/// `O_NOFOLLOW`: a symlink planted in the cache (which SECURITY.md counts as hostile) must not
/// turn a download into a write to the file it points at.
const O_NOFOLLOW: i32 = 0o400000;

/// Creates or truncates `path` for writing, refusing to follow a symlink there.
fn create_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create(true).truncate(true).custom_flags(O_NOFOLLOW).open(path)
}

/// Copies a local file to `dst`, returning the sha256 of what was copied.
fn copy_hashing(src: &Path, dst: &Path, bar: &ProgressBar) -> Result<String> {
    let mut input = File::open(src).with_context(|| format!("open {}: check the path", src.display()))?;
    bar.set_length(input.metadata().map(|m| m.len()).unwrap_or(0));
    let mut output = create_nofollow(dst).with_context(|| format!("create {}", dst.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = input.read(&mut buf).with_context(|| format!("read {}", src.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).with_context(|| format!("write {}", dst.display()))?;
        bar.inc(n as u64);
    }
    Ok(hash::hex(&hasher.finalize()))
}

/// `bytes N-M/T` -> (N, T); `bytes */T` -> (None, T).
fn parse_content_range(value: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok();
    let start = if range.trim() == "*" { None } else { Some(range.split_once('-')?.0.trim().parse().ok()?) };
    Some((start, total))
}

/// One GET of `url` into `partial`, appending to what an earlier attempt or run left there.
fn download_attempt(client: &Client, url: &str, partial: &Path, bar: &ProgressBar, max_bytes: u64) -> Result<(), Failure> {
    let fatal = |e: std::io::Error, what: &str| Failure::Fatal(anyhow!(e).context(format!("{what} {}", partial.display())));
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = request.send().map_err(|e| send_failure(url, e))?;
    let content_range = resp.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(parse_content_range);

    let mut file = match resp.status() {
        StatusCode::PARTIAL_CONTENT if have > 0 && content_range.and_then(|r| r.0) == Some(have) => {
            OpenOptions::new().append(true).custom_flags(O_NOFOLLOW).open(partial).map_err(|e| fatal(e, "open"))?
        }
        StatusCode::PARTIAL_CONTENT => {
            // A range we did not ask for: drop the partial file and start over.
            let _ = std::fs::remove_file(partial);
            return Err(Failure::Transient(anyhow!("GET {url}: unexpected Content-Range, restarting from 0")));
        }
        // The server ignored Range (or there was none): the body starts at byte 0.
        StatusCode::OK => create_nofollow(partial).map_err(|e| fatal(e, "create"))?,
        StatusCode::RANGE_NOT_SATISFIABLE if content_range.and_then(|r| r.1) == Some(have) => {
            // The partial file already holds the whole file; the hash check decides.
            return Ok(());
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let _ = std::fs::remove_file(partial);
            return Err(Failure::Transient(anyhow!("GET {url}: partial file does not fit the remote file, restarting from 0")));
        }
        status => return Err(status_failure(url, status)),
    };
    let start = if resp.status() == StatusCode::OK { 0 } else { have };
    let expected_len = resp.content_length().map(|len| start + len);
    bar.set_length(expected_len.unwrap_or(0));
    bar.set_position(start);
    bar.reset_eta();

    let mut buf = vec![0u8; BUF_SIZE];
    let mut written = start;
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.flush();
                return Err(Failure::Transient(anyhow!(e).context(format!("GET {url}: connection lost after {written} bytes"))));
            }
        };
        if written + n as u64 > max_bytes {
            let _ = std::fs::remove_file(partial);
            return Err(Failure::Fatal(anyhow!("GET {url}: more than the {max_bytes} bytes expected: refusing it")));
        }
        file.write_all(&buf[..n]).map_err(|e| fatal(e, "write"))?;
        written += n as u64;
        bar.inc(n as u64);
    }
    file.flush().map_err(|e| fatal(e, "write"))?;
    if let Some(expected) = expected_len {
        if written < expected {
            return Err(Failure::Transient(anyhow!("GET {url}: body ended after {written} of {expected} bytes")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve;
    use std::io::{self, BufRead};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Fixture {
        dir: PathBuf,
        layout: Layout,
        server: serve::Server,
        data: Vec<u8>,
        sha: String,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str) -> Fixture {
        let dir = crate::testutil::scratch(&format!("download-{name}"));
        let mirror = dir.join("mirror");
        std::fs::create_dir_all(mirror.join("pub")).unwrap();
        // Big enough to need many reads, with no repeating pattern a bug could hide behind.
        let data: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(mirror.join("pub/linux-1.0.tar.xz"), &data).unwrap();
        std::fs::write(mirror.join("pub/sha256sums.asc"), b"sums\n").unwrap();
        let server = serve::spawn(mirror, "127.0.0.1:0").unwrap();
        let layout = Layout { root: dir.clone(), artifacts: dir.join("artifacts"), cache: dir.join("cache") };
        let sha = hash::sha256_bytes(&data);
        Fixture { dir, layout, server, data, sha }
    }

    /// A symlink planted at the partial file's name is not written through.
    #[test]
    fn a_planted_symlink_in_the_cache_is_not_followed() {
        let f = fixture("symlink");
        let victim = f.dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let partial = partial_path(&f.layout, &f.sha);
        std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &partial).unwrap();
        let url = f.server.url("/pub/linux-1.0.tar.xz");
        let _ = fetch_verified(&f.layout, &url, &f.sha, "linux-1.0");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    #[test]
    fn a_file_mirror_cannot_feed_an_endless_file() {
        let url = "file:///dev/zero";
        let err = format!("{:#}", get_small(url).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn fetch_then_cache_hit_sends_no_request() {
        let f = fixture("hit");
        let url = f.server.url("/pub/linux-1.0.tar.xz");
        let path = fetch_verified(&f.layout, &url, &f.sha, "linux-1.0").unwrap();
        assert_eq!(path, f.layout.cache_blob(&f.sha));
        assert_eq!(std::fs::read(&path).unwrap(), f.data);
        assert!(!partial_path(&f.layout, &f.sha).exists());
        assert_eq!(f.server.requests(), vec!["GET /pub/linux-1.0.tar.xz".to_string()]);

        let again = fetch_verified(&f.layout, &url, &f.sha.to_uppercase(), "linux-1.0").unwrap();
        assert_eq!(again, path);
        assert_eq!(f.server.requests().len(), 1, "a cache hit must not touch the network");
    }

    #[test]
    fn cut_connection_resumes_with_range() {
        let f = fixture("resume");
        f.server.cut_after("linux-1.0.tar.xz", 100_000);
        let url = f.server.url("/pub/linux-1.0.tar.xz");
        let path = fetch_verified(&f.layout, &url, &f.sha, "linux-1.0").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), f.data);
        let requests = f.server.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!(requests[0], "GET /pub/linux-1.0.tar.xz");
        assert_eq!(requests[1], "GET /pub/linux-1.0.tar.xz range=bytes=100000-");
    }

    #[test]
    fn partial_from_an_earlier_run_is_resumed() {
        let f = fixture("earlier");
        let partial = partial_path(&f.layout, &f.sha);
        std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
        std::fs::write(&partial, &f.data[..12_345]).unwrap();
        let url = f.server.url("/pub/linux-1.0.tar.xz");
        let path = fetch_verified(&f.layout, &url, &f.sha, "linux-1.0").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), f.data);
        assert_eq!(f.server.requests(), vec!["GET /pub/linux-1.0.tar.xz range=bytes=12345-".to_string()]);
    }

    #[test]
    fn oversized_partial_restarts_from_zero() {
        let f = fixture("oversized");
        let partial = partial_path(&f.layout, &f.sha);
        std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
        std::fs::write(&partial, vec![0u8; f.data.len() + 10]).unwrap();
        let url = f.server.url("/pub/linux-1.0.tar.xz");
        let path = fetch_verified(&f.layout, &url, &f.sha, "linux-1.0").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), f.data);
        let requests = f.server.requests();
        assert_eq!(requests.last().unwrap(), "GET /pub/linux-1.0.tar.xz", "{requests:?}");
    }

    #[test]
    fn tampered_content_is_refused_and_removed() {
        let f = fixture("tampered");
        let wrong = hash::sha256_bytes(b"something else");
        let url = f.server.url("/pub/linux-1.0.tar.xz");
        let err = format!("{:#}", fetch_verified(&f.layout, &url, &wrong, "linux-1.0").unwrap_err());
        assert!(err.contains(&format!("verify sha256 of linux-1.0: expected {wrong}, got {}", f.sha)), "{err}");
        assert!(err.contains("file removed from the cache"));
        assert!(!partial_path(&f.layout, &wrong).exists());
        assert!(!f.layout.cache_blob(&wrong).exists());
        assert!(!f.layout.cache_blob(&f.sha).exists());
    }

    #[test]
    fn not_found_names_the_url_and_does_not_retry() {
        let f = fixture("404");
        let url = f.server.url("/pub/missing.tar.xz");
        let err = format!("{:#}", get_small(&url).unwrap_err());
        assert_eq!(err, format!("GET {url}: 404 Not Found"));
        let err = format!("{:#}", fetch_verified(&f.layout, &url, &f.sha, "missing").unwrap_err());
        assert!(err.contains(&format!("GET {url}: 404 Not Found")), "{err}");
        assert_eq!(f.server.requests().len(), 2, "4xx must fail at once");
    }

    #[test]
    fn small_files_over_http_and_file_urls() {
        let f = fixture("small");
        f.server.cut_after("sha256sums.asc", 2);
        assert_eq!(get_small(&f.server.url("/pub/sha256sums.asc?x=1")).unwrap(), b"sums\n");
        assert_eq!(f.server.requests().len(), 2, "a cut body is retried");
        let local = f.dir.join("mirror/pub/sha256sums.asc");
        assert_eq!(get_small(&format!("file://{}", local.display())).unwrap(), b"sums\n");
        assert!(get_small("ftp://example.org/x").is_err());
    }

    #[test]
    fn file_urls_are_copied_and_verified() {
        let f = fixture("file");
        let src = f.dir.join("mirror/pub/linux-1.0.tar.xz");
        let url = format!("file://{}", src.display());
        let path = fetch_verified(&f.layout, &url, &f.sha, "linux-1.0").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), f.data);
        assert!(src.exists(), "the source stays where it was");
        let wrong = hash::sha256_bytes(b"x");
        assert!(fetch_verified(&f.layout, &url, &wrong, "linux-1.0").is_err());
        assert!(!f.layout.cache_blob(&wrong).exists());
        assert!(f.server.requests().is_empty());
    }

    #[test]
    fn zbase32_and_wkd_url_match_the_draft() {
        // draft-koch-openpgp-webkey-service: "Joe.Doe@Example.ORG".
        let url = wkd_url("https://example.org/", "Joe.Doe@Example.ORG");
        assert_eq!(url, "https://example.org/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe");
        assert_eq!(zbase32(&[0xff]), "9h");
        // kernel.org's advanced method: the base already names the domain's directory.
        let url = wkd_url("https://www.kernel.org/.well-known/openpgpkey/kernel.org/", "autosigner@kernel.org");
        assert_eq!(url, "https://www.kernel.org/.well-known/openpgpkey/kernel.org/hu/ew8uiogxwri7d3fuioqgt7u1d5sngorx?l=autosigner");
    }

    #[test]
    fn wkd_key_is_fetched_from_the_hashed_path() {
        let f = fixture("wkd");
        let hu = f.dir.join("mirror/.well-known/openpgpkey/hu");
        std::fs::create_dir_all(&hu).unwrap();
        std::fs::write(hu.join("ew8uiogxwri7d3fuioqgt7u1d5sngorx"), b"key bytes").unwrap();
        assert_eq!(wkd_key(&f.server.url(""), "autosigner@kernel.org").unwrap(), b"key bytes");
        assert_eq!(f.server.requests(), vec!["GET /.well-known/openpgpkey/hu/ew8uiogxwri7d3fuioqgt7u1d5sngorx".to_string()]);
        let err = format!("{:#}", wkd_key(&f.server.url(""), "nobody@kernel.org").unwrap_err());
        assert!(err.starts_with("fetch the key of nobody@kernel.org over WKD: GET ") && err.ends_with("404 Not Found"), "{err}");
    }

    /// A loopback HTTP server that answers each request (one per connection) with `respond(path, stream)`
    /// and counts requests: for answers `serve` cannot give (redirects, endless or trickling bodies).
    fn raw_server(respond: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let (respond, counter) = (Arc::new(respond), count.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let respond = respond.clone();
                std::thread::spawn(move || {
                    let mut reader = io::BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut header = String::new();
                    while reader.read_line(&mut header).unwrap_or(0) > 2 {
                        header.clear();
                    }
                    respond(&path, &mut stream);
                });
            }
        });
        (base, count)
    }

    fn redirect(stream: &mut TcpStream, location: &str) {
        let _ = write!(stream, "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn redirects_stay_on_the_same_scheme_host_and_port() {
        let f = fixture("redirect");
        let elsewhere = f.server.url("/pub/linux-1.0.tar.xz");
        let away = elsewhere.clone();
        let (base, count) = raw_server(move |path, stream| match path {
            "/here" => redirect(stream, "/there"),
            "/there" => {
                let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nsums\n");
            }
            _ => redirect(stream, &away),
        });
        assert_eq!(get_small(&format!("{base}/here")).unwrap(), b"sums\n", "a redirect on the same host is followed");
        assert_eq!(count.load(Ordering::SeqCst), 2);

        let url = format!("{base}/away");
        let err = format!("{:#}", get_small(&url).unwrap_err());
        assert!(err.contains(&format!("refusing a redirect from {url} to {elsewhere}")) && err.contains("another host"), "{err}");
        let err = format!("{:#}", fetch_verified(&f.layout, &url, &f.sha, "linux-1.0").unwrap_err());
        assert!(err.contains("refusing a redirect"), "{err}");
        assert!(f.server.requests().is_empty(), "nothing but the first host is contacted");
        assert!(!f.layout.cache_blob(&f.sha).exists());
    }

    /// Two runs fetching the same blob at once: the second waits for the first instead of writing
    /// into the same partial file, then finds the blob in the cache; one request, one correct blob.
    #[test]
    fn concurrent_fetches_of_one_blob_share_one_download() {
        let f = fixture("concurrent");
        let data = f.data.clone();
        // 600 KB in 30 slices 20 ms apart: slow enough that the two fetches overlap.
        let (base, count) = raw_server(move |_, stream| {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len());
            for slice in data.chunks(data.len() / 30 + 1) {
                std::thread::sleep(Duration::from_millis(20));
                if stream.write_all(slice).is_err() {
                    return;
                }
            }
        });
        let url = format!("{base}/pub/linux-1.0.tar.xz");
        let barrier = std::sync::Barrier::new(2);
        let paths: Vec<PathBuf> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        fetch_verified(&f.layout, &url, &f.sha, "linux-1.0")
                    })
                })
                .collect();
            runs.into_iter().map(|run| run.join().unwrap().unwrap()).collect()
        });
        assert_eq!(paths, vec![f.layout.cache_blob(&f.sha); 2]);
        assert_eq!(std::fs::read(&paths[0]).unwrap(), f.data);
        assert_eq!(count.load(Ordering::SeqCst), 1, "the second fetch waits and finds the blob");
        let partial_dir = partial_path(&f.layout, &f.sha).parent().unwrap().to_path_buf();
        assert_eq!(std::fs::read_dir(partial_dir).unwrap().count(), 0, "no partial or lock file is left");
    }

    #[test]
    fn small_downloads_are_capped_in_size() {
        let big = vec![b'x'; (SMALL.max_bytes + 1) as usize];
        let (base, _) = raw_server(move |path, stream| {
            // No Content-Length: the size shows only while reading.
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            if path == "/endless" {
                while stream.write_all(&[b'y'; 65536]).is_ok() {}
            } else {
                let _ = stream.write_all(&big);
            }
        });
        for path in ["/big", "/endless"] {
            let err = format!("{:#}", get_small(&format!("{base}{path}")).unwrap_err());
            assert!(err.contains(&format!("larger than {} bytes: refusing it", SMALL.max_bytes)), "{err}");
        }
        let (base, count) = raw_server(|_, stream| {
            let _ = stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1u64 << 40).as_bytes());
        });
        let err = format!("{:#}", get_small(&format!("{base}/announced")).unwrap_err());
        assert!(err.contains("announces 1099511627776 bytes, more than"), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 1, "a size refusal is not retried");
    }

    #[test]
    fn small_downloads_have_a_deadline() {
        // 40 bytes, one every 50 ms: 2 s in all, longer than the 0.5 s deadline.
        let (base, _) = raw_server(|_, stream| {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nConnection: close\r\n\r\n");
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(50));
                if stream.write_all(b"z").is_err() {
                    return;
                }
            }
        });
        let limits = SmallLimits { max_bytes: 1000, deadline: Duration::from_millis(500) };
        let started = std::time::Instant::now();
        let err = format!("{:#}", get_small_within(&format!("{base}/slow"), &limits).unwrap_err());
        assert!(err.contains("no complete answer within 0.5 s"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    }

    #[test]
    fn connection_refused_is_retried_then_reported() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/x");
        let started = std::time::Instant::now();
        let err = format!("{:#}", get_small(&url).unwrap_err());
        assert!(err.contains("gave up after 4 tries"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(3500), "backoff waits 0.5 + 1 + 2 s");
    }
}
