//! Reads: exact bytes, listings, names, errors of a read-only mount, over both stores.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::{Backend, Kind, suite};
use crate::common::*;

suite!(
    whole_files_have_exact_bytes,
    random_preads_return_exact_bytes,
    listings_stat_ls_and_find,
    name_rules_hide_what_cannot_be_a_name,
    missing_paths_are_enoent_and_writes_are_erofs,
    eight_concurrent_readers_see_the_same_bytes,
    prefix_mount_strips_the_prefix,
    changes_elsewhere_show_after_the_ttl,
);

const BIG_LEN: usize = (64 << 20) + 12_345;
const MANY: usize = 2_600;
const LONG_NAME_LEN: usize = 300;

/// One bucket with every kind of object the tests read, loaded once per store kind.
struct Fixture {
    backend: Backend,
    objects: HashMap<String, Vec<u8>>,
}

fn fixture(kind: Kind) -> &'static Fixture {
    static MEMORY: OnceLock<Fixture> = OnceLock::new();
    static RGW: OnceLock<Fixture> = OnceLock::new();
    let cell = match kind {
        Kind::Memory => &MEMORY,
        Kind::Rgw => &RGW,
    };
    cell.get_or_init(|| {
        let backend = Backend::new(kind, "fx");
        let objects = objects();
        backend.put_many(
            objects
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        Fixture { backend, objects }
    })
}

fn objects() -> HashMap<String, Vec<u8>> {
    let mut objects: HashMap<String, Vec<u8>> = HashMap::new();
    objects.insert("small.txt".into(), b"hello, world\n".to_vec());
    objects.insert("empty".into(), Vec::new());
    objects.insert("big.bin".into(), random_bytes(BIG_LEN, 42));
    objects.insert("mid.bin".into(), random_bytes(3 << 20 | 777, 7));
    objects.insert("a/b/c/deep.txt".into(), b"deep\n".to_vec());
    objects.insert("a/b/sibling.txt".into(), b"sibling\n".to_vec());
    // A file and a directory of the same name: the directory wins.
    objects.insert("dup".into(), b"hidden file\n".to_vec());
    objects.insert("dup/inside.txt".into(), b"inside\n".to_vec());
    // A directory that exists only as a marker object.
    objects.insert("marker/".into(), Vec::new());
    // Keys that cannot be names: hidden.
    objects.insert("bad//empty-component".into(), b"x".to_vec());
    objects.insert("bad/./dot".into(), b"x".to_vec());
    objects.insert("bad/../dotdot".into(), b"x".to_vec());
    objects.insert(format!("long/{}", "n".repeat(LONG_NAME_LEN)), b"x".to_vec());
    objects.insert("long/ok".into(), b"ok".to_vec());
    // Names that are odd but valid.
    objects.insert(
        "odd/with space + plus %25 ünïcødé.txt".into(),
        b"odd\n".to_vec(),
    );
    for i in 0..MANY {
        objects.insert(format!("many/f{i:05}"), format!("{i}\n").into_bytes());
    }
    objects
}

fn whole_files_have_exact_bytes(kind: Kind) {
    let fx = fixture(kind);
    let m = fx.backend.mount("", &[]);
    for name in [
        "small.txt",
        "empty",
        "mid.bin",
        "a/b/c/deep.txt",
        "odd/with space + plus %25 ünïcødé.txt",
    ] {
        let got = std::fs::read(m.p(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert_eq!(sha256(&got), sha256(&fx.objects[name]), "{name}");
    }
    // The big one through an ordinary tool.
    let out = Command::new("sha256sum")
        .arg(m.p("big.bin"))
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    let sum = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        sum.split_whitespace().next(),
        Some(sha256(&fx.objects["big.bin"]).as_str())
    );
    // And `cp` gives an identical copy.
    let copy = m.scratch().join("copy.bin");
    assert!(
        Command::new("cp")
            .arg(m.p("mid.bin"))
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(sha256_file(&copy), sha256(&fx.objects["mid.bin"]));
}

fn random_preads_return_exact_bytes(kind: Kind) {
    let fx = fixture(kind);
    let data = &fx.objects["big.bin"];
    let m = fx.backend.mount("", &[]);
    let f = std::fs::File::open(m.p("big.bin")).unwrap();
    let mut seed = 12345u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 16
    };
    for _ in 0..300 {
        let len = [1usize, 100, 4096, 65_536, 1 << 20, 3 << 20][(next() % 6) as usize];
        let off = next() % (data.len() as u64 + 100);
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off).unwrap();
        let start = (off as usize).min(data.len());
        let end = (off as usize + len).min(data.len());
        // A single read may be short; what it returns must be exact.
        assert!(n <= end - start, "read past EOF at {off}");
        assert!(n > 0 || start == end, "no data at {off}");
        assert_eq!(
            &buf[..n],
            &data[start..start + n],
            "pread at {off} len {len}"
        );
    }
    // The last bytes and exactly EOF.
    let mut tail = [0u8; 10];
    let n = f.read_at(&mut tail, data.len() as u64 - 10).unwrap();
    assert_eq!(&tail[..n], &data[data.len() - 10..]);
    assert_eq!(f.read_at(&mut tail, data.len() as u64).unwrap(), 0);
}

fn listings_stat_ls_and_find(kind: Kind) {
    let fx = fixture(kind);
    let m = fx.backend.mount("", &[]);
    let mut top: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(
        top,
        [
            "a",
            "bad",
            "big.bin",
            "dup",
            "empty",
            "long",
            "many",
            "marker",
            "mid.bin",
            "odd",
            "small.txt"
        ]
    );
    // More than one LIST page, every entry exactly once.
    let mut many: Vec<String> = std::fs::read_dir(m.p("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    many.sort();
    many.dedup();
    assert_eq!(many.len(), MANY);
    // `ls -l` shows sizes from S3.
    let ls = Command::new("ls").arg("-l").arg(&m.path).output().unwrap();
    assert!(ls.status.success());
    let ls = String::from_utf8_lossy(&ls.stdout);
    let big_line = ls
        .lines()
        .find(|l| l.ends_with(" big.bin"))
        .expect("big.bin in ls -l");
    assert!(big_line.starts_with("-r--r--r--"), "{big_line}");
    assert!(big_line.contains(&format!(" {BIG_LEN} ")), "{big_line}");
    let dir_line = ls.lines().find(|l| l.ends_with(" a")).expect("a in ls -l");
    assert!(dir_line.starts_with("dr-xr-xr-x"), "{dir_line}");
    // stat
    let md = std::fs::metadata(m.p("mid.bin")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), fx.objects["mid.bin"].len() as u64);
    assert_eq!(md.mode() & 0o7777, 0o444);
    assert!(md.mtime() > 1_600_000_000, "mtime from S3's LastModified");
    assert!(std::fs::metadata(m.p("a/b")).unwrap().is_dir());
    assert!(std::fs::metadata(m.p("marker")).unwrap().is_dir());
    // find counts every visible file: all but the hidden ones (dup, bad/*, the long name).
    let find = Command::new("find")
        .arg(&m.path)
        .arg("-type")
        .arg("f")
        .output()
        .unwrap();
    assert!(
        find.status.success(),
        "{}",
        String::from_utf8_lossy(&find.stderr)
    );
    let files = String::from_utf8_lossy(&find.stdout).lines().count();
    let hidden = 1 + 3 + 1; // dup, bad//…, bad/./…, bad/../…, long/<300 chars>
    let markers = 1; // marker/ is a directory, not a file
    assert_eq!(files, fx.objects.len() - hidden - markers);
    let find_dirs = Command::new("find")
        .arg(&m.path)
        .arg("-type")
        .arg("d")
        .output()
        .unwrap();
    let dirs = String::from_utf8_lossy(&find_dirs.stdout).lines().count();
    assert_eq!(
        dirs,
        10,
        "root a a/b a/b/c bad dup long many marker odd, nothing else:\n{}",
        String::from_utf8_lossy(&find_dirs.stdout)
    );
}

fn name_rules_hide_what_cannot_be_a_name(kind: Kind) {
    let fx = fixture(kind);
    let m = fx.backend.mount("", &[]);
    // `dup` is a directory: the file `dup` is hidden behind it.
    assert!(std::fs::metadata(m.p("dup")).unwrap().is_dir());
    assert_eq!(std::fs::read(m.p("dup/inside.txt")).unwrap(), b"inside\n");
    // bad/ exists but everything under it is hidden.
    assert!(std::fs::metadata(m.p("bad")).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(m.p("bad")).unwrap().count(), 0);
    // Over-long names are hidden; their neighbours are not.
    let long: Vec<_> = std::fs::read_dir(m.p("long"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(long, vec![std::ffi::OsString::from("ok")]);
    if let Some(log) = m.log() {
        assert!(log.contains("key hidden"), "hidden keys are logged:\n{log}");
    }
}

fn missing_paths_are_enoent_and_writes_are_erofs(kind: Kind) {
    let fx = fixture(kind);
    let m = fx.backend.mount("", &[]);
    for p in ["nope", "a/nope", "a/b/c/deep.txt/x", "many/f99999"] {
        let e = std::fs::metadata(m.p(p)).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)),
            "{p}: {e}"
        );
    }
    let erofs = |r: std::io::Result<()>, what: &str| assert_errno(r, libc::EROFS, what);
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.p("small.txt"))
            .map(|_| ()),
        "open for write",
    );
    erofs(std::fs::File::create(m.p("new.txt")).map(|_| ()), "create");
    erofs(std::fs::write(m.p("small.txt"), b"x"), "overwrite");
    erofs(std::fs::remove_file(m.p("small.txt")), "unlink");
    erofs(std::fs::create_dir(m.p("newdir")), "mkdir");
    erofs(std::fs::remove_dir(m.p("marker")), "rmdir");
    erofs(std::fs::rename(m.p("small.txt"), m.p("renamed")), "rename");
    // Nothing changed.
    assert_eq!(std::fs::read(m.p("small.txt")).unwrap(), b"hello, world\n");
    assert_eq!(
        std::fs::metadata(m.p("new.txt")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

fn eight_concurrent_readers_see_the_same_bytes(kind: Kind) {
    let fx = fixture(kind);
    let want = sha256(&fx.objects["big.bin"]);
    let m = fx.backend.mount("", &["--cache-size", "128MiB"]);
    let path = m.p("big.bin");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                // Different read sizes so the readers interleave differently.
                let f = std::fs::File::open(&path).unwrap();
                let chunk = [4096usize, 65_536, 131_072, 1 << 20][i % 4];
                let mut h = <sha2::Sha256 as sha2::Digest>::new();
                let mut buf = vec![0u8; chunk];
                let mut off = 0u64;
                loop {
                    let n = f.read_at(&mut buf, off).unwrap();
                    if n == 0 {
                        break;
                    }
                    sha2::Digest::update(&mut h, &buf[..n]);
                    off += n as u64;
                }
                format!("{:x}", sha2::Digest::finalize(h))
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}

fn prefix_mount_strips_the_prefix(kind: Kind) {
    let fx = fixture(kind);
    let m = fx.backend.mount("a/b", &[]);
    let mut names: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c", "sibling.txt"]);
    assert_eq!(std::fs::read(m.p("c/deep.txt")).unwrap(), b"deep\n");
    assert!(std::fs::metadata(m.p("a")).is_err());
}

/// Objects written behind the mount's back (another instance, the console) appear, and
/// replaced ones are read in their new version, once the metadata TTLs have passed.
fn changes_elsewhere_show_after_the_ttl(kind: Kind) {
    let b = Backend::new(kind, "ttl");
    b.put("old.txt", b"version 1\n");
    let m = b.mount("", &["--metadata-ttl", "1s", "--negative-ttl", "1s"]);
    assert_eq!(std::fs::read(m.p("old.txt")).unwrap(), b"version 1\n");
    let e = std::fs::metadata(m.p("new.txt")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    b.put("new.txt", b"fresh\n");
    b.put("old.txt", b"version 2, longer\n");
    assert!(
        poll(Duration::from_secs(10), || std::fs::read(m.p("new.txt"))
            .is_ok_and(|d| d == b"fresh\n")),
        "new object not visible after the negative TTL"
    );
    assert!(
        poll(Duration::from_secs(10), || std::fs::read(m.p("old.txt"))
            .is_ok_and(|d| d == b"version 2, longer\n")),
        "replaced object not read in its new version after the TTL"
    );
    let mut names: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new.txt", "old.txt"]);
}
