//! Kernel patches for recipes: a strict unified-diff applier and the patched copy of a pristine source tree.
//!
//! Applying is `git apply`-like: every context and removed line must match exactly (no fuzz), but a
//! hunk may sit at an offset from the line its header states (the nearest match wins). All patches of
//! a tree are applied in memory first, in order, and files are written only if every hunk applied, so
//! a patch that fails leaves the tree as it was.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::Digest as _;
use xshell::cmd;

use crate::{download, extract, hash, layout, progress};

/// Written last into a patched tree: the pristine tree's stamps and each patch's sha256 and name.
pub const STAMP: &str = ".kernel-lab-patched";

/// First line of every stamp: change it when applying changes meaning, so older trees are redone.
const STAMP_VERSION: &str = "kernel-lab patched tree v1";

/// Stamp files at the top of a tree share this prefix (the extracted tree's is `extract::STAMP`).
const STAMP_PREFIX: &str = ".kernel-lab-";

/// Permission bits of a file a patch creates (git's `new file mode` lines are otherwise ignored).
const NEW_FILE_MODE: u32 = 0o644;

/// Makes `dest` a copy of the pristine source tree `pristine` with `patches` (display name, path)
/// applied in order. The pristine tree is only read.
///
/// Reuses `dest` when its stamp says it was made from the same pristine tree (its `.kernel-lab-*`
/// stamps) and the same patches (names and sha256): returns `Ok(false)` then. Otherwise copies the
/// tree (a real copy, so a hand edit of the patched tree never reaches the pristine one) into a
/// temporary sibling, patches it, stamps it and swaps it into place; returns `Ok(true)`.
/// Runs patching into the same `dest` take turns through a lock file `.NAME.lock` next to it.
pub fn patched_tree(pristine: &Path, dest: &Path, patches: &[(String, PathBuf)]) -> Result<bool> {
    let loaded = load(patches)?;
    let pristine_stamps = tree_stamps(pristine)?;
    let stamp = stamp_text(&pristine_stamps, &loaded);
    let stamp_path = dest.join(STAMP);
    let stamped = || fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if stamped() {
        return Ok(false);
    }
    check_apart(pristine, dest)?;
    let lock = layout::hidden_sibling(dest, "lock");
    let _lock = download::lock_path(&lock, &format!("patching {}", dest.display()))?;
    // The run we waited for may have just made the same tree.
    if stamped() {
        return Ok(false);
    }
    // Only the holder of the lock makes temporaries of `dest`, so any found now are a killed run's.
    layout::remove_abandoned_siblings(dest)?;

    let tmp = layout::tmp_sibling(dest);
    let label = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bar = progress::spinner(&label);
    let made = (|| -> Result<()> {
        bar.set_message(format!("copy {}", pristine.display()));
        copy_tree(pristine, &tmp)?;
        // Extraction swaps in a tree with another stamp: if that happened mid-copy, the copy is a mix.
        if tree_stamps(pristine)? != pristine_stamps {
            bail!("{} changed while it was copied (another run extracted it again): run the command again", pristine.display());
        }
        bar.set_message(format!("apply {} patches", loaded.len()));
        apply_loaded(&tmp, &loaded)?;
        // The stamp goes in last: a tree without it is never trusted.
        fs::write(tmp.join(STAMP), &stamp).with_context(|| format!("write the stamp in {}", tmp.display()))?;
        layout::replace_dir(&tmp, dest)
    })();
    bar.finish_and_clear();
    if let Err(err) = made {
        let _ = fs::remove_dir_all(&tmp);
        return Err(err.context(format!("make the patched tree {} from {}", dest.display(), pristine.display())));
    }
    Ok(true)
}

/// Short name of a list of patches: the first 12 hex digits of a sha256 over their names and
/// contents, for naming the patched tree `linux-<version>+<digest>`.
pub fn digest(patches: &[(String, PathBuf)]) -> Result<String> {
    let mut hasher = sha2::Sha256::new();
    for (name, path) in patches {
        let bytes = read_patch(name, path)?;
        // Lengths first, so that no two different lists hash the same byte stream.
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hash::hex(&hasher.finalize())[..12].to_string())
}

/// Applies `patches` (display name, path) in order to the tree at `tree`, all or nothing: every
/// patched file's new contents is computed first (later patches see earlier results), and files
/// are written only when everything applied. Each file is replaced through a temporary sibling and
/// a rename, keeping its mode, so a hardlink to the original keeps the old contents. (A write that
/// fails, say on a full disk, can still leave some files patched: `patched_tree` discards that copy.)
#[cfg(test)]
pub fn apply(tree: &Path, patches: &[(String, PathBuf)]) -> Result<()> {
    apply_loaded(tree, &load(patches)?)
}

/// A patch file read and parsed.
#[derive(Debug)]
struct Patch {
    /// How messages and the stamp name it, e.g. `0001-x.patch`.
    name: String,
    sha256: String,
    /// Its changes in the order they appear; one file may appear more than once.
    files: Vec<FilePatch>,
}

/// What a file patch does to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Modify,
    /// `--- /dev/null`: the file must not exist.
    Create,
    /// `+++ /dev/null`: the hunks must remove every line of the file.
    Delete,
}

/// The changes of one patch to one file.
#[derive(Debug)]
struct FilePatch {
    /// Relative to the top of the tree (after stripping `a/`, `b/`); never absolute, never with `..`.
    path: String,
    change: Change,
    hunks: Vec<Hunk>,
}

/// One `@@ -a,b +c,d @@` hunk.
#[derive(Debug)]
struct Hunk {
    /// `@@ -a,b +c,d @@` as the patch writes it (without the function name after it), for messages.
    header: String,
    old_start: usize,
    old_count: usize,
    new_count: usize,
    lines: Vec<HunkLine>,
}

/// Which side of a hunk a line belongs to: ` ` context (both), `-` removed (old), `+` added (new).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Both,
    Old,
    New,
}

#[derive(Debug)]
struct HunkLine {
    side: Side,
    /// The line with its `\n`, unless `\ No newline at end of file` followed it.
    text: Vec<u8>,
}

impl Hunk {
    fn old_lines(&self) -> Vec<&[u8]> {
        self.lines.iter().filter(|l| l.side != Side::New).map(|l| &l.text[..]).collect()
    }

    fn new_lines(&self) -> Vec<&[u8]> {
        self.lines.iter().filter(|l| l.side != Side::Old).map(|l| &l.text[..]).collect()
    }

    /// Index of the first old line the hunk replaces, as its header states. `-a,0` means "after
    /// line a", so it is the index a; otherwise the line a has index a - 1.
    fn stated_index(&self) -> usize {
        if self.old_count == 0 {
            self.old_start
        } else {
            self.old_start - 1
        }
    }

    fn has_trailing_context(&self) -> bool {
        self.lines.last().is_some_and(|l| l.side == Side::Both)
    }
}

fn load(patches: &[(String, PathBuf)]) -> Result<Vec<Patch>> {
    patches
        .iter()
        .map(|(name, path)| {
            let bytes = read_patch(name, path)?;
            let files = parse(name, path, &bytes)?;
            Ok(Patch { name: name.clone(), sha256: hash::sha256_bytes(&bytes), files })
        })
        .collect()
}

fn read_patch(name: &str, path: &Path) -> Result<Vec<u8>> {
    // A name is one line of the stamp.
    if name.is_empty() || name.chars().any(char::is_control) {
        bail!("patch name {name:?} of {} must be one line of printable text: rename it in the recipe", path.display());
    }
    fs::read(path).with_context(|| format!("read patch {name} from {}: check the patch's path in the recipe", path.display()))
}

/// Parses a unified diff (`git format-patch`, `git diff`, `diff -u`): the file sections in order.
/// Text around them (commit message, diffstat, signature) is skipped.
fn parse(name: &str, path: &Path, bytes: &[u8]) -> Result<Vec<FilePatch>> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if bytes.ends_with(b"\n") {
        lines.pop();
    }
    let mut p = Parser { name, path, lines, at: 0 };
    let mut files = Vec::new();
    while let Some(line) = p.peek() {
        if line.starts_with(b"diff --git ") {
            files.extend(p.git_section()?);
        } else if line.starts_with(b"--- ") && p.line(p.at + 1).is_some_and(|l| l.starts_with(b"+++ ")) {
            files.push(p.plain_section()?);
        } else if is_binary(line) {
            return Err(p.binary_error());
        } else if line.starts_with(b"@@ -") {
            return Err(p.error(p.at, "hunk without a file header: `--- a/PATH` and `+++ b/PATH` must come before it"));
        } else {
            p.at += 1;
        }
    }
    if files.is_empty() {
        bail!("patch {name}: {}: no file changes found: is it a unified diff (`git format-patch`, `diff -u`)?", path.display());
    }
    Ok(files)
}

struct Parser<'a> {
    name: &'a str,
    path: &'a Path,
    lines: Vec<&'a [u8]>,
    /// Index of the next line to read; messages say `index + 1`.
    at: usize,
}

impl<'a> Parser<'a> {
    /// An error at line `index + 1` of the patch file.
    fn error(&self, index: usize, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("patch {}: {}:{}: {msg}", self.name, self.path.display(), index + 1)
    }

    fn binary_error(&self) -> anyhow::Error {
        self.error(self.at, "binary patches are not supported: make the change a text diff, or leave binary files out of the patch")
    }

    fn line(&self, index: usize) -> Option<&'a [u8]> {
        self.lines.get(index).copied()
    }

    fn peek(&self) -> Option<&'a [u8]> {
        self.line(self.at)
    }

    /// A `diff --git` section: extended headers, then `---`/`+++` and hunks, or none of them for an
    /// empty file created or deleted, or a mode change (which is ignored: returns None).
    fn git_section(&mut self) -> Result<Option<FilePatch>> {
        let start = self.at;
        let line: &'a [u8] = self.lines[start];
        let names = &line[b"diff --git ".len()..];
        self.at += 1;
        let mut change = Change::Modify;
        while let Some(line) = self.peek() {
            if line.starts_with(b"new file mode ") {
                change = Change::Create;
            } else if line.starts_with(b"deleted file mode ") {
                change = Change::Delete;
            } else if [&b"index "[..], b"old mode ", b"new mode ", b"dissimilarity index "].iter().any(|k| line.starts_with(k)) {
                // Modes are ignored; `index` hashes name blobs, which the context lines check better.
            } else if [&b"rename from "[..], b"rename to ", b"copy from ", b"copy to ", b"similarity index "]
                .iter()
                .any(|k| line.starts_with(k))
            {
                return Err(self.error(
                    self.at,
                    "renames and copies are not supported: write them as a deletion and a new file (`git format-patch --no-renames`)",
                ));
            } else if is_binary(line) {
                return Err(self.binary_error());
            } else if line.starts_with(b"--- ") && self.line(self.at + 1).is_some_and(|l| l.starts_with(b"+++ ")) {
                let file = self.plain_section()?;
                if file.change != change {
                    return Err(
                        self.error(start, "the `new file mode`/`deleted file mode` lines disagree with the /dev/null in `---`/`+++`")
                    );
                }
                return Ok(Some(file));
            } else {
                break;
            }
            self.at += 1;
        }
        if change == Change::Modify {
            return Ok(None);
        }
        let path = self.git_header_path(start, names)?;
        Ok(Some(FilePatch { path, change, hunks: Vec::new() }))
    }

    /// The file named by `diff --git a/NAME b/NAME` (needed only when no `---`/`+++` follow).
    fn git_header_path(&self, index: usize, names: &[u8]) -> Result<String> {
        let pair = if names.starts_with(b"\"") {
            let (old, used) = unquote(names).ok_or_else(|| self.error(index, "malformed quoted file name"))?;
            let rest = names[used..].strip_prefix(b" ").ok_or_else(|| self.error(index, "malformed `diff --git` line"))?;
            let new = if rest.starts_with(b"\"") { unquote(rest).map(|(n, _)| n) } else { Some(rest.to_vec()) };
            new.map(|new| (old, new))
        } else {
            // Unquoted names may contain spaces: the split is where both halves name the same file.
            (0..names.len()).filter(|&i| names[i] == b' ').map(|i| (names[..i].to_vec(), names[i + 1..].to_vec())).find(|(old, new)| {
                let strip = |n: &[u8]| n.iter().position(|&b| b == b'/').map(|s| n[s..].to_vec());
                strip(old).is_some() && strip(old) == strip(new)
            })
        };
        let (old, new) = pair.ok_or_else(|| self.error(index, "cannot tell the file name from the `diff --git` line"))?;
        let (old, new) = (self.tree_path(index, &old)?, self.tree_path(index, &new)?);
        if old != new {
            return Err(self.error(index, format!("renames are not supported ({old} -> {new}): write them as a deletion and a new file")));
        }
        Ok(old)
    }

    /// `--- OLD` and `+++ NEW` followed by hunks.
    fn plain_section(&mut self) -> Result<FilePatch> {
        let start = self.at;
        let old = self.header_path(start, &self.lines[start][4..])?;
        let new = self.header_path(start + 1, &self.lines[start + 1][4..])?;
        self.at += 2;
        let (path, change) = match (old, new) {
            (None, None) => return Err(self.error(start, "both `---` and `+++` are /dev/null")),
            (None, Some(new)) => (new, Change::Create),
            (Some(old), None) => (old, Change::Delete),
            (Some(old), Some(new)) if old == new => (new, Change::Modify),
            (Some(old), Some(new)) => {
                return Err(
                    self.error(start, format!("renames are not supported ({old} -> {new}): write them as a deletion and a new file"))
                )
            }
        };
        let mut hunks: Vec<Hunk> = Vec::new();
        while self.peek().is_some_and(|l| l.starts_with(b"@@ ")) {
            let index = self.at;
            let hunk = self.hunk()?;
            if let Some(prev) = hunks.last() {
                if hunk.stated_index() < prev.stated_index() + prev.old_count {
                    return Err(
                        self.error(index, format!("hunk {} overlaps or comes before {}: hunks must be in order", hunk.header, prev.header))
                    );
                }
            }
            let wrong_side = match change {
                Change::Create => hunk.old_count > 0,
                Change::Delete => hunk.new_count > 0,
                Change::Modify => false,
            };
            if wrong_side {
                return Err(self.error(
                    index,
                    format!("hunk {} of a file the patch creates or deletes must be all `+` or all `-` lines", hunk.header),
                ));
            }
            hunks.push(hunk);
        }
        if hunks.is_empty() {
            return Err(self.error(start, format!("{path}: a `---`/`+++` header without hunks")));
        }
        Ok(FilePatch { path, change, hunks })
    }

    /// The tree path of a `---`/`+++` header, or None for /dev/null. A tab ends the name (`diff -u`
    /// puts the timestamp after one).
    fn header_path(&self, index: usize, raw: &[u8]) -> Result<Option<String>> {
        let raw = raw.split(|&b| b == b'\t').next().unwrap_or_default();
        let name = if raw.starts_with(b"\"") {
            unquote(raw).ok_or_else(|| self.error(index, "malformed quoted file name"))?.0
        } else {
            raw.to_vec()
        };
        if name == b"/dev/null" {
            return Ok(None);
        }
        self.tree_path(index, &name).map(Some)
    }

    /// Checks a file name of the patch and strips its first component (`-p1`: `a/`, `b/`).
    fn tree_path(&self, index: usize, name: &[u8]) -> Result<String> {
        let name = std::str::from_utf8(name).map_err(|_| self.error(index, format!("file name {:?} is not UTF-8", lossy(name))))?;
        if name.starts_with('/') {
            return Err(self.error(index, format!("absolute path {name:?}: a patch may only change files inside the tree")));
        }
        if name.split('/').any(|c| c == "..") {
            return Err(self.error(index, format!("path {name:?} leaves the tree through `..`")));
        }
        let Some((_, path)) = name.split_once('/') else {
            return Err(self.error(index, format!("path {name:?} has no leading directory (a/, b/) to strip: patches apply with -p1")));
        };
        if path.split('/').any(|c| c.is_empty() || c == ".") {
            return Err(self.error(index, format!("path {name:?} is not a plain relative file path (empty or `.` components)")));
        }
        Ok(path.to_string())
    }

    /// One hunk; its line counts must match its header exactly.
    fn hunk(&mut self) -> Result<Hunk> {
        let start = self.at;
        let (header, old_start, old_count, new_count) = hunk_header(self.lines[start]).ok_or_else(|| {
            self.error(start, format!("malformed hunk header {:?}: expected `@@ -a,b +c,d @@`", lossy(self.lines[start])))
        })?;
        if (old_count == 0 && new_count == 0) || (old_start == 0 && old_count > 0) {
            return Err(self.error(start, format!("malformed hunk header {header}")));
        }
        let miscounted = |p: &Self, what: String| {
            p.error(start, format!("hunk {header} does not match its line counts ({old_count} old, {new_count} new): {what}"))
        };
        self.at += 1;
        let (mut old_left, mut new_left) = (old_count, new_count);
        let mut lines: Vec<HunkLine> = Vec::new();
        loop {
            let Some(line) = self.peek() else {
                if old_left == 0 && new_left == 0 {
                    break;
                }
                let what = format!("the patch ends after {} old and {} new lines", old_count - old_left, new_count - new_left);
                return Err(miscounted(self, what));
            };
            if line.starts_with(b"\\") {
                // `\ No newline at end of file` (in whatever language diff spoke) is about the line before.
                match lines.last_mut() {
                    Some(last) if last.text.ends_with(b"\n") => {
                        last.text.pop();
                    }
                    _ => return Err(self.error(self.at, "`\\ No newline at end of file` does not follow a hunk line")),
                }
                self.at += 1;
                continue;
            }
            if old_left == 0 && new_left == 0 {
                break;
            }
            let (side, text) = match line.first() {
                Some(b' ') => (Side::Both, &line[1..]),
                Some(b'-') => (Side::Old, &line[1..]),
                Some(b'+') => (Side::New, &line[1..]),
                // An empty context line: `diff --suppress-blank-empty`, or an editor that strips trailing spaces.
                None => (Side::Both, line),
                Some(_) => {
                    let what = format!(
                        "line {} is not a hunk line, after {} old and {} new lines",
                        self.at + 1,
                        old_count - old_left,
                        new_count - new_left
                    );
                    return Err(miscounted(self, what));
                }
            };
            let (takes_old, takes_new) = (side != Side::New, side != Side::Old);
            if (takes_old && old_left == 0) || (takes_new && new_left == 0) {
                let what = format!("line {} is one {} line too many", self.at + 1, if takes_old && old_left == 0 { "old" } else { "new" });
                return Err(miscounted(self, what));
            }
            old_left -= usize::from(takes_old);
            new_left -= usize::from(takes_new);
            lines.push(HunkLine { side, text: [text, b"\n"].concat() });
            self.at += 1;
        }
        // A line that still looks like part of the hunk means the header counts too few lines. The
        // exceptions: the next file's header and `git format-patch`'s signature separator `-- `.
        if let Some(next) = self.peek() {
            let file_header = next.starts_with(b"--- ") && self.line(self.at + 1).is_some_and(|l| l.starts_with(b"+++ "));
            if matches!(next.first(), Some(b' ' | b'+' | b'-')) && !file_header && next != b"-- " {
                return Err(miscounted(self, format!("line {} is one more hunk line", self.at + 1)));
            }
        }
        let hunk = Hunk { header, old_start, old_count, new_count, lines };
        for side in [hunk.old_lines(), hunk.new_lines()] {
            if side.iter().rev().skip(1).any(|l| !l.ends_with(b"\n")) {
                return Err(
                    self.error(start, format!("hunk {}: `\\ No newline at end of file` follows a line that is not the last", hunk.header))
                );
            }
        }
        Ok(hunk)
    }
}

fn is_binary(line: &[u8]) -> bool {
    line.starts_with(b"GIT binary patch") || (line.starts_with(b"Binary files ") && line.ends_with(b" differ"))
}

/// `@@ -a[,b] +c[,d] @@ ...` -> (`@@ -a,b +c,d @@` as written, a, b, d); a missing count is 1.
fn hunk_header(line: &[u8]) -> Option<(String, usize, usize, usize)> {
    let rest = line.strip_prefix(b"@@ -")?;
    let end = rest.windows(3).position(|w| w == b" @@")?;
    let ranges = std::str::from_utf8(&rest[..end]).ok()?;
    let (old, new) = ranges.split_once(" +")?;
    let range = |s: &str| -> Option<(usize, usize)> {
        let number = |n: &str| if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) { n.parse().ok() } else { None };
        match s.split_once(',') {
            Some((start, count)) => Some((number(start)?, number(count)?)),
            None => Some((number(s)?, 1)),
        }
    };
    let ((old_start, old_count), (_, new_count)) = (range(old)?, range(new)?);
    Some((format!("@@ -{ranges} @@"), old_start, old_count, new_count))
}

/// A git C-style quoted name at the start of `s` (`"a/t\303\251st"`): its bytes and how many bytes
/// of `s` it used, or None if malformed.
fn unquote(s: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut i = 1;
    loop {
        match *s.get(i)? {
            b'"' => return Some((out, i + 1)),
            b'\\' => {
                let c = *s.get(i + 1)?;
                i += 2;
                out.push(match c {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'a' => 7,
                    b'b' => 8,
                    b'f' => 12,
                    b'v' => 11,
                    b'"' | b'\\' => c,
                    b'0'..=b'3' => {
                        let digits = s.get(i..i + 2)?;
                        if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                            return None;
                        }
                        i += 2;
                        (c - b'0') * 64 + (digits[0] - b'0') * 8 + (digits[1] - b'0')
                    }
                    _ => return None,
                });
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// A file's lines, each with its `\n` (only the last may lack one).
fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

/// A line for a message: quoted, without its newline, and saying so if it has none.
fn show(line: &[u8]) -> String {
    match line.strip_suffix(b"\n") {
        Some(text) => format!("{:?}", lossy(text)),
        None => format!("{:?} (no newline at end of file)", lossy(line)),
    }
}

/// Applies the hunks of one file patch, in order, to `old`: the new contents.
///
/// Each hunk goes where its old lines match exactly, nearest to its stated line shifted by the
/// previous hunk's offset, and after the previous hunk. Like `git apply`, a hunk that starts at line
/// 1 must match at the start of the file and one without trailing context at its end (so a new last
/// line without a newline always ends the file).
fn apply_hunks(old: &[u8], hunks: &[Hunk]) -> Result<Vec<u8>> {
    let lines = split_lines(old);
    let mut out = Vec::with_capacity(old.len() + 4096);
    // Lines before `done` are copied or replaced already.
    let mut done = 0;
    let mut offset = 0isize;
    for (i, hunk) in hunks.iter().enumerate() {
        let (old_side, new_side) = (hunk.old_lines(), hunk.new_lines());
        let len = old_side.len();
        let stated = hunk.stated_index();
        let (at_start, at_end) = (stated == 0, !hunk.has_trailing_context());
        let anchored = |pos: usize| pos + len <= lines.len() && (!at_start || pos == 0) && (!at_end || pos + len == lines.len());
        let want = stated.saturating_add_signed(offset).min(lines.len());
        let Some(pos) = by_distance(want, lines.len()).find(|&p| p >= done && anchored(p) && lines[p..p + len] == old_side[..]) else {
            let fallback = if at_start {
                0
            } else if at_end {
                lines.len().saturating_sub(len)
            } else {
                want
            };
            let pos = near_miss(&lines, &old_side, want, anchored).unwrap_or(fallback);
            bail!("hunk {} ({}) does not apply: {}", i + 1, hunk.header, mismatch(&lines, &old_side, pos, done, i));
        };
        out.extend(lines[done..pos].concat());
        out.extend(new_side.concat());
        done = pos + len;
        offset = pos as isize - stated as isize;
    }
    out.extend(lines[done..].concat());
    Ok(out)
}

/// Where to show why a hunk with old lines `old_side` does not apply: among the `allowed`
/// positions, the one whose lines match longest from the top, then the one with the most lines in
/// common, then the nearest to `want`; None when no position has a line in common. Its first
/// differing line is then likely the one that changed (the patch's, or a line added upstream).
fn near_miss(lines: &[&[u8]], old_side: &[&[u8]], want: usize, allowed: impl Fn(usize) -> bool) -> Option<usize> {
    let score = |pos: usize| {
        let same: Vec<bool> = old_side.iter().zip(&lines[pos..]).map(|(a, b)| a == b).collect();
        (same.iter().take_while(|&&s| s).count(), same.iter().filter(|&&s| s).count())
    };
    let mut best: Option<((usize, usize), usize)> = None;
    for pos in by_distance(want, lines.len()).filter(|&p| allowed(p)) {
        let s = score(pos);
        if s > (0, 0) && best.is_none_or(|(b, _)| s > b) {
            best = Some((s, pos));
        }
    }
    best.map(|(_, pos)| pos)
}

/// The positions `0..=max`, nearest to `want` first (later before earlier at equal distance).
fn by_distance(want: usize, max: usize) -> impl Iterator<Item = usize> {
    (0..=max).flat_map(move |d| [want.checked_add(d).filter(|&p| p <= max), want.checked_sub(d).filter(|_| d > 0)]).flatten()
}

/// Why a hunk whose old lines are `old_side` does not apply at `pos`: the first line that differs.
fn mismatch(lines: &[&[u8]], old_side: &[&[u8]], pos: usize, done: usize, hunk_index: usize) -> String {
    for (i, expected) in old_side.iter().enumerate() {
        match lines.get(pos + i) {
            Some(found) if found == expected => {}
            Some(found) => return format!("line {} expected {} found {}", pos + i + 1, show(expected), show(found)),
            None => return format!("line {} expected {} found the end of the file", pos + i + 1, show(expected)),
        }
    }
    if pos < done {
        return format!(
            "it matches only at line {}, before the end of hunk {hunk_index} (hunks apply in order without overlapping)",
            pos + 1
        );
    }
    format!("it matches at line {} but must start or end the file", pos + 1)
}

/// A file's contents and permission bits as the patches so far left them.
struct Contents {
    bytes: Vec<u8>,
    mode: u32,
}

fn apply_loaded(tree: &Path, patches: &[Patch]) -> Result<()> {
    // Every touched file's new state, None when deleted; nothing is written until all applied.
    let mut files: BTreeMap<&str, Option<Contents>> = BTreeMap::new();
    for patch in patches {
        for file in &patch.files {
            let path = file.path.as_str();
            let next = match files.remove(path) {
                Some(current) => change(file, current),
                None => read_current(tree, path).and_then(|current| change(file, current)),
            };
            files.insert(path, next.with_context(|| format!("patch {}: {path}", patch.name))?);
        }
    }
    // Deletions first: a patch may delete a file `x` and create `x/y`.
    for path in files.iter().filter(|(_, c)| c.is_none()).map(|(p, _)| tree.join(p)) {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).with_context(|| format!("remove {}", path.display())),
            _ => {}
        }
        // Like git, drop directories the deletion left empty; `remove_dir` fails on the first one that is not.
        for dir in path.ancestors().skip(1).take_while(|d| *d != tree) {
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
    for (path, contents) in files.iter().filter_map(|(p, c)| Some((tree.join(p), c.as_ref()?))) {
        replace_file(&path, &contents.bytes, contents.mode)?;
    }
    Ok(())
}

/// The state of `file`'s target after its changes, from `current` (None: the file does not exist).
fn change(file: &FilePatch, current: Option<Contents>) -> Result<Option<Contents>> {
    match (file.change, current) {
        (Change::Create, Some(_)) => bail!("cannot create it: it exists already (is the patch applied already?)"),
        (Change::Create, None) => Ok(Some(Contents { bytes: apply_hunks(&[], &file.hunks)?, mode: NEW_FILE_MODE })),
        (_, None) => {
            bail!("cannot change it: it does not exist (is the patch for another kernel version, or did an earlier patch delete it?)")
        }
        (Change::Modify, Some(c)) => Ok(Some(Contents { bytes: apply_hunks(&c.bytes, &file.hunks)?, mode: c.mode })),
        (Change::Delete, Some(c)) => {
            let left = apply_hunks(&c.bytes, &file.hunks)?;
            if !left.is_empty() {
                bail!("cannot delete it: {} of its lines are not in the patch (was it changed?)", split_lines(&left).len());
            }
            Ok(None)
        }
    }
}

/// The file at `tree/path` as it is on disk, or None if it does not exist. Refuses a path that
/// passes through a symlink (or is one): the write would land outside the tree or in another file.
fn read_current(tree: &Path, path: &str) -> Result<Option<Contents>> {
    let mut full = tree.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        full.push(part);
        let meta = match fs::symlink_metadata(&full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("inspect {}", full.display())),
        };
        if meta.file_type().is_symlink() {
            bail!("{} is a symlink: patches may not write through one; patch the file it points to instead", full.display());
        }
        let last = i + 1 == parts.len();
        if !last && !meta.is_dir() {
            bail!("{} is not a directory", full.display());
        }
        if last && !meta.is_file() {
            bail!("{} is not a regular file", full.display());
        }
        if last {
            let bytes = fs::read(&full).with_context(|| format!("read {}", full.display()))?;
            return Ok(Some(Contents { bytes, mode: meta.permissions().mode() & 0o7777 }));
        }
    }
    unreachable!("a checked path has at least one component")
}

/// Puts `bytes` with `mode` at `path` through a temporary sibling and a rename: the old file is
/// replaced, never written, so a hardlink to it keeps the old contents.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a tree path has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = layout::tmp_sibling(path);
    // A leftover of a killed run may be a hardlink: unlink it rather than write into it.
    let _ = fs::remove_file(&tmp);
    let written = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write {} through {}", path.display(), tmp.display()));
    }
    Ok(())
}

/// The `.kernel-lab-*` stamp files at the top of `tree`, one `name contents` line each, sorted.
fn tree_stamps(tree: &Path) -> Result<String> {
    let entries = fs::read_dir(tree).with_context(|| format!("list {}: fetch the kernel source first", tree.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", tree.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(STAMP_PREFIX) && entry.file_type().is_ok_and(|t| t.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("{} has no {} file: it is not a complete extracted source tree; extract it again", tree.display(), extract::STAMP);
    }
    let mut text = String::new();
    for name in names {
        let path = tree.join(&name);
        let contents = fs::read_to_string(&path).with_context(|| format!("read the stamp {}", path.display()))?;
        writeln!(text, "pristine {name} {}", contents.split_whitespace().collect::<Vec<_>>().join(" ")).expect("write to a String");
    }
    Ok(text)
}

fn stamp_text(pristine_stamps: &str, patches: &[Patch]) -> String {
    let mut text = format!("{STAMP_VERSION}\n{pristine_stamps}");
    for p in patches {
        writeln!(text, "patch {} {}", p.sha256, p.name).expect("write to a String");
    }
    text
}

/// Refuses a `dest` that is the pristine tree, inside it, or contains it: patching it would change
/// the pristine tree.
fn check_apart(pristine: &Path, dest: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        bail!("{} has no parent directory", dest.display());
    };
    fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    let dest = fs::canonicalize(parent).with_context(|| format!("resolve {}", parent.display()))?.join(name);
    let pristine = fs::canonicalize(pristine).with_context(|| format!("resolve {}", pristine.display()))?;
    if dest.starts_with(&pristine) || pristine.starts_with(&dest) {
        bail!("the patched tree {} must be apart from the pristine tree {}: choose another directory", dest.display(), pristine.display());
    }
    Ok(())
}

/// A real copy of `from` at `to` (which must not exist): `cp -a`, sharing blocks only where the
/// filesystem copies on write, so editing one tree never changes the other.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let sh = xshell::Shell::new()?;
    // `SRC/.` copies the directory itself, dot files included.
    let src = from.join(".");
    let out =
        cmd!(sh, "cp -a --reflink=auto {src} {to}").quiet().ignore_status().output().context("run cp: is GNU coreutils installed?")?;
    if !out.status.success() {
        bail!("copy {} to {}: cp {}: {}", from.display(), to.display(), out.status, lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::scratch;
    use std::os::unix::fs::{symlink, MetadataExt};

    /// Lines `l1` .. `l{n}`, each with a newline.
    fn numbered(n: usize) -> String {
        (1..=n).map(|i| format!("l{i}\n")).collect()
    }

    fn write_tree(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }

    /// Writes `text` as patch `name` in `dir`: the (name, path) pair the API takes.
    fn patch_file(dir: &Path, name: &str, text: &str) -> (String, PathBuf) {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        (name.to_string(), path)
    }

    /// Every entry under `root`: path -> kind, mode and contents hash (or link target).
    fn snapshot(root: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let meta = fs::symlink_metadata(&path).unwrap();
                let mode = meta.permissions().mode();
                let what = if meta.file_type().is_symlink() {
                    format!("link {}", fs::read_link(&path).unwrap().display())
                } else if meta.is_dir() {
                    walk(root, &path, out);
                    format!("dir {mode:o}")
                } else {
                    format!("file {mode:o} {}", hash::sha256_file(&path).unwrap())
                };
                out.insert(rel, what);
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    fn err_of(result: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    const MODIFY_CREATE_DELETE: &str = "\
From 0123456789abcdef Mon Sep 17 00:00:00 2001
From: A U Thor <a@example.org>
Subject: [PATCH] change, add and remove

--- looks like a file header, but no +++ line follows
---
 src/main.c   | 3 ++-
 3 files changed

diff --git a/src/main.c b/src/main.c
index 1111111..2222222 100755
--- a/src/main.c
+++ b/src/main.c
@@ -1,4 +1,4 @@
-l1
+one
 l2
 l3
 l4
@@ -15,6 +15,7 @@ int section(void)
 l15
 l16
 l17
+inserted
 l18
 l19
 l20
diff --git a/docs/new.txt b/docs/new.txt
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/docs/new.txt
@@ -0,0 +1,2 @@
+hello
+world
diff --git a/old/gone.txt b/old/gone.txt
deleted file mode 100644
index 4444444..0000000
--- a/old/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
-- 
2.43.0

";

    #[test]
    fn applies_a_modify_create_delete_patch_keeping_modes() {
        let dir = scratch("patch-mcd");
        let tree = dir.join("tree");
        write_tree(&tree, &[("src/main.c", &numbered(20)), ("old/gone.txt", "bye\n")]);
        fs::set_permissions(tree.join("src/main.c"), Permissions::from_mode(0o755)).unwrap();
        let p = patch_file(&dir, "0001-x.patch", MODIFY_CREATE_DELETE);
        apply(&tree, &[p]).unwrap();
        let want = numbered(20).replace("l1\n", "one\n").replace("l18\n", "inserted\nl18\n");
        assert_eq!(fs::read_to_string(tree.join("src/main.c")).unwrap(), want);
        assert_eq!(fs::metadata(tree.join("src/main.c")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::read_to_string(tree.join("docs/new.txt")).unwrap(), "hello\nworld\n");
        assert_eq!(fs::metadata(tree.join("docs/new.txt")).unwrap().permissions().mode() & 0o7777, 0o644);
        // The deletion took the directory it emptied with it, like git apply.
        assert!(!tree.join("old").exists());
        // Applying it again fails at its first hunk.
        let again = err_of(apply(&tree, &[patch_file(&dir, "0001-x.patch", MODIFY_CREATE_DELETE)]));
        assert!(again.starts_with("patch 0001-x.patch: src/main.c: hunk 1 (@@ -1,4 +1,4 @@) does not apply"), "{again}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn later_patches_see_earlier_results_and_one_file_may_appear_twice() {
        let dir = scratch("patch-chain");
        let tree = dir.join("tree");
        write_tree(&tree, &[("f", "a\nb\nc\n")]);
        let first = "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n--- a/f\n+++ b/f\n@@ -1,3 +1,4 @@\n a\n B\n c\n+d\n";
        let second = "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n B\n-c\n+C\n d\n";
        apply(&tree, &[patch_file(&dir, "1.patch", first), patch_file(&dir, "2.patch", second)]).unwrap();
        assert_eq!(fs::read_to_string(tree.join("f")).unwrap(), "a\nB\nC\nd\n");
        fs::remove_dir_all(dir).unwrap();
    }

    const LATE_HUNK: &str = "--- a/f\n+++ b/f\n@@ -15,6 +15,7 @@\n l15\n l16\n l17\n+inserted\n l18\n l19\n l20\n";

    #[test]
    fn applies_at_an_offset_in_either_direction() {
        let dir = scratch("patch-offset");
        let p = patch_file(&dir, "late.patch", LATE_HUNK);
        for (name, before) in
            [("later", format!("x1\nx2\nx3\nx4\nx5\n{}", numbered(20))), ("earlier", numbered(20).replacen("l1\nl2\nl3\n", "", 1))]
        {
            let tree = dir.join(name);
            write_tree(&tree, &[("f", &before)]);
            apply(&tree, std::slice::from_ref(&p)).unwrap();
            assert_eq!(fs::read_to_string(tree.join("f")).unwrap(), before.replace("l18\n", "inserted\nl18\n"), "{name}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn offsets_prefer_the_nearest_match_and_carry_over_to_later_hunks() {
        let dir = scratch("patch-nearest");
        let tree = dir.join("tree");
        // The same three lines at lines 3-5 and 43-45; the hunk says 40, so 43 is nearest.
        let block = "same1\nsame2\nsame3\n";
        // u1-u3 at lines 50-52 and 56-58: the second hunk states line 51, one after the first copy,
        // but the first hunk applied 3 lines later, so it is looked for at 54, nearer the second copy.
        let u = "u1\nu2\nu3\n";
        let before = format!("{}{block}{}{block}f1\nf2\nf3\nf4\n{u}f5\nf6\nf7\n{u}f8\nf9\nf10\n", numbered(2), numbered(37));
        write_tree(&tree, &[("f", &before)]);
        let patch = "--- a/f\n+++ b/f\n@@ -40,3 +40,4 @@\n same1\n same2\n+new\n same3\n@@ -51,3 +52,3 @@\n u1\n-u2\n+U2\n u3\n";
        apply(&tree, &[patch_file(&dir, "p", patch)]).unwrap();
        let after = fs::read_to_string(tree.join("f")).unwrap();
        let lines: Vec<&str> = after.lines().collect();
        assert_eq!((lines[3], lines[43], lines[44]), ("same2", "same2", "new"));
        assert_eq!((lines[51], lines[57]), ("u2", "U2"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_fuzz_naming_patch_file_hunk_and_line() {
        let dir = scratch("patch-fuzz");
        let tree = dir.join("tree");
        // Moved down 4 lines as well: the message shows the changed line, not whatever is at line 16 now.
        write_tree(&tree, &[("src/main.c", &format!("x\nx\nx\nx\n{}", numbered(20).replace("l16\n", "l16 changed\n")))]);
        let before = snapshot(&tree);
        let patch = LATE_HUNK.replace("a/f", "a/src/main.c").replace("b/f", "b/src/main.c");
        let err = err_of(apply(&tree, &[patch_file(&dir, "0001-x.patch", &patch)]));
        assert_eq!(
            err,
            "patch 0001-x.patch: src/main.c: hunk 1 (@@ -15,6 +15,7 @@) does not apply: line 20 expected \"l16\" found \"l16 changed\""
        );
        assert_eq!(snapshot(&tree), before);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failure_shows_the_first_line_upstream_changed() {
        let dir = scratch("patch-upstream");
        let tree = dir.join("tree");
        // The patch adds syscall 463 after 462; the newer kernel has its own 463 there, and the
        // same blank line and comment below it (which must not pull the diagnosis 1 line down).
        let table = "460\tcommon\ta\n461\tcommon\tb\n462\tcommon\tc\n";
        write_tree(&tree, &[("syscall.tbl", &format!("{}{table}463\tcommon\tupstream\n\n#\n# x32\n", numbered(10)))]);
        let patch = "--- a/syscall.tbl\n+++ b/syscall.tbl\n@@ -20,6 +20,7 @@\n 460\tcommon\ta\n 461\tcommon\tb\n 462\tcommon\tc\n\
            +463\tcommon\thello\n \n #\n # x32\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "0001-hello.patch", patch)]));
        assert_eq!(
            err,
            "patch 0001-hello.patch: syscall.tbl: hunk 1 (@@ -20,6 +20,7 @@) does not apply: line 14 expected \"\" found \"463\\tcommon\\tupstream\""
        );
        // Upstream renamed 461 too. The trailing context (3 lines) now has more lines in common than
        // the leading (460 and 462), but the message follows the hunk from its top, where 461 differs.
        fs::write(tree.join("syscall.tbl"), fs::read_to_string(tree.join("syscall.tbl")).unwrap().replace("\tb\n", "\tB\n")).unwrap();
        let err = err_of(apply(&tree, &[patch_file(&dir, "0001-hello.patch", patch)]));
        assert!(err.ends_with("line 12 expected \"461\\tcommon\\tb\" found \"461\\tcommon\\tB\""), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_newline_at_the_end_must_match_too() {
        let dir = scratch("patch-eof");
        let tree = dir.join("tree");
        write_tree(&tree, &[("f", "a\nb\n")]);
        let patch = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "p", patch)]));
        assert!(err.ends_with("line 2 expected \"b\" (no newline at end of file) found \"b\""), "{err}");
        fs::write(tree.join("f"), "a\nb").unwrap();
        apply(&tree, &[patch_file(&dir, "p", patch)]).unwrap();
        assert_eq!(fs::read_to_string(tree.join("f")).unwrap(), "a\nc\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_hunk_at_the_start_or_end_of_a_file_stays_there() {
        let dir = scratch("patch-anchor");
        let tree = dir.join("tree");
        // Written for a file that began with `a`: adding `new` one line lower would be a silent misplacement.
        write_tree(&tree, &[("top", "x\na\nb\n"), ("end", "a\nb\nc\nd\n")]);
        let top = "--- a/top\n+++ b/top\n@@ -1,2 +1,3 @@\n+new\n a\n b\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "top.patch", top)]));
        assert_eq!(err, "patch top.patch: top: hunk 1 (@@ -1,2 +1,3 @@) does not apply: line 1 expected \"a\" found \"x\"");
        // No trailing context: the hunk ended the file, and here `d` follows.
        let end = "--- a/end\n+++ b/end\n@@ -2,2 +2,2 @@\n b\n-c\n+C\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "end.patch", end)]));
        assert_eq!(err, "patch end.patch: end: hunk 1 (@@ -2,2 +2,2 @@) does not apply: line 3 expected \"b\" found \"c\"");
        fs::write(tree.join("end"), "a\nb\nc\n").unwrap();
        apply(&tree, &[patch_file(&dir, "end.patch", end)]).unwrap();
        assert_eq!(fs::read_to_string(tree.join("end")).unwrap(), "a\nb\nC\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn creating_an_existing_file_or_changing_a_missing_one_fails() {
        let dir = scratch("patch-exists");
        let tree = dir.join("tree");
        write_tree(&tree, &[("new.txt", "here\n")]);
        let create = "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+x\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "c.patch", create)]));
        assert_eq!(err, "patch c.patch: new.txt: cannot create it: it exists already (is the patch applied already?)");
        let modify = "--- a/missing.c\n+++ b/missing.c\n@@ -1 +1 @@\n-x\n+y\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "m.patch", modify)]));
        assert!(err.starts_with("patch m.patch: missing.c: cannot change it: it does not exist"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_paths_outside_the_tree() {
        let dir = scratch("patch-paths");
        let tree = dir.join("tree");
        write_tree(&tree, &[("x", "a\n")]);
        let cases = [
            ("--- a/../x\n+++ b/../x\n", 1, "leaves the tree through `..`"),
            ("--- ../x\n+++ ../x\n", 1, "leaves the tree through `..`"),
            ("--- /etc/passwd\n+++ /etc/passwd\n", 1, "absolute path \"/etc/passwd\""),
            ("--- /dev/null\n+++ /tmp/x\n", 2, "absolute path \"/tmp/x\""),
            ("--- x\n+++ x\n", 1, "has no leading directory"),
        ];
        for (headers, line, want) in cases {
            let p = patch_file(&dir, "bad.patch", &format!("{headers}@@ -1 +1 @@\n-a\n+b\n"));
            let err = err_of(apply(&tree, &[p]));
            assert!(err.starts_with(&format!("patch bad.patch: {}:{line}: ", dir.join("bad.patch").display())), "{err}");
            assert!(err.contains(want), "{headers}: {err}");
        }
        assert_eq!(fs::read_to_string(tree.join("x")).unwrap(), "a\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let dir = scratch("patch-symlink");
        let tree = dir.join("tree");
        let outside = dir.join("outside");
        write_tree(&outside, &[("f", "a\n")]);
        write_tree(&tree, &[("real.txt", "a\n")]);
        symlink(&outside, tree.join("link")).unwrap();
        symlink("real.txt", tree.join("alias.txt")).unwrap();
        for (name, path) in [("through-dir", "link/f"), ("to-file", "alias.txt"), ("create-through-dir", "link/new")] {
            let patch = if path.ends_with("new") {
                format!("--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+b\n")
            } else {
                format!("--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-a\n+b\n")
            };
            let err = err_of(apply(&tree, &[patch_file(&dir, name, &patch)]));
            assert!(err.contains("is a symlink: patches may not write through one"), "{name}: {err}");
        }
        assert_eq!(snapshot(&outside).len(), 1);
        assert_eq!(fs::read_to_string(outside.join("f")).unwrap(), "a\n");
        assert_eq!(fs::read_to_string(tree.join("real.txt")).unwrap(), "a\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_miscounted_hunk_is_a_parse_error_with_its_line() {
        let dir = scratch("patch-count");
        let tree = dir.join("tree");
        write_tree(&tree, &[("f", "a\nb\nc\nd\n")]);
        let path = dir.join("bad.patch").display().to_string();
        let cases = [
            // The header counts 3 lines on each side; a 4th context line follows.
            ("--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n d\n", "3:", "(3 old, 3 new): line 8 is one more hunk line"),
            // The header counts 4; the next file's header comes after 3.
            (
                "diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1,4 +1,4 @@\n a\n-b\n+B\n c\ndiff --git a/g b/g\n",
                "4:",
                "(4 old, 4 new): line 9 is not a hunk line, after 3 old and 3 new lines",
            ),
            ("--- a/f\n+++ b/f\n@@ -1,2 +1,3 @@\n a\n-b\n-c\n+B\n", "3:", "(2 old, 3 new): line 6 is one old line too many"),
            ("--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n", "3:", "the patch ends after 2 old and 2 new lines"),
        ];
        for (text, line, want) in cases {
            let err = err_of(apply(&tree, &[patch_file(&dir, "bad.patch", text)]));
            assert!(err.starts_with(&format!("patch bad.patch: {path}:{line} hunk @@ -")), "{err}");
            assert!(err.ends_with(want), "{err}");
        }
        assert_eq!(fs::read_to_string(tree.join("f")).unwrap(), "a\nb\nc\nd\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_binary_patches_renames_and_text_without_diffs() {
        let dir = scratch("patch-refuse");
        let tree = dir.join("tree");
        write_tree(&tree, &[("f", "a\n")]);
        let cases = [
            ("diff --git a/img.png b/img.png\nindex 1..2 100644\nGIT binary patch\nliteral 5\nxyz\n", "binary patches are not supported"),
            (
                "diff --git a/img.png b/img.png\nindex 1..2 100644\nBinary files a/img.png and b/img.png differ\n",
                "binary patches are not supported",
            ),
            ("diff --git a/f b/g\nsimilarity index 100%\nrename from f\nrename to g\n", "renames and copies are not supported"),
            ("diff --git a/f b/g\ncopy from f\ncopy to g\n", "renames and copies are not supported"),
            ("--- a/f\n+++ b/g\n@@ -1 +1 @@\n-a\n+b\n", "renames are not supported (f -> g)"),
            ("just a commit message\n", "no file changes found"),
            ("@@ -1 +1 @@\n-a\n+b\n", "hunk without a file header"),
        ];
        for (text, want) in cases {
            let err = err_of(apply(&tree, &[patch_file(&dir, "r.patch", text)]));
            assert!(err.starts_with("patch r.patch: ") && err.contains(want), "{text}: {err}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hunks_must_be_in_order_and_match_without_overlapping() {
        let dir = scratch("patch-order");
        let tree = dir.join("tree");
        write_tree(&tree, &[("f", &numbered(10))]);
        let reversed = "--- a/f\n+++ b/f\n@@ -6,1 +6,1 @@\n-l6\n+L6\n@@ -2,1 +2,1 @@\n-l2\n+L2\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "p", reversed)]));
        assert!(err.ends_with("hunk @@ -2,1 +2,1 @@ overlaps or comes before @@ -6,1 +6,1 @@: hunks must be in order"), "{err}");
        // Both hunks say different lines, but the second one's only match lies inside the first.
        let overlap = "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n l2\n-l3\n+L3\n l4\n@@ -8,3 +8,3 @@\n l3\n-l4\n+L4\n l5\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "p", overlap)]));
        let want = "hunk 2 (@@ -8,3 +8,3 @@) does not apply: it matches only at line 3, before the end of hunk 1 (hunks apply in order without overlapping)";
        assert!(err.ends_with(want), "{err}");
        assert_eq!(fs::read_to_string(tree.join("f")).unwrap(), numbered(10));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failing_second_patch_leaves_the_tree_untouched() {
        let dir = scratch("patch-atomic");
        let tree = dir.join("tree");
        write_tree(&tree, &[("a.txt", "a\n"), ("b.txt", "b\n"), ("gone.txt", "x\n")]);
        let before = snapshot(&tree);
        let good = "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+A\n--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n--- /dev/null\n+++ b/dir/new.txt\n@@ -0,0 +1 @@\n+n\n";
        let bad = "--- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-not b\n+B\n";
        let err = err_of(apply(&tree, &[patch_file(&dir, "0001-good.patch", good), patch_file(&dir, "0002-bad.patch", bad)]));
        assert!(err.starts_with("patch 0002-bad.patch: b.txt: hunk 1 (@@ -1 +1 @@) does not apply: line 1 expected \"not b\""), "{err}");
        assert_eq!(snapshot(&tree), before);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_hardlinked_to_the_pristine_tree_is_replaced_not_written() {
        let dir = scratch("patch-hardlink");
        let (pristine, tree) = (dir.join("pristine"), dir.join("tree"));
        write_tree(&pristine, &[("f", "a\nb\n")]);
        fs::create_dir_all(&tree).unwrap();
        fs::hard_link(pristine.join("f"), tree.join("f")).unwrap();
        apply(&tree, &[patch_file(&dir, "p", "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n+B\n")]).unwrap();
        assert_eq!(fs::read_to_string(pristine.join("f")).unwrap(), "a\nb\n");
        assert_eq!(fs::read_to_string(tree.join("f")).unwrap(), "a\nB\n");
        assert_ne!(fs::metadata(pristine.join("f")).unwrap().ino(), fs::metadata(tree.join("f")).unwrap().ino());
        fs::remove_dir_all(dir).unwrap();
    }

    /// A pristine tree as extraction leaves it: files, a dot file, a symlink and the stamp.
    fn pristine_tree(dir: &Path) -> PathBuf {
        let pristine = dir.join("src").join("linux-1.0");
        write_tree(&pristine, &[("Makefile", "VERSION = 1\nPATCHLEVEL = 0\n"), ("kernel/fork.c", &numbered(20)), (".gitignore", "*.o\n")]);
        fs::write(pristine.join(extract::STAMP), "0".repeat(64) + "\n").unwrap();
        symlink("fork.c", pristine.join("kernel/fork-link.c")).unwrap();
        fs::set_permissions(pristine.join("kernel/fork.c"), Permissions::from_mode(0o600)).unwrap();
        pristine
    }

    #[test]
    fn patched_tree_copies_patches_stamps_reuses_and_redoes() {
        let dir = scratch("patch-tree");
        let pristine = pristine_tree(&dir);
        let before = snapshot(&pristine);
        let dest = dir.join("src").join("linux-1.0+patched");
        let patch = LATE_HUNK.replace("a/f", "a/kernel/fork.c").replace("b/f", "b/kernel/fork.c");
        let patches = [patch_file(&dir, "0001-fork.patch", &patch)];

        assert!(patched_tree(&pristine, &dest, &patches).unwrap());
        assert_eq!(snapshot(&pristine), before, "the pristine tree must not change");
        assert_eq!(fs::read_to_string(dest.join("kernel/fork.c")).unwrap(), numbered(20).replace("l18\n", "inserted\nl18\n"));
        assert_eq!(fs::metadata(dest.join("kernel/fork.c")).unwrap().permissions().mode() & 0o7777, 0o600);
        // Everything else is a copy, dot files and symlinks included.
        let mut copied = snapshot(&dest);
        let stamp = copied.remove(STAMP).unwrap();
        assert!(stamp.starts_with("file "), "{stamp}");
        copied.remove("kernel/fork.c");
        let mut expected = before.clone();
        expected.remove("kernel/fork.c");
        assert_eq!(copied, expected);
        let stamp = fs::read_to_string(dest.join(STAMP)).unwrap();
        let sha = hash::sha256_file(&patches[0].1).unwrap();
        assert_eq!(stamp, format!("{STAMP_VERSION}\npristine {} {}\npatch {sha} 0001-fork.patch\n", extract::STAMP, "0".repeat(64)));
        // A hand edit of the patched tree never reaches the pristine one.
        assert_ne!(fs::metadata(dest.join("Makefile")).unwrap().ino(), fs::metadata(pristine.join("Makefile")).unwrap().ino());

        // Same inputs: nothing is done, not even to a hand edit.
        fs::write(dest.join("Makefile"), "edited\n").unwrap();
        assert!(!patched_tree(&pristine, &dest, &patches).unwrap());
        assert_eq!(fs::read_to_string(dest.join("Makefile")).unwrap(), "edited\n");

        // A changed patch makes a new tree from the pristine one.
        let patches = [patch_file(&dir, "0001-fork.patch", &patch.replace("+inserted", "+changed"))];
        assert!(patched_tree(&pristine, &dest, &patches).unwrap());
        assert_eq!(fs::read_to_string(dest.join("kernel/fork.c")).unwrap(), numbered(20).replace("l18\n", "changed\nl18\n"));
        assert_eq!(fs::read_to_string(dest.join("Makefile")).unwrap(), "VERSION = 1\nPATCHLEVEL = 0\n");
        // So does a renamed one, and a re-extracted pristine tree.
        let renamed = [("0001-other-name.patch".to_string(), patches[0].1.clone())];
        assert!(patched_tree(&pristine, &dest, &renamed).unwrap());
        assert!(!patched_tree(&pristine, &dest, &renamed).unwrap());
        fs::write(pristine.join(extract::STAMP), "1".repeat(64) + "\n").unwrap();
        assert!(patched_tree(&pristine, &dest, &renamed).unwrap());
        assert!(fs::read_to_string(dest.join(STAMP)).unwrap().contains(&"1".repeat(64)));
        fs::write(pristine.join(extract::STAMP), "0".repeat(64) + "\n").unwrap();
        assert_eq!(snapshot(&pristine), before);

        // Only the tree and the lock's directory entry are left next to it: no temporaries.
        let mut siblings: Vec<String> =
            fs::read_dir(dir.join("src")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        siblings.sort();
        assert_eq!(siblings, ["linux-1.0", "linux-1.0+patched"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn patched_tree_failure_leaves_dest_and_pristine_alone() {
        let dir = scratch("patch-tree-fail");
        let pristine = pristine_tree(&dir);
        let before = snapshot(&pristine);
        let dest = dir.join("src").join("linux-1.0+bad");
        let bad = [patch_file(&dir, "0001-bad.patch", "--- a/Makefile\n+++ b/Makefile\n@@ -1 +1 @@\n-VERSION = 2\n+VERSION = 3\n")];
        let err = err_of(patched_tree(&pristine, &dest, &bad));
        assert!(err.contains("patch 0001-bad.patch: Makefile: hunk 1 (@@ -1 +1 @@) does not apply"), "{err}");
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dir.join("src")).unwrap().count(), 1, "no temporary copy is left");
        assert_eq!(snapshot(&pristine), before);

        // An unstamped tree is not a pristine tree, and dest may not be (inside) the pristine tree.
        fs::remove_file(pristine.join(extract::STAMP)).unwrap();
        let good = [patch_file(&dir, "0001-good.patch", "--- a/Makefile\n+++ b/Makefile\n@@ -1 +1 @@\n-VERSION = 1\n+VERSION = 3\n")];
        assert!(err_of(patched_tree(&pristine, &dest, &good)).contains("has no .kernel-lab-stamp file"));
        fs::write(pristine.join(extract::STAMP), "0".repeat(64) + "\n").unwrap();
        for inside in [pristine.clone(), pristine.join("sub")] {
            assert!(err_of(patched_tree(&pristine, &inside, &good)).contains("must be apart from the pristine tree"));
        }
        assert_eq!(snapshot(&pristine), before);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn digest_is_short_and_changes_with_names_and_contents() {
        let dir = scratch("patch-digest");
        let a = patch_file(&dir, "a.patch", "one");
        let b = patch_file(&dir, "b.patch", "two");
        let d = digest(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(d.len(), 12);
        assert!(d.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(digest(&[a.clone(), b.clone()]).unwrap(), d);
        assert_ne!(digest(&[b.clone(), a.clone()]).unwrap(), d);
        assert_ne!(digest(&[("x.patch".into(), a.1.clone()), b.clone()]).unwrap(), d);
        fs::write(&b.1, "three").unwrap();
        assert_ne!(digest(&[a.clone(), b]).unwrap(), d);
        let err = err_of(digest(&[("gone.patch".into(), dir.join("gone"))]));
        assert!(err.contains("read patch gone.patch from") && err.contains("gone"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    /// Old and new versions of a small tree: a change, a change of the missing last newline, an
    /// addition and a deletion.
    fn old_and_new(dir: &Path) -> (PathBuf, PathBuf) {
        let (old, new) = (dir.join("a"), dir.join("b"));
        write_tree(&old, &[("sub/f.c", &numbered(30)), ("g.txt", "x\ny"), ("gone.txt", "bye\n")]);
        let changed = numbered(30).replace("l2\n", "two\n").replace("l25\n", "l25\nadded\n");
        write_tree(&new, &[("sub/f.c", &changed), ("g.txt", "x\ny\nz"), ("sub/new.h", "#define NEW 1\n"), ("empty", "")]);
        (old, new)
    }

    /// Contents only: modes of created files depend on the umask of whoever made the fixtures.
    fn contents(root: &Path) -> BTreeMap<String, String> {
        snapshot(root).into_iter().filter(|(_, v)| v.starts_with("file ")).map(|(k, v)| (k, v.rsplit(' ').next().unwrap().into())).collect()
    }

    #[test]
    fn applies_what_gnu_diff_writes() {
        let dir = scratch("patch-gnu-diff");
        let (old, new) = old_and_new(&dir);
        let sh = xshell::Shell::new().unwrap();
        sh.change_dir(&dir);
        let mut diff = Vec::new();
        for f in ["sub/f.c", "g.txt"] {
            let (a, b) = (format!("a/{f}"), format!("b/{f}"));
            diff.extend(cmd!(sh, "diff -u {a} {b}").quiet().ignore_status().output().unwrap().stdout);
        }
        let text = String::from_utf8(diff).unwrap();
        assert!(text.contains("\\ No newline at end of file") && text.matches("@@ -").count() == 3, "{text}");
        fs::write(dir.join("gnu.patch"), &text).unwrap();
        apply(&old, &[("gnu.patch".into(), dir.join("gnu.patch"))]).unwrap();
        for f in ["sub/f.c", "g.txt"] {
            assert_eq!(fs::read(old.join(f)).unwrap(), fs::read(new.join(f)).unwrap(), "{f}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn applies_what_git_diff_writes() {
        let dir = scratch("patch-git-diff");
        let sh = xshell::Shell::new().unwrap();
        if cmd!(sh, "git --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
            eprintln!("git is not installed: skipping");
            return;
        }
        let (old, new) = old_and_new(&dir);
        sh.change_dir(&dir);
        // `--no-prefix` names files a/… and b/… after the two directories: -p1 strips them.
        let out = cmd!(sh, "git diff --no-index --no-prefix a b").quiet().ignore_status().output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("new file mode") && text.contains("deleted file mode") && text.contains("+++ /dev/null"), "{text}");
        fs::write(dir.join("git.patch"), &text).unwrap();
        apply(&old, &[("git.patch".into(), dir.join("git.patch"))]).unwrap();
        assert_eq!(contents(&old), contents(&new));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn quoted_names_and_empty_files_without_hunks() {
        let dir = scratch("patch-quoted");
        let tree = dir.join("tree");
        write_tree(&tree, &[("t\u{e9}st file.txt", "a\n"), ("empty-old", "")]);
        let patch = "diff --git \"a/t\\303\\251st file.txt\" \"b/t\\303\\251st file.txt\"\n\
            --- \"a/t\\303\\251st file.txt\"\n+++ \"b/t\\303\\251st file.txt\"\n@@ -1 +1 @@\n-a\n+b\n\
            diff --git a/empty new b/empty new\nnew file mode 100644\nindex 0000000..e69de29\n\
            diff --git a/empty-old b/empty-old\ndeleted file mode 100644\nindex e69de29..0000000\n\
            diff --git a/mode-only b/mode-only\nold mode 100644\nnew mode 100755\n";
        apply(&tree, &[patch_file(&dir, "q.patch", patch)]).unwrap();
        assert_eq!(fs::read_to_string(tree.join("t\u{e9}st file.txt")).unwrap(), "b\n");
        assert_eq!(fs::read(tree.join("empty new")).unwrap(), b"");
        assert!(!tree.join("empty-old").exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
