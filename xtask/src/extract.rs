//! Safe, streaming extraction of a verified tarball into a source tree, stamped with its sha256.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use sha2::Digest as _;
use tar::EntryType;

use crate::progress;
use crate::{download, hash, layout};

/// Written last into an extracted tree; holds the tarball's sha256 so a later run can reuse it.
pub const STAMP: &str = ".kernel-lab-stamp";

/// Decompressed bytes handed from the decoding thread to the unpacking thread per message.
const CHUNK: usize = 1 << 20;

/// Extracts `tarball` (whose sha256 is `sha256`) into `dest`, dropping the archive's top directory.
///
/// Reuses `dest` when its stamp names the same sha256. Otherwise unpacks into a temporary sibling
/// and swaps it into place, so `dest` is either the old tree or the complete new one. Entries that
/// could write outside the tree (absolute paths, `..`, links leaving it) abort the extraction.
///
/// The tarball is hashed as it is read: if it no longer has `sha256` (a cache blob changed since
/// it was verified), nothing of it is used and a cache blob is removed so the next run fetches it.
/// Runs extracting into the same `dest` take turns through a lock file `.NAME.lock` next to it.
pub fn extract(tarball: &Path, sha256: &str, dest: &Path, label: &str) -> Result<()> {
    let stamp = dest.join(STAMP);
    let stamped = || fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == sha256);
    if stamped() {
        return Ok(());
    }
    let parent = dest.parent().with_context(|| format!("{} has no parent directory", dest.display()))?;
    dest.file_name().with_context(|| format!("{} has no file name", dest.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    let lock = layout::hidden_sibling(dest, "lock");
    let _lock = download::lock_path(&lock, &format!("extracting {label} into {}", dest.display()))?;
    // The run we waited for may have just extracted the same tarball.
    if stamped() {
        return Ok(());
    }
    // Only the holder of the lock makes temporaries of `dest`, so any found now are a killed run's.
    layout::remove_abandoned_siblings(dest)?;

    let tmp = layout::tmp_sibling(dest);
    fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    if let Err(err) = unpack(tarball, sha256, &tmp, label, u64::MAX) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(err.context(format!("extract {} into {}", tarball.display(), dest.display())));
    }
    // The stamp goes in last: a tree without it is never trusted.
    fs::write(tmp.join(STAMP), format!("{sha256}\n")).with_context(|| format!("write the stamp in {}", tmp.display()))?;

    layout::replace_dir(&tmp, dest)
}

/// Unpacks `tarball` (which must have `sha256`) into the existing empty directory `root`, dropping
/// the archive's top directory, with every guard of `extract` (no absolute paths, `..`, links
/// leaving the tree, modes never group- or world-writable). The caller owns `root` and removes it
/// on failure.
/// `budget`: the most bytes the regular files may add up to (a pack that inflates beyond it is
/// refused before it fills the disk).
pub fn unpack_checked(tarball: &Path, sha256: &str, root: &Path, label: &str, budget: u64) -> Result<()> {
    unpack(tarball, sha256, root, label, budget)
}

#[derive(Clone, Copy)]
enum Compression {
    Zstd,
    Xz,
    Bzip2,
    Gzip,
    None,
}

/// By magic bytes first (cache blobs are named by hash, without an extension), then by name.
fn detect(path: &Path) -> Result<Compression> {
    let mut magic = [0u8; 6];
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let n = file.read(&mut magic).with_context(|| format!("read {}", path.display()))?;
    let magic = &magic[..n];
    let name = path.to_string_lossy();
    Ok(if magic.starts_with(b"\x28\xb5\x2f\xfd") {
        Compression::Zstd
    } else if magic.starts_with(b"\xfd7zXZ\0") {
        Compression::Xz
    } else if magic.starts_with(b"BZh") {
        Compression::Bzip2
    } else if magic.starts_with(b"\x1f\x8b") {
        Compression::Gzip
    } else if name.ends_with(".tar") || is_plain_tar(path)? {
        Compression::None
    } else {
        bail!("{} is neither .tar.zst, .tar.xz, .tar.bz2, .tar.gz nor .tar", path.display())
    })
}

fn is_plain_tar(path: &Path) -> Result<bool> {
    let mut header = [0u8; 512];
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    Ok(file.read_exact(&mut header).is_ok() && &header[257..262] == b"ustar")
}

/// Counts compressed bytes read, for the progress bar, and hashes them: the decompressor reads
/// every byte of the tarball anyway, so checking a cached blob again costs no extra pass.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A decompressor that gives its input back, so the bytes it did not read can be hashed too.
enum Decoder<R: BufRead> {
    Zstd(zstd::stream::read::Decoder<'static, R>),
    Xz(liblzma::bufread::XzDecoder<R>),
    Bzip2(bzip2::bufread::MultiBzDecoder<R>),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    None(R),
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Xz(d) => d.read(buf),
            Decoder::Bzip2(d) => d.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::None(r) => r.read(buf),
        }
    }
}

impl<R: BufRead> Decoder<R> {
    fn into_inner(self) -> R {
        match self {
            Decoder::Zstd(d) => d.finish(),
            Decoder::Xz(d) => d.into_inner(),
            Decoder::Bzip2(d) => d.into_inner(),
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::None(r) => r,
        }
    }
}

/// The unpacking side of the pipeline: reads chunks the decoding thread sends, and hands each
/// used chunk back so the same few buffers circulate (fresh 1 MiB buffers cost page faults).
struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    free: SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let used = std::mem::replace(&mut self.chunk, chunk);
                    let _ = self.free.try_send(used);
                    self.pos = 0;
                }
                Ok(Err(err)) => return Err(err),
                // The decoder finished (or died; its join reports that).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Decompresses on a second thread (like `tar xJf` runs xz in its own process) so decoding and
/// writing files overlap, then unpacks every entry into `root`; fails if the tarball's sha256 is
/// not `sha256`, whatever the unpacking did.
fn unpack(tarball: &Path, sha256: &str, root: &Path, label: &str, budget: u64) -> Result<()> {
    let compression = detect(tarball)?;
    let file = File::open(tarball).with_context(|| format!("open {}", tarball.display()))?;
    let len = file.metadata().with_context(|| format!("stat {}", tarball.display()))?.len();
    let bar = progress::bytes(label, Some(len));
    let input = BufReader::with_capacity(CHUNK, Counting { inner: file, bar: bar.clone(), hasher: sha2::Sha256::new() });
    let mut decoder = match compression {
        Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(input).context("start zstd")?),
        Compression::Xz => Decoder::Xz(liblzma::bufread::XzDecoder::new_multi_decoder(input)),
        Compression::Bzip2 => Decoder::Bzip2(bzip2::bufread::MultiBzDecoder::new(input)),
        Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::None => Decoder::None(input),
    };

    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(16);
    let decoding = std::thread::spawn(move || {
        // Every decompressed byte counts against the budget: file data, headers, long names and
        // pax records alike (the tar reader buffers the latter whole).
        let mut total = 0u64;
        'decode: loop {
            let mut chunk = free_rx.try_recv().unwrap_or_default();
            chunk.resize(CHUNK, 0);
            let mut filled = 0;
            while filled < CHUNK {
                match decoder.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        let _ = tx.send(Err(err));
                        break 'decode;
                    }
                }
            }
            total = total.saturating_add(filled as u64);
            if total > budget {
                let _ = tx.send(Err(io::Error::other(format!("the archive unpacks to more than {budget} bytes: refusing it"))));
                break;
            }
            chunk.truncate(filled);
            // A send error means the unpacker stopped early: nothing more to do.
            if filled == 0 || tx.send(Ok(chunk)).is_err() {
                break;
            }
        }
        decoder
    });

    let result = unpack_entries(ChannelReader { rx, free: free_tx, chunk: Vec::new(), pos: 0 }, root);
    // Dropping the receiver (inside `result`'s call) unblocks the decoder if we stopped early.
    let decoder = decoding.join().map_err(|_| anyhow::anyhow!("the decompression thread panicked"))?;
    // What the decoder's buffer held is hashed already; hash what it never read (the tar stream
    // ends before the file does: padding, or a stop at the first bad entry).
    let mut rest = decoder.into_inner().into_inner();
    io::copy(&mut rest, &mut io::sink()).with_context(|| format!("read {} to hash it", tarball.display()))?;
    bar.finish_and_clear();
    let got = hash::hex(&rest.hasher.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        return Err(changed_since_verified(tarball, sha256, &got));
    }
    result.with_context(|| format!("decompress {}: the file may be truncated or corrupt", tarball.display()))
}

/// The error for a tarball that no longer has the sha256 it was verified with. A cache blob (named
/// by that sha256) is removed, so the next run downloads it again instead of failing forever.
fn changed_since_verified(tarball: &Path, expected: &str, got: &str) -> anyhow::Error {
    let mismatch = format!("{}: expected sha256 {expected}, got {got}", tarball.display());
    if tarball.file_name().is_some_and(|n| n.eq_ignore_ascii_case(expected)) {
        match fs::remove_file(tarball) {
            Ok(()) => anyhow::anyhow!(
                "{mismatch}: the cache entry is corrupt (it changed since it was verified); removed it from the cache; run again to download it afresh"
            ),
            Err(e) => anyhow::anyhow!(
                "{mismatch}: the cache entry is corrupt (it changed since it was verified) and removing it failed ({e}): remove it by hand, then run again"
            ),
        }
    } else {
        anyhow::anyhow!("{mismatch}: the file changed since it was verified; fetch it again")
    }
}

/// What unpacking has created so far, to avoid repeated syscalls and to spot link tricks.
struct Tree<'a> {
    root: &'a Path,
    /// Directories known to exist as real directories (relative to `root`).
    dirs: HashSet<PathBuf>,
    /// Symlinks created (relative to `root`): nothing may be written through them.
    symlinks: HashSet<PathBuf>,
    /// Directory modes and mtimes, applied at the end so later files can still be written.
    dir_meta: Vec<(PathBuf, u32, u64)>,
}

impl Tree<'_> {
    /// Makes sure the parent directory of `rel` exists, without following a symlink we created.
    fn ensure_parent(&mut self, rel: &Path, entry: &Path) -> Result<()> {
        match rel.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => self.ensure_dir(parent, entry),
            _ => Ok(()),
        }
    }

    fn ensure_dir(&mut self, rel: &Path, entry: &Path) -> Result<()> {
        if self.dirs.contains(rel) {
            return Ok(());
        }
        self.refuse_through_symlink(rel, entry)?;
        let path = self.root.join(rel);
        fs::create_dir_all(&path).with_context(|| format!("create directory {}", path.display()))?;
        for ancestor in rel.ancestors() {
            if ancestor.as_os_str().is_empty() || !self.dirs.insert(ancestor.to_path_buf()) {
                break;
            }
        }
        Ok(())
    }

    /// Refuses `rel` if it or one of its ancestors is a symlink the archive created.
    fn refuse_through_symlink(&self, rel: &Path, entry: &Path) -> Result<()> {
        if self.symlinks.is_empty() {
            return Ok(());
        }
        if let Some(link) = rel.ancestors().find(|a| self.symlinks.contains(*a)) {
            bail!("refusing tar entry `{}`: it goes through the symlink `{}`", entry.display(), link.display());
        }
        Ok(())
    }

    /// Removes what an earlier entry of the same name left (tar archives may repeat names).
    fn clear(&mut self, rel: &Path) {
        let path = self.root.join(rel);
        if self.symlinks.remove(rel) || fs::symlink_metadata(&path).is_ok() {
            let _ = fs::remove_file(&path);
        }
    }
}

fn unpack_entries(reader: ChannelReader, root: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree { root, dirs: HashSet::new(), symlinks: HashSet::new(), dir_meta: Vec::new() };
    for entry in archive.entries().context("read the tar stream")? {
        let mut entry = entry.context("read a tar entry")?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink) {
            continue;
        }
        let raw = entry.path().context("read a tar entry's path")?.into_owned();
        let Some(rel) = strip_top(&raw)? else {
            continue;
        };
        // Never group- or world-writable, whatever the tarball says (git-archive tarballs carry
        // 0664/0775): another local user must not be able to change code we are about to build.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        let mtime = entry.header().mtime().unwrap_or(1).max(1);
        let dst = root.join(&rel);
        match kind {
            EntryType::Directory => {
                tree.ensure_dir(&rel, &raw)?;
                tree.dir_meta.push((dst, mode, mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                tree.ensure_parent(&rel, &raw)?;
                // Streamed: a huge entry costs disk (within the budget), never memory.
                write_file(&mut tree, &rel, &dst, &mut entry, mode, mtime).with_context(|| format!("write {}", dst.display()))?;
            }
            EntryType::Symlink => {
                let target = entry.link_name().context("read a symlink target")?.unwrap_or_default().into_owned();
                check_symlink_target(&rel, &target, &raw)?;
                tree.ensure_parent(&rel, &raw)?;
                tree.clear(&rel);
                std::os::unix::fs::symlink(&target, &dst)
                    .with_context(|| format!("create symlink {} -> {}", dst.display(), target.display()))?;
                tree.symlinks.insert(rel);
            }
            EntryType::Link => {
                let target_raw = entry.link_name().context("read a hard link target")?.unwrap_or_default().into_owned();
                let target = match strip_top(&target_raw) {
                    Ok(Some(target)) => target,
                    _ => bail!("refusing tar entry `{}`: hard link to `{}` points outside the tree", raw.display(), target_raw.display()),
                };
                if tree.symlinks.contains(&target) {
                    // A relative symlink means something else in another directory.
                    bail!("refusing tar entry `{}`: hard link to the symlink `{}`", raw.display(), target_raw.display());
                }
                tree.refuse_through_symlink(&target, &raw)?;
                tree.ensure_parent(&rel, &raw)?;
                tree.clear(&rel);
                let src = root.join(&target);
                fs::hard_link(&src, &dst).with_context(|| format!("hard link {} -> {}", dst.display(), src.display()))?;
            }
            other => bail!("refusing tar entry `{}`: unsupported type {other:?}", raw.display()),
        }
    }
    for (dir, mode, mtime) in tree.dir_meta.iter().rev() {
        // Owner rwx is kept so a non-root user can always delete and rebuild the tree.
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode | 0o700))
            .with_context(|| format!("set the mode of {}", dir.display()))?;
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
        File::open(dir)
            .and_then(|d| d.set_times(fs::FileTimes::new().set_accessed(time).set_modified(time)))
            .with_context(|| format!("set the mtime of {}", dir.display()))?;
    }
    check_symlinks_resolve_inside(&tree)
}

fn write_file(tree: &mut Tree, rel: &Path, dst: &Path, data: &mut dyn Read, mode: u32, mtime: u64) -> io::Result<()> {
    let open = || OpenOptions::new().write(true).create_new(true).mode(mode | 0o600).open(dst);
    let mut file = match open() {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            tree.clear(rel);
            open()?
        }
        other => other?,
    };
    io::copy(data, &mut file)?;
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
    file.set_times(fs::FileTimes::new().set_accessed(time).set_modified(time))?;
    // Explicitly, since the umask may have masked bits at open.
    file.set_permissions(fs::Permissions::from_mode(mode))
}

/// Drops the archive's top directory (`linux-6.12.117/`, `linux-source-6.12/`, ...).
/// `Ok(None)` for the top directory itself; an error for absolute paths and `..`.
fn strip_top(raw: &Path) -> Result<Option<PathBuf>> {
    let mut rel = PathBuf::new();
    let mut seen_top = false;
    for component in raw.components() {
        match component {
            Component::Normal(part) if seen_top => rel.push(part),
            Component::Normal(_) => seen_top = true,
            Component::CurDir => {}
            Component::ParentDir => {
                bail!("refusing tar entry `{}`: it contains `..`", raw.display())
            }
            Component::RootDir | Component::Prefix(_) => {
                bail!("refusing tar entry `{}`: absolute path", raw.display())
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// A symlink at `rel` may point only inside the tree, judged relative to its own directory.
fn check_symlink_target(rel: &Path, target: &Path, entry: &Path) -> Result<()> {
    if target.as_os_str().is_empty() {
        bail!("refusing tar entry `{}`: empty symlink target", entry.display());
    }
    let mut depth = rel.parent().map_or(0, |p| p.components().count());
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir => bail!("refusing tar entry `{}`: symlink to `{}` leaves the tree", entry.display(), target.display()),
            Component::RootDir | Component::Prefix(_) => {
                bail!("refusing tar entry `{}`: symlink to the absolute path `{}`", entry.display(), target.display())
            }
        }
    }
    Ok(())
}

/// Chains of symlinks (`a -> .`, `b -> a/..`) can pass the per-link check; resolve every link
/// for real once the tree is complete. Dangling links stay (they were checked lexically).
fn check_symlinks_resolve_inside(tree: &Tree) -> Result<()> {
    if tree.symlinks.is_empty() {
        return Ok(());
    }
    let root = fs::canonicalize(tree.root).with_context(|| format!("resolve {}", tree.root.display()))?;
    for link in &tree.symlinks {
        if let Ok(resolved) = fs::canonicalize(root.join(link)) {
            if !resolved.starts_with(&root) {
                bail!("refusing tar entry `{}`: symlink resolves to {} outside the tree", link.display(), resolved.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use crate::testutil::scratch;

    /// A raw header, so the test can write paths the Builder would refuse.
    fn header(kind: EntryType, path: &str, link: &str, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_000_000);
        h.set_cksum();
        h
    }

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8], u32),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    fn tar_bytes(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        // git archive (kernel.org tarballs) starts with a pax global header.
        let comment = b"52 comment=0123456789012345678901234567890123456789\n";
        b.append(&header(EntryType::XGlobalHeader, "pax_global_header", "", comment.len() as u64, 0o666), &comment[..]).unwrap();
        for e in entries {
            match e {
                E::Dir(p) => b.append(&header(EntryType::Directory, p, "", 0, 0o755), io::empty()).unwrap(),
                E::File(p, data, mode) => b.append(&header(EntryType::Regular, p, "", data.len() as u64, *mode), *data).unwrap(),
                E::Sym(p, t) => b.append(&header(EntryType::Symlink, p, t, 0, 0o777), io::empty()).unwrap(),
                E::Hard(p, t) => b.append(&header(EntryType::Link, p, t, 0, 0o644), io::empty()).unwrap(),
            }
        }
        b.into_inner().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn bz2(data: &[u8]) -> Vec<u8> {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn good_tree() -> Vec<u8> {
        tar_bytes(&[
            E::Dir("linux-source-6.12/"),
            E::File("linux-source-6.12/Makefile", b"VERSION = 6\n", 0o644),
            E::Dir("linux-source-6.12/scripts/"),
            E::File("linux-source-6.12/scripts/run.sh", b"#!/bin/sh\n", 0o755),
            // A file whose directory has no entry of its own.
            E::File("linux-source-6.12/arch/x86/boot/Makefile", b"boot\n", 0o644),
            E::Sym("linux-source-6.12/arch/x86/run", "../../scripts/run.sh"),
            E::Hard("linux-source-6.12/Kbuild", "linux-source-6.12/Makefile"),
        ])
    }

    fn sha(path: &Path) -> String {
        crate::hash::sha256_file(path).unwrap()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn extracted_files_are_never_group_or_world_writable() {
        let dir = scratch("umask");
        let tarball = dir.join("t.tar.xz");
        let tar = tar_bytes(&[
            E::Dir("linux/"),
            E::File("linux/Makefile", b"all:\n", 0o666),
            E::File("linux/scripts/run.sh", b"#!/bin/sh\n", 0o775),
        ]);
        fs::write(&tarball, xz(&tar)).unwrap();
        let dest = dir.join("src");
        extract(&tarball, &sha(&tarball), &dest, "linux").unwrap();
        let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!((mode("Makefile"), mode("scripts/run.sh")), (0o644, 0o755));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn extracts_xz_strips_top_dir_and_reuses() {
        let dir = scratch("good");
        // Named like a cache blob: no extension, so the format comes from the magic bytes.
        let tarball = dir.join("0123abcd");
        fs::write(&tarball, xz(&good_tree())).unwrap();
        let dest = dir.join("src/linux-6.12.117");
        let one = sha(&tarball);
        extract(&tarball, &one, &dest, "linux-6.12.117").unwrap();

        assert_eq!(fs::read(dest.join("Makefile")).unwrap(), b"VERSION = 6\n");
        assert_eq!(fs::read(dest.join("arch/x86/boot/Makefile")).unwrap(), b"boot\n");
        let run = fs::metadata(dest.join("scripts/run.sh")).unwrap();
        assert_eq!(run.mode() & 0o777, 0o755);
        assert_eq!(run.mtime(), 1_000_000);
        assert_eq!(fs::metadata(dest.join("scripts")).unwrap().mtime(), 1_000_000);
        assert_eq!(fs::read_link(dest.join("arch/x86/run")).unwrap(), Path::new("../../scripts/run.sh"));
        assert_eq!(fs::read(dest.join("arch/x86/run")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(fs::metadata(dest.join("Kbuild")).unwrap().ino(), fs::metadata(dest.join("Makefile")).unwrap().ino());
        assert_eq!(fs::read_to_string(dest.join(STAMP)).unwrap(), format!("{one}\n"));
        assert!(!dest.join("linux-source-6.12").exists());
        assert!(!dest.join("pax_global_header").exists());
        assert_eq!(leftovers(&dir.join("src")), vec!["linux-6.12.117"]);

        // Same sha256: reused as is, so a file added since survives.
        fs::write(dest.join("marker"), b"x").unwrap();
        extract(&tarball, &one, &dest, "linux-6.12.117").unwrap();
        assert!(dest.join("marker").exists());

        // Another sha256: replaced by a fresh tree.
        // (The same tree, uncompressed: other bytes, so another sha256.)
        let other = dir.join("4567cdef");
        fs::write(&other, good_tree()).unwrap();
        let two = sha(&other);
        extract(&other, &two, &dest, "linux-6.12.117").unwrap();
        assert!(!dest.join("marker").exists());
        assert_eq!(fs::read_to_string(dest.join(STAMP)).unwrap(), format!("{two}\n"));
        assert_eq!(leftovers(&dir.join("src")), vec!["linux-6.12.117"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn extracts_bz2_and_plain_tar() {
        let dir = scratch("bz2");
        let tarball = dir.join("busybox-1.35.0.tar.bz2");
        fs::write(&tarball, bz2(&tar_bytes(&[E::File("busybox-1.35.0/Makefile", b"bb\n", 0o644)]))).unwrap();
        extract(&tarball, &sha(&tarball), &dir.join("busybox"), "busybox").unwrap();
        assert_eq!(fs::read(dir.join("busybox/Makefile")).unwrap(), b"bb\n");

        let plain = dir.join("x.tar");
        fs::write(&plain, tar_bytes(&[E::File("x/y", b"plain\n", 0o600)])).unwrap();
        extract(&plain, &sha(&plain), &dir.join("x"), "x").unwrap();
        assert_eq!(fs::read(dir.join("x/y")).unwrap(), b"plain\n");
        assert_eq!(fs::metadata(dir.join("x/y")).unwrap().mode() & 0o777, 0o600);

        let junk = dir.join("junk");
        fs::write(&junk, b"not a tarball at all").unwrap();
        let err = format!("{:#}", extract(&junk, &sha(&junk), &dir.join("j"), "j").unwrap_err());
        assert!(err.contains("is neither .tar.zst, .tar.xz"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    /// Extracting `entries` must fail naming `entry`, leave `dest` alone and clean up.
    fn refused(name: &str, entries: &[E], entry: &str) -> String {
        let dir = scratch(name);
        let tarball = dir.join("t.tar.xz");
        fs::write(&tarball, xz(&tar_bytes(entries))).unwrap();
        let dest = dir.join("work/src");
        let err = format!("{:#}", extract(&tarball, &sha(&tarball), &dest, "t").unwrap_err());
        assert!(err.contains("refusing tar entry") && err.contains(entry), "{err}");
        assert!(!dest.exists());
        assert_eq!(leftovers(&dir.join("work")), Vec::<String>::new(), "temporary tree removed");
        assert_eq!(leftovers(&dir), vec!["t.tar.xz", "work"], "nothing written outside");
        fs::remove_dir_all(dir).unwrap();
        err
    }

    #[test]
    fn refuses_parent_dir_entries() {
        let err = refused("dotdot", &[E::File("top/ok", b"ok", 0o644), E::File("top/../../evil", b"x", 0o644)], "top/../../evil");
        assert!(err.contains("`..`"));
    }

    #[test]
    fn refuses_absolute_entries() {
        // An absolute path in a directory of its own, so a broken check would write where the test looks.
        let outside = scratch("extract-abs-target");
        let path = outside.join("evil").to_str().unwrap().to_string();
        let err = refused("abs", &[E::File(&path, b"x", 0o644)], &path);
        assert!(err.contains("absolute path"));
        assert!(!Path::new(&path).exists());
        fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn refuses_symlinks_out_of_the_tree() {
        let err = refused("sym", &[E::Sym("top/link", "../../etc")], "top/link");
        assert!(err.contains("leaves the tree"), "{err}");
        let err = refused("symabs", &[E::Sym("top/a/link", "/etc")], "top/a/link");
        assert!(err.contains("absolute path `/etc`"), "{err}");
        // Inside the tree lexically, outside once `a` is followed.
        let err = refused("symchain", &[E::Dir("top/d/"), E::Sym("top/d/a", ".."), E::Sym("top/b", "d/a/..")], "");
        assert!(err.contains("outside the tree"), "{err}");
    }

    #[test]
    fn refuses_writing_through_symlinks() {
        let err = refused("through", &[E::Dir("top/sub/"), E::Sym("top/l", "sub"), E::File("top/l/file", b"x", 0o644)], "top/l/file");
        assert!(err.contains("goes through the symlink `l`"), "{err}");
    }

    #[test]
    fn refuses_hardlinks_out_of_the_tree() {
        let err = refused("hard", &[E::Hard("top/hard", "top/../../outside")], "top/hard");
        assert!(err.contains("points outside the tree"), "{err}");
        let err = refused("hardabs", &[E::Hard("top/hard", "/etc/passwd")], "top/hard");
        assert!(err.contains("points outside the tree"), "{err}");
        let err = refused("hardsym", &[E::Dir("top/a/"), E::Sym("top/a/l", "../x"), E::Hard("top/h", "top/a/l")], "top/h");
        assert!(err.contains("hard link to the symlink"), "{err}");
    }

    #[test]
    fn failed_extraction_keeps_the_previous_tree() {
        let dir = scratch("keep");
        let good = dir.join("good.tar.xz");
        fs::write(&good, xz(&good_tree())).unwrap();
        let dest = dir.join("linux");
        let old = sha(&good);
        extract(&good, &old, &dest, "linux").unwrap();
        let bad = dir.join("bad.tar.xz");
        fs::write(&bad, xz(&tar_bytes(&[E::File("t/a", b"new", 0o644), E::File("t/../x", b"", 0o644)]))).unwrap();
        assert!(extract(&bad, &sha(&bad), &dest, "linux").is_err());
        assert_eq!(fs::read_to_string(dest.join(STAMP)).unwrap(), format!("{old}\n"));
        assert_eq!(fs::read(dest.join("Makefile")).unwrap(), b"VERSION = 6\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn truncated_tarball_fails() {
        let dir = scratch("truncated");
        let tarball = dir.join("t.tar.xz");
        let data = xz(&good_tree());
        fs::write(&tarball, &data[..data.len() / 2]).unwrap();
        let dest = dir.join("linux");
        // Its own sha256: the file is what was published, only broken.
        let err = format!("{:#}", extract(&tarball, &sha(&tarball), &dest, "t").unwrap_err());
        assert!(err.contains("truncated or corrupt"), "{err}");
        assert!(!dest.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn interrupted_extraction_is_not_reused() {
        let dir = scratch("interrupted");
        let tarball = dir.join("t.tar.xz");
        fs::write(&tarball, xz(&good_tree())).unwrap();
        let dest = dir.join("linux");
        // A crash mid-extraction leaves a temporary tree (and perhaps a half-filled dest without a stamp).
        let stale = dir.join(".linux.tmp-999999");
        fs::create_dir_all(stale.join("scripts")).unwrap();
        fs::write(stale.join("Makefile"), b"half").unwrap();
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join("Makefile"), b"half").unwrap();
        let s = sha(&tarball);
        extract(&tarball, &s, &dest, "t").unwrap();
        assert_eq!(fs::read(dest.join("Makefile")).unwrap(), b"VERSION = 6\n");
        assert_eq!(fs::read_to_string(dest.join(STAMP)).unwrap(), format!("{s}\n"));
        assert_eq!(leftovers(&dir), vec!["linux", "t.tar.xz"]);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A cache blob (named by its sha256) whose bytes changed since it was verified, here into
    /// another valid tarball, must be refused at extraction and removed so the next run fetches it.
    #[test]
    fn corrupted_cache_blob_is_refused_and_removed() {
        let dir = scratch("corrupt-blob");
        let good = xz(&good_tree());
        let expected = crate::hash::sha256_bytes(&good);
        let blob = dir.join("sha256").join(&expected);
        fs::create_dir_all(blob.parent().unwrap()).unwrap();
        fs::write(&blob, xz(&tar_bytes(&[E::File("top/Makefile", b"evil\n", 0o644)]))).unwrap();
        let dest = dir.join("src/linux");
        let err = format!("{:#}", extract(&blob, &expected, &dest, "linux").unwrap_err());
        assert!(
            err.contains(&format!("expected sha256 {expected}, got ")) && err.contains("removed it from the cache; run again"),
            "{err}"
        );
        assert!(!blob.exists(), "the corrupt blob is removed");
        assert!(!dest.exists(), "nothing of it is used");
        assert_eq!(leftovers(&dir.join("src")), Vec::<String>::new());

        // A byte flipped inside a plain tar: no decompressor checksum to catch it, only the hash.
        let tar = good_tree();
        let plain_sha = crate::hash::sha256_bytes(&tar);
        let blob = dir.join("sha256").join(&plain_sha);
        let mut flipped = tar.clone();
        let at = flipped.windows(11).position(|w| w == b"VERSION = 6").unwrap();
        flipped[at] = b'X';
        fs::write(&blob, &flipped).unwrap();
        let err = format!("{:#}", extract(&blob, &plain_sha, &dest, "linux").unwrap_err());
        assert!(err.contains("the cache entry is corrupt"), "{err}");
        assert!(!blob.exists() && !dest.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Two runs extracting the same tarball into the same place: the second waits for the first
    /// (it must not delete the first one's temporary tree) and both end with the complete tree.
    #[test]
    fn concurrent_extractions_of_one_tree_both_succeed() {
        let dir = scratch("concurrent-extract");
        // Enough files that the two extractions overlap.
        let names: Vec<String> = (0..3000).map(|i| format!("top/d{}/f{i}", i % 50)).collect();
        let entries: Vec<E> = names.iter().map(|n| E::File(n, b"some file content\n", 0o644)).collect();
        let tarball = dir.join("t.tar.xz");
        fs::write(&tarball, xz(&tar_bytes(&entries))).unwrap();
        let s = sha(&tarball);
        let dest = dir.join("src/linux");
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        extract(&tarball, &s, &dest, "linux")
                    })
                })
                .collect();
            for run in runs {
                run.join().unwrap().unwrap();
            }
        });
        assert_eq!(fs::read_to_string(dest.join(STAMP)).unwrap(), format!("{s}\n"));
        assert_eq!(fs::read(dest.join("d7/f2957")).unwrap(), b"some file content\n");
        assert_eq!(leftovers(&dir.join("src")), vec!["linux"]);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Timing on a real tarball, e.g. `KERNEL_LAB_BENCH_TARBALL=/usr/src/linux-source-6.12.tar.xz
    /// KERNEL_LAB_BENCH_DEST=/work/scratch/linux cargo test -p xtask extract::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs a real tarball and about 1.5 GB of disk"]
    fn bench_real_tarball() {
        let tarball = PathBuf::from(std::env::var_os("KERNEL_LAB_BENCH_TARBALL").expect("KERNEL_LAB_BENCH_TARBALL"));
        let dest = PathBuf::from(std::env::var_os("KERNEL_LAB_BENCH_DEST").expect("KERNEL_LAB_BENCH_DEST"));
        let bench = sha(&tarball);
        let started = std::time::Instant::now();
        extract(&tarball, &bench, &dest, "bench").unwrap();
        eprintln!("extracted {} in {:.2} s", tarball.display(), started.elapsed().as_secs_f64());
        assert!(dest.join("Makefile").is_file());
        let started = std::time::Instant::now();
        extract(&tarball, &bench, &dest, "bench").unwrap();
        eprintln!("reuse check in {:.3} s", started.elapsed().as_secs_f64());
    }
}

/// Packs built to exhaust memory or inodes stop at the budget (a hostile `lab fetch`).
#[cfg(test)]
mod bombs {
    use super::*;
    use std::io::Write;

    fn zst_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().unwrap();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(&tar).unwrap();
        enc.finish().unwrap()
    }

    fn unpack_bomb(tag: &str, pack: &[u8], budget: impl FnOnce(u64) -> u64) -> String {
        let dir = crate::testutil::scratch(tag);
        let path = dir.join("p.tar.zst");
        fs::write(&path, pack).unwrap();
        let root = dir.join("root");
        fs::create_dir(&root).unwrap();
        let res = unpack_checked(&path, &crate::hash::sha256_file(&path).unwrap(), &root, "p", budget(pack.len() as u64));
        fs::remove_dir_all(&dir).unwrap();
        format!("{:#}", res.expect_err("a bomb was unpacked"))
    }

    /// The tar reader buffers a GNU long name whole before any entry is seen: only a cap on the
    /// decompressed stream stops it.
    #[test]
    fn a_gnu_long_name_is_held_to_the_budget() {
        let big: u64 = 64 << 20;
        let pack = zst_tar(|b| {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(EntryType::GNULongName);
            h.set_size(big);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, io::repeat(b'a').take(big)).unwrap();
        });
        let err = unpack_bomb("bomb-longname", &pack, |_| 1 << 20);
        assert!(err.contains("unpacks to more than 1048576 bytes"), "{err}");
    }

    /// Empty files cost an inode and a 512-byte header each, which the stream cap counts.
    #[test]
    fn empty_entries_are_held_to_the_budget() {
        let pack = zst_tar(|b| {
            for i in 0..150_000 {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(EntryType::Regular);
                h.set_size(0);
                h.set_mode(0o644);
                h.set_path(format!("top/d{}/f{i}", i % 100)).unwrap();
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
        });
        let err = unpack_bomb("bomb-inodes", &pack, |len| len * 20 + (64 << 20));
        assert!(err.contains("unpacks to more than"), "{err}");
    }
}
