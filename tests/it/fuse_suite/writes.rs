//! Writes of new files and directories (`--allow-write`), over both stores: what tools and
//! apps write is exactly what S3 holds after close, nothing appears before, and a name
//! taken by another writer is never overwritten.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use super::{Backend, Kind, TestMount, suite};
use crate::common::*;

suite!(
    a_new_file_appears_whole_at_close,
    a_large_file_streams_in_parts,
    dd_and_fsync,
    cp_r_of_a_tree,
    tar_x_of_an_archive,
    python_zipfile_with_header_fixups,
    sqlite_database_through_staging,
    empty_files_and_metadata_calls,
    mkdir_is_seen_by_a_second_mount,
    one_name_created_by_two_mounts_one_wins,
    changes_to_existing_objects_need_more_flags,
);

const WRITE: &[&str] = &["--allow-write"];

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a Python script with arguments; its stdout, trimmed (the test fails if it fails).
fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The object must hold exactly `want`.
fn assert_object(b: &Backend, key: &str, want: &[u8]) {
    let got = b
        .get(key)
        .unwrap_or_else(|| panic!("no object {key:?}; keys: {:?}", b.keys()));
    assert_eq!(got.len(), want.len(), "{key}: size");
    assert_eq!(sha256(&got), sha256(want), "{key}: bytes");
}

fn a_new_file_appears_whole_at_close(kind: Kind) {
    let b = Backend::new(kind, "wnew");
    b.put("old.txt", b"old\n");
    let m = b.mount("", WRITE);
    let mut f = std::fs::File::create(m.p("new.txt")).expect("create");
    f.write_all(b"hello, ").unwrap();
    f.write_all(b"world\n").unwrap();
    // Not in S3 before close, but in the mount's listing, with its size so far.
    assert_eq!(b.get("new.txt"), None, "visible before close");
    let mut names: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new.txt", "old.txt"]);
    assert_eq!(std::fs::metadata(m.p("new.txt")).unwrap().len(), 13);
    drop(f);
    assert_object(&b, "new.txt", b"hello, world\n");
    assert_eq!(std::fs::read(m.p("new.txt")).unwrap(), b"hello, world\n");
    let md = std::fs::metadata(m.p("new.txt")).unwrap();
    assert_eq!((md.len(), md.mode() & 0o777), (13, 0o644));
    assert_eq!(b.uploads_in_progress(), 0);
}

fn a_large_file_streams_in_parts(kind: Kind) {
    let b = Backend::new(kind, "wbig");
    let m = b.mount("", &["--allow-write", "--write-part-size", "5MiB"]);
    let data = random_bytes((37 << 20) + 4321, 11);
    let src = m.scratch().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    run(Command::new("cp").arg(&src).arg(m.p("big.bin")));
    assert_object(&b, "big.bin", &data);
    assert_eq!(b.uploads_in_progress(), 0);
    // Read back through the mount.
    assert_eq!(sha256_file(&m.p("big.bin")), sha256(&data));
}

fn dd_and_fsync(kind: Kind) {
    let b = Backend::new(kind, "wdd");
    let m = b.mount("", &["--allow-write", "--write-part-size", "5MiB"]);
    let data = random_bytes(12 << 20, 5);
    let src = m.scratch().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    run(Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", m.p("dd.bin").display()))
        .args(["bs=1M", "conv=fsync", "status=none"]));
    assert_object(&b, "dd.bin", &data);
    // fsync makes the file durable before close: the object is there while it is open.
    let mut f = std::fs::File::create(m.p("synced.txt")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().expect("fsync");
    assert_object(&b, "synced.txt", b"durable");
    drop(f);
    assert_object(&b, "synced.txt", b"durable");
}

/// A tree of directories and files of assorted sizes under `root`; its relative paths.
fn make_tree(root: &Path, files: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..files {
        let rel = format!("d{}/e{}/f{i:03}.dat", i % 3, i % 5);
        let len = [0usize, 1, 100, 4096, 70_000, 300_000][i % 6];
        let data = random_bytes(len, i as u64);
        let p = root.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
        out.push((rel, data));
    }
    out
}

fn cp_r_of_a_tree(kind: Kind) {
    let b = Backend::new(kind, "wcp");
    let m = b.mount("", WRITE);
    let src = m.scratch().join("tree");
    let files = make_tree(&src, 120);
    run(Command::new("cp").arg("-r").arg(&src).arg(m.p("tree")));
    for (rel, data) in &files {
        assert_object(&b, &format!("tree/{rel}"), data);
    }
    // Directories are marker objects, files are objects: nothing else.
    let keys = b.keys();
    let markers = keys.iter().filter(|k| k.ends_with('/')).count();
    assert_eq!(markers, 1 + 3 + 15, "tree/, d0..d2, dN/eM: {keys:?}");
    assert_eq!(keys.len(), markers + files.len());
    // And the mount lists it as written.
    let out = Command::new("find")
        .arg(m.p("tree"))
        .args(["-type", "f"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 120);
}

fn tar_x_of_an_archive(kind: Kind) {
    let b = Backend::new(kind, "wtar");
    let m = b.mount("", WRITE);
    let src = m.scratch().join("t");
    let files = make_tree(&src, 60);
    let tar = m.scratch().join("a.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg("."));
    // tar sets modes and times on what it extracted: those must not fail it.
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&m.path));
    for (rel, data) in &files {
        assert_object(&b, rel, data);
    }
    assert_eq!(b.uploads_in_progress(), 0);
}

fn python_zipfile_with_header_fixups(kind: Kind) {
    let b = Backend::new(kind, "wzip");
    // A small budget and parts: the second entry's header is fixed up after 12 MiB of
    // data were written behind it, beyond the first part, while the file streams.
    let m = b.mount(
        "",
        &[
            "--allow-write",
            "--write-part-size",
            "5MiB",
            "--cache-size",
            "64MiB",
        ],
    );
    let a = m.scratch().join("a.bin");
    let c = m.scratch().join("c.bin");
    std::fs::write(&a, random_bytes(8 << 20, 1)).unwrap();
    std::fs::write(&c, random_bytes(12 << 20, 2)).unwrap();
    let script = r#"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as z:
    z.writestr("hello.txt", "hello\n")
    z.write(sys.argv[2], "a.bin")
    z.write(sys.argv[3], "c.bin")
"#;
    python(script, &[&m.p("out.zip"), &a, &c]);
    let zip = b.get("out.zip").expect("zip uploaded");
    let copy = m.scratch().join("copy.zip");
    std::fs::write(&copy, &zip).unwrap();
    let check = r#"
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None, "bad CRC"
assert z.read("hello.txt") == b"hello\n"
assert z.read("a.bin") == open(sys.argv[2], "rb").read()
assert z.read("c.bin") == open(sys.argv[3], "rb").read()
print(len(z.namelist()))
"#;
    for path in [&copy, &m.p("out.zip")] {
        assert_eq!(python(check, &[path, &a, &c]), "3");
    }
}

fn sqlite_database_through_staging(kind: Kind) {
    let b = Backend::new(kind, "wsql");
    let m = b.mount("", WRITE);
    // The rollback journal (created, then deleted) needs --allow-delete; the journal in
    // memory does not.
    let script = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=MEMORY")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
for batch in range(5):
    db.executemany("INSERT INTO t (v) VALUES (?)", [("x" * (i % 300),) for i in range(2000)])
    db.commit()
db.execute("CREATE INDEX iv ON t (v)")
db.commit()
print(db.execute("SELECT count(*), sum(length(v)) FROM t").fetchone())
db.close()
"#;
    let want = python(script, &[&m.p("db.sqlite")]);
    let copy = m.scratch().join("copy.sqlite");
    std::fs::write(&copy, b.get("db.sqlite").expect("database uploaded")).unwrap();
    let check = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
print(db.execute("SELECT count(*), sum(length(v)) FROM t").fetchone())
"#;
    for path in [&copy, &m.p("db.sqlite")] {
        assert_eq!(python(check, &[path]), want);
    }
}

fn empty_files_and_metadata_calls(kind: Kind) {
    let b = Backend::new(kind, "wempty");
    let m = b.mount("", WRITE);
    run(Command::new("touch").arg(m.p("empty")));
    assert_object(&b, "empty", b"");
    // A shell redirection writing nothing: its first close is that of a descriptor dup'ed
    // before, and the upload follows the last one.
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(": > '{}'", m.p("redirected").display())));
    assert!(
        poll(std::time::Duration::from_secs(5), || b
            .get("redirected")
            .is_some_and(|d| d.is_empty())),
        "empty file of a redirection uploaded"
    );
    // chmod, chown, utimes on a new file succeed (not kept: S3 has no place for them).
    let f = m.p("meta.txt");
    std::fs::write(&f, b"m").unwrap();
    run(Command::new("chmod").arg("600").arg(&f));
    run(Command::new("touch").args(["-d", "2001-01-01"]).arg(&f));
    // SAFETY: plain chown(2) to the owner it has.
    let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(unsafe { libc::chown(c.as_ptr(), md.uid(), md.gid()) }, 0);
    assert_object(&b, "meta.txt", b"m");
    // A name that cannot be a key component.
    let long = m.p(&"n".repeat(300));
    let e = std::fs::File::create(long).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
}

fn mkdir_is_seen_by_a_second_mount(kind: Kind) {
    let b = Backend::new(kind, "wdir");
    let m1 = b.mount("", WRITE);
    let m2 = b.mount("", &[]);
    std::fs::create_dir(m1.p("newdir")).unwrap();
    std::fs::create_dir(m1.p("newdir/sub")).unwrap();
    assert!(b.get("newdir/").is_some(), "marker object");
    assert!(std::fs::metadata(m2.p("newdir")).unwrap().is_dir());
    assert!(std::fs::metadata(m2.p("newdir/sub")).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(m2.p("newdir/sub")).unwrap().count(), 0);
    // An existing directory.
    let e = std::fs::create_dir(m1.p("newdir")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
}

/// Opens `rel` for writing on both mounts, writes a different content on each, closes the
/// first then the second: the first wins whole, the second's close fails.
fn race(m1: &TestMount, m2: &TestMount, rel: &str, one: &[u8], two: &[u8]) -> std::io::Error {
    let f1 = std::fs::File::create(m1.p(rel)).unwrap();
    let f2 = std::fs::File::create(m2.p(rel)).unwrap();
    f1.write_all_at(one, 0).unwrap();
    f2.write_all_at(two, 0).unwrap();
    close(f1).expect("first close");
    close(f2).expect_err("second close must fail")
}

/// close(2) with its result (dropping a File ignores it).
fn close(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor is ours, closed once.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn one_name_created_by_two_mounts_one_wins(kind: Kind) {
    let b = Backend::new(kind, "wrace");
    let args = ["--allow-write", "--write-part-size", "5MiB"];
    let (m1, m2) = (b.mount("", &args), b.mount("", &args));
    let e = race(&m1, &m2, "small.txt", b"first\n", b"second!\n");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_object(&b, "small.txt", b"first\n");
    // Large files: multipart uploads, conditional at completion.
    let (one, two) = (random_bytes(11 << 20, 1), random_bytes(13 << 20, 2));
    let e = race(&m1, &m2, "large.bin", &one, &two);
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_object(&b, "large.bin", &one);
    assert_eq!(b.uploads_in_progress(), 0, "the loser's upload is aborted");
    if let Some(log) = m2.log() {
        assert!(log.contains("another writer"), "the log says why:\n{log}");
    }
}

fn changes_to_existing_objects_need_more_flags(kind: Kind) {
    let b = Backend::new(kind, "wperm");
    b.put("old.txt", b"old\n");
    let m = b.mount("", WRITE);
    let eperm = |r: std::io::Result<()>, what: &str| assert_errno(r, libc::EPERM, what);
    eperm(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.p("old.txt"))
            .map(|_| ()),
        "open for writing",
    );
    eperm(std::fs::write(m.p("old.txt"), b"new"), "overwrite");
    eperm(std::fs::remove_file(m.p("old.txt")), "unlink");
    eperm(std::fs::rename(m.p("old.txt"), m.p("moved.txt")), "rename");
    let mut s = String::new();
    std::fs::File::open(m.p("old.txt"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "old\n");
    assert_object(&b, "old.txt", b"old\n");
}
