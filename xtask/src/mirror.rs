//! `cargo xtask mirror`: builds a directory in kernel.org's layout that `--mirror` can point at.
//!
//! With `--sign-key`, the mirror signs busybox the way it signs kernels: a clearsigned
//! `busybox/sha256sums.asc` lists every busybox tarball, and `fetch --keyring` with the mirror's
//! key (`kernel-lab-mirror.gpg`) accepts busybox only if its hash is in it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{
    fetch::{self, FetchPlan},
    hash,
    layout::{self, Layout},
    releases,
};

/// A kernel tarball to publish.
#[derive(Debug, Clone)]
pub struct LocalKernel {
    pub file: PathBuf,
    pub version: String,
    /// releases.json moniker: longterm, stable or mainline.
    pub moniker: String,
}

#[derive(Debug, Clone)]
pub struct LocalBusybox {
    pub file: PathBuf,
    pub version: String,
}

/// Offline mode: publishes local tarballs, writing releases.json, the kernel's and busybox's
/// sha256sums.asc (clearsigned with `sign_key` when given), busybox `.sha256` files and, when
/// signing, busybox `.sig` files.
pub fn from_local(sh: &Shell, out: &Path, kernels: &[LocalKernel], busyboxes: &[LocalBusybox], sign_key: Option<&str>) -> Result<()> {
    let mut entries = Vec::new();
    for k in kernels {
        releases::check_version(&k.version)?;
        if !["longterm", "stable", "mainline"].contains(&k.moniker.as_str()) {
            bail!("moniker {:?} for {} is not longterm, stable or mainline", k.moniker, k.version);
        }
        let ext = tar_ext(&k.file)?;
        let dir = releases::kernel_dir(&k.version)?;
        let name = format!("linux-{}.{ext}", k.version);
        publish(&k.file, &out.join(&dir).join(&name))?;
        let released = mtime(&k.file)?;
        entries.push((k, format!("https://cdn.kernel.org/{dir}/{name}"), released));
    }
    // One sums file per directory, listing every tarball in it (new ones and those already there).
    let mut dirs: Vec<String> = kernels.iter().map(|k| releases::kernel_dir(&k.version)).collect::<Result<_>>()?;
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        write_sums(sh, &out.join(dir), "linux-", sign_key)?;
    }
    for b in busyboxes {
        releases::check_busybox_version(&b.version)?;
        let name = format!("busybox-{}.tar.bz2", b.version);
        if tar_ext(&b.file)? != "tar.bz2" {
            bail!("busybox tarball {} is not a .tar.bz2", b.file.display());
        }
        let dest = out.join("busybox").join(&name);
        publish(&b.file, &dest)?;
        let sha = hash::sha256_file(&dest)?;
        layout::write_atomic(&out.join("busybox").join(format!("{name}.sha256")), format!("{sha}  {name}\n").as_bytes())?;
        if let Some(key) = sign_key {
            // busybox.net publishes a detached signature next to each tarball; so does the mirror.
            let sig = out.join("busybox").join(format!("{name}.sig"));
            let tmp = layout::tmp_sibling(&sig);
            cmd!(sh, "gpg --batch --yes --local-user {key} --detach-sign --output {tmp} {dest}")
                .quiet()
                .run()
                .with_context(|| format!("sign {} with key {key}", dest.display()))?;
            std::fs::rename(&tmp, &sig)?;
        }
    }
    if !busyboxes.is_empty() {
        write_sums(sh, &out.join("busybox"), "busybox-", sign_key)?;
    }
    if !entries.is_empty() {
        write_releases_json(out, &entries)?;
    }
    if let Some(key) = sign_key {
        // Publish the public key as a file, for clients' --keyring.
        let public = cmd!(sh, "gpg --batch --export {key}").output()?.stdout;
        if public.is_empty() {
            bail!("gpg --export {key} gave nothing: is the key in GNUPGHOME?");
        }
        layout::write_atomic(&out.join("kernel-lab-mirror.gpg"), &public)?;
    }
    Ok(())
}

/// Upstream mode: resolves and downloads (verified) what the plan needs, and republishes the
/// upstream's own releases.json and signed sums unchanged, so clients verify the same signature.
pub fn from_upstream(layout: &Layout, out: &Path, plan: &FetchPlan) -> Result<()> {
    let (lock, meta) = fetch::resolve(layout, plan)?;
    let sources = fetch::download_and_extract(layout, &lock, &plan.mirror)?;
    publish(&sources.kernel_tarball, &out.join(&lock.kernel.path))?;
    publish(&sources.busybox_tarball, &out.join(&lock.busybox.path))?;
    if let (Some(path), Some(asc)) = (&lock.kernel.sums_path, &meta.sums_asc) {
        layout::write_atomic(&out.join(path), asc)?;
    }
    if let Some(bb) = &meta.busybox_sums {
        layout::write_atomic(&out.join(format!("{}.sha256", lock.busybox.path)), bb)?;
    }
    if let Some(sig) = &meta.busybox_sig {
        layout::write_atomic(&out.join(format!("{}.sig", lock.busybox.path)), sig)?;
    }
    if let Some(asc) = &meta.busybox_sums_asc {
        layout::write_atomic(&out.join(releases::BUSYBOX_SUMS), asc)?;
    }
    if let Some(json) = &meta.releases_json {
        layout::write_atomic(&out.join("releases.json"), json)?;
    }
    Ok(())
}

fn tar_ext(file: &Path) -> Result<&'static str> {
    let name = file.to_string_lossy();
    for ext in ["tar.xz", "tar.bz2", "tar.gz"] {
        if name.ends_with(&format!(".{ext}")) {
            return Ok(ext);
        }
    }
    bail!("{} is not a .tar.xz, .tar.bz2 or .tar.gz tarball", file.display())
}

/// Hard-links (or copies) `from` to `to`, atomically.
fn publish(from: &Path, to: &Path) -> Result<()> {
    if !from.is_file() {
        bail!("{} does not exist or is not a file", from.display());
    }
    let dir = to.parent().context("no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = layout::tmp_sibling(to);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp).with_context(|| format!("copy {} -> {}", from.display(), tmp.display()))?;
    }
    std::fs::rename(&tmp, to).with_context(|| format!("rename into {}", to.display()))?;
    Ok(())
}

fn mtime(file: &Path) -> Result<i64> {
    let m = std::fs::metadata(file)?.modified()?;
    Ok(m.duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64)
}

/// `dir/sha256sums.asc` listing every `<prefix>*.tar.{xz,bz2,gz}` in `dir` (not their `.sig` or
/// `.sha256` companions), clearsigned with `sign_key` when given.
fn write_sums(sh: &Shell, dir: &Path, prefix: &str, sign_key: Option<&str>) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && [".tar.xz", ".tar.bz2", ".tar.gz"].iter().any(|ext| n.ends_with(ext)))
        .collect();
    names.sort();
    let mut text = String::new();
    for n in &names {
        text.push_str(&format!("{}  {n}\n", hash::sha256_file(&dir.join(n))?));
    }
    let path = dir.join("sha256sums.asc");
    let body = match sign_key {
        Some(key) => {
            cmd!(sh, "gpg --batch --yes --local-user {key} --clearsign")
                .stdin(text.as_bytes())
                .output()
                .with_context(|| format!("clearsign {} with key {key}", path.display()))?
                .stdout
        }
        None => text.into_bytes(),
    };
    layout::write_atomic(&path, &body)
}

fn write_releases_json(out: &Path, entries: &[(&LocalKernel, String, i64)]) -> Result<()> {
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort_by_key(|(k, _, _)| std::cmp::Reverse(releases::version_key(&k.version)));
    let stable = sorted.iter().find(|(k, _, _)| k.moniker != "mainline").map(|(k, _, _)| k.version.clone()).unwrap_or_default();
    let releases: Vec<serde_json::Value> = sorted
        .iter()
        .map(|(k, url, released)| {
            serde_json::json!({
                "iseol": false,
                "version": k.version,
                "moniker": k.moniker,
                "source": url,
                "pgp": url.replace(".tar.xz", ".tar.sign"),
                "released": { "timestamp": released, "isodate": "" },
            })
        })
        .collect();
    let doc = serde_json::json!({ "latest_stable": { "version": stable }, "releases": releases });
    layout::write_atomic(&out.join("releases.json"), serde_json::to_string_pretty(&doc)?.as_bytes())
}

/// `cargo xtask mirror`.
pub fn command(sh: &Shell, layout: &Layout, args: &crate::cli::MirrorArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| layout.default_mirror_dir());
    if args.from_upstream {
        let recipe = crate::recipe::load(&crate::recipe::find(&layout.recipes_dir(), args.recipe.as_deref().unwrap_or("lts")))?;
        let upstream = match &args.upstream {
            Some(url) => crate::source::Mirror::new(url)?,
            None => crate::source::Mirror::upstream(),
        };
        let plan = FetchPlan { keyring: args.keyring.clone(), ..FetchPlan::new(recipe, upstream) };
        from_upstream(layout, &out, &plan)?;
    } else {
        if args.add_kernel.is_empty() && args.add_busybox.is_empty() {
            bail!(
                "nothing to publish: pass --add-kernel FILE --version V and/or --add-busybox FILE --busybox-version V, or --from-upstream"
            );
        }
        if args.add_kernel.len() != args.version.len() {
            bail!("{} --add-kernel but {} --version: give one --version per kernel tarball", args.add_kernel.len(), args.version.len());
        }
        if args.add_busybox.len() != args.busybox_version.len() {
            bail!(
                "{} --add-busybox but {} --busybox-version: give one per busybox tarball",
                args.add_busybox.len(),
                args.busybox_version.len()
            );
        }
        let kernels: Vec<LocalKernel> = args
            .add_kernel
            .iter()
            .zip(&args.version)
            .enumerate()
            .map(|(i, (f, v))| LocalKernel {
                file: f.clone(),
                version: v.clone(),
                moniker: args.moniker.get(i).cloned().unwrap_or_else(|| "longterm".into()),
            })
            .collect();
        let busyboxes: Vec<LocalBusybox> =
            args.add_busybox.iter().zip(&args.busybox_version).map(|(f, v)| LocalBusybox { file: f.clone(), version: v.clone() }).collect();
        from_local(sh, &out, &kernels, &busyboxes, args.sign_key.as_deref())?;
    }
    println!("mirror: {}", out.display());
    Ok(())
}
