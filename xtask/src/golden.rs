//! Golden-file checks for generated text (tests only): a mismatch prints a unified diff.

use std::path::Path;
use std::process::Command;

/// Compares `actual` with `xtask/golden/<group>/<name>`; `UPDATE_GOLDEN=1` rewrites the file.
pub fn check(group: &str, name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(group).join(name);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read golden file {}: {e}; create it with UPDATE_GOLDEN=1 cargo test -p xtask", path.display()));
    if expected != actual {
        panic!(
            "{} differs from the generated text; if the change is intended, run \
             UPDATE_GOLDEN=1 cargo test -p xtask and review the diff:\n{}",
            path.display(),
            unified_diff(&path, actual)
        );
    }
}

/// `diff -u golden generated`, or both texts when diff cannot run.
fn unified_diff(golden: &Path, actual: &str) -> String {
    let tmp =
        std::env::temp_dir().join(format!("kernel-lab-golden-{}-{}", std::process::id(), golden.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, actual).unwrap();
    let out = Command::new("diff").args(["-u", "--label", "golden", "--label", "generated"]).arg(golden).arg(&tmp).output();
    let _ = std::fs::remove_file(&tmp);
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("(diff failed: {e})\n--- generated ---\n{actual}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mismatch_shows_a_unified_diff() {
        let dir = std::env::temp_dir().join(format!("kernel-lab-golden-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let golden = dir.join("file");
        std::fs::write(&golden, "one\ntwo\nthree\n").unwrap();
        let diff = super::unified_diff(&golden, "one\n2\nthree\n");
        assert!(diff.contains("-two\n+2\n") && diff.contains("--- golden"), "{diff}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
