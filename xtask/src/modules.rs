//! Out-of-tree kernel modules from a recipe, built against the lab's kernel build tree.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kbuild::{self, KernelBuild, MakePlan};
use crate::recipe::{LoadedRecipe, ModuleSpec};

/// One built module: its `.ko` and how /init loads it.
#[derive(Debug, Clone)]
pub struct BuiltModule {
    /// File name, e.g. `klab.ko`.
    pub file: String,
    pub ko: PathBuf,
    pub load: bool,
    pub args: String,
}

/// Fails before the kernel build when the recipe has modules but the configured kernel cannot
/// load them.
pub fn require_modules_support(recipe: &LoadedRecipe, config: &Path) -> Result<()> {
    let Some(first) = recipe.recipe.modules.first() else { return Ok(()) };
    if !kbuild::config_has(config, "CONFIG_MODULES=y")? {
        bail!(
            "{}: modules such as {} need CONFIG_MODULES=y, but {} does not have it: add `modules.config` (configs/modules.config) to config.fragments",
            recipe.line_of("modules:"),
            first.dir.display(),
            config.display()
        );
    }
    Ok(())
}

/// Builds every module of the recipe in `work/<name>` (a fresh copy of its directory) with
/// `make -C <build> M=<dir> modules`, in the kernel's reproducible environment.
pub fn build(
    sh: &Shell,
    recipe: &LoadedRecipe,
    kernel: &KernelBuild,
    src: &Path,
    work: &Path,
    make: &MakePlan,
    epoch: u64,
) -> Result<Vec<BuiltModule>> {
    require_modules_support(recipe, &kernel.dir.join(".config"))?;
    let mut built: Vec<BuiltModule> = Vec::new();
    for spec in &recipe.recipe.modules {
        for m in build_one(sh, recipe, spec, kernel, src, work, make, epoch)? {
            // The name lands in /init's insmod line and in the lab's modules/ directory.
            let stem = m.file.trim_end_matches(".ko");
            if stem.is_empty() || !stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                bail!(
                    "{}: module file {:?} built from {}: name modules with letters, digits, _ or -",
                    recipe.line_of("modules:"),
                    m.file,
                    spec.dir.display()
                );
            }
            if built.iter().any(|b| b.file == m.file) {
                bail!("{}: two module directories build {}: rename one module", recipe.line_of("modules:"), m.file);
            }
            built.push(m);
        }
    }
    Ok(built)
}

#[allow(clippy::too_many_arguments)]
fn build_one(
    sh: &Shell,
    recipe: &LoadedRecipe,
    spec: &ModuleSpec,
    kernel: &KernelBuild,
    src: &Path,
    work: &Path,
    make: &MakePlan,
    epoch: u64,
) -> Result<Vec<BuiltModule>> {
    let origin = recipe.line_of(&spec.dir.display().to_string());
    let from = recipe.dir().join(&spec.dir);
    if !from.join("Kbuild").is_file() && !from.join("Makefile").is_file() {
        bail!("{origin}: module directory {} has no Kbuild or Makefile: an out-of-tree module needs one (obj-m += NAME.o)", from.display());
    }
    let name = spec.dir.file_name().context("module directory has no name")?.to_string_lossy().into_owned();
    let dir = work.join(&name);
    // A fresh copy each time: stale objects from another kernel must never be linked in.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    // Symlinks are refused, so a recipe cannot pull in files from outside its directory.
    crate::layout::copy_tree(&from, &dir).with_context(|| format!("{origin}: copy module sources"))?;
    let build = &kernel.dir;
    let m = {
        let mut m = std::ffi::OsString::from("M=");
        m.push(&dir);
        m
    };
    let j = make.jobs_arg();
    let maps = format!("{} -ffile-prefix-map={}=.", kbuild::prefix_maps(src, build), dir.display());
    let make_cmd = kbuild::reproducible_env(cmd!(sh, "make -C {build} {m} {j} modules"), epoch)
        .env("KBUILD_BUILD_VERSION", kbuild::BUILD_VERSION)
        .env("KCFLAGS", &maps)
        .env("KAFLAGS", &maps);
    let log = work.join(format!("{name}.log"));
    kbuild::run_streaming(make_cmd, &log, "modules", 10).with_context(|| format!("{origin}: build module {}", spec.dir.display()))?;
    let mut kos: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".ko"))
        .collect();
    kos.sort();
    if kos.is_empty() {
        bail!("{origin}: make built no .ko in {}: does its Kbuild say `obj-m += NAME.o`? see {}", dir.display(), log.display());
    }
    Ok(kos.into_iter().map(|file| BuiltModule { ko: dir.join(&file), file, load: spec.load, args: spec.args.clone() }).collect())
}

/// The /init lines that load the recipe's modules, in recipe order.
pub fn insmod_lines(modules: &[BuiltModule], kernel_version: &str) -> String {
    modules
        .iter()
        .filter(|m| m.load)
        .map(|m| {
            let args = if m.args.is_empty() { String::new() } else { format!(" {}", m.args) };
            format!("insmod {}/{}{args} || echo \"kernel-lab: insmod {} failed\"\n", guest_dir(kernel_version), m.file, m.file)
        })
        .collect()
}

/// Where modules live in the guest.
pub fn guest_dir(kernel_version: &str) -> String {
    format!("/lib/modules/{kernel_version}/extra")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::scratch;

    #[test]
    fn a_config_without_modules_is_refused_naming_the_fragment() {
        let dir = scratch("modules-config");
        let recipe_path = dir.join("mod.yaml");
        std::fs::write(
            &recipe_path,
            "kernel:\n  channel: longterm\nbusybox:\n  version: \"1.35.0\"\nconfig:\n  base: tinyconfig\n  fragments: [lab.config]\nmodules:\n  - dir: modules/klab\n    load: true\n",
        )
        .unwrap();
        let recipe = crate::recipe::load(&recipe_path).unwrap();
        let config = dir.join(".config");
        std::fs::write(&config, "CONFIG_64BIT=y\n# CONFIG_MODULES is not set\n").unwrap();
        let e = format!("{:#}", require_modules_support(&recipe, &config).unwrap_err());
        assert!(e.contains("mod.yaml:8") && e.contains("need CONFIG_MODULES=y") && e.contains("modules.config"), "{e}");
        std::fs::write(&config, "CONFIG_64BIT=y\nCONFIG_MODULES=y\n").unwrap();
        require_modules_support(&recipe, &config).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn init_loads_only_modules_marked_load() {
        let m = |file: &str, load, args: &str| BuiltModule { file: file.into(), ko: PathBuf::new(), load, args: args.into() };
        let lines = insmod_lines(&[m("a.ko", true, ""), m("b.ko", false, ""), m("c.ko", true, "x=1 y=2")], "6.12.1");
        assert_eq!(
            lines,
            "insmod /lib/modules/6.12.1/extra/a.ko || echo \"kernel-lab: insmod a.ko failed\"\n\
             insmod /lib/modules/6.12.1/extra/c.ko x=1 y=2 || echo \"kernel-lab: insmod c.ko failed\"\n"
        );
    }
}
