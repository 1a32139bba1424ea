//! Fetch stage: request -> lock -> verified tarballs in the cache -> extracted source trees.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{
    download, extract, hash,
    layout::{self, Layout},
    lock::{self, BusyboxCheck, Lock, LockedBusybox, LockedKernel},
    recipe::LoadedRecipe,
    releases::{self, Request},
    source::{self, Mirror},
    verify,
};

/// Primary-key fingerprint of busybox's upstream signing key (Denis Vlasenko), which signs the
/// detached `busybox-X.tar.bz2.sig` on busybox.net.
pub const BUSYBOX_SIGNER: &str = "C9E9416F76E610DBD09D040F47B70C55ACC9965B";
/// That key, built in: busybox.net offers no WKD, and a key fetched next to the tarball proves nothing.
const BUSYBOX_KEY: &[u8] = include_bytes!("../keys/busybox-C9E9416F76E610DBD09D040F47B70C55ACC9965B.asc");

/// Everything the fetch stage needs to know, decided by the command line and the recipe.
#[derive(Debug, Clone)]
pub struct FetchPlan {
    pub recipe: LoadedRecipe,
    pub request: Request,
    pub mirror: Mirror,
    /// A user-supplied signing key (binary or armored); `None` means kernel.org's autosigner via WKD.
    /// It also signs a mirror's `busybox/sha256sums.asc`.
    pub keyring: Option<PathBuf>,
    pub locked: bool,
    /// Accept unsigned or wrongly signed checksums, for the kernel and busybox (the loud opt-out).
    pub insecure_skip_signature: bool,
    /// Key that signs busybox tarballs: the detached `.sig` must verify with it (instead of the
    /// mirror's signed sums or busybox's pinned upstream key).
    pub busybox_keyring: Option<PathBuf>,
    /// Let a fresh resolve move the lock to an older kernel than the one it records.
    pub allow_downgrade: bool,
}

impl FetchPlan {
    /// The recipe's own channel from `mirror`, with kernel.org's pinned signer and no opt-outs.
    pub fn new(recipe: LoadedRecipe, mirror: Mirror) -> FetchPlan {
        FetchPlan {
            request: recipe.request(),
            recipe,
            mirror,
            keyring: None,
            locked: false,
            insecure_skip_signature: false,
            busybox_keyring: None,
            allow_downgrade: false,
        }
    }
}

/// Verified, extracted sources.
#[derive(Debug, Clone)]
pub struct Sources {
    pub lock: Lock,
    pub kernel_tarball: PathBuf,
    pub busybox_tarball: PathBuf,
    pub kernel_src: PathBuf,
    pub busybox_src: PathBuf,
    /// Primary-key fingerprint that signed the kernel's sums; `None` when unverified.
    pub kernel_signer: Option<String>,
    /// Primary-key fingerprint that vouched for busybox in this run; `None` when unverified.
    pub busybox_signer: Option<String>,
}

/// What resolving fetched, kept so `mirror` can republish it byte for byte (signatures intact).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub releases_json: Option<Vec<u8>>,
    pub sums_asc: Option<Vec<u8>>,
    /// busybox's unsigned `.sha256`, when one was read.
    pub busybox_sums: Option<Vec<u8>>,
    /// busybox's detached `.sig`, when it verified busybox.
    pub busybox_sig: Option<Vec<u8>>,
    /// The mirror's clearsigned `busybox/sha256sums.asc`, when it verified busybox.
    pub busybox_sums_asc: Option<Vec<u8>>,
    /// Primary-key fingerprint that signed the kernel's sums (this run checked it).
    pub kernel_signer: Option<String>,
    /// Primary-key fingerprint that vouched for busybox (this run checked it).
    pub busybox_signer: Option<String>,
}

pub fn run(layout: &Layout, plan: &FetchPlan) -> Result<Sources> {
    let (lock, meta) = lock_for(layout, plan)?;
    let sources = download_and_extract(layout, &lock, &plan.mirror)?;
    Ok(Sources { kernel_signer: meta.kernel_signer, busybox_signer: meta.busybox_signer, ..sources })
}

/// A lock's kernel must be an answer to its request: an exact request names the version, a
/// series request its series. (The signed sums vouch for the bytes, not for the choice.)
fn check_answers(lock_path: &Path, request: &Request, version: &str) -> Result<()> {
    let ok = match request {
        Request::Exact(v) => version == v,
        Request::Longterm(Some(series)) => releases::series_of(version) == series,
        Request::Longterm(None) | Request::Stable | Request::Mainline => true,
    };
    if !ok {
        bail!(
            "--locked: lock {} pins linux {version}, which does not answer its request {request}: \
             delete the lock and run without --locked to resolve it again",
            lock_path.display()
        );
    }
    Ok(())
}

/// Reads the lock (`--locked`, checking its hashes against the signed sums again) or resolves
/// afresh and updates the lock when it changed.
pub fn lock_for(layout: &Layout, plan: &FetchPlan) -> Result<(Lock, Metadata)> {
    let lock_path = plan.recipe.lock_path();
    if plan.locked {
        let Some(old) = lock::read(&lock_path)? else {
            bail!("--locked: no lock file {}; run once without --locked to create it", lock_path.display());
        };
        let mut stale = Vec::new();
        if old.request != plan.request {
            stale.push(format!("request: {} -> {}", old.request, plan.request));
        }
        let want_bb = &plan.recipe.recipe.busybox.version;
        if &old.busybox.version != want_bb {
            stale.push(format!("busybox: {} -> {want_bb}", old.busybox.version));
        }
        if !stale.is_empty() {
            bail!("--locked: lock {} is stale; running without --locked would change:\n  {}", lock_path.display(), stale.join("\n  "));
        }
        check_answers(&lock_path, &plan.request, &old.kernel.version)?;
        let kernel_signer = reverify_kernel(layout, plan, &lock_path, &old.kernel)?;
        let busybox_signer = reverify_busybox(layout, plan, &lock_path, &old.busybox)?;
        return Ok((old, Metadata { kernel_signer, busybox_signer, ..Metadata::default() }));
    }
    let (old, old_version) = match lock::read(&lock_path) {
        Ok(old) => {
            let version = old.as_ref().map(|l| l.kernel.version.clone());
            (old, version)
        }
        Err(e) => {
            let legacy = e.downcast::<lock::Legacy>()?;
            eprintln!("lock {} (linux {}) is in an older format: re-resolving it", legacy.path.display(), legacy.kernel_version);
            (None, Some(legacy.kernel_version))
        }
    };
    let (new, meta) = resolve(layout, plan)?;
    if let Some(old_version) = &old_version {
        check_downgrade(&lock_path, plan, old_version, &new.kernel.version)?;
    }
    match &old {
        Some(old) if *old == new => {}
        Some(old) => {
            lock::write(&lock_path, &new)?;
            eprintln!("updated {}:\n  {}", lock_path.display(), lock::diff(old, &new).join("\n  "));
        }
        None => {
            lock::write(&lock_path, &new)?;
            eprintln!("wrote {}", lock_path.display());
        }
    }
    Ok((new, meta))
}

/// releases.json is not signed, so one that lists only an older release must not roll a lock
/// back; the user can ask for that by version, by series or with `--allow-downgrade`.
fn check_downgrade(lock_path: &Path, plan: &FetchPlan, old: &str, new: &str) -> Result<()> {
    if plan.allow_downgrade || releases::version_key(new) >= releases::version_key(old) {
        return Ok(());
    }
    match &plan.request {
        Request::Exact(v) if v == new => return Ok(()),
        Request::Longterm(Some(series)) if releases::series_of(new) == series && releases::series_of(old) != series => return Ok(()),
        _ => {}
    }
    bail!(
        "lock {} has linux {old}, but resolving {} now gives the older {new}: refusing to downgrade \
         (releases.json is unsigned; an old or edited one must not roll the lock back); \
         pass --allow-downgrade to accept {new}, or ask for it with --version {new}",
        lock_path.display(),
        plan.request
    )
}

/// Asks the mirror which versions answer the request and what their verified hashes are.
pub fn resolve(layout: &Layout, plan: &FetchPlan) -> Result<(Lock, Metadata)> {
    let mirror = &plan.mirror;
    let url = mirror.releases_json();
    let json = download::get_small(&url).with_context(|| format!("resolve {}", plan.request))?;
    let rels = releases::parse(&json).with_context(|| format!("read {url}"))?;
    let (version, tar_path, signed, released) = match releases::resolve(&rels, &plan.request) {
        Ok(r) => {
            let src = r.source.as_deref().unwrap_or_default();
            (r.version.clone(), source::url_path(src)?, r.pgp.is_some(), r.released.timestamp)
        }
        Err(e) if e.downcast_ref::<releases::NotListed>().is_some() => {
            // releases.json lists only the newest release of each series; older point releases
            // live at the usual place and are listed in the signed sums file.
            let Request::Exact(v) = &plan.request else { return Err(e) };
            (v.clone(), releases::kernel_tarball(v, true)?, true, 0)
        }
        Err(e) => return Err(e.context(format!("resolve {} from {url}", plan.request))),
    };
    // releases.json is not signed: its version names directories here, and only the signed sums
    // tie a file to a hash, so the file must be exactly the one the version names (which is
    // also the only form a lock may hold).
    releases::check_version(&version).with_context(|| format!("version in {url}"))?;
    let expected = releases::kernel_tarball(&version, signed)?;
    if tar_path != expected {
        bail!("{url}: release {version} points at {tar_path}, expected {expected}: refusing a mismatched tarball");
    }
    let file = tar_path.rsplit('/').next().unwrap_or(&tar_path).to_string();
    let mut meta = Metadata { releases_json: Some(json), ..Default::default() };

    let verified;
    let mut kernel_signer = None;
    let (sums_path, sha256) = if signed {
        let sums_path = releases::kernel_sums(&version)?;
        let sums_url = mirror.kernel_org(&sums_path);
        let asc = download::get_small(&sums_url)?;
        let (text, signer) = verified_sums(layout, plan, &asc, "the kernel").with_context(|| format!("verify {sums_url}"))?;
        verified = signer.is_some();
        kernel_signer = signer;
        let sha = verify::sums_lookup(&text, &file)
            .with_context(|| format!("{sums_url} has no sha256 line for {file}: the mirror is incomplete"))?;
        // Kept so that `--locked` checks the signature again, offline.
        layout::write_atomic(&vouch_path(layout, &sha, "asc"), &asc).context("cache the signed sums")?;
        meta.sums_asc = Some(asc);
        (Some(sums_path), sha)
    } else {
        if !plan.insecure_skip_signature {
            bail!(
                "{version} is an unsigned snapshot (no pgp signature and no line in sha256sums.asc); \
                 pass --insecure-skip-signature to accept it unverified, or use --lts/--stable"
            );
        }
        eprintln!("WARNING: {version} is unsigned; --insecure-skip-signature: trusting the first download of the kernel");
        verified = false;
        let url = mirror.kernel_org(&tar_path);
        let blob = download::fetch_unverified(layout, &url, &file)?;
        (None, hash::sha256_file(&blob)?)
    };
    let busybox = resolve_busybox(layout, plan, &mut meta)?;
    meta.kernel_signer = kernel_signer;
    meta.busybox_signer = busybox.signer.clone();
    let lock = Lock {
        request: plan.request.clone(),
        kernel: LockedKernel { version, file, path: tar_path, sums_path, sha256, released, verified },
        busybox,
    };
    Ok((lock, meta))
}

/// `--locked`: the lock's kernel hash must be the one the signed sums list for its file; the
/// sums come from the cache (kept by `resolve`), else from the mirror, and are verified again.
/// Returns the fingerprint that signed the sums (`None` for an accepted unverified kernel).
fn reverify_kernel(layout: &Layout, plan: &FetchPlan, lock_path: &Path, k: &LockedKernel) -> Result<Option<String>> {
    if !k.verified && !plan.insecure_skip_signature {
        bail!(
            "--locked: lock {} records an unverified kernel tarball (made with --insecure-skip-signature); \
             pass that flag again to accept it, or re-resolve without it",
            lock_path.display()
        );
    }
    let Some(sums_path) = &k.sums_path else {
        eprintln!("WARNING: --insecure-skip-signature: linux-{} is an unsigned snapshot; trusting the lock's sha256", k.version);
        return Ok(None);
    };
    let url = plan.mirror.kernel_org(sums_path);
    let cached = vouch_path(layout, &k.sha256, "asc");
    let (asc, (text, signer)) = cached_then_fresh(&cached, &url, |asc| verified_sums(layout, plan, asc, "the kernel"))
        .with_context(|| format!("--locked: verify {url} (cached as {}) again", cached.display()))?;
    let listed = verify::sums_lookup(&text, &k.file);
    if listed.as_deref() != Some(k.sha256.as_str()) {
        bail!(
            "--locked: lock {}: kernel.sha256 {} is not what the signed {sums_path} lists for {} ({}): refusing it; \
             fix: delete the lock and run `cargo xtask fetch` without --locked to re-resolve it",
            lock_path.display(),
            k.sha256,
            k.file,
            listed.as_deref().unwrap_or("no line")
        );
    }
    layout::write_atomic(&cached, &asc).context("cache the signed sums")?;
    Ok(signer)
}

/// Finds busybox's hash and verifies it: with `--busybox-keyring`, by the detached `.sig`;
/// otherwise by the mirror's signed `busybox/sha256sums.asc`, else by the `.sig` with busybox's
/// pinned upstream key. `--insecure-skip-signature` accepts the unsigned `.sha256` instead.
fn resolve_busybox(layout: &Layout, plan: &FetchPlan, meta: &mut Metadata) -> Result<LockedBusybox> {
    let version = &plan.recipe.recipe.busybox.version;
    releases::check_busybox_version(version).with_context(|| format!("busybox.version in {}", plan.recipe.path.display()))?;
    let (file, path) = releases::busybox_tarball(version);
    let locked = |sha256: String, check: BusyboxCheck, signer: Option<String>| LockedBusybox {
        version: version.clone(),
        file: file.clone(),
        path: path.clone(),
        sha256,
        verified: signer.is_some(),
        check,
        signer,
    };
    let mut failures = Vec::new();
    if let Some(key) = &plan.busybox_keyring {
        let sha = listed_busybox_sha(&plan.mirror, &path, &file, meta)?;
        let checked = user_keyring(layout, key).and_then(|(keyring, fprs)| busybox_sig(layout, &plan.mirror, &path, &sha, &keyring, &fprs));
        match checked.with_context(|| format!("with --busybox-keyring {}", key.display())) {
            Ok((signer, sig)) => {
                meta.busybox_sig = Some(sig);
                return Ok(locked(sha, BusyboxCheck::KeyringSig, Some(signer)));
            }
            Err(e) => failures.push(e),
        }
    } else {
        match busybox_mirror_sums(layout, plan, &file, None) {
            Ok((sha, signer, asc)) => {
                layout::write_atomic(&vouch_path(layout, &sha, "asc"), &asc).context("cache the signed busybox sums")?;
                meta.busybox_sums_asc = Some(asc);
                return Ok(locked(sha, BusyboxCheck::MirrorSums, Some(signer)));
            }
            Err(e) => failures.push(e),
        }
        let upstream = listed_busybox_sha(&plan.mirror, &path, &file, meta).and_then(|sha| {
            let keyring = busybox_upstream_keyring(layout)?;
            let (signer, sig) = busybox_sig(layout, &plan.mirror, &path, &sha, &keyring, &[BUSYBOX_SIGNER.to_string()])
                .with_context(|| format!("with busybox's pinned upstream key {BUSYBOX_SIGNER}"))?;
            Ok((sha, signer, sig))
        });
        match upstream {
            Ok((sha, signer, sig)) => {
                meta.busybox_sig = Some(sig);
                return Ok(locked(sha, BusyboxCheck::UpstreamSig, Some(signer)));
            }
            Err(e) => failures.push(e),
        }
    }
    let why: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
    if !plan.insecure_skip_signature {
        bail!(
            "{file} is not verified:\n  {}\npass --keyring with the key that signs the mirror's busybox/sha256sums.asc, \
             --busybox-keyring with the key of its .sig, or --insecure-skip-signature to accept it unverified",
            why.join("\n  ")
        );
    }
    eprintln!("WARNING: --insecure-skip-signature: {file} is not verified ({}); trusting the mirror's .sha256", why.join("; "));
    let sha = listed_busybox_sha(&plan.mirror, &path, &file, meta)?;
    Ok(locked(sha, BusyboxCheck::None, None))
}

/// `--locked`: checks busybox again the way the lock says it was checked.
/// Returns the fingerprint that vouched for busybox now (`None` when accepted unverified).
fn reverify_busybox(layout: &Layout, plan: &FetchPlan, lock_path: &Path, b: &LockedBusybox) -> Result<Option<String>> {
    let mirror = &plan.mirror;
    let result = match b.check {
        BusyboxCheck::None => {
            if !plan.insecure_skip_signature {
                bail!(
                    "--locked: lock {} records an unverified busybox tarball (made with --insecure-skip-signature); \
                     pass that flag again to accept it, or re-resolve without it",
                    lock_path.display()
                );
            }
            Err(anyhow::anyhow!("the lock records it unverified"))
        }
        BusyboxCheck::MirrorSums => busybox_mirror_sums(layout, plan, &b.file, Some(&b.sha256)).and_then(|(sha, signer, asc)| {
            if sha != b.sha256 {
                bail!("busybox.sha256 {} is not what the signed busybox sums list for {} ({sha})", b.sha256, b.file);
            }
            layout::write_atomic(&vouch_path(layout, &sha, "asc"), &asc).context("cache the signed busybox sums")?;
            Ok(signer)
        }),
        BusyboxCheck::UpstreamSig => busybox_upstream_keyring(layout)
            .and_then(|keyring| busybox_sig(layout, mirror, &b.path, &b.sha256, &keyring, &[BUSYBOX_SIGNER.to_string()]))
            .map(|(signer, _)| signer),
        BusyboxCheck::KeyringSig => match &plan.busybox_keyring {
            Some(key) => user_keyring(layout, key)
                .and_then(|(keyring, fprs)| busybox_sig(layout, mirror, &b.path, &b.sha256, &keyring, &fprs))
                .map(|(signer, _)| signer),
            None => Err(anyhow::anyhow!("the lock records a busybox checked with --busybox-keyring: pass it again")),
        },
    };
    match result {
        Ok(signer) => Ok(Some(signer)),
        Err(e) if plan.insecure_skip_signature => {
            eprintln!("WARNING: --insecure-skip-signature: {} is not verified ({e:#})", b.file);
            Ok(None)
        }
        Err(e) => Err(e.context(format!(
            "--locked: lock {}: verify {} again ({}); fix: delete the lock and run `cargo xtask fetch` without --locked to re-resolve it",
            lock_path.display(),
            b.file,
            b.check
        ))),
    }
}

/// busybox's hash as its unsigned `.sha256` states it: only a name for the download, which a
/// signature then checks.
fn listed_busybox_sha(mirror: &Mirror, path: &str, file: &str, meta: &mut Metadata) -> Result<String> {
    let url = mirror.busybox(&format!("{path}.sha256"));
    let sums = match &meta.busybox_sums {
        Some(s) => s.clone(),
        None => download::get_small(&url)?,
    };
    let sha = verify::sums_lookup(&String::from_utf8_lossy(&sums), file).with_context(|| format!("{url} has no sha256 line for {file}"))?;
    meta.busybox_sums = Some(sums);
    Ok(sha)
}

/// The hash the mirror's clearsigned `busybox/sha256sums.asc` lists for `file`, its signer and
/// the signed bytes. `cached_for`: the sha256 whose cached copy to read first (`--locked`).
fn busybox_mirror_sums(layout: &Layout, plan: &FetchPlan, file: &str, cached_for: Option<&str>) -> Result<(String, String, Vec<u8>)> {
    let url = plan.mirror.busybox(releases::BUSYBOX_SUMS);
    // kernel.org's autosigner does not sign busybox: a sums file it signed elsewhere, served here,
    // must not vouch for a busybox. Only a mirror key the user chose (--keyring, or another WKD
    // pin through KERNEL_LAB_SIGNER_FPR) does.
    let pinned = wkd_signer_pin();
    if plan.keyring.is_none() && pinned.eq_ignore_ascii_case(verify::KERNEL_ORG_AUTOSIGNER) {
        bail!("{url} counts only with the mirror's own key (--keyring, or KERNEL_LAB_SIGNER_FPR): kernel.org's autosigner does not sign busybox");
    }
    let (keyring, fprs) = keyring(layout, plan)?;
    let check = |asc: &[u8]| clearsigned_by(&keyring, &fprs, asc).with_context(|| format!("verify {url}"));
    let (asc, (text, signer)) = match cached_for {
        Some(sha) => cached_then_fresh(&vouch_path(layout, sha, "asc"), &url, check)?,
        None => {
            let asc = download::get_small(&url)?;
            let checked = check(&asc)?;
            (asc, checked)
        }
    };
    let sha = verify::sums_lookup(&text, file).with_context(|| format!("the signed {url} has no sha256 line for {file}"))?;
    Ok((sha, signer, asc))
}

/// Checks busybox's detached `.sig` (cached, else from the mirror) over the tarball with
/// `sha256` (cached, else downloaded) against `keyring`; returns the signer and the signature.
fn busybox_sig(layout: &Layout, mirror: &Mirror, path: &str, sha256: &str, keyring: &Path, fprs: &[String]) -> Result<(String, Vec<u8>)> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let tarball = download::fetch_verified(layout, &mirror.busybox(path), sha256, file)?;
    let sig_url = mirror.busybox(&format!("{path}.sig"));
    let cached = vouch_path(layout, sha256, "sig");
    let sig = cached_or_get(&cached, &sig_url)?;
    // gpgv reads the signature from a file; an unverified one never takes the cached name.
    let tmp = layout::tmp_sibling(&cached);
    layout::write_atomic(&tmp, &sig)?;
    let mut last = None;
    for fpr in fprs {
        match verify::verify_detached(keyring, &tarball, &tmp, Some(fpr)) {
            Ok(()) => {
                std::fs::rename(&tmp, &cached).with_context(|| format!("move {} to {}", tmp.display(), cached.display()))?;
                return Ok((fpr.to_ascii_uppercase(), sig));
            }
            Err(e) => last = Some(e),
        }
    }
    let _ = std::fs::remove_file(&tmp);
    let err = last.unwrap_or_else(|| anyhow::anyhow!("keyring {} holds no key", keyring.display()));
    Err(err.context(format!("verify {sig_url}")))
}

/// busybox's upstream key as a binary keyring in the cache, refused unless it has the pinned
/// fingerprint.
fn busybox_upstream_keyring(layout: &Layout) -> Result<PathBuf> {
    let path = layout.cache_key(BUSYBOX_SIGNER);
    if !path.is_file() {
        let key = verify::key_with_fingerprint(BUSYBOX_KEY, BUSYBOX_SIGNER).context("read busybox's key built into kernel-lab")?;
        layout::write_atomic(&path, &key).context("cache busybox's key")?;
    }
    Ok(path)
}

/// `<cache>/vouch/<sha256>.<ext>`: the signed sums or signature that vouched for the file with
/// `sha256`, kept so that `--locked` can verify it again offline.
fn vouch_path(layout: &Layout, sha256: &str, ext: &str) -> PathBuf {
    layout.cache.join("vouch").join(format!("{sha256}.{ext}"))
}

/// The cached copy at `path`, else the bytes at `url` (which the caller verifies before caching).
/// A cached vouch (signed sums) is checked first; one that no longer verifies (signed by another
/// mirror's key, or damaged) is replaced by the mirror's current copy, which must verify.
fn cached_then_fresh<T>(path: &Path, url: &str, check: impl Fn(&[u8]) -> Result<T>) -> Result<(Vec<u8>, T)> {
    let fresh = || -> Result<(Vec<u8>, T)> {
        let bytes = download::get_small(url)?;
        let checked = check(&bytes)?;
        Ok((bytes, checked))
    };
    match std::fs::read(path) {
        Ok(bytes) => match check(&bytes) {
            Ok(checked) => Ok((bytes, checked)),
            Err(e) => {
                eprintln!("note: the cached {} does not verify ({e:#}); fetching {url} again", path.display());
                fresh()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fresh(),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn cached_or_get(path: &Path, url: &str) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => download::get_small(url),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// The signed text of a clearsigned sums file and the signer's fingerprint; with the opt-out, the
/// unverified text and `None` (warning that `what`'s checksums were not verified); otherwise an error.
fn verified_sums(layout: &Layout, plan: &FetchPlan, asc: &[u8], what: &str) -> Result<(String, Option<String>)> {
    let result = keyring(layout, plan).and_then(|(keyring, fprs)| clearsigned_by(&keyring, &fprs, asc));
    match result {
        Ok((text, fpr)) => Ok((text, Some(fpr))),
        Err(e) if plan.insecure_skip_signature => {
            eprintln!("WARNING: --insecure-skip-signature: using unverified checksums for {what} ({e:#})");
            Ok((String::from_utf8_lossy(asc).into_owned(), None))
        }
        Err(e) => Err(e),
    }
}

/// The signed text of `asc` and the fingerprint (of `fprs`) that signed it.
fn clearsigned_by(keyring: &Path, fprs: &[String], asc: &[u8]) -> Result<(String, String)> {
    let mut last = None;
    for fpr in fprs {
        match verify::verify_clearsigned(keyring, asc, fpr) {
            Ok(text) => return Ok((text, fpr.to_ascii_uppercase())),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("keyring {} holds no key", keyring.display())))
}

/// The fingerprint the WKD-fetched signer must have: kernel.org's autosigner, unless a mirror
/// that publishes its own key is pinned with KERNEL_LAB_SIGNER_FPR.
fn wkd_signer_pin() -> String {
    std::env::var("KERNEL_LAB_SIGNER_FPR").unwrap_or_else(|_| verify::KERNEL_ORG_AUTOSIGNER.to_string())
}

/// The keyring to check signatures with and the fingerprints it may sign with.
fn keyring(layout: &Layout, plan: &FetchPlan) -> Result<(PathBuf, Vec<String>)> {
    if let Some(file) = &plan.keyring {
        return user_keyring(layout, file);
    }
    // The pin can be moved for a mirror that publishes its own key over WKD.
    let fpr = wkd_signer_pin();
    let email = verify::KERNEL_ORG_AUTOSIGNER_EMAIL;
    let path = wkd_keyring(layout, &plan.mirror.wkd_base(), email, &fpr)
        .with_context(|| format!("get the signing key {fpr} ({email}); or pass --keyring FILE"))?;
    Ok((path, vec![fpr]))
}

/// A binary keyring holding `email`'s key, fetched once over WKD and cached by fingerprint.
/// The key is refused unless one of its primary keys has `expected_fpr`.
///
/// A cached key older than `KEY_MAX_AGE` is fetched again and replaced (never merged), so a
/// revocation or a new expiry date reaches us; offline, the old copy is used with a warning.
fn wkd_keyring(layout: &Layout, base: &str, email: &str, expected_fpr: &str) -> Result<PathBuf> {
    let expected = expected_fpr.to_ascii_uppercase();
    let path = layout.cache_key(&expected);
    // A modification time in the future (clock skew, or planted) counts as stale, not as new.
    let age = std::fs::metadata(&path).ok().and_then(|m| m.modified().ok()).map(|t| t.elapsed().unwrap_or(KEY_MAX_AGE));
    if age.is_some_and(|a| a < KEY_MAX_AGE) {
        return Ok(path);
    }
    let fetched = (|| {
        let bytes = download::wkd_key(base, email)?;
        let url = download::wkd_url(base, email);
        verify::key_with_fingerprint(&bytes, &expected).with_context(|| format!("read the key from {url}"))
    })();
    match (fetched, age) {
        (Ok(key), _) => {
            layout::write_atomic(&path, &key).with_context(|| format!("cache the key of {email}"))?;
            Ok(path)
        }
        (Err(e), Some(age)) => {
            eprintln!(
                "warning: could not refresh signing key {expected} ({e:#}); using the copy cached {} days ago, which cannot show a revocation made since",
                age.as_secs() / 86400
            );
            Ok(path)
        }
        (Err(e), None) => Err(e),
    }
}

/// How long a key fetched over WKD is used before it is fetched again.
const KEY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A user's key file (binary or armored) as a binary keyring gpgv can read, with its fingerprints.
fn user_keyring(layout: &Layout, file: &Path) -> Result<(PathBuf, Vec<String>)> {
    let bytes = std::fs::read(file).with_context(|| format!("read keyring {}", file.display()))?;
    let key = verify::dearmor_if_needed(&bytes).with_context(|| format!("keyring {}", file.display()))?;
    let fprs = verify::key_fingerprints(&key).with_context(|| format!("keyring {}", file.display()))?;
    let path = layout.cache.join("keys").join(format!("user-{}.gpg", hash::sha256_bytes(&key)));
    if !path.is_file() {
        layout::write_atomic(&path, &key)?;
    }
    Ok((path, fprs))
}

/// Downloads (or finds in the cache) both tarballs, whose hashes the lock holds and `lock_for`
/// verified, and extracts them.
pub fn download_and_extract(layout: &Layout, lock: &Lock, mirror: &Mirror) -> Result<Sources> {
    let k = &lock.kernel;
    let kernel_tarball = download::fetch_verified(layout, &mirror.kernel_org(&k.path), &k.sha256, &k.file)
        .with_context(|| format!("fetch linux-{}", k.version))?;
    let b = &lock.busybox;
    let busybox_tarball = download::fetch_verified(layout, &mirror.busybox(&b.path), &b.sha256, &b.file)
        .with_context(|| format!("fetch busybox-{}", b.version))?;
    let kernel_src = layout.kernel_src(&k.version);
    extract::extract(&kernel_tarball, &k.sha256, &kernel_src, &k.file)
        .with_context(|| format!("extract {} into {}", k.file, kernel_src.display()))?;
    let busybox_src = layout.busybox_src(&b.version);
    check_tree_version(&kernel_src, &k.version).with_context(|| format!("{} from {}", kernel_src.display(), k.file))?;
    extract::extract(&busybox_tarball, &b.sha256, &busybox_src, &b.file)
        .with_context(|| format!("extract {} into {}", b.file, busybox_src.display()))?;
    check_tree_version(&busybox_src, &b.version).with_context(|| format!("{} from {}", busybox_src.display(), b.file))?;
    Ok(Sources { lock: lock.clone(), kernel_tarball, busybox_tarball, kernel_src, busybox_src, kernel_signer: None, busybox_signer: None })
}

/// The version a source tree's top Makefile declares must be the one we asked for: a signature
/// vouches for bytes, not for their name, so an older signed tarball served under a newer name
/// would otherwise be built as the newer version.
fn check_tree_version(src: &Path, version: &str) -> Result<()> {
    let makefile = src.join("Makefile");
    let text = std::fs::read_to_string(&makefile).with_context(|| format!("read {}", makefile.display()))?;
    let field = |name: &str| -> String {
        text.lines()
            .take(40)
            .find_map(|l| l.strip_prefix(name).map(str::trim_start).and_then(|r| r.strip_prefix('=')).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let (v, p, sub, extra) = (field("VERSION"), field("PATCHLEVEL"), field("SUBLEVEL"), field("EXTRAVERSION"));
    let declared = format!("{v}.{p}.{}{extra}", if sub.is_empty() { "0" } else { &sub });
    // linux-6.13.tar.xz declares 6.13.0 (SUBLEVEL = 0); busybox-1.35.0 declares 1.35.0.
    let (base, suffix) = version.split_at(version.find('-').unwrap_or(version.len()));
    let asked = if base.matches('.').count() == 1 { format!("{base}.0{suffix}") } else { version.to_string() };
    if declared != asked {
        bail!(
            "its Makefile declares version {declared}, but the tarball was fetched as {version}: \
             the mirror served another release under this name; refusing it"
        );
    }
    Ok(())
}

/// SOURCE_DATE_EPOCH for a build: the release date, or for versions releases.json did not list,
/// the newest mtime of the top-level Makefile (tar keeps it, so it is stable too).
pub fn release_epoch(lock: &Lock, kernel_src: &Path) -> Result<u64> {
    if lock.kernel.released > 0 {
        return Ok(lock.kernel.released as u64);
    }
    let meta = std::fs::metadata(kernel_src.join("Makefile")).with_context(|| format!("read {}/Makefile", kernel_src.display()))?;
    let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH)?;
    Ok(mtime.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::TestKey;

    #[test]
    fn busybox_key_built_in_is_the_pinned_one() {
        let dir = crate::testutil::scratch("fetch-bbkey");
        let layout = Layout { root: dir.clone(), artifacts: dir.join("artifacts"), cache: dir.join("cache") };
        let path = busybox_upstream_keyring(&layout).unwrap();
        assert_eq!(verify::key_fingerprints(&std::fs::read(&path).unwrap()).unwrap(), vec![BUSYBOX_SIGNER.to_string()]);
        let other = TestKey::new("Not Busybox");
        let err = verify::key_with_fingerprint(&other.armored, BUSYBOX_SIGNER).unwrap_err().to_string();
        assert!(err.contains(BUSYBOX_SIGNER), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_tree_must_declare_the_version_it_was_fetched_as() {
        let dir = crate::testutil::scratch("fetch-tree-version");
        let write = |v: &str, p: &str, s: &str, e: &str| {
            std::fs::write(
                dir.join("Makefile"),
                format!("# SPDX\nVERSION = {v}\nPATCHLEVEL = {p}\nSUBLEVEL = {s}\nEXTRAVERSION ={e}\nNAME = x\n"),
            )
            .unwrap()
        };
        write("6", "12", "118", "");
        check_tree_version(&dir, "6.12.118").unwrap();
        let err = format!("{:#}", check_tree_version(&dir, "6.12.119").unwrap_err());
        assert!(err.contains("declares version 6.12.118") && err.contains("fetched as 6.12.119"), "{err}");
        write("6", "13", "0", " -rc1");
        check_tree_version(&dir, "6.13-rc1").unwrap();
        write("6", "13", "0", "");
        check_tree_version(&dir, "6.13").unwrap();
        assert!(check_tree_version(&dir, "6.12").is_err());
        // busybox: an older signed release served as 1.36.1.
        write("1", "30", "1", "");
        check_tree_version(&dir, "1.30.1").unwrap();
        assert!(check_tree_version(&dir, "1.36.1").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_locked_kernel_must_answer_the_request() {
        let lock = Path::new("recipes/lts.lock");
        check_answers(lock, &Request::Exact("6.12.117".into()), "6.12.117").unwrap();
        let err = format!("{:#}", check_answers(lock, &Request::Exact("6.12.117".into()), "6.1.1").unwrap_err());
        assert!(err.contains("pins linux 6.1.1") && err.contains("recipes/lts.lock"), "{err}");
        check_answers(lock, &Request::Longterm(Some("6.12".into())), "6.12.118").unwrap();
        assert!(check_answers(lock, &Request::Longterm(Some("6.12".into())), "6.1.150").is_err());
        check_answers(lock, &Request::Longterm(None), "6.1.150").unwrap();
    }

    #[test]
    fn wkd_keyring_fetches_once_and_checks_the_fingerprint() {
        let key = TestKey::new("Wkd Signer");
        let dir = crate::testutil::scratch("fetch-wkd");
        let mirror = dir.join("mirror");
        let email = "Auto.Signer@example.org";
        let url_path = download::wkd_url("", email);
        let rel = url_path.split('?').next().unwrap().trim_start_matches('/');
        std::fs::create_dir_all(mirror.join(rel).parent().unwrap()).unwrap();
        std::fs::write(mirror.join(rel), &key.armored).unwrap();
        let server = crate::serve::spawn(mirror, "127.0.0.1:0").unwrap();
        let layout = Layout { root: dir.clone(), artifacts: dir.join("artifacts"), cache: dir.join("cache") };
        let base = server.url("");

        let err = format!("{:#}", wkd_keyring(&layout, &base, email, verify::KERNEL_ORG_AUTOSIGNER).unwrap_err());
        let refused = format!("has fingerprint {}, expected {}: refusing it", key.fpr, verify::KERNEL_ORG_AUTOSIGNER);
        assert!(err.contains(&format!("read the key from {base}/.well-known/openpgpkey/hu/")) && err.contains(&refused), "{err}");
        assert!(!layout.cache_key(verify::KERNEL_ORG_AUTOSIGNER).exists());

        let path = wkd_keyring(&layout, &base, email, &key.fpr.to_lowercase()).unwrap();
        assert_eq!(path, layout.cache_key(&key.fpr));
        assert_eq!(std::fs::read(&path).unwrap(), key.public, "cached key is stored binary");
        let requests = server.requests().len();
        assert_eq!(wkd_keyring(&layout, &base, email, &key.fpr).unwrap(), path);
        assert_eq!(server.requests().len(), requests, "a cached key needs no request");
        assert!(server.requests()[0].starts_with("GET /.well-known/openpgpkey/hu/"));

        let sums = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  linux-6.12.117.tar.xz\n";
        assert_eq!(verify::verify_clearsigned(&path, &key.clearsign(sums), &key.fpr).unwrap(), sums);

        // A week later the key is fetched again and replaced, not merged.
        let week_ago = std::time::SystemTime::now() - KEY_MAX_AGE - std::time::Duration::from_secs(60);
        std::fs::write(&path, b"stale").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(week_ago).unwrap();
        let before = server.requests().len();
        assert_eq!(wkd_keyring(&layout, &base, email, &key.fpr).unwrap(), path);
        assert_eq!(server.requests().len(), before + 1, "an old key is fetched again");
        assert_eq!(std::fs::read(&path).unwrap(), key.public);
        // Offline, an old copy is used (with a warning) rather than failing.
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(week_ago).unwrap();
        drop(server);
        assert_eq!(wkd_keyring(&layout, &dir.join("gone").display().to_string(), email, &key.fpr).unwrap(), path);
        assert_eq!(std::fs::read(&path).unwrap(), key.public);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
