//! `cargo xtask verify`: rebuild a lab from its own inputs in a fresh directory and compare every
//! output with the lab's manifest.
//!
//! A lab carries what it was built from under `inputs/` (recipe, lock, fragments), laid out like a
//! checkout. The rebuild copies that into a new directory under `artifacts/verify/` (another path,
//! another clock time), fetches the lock's sources `--locked` (signatures checked again), builds
//! the lab there, and compares the two manifests' reproducible parts file by file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    cli::VerifyArgs,
    fetch::{self, FetchPlan},
    kbuild::{self, MakePlan},
    lab,
    layout::Layout,
    lock,
    manifest::{self, Manifest},
    pipeline, recipe,
    source::Mirror,
};

/// Where sources come from and how they are trusted (the fetch flags minus the recipe's choice).
#[derive(Debug, Clone)]
pub struct Trust {
    pub mirror: Mirror,
    pub keyring: Option<PathBuf>,
    pub busybox_keyring: Option<PathBuf>,
    pub insecure_skip_signature: bool,
}

/// `cargo xtask verify`: a difference is an error here, and only here.
pub fn command(sh: &Shell, layout: &Layout, args: &VerifyArgs) -> Result<()> {
    let dir = args.which.dir(layout);
    let src = &args.source;
    let trust = Trust {
        mirror: src.mirror()?,
        keyring: src.keyring.clone(),
        busybox_keyring: src.busybox_keyring.clone(),
        insecure_skip_signature: src.insecure_skip_signature,
    };
    let outcome = verify(sh, layout, &dir, &trust, &args.make.plan(), args.keep)?;
    if outcome.differing > 0 {
        bail!("verify {}: {} difference(s) from the manifest", dir.display(), outcome.differing);
    }
    Ok(())
}

/// The result of one comparison.
#[derive(Debug)]
pub struct Outcome {
    pub differing: usize,
    /// The rebuild directory (kept when something differs, or with `keep`).
    pub work: PathBuf,
}

/// Rebuilds the lab at `dir` and compares. Prints the table; an error only when the rebuild could
/// not run. The caller turns `differing > 0` into a failure.
pub fn verify(sh: &Shell, layout: &Layout, dir: &Path, trust: &Trust, make: &MakePlan, keep: bool) -> Result<Outcome> {
    let start = Instant::now();
    let m = Manifest::read(dir)?;
    let r = &m.reproducible;
    let name = m.lab_name();
    let mut rows = Vec::new();
    // A different toolchain explains every difference below it: say so first, as such.
    let here = kbuild::toolchain(sh)?;
    if here != r.toolchain {
        println!("NOTE: this host's toolchain differs from the one that built {name}; differences below may come from it:");
        for (what, a, b) in
            [("gcc", &r.toolchain.gcc, &here.gcc), ("ld", &r.toolchain.ld, &here.ld), ("make", &r.toolchain.make, &here.make)]
        {
            if a != b {
                println!("  {what}: manifest {a:?}, here {b:?}");
            }
        }
    }
    // The lab itself must still be what its manifest says.
    for p in manifest::compare_files(dir, &r.files)? {
        rows.push((true, format!("lab file changed since it was built: {p}")));
    }

    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let work = layout.artifacts.join("verify").join(format!("{name}-{stamp}"));
    let checkout = work.join("checkout");
    crate::layout::copy_tree(&dir.join(lab::INPUTS), &checkout).with_context(|| format!("copy the inputs of {}", dir.display()))?;
    refuse_host_paths(&checkout.join("configs"))?;
    let other = Layout { root: checkout.clone(), artifacts: checkout.join("artifacts/elsewhere"), cache: layout.cache.clone() };
    let recipe_path = other.recipes_dir().join(format!("{}.yaml", r.recipe.name));
    let recipe_sha = crate::hash::sha256_file(&recipe_path)
        .with_context(|| format!("{} has no inputs/recipes/{}.yaml: rebuild it with this kernel-lab", dir.display(), r.recipe.name))?;
    if recipe_sha != r.recipe.sha256 {
        bail!(
            "{}/inputs/recipes/{}.yaml is not the recipe the manifest names (sha256 {recipe_sha} vs {})",
            dir.display(),
            r.recipe.name,
            r.recipe.sha256
        );
    }
    let recipe = recipe::load(&recipe_path)?;
    let locked = lock::read(&recipe.lock_path())?.with_context(|| format!("{} has no lock in inputs/recipes/", dir.display()))?;
    let mut plan = FetchPlan::new(recipe, trust.mirror.clone());
    plan.request = locked.request.clone();
    plan.locked = true;
    plan.keyring = trust.keyring.clone();
    plan.busybox_keyring = trust.busybox_keyring.clone();
    plan.insecure_skip_signature = trust.insecure_skip_signature;
    println!("verify {name}: rebuilding from its inputs in {}", work.display());
    let sources = fetch::run(&other, &plan).context("fetch the lab's locked sources")?;
    let mut t = pipeline::Timings::default();
    let (rebuilt, _) = pipeline::build_lab(sh, &other, &plan.recipe, &sources, make, None, &mut t)?;
    let again = Manifest::read(&rebuilt.dir)?;
    rows.extend(compare(&m, &again));
    let differing = rows.iter().filter(|(d, _)| *d).count();
    println!("{:<10} what", "status");
    for (differs, line) in &rows {
        println!("{:<10} {line}", if *differs { "DIFFERENT" } else { "identical" });
    }
    println!("verify {name}: {} identical, {differing} different, in {:.0} s", rows.len() - differing, start.elapsed().as_secs_f64());
    if differing == 0 && !keep {
        fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    } else {
        println!("rebuild kept in {} (compare with diffoscope)", work.display());
    }
    Ok(Outcome { differing, work })
}

/// Rows comparing two manifests' reproducible parts: each input, then each file.
pub fn compare(a: &Manifest, b: &Manifest) -> Vec<(bool, String)> {
    let (ra, rb) = (&a.reproducible, &b.reproducible);
    let mut rows = Vec::new();
    let json = |v: &dyn erased::Json| v.json();
    for (what, x, y) in [
        ("recipe", json(&ra.recipe), json(&rb.recipe)),
        ("kernel source", json(&ra.kernel), json(&rb.kernel)),
        ("busybox source", json(&ra.busybox), json(&rb.busybox)),
        ("config", json(&ra.config), json(&rb.config)),
        ("patches", json(&ra.patches), json(&rb.patches)),
        ("settings", json(&ra.settings), json(&rb.settings)),
        ("toolchain", json(&ra.toolchain), json(&rb.toolchain)),
    ] {
        if x == y {
            rows.push((false, format!("input {what}")));
        } else {
            rows.push((true, format!("input {what}: manifest {x}, rebuilt {y}")));
        }
    }
    let files = |m: &Manifest| m.reproducible.files.iter().map(|f| (f.path.clone(), f.clone())).collect::<BTreeMap<_, _>>();
    let (fa, fb) = (files(a), files(b));
    for path in fa.keys().chain(fb.keys().filter(|p| !fa.contains_key(*p))) {
        match (fa.get(path), fb.get(path)) {
            (Some(x), Some(y)) if x == y => rows.push((false, format!("{path} {}", short(&x.sha256)))),
            (Some(x), Some(y)) => rows.push((
                true,
                format!(
                    "{path}: manifest {} {} bytes mode {}, rebuilt {} {} bytes mode {}",
                    short(&x.sha256),
                    x.size,
                    x.mode,
                    short(&y.sha256),
                    y.size,
                    y.mode
                ),
            )),
            (Some(_), None) => rows.push((true, format!("{path}: not in the rebuilt lab"))),
            (None, _) => rows.push((true, format!("{path}: only in the rebuilt lab"))),
        }
    }
    rows
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(16)]
}

/// serde values as compact JSON, for one-line comparisons.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// A lab's fragments are hostile input here: a string option naming a host path
/// (`CONFIG_INITRAMFS_SOURCE="/home/..."`, `CONFIG_EXTRA_FIRMWARE_DIR`, signing keys) would build
/// host files into the rebuilt kernel.
fn refuse_host_paths(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            refuse_host_paths(&path)?;
            continue;
        }
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        for line in text.lines() {
            let Some((name, value)) = line.trim().split_once("=\"") else { continue };
            let value = value.trim_end_matches('"');
            if name.starts_with("CONFIG_") && (value.starts_with('/') || value.starts_with('~') || value.contains("..")) {
                bail!("{}: {name} names a host path ({value:?}): verify does not build host files into a lab; refusing it", path.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_naming_host_paths_are_refused() {
        let dir = crate::testutil::scratch("repro-host-paths");
        fs::create_dir_all(dir.join("busybox")).unwrap();
        fs::write(dir.join("lab.config"), "CONFIG_SMP=y\nCONFIG_CMDLINE=\"console=ttyS0\"\n").unwrap();
        refuse_host_paths(&dir).unwrap();
        for bad in
            ["CONFIG_INITRAMFS_SOURCE=\"/home/u/.ssh\"", "CONFIG_EXTRA_FIRMWARE_DIR=\"../../etc\"", "CONFIG_MODULE_SIG_KEY=\"~/k.pem\""]
        {
            fs::write(dir.join("busybox/x.config"), format!("{bad}\n")).unwrap();
            let err = refuse_host_paths(&dir).unwrap_err().to_string();
            assert!(err.contains("names a host path"), "{bad}: {err}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compare_marks_inputs_and_files_that_differ() {
        let mut a = manifest::sample().clone();
        let entry = |path: &str, sha: char| manifest::FileEntry {
            path: path.into(),
            size: 1,
            mode: "0644".into(),
            sha256: sha.to_string().repeat(64),
        };
        a.reproducible.files = vec![entry("bzImage", 'a'), entry("lab.json", 'b'), entry("only-a", 'c')];
        let mut b = a.clone();
        b.reproducible.files = vec![entry("bzImage", 'a'), entry("lab.json", 'd'), entry("only-b", 'e')];
        b.reproducible.toolchain.gcc = "gcc 13".into();
        b.host.build_date = "another day".into();
        let rows = compare(&a, &b);
        let differing: Vec<&str> = rows.iter().filter(|(d, _)| *d).map(|(_, l)| l.as_str()).collect();
        assert_eq!(differing.len(), 4, "{differing:#?}");
        assert!(differing[0].starts_with("input toolchain"), "{differing:#?}");
        assert!(differing.iter().any(|l| l.starts_with("lab.json: manifest bbbb")));
        assert!(differing.contains(&"only-a: not in the rebuilt lab"));
        assert!(differing.contains(&"only-b: only in the rebuilt lab"));
        assert!(rows.iter().any(|(d, l)| !d && l.starts_with("bzImage")));
        assert!(compare(&a, &a).iter().all(|(d, _)| !d));
    }
}
