//! Tests of packs, the index and `lab fetch` on small hand-made labs (no kernel build).

use super::*;

use std::io::Write;
use std::num::NonZeroU32;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use crate::testutil::scratch;

const TOP: &str = "kernel-lab-lts-6.12.117-x86_64";
const PACK: &str = "kernel-lab-lts-6.12.117-x86_64.tar.zst";
/// Not the sample's 1, so a pack dated by anything else (a file's mtime, 0) shows.
const EPOCH: u64 = 1_734_000_000;

fn write_file(dir: &Path, rel: &str, bytes: &[u8], mode: u32) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, bytes).unwrap();
    // Explicitly: the umask must not decide what the manifest lists.
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

fn description(version: &str) -> lab::Description {
    lab::Description {
        recipe: "lts".into(),
        kernel_version: version.into(),
        busybox_version: "1.35.0".into(),
        smp: NonZeroU32::new(2).unwrap(),
        uid: 1000,
        nic: crate::recipe::Nic::E1000,
        checks: Vec::new(),
        mitigations: Some("none".into()),
    }
}

/// A hand-made lts-6.12.117 lab in `dir` whose bzImage holds `bzimage`, with a manifest.json
/// listing its files.
fn make_lab(dir: &Path, bzimage: &[u8]) -> Manifest {
    fs::create_dir_all(dir).unwrap();
    write_file(dir, "bzImage", bzimage, 0o644);
    write_file(dir, "run.sh", b"#!/bin/sh\nexec qemu-system-x86_64 \"$@\"\n", 0o755);
    write_file(dir, "scripts/gdb/linux/x.py", b"# gdb helper\n", 0o644);
    write_file(dir, "inputs/recipes/lts.yaml", b"name: lts\n", 0o644);
    lab::write_description(dir, &description("6.12.117")).unwrap();
    fs::set_permissions(dir.join(lab::LAB_JSON), fs::Permissions::from_mode(0o644)).unwrap();
    let mut m = manifest::sample().clone();
    m.reproducible.settings.source_date_epoch = EPOCH;
    m.reproducible.files = manifest::file_entries(dir).unwrap();
    fs::write(dir.join(manifest::FILE), m.to_text().unwrap()).unwrap();
    m
}

/// Packs a fresh lab made in `root/<name>` into `root/<name>-out`.
fn packed_lab(root: &Path, name: &str, bzimage: &[u8]) -> (PathBuf, Packed) {
    let lab = root.join(name);
    make_lab(&lab, bzimage);
    let packed = pack(&lab, &root.join(format!("{name}-out")), 3).unwrap();
    (lab, packed)
}

fn test_layout(root: &Path) -> Layout {
    Layout { root: root.join("repo"), artifacts: root.join("artifacts"), cache: root.join("cache") }
}

fn request(what: &Path, sha256: &str) -> FetchRequest {
    FetchRequest { what: what.display().to_string(), sha256: Some(sha256.into()), index: None, force: false }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).into_iter().flatten().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Nothing in labs/ (which may not even exist) but lock files.
fn assert_nothing_installed(layout: &Layout) {
    let left: Vec<String> = names(&layout.labs_dir()).into_iter().filter(|n| !n.ends_with(".lock")).collect();
    assert!(left.is_empty(), "left in labs/: {left:?}");
}

/// Every file the manifest of `src` lists, and manifest.json, is in `dest` with the same bytes and mode.
fn assert_same_lab(src: &Path, dest: &Path) {
    let m = Manifest::read(src).unwrap();
    assert!(!m.reproducible.files.is_empty());
    for f in &m.reproducible.files {
        assert_eq!(fs::read(dest.join(&f.path)).unwrap(), fs::read(src.join(&f.path)).unwrap(), "{}", f.path);
        let mode = fs::metadata(dest.join(&f.path)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(format!("{mode:04o}"), f.mode, "{}", f.path);
    }
    assert_eq!(fs::read(dest.join(manifest::FILE)).unwrap(), fs::read(src.join(manifest::FILE)).unwrap());
    assert!(manifest::compare_files(dest, &m.reproducible.files).unwrap().is_empty());
}

fn error_chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// One entry of a pack as read back: raw name, type, mode, uid, gid, mtime, contents.
#[derive(Debug)]
struct PackEntry {
    name: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
}

fn read_pack(path: &Path) -> Vec<PackEntry> {
    let decoder = zstd::stream::read::Decoder::new(File::open(path).unwrap()).unwrap();
    let mut archive = tar::Archive::new(decoder);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let h = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push(PackEntry {
            name,
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            data,
        });
    }
    out
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Sets every file's mtime under `dir` to a different day in 2001.
fn scramble_mtimes(dir: &Path, n: &mut u64) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            scramble_mtimes(&entry.path(), n);
        } else {
            *n += 1;
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000 + *n * 86_400);
            File::options().write(true).open(entry.path()).unwrap().set_modified(t).unwrap();
        }
    }
}

/// A raw tar entry: name, type, link target (empty for none), contents.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a str, &'a [u8]);

/// A tar.zst whose entries are written as given, names unchecked (the `tar` crate refuses `..`
/// through its safe API; a hostile packer does not use it).
fn raw_pack(path: &Path, entries: &[RawEntry]) {
    let mut tar = tar::Builder::new(zstd::stream::write::Encoder::new(File::create(path).unwrap(), 3).unwrap());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Regular { 0o644 } else { 0o755 });
        h.set_size(data.len() as u64);
        h.set_mtime(EPOCH);
        h.set_cksum();
        tar.append(&h, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

// --- pack ---

#[test]
fn packs_are_byte_identical_whatever_the_path_and_mtimes() {
    let root = scratch("ready-pack-same");
    let (a, b) = (root.join("a/lab"), root.join("elsewhere/deeper/lab-copy"));
    let m = make_lab(&a, b"bzImage bytes");
    copy_tree(&a, &b);
    scramble_mtimes(&b, &mut 0);
    // Run outputs and host files, in one copy only: a pack leaves them out.
    write_file(&b, lab::REPORT, br#"{"verdict":"pass"}"#, 0o644);
    write_file(&b, lab::CONSOLE_LOG, b"console\n", 0o644);
    write_file(&b, lab::SOURCE_LIST, b"/home/someone/linux\n", 0o644);
    assert_ne!(fs::metadata(a.join("bzImage")).unwrap().mtime(), fs::metadata(b.join("bzImage")).unwrap().mtime());

    let pa = pack(&a, &root.join("out-a"), DEFAULT_LEVEL).unwrap();
    let pb = pack(&b, &root.join("out-b/x"), DEFAULT_LEVEL).unwrap();
    assert_eq!(pa.path.file_name().unwrap(), PACK);
    let (bytes_a, bytes_b) = (fs::read(&pa.path).unwrap(), fs::read(&pb.path).unwrap());
    assert!(bytes_a == bytes_b, "the two packs differ");
    assert_eq!(pa.sha256, hash::sha256_bytes(&bytes_a));
    assert_eq!((pa.sha256.as_str(), pa.size), (pb.sha256.as_str(), pb.size));
    assert_eq!(pa.size, bytes_a.len() as u64);
    let sums = fs::read_to_string(sha_file(&pa.path)).unwrap();
    assert_eq!(sums, format!("{}  {PACK}\n", pa.sha256));
    assert_eq!(fs::read_to_string(sha_file(&pb.path)).unwrap(), sums);
    assert_eq!(pa.manifest, m);
    assert_eq!(pa.manifest_sha256, hash::sha256_file(&a.join(manifest::FILE)).unwrap());
    // Nothing else in the output directory (no temporary left).
    assert_eq!(names(&root.join("out-a")), [PACK.to_string(), format!("{PACK}.sha256")]);

    let entries = read_pack(&pa.path);
    let got: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let want: Vec<String> = [
        "",
        "bzImage",
        "inputs/",
        "inputs/recipes/",
        "inputs/recipes/lts.yaml",
        "lab.json",
        "manifest.json",
        "run.sh",
        "scripts/",
        "scripts/gdb/",
        "scripts/gdb/linux/",
        "scripts/gdb/linux/x.py",
    ]
    .iter()
    .map(|rel| format!("{TOP}/{rel}"))
    .collect();
    assert_eq!(got, want);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted);
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, EPOCH), "{}", e.name);
        let rel = &e.name[TOP.len() + 1..];
        if rel.is_empty() || rel.ends_with('/') {
            assert_eq!((e.kind, e.mode), (tar::EntryType::Directory, 0o755), "{}", e.name);
            continue;
        }
        assert_eq!(e.kind, tar::EntryType::Regular, "{}", e.name);
        assert_eq!(e.data, fs::read(a.join(rel)).unwrap(), "{}", e.name);
        assert_eq!(e.mode, if rel == "run.sh" { 0o755 } else { 0o644 }, "{}", e.name);
    }
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn pack_refuses_a_lab_changed_since_its_manifest() {
    let root = scratch("ready-pack-changed");
    let lab = root.join("lab");
    make_lab(&lab, b"bzImage bytes");
    write_file(&lab, "bzImage", b"bzImage BYTES", 0o644);
    let err = error_chain(&pack(&lab, &root.join("out"), 3).unwrap_err());
    assert!(err.contains("changed since it was built") && err.contains("bzImage: sha256"), "{err}");
    assert!(!err.contains("run.sh"), "{err}");
    assert!(names(&root.join("out")).is_empty(), "{:?}", names(&root.join("out")));

    make_lab(&lab, b"bzImage bytes");
    write_file(&lab, "scripts/gdb/linux/extra.py", b"import os\n", 0o644);
    let err = error_chain(&pack(&lab, &root.join("out"), 3).unwrap_err());
    assert!(err.contains("scripts/gdb/linux/extra.py: not in the manifest"), "{err}");
    fs::remove_file(lab.join("scripts/gdb/linux/extra.py")).unwrap();
    fs::set_permissions(lab.join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    let err = error_chain(&pack(&lab, &root.join("out"), 3).unwrap_err());
    assert!(err.contains("run.sh: mode 0644"), "{err}");
    assert!(names(&root.join("out")).is_empty());
    fs::remove_dir_all(root).unwrap();
}

// --- index ---

/// A `Packed` for an index entry, with a small stand-in file at `path`.
fn fake_packed(path: &Path, recipe: &str, version: &str, sha: char) -> Packed {
    write_file(path.parent().unwrap(), path.file_name().unwrap().to_str().unwrap(), b"pack", 0o644);
    let mut m = manifest::sample().clone();
    m.reproducible.recipe.name = recipe.into();
    m.reproducible.kernel.version = version.into();
    Packed { path: path.to_path_buf(), sha256: sha.to_string().repeat(64), size: 4, manifest: m, manifest_sha256: "e".repeat(64) }
}

fn read_index(path: &Path) -> Index {
    Index::parse(&fs::read(path).unwrap(), "test").unwrap()
}

#[test]
fn update_index_writes_relative_urls_and_replaces_an_entry_in_place() {
    let root = scratch("ready-index");
    let index = root.join("site/labs.json");
    let p117 = fake_packed(&root.join("site/packs/a.tar.zst"), "lts", "6.12.117", 'a');
    update_index(&index, &p117).unwrap();
    let first = read_index(&index);
    assert_eq!(first.schema, INDEX_SCHEMA);
    assert_eq!(
        first.labs,
        [IndexEntry {
            recipe: "lts".into(),
            kernel_version: "6.12.117".into(),
            arch: "x86_64".into(),
            url: "packs/a.tar.zst".into(),
            sha256: "a".repeat(64),
            size: 4,
            manifest_sha256: "e".repeat(64),
            boot_verdict: None,
        }]
    );

    update_index(&index, &fake_packed(&root.join("site/packs/b.tar.zst"), "lts", "6.12.118", 'b')).unwrap();
    update_index(&index, &fake_packed(&root.join("site/c.tar.zst"), "stable", "6.17.1", 'c')).unwrap();
    let mut again = fake_packed(&root.join("site/packs/a2.tar.zst"), "lts", "6.12.117", 'd');
    again.manifest.host.boot_test = Some(manifest::BootSummary { verdict: "pass".into(), seconds: 3.0 });
    update_index(&index, &again).unwrap();

    let labs = read_index(&index).labs;
    let keys: Vec<(&str, &str, &str)> = labs.iter().map(|e| (e.recipe.as_str(), e.kernel_version.as_str(), e.url.as_str())).collect();
    assert_eq!(keys, [("lts", "6.12.117", "packs/a2.tar.zst"), ("lts", "6.12.118", "packs/b.tar.zst"), ("stable", "6.17.1", "c.tar.zst")]);
    assert_eq!(labs[0].sha256, "d".repeat(64));
    assert_eq!(labs[0].boot_verdict.as_deref(), Some("pass"));
    assert_eq!(labs[1].sha256, "b".repeat(64));

    // A pack beside the index's directory, not under it: refused, the index untouched.
    let before = fs::read(&index).unwrap();
    let outside = fake_packed(&root.join("elsewhere/x.tar.zst"), "lts", "6.12.119", 'f');
    let err = error_chain(&update_index(&index, &outside).unwrap_err());
    assert!(err.contains("not in the index's directory"), "{err}");
    assert_eq!(fs::read(&index).unwrap(), before);
    let fresh = root.join("other/labs.json");
    assert!(update_index(&fresh, &outside).is_err());
    assert!(!fresh.exists());
    fs::remove_dir_all(root).unwrap();
}

/// A change to a valid index, as JSON.
type IndexEdit = Box<dyn FnOnce(&mut serde_json::Value)>;

fn index_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = serde_json::json!({
        "schema": 1,
        "labs": [{
            "recipe": "lts",
            "kernel_version": "6.12.117",
            "arch": "x86_64",
            "url": "kernel-lab-lts-6.12.117-x86_64.tar.zst",
            "sha256": "a".repeat(64),
            "size": 10,
            "manifest_sha256": "b".repeat(64),
            "boot_verdict": "pass"
        }]
    });
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn index_parse_refuses_bad_schemas_hashes_and_names() {
    let ok = Index::parse(&index_json(|_| {}), "test").unwrap();
    assert_eq!(ok.labs[0].boot_verdict.as_deref(), Some("pass"));
    let cases: Vec<(&str, IndexEdit)> = vec![
        ("schema 2", Box::new(|v| v["schema"] = 2.into())),
        ("sha256", Box::new(|v| v["labs"][0]["sha256"] = "A".repeat(64).into())),
        ("sha256", Box::new(|v| v["labs"][0]["sha256"] = "a".repeat(63).into())),
        ("sha256", Box::new(|v| v["labs"][0]["manifest_sha256"] = "g".repeat(64).into())),
        ("recipe name", Box::new(|v| v["labs"][0]["recipe"] = "lts/../x".into())),
        ("recipe name", Box::new(|v| v["labs"][0]["recipe"] = "..".into())),
        ("recipe name", Box::new(|v| v["labs"][0]["recipe"] = "a/b".into())),
        ("kernel version", Box::new(|v| v["labs"][0]["kernel_version"] = "../6.12".into())),
        ("unknown field", Box::new(|v| v["labs"][0]["extra"] = 1.into())),
    ];
    for (want, edit) in cases {
        let bytes = index_json(edit);
        let err = error_chain(&Index::parse(&bytes, "test").unwrap_err());
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn index_newest_compares_versions_as_numbers() {
    let entry = |recipe: &str, version: &str, arch: &str| IndexEntry {
        recipe: recipe.into(),
        kernel_version: version.into(),
        arch: arch.into(),
        url: format!("{recipe}-{version}-{arch}"),
        sha256: "a".repeat(64),
        size: 1,
        manifest_sha256: "b".repeat(64),
        boot_verdict: None,
    };
    let index = Index {
        schema: INDEX_SCHEMA,
        labs: vec![
            entry("lts", "6.12.9", "x86_64"),
            entry("lts", "6.12.118", "x86_64"),
            entry("lts", "6.12.117", "x86_64"),
            entry("lts", "6.12.200", "aarch64"),
            entry("stable", "6.17.1", "x86_64"),
        ],
    };
    assert_eq!(index.newest("lts").unwrap().kernel_version, "6.12.118");
    assert_eq!(index.newest("stable").unwrap().kernel_version, "6.17.1");
    assert!(index.newest("mainline").is_none());
}

#[test]
fn entry_urls_resolve_against_the_index_url() {
    assert_eq!(resolve_url("https://h.example/r/labs.json", "x.tar.zst").unwrap(), "https://h.example/r/x.tar.zst");
    assert_eq!(resolve_url("http://127.0.0.1:8/r/labs.json", "p/x.tar.zst").unwrap(), "http://127.0.0.1:8/r/p/x.tar.zst");
    assert_eq!(resolve_url("http://127.0.0.1:8/r/labs.json", "/x.tar.zst").unwrap(), "http://127.0.0.1:8/x.tar.zst");
    assert_eq!(resolve_url("https://h.example/r/labs.json", "https://cdn.example/x").unwrap(), "https://cdn.example/x");
    assert_eq!(resolve_url("file:///srv/labs/labs.json", "packs/x.tar.zst").unwrap(), "file:///srv/labs/packs/x.tar.zst");
    assert_eq!(resolve_url("file:///srv/labs/labs.json", "https://h.example/x").unwrap(), "https://h.example/x");
    for (index, rel) in [
        ("https://h.example/r/labs.json", "file:///etc/shadow"),
        ("http://127.0.0.1:8/labs.json", "file:///home/u/x.tar.zst"),
        ("https://h.example/r/labs.json", "ftp://h.example/x.tar.zst"),
        ("not a url", "x.tar.zst"),
    ] {
        assert!(resolve_url(index, rel).is_err(), "{index} {rel}");
    }
    let err = error_chain(&resolve_url("https://h.example/labs.json", "file:///etc/shadow").unwrap_err());
    assert!(err.contains("may not point at local files"), "{err}");
}

// --- fetch ---

#[test]
fn fetch_installs_a_local_pack_with_its_sha256() {
    let root = scratch("ready-fetch-local");
    let (src, packed) = packed_lab(&root, "lab", b"bzImage bytes");
    let layout = test_layout(&root);
    let lab = fetch(&layout, &request(&packed.path, &packed.sha256.to_ascii_uppercase())).unwrap();
    let dest = layout.lab("lts", "6.12.117");
    assert_eq!(lab.dir, fs::canonicalize(&dest).unwrap());
    assert_eq!(lab.desc, description("6.12.117"));
    assert_same_lab(&src, &dest);
    assert_eq!(fs::read_link(layout.lab_link("lts")).unwrap(), Path::new("lts-6.12.117"));
    let origin: Origin = serde_json::from_str(&fs::read_to_string(dest.join(lab::ORIGIN)).unwrap()).unwrap();
    assert_eq!(origin.url, format!("file://{}", fs::canonicalize(&packed.path).unwrap().display()));
    assert_eq!(origin.sha256, packed.sha256);
    // The lab, its link and its lock: no unpacking or staging directory left behind.
    assert_eq!(names(&layout.labs_dir()), [".lts-6.12.117.lock", "lts", "lts-6.12.117"]);
    assert!(layout.cache_blob(&packed.sha256).is_file());
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetch_through_an_index_over_http() {
    let root = scratch("ready-fetch-http");
    let site = root.join("site");
    let lab = root.join("lab");
    make_lab(&lab, b"bzImage over http");
    let packed = pack(&lab, &site.join("packs"), 3).unwrap();
    update_index(&site.join("labs.json"), &packed).unwrap();
    let server = crate::serve::spawn(site.clone(), "127.0.0.1:0").unwrap();
    let layout = test_layout(&root);

    // A --sha256 that disagrees with the index is refused before any pack is downloaded.
    let mut req = FetchRequest { what: "lts".into(), sha256: Some("c".repeat(64)), index: Some(server.url("/labs.json")), force: false };
    let err = error_chain(&fetch(&layout, &req).unwrap_err());
    assert!(err.contains("disagrees with the index"), "{err}");
    assert!(!server.requests().iter().any(|r| r.contains(".tar.zst")), "{:?}", server.requests());

    req.sha256 = None;
    let installed = fetch(&layout, &req).unwrap();
    assert_eq!(installed.dir, fs::canonicalize(layout.lab("lts", "6.12.117")).unwrap());
    assert_same_lab(&lab, &installed.dir);
    let origin: Origin = serde_json::from_str(&fs::read_to_string(installed.dir.join(lab::ORIGIN)).unwrap()).unwrap();
    assert_eq!(origin.url, server.url(&format!("/packs/{PACK}")));
    assert_eq!(origin.sha256, packed.sha256);
    assert!(server.requests().iter().any(|r| r == &format!("GET /packs/{PACK}")), "{:?}", server.requests());
    assert_eq!(fs::read_link(layout.lab_link("lts")).unwrap(), Path::new("lts-6.12.117"));

    // A recipe the index does not offer: the error says what it has.
    req.what = "stable".into();
    let err = error_chain(&fetch(&layout, &req).unwrap_err());
    assert!(err.contains("has no stable lab") && err.contains("it has: lts"), "{err}");
    drop(server);
    fs::remove_dir_all(root).unwrap();
}

/// Packs a lab into `<root>/<site>/packs/`, indexes it in `<root>/<site>/labs.json`, and fetches
/// `lts` through the index's file:// URL.
fn fetch_through_file_index(root: &Path, site: &str) -> Result<Lab> {
    let site = root.join(site);
    let lab = root.join("lab");
    make_lab(&lab, b"bzImage from a file index");
    let packed = pack(&lab, &site.join("packs"), 3).unwrap();
    update_index(&site.join("labs.json"), &packed).unwrap();
    let layout = test_layout(root);
    let index = format!("file://{}", site.join("labs.json").display());
    let installed = fetch(&layout, &FetchRequest { what: "lts".into(), sha256: None, index: Some(index), force: false })?;
    assert_same_lab(&lab, &installed.dir);
    Ok(installed)
}

#[test]
fn fetch_through_a_file_index() {
    let root = scratch("ready-fetch-file-index");
    fetch_through_file_index(&root, "site").unwrap();
    fs::remove_dir_all(root).unwrap();
}

#[test]

fn fetch_through_a_file_index_in_a_directory_with_a_space() {
    let root = scratch("ready-fetch-file-index-space");
    fetch_through_file_index(&root, "my labs").unwrap();
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetch_refuses_a_wrong_sha256_and_keeps_nothing() {
    let root = scratch("ready-fetch-wrong-sha");
    let (_, packed) = packed_lab(&root, "lab", b"bzImage bytes");
    let layout = test_layout(&root);
    let wrong = "0".repeat(64);
    let err = error_chain(&fetch(&layout, &request(&packed.path, &wrong)).unwrap_err());
    assert!(err.contains(&format!("expected {wrong}, got {}", packed.sha256)), "{err}");
    assert_nothing_installed(&layout);
    assert!(!layout.cache_blob(&wrong).exists());
    assert!(!layout.cache_blob(&packed.sha256).exists());
    let partials: Vec<String> = names(&layout.cache.join("partial")).into_iter().filter(|n| !n.ends_with(".lock")).collect();
    assert!(partials.is_empty(), "{partials:?}");
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetch_refuses_a_pack_with_a_flipped_byte() {
    let root = scratch("ready-fetch-flipped");
    let (_, packed) = packed_lab(&root, "lab", b"bzImage bytes");
    let mut bytes = fs::read(&packed.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let bad = root.join("bad").join(PACK);
    write_file(bad.parent().unwrap(), PACK, &bytes, 0o644);
    let layout = test_layout(&root);
    let err = error_chain(&fetch(&layout, &request(&bad, &packed.sha256)).unwrap_err());
    assert!(err.contains(&format!("expected {}", packed.sha256)), "{err}");
    assert_nothing_installed(&layout);
    assert!(!layout.cache_blob(&packed.sha256).exists());
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetch_refuses_a_pack_whose_files_do_not_match_its_manifest() {
    let root = scratch("ready-fetch-tampered");
    let lab = root.join("lab");
    let m = make_lab(&lab, b"bzImage bytes");
    // Same size, one byte changed, packed the way `pack` writes (its own check skipped).
    write_file(&lab, "bzImage", b"bzImage bytez", 0o644);
    let path = root.join(PACK);
    write_pack(&lab, &m, &fs::read(lab.join(manifest::FILE)).unwrap(), &m.pack_name(), &path, 3).unwrap();
    assert!(read_pack(&path).iter().any(|e| e.data == b"bzImage bytez"));
    let sha = hash::sha256_file(&path).unwrap();
    let layout = test_layout(&root);
    let err = error_chain(&fetch(&layout, &request(&path, &sha)).unwrap_err());
    assert!(err.contains("does not match its manifest") && err.contains("bzImage: sha256"), "{err}");
    assert!(err.contains("nothing was installed"), "{err}");
    assert_nothing_installed(&layout);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetch_refuses_a_lab_json_that_disagrees_with_the_manifest() {
    let root = scratch("ready-fetch-lab-json");
    let lab = root.join("lab");
    make_lab(&lab, b"bzImage bytes");
    // Honestly listed, but it claims another kernel than the manifest.
    lab::write_description(&lab, &description("6.12.118")).unwrap();
    fs::set_permissions(lab.join(lab::LAB_JSON), fs::Permissions::from_mode(0o644)).unwrap();
    let mut m = Manifest::read(&lab).unwrap();
    m.reproducible.files = manifest::file_entries(&lab).unwrap();
    fs::write(lab.join(manifest::FILE), m.to_text().unwrap()).unwrap();
    let packed = pack(&lab, &root.join("out"), 3).unwrap();
    let layout = test_layout(&root);
    let err = error_chain(&fetch(&layout, &request(&packed.path, &packed.sha256)).unwrap_err());
    assert!(err.contains("disagrees with manifest.json"), "{err}");
    assert_nothing_installed(&layout);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetch_refuses_entries_that_leave_the_tree() {
    let root = scratch("ready-fetch-escape");
    let layout = test_layout(&root);
    let outside = [root.join("escape"), root.join("artifacts/escape"), layout.labs_dir().join("escape"), root.join("abs-escape")];
    let abs = root.join("abs-escape").display().to_string();
    let dir = (tar::EntryType::Directory, "", &b""[..]);
    let file = (tar::EntryType::Regular, "", &b"pwned\n"[..]);
    let cases: Vec<Vec<RawEntry>> = vec![
        vec![(TOP, dir.0, dir.1, dir.2), ("../escape", file.0, file.1, file.2)],
        vec![(TOP, dir.0, dir.1, dir.2), ("kernel-lab-lts-6.12.117-x86_64/../../escape", file.0, file.1, file.2)],
        vec![(TOP, dir.0, dir.1, dir.2), (abs.as_str(), file.0, file.1, file.2)],
        // A symlink out of the tree, then a file written through it.
        vec![
            (TOP, dir.0, dir.1, dir.2),
            ("kernel-lab-lts-6.12.117-x86_64/up", tar::EntryType::Symlink, "../../..", b""),
            ("kernel-lab-lts-6.12.117-x86_64/up/escape", file.0, file.1, file.2),
        ],
    ];
    for (i, entries) in cases.iter().enumerate() {
        let path = root.join(format!("evil-{i}.tar.zst"));
        raw_pack(&path, entries);
        let sha = hash::sha256_file(&path).unwrap();
        let err = error_chain(&fetch(&layout, &request(&path, &sha)).unwrap_err());
        assert!(err.contains("refusing"), "case {i}: {err}");
        for p in &outside {
            assert!(!p.exists(), "case {i}: {} was written", p.display());
        }
        assert_nothing_installed(&layout);
    }
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetching_the_same_pack_again_changes_nothing() {
    let root = scratch("ready-fetch-twice");
    let (src, packed) = packed_lab(&root, "lab", b"bzImage bytes");
    let layout = test_layout(&root);
    fetch(&layout, &request(&packed.path, &packed.sha256)).unwrap();
    let dest = layout.lab("lts", "6.12.117");
    let inodes = (fs::metadata(&dest).unwrap().ino(), fs::metadata(dest.join("bzImage")).unwrap().ino());
    // A run output in the installed lab does not make it a different lab.
    write_file(&dest, lab::REPORT, br#"{"verdict":"pass"}"#, 0o644);
    let again = fetch(&layout, &request(&packed.path, &packed.sha256)).unwrap();
    assert_eq!(again.dir, fs::canonicalize(&dest).unwrap());
    assert_eq!((fs::metadata(&dest).unwrap().ino(), fs::metadata(dest.join("bzImage")).unwrap().ino()), inodes);
    assert!(dest.join(lab::REPORT).is_file());
    assert_same_lab(&src, &dest);
    assert_eq!(names(&layout.labs_dir()), [".lts-6.12.117.lock", "lts", "lts-6.12.117"]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_different_lab_of_the_same_name_needs_force() {
    let root = scratch("ready-fetch-force");
    let (_, old) = packed_lab(&root, "old", b"old kernel");
    let (new_src, new) = packed_lab(&root, "new", b"new kernel, longer");
    assert_ne!(old.sha256, new.sha256);
    let layout = test_layout(&root);
    fetch(&layout, &request(&old.path, &old.sha256)).unwrap();
    let dest = layout.lab("lts", "6.12.117");

    let err = error_chain(&fetch(&layout, &request(&new.path, &new.sha256)).unwrap_err());
    assert!(err.contains("already holds a different lab") && err.contains("--force"), "{err}");
    assert_eq!(fs::read(dest.join("bzImage")).unwrap(), b"old kernel");
    assert_eq!(names(&layout.labs_dir()), [".lts-6.12.117.lock", "lts", "lts-6.12.117"]);

    let forced = FetchRequest { force: true, ..request(&new.path, &new.sha256) };
    fetch(&layout, &forced).unwrap();
    assert_same_lab(&new_src, &dest);
    let origin: Origin = serde_json::from_str(&fs::read_to_string(dest.join(lab::ORIGIN)).unwrap()).unwrap();
    assert_eq!(origin.sha256, new.sha256);
    assert_eq!(fs::read_link(layout.lab_link("lts")).unwrap(), Path::new("lts-6.12.117"));
    assert_eq!(names(&layout.labs_dir()), [".lts-6.12.117.lock", "lts", "lts-6.12.117"]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetch_without_a_sha256_or_an_index_names_the_flag() {
    let root = scratch("ready-fetch-no-sha");
    let (_, packed) = packed_lab(&root, "lab", b"bzImage bytes");
    let layout = test_layout(&root);
    for what in [packed.path.display().to_string(), "file:///nonexistent/x.tar.zst".to_string()] {
        let req = FetchRequest { what, sha256: None, index: None, force: false };
        let err = error_chain(&fetch(&layout, &req).unwrap_err());
        assert!(err.contains("--sha256"), "{err}");
    }
    let err = error_chain(&fetch(&layout, &request(&packed.path, "not-hex")).unwrap_err());
    assert!(err.contains("--sha256") && err.contains("not a sha256"), "{err}");
    assert_nothing_installed(&layout);
    assert!(!layout.cache.exists());
    fs::remove_dir_all(root).unwrap();
}

#[test]

fn fetch_installs_nothing_the_manifest_does_not_list() {
    let root = scratch("ready-fetch-unlisted");
    let lab = root.join("lab");
    make_lab(&lab, b"bzImage bytes");
    // Added after the manifest: a forged verdict `lab list` would show, host paths gdb.sh would
    // add, and arbitrary payloads under names the manifest check skips.
    let smuggled = [lab::REPORT, lab::SOURCE_LIST, "boot-console.log", "payload.log", ".hidden/blob"];
    for rel in smuggled {
        write_file(&lab, rel, br#"{"verdict":"pass"}"#, 0o644);
    }
    let path = root.join(PACK);
    let file = File::create(&path).unwrap();
    let mut tar = tar::Builder::new(zstd::stream::write::Encoder::new(file, 3).unwrap());
    tar.append_dir_all(TOP, &lab).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let sha = hash::sha256_file(&path).unwrap();
    let layout = test_layout(&root);
    match fetch(&layout, &request(&path, &sha)) {
        Ok(installed) => {
            for rel in smuggled {
                assert!(!installed.dir.join(rel).exists(), "{rel} was installed from the pack");
            }
        }
        Err(_) => assert_nothing_installed(&layout),
    }
    fs::remove_dir_all(root).unwrap();
}

// --- remove ---

#[test]
fn remove_deletes_the_lab_and_the_links_to_it() {
    let root = scratch("ready-rm");
    let layout = test_layout(&root);
    let labs = layout.labs_dir();
    for name in ["lts-6.12.117", "lts-6.12.118"] {
        write_file(&labs.join(name), "bzImage", name.as_bytes(), 0o644);
    }
    lab::link_latest(&layout.lab_link("lts"), &labs.join("lts-6.12.117")).unwrap();
    lab::link_latest(&labs.join("pinned"), &labs.join("lts-6.12.118")).unwrap();
    let victim = root.join("artifacts/victim");
    write_file(&victim, "keep", b"keep", 0o644);
    write_file(&labs.join(".hidden"), "keep", b"keep", 0o644);

    for bad in ["", ".", "..", "../victim", "lts-6.12.117/bzImage", ".hidden", "/tmp"] {
        let err = error_chain(&remove(&layout, bad).unwrap_err());
        assert!(err.contains("give a lab name"), "{bad:?}: {err}");
    }
    let err = error_chain(&remove(&layout, "lts-6.12.200").unwrap_err());
    assert!(err.contains("no lab lts-6.12.200"), "{err}");
    assert!(victim.join("keep").is_file() && labs.join(".hidden/keep").is_file());
    assert_eq!(names(&labs), [".hidden", "lts", "lts-6.12.117", "lts-6.12.118", "pinned"]);

    remove(&layout, "lts-6.12.117").unwrap();
    assert_eq!(names(&labs), [".hidden", ".lts-6.12.117.lock", "lts-6.12.118", "pinned"]);
    // Through a link: its target goes, and the link with it.
    remove(&layout, "pinned").unwrap();
    assert_eq!(names(&labs), [".hidden", ".lts-6.12.117.lock", ".lts-6.12.118.lock"]);
    assert!(victim.join("keep").is_file());
    fs::remove_dir_all(root).unwrap();
}

// --- manifest ---

#[test]
fn manifest_read_refuses_paths_out_of_the_lab_and_wide_modes() {
    let root = scratch("ready-manifest-read");
    let entry = |path: &str, mode: &str| manifest::FileEntry { path: path.into(), size: 1, mode: mode.into(), sha256: "a".repeat(64) };
    let write = |files: Vec<manifest::FileEntry>| {
        let mut m = manifest::sample().clone();
        m.reproducible.files = files;
        fs::write(root.join(manifest::FILE), m.to_text().unwrap()).unwrap();
    };
    write(vec![entry("bzImage", "0644"), entry(lab::LAB_JSON, "0644"), entry("run.sh", "0755")]);
    Manifest::read(&root).unwrap();
    for (bad, want) in [(entry("../x", "0644"), "\"../x\""), (entry("x", "0777"), "\"0777\"")] {
        write(vec![entry(lab::LAB_JSON, "0644"), bad]);
        let err = error_chain(&Manifest::read(&root).unwrap_err());
        assert!(err.contains(want), "{want}: {err}");
    }
    fs::remove_dir_all(root).unwrap();
}

/// A hostile pack: the honest pack's entries plus `extra` (name under the top dir, symlink target
/// or file bytes), recompressed. Returns (path, sha256).
fn attack_with_extra(honest: &Path, out: &Path, extra: &[(&str, Option<&str>, &[u8])]) -> (PathBuf, String) {
    let raw = zstd::stream::decode_all(File::open(honest).unwrap()).unwrap();
    let mut archive = tar::Archive::new(&raw[..]);
    let mut b = tar::Builder::new(Vec::new());
    let mut top = String::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if top.is_empty() {
            top = path.trim_end_matches('/').to_string();
        }
        let mut h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        b.append_data(&mut h, &path, &data[..]).unwrap();
    }
    for (name, link, bytes) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match link {
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, format!("{top}/{name}"), target).unwrap();
            }
            None => {
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, format!("{top}/{name}"), *bytes).unwrap();
            }
        }
    }
    let bytes = zstd::stream::encode_all(&b.into_inner().unwrap()[..], 3).unwrap();
    fs::write(out, &bytes).unwrap();
    (out.to_path_buf(), hash::sha256_bytes(&bytes))
}

/// SECURITY.md: "every file must match manifest.json (... nothing extra, no symlinks)". Files the
/// manifest never lists (hidden top-level names, boot-*, *.log) must not ride along in a fetched
/// lab: `.gdbinit` runs when `./gdb.sh` starts gdb in the lab (it adds the lab to gdb's
/// auto-load safe path), `boot-report.json` fakes the verdict `lab list` shows, and a
/// `.kernel-lab-origin` symlink makes fetch write through it into a checked file.
#[test]
fn fetch_refuses_files_the_manifest_does_not_list() {
    let dir = crate::testutil::scratch("ready-extra");
    let lab_dir = dir.join("lab");
    make_lab(&lab_dir, b"honest bzImage");
    let honest = pack(&lab_dir, &dir.join("dist"), 3).unwrap();
    let layout = Layout { root: dir.clone(), artifacts: dir.join("artifacts"), cache: dir.join("cache") };
    for (tag, extra) in [
        ("gdbinit", vec![(".gdbinit", None, &b"shell touch /tmp/pwned\n"[..])]),
        ("report", vec![("boot-report.json", None, &br#"{"verdict":"pass"}"#[..])]),
        ("origin", vec![(lab::ORIGIN, Some("run.sh"), &b""[..])]),
    ] {
        let (path, sha256) = attack_with_extra(&honest.path, &dir.join(format!("{tag}.tar.zst")), &extra);
        let req = FetchRequest { what: path.display().to_string(), sha256: Some(sha256), index: None, force: true };
        let got = fetch(&layout, &req);
        let run_sh = fs::read_to_string(layout.lab("lts", "6.12.117").join("run.sh")).unwrap_or_default();
        assert!(got.is_err(), "{tag}: a pack with files outside its manifest was installed (run.sh now: {run_sh:?})");
    }
    fs::remove_dir_all(dir).unwrap();
}

// --- review findings ---

#[test]
fn fetch_refuses_a_pack_that_inflates_far_beyond_its_size() {
    let root = scratch("ready-bomb");
    let bomb = root.join("bomb.tar.zst");
    // 200 MB of zeros compress to a few KB: far beyond 20x the pack plus 64 MiB of slack.
    let zeros = vec![0u8; 200 << 20];
    raw_pack(
        &bomb,
        &[(&format!("{TOP}/"), tar::EntryType::Directory, "", b""), (&format!("{TOP}/bzImage"), tar::EntryType::Regular, "", &zeros)],
    );
    let layout = test_layout(&root);
    let err = error_chain(&fetch(&layout, &request(&bomb, &hash::sha256_file(&bomb).unwrap())).unwrap_err());
    assert!(err.contains("unpacks to more than"), "{err}");
    assert_nothing_installed(&layout);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn an_index_entry_must_name_the_pack_it_points_at() {
    let root = scratch("ready-bind");
    let site = root.join("site");
    let lab = root.join("lab");
    make_lab(&lab, b"honest bzImage");
    let packed = pack(&lab, &site, 3).unwrap();
    update_index(&site.join("labs.json"), &packed).unwrap();
    let index = format!("file://{}", site.join("labs.json").display());
    let honest: serde_json::Value = serde_json::from_slice(&fs::read(site.join("labs.json")).unwrap()).unwrap();
    for (field, value, why) in [
        ("recipe", "stable", "points at a pack of lts-6.12.117"),
        ("kernel_version", "6.12.999", "points at a pack of lts-6.12.117"),
        ("manifest_sha256", &"0".repeat(64)[..], "the index says"),
        ("size", "1", "more than the 1"),
    ] {
        let mut edited = honest.clone();
        edited["labs"][0][field] = if field == "size" { serde_json::json!(1) } else { serde_json::json!(value) };
        fs::write(site.join("labs.json"), serde_json::to_vec(&edited).unwrap()).unwrap();
        let name = edited["labs"][0]["recipe"].as_str().unwrap().to_string();
        let layout = test_layout(&root.join(field));
        let req = FetchRequest { what: name, sha256: None, index: Some(index.clone()), force: false };
        let err = error_chain(&fetch(&layout, &req).unwrap_err());
        assert!(err.contains(why), "{field}: {err}");
        assert_nothing_installed(&layout);
    }
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn fetch_does_not_replace_a_file_with_the_labs_name() {
    let root = scratch("ready-file-dest");
    let (_, packed) = packed_lab(&root, "lab", b"bz");
    let layout = test_layout(&root);
    fs::create_dir_all(layout.labs_dir()).unwrap();
    let dest = layout.lab("lts", "6.12.117");
    fs::write(&dest, "precious").unwrap();
    let req = FetchRequest { force: true, ..request(&packed.path, &packed.sha256) };
    let err = error_chain(&fetch(&layout, &req).unwrap_err());
    assert!(err.contains("is not a lab directory"), "{err}");
    assert_eq!(fs::read_to_string(&dest).unwrap(), "precious");
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn rm_follows_only_links_that_name_a_lab_beside_them() {
    let root = scratch("ready-rm-link");
    let layout = test_layout(&root);
    let labs = layout.labs_dir();
    fs::create_dir_all(labs.join("lts-6.12.117")).unwrap();
    std::os::unix::fs::symlink("../../elsewhere/labs/lts-6.12.117", labs.join("evil")).unwrap();
    let err = error_chain(&remove(&layout, "evil").unwrap_err());
    assert!(err.contains("remove the link by hand"), "{err}");
    assert!(labs.join("lts-6.12.117").is_dir());
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_killed_fetchs_unpack_directory_is_swept_by_the_next() {
    let root = scratch("ready-sweep");
    let (_, packed) = packed_lab(&root, "lab", b"bz");
    let layout = test_layout(&root);
    let left = layout.labs_dir().join(".fetch-0123456789ab.unpack-999999");
    fs::create_dir_all(left.join("half")).unwrap();
    fetch(&layout, &request(&packed.path, &packed.sha256)).unwrap();
    assert!(!left.exists(), "{} survived", left.display());
    fs::remove_dir_all(root).unwrap();
}
