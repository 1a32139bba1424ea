//! Ready labs: deterministic packs (`lab pack`), the lab index (`labs.json`), verified
//! `lab fetch`, and `lab list` / `lab rm`.
//!
//! A pack is `kernel-lab-<recipe>-<version>-x86_64.tar.zst`: the lab's manifest.json and every
//! file it lists, under one top directory, sorted, owned by 0:0, dated the build's
//! SOURCE_DATE_EPOCH, compressed single-threaded at a fixed zstd level, so packing twice gives the
//! same bytes. A fetched pack is hostile until proven otherwise: it must have the sha256 the user
//! or the index gave, it unpacks through the same guarded extractor as source tarballs, and every
//! file must match its manifest before anything appears in `artifacts/labs/`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    cli::LabAction,
    download, extract, hash,
    lab::{self, Lab},
    layout::{self, Layout},
    manifest::{self, Manifest},
    progress, releases,
};

/// zstd level of packs: 34 MB for today's lts lab (104 MB vmlinux) in about 70 s on one core,
/// against 47 MB at -3 (1 s) and 41 MB at -12 (8 s); unpacking takes 0.3 s at any level.
pub const DEFAULT_LEVEL: i32 = 19;
pub const INDEX_SCHEMA: u32 = 1;
/// No pack is bigger (today's lts lab packs into 34 MB; a defconfig lab with modules stays far
/// below): a server streaming more is cut off before it fills the cache's disk.
const MAX_PACK_BYTES: u64 = 4 << 30;

/// `cargo xtask lab ...`.
pub fn command(layout: &Layout, action: LabAction) -> Result<()> {
    match action {
        LabAction::Pack { which, out, index, level } => {
            let packed = pack(&which.dir(layout), &out, level)?;
            println!("packed {} ({:.1} MB, sha256 {})", packed.path.display(), packed.size as f64 / 1e6, packed.sha256);
            if let Some(index) = index {
                update_index(&index, &packed)?;
                println!("index {}", index.display());
            }
            Ok(())
        }
        LabAction::Fetch { what, sha256, index, force } => fetch(layout, &FetchRequest { what, sha256, index, force }).map(drop),
        LabAction::List => list(layout),
        LabAction::Rm { name } => remove(layout, &name),
    }
}

/// A written pack.
#[derive(Debug, Clone)]
pub struct Packed {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub manifest: Manifest,
    pub manifest_sha256: String,
}

/// Packs `lab` into `out/<pack name>.tar.zst` plus `.sha256`. Refuses a lab whose files no longer
/// match its manifest (a pack must be what was built and boot-tested).
pub fn pack(lab: &Path, out: &Path, level: i32) -> Result<Packed> {
    // Shared: no assembly or boot-verdict record changes the lab while it is packed.
    let _hold = lab::Lab::open(lab)?.lock_shared()?;
    let m = Manifest::read(lab)?;
    // manifest.json is read once: the pack carries and the index names exactly these bytes.
    let manifest_bytes = fs::read(lab.join(manifest::FILE)).with_context(|| format!("read {}", lab.join(manifest::FILE).display()))?;
    if serde_json::from_slice::<Manifest>(&manifest_bytes).ok().as_ref() != Some(&m) {
        bail!("{} changed while it was being packed: run again", lab.join(manifest::FILE).display());
    }
    let problems = manifest::compare_files(lab, &m.reproducible.files)?;
    if !problems.is_empty() {
        bail!(
            "lab {} changed since it was built ({}): rebuild it with `cargo xtask kernel --recipe {}`",
            lab.display(),
            problems.join("; "),
            m.reproducible.recipe.name
        );
    }
    fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let name = m.pack_name();
    let path = out.join(format!("{name}.tar.zst"));
    let tmp = layout::tmp_sibling(&path);
    let written = write_pack(lab, &m, &manifest_bytes, &name, &tmp, level);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("pack {} into {}", lab.display(), path.display())));
    }
    fs::rename(&tmp, &path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    let sha256 = hash::sha256_file(&path)?;
    let size = fs::metadata(&path)?.len();
    let file_name = path.file_name().expect("pack has a name").to_string_lossy().into_owned();
    layout::write_atomic(&sha_file(&path), format!("{sha256}  {file_name}\n").as_bytes())?;
    let manifest_sha256 = hash::sha256_bytes(&manifest_bytes);
    Ok(Packed { path, sha256, size, manifest: m, manifest_sha256 })
}

/// `X.tar.zst.sha256`, in `sha256sum -c` format.
pub fn sha_file(pack: &Path) -> PathBuf {
    let mut name = pack.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

fn write_pack(lab: &Path, m: &Manifest, manifest_bytes: &[u8], top: &str, tmp: &Path, level: i32) -> Result<()> {
    let file = File::create(tmp).with_context(|| format!("create {}", tmp.display()))?;
    let mut zstd = zstd::stream::write::Encoder::new(file, level).context("start zstd")?;
    zstd.include_checksum(true).context("zstd checksum")?;
    let mtime = m.reproducible.settings.source_date_epoch;
    // Directories (every ancestor of a listed file), files, and manifest.json, in path order.
    let mut entries: Vec<(String, Option<(u32, u64)>)> = Vec::new();
    for f in &m.reproducible.files {
        entries.push((f.path.clone(), Some((manifest::parse_mode(&f.mode)?, f.size))));
    }
    let dirs = manifest::parent_dirs(&m.reproducible.files);
    entries.push((manifest::FILE.to_string(), Some((0o644, manifest_bytes.len() as u64))));
    entries.extend(dirs.into_iter().map(|d| (d, None)));
    entries.sort();
    let total =
        entries.iter().filter_map(|(_, e)| e.map(|(_, size)| size)).try_fold(0u64, u64::checked_add).context("file sizes overflow")?;
    let bar = progress::bytes("pack", Some(total));
    let mut tar = tar::Builder::new(zstd);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h
    };
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, format!("{top}/"), io::empty()).context("write the top directory")?;
    for (rel, kind) in entries {
        let name = format!("{top}/{rel}");
        match kind {
            None => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut h, format!("{name}/"), io::empty()).with_context(|| format!("write {name}/"))?;
            }
            Some((mode, size)) if rel == manifest::FILE => {
                let mut h = header(tar::EntryType::Regular, mode, size);
                tar.append_data(&mut h, &name, manifest_bytes).with_context(|| format!("write {name}"))?;
            }
            Some((mode, size)) => {
                let src = lab.join(&rel);
                let f = File::open(&src).with_context(|| format!("open {}", src.display()))?;
                let mut h = header(tar::EntryType::Regular, mode, size);
                // Exactly `size` bytes: a file that grew since the check cannot slip more in.
                let reader = bar.wrap_read(f.take(size));
                tar.append_data(&mut h, &name, reader).with_context(|| format!("write {name}"))?;
            }
        }
    }
    let zstd = tar.into_inner().context("finish the tar stream")?;
    let file = zstd.finish().context("finish zstd")?;
    file.sync_all().with_context(|| format!("sync {}", tmp.display()))?;
    bar.finish_and_clear();
    Ok(())
}

/// `labs.json`: the labs a directory (or a release) offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub schema: u32,
    pub labs: Vec<IndexEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    pub recipe: String,
    pub kernel_version: String,
    pub arch: String,
    /// Relative URLs resolve against the index's own URL.
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub manifest_sha256: String,
    /// The boot test's verdict when the lab was packed (`pass`), or `null` if it never ran.
    pub boot_verdict: Option<String>,
}

impl Index {
    pub fn parse(bytes: &[u8], from: &str) -> Result<Index> {
        let index: Index = serde_json::from_slice(bytes).with_context(|| format!("parse the lab index {from}"))?;
        if index.schema != INDEX_SCHEMA {
            bail!("lab index {from}: schema {} is not {INDEX_SCHEMA}: update kernel-lab", index.schema);
        }
        for e in &index.labs {
            check_entry(e).with_context(|| format!("lab index {from}: entry {}-{}", e.recipe, e.kernel_version))?;
        }
        Ok(index)
    }

    /// The newest lab of `recipe` (by kernel version).
    pub fn newest(&self, recipe: &str) -> Option<&IndexEntry> {
        self.labs.iter().filter(|e| e.recipe == recipe && e.arch == manifest::ARCH).max_by_key(|e| releases::version_key(&e.kernel_version))
    }
}

fn check_entry(e: &IndexEntry) -> Result<()> {
    crate::recipe::check_name(&e.recipe)?;
    releases::check_version(&e.kernel_version)?;
    for sha in [&e.sha256, &e.manifest_sha256] {
        if !hash::is_sha256(sha) {
            bail!("sha256 {sha:?} is not 64 lowercase hex digits");
        }
    }
    Ok(())
}

/// Adds or replaces the entry for `packed` in the index at `index_path` (created if missing). The
/// pack must sit in the index's directory or below it: its URL is written relative.
pub fn update_index(index_path: &Path, packed: &Packed) -> Result<()> {
    let dir = index_path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let (dir_abs, pack_abs) = (fs::canonicalize(dir)?, fs::canonicalize(&packed.path)?);
    let Ok(rel) = pack_abs.strip_prefix(&dir_abs) else {
        bail!(
            "--index {}: the pack {} is not in the index's directory; put the index in the --out directory (or above it)",
            index_path.display(),
            packed.path.display()
        );
    };
    let mut index = match fs::read(index_path) {
        Ok(bytes) => Index::parse(&bytes, &index_path.display().to_string())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Index { schema: INDEX_SCHEMA, labs: Vec::new() },
        Err(e) => return Err(e).with_context(|| format!("read {}", index_path.display())),
    };
    let r = &packed.manifest.reproducible;
    let entry = IndexEntry {
        recipe: r.recipe.name.clone(),
        kernel_version: r.kernel.version.clone(),
        arch: r.arch.clone(),
        url: rel.to_string_lossy().into_owned(),
        sha256: packed.sha256.clone(),
        size: packed.size,
        manifest_sha256: packed.manifest_sha256.clone(),
        boot_verdict: packed.manifest.host.boot_test.as_ref().map(|b| b.verdict.clone()),
    };
    index.labs.retain(|e| !(e.recipe == entry.recipe && e.kernel_version == entry.kernel_version && e.arch == entry.arch));
    index.labs.push(entry);
    index
        .labs
        .sort_by(|a, b| (&a.recipe, releases::version_key(&a.kernel_version)).cmp(&(&b.recipe, releases::version_key(&b.kernel_version))));
    let text = serde_json::to_string_pretty(&index).context("serialize the index")? + "\n";
    layout::write_atomic(index_path, text.as_bytes())
}

/// What `lab fetch` was asked for.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// A URL, a local pack, or a recipe name (with an index).
    pub what: String,
    pub sha256: Option<String>,
    pub index: Option<String>,
    pub force: bool,
}

/// `lab fetch`: download (cached by sha256, resumed), unpack in a temporary sibling, check every
/// file against the manifest, then install as `artifacts/labs/<recipe>-<version>` and point
/// `artifacts/labs/<recipe>` at it.
pub fn fetch(layout: &Layout, req: &FetchRequest) -> Result<Lab> {
    let start = Instant::now();
    let (url, sha256, entry) = locate(req)?;
    let label = url.rsplit('/').next().unwrap_or(&url).to_string();
    let max = entry.as_ref().map_or(MAX_PACK_BYTES, |e| e.size.min(MAX_PACK_BYTES));
    let blob = download::fetch_verified_within(layout, &url, &sha256, &label, max).with_context(|| format!("fetch the lab {url}"))?;
    let labs = layout.labs_dir();
    fs::create_dir_all(&labs).with_context(|| format!("create {}", labs.display()))?;
    // Unpacked under a hidden name in labs/ (same filesystem, so the install is a rename), and
    // removed on any failure: nothing half-unpacked is ever visible as a lab. Fetches take turns
    // (they take seconds), so whoever holds the lock may sweep what killed fetches left.
    let _turn = download::lock_path(&labs.join(".fetch.lock"), "fetching a lab")?;
    sweep_unpacks(&labs);
    let tmp = labs.join(format!(".fetch-{}.unpack-{}", &sha256[..12], std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    // A lab compresses about 3.5:1; 20:1 plus slack leaves room and still stops a bomb early.
    let budget = fs::metadata(&blob)?.len().saturating_mul(20).saturating_add(64 << 20);
    let staged = (|| {
        fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        extract::unpack_checked(&blob, &sha256, &tmp, &label, budget)?;
        let m = Manifest::read(&tmp)?;
        let mut problems: BTreeSet<String> = manifest::compare_files(&tmp, &m.reproducible.files)?.into_iter().collect();
        problems.extend(manifest::unlisted(&tmp, &m.reproducible.files)?.into_iter().map(|p| format!("{p}: not in the manifest")));
        let problems: Vec<String> = problems.into_iter().collect();
        if !problems.is_empty() {
            bail!("the pack does not match its manifest:\n  {}", problems.join("\n  "));
        }
        let lab = Lab::open(&tmp)?;
        let r = &m.reproducible;
        if lab.desc.recipe != r.recipe.name || lab.desc.kernel_version != r.kernel.version {
            bail!(
                "lab.json ({} {}) disagrees with manifest.json ({} {})",
                lab.desc.recipe,
                lab.desc.kernel_version,
                r.recipe.name,
                r.kernel.version
            );
        }
        if let Some(e) = &entry {
            let ok = e.recipe == r.recipe.name && e.kernel_version == r.kernel.version && e.arch == r.arch;
            if !ok {
                bail!("the index entry {}-{} ({}) points at a pack of {} ({})", e.recipe, e.kernel_version, e.arch, m.lab_name(), r.arch);
            }
            let size = fs::metadata(&blob)?.len();
            if size != e.size {
                bail!("the pack has {size} bytes, the index says {}", e.size);
            }
            let got = Manifest::sha256_of_file(&tmp)?;
            if got != e.manifest_sha256 {
                bail!("manifest.json has sha256 {got}, the index says {}", e.manifest_sha256);
            }
        }
        let origin = Origin { url: url.clone(), sha256: sha256.clone() };
        layout::write_atomic(&tmp.join(lab::ORIGIN), (serde_json::to_string_pretty(&origin)? + "\n").as_bytes())?;
        Ok(m)
    })();
    let m = match staged {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e.context(format!("refusing the lab {url}; nothing was installed")));
        }
    };
    let dest = labs.join(m.lab_name());
    let installed = install(&tmp, &dest, &m, req.force);
    let _ = fs::remove_dir_all(&tmp);
    installed?;
    lab::link_latest(&layout.lab_link(&m.reproducible.recipe.name), &dest)?;
    let lab = Lab::open(&dest)?;
    println!(
        "lab {} (linux {}) installed in {:.1} s: {}",
        m.reproducible.recipe.name,
        m.reproducible.kernel.version,
        start.elapsed().as_secs_f64(),
        lab.dir.display()
    );
    println!("start it:  cd {} && ./run.sh          (debug: ./run.sh --debug, then ./gdb.sh in another terminal)", lab.dir.display());
    println!("check it:  cargo xtask boot-test --lab {}", lab.dir.display());
    Ok(lab)
}

/// Where a fetched lab came from (`.kernel-lab-origin`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Origin {
    pub url: String,
    pub sha256: String,
}

/// Removes unpack directories of fetches that were killed (the caller holds the fetch lock).
fn sweep_unpacks(labs: &Path) {
    for entry in fs::read_dir(labs).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".fetch-") && name.contains(".unpack-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Moves the checked `tmp` to `dest`, unless a different lab is there and `force` is off.
fn install(tmp: &Path, dest: &Path, m: &Manifest, force: bool) -> Result<()> {
    let _lock = lab::LabLock::exclusive(dest)?;
    layout::remove_abandoned_siblings(dest)?;
    if fs::symlink_metadata(dest).is_ok_and(|meta| !meta.is_dir()) {
        bail!("{} exists and is not a lab directory: move it away first", dest.display());
    }
    if dest.exists() {
        let same = Manifest::read(dest).is_ok_and(|old| old.reproducible == m.reproducible)
            && manifest::compare_files(dest, &m.reproducible.files).is_ok_and(|p| p.is_empty());
        if same {
            eprintln!("{} already holds this lab", dest.display());
            return Ok(());
        }
        if !force {
            bail!(
                "{} already holds a different lab of the same name: pass --force to replace it, or `cargo xtask lab rm {}` first",
                dest.display(),
                m.lab_name()
            );
        }
    }
    let staged = layout::tmp_sibling(dest);
    let _ = fs::remove_dir_all(&staged);
    fs::rename(tmp, &staged).with_context(|| format!("move {} to {}", tmp.display(), staged.display()))?;
    layout::replace_dir(&staged, dest)
}

/// The pack's URL, the sha256 it must have, and the index entry that named it.
fn locate(req: &FetchRequest) -> Result<(String, String, Option<IndexEntry>)> {
    let given = req.sha256.as_deref().map(str::to_ascii_lowercase);
    if let Some(sha) = &given {
        // Lowercased above, so any hex case is accepted.
        if !hash::is_sha256(sha) {
            bail!("--sha256 {sha:?} is not a sha256 (64 hex digits)");
        }
    }
    let what = &req.what;
    let looks_like_url = what.contains("://");
    let local = !looks_like_url && (what.contains('/') || what.ends_with(".tar.zst") || Path::new(what).exists());
    if let Some(index_url) = &req.index {
        if looks_like_url || local {
            bail!("with --index, name a recipe (e.g. `lab fetch lts --index {index_url}`), not {what:?}");
        }
        crate::recipe::check_name(what)?;
        let bytes = download::get_small(index_url).with_context(|| format!("fetch the lab index {index_url}"))?;
        let index = Index::parse(&bytes, index_url)?;
        let Some(entry) = index.newest(what) else {
            let names: BTreeSet<&str> = index.labs.iter().map(|e| e.recipe.as_str()).collect();
            bail!(
                "the lab index {index_url} has no {what} lab for {}; it has: {}",
                manifest::ARCH,
                names.into_iter().collect::<Vec<_>>().join(", ")
            );
        };
        if let Some(sha) = &given {
            if *sha != entry.sha256 {
                bail!("--sha256 {sha} disagrees with the index's {} for {}-{}", entry.sha256, entry.recipe, entry.kernel_version);
            }
        }
        let url = resolve_url(index_url, &entry.url)?;
        if index_url.starts_with("http://") && !is_loopback(index_url) {
            eprintln!(
                "WARNING: the index {index_url} came over plain http: anyone on the path could change the sha256 it gives; prefer https"
            );
        }
        return Ok((url, entry.sha256.clone(), Some(entry.clone())));
    }
    let Some(sha) = given else {
        bail!("lab fetch {what}: a sha256 is required: pass --sha256 HEX (from the pack's .sha256 file), or --index URL to take it from a lab index");
    };
    let url = if looks_like_url {
        what.clone()
    } else if local {
        let abs = fs::canonicalize(what).with_context(|| format!("{what}: no such pack file"))?;
        format!("file://{}", abs.display())
    } else {
        bail!("lab fetch {what}: a recipe name needs --index URL (a labs.json)");
    };
    Ok((url, sha, None))
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || h == "[::1]")
}

/// `rel` against the index's URL: `labs.json` at `https://h/r/labs.json` makes `x.tar.zst` into
/// `https://h/r/x.tar.zst`. Only http, https and file URLs.
pub fn resolve_url(index_url: &str, rel: &str) -> Result<String> {
    let base = reqwest::Url::parse(index_url).with_context(|| format!("index URL {index_url:?}"))?;
    let url = base.join(rel).with_context(|| format!("entry URL {rel:?} against {index_url}"))?;
    if !matches!(url.scheme(), "http" | "https" | "file") {
        bail!("entry URL {url} in {index_url}: only http, https and file URLs");
    }
    if base.scheme() != "file" && url.scheme() == "file" {
        bail!("entry URL {url} in {index_url}: a remote index may not point at local files");
    }
    Ok(url.to_string())
}

/// One installed lab, for `lab list`.
struct Listed {
    name: String,
    recipe: String,
    kernel: String,
    busybox: String,
    verdict: String,
    size: u64,
    origin: String,
}

/// `lab list`: installed labs with their versions, verdict, size and origin.
pub fn list(layout: &Layout) -> Result<()> {
    let labs = layout.labs_dir();
    let mut rows = Vec::new();
    for entry in fs::read_dir(&labs).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let lab = match Lab::open(&path) {
            Ok(lab) => lab,
            Err(e) => {
                let why = format!("{e:#}");
                rows.push(Listed {
                    name: name.clone(),
                    recipe: "?".into(),
                    kernel: "?".into(),
                    busybox: "?".into(),
                    verdict: "broken".into(),
                    size: dir_size(&path),
                    origin: format!("{} (remove it with `cargo xtask lab rm {name}`)", why.lines().next().unwrap_or("")),
                });
                continue;
            }
        };
        let verdict = fs::read_to_string(lab.file(lab::REPORT))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("verdict").and_then(|v| v.as_str()).map(str::to_string))
            .or_else(|| Manifest::read(&path).ok().and_then(|m| m.host.boot_test.map(|b| format!("{} (when built)", b.verdict))))
            .unwrap_or_else(|| "not run".into());
        let origin = match fs::read_to_string(lab.file(lab::ORIGIN)).ok().and_then(|t| serde_json::from_str::<Origin>(&t).ok()) {
            Some(o) => format!("fetched from {}", o.url),
            None => "built here".into(),
        };
        rows.push(Listed {
            name,
            recipe: lab.desc.recipe.clone(),
            kernel: lab.desc.kernel_version.clone(),
            busybox: lab.desc.busybox_version.clone(),
            verdict,
            size: dir_size(&path),
            origin,
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    if rows.is_empty() {
        println!("no labs in {}: build one with `cargo xtask kernel`, or `cargo xtask lab fetch`", labs.display());
        return Ok(());
    }
    println!("{:<24} {:<10} {:<12} {:<9} {:<18} {:>8}  origin", "lab", "recipe", "kernel", "busybox", "boot verdict", "MB");
    for r in rows {
        println!(
            "{:<24} {:<10} {:<12} {:<9} {:<18} {:>8.1}  {}",
            r.name,
            r.recipe,
            r.kernel,
            r.busybox,
            r.verdict,
            r.size as f64 / 1e6,
            r.origin
        );
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `lab rm NAME`: removes `artifacts/labs/NAME` (a `<recipe>-<version>` directory, or the recipe
/// link's target) and the recipe link when it pointed there.
pub fn remove(layout: &Layout, name: &str) -> Result<()> {
    let labs = layout.labs_dir();
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        bail!("lab rm {name:?}: give a lab name as `cargo xtask lab list` shows it");
    }
    let mut path = labs.join(name);
    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        // link_latest writes a bare name; any other target is not ours to follow.
        let target = fs::read_link(&path)?;
        if target.components().count() != 1 || !matches!(target.components().next(), Some(std::path::Component::Normal(_))) {
            bail!("{} points at {}, not at a lab in {}: remove the link by hand", path.display(), target.display(), labs.display());
        }
        path = labs.join(target);
    }
    if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        bail!("no lab {name} in {}: see `cargo xtask lab list`", labs.display());
    }
    let dir_name = path.file_name().expect("lab has a name").to_os_string();
    let _lock = lab::LabLock::exclusive(&path)?;
    // Renamed away first, so the lab disappears at once even if the removal is interrupted.
    let doomed = layout::scratch_sibling(&path, "rm");
    fs::rename(&path, &doomed).with_context(|| format!("move {} aside", path.display()))?;
    fs::remove_dir_all(&doomed).with_context(|| format!("remove {}", doomed.display()))?;
    for entry in fs::read_dir(&labs).into_iter().flatten().flatten() {
        let p = entry.path();
        if fs::read_link(&p).is_ok_and(|t| t.as_os_str() == dir_name) {
            fs::remove_file(&p).with_context(|| format!("remove the link {}", p.display()))?;
        }
    }
    println!("removed {}", path.display());
    Ok(())
}

#[cfg(test)]
#[path = "ready_tests.rs"]
mod tests;
