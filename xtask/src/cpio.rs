//! newc ("070701") cpio archives for the initramfs: a deterministic writer, a strict reader, and unpack/repack so a non-root user can edit one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::ops::Bound;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
/// The kernel's PATH_MAX: init/initramfs.c rejects an entry whose name size (NUL included) exceeds it.
const PATH_MAX: usize = 4096;
/// gen_init_cpio numbers inodes from 721; we do the same so our headers match its output field for field.
const FIRST_INO: u32 = 721;
/// Name of the file `unpack` writes into the target directory to remember what disk cannot hold.
pub const MANIFEST_NAME: &str = ".kernel-lab-cpio-manifest";

/// setuid and setgid: `repack` never takes these from disk, only from the manifest (see `repack`).
const SET_ID_BITS: u32 = 0o6000;
/// Bits an unpacked tree keeps on the host: owner rwx, group/other r-x, and sticky on directories. Never
/// setuid/setgid (a user-owned setuid file on the host) nor group/other write (other users could then plant
/// or change files that `repack` turns into root-owned initramfs members). The manifest has the real mode.
const DISK_DIR_BITS: u32 = 0o1755;
const DISK_FILE_BITS: u32 = 0o755;

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path without a leading '/', e.g. "bin/busybox"; "." is never used.
    pub path: String,
    /// Permission bits including setuid/setgid/sticky; no file-type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
    Socket,
}

impl Kind {
    fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDev { .. } => S_IFCHR,
            Kind::BlockDev { .. } => S_IFBLK,
            Kind::Fifo => S_IFIFO,
            Kind::Socket => S_IFSOCK,
        }
    }

    /// The word used for this kind in the manifest and in error messages.
    fn word(&self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::File(_) => "file",
            Kind::Symlink(_) => "symlink",
            Kind::CharDev { .. } => "char",
            Kind::BlockDev { .. } => "block",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }

    fn device(&self) -> (u32, u32) {
        match self {
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => (*major, *minor),
            _ => (0, 0),
        }
    }

    /// Bytes stored after the name. Symlink targets carry a trailing NUL, as gen_init_cpio writes them.
    fn body(&self) -> Vec<u8> {
        match self {
            Kind::File(data) => data.clone(),
            Kind::Symlink(target) => {
                let mut body = target.as_bytes().to_vec();
                body.push(0);
                body
            }
            _ => Vec::new(),
        }
    }
}

/// An archive under construction; entries are kept in write order (every parent before its children).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    /// Keyed by path components, not the raw string, so "a", "a/b" sort before "a-b".
    entries: BTreeMap<Vec<String>, Entry>,
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds or replaces an entry; missing parent directories are created as root-owned 0755.
    pub fn add(&mut self, entry: Entry) -> Result<()> {
        check_entry(&entry)?;
        let key = split_path(&entry.path)?;
        for depth in 1..key.len() {
            let parent = &key[..depth];
            match self.entries.get(parent) {
                Some(e) if e.kind == Kind::Dir => {}
                Some(e) => bail!(
                    "cpio entry {:?}: its parent {:?} is a {} in the archive, not a directory; remove one of them",
                    entry.path,
                    e.path,
                    e.kind.word()
                ),
                None => {
                    let path = parent.join("/");
                    self.entries.insert(parent.to_vec(), Entry { path, mode: 0o755, uid: 0, gid: 0, kind: Kind::Dir });
                }
            }
        }
        if let Some(old) = self.entries.get(&key) {
            if old.kind == Kind::Dir && entry.kind != Kind::Dir && self.has_children(&key) {
                bail!("cpio entry {:?}: cannot replace a non-empty directory with a {}; pick another path", entry.path, entry.kind.word());
            }
        }
        self.entries.insert(key, entry);
        Ok(())
    }

    /// `mkdir -p`: the last directory gets the given owner and mode, missing parents root 0755.
    pub fn add_dir_all(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        self.add(Entry { path: path.to_string(), mode, uid, gid, kind: Kind::Dir })
    }

    pub fn add_file(&mut self, path: &str, mode: u32, uid: u32, gid: u32, data: Vec<u8>) -> Result<()> {
        self.add(Entry { path: path.to_string(), mode, uid, gid, kind: Kind::File(data) })
    }

    /// Root-owned symlink with mode 0777, as `ln -s` makes them.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.add(Entry { path: path.to_string(), mode: 0o777, uid: 0, gid: 0, kind: Kind::Symlink(target.to_string()) })
    }

    pub fn add_char_dev(&mut self, path: &str, mode: u32, uid: u32, gid: u32, major: u32, minor: u32) -> Result<()> {
        self.add(Entry { path: path.to_string(), mode, uid, gid, kind: Kind::CharDev { major, minor } })
    }

    #[cfg(test)]
    pub fn get(&self, path: &str) -> Option<&Entry> {
        let key: Vec<String> = path.split('/').map(str::to_string).collect();
        self.entries.get(&key)
    }

    /// Entries in write order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    fn has_children(&self, key: &[String]) -> bool {
        self.entries.range::<[String], _>((Bound::Excluded(key), Bound::Unbounded)).next().is_some_and(|(k, _)| k.starts_with(key))
    }
}

/// Splits a relative archive path into components, refusing anything the kernel would not unpack
/// where we meant it to go.
fn split_path(path: &str) -> Result<Vec<String>> {
    ensure!(!path.is_empty(), "cpio entry path is empty: give a relative path such as \"bin/busybox\"");
    ensure!(!path.contains('\0'), "cpio entry path {path:?} contains a NUL byte, which ends a cpio name early; remove it");
    ensure!(!path.starts_with('/'), "cpio entry path {path:?} is absolute: drop the leading '/'");
    ensure!(
        path.len() < PATH_MAX,
        "cpio entry path {}... is {} bytes long: the kernel accepts at most {} (PATH_MAX including the NUL); shorten it",
        &path[..path.char_indices().nth(40).map_or(path.len(), |(i, _)| i)],
        path.len(),
        PATH_MAX - 1
    );
    let parts: Vec<String> = path.split('/').map(str::to_string).collect();
    for part in &parts {
        ensure!(
            !part.is_empty() && part != "." && part != "..",
            "cpio entry path {path:?} has an empty, '.' or '..' component: write it in normal form such as \"usr/bin/env\""
        );
    }
    Ok(parts)
}

fn check_entry(entry: &Entry) -> Result<()> {
    split_path(&entry.path)?;
    ensure!(
        entry.mode <= 0o7777,
        "cpio entry {:?}: mode {:o} has bits beyond 07777; pass permission bits only, the kind sets the type",
        entry.path,
        entry.mode
    );
    match &entry.kind {
        Kind::File(data) => ensure!(
            data.len() <= u32::MAX as usize,
            "cpio entry {:?} is {} bytes: newc stores sizes in 32 bits (max {}); leave the file out of the initramfs",
            entry.path,
            data.len(),
            u32::MAX
        ),
        Kind::Symlink(target) => {
            ensure!(!target.is_empty(), "cpio symlink {:?} has an empty target", entry.path);
            ensure!(!target.contains('\0'), "cpio symlink {:?}: target {target:?} contains a NUL byte", entry.path);
            ensure!(
                target.len() < PATH_MAX,
                "cpio symlink {:?}: target is {} bytes, longer than PATH_MAX {PATH_MAX}",
                entry.path,
                target.len()
            );
        }
        _ => {}
    }
    Ok(())
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[allow(clippy::too_many_arguments)]
fn header(ino: u32, mode: u32, uid: u32, gid: u32, nlink: u32, mtime: u32, filesize: u32, rdev: (u32, u32), namesize: u32) -> String {
    // devmajor:devminor 3:1 is what gen_init_cpio writes for every entry; the kernel only uses the pair
    // to match hard links, which we never write (nlink is 1 for non-directories).
    let dev = if ino == 0 { (0, 0) } else { (3, 1) };
    format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{filesize:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        dev.0, dev.1, rdev.0, rdev.1, 0
    )
}

fn write_newc(archive: &Archive, mtime: u32, out: &mut dyn Write) -> Result<()> {
    let mut offset = 0usize;
    let mut put = |out: &mut dyn Write, bytes: &[u8]| -> Result<()> {
        out.write_all(bytes).context("write cpio archive")?;
        offset += bytes.len();
        let pad = align4(offset) - offset;
        out.write_all(&[0u8; 3][..pad]).context("write cpio archive")?;
        offset += pad;
        Ok(())
    };
    for (i, entry) in archive.entries().enumerate() {
        check_entry(entry)?;
        let body = entry.kind.body();
        let nlink = if entry.kind == Kind::Dir { 2 } else { 1 };
        let ino = FIRST_INO + i as u32;
        let mut head = header(
            ino,
            entry.kind.type_bits() | entry.mode,
            entry.uid,
            entry.gid,
            nlink,
            mtime,
            body.len() as u32,
            entry.kind.device(),
            entry.path.len() as u32 + 1,
        )
        .into_bytes();
        head.extend_from_slice(entry.path.as_bytes());
        head.push(0);
        put(out, &head)?;
        put(out, &body)?;
    }
    let mut trailer = header(0, 0, 0, 0, 1, 0, 0, (0, 0), TRAILER.len() as u32 + 1).into_bytes();
    trailer.extend_from_slice(TRAILER.as_bytes());
    trailer.push(0);
    put(out, &trailer)?;
    // Like gen_init_cpio, end on a 512-byte boundary; readers treat the zeros as padding.
    let pad = (512 - offset % 512) % 512;
    out.write_all(&vec![0u8; pad]).context("write cpio archive")?;
    Ok(())
}

/// Writes `archive` in newc format, every entry stamped with `mtime`, optionally gzip-compressed
/// with a zero gzip mtime and no file name so equal archives give equal bytes.
pub fn write(archive: &Archive, mtime: u32, gzip: bool, out: &mut dyn Write) -> Result<()> {
    if gzip {
        let mut gz = flate2::GzBuilder::new().mtime(0).write(out, flate2::Compression::default());
        write_newc(archive, mtime, &mut gz)?;
        gz.finish().context("finish gzip stream of cpio archive")?;
    } else {
        write_newc(archive, mtime, out)?;
    }
    Ok(())
}

/// `write` into memory.
pub fn to_bytes(archive: &Archive, mtime: u32, gzip: bool) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write(archive, mtime, gzip, &mut out)?;
    Ok(out)
}

/// Writes to a temporary sibling and renames it over `path`, so a reader never sees half an archive.
pub fn write_file(archive: &Archive, mtime: u32, gzip: bool, path: &Path) -> Result<()> {
    path.file_name().with_context(|| format!("cpio output path {} has no file name", path.display()))?;
    let tmp = crate::layout::tmp_sibling(path);
    let result = (|| -> Result<()> {
        let file = fs::File::create(&tmp).with_context(|| format!("create {} (does its directory exist?)", tmp.display()))?;
        let mut out = std::io::BufWriter::new(file);
        write(archive, mtime, gzip, &mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("write {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("sync {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// One member as read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// `entry.path` is the name exactly as stored (it may be absolute or contain "..": check before use).
    pub entry: Entry,
    pub ino: u32,
    pub nlink: u32,
    pub mtime: u32,
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

fn maybe_gunzip(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    if !is_gzip(bytes) {
        return Ok(bytes.into());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .context("gunzip cpio archive: the gzip stream is corrupt or cut short")?;
    Ok(out.into())
}

/// Parses a newc archive (gzip-compressed or not), checking every header field, padding and bound.
pub fn read(bytes: &[u8]) -> Result<Vec<ReadEntry>> {
    let data = maybe_gunzip(bytes)?;
    parse_newc(&data)
}

fn parse_newc(data: &[u8]) -> Result<Vec<ReadEntry>> {
    let len = data.len();
    let mut entries = Vec::new();
    let mut off = 0usize;
    loop {
        if off >= len {
            bail!(
                "archive ends at offset {off} after {} entries without a {TRAILER} entry: it was cut short or is not a complete cpio archive",
                entries.len()
            );
        }
        if off + HEADER_LEN > len {
            bail!("truncated archive: header at offset {off} needs {HEADER_LEN} bytes, file has {len}");
        }
        let head = &data[off..off + HEADER_LEN];
        if &head[..6] != MAGIC {
            let hint = match &head[..6] {
                b"070707" => "this is the old portable (odc) format; re-create it with `cpio -o -H newc`",
                b"070702" => "this is the newc-with-checksum (crc) format; re-create it with `cpio -o -H newc`",
                _ => "not a newc cpio archive (or data is corrupt here)",
            };
            bail!("bad magic {:?} at offset {off}: expected \"070701\"; {hint}", String::from_utf8_lossy(&head[..6]));
        }
        let mut fields = [0u32; 13];
        for (i, field) in fields.iter_mut().enumerate() {
            let at = 6 + 8 * i;
            let text = &head[at..at + 8];
            *field = std::str::from_utf8(text)
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .with_context(|| {
                    format!("bad header field {i} {:?} at offset {}: expected 8 hex digits", String::from_utf8_lossy(text), off + at)
                })?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, _dmaj, _dmin, rmaj, rmin, namesize, check] = fields;
        let namesize = namesize as usize;
        ensure!(
            (1..=PATH_MAX).contains(&namesize),
            "bad name size {namesize} at offset {off}: must be 1..={PATH_MAX} (the kernel's PATH_MAX)"
        );
        let name_start = off + HEADER_LEN;
        let name_end = name_start + namesize;
        if name_end > len {
            bail!("truncated archive: name of entry at offset {off} needs {namesize} bytes at offset {name_start}, file has {len}");
        }
        let name_bytes = &data[name_start..name_end];
        ensure!(
            name_bytes[namesize - 1] == 0,
            "name at offset {name_start} is not NUL-terminated within its {namesize} bytes: corrupt header"
        );
        let name_bytes = &name_bytes[..namesize - 1];
        ensure!(!name_bytes.contains(&0), "name at offset {name_start} contains a NUL before its end: corrupt header");
        let name = std::str::from_utf8(name_bytes)
            .with_context(|| format!("name at offset {name_start} is not UTF-8: {:?}", String::from_utf8_lossy(name_bytes)))?
            .to_string();
        ensure!(!name.is_empty(), "empty name at offset {name_start}: corrupt header");
        let data_start = align4(name_end);
        check_padding(data, name_end, data_start, &name)?;
        if name == TRAILER {
            // Everything after the trailer must be padding; a second archive concatenated here would be
            // silently ignored, so say so instead.
            let rest = &data[data_start.min(len)..];
            if let Some(pos) = rest.iter().position(|&b| b != 0) {
                bail!(
                    "unexpected data after {TRAILER} at offset {}: concatenated archives are not supported; split them first",
                    data_start + pos
                );
            }
            return Ok(entries);
        }
        ensure!(check == 0, "entry {name}: check field is {check:#x}, must be 0 in the 070701 format: corrupt header");
        let filesize = filesize as usize;
        let data_end = data_start + filesize;
        if data_end > len {
            bail!("truncated archive: entry {name} needs {filesize} bytes at offset {data_start}, file has {len}");
        }
        let next = align4(data_end);
        check_padding(data, data_end, next, &name)?;
        let body = &data[data_start..data_end];
        let no_body = |kind: Kind| -> Result<Kind> {
            ensure!(filesize == 0, "entry {name}: a {} must have size 0, header says {filesize}", kind.word());
            Ok(kind)
        };
        let kind = match mode & S_IFMT {
            S_IFREG => Kind::File(body.to_vec()),
            S_IFDIR => no_body(Kind::Dir)?,
            S_IFLNK => {
                // gen_init_cpio stores the target with its NUL, GNU cpio without: accept both.
                let target = body.strip_suffix(&[0]).unwrap_or(body);
                ensure!(!target.is_empty(), "symlink {name} has an empty target");
                ensure!(!target.contains(&0), "symlink {name}: target contains a NUL byte");
                let target = std::str::from_utf8(target).with_context(|| format!("symlink {name}: target is not UTF-8"))?;
                Kind::Symlink(target.to_string())
            }
            S_IFCHR => no_body(Kind::CharDev { major: rmaj, minor: rmin })?,
            S_IFBLK => no_body(Kind::BlockDev { major: rmaj, minor: rmin })?,
            S_IFIFO => no_body(Kind::Fifo)?,
            S_IFSOCK => no_body(Kind::Socket)?,
            t => bail!("entry {name}: unknown file type {t:#o} in mode {mode:#o}"),
        };
        entries.push(ReadEntry { entry: Entry { path: name, mode: mode & 0o7777, uid, gid, kind }, ino, nlink, mtime });
        off = next;
    }
}

fn check_padding(data: &[u8], from: usize, to: usize, name: &str) -> Result<()> {
    if to > data.len() {
        bail!("truncated archive: entry {name} needs {} padding bytes at offset {from}, file has {}", to - from, data.len());
    }
    ensure!(data[from..to].iter().all(|&b| b == 0), "entry {name}: non-zero padding at offset {from}: corrupt archive");
    Ok(())
}

/// `ls -l`-style permission string, e.g. "drwxr-xr-x" or "-rwsr-xr-x".
fn mode_string(kind: &Kind, mode: u32) -> String {
    let t = match kind {
        Kind::Dir => 'd',
        Kind::File(_) => '-',
        Kind::Symlink(_) => 'l',
        Kind::CharDev { .. } => 'c',
        Kind::BlockDev { .. } => 'b',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
    };
    let mut s = String::from(t);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set_x, set_nox)) in special.into_iter().enumerate() {
        let shift = 6 - 3 * i;
        let rwx = (mode >> shift) & 7;
        s.push(if rwx & 4 != 0 { 'r' } else { '-' });
        s.push(if rwx & 2 != 0 { 'w' } else { '-' });
        s.push(match (mode & bit != 0, rwx & 1 != 0) {
            (true, true) => set_x,
            (true, false) => set_nox,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// One line per entry, like `cpio -itv` without dates: mode, links, uid, gid, size or "major, minor", path.
pub fn list(bytes: &[u8]) -> Result<String> {
    let mut out = String::new();
    for r in read(bytes)? {
        let e = &r.entry;
        let size = match &e.kind {
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => format!("{major}, {minor}"),
            Kind::File(data) => data.len().to_string(),
            Kind::Symlink(target) => target.len().to_string(),
            _ => "0".to_string(),
        };
        let link = match &e.kind {
            Kind::Symlink(target) => format!(" -> {target}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{} {:>3} {:<6} {:<6} {:>9} {}{}\n",
            mode_string(&e.kind, e.mode),
            r.nlink,
            e.uid,
            e.gid,
            size,
            e.path,
            link
        ));
    }
    Ok(out)
}

/// Turns a stored name into safe relative components: "./" prefixes are dropped, "." yields
/// `None`, absolute names and ".." are refused because they would land outside the target.
fn unpack_components(name: &str) -> Result<Option<Vec<String>>> {
    let mut rel = name;
    while let Some(rest) = rel.strip_prefix("./") {
        rel = rest;
    }
    if rel == "." || rel.is_empty() {
        return Ok(None);
    }
    ensure!(!rel.starts_with('/'), "archive entry {name:?} is absolute: refusing to unpack outside the target directory");
    let parts: Vec<String> = rel.split('/').filter(|p| !p.is_empty() && *p != ".").map(str::to_string).collect();
    ensure!(!parts.iter().any(|p| p == ".."), "archive entry {name:?} contains '..': refusing to unpack outside the target directory");
    Ok(Some(parts))
}

/// Unpacks into `dir` (which must be absent or empty) without root: device nodes, fifos and sockets
/// become empty placeholder files, and every entry's real mode (setuid, setgid and sticky included), owner
/// and device numbers go to `dir/.kernel-lab-cpio-manifest` so `repack` can restore them. On disk a tree
/// is only writable by its owner and holds no setuid/setgid file; directories keep their sticky bit, so the
/// archive's 01777 `tmp` is 01755 on the host rather than a world-writable 0777.
pub fn unpack(bytes: &[u8], dir: &Path) -> Result<()> {
    let gzip = is_gzip(bytes);
    let entries = read(bytes)?;
    // Check every name before touching the disk, so a hostile archive writes nothing at all.
    let mut plan: Vec<(Vec<String>, &ReadEntry)> = Vec::new();
    let mut kinds: BTreeMap<Vec<String>, &Kind> = BTreeMap::new();
    for r in &entries {
        let Some(parts) = unpack_components(&r.entry.path)? else { continue };
        ensure!(
            !(parts.len() == 1 && parts[0] == MANIFEST_NAME),
            "archive entry {:?} collides with the unpack manifest name; it cannot be unpacked here",
            r.entry.path
        );
        for depth in 1..parts.len() {
            if let Some(kind) = kinds.get(&parts[..depth]) {
                ensure!(
                    **kind == Kind::Dir,
                    "archive entry {:?} lies under {:?}, which the archive made a {}: refusing to write through it",
                    r.entry.path,
                    parts[..depth].join("/"),
                    kind.word()
                );
            }
        }
        ensure!(!kinds.contains_key(&parts), "archive has two entries for {:?}: refusing to unpack", parts.join("/"));
        if matches!(r.entry.kind, Kind::File(_)) {
            ensure!(
                r.nlink <= 1,
                "archive entry {:?} is a hard link (nlink {}): hard links are not supported by unpack",
                r.entry.path,
                r.nlink
            );
        }
        kinds.insert(parts.clone(), &r.entry.kind);
        plan.push((parts, r));
    }

    match fs::read_dir(dir) {
        Ok(mut it) => ensure!(it.next().is_none(), "unpack target {} is not empty: pick a new directory or empty it first", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read unpack target {}", dir.display())),
    }
    fs::create_dir_all(dir).with_context(|| format!("create unpack target {}", dir.display()))?;

    let mut manifest = String::from(
        "# kernel-lab cpio manifest v1: written by unpack, read by repack; edit files freely. \
         Lines here are `kind mode uid gid major minor path`; only a line here can give a path setuid or setgid.\n",
    );
    manifest.push_str(&format!("mtime {}\n", entries.first().map_or(0, |r| r.mtime)));
    manifest.push_str(&format!("gzip {}\n", u8::from(gzip)));
    for (parts, r) in plan {
        let path = real_parent_dirs(dir, &parts)?;
        let e = &r.entry;
        let create_file = |mode: u32, data: &[u8]| -> Result<()> {
            // create_new refuses an existing path, symlinks included, so nothing is written through a link.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .with_context(|| format!("create {}", path.display()))?;
            f.write_all(data).with_context(|| format!("write {}", path.display()))
        };
        match &e.kind {
            Kind::Dir => {
                // An earlier entry may have created it as an implicit parent.
                if fs::symlink_metadata(&path).map(|m| !m.is_dir()).unwrap_or(true) {
                    fs::create_dir(&path).with_context(|| format!("create directory {}", path.display()))?;
                }
                // Keep owner rwx on disk so later entries can be written; the manifest has the real mode.
                fs::set_permissions(&path, fs::Permissions::from_mode((e.mode & DISK_DIR_BITS) | 0o700))
                    .with_context(|| format!("chmod {}", path.display()))?;
            }
            Kind::File(data) => create_file((e.mode & DISK_FILE_BITS) | 0o600, data)?,
            Kind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &path).with_context(|| format!("create symlink {} -> {target}", path.display()))?
            }
            Kind::CharDev { .. } | Kind::BlockDev { .. } | Kind::Fifo | Kind::Socket => create_file(0o600, b"")?,
        }
        let (major, minor) = e.kind.device();
        manifest.push_str(&format!(
            "{} {:04o} {} {} {} {} {}\n",
            e.kind.word(),
            e.mode,
            e.uid,
            e.gid,
            major,
            minor,
            escape(&parts.join("/"))
        ));
    }
    let manifest_path = dir.join(MANIFEST_NAME);
    fs::write(&manifest_path, manifest).with_context(|| format!("write {}", manifest_path.display()))
}

/// Makes sure every parent of `parts` under `dir` is a real directory (never a symlink) and returns
/// the full path of the entry itself.
fn real_parent_dirs(dir: &Path, parts: &[String]) -> Result<PathBuf> {
    let mut path = dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        if i + 1 == parts.len() {
            break;
        }
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{} is not a real directory: refusing to write through it", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&path).with_context(|| format!("create directory {}", path.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("inspect {}", path.display())),
        }
    }
    Ok(path)
}

/// Manifest paths are the last field of a line; escape what would break the line format.
fn escape(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        if c == '%' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).context("truncated %XX escape")?;
            out.push(u8::from_str_radix(hex, 16).with_context(|| format!("bad escape %{hex}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("escaped path is not UTF-8")
}

/// An archive rebuilt by `repack`, with the mtime and compression of the archive it was unpacked from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repacked {
    pub archive: Archive,
    pub mtime: u32,
    pub gzip: bool,
}

struct ManifestEntry {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    major: u32,
    minor: u32,
}

/// Rebuilds an archive from a directory made by `unpack`: what exists on disk is what gets packed;
/// mode (setuid, setgid and sticky included), owner and device numbers come from the manifest, and paths
/// added after unpack get uid/gid 0 and the disk mode without setuid/setgid: anyone who could write into the
/// tree could otherwise plant a root-owned setuid binary in the guest. To ship a new setuid/setgid file,
/// add a line for it to the manifest (e.g. `file 4755 0 0 0 0 bin/su`). Unchanged, `write(&r.archive, r.mtime, r.gzip, ..)` reproduces the original bytes
/// for any archive this module wrote.
pub fn repack(dir: &Path) -> Result<Repacked> {
    let manifest_path = dir.join(MANIFEST_NAME);
    let text = fs::read_to_string(&manifest_path)
        .with_context(|| format!("read {}: repack only works on a directory made by `cpio::unpack`", manifest_path.display()))?;
    let mut mtime = None;
    let mut gzip = None;
    let mut known: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad = || format!("{}:{}: malformed manifest line {line:?}; re-run unpack", manifest_path.display(), n + 1);
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(v) = line.strip_prefix("mtime ") {
            mtime = Some(v.parse::<u32>().with_context(bad)?);
            continue;
        }
        if let Some(v) = line.strip_prefix("gzip ") {
            gzip = Some(v == "1");
            continue;
        }
        let fields: Vec<&str> = line.splitn(7, ' ').collect();
        ensure!(fields.len() == 7, "{}", bad());
        let num = |s: &str| s.parse::<u32>().with_context(bad);
        let entry = ManifestEntry {
            kind: fields[0].to_string(),
            mode: u32::from_str_radix(fields[1], 8).with_context(bad)?,
            uid: num(fields[2])?,
            gid: num(fields[3])?,
            major: num(fields[4])?,
            minor: num(fields[5])?,
        };
        known.insert(unescape(fields[6]).with_context(bad)?, entry);
    }
    let mtime = mtime.with_context(|| format!("{}: no `mtime` line; re-run unpack", manifest_path.display()))?;
    let gzip = gzip.unwrap_or(false);

    let mut archive = Archive::new();
    let mut stack = vec![String::new()];
    while let Some(rel_dir) = stack.pop() {
        let disk_dir = if rel_dir.is_empty() { dir.to_path_buf() } else { dir.join(&rel_dir) };
        let mut names: Vec<String> = Vec::new();
        for item in fs::read_dir(&disk_dir).with_context(|| format!("read directory {}", disk_dir.display()))? {
            let item = item.with_context(|| format!("read directory {}", disk_dir.display()))?;
            let name = item
                .file_name()
                .into_string()
                .map_err(|n| anyhow::anyhow!("{}: file name {n:?} is not UTF-8; rename it", disk_dir.display()))?;
            names.push(name);
        }
        names.sort();
        for name in names {
            if rel_dir.is_empty() && name == MANIFEST_NAME {
                continue;
            }
            let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
            let path = dir.join(&rel);
            let meta = fs::symlink_metadata(&path).with_context(|| format!("inspect {}", path.display()))?;
            let m = known.get(&rel);
            let kind = if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).with_context(|| format!("read symlink {}", path.display()))?;
                let target = target.to_str().with_context(|| format!("symlink {} target is not UTF-8", path.display()))?;
                Kind::Symlink(target.to_string())
            } else if meta.is_dir() {
                stack.push(rel.clone());
                Kind::Dir
            } else if meta.is_file() {
                match m.map(|m| (m.kind.as_str(), m.major, m.minor)) {
                    Some(("char", major, minor)) => Kind::CharDev { major, minor },
                    Some(("block", major, minor)) => Kind::BlockDev { major, minor },
                    Some(("fifo", ..)) => Kind::Fifo,
                    Some(("socket", ..)) => Kind::Socket,
                    _ => Kind::File(fs::read(&path).with_context(|| format!("read {}", path.display()))?),
                }
            } else {
                bail!("{} is neither file, directory nor symlink: remove it or replace it with a placeholder file", path.display());
            };
            // Metadata from the manifest only if the path still has the kind it was unpacked as.
            let (mode, uid, gid) = match m {
                Some(m) if m.kind == kind.word() => (m.mode, m.uid, m.gid),
                _ if matches!(kind, Kind::Symlink(_)) => (0o777, 0, 0),
                _ => (meta.permissions().mode() & 0o7777 & !SET_ID_BITS, 0, 0),
            };
            archive.add(Entry { path: rel, mode, uid, gid, kind })?;
        }
    }
    Ok(Repacked { archive, mtime, gzip })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh scratch directory, removed (with its contents) when dropped.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            TempDir(crate::testutil::scratch(tag))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            // Unpacked trees can contain 0500 directories; make them writable so removal succeeds.
            let _ = std::process::Command::new("chmod").arg("-R").arg("u+rwx").arg(&self.0).status();
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_dir_all("home/user", 0o755, 1000, 1000).unwrap();
        a.add_dir_all("tmp", 0o1777, 0, 0).unwrap();
        a.add_dir_all("root", 0o700, 0, 0).unwrap();
        a.add_file("bin/busybox", 0o4755, 0, 0, b"\x7fELF fake".to_vec()).unwrap();
        a.add_symlink("bin/sh", "/bin/busybox").unwrap();
        a.add_char_dev("dev/console", 0o600, 0, 0, 5, 1).unwrap();
        a.add_char_dev("dev/ttyS0", 0o660, 0, 5, 4, 64).unwrap();
        a.add(Entry { path: "dev/sda".into(), mode: 0o660, uid: 0, gid: 6, kind: Kind::BlockDev { major: 8, minor: 0 } }).unwrap();
        a.add(Entry { path: "run/fifo".into(), mode: 0o644, uid: 0, gid: 0, kind: Kind::Fifo }).unwrap();
        a.add_file("home/user/notes.txt", 0o640, 1000, 1000, b"hello\n".to_vec()).unwrap();
        a
    }

    /// Builds raw newc bytes for names our own writer refuses, to test the reader on hostile input.
    fn raw(entries: &[(&str, u32, &[u8])], trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let push = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(b);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        };
        let mut all: Vec<(&str, u32, &[u8])> = entries.to_vec();
        if trailer {
            all.push((TRAILER, 0, b""));
        }
        for (i, (name, mode, data)) in all.iter().enumerate() {
            let mut h = header(i as u32 + 1, *mode, 0, 0, 1, 0, data.len() as u32, (0, 0), name.len() as u32 + 1).into_bytes();
            h.extend_from_slice(name.as_bytes());
            h.push(0);
            push(&mut out, &h);
            push(&mut out, data);
        }
        out
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn tiny_archive_matches_gen_init_cpio_byte_for_byte() {
        // Expected output of `gen_init_cpio -t 1600000000` for `file /a a.txt 0644 0 0` with "hi\n",
        // checked against the real tool built from linux-6.12.117/usr/gen_init_cpio.c.
        let mut a = Archive::new();
        a.add_file("a", 0o644, 0, 0, b"hi\n".to_vec()).unwrap();
        let bytes = to_bytes(&a, 1_600_000_000, false).unwrap();
        let mut expected = String::new();
        // magic, ino 721, mode 0100644, uid, gid, nlink 1, mtime, size 3, dev 3:1, rdev 0:0, namesize 2, check
        expected.push_str("070701000002D1000081A4000000000000000000000001");
        expected.push_str("5F5E100000000003000000030000000100000000000000000000000200000000");
        let mut expected = expected.into_bytes();
        expected.extend_from_slice(b"a\0hi\n\0");
        expected.extend_from_slice(b"07070100000000000000000000000000000000000000010000000000000000");
        expected.extend_from_slice(b"000000000000000000000000000000000000000B00000000TRAILER!!!\0\0\0\0");
        expected.resize(512, 0);
        assert_eq!(String::from_utf8_lossy(&bytes[..124]), String::from_utf8_lossy(&expected[..124]));
        assert_eq!(bytes, expected);
    }

    #[test]
    fn parents_precede_children_and_inodes_follow_write_order() {
        let mut a = Archive::new();
        a.add_file("a-b", 0o644, 0, 0, vec![]).unwrap();
        a.add_file("a/b", 0o644, 0, 0, vec![]).unwrap();
        a.add_dir_all("a", 0o700, 0, 0).unwrap();
        let got = read(&to_bytes(&a, 0, false).unwrap()).unwrap();
        let order: Vec<(&str, u32)> = got.iter().map(|r| (r.entry.path.as_str(), r.ino)).collect();
        assert_eq!(order, [("a", 721), ("a/b", 722), ("a-b", 723)]);
        // Re-adding "a" as a directory kept the requested mode, not the implicit parent's 0755.
        assert_eq!(got[0].entry.mode, 0o700);
        assert_eq!(got[0].nlink, 2);
    }

    #[test]
    fn output_is_deterministic_and_independent_of_insertion_order() {
        let first = to_bytes(&sample(), 42, false).unwrap();
        assert_eq!(first, to_bytes(&sample(), 42, false).unwrap());
        let mut reversed = Archive::new();
        let entries: Vec<Entry> = sample().entries().cloned().collect();
        for e in entries.into_iter().rev() {
            reversed.add(e).unwrap();
        }
        assert_eq!(first, to_bytes(&reversed, 42, false).unwrap());
        assert_ne!(first, to_bytes(&sample(), 43, false).unwrap(), "mtime must reach the headers");
    }

    #[test]
    fn gzip_is_deterministic_with_zero_mtime_and_no_name() {
        let gz = to_bytes(&sample(), 7, true).unwrap();
        assert_eq!(gz, to_bytes(&sample(), 7, true).unwrap());
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(gz[3], 0, "no FNAME or other flags");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip mtime must be zero");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, to_bytes(&sample(), 7, false).unwrap());
        assert_eq!(read(&gz).unwrap(), read(&plain).unwrap());
    }

    /// Parses `cpio -itvn` lines into (mode, uid, gid, size or "maj,min", name[ -> target]).
    fn gnu_listing(bytes: &[u8]) -> Vec<(String, String, String, String, String)> {
        let mut child = std::process::Command::new("cpio")
            .args(["-itvn", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run GNU cpio: install it with `apt-get install cpio`");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "cpio -itv failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .map(|line| {
                let t: Vec<&str> = line.split_whitespace().collect();
                let dev = t[0].starts_with('c') || t[0].starts_with('b');
                let (size, rest) = if dev { (format!("{}{}", t[4], t[5]), &t[6..]) } else { (t[4].to_string(), &t[5..]) };
                // Skip the three date tokens ("Jan  1  1970").
                (t[0].to_string(), t[2].to_string(), t[3].to_string(), size, rest[3..].join(" "))
            })
            .collect()
    }

    #[test]
    fn gnu_cpio_lists_names_modes_owners_and_devices() {
        let rows = gnu_listing(&to_bytes(&sample(), 0, false).unwrap());
        let s = |a: &str, b: &str, c: &str, d: &str, e: &str| (a.into(), b.into(), c.into(), d.into(), e.into());
        let expected: Vec<(String, String, String, String, String)> = vec![
            s("drwxr-xr-x", "0", "0", "0", "bin"),
            s("-rwsr-xr-x", "0", "0", "9", "bin/busybox"),
            s("lrwxrwxrwx", "0", "0", "13", "bin/sh -> /bin/busybox"),
            s("drwxr-xr-x", "0", "0", "0", "dev"),
            s("crw-------", "0", "0", "5,1", "dev/console"),
            s("brw-rw----", "0", "6", "8,0", "dev/sda"),
            s("crw-rw----", "0", "5", "4,64", "dev/ttyS0"),
            s("drwxr-xr-x", "0", "0", "0", "home"),
            s("drwxr-xr-x", "1000", "1000", "0", "home/user"),
            s("-rw-r-----", "1000", "1000", "6", "home/user/notes.txt"),
            s("drwx------", "0", "0", "0", "root"),
            s("drwxr-xr-x", "0", "0", "0", "run"),
            s("prw-r--r--", "0", "0", "0", "run/fifo"),
            s("drwxrwxrwt", "0", "0", "0", "tmp"),
        ];
        assert_eq!(rows, expected);
    }

    #[test]
    fn list_shows_modes_devices_and_links() {
        let text = list(&to_bytes(&sample(), 0, true).unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 14);
        assert_eq!(lines[1], "-rwsr-xr-x   1 0      0              9 bin/busybox");
        assert_eq!(lines[2], "lrwxrwxrwx   1 0      0             12 bin/sh -> /bin/busybox");
        assert_eq!(lines[4], "crw-------   1 0      0           5, 1 dev/console");
        assert_eq!(lines[13], "drwxrwxrwt   2 0      0              0 tmp");
    }

    #[test]
    fn add_refuses_bad_names_and_paths_under_non_directories() {
        let mut a = Archive::new();
        let long = "x".repeat(PATH_MAX);
        assert!(err_text(a.add_dir_all(&long, 0o755, 0, 0)).contains("PATH_MAX"));
        assert!(err_text(a.add_dir_all("a\0b", 0o755, 0, 0)).contains("NUL"));
        assert!(err_text(a.add_dir_all("/etc", 0o755, 0, 0)).contains("absolute"));
        assert!(err_text(a.add_dir_all("a/../b", 0o755, 0, 0)).contains("'..'"));
        a.add_symlink("x", "/etc").unwrap();
        let e = err_text(a.add_file("x/passwd", 0o644, 0, 0, vec![]));
        assert!(e.contains("\"x\" is a symlink"), "{e}");
        a.add_file("d/f", 0o644, 0, 0, vec![]).unwrap();
        assert!(err_text(a.add_file("d", 0o644, 0, 0, vec![])).contains("non-empty directory"));
        // The longest name the kernel accepts still works.
        a.add_dir_all(&"y".repeat(PATH_MAX - 1), 0o755, 0, 0).unwrap();
    }

    #[test]
    fn unpack_then_repack_reproduces_the_same_bytes() {
        for gzip in [false, true] {
            let tmp = TempDir::new("cpio-roundtrip");
            let dir = tmp.0.join("tree");
            let bytes = to_bytes(&sample(), 1_234_567, gzip).unwrap();
            unpack(&bytes, &dir).unwrap();
            assert_eq!(fs::read(dir.join("home/user/notes.txt")).unwrap(), b"hello\n");
            assert_eq!(fs::read_link(dir.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
            assert!(fs::metadata(dir.join("dev/console")).unwrap().is_file(), "device placeholder");
            let r = repack(&dir).unwrap();
            assert_eq!((r.mtime, r.gzip), (1_234_567, gzip));
            assert_eq!(to_bytes(&r.archive, r.mtime, r.gzip).unwrap(), bytes);
        }
    }

    #[test]
    fn repack_takes_edits_from_disk() {
        let tmp = TempDir::new("cpio-edit");
        let dir = tmp.0.join("tree");
        unpack(&to_bytes(&sample(), 0, false).unwrap(), &dir).unwrap();
        fs::write(dir.join("home/user/notes.txt"), "changed\n").unwrap();
        fs::remove_file(dir.join("run/fifo")).unwrap();
        fs::write(dir.join("new.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.join("new.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        let r = repack(&dir).unwrap();
        let notes = r.archive.get("home/user/notes.txt").unwrap();
        assert_eq!((notes.mode, notes.uid, &notes.kind), (0o640, 1000, &Kind::File(b"changed\n".to_vec())));
        assert!(r.archive.get("run/fifo").is_none());
        let new = r.archive.get("new.sh").unwrap();
        assert_eq!((new.mode, new.uid, new.gid), (0o750, 0, 0));
        assert_eq!(r.archive.get("dev/ttyS0").unwrap().kind, Kind::CharDev { major: 4, minor: 64 });
        assert!(r.archive.get(MANIFEST_NAME).is_none());
    }

    #[test]
    fn unpack_keeps_sticky_bits_on_disk_without_opening_the_tree_to_other_users() {
        let tmp = TempDir::new("cpio-sticky");
        let dir = tmp.0.join("tree");
        let mut a = sample();
        a.add_file("tmp/shared.txt", 0o666, 0, 0, b"x".to_vec()).unwrap();
        a.add_dir_all("var/spool", 0o3777, 0, 0).unwrap();
        let bytes = to_bytes(&a, 0, false).unwrap();
        unpack(&bytes, &dir).unwrap();
        let disk_mode = |rel: &str| fs::symlink_metadata(dir.join(rel)).unwrap().permissions().mode() & 0o7777;
        // The archive's 01777 /tmp must not become a world-writable, non-sticky directory on the host.
        assert_eq!(disk_mode("tmp"), 0o1755);
        assert_eq!(disk_mode("var/spool"), 0o1755, "setgid is dropped on disk, sticky kept, group/other write dropped");
        assert_eq!(disk_mode("tmp/shared.txt"), 0o644);
        assert_eq!(disk_mode("bin/busybox"), 0o755, "no setuid file owned by the user on the host");
        let manifest = fs::read_to_string(dir.join(MANIFEST_NAME)).unwrap();
        assert!(manifest.lines().any(|l| l == "dir 1777 0 0 0 0 tmp"), "{manifest}");
        assert!(manifest.lines().any(|l| l == "dir 3777 0 0 0 0 var/spool"), "{manifest}");
        let r = repack(&dir).unwrap();
        assert_eq!(r.archive.get("tmp").unwrap().mode, 0o1777);
        assert_eq!(r.archive.get("var/spool").unwrap().mode, 0o3777);
        assert_eq!(r.archive.get("tmp/shared.txt").unwrap().mode, 0o666);
        assert_eq!(r.archive.get("bin/busybox").unwrap().mode, 0o4755);
        assert_eq!(to_bytes(&r.archive, r.mtime, r.gzip).unwrap(), bytes);
    }

    #[test]
    fn repack_strips_setuid_and_setgid_from_paths_the_manifest_does_not_know() {
        let tmp = TempDir::new("cpio-suid");
        let dir = tmp.0.join("tree");
        unpack(&to_bytes(&sample(), 0, false).unwrap(), &dir).unwrap();
        let plant = |rel: &str, mode: u32| {
            let path = dir.join(rel);
            if !path.exists() {
                fs::write(&path, "#!/bin/sh\n").unwrap();
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            // The kernel may silently drop setgid for a group we are not in; setuid on our own file always sticks.
            let on_disk = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(on_disk & 0o4000, mode & 0o4000, "{rel}: setuid did not reach the disk");
        };
        plant("tmp/evil", 0o6755);
        plant("home/user/notes.txt", 0o4777);
        fs::create_dir(dir.join("shared")).unwrap();
        fs::set_permissions(dir.join("shared"), fs::Permissions::from_mode(0o3777)).unwrap();
        // The documented way to ship a new setuid file: give it a manifest line.
        plant("bin/su", 0o755);
        let mut manifest = fs::read_to_string(dir.join(MANIFEST_NAME)).unwrap();
        manifest.push_str("file 4750 0 0 0 0 bin/su\n");
        fs::write(dir.join(MANIFEST_NAME), manifest).unwrap();

        let r = repack(&dir).unwrap();
        let evil = r.archive.get("tmp/evil").unwrap();
        assert_eq!((evil.mode, evil.uid, evil.gid), (0o755, 0, 0), "a root-owned setuid file must not appear from disk");
        assert_eq!(r.archive.get("shared").unwrap().mode, 0o1777, "sticky kept, setgid stripped");
        assert_eq!(r.archive.get("home/user/notes.txt").unwrap().mode, 0o640, "known paths take the manifest mode");
        assert_eq!(r.archive.get("bin/busybox").unwrap().mode, 0o4755);
        assert_eq!(r.archive.get("bin/su").unwrap().mode, 0o4750);
    }

    #[test]
    fn malformed_archives_fail_clearly() {
        let good = to_bytes(
            &{
                let mut a = Archive::new();
                a.add_file("a", 0o644, 0, 0, b"hi\n".to_vec()).unwrap();
                a
            },
            0,
            false,
        )
        .unwrap();
        let mut bad_magic = good.clone();
        bad_magic[..6].copy_from_slice(b"070707");
        assert!(err_text(read(&bad_magic)).contains("bad magic \"070707\" at offset 0"));
        assert_eq!(err_text(read(&good[..113])), "truncated archive: entry a needs 3 bytes at offset 112, file has 113");
        let no_trailer = raw(&[("a", S_IFREG | 0o644, b"hi\n")], false);
        assert!(err_text(read(&no_trailer)).contains("without a TRAILER!!! entry"));
        let mut bad_hex = good.clone();
        bad_hex[14] = b'G';
        assert!(err_text(read(&bad_hex)).contains("expected 8 hex digits"));
        let mut bad_pad = good.clone();
        bad_pad[115] = b'x';
        assert!(err_text(read(&bad_pad)).contains("non-zero padding at offset 115"));
    }

    #[test]
    fn unpack_refuses_traversal_and_writes_nothing_outside() {
        let tmp = TempDir::new("cpio-evil");
        let outside = tmp.0.join("outside");
        fs::create_dir(&outside).unwrap();
        let link_target = outside.to_str().unwrap().to_string();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw(&[("../evil", S_IFREG | 0o644, b"x")], true), "contains '..'"),
            (raw(&[("/evil", S_IFREG | 0o644, b"x")], true), "is absolute"),
            (
                raw(&[("x", S_IFLNK | 0o777, link_target.as_bytes()), ("x/passwd", S_IFREG | 0o644, b"pwned")], true),
                "which the archive made a symlink",
            ),
        ];
        for (i, (bytes, needle)) in cases.iter().enumerate() {
            let dir = tmp.0.join(format!("tree{i}"));
            let e = err_text(unpack(bytes, &dir));
            assert!(e.contains(needle), "case {i}: {e}");
            assert!(!dir.exists(), "case {i}: nothing may be written for a refused archive");
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!tmp.0.join("evil").exists());
    }

    #[test]
    fn unpack_refuses_a_non_empty_directory() {
        let tmp = TempDir::new("cpio-nonempty");
        fs::write(tmp.0.join("keep"), "mine").unwrap();
        let e = err_text(unpack(&to_bytes(&sample(), 0, false).unwrap(), &tmp.0));
        assert!(e.contains("is not empty"), "{e}");
        assert_eq!(fs::read_dir(&tmp.0).unwrap().count(), 1);
    }

    #[test]
    fn write_file_replaces_atomically() {
        let tmp = TempDir::new("cpio-write-file");
        let path = tmp.0.join("rootfs.cpio");
        fs::write(&path, "old").unwrap();
        write_file(&sample(), 5, false, &path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), to_bytes(&sample(), 5, false).unwrap());
        assert_eq!(fs::read_dir(&tmp.0).unwrap().count(), 1, "no temporary file left behind");
    }
}
