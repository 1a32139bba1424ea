//! House rules checked on the source tree: every module starts with a `//!` line saying what it does.

mod common;

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The files under `dir` whose first line is not a `//!` doc comment, relative to `dir`'s parent.
fn missing_module_docs(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files.sort();
    files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.strip_prefix(dir.parent().unwrap()).unwrap_or(f).display().to_string())
        .collect()
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let missing = missing_module_docs(&src);
    assert!(
        missing.is_empty(),
        "these files must start with a one-line `//!` doc saying what the module does:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_check_names_an_undocumented_file() {
    let dir = common::scratch("tidy");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    std::fs::write(src.join("good.rs"), "//! Does one thing.\n").unwrap();
    std::fs::write(src.join("nested/bad.rs"), "// Not a module doc.\n//! Too late.\n").unwrap();
    std::fs::write(src.join("notes.txt"), "not rust\n").unwrap();
    assert_eq!(missing_module_docs(&src), vec!["src/nested/bad.rs".to_string()]);
    std::fs::remove_dir_all(dir).unwrap();
}
