//! Large and odd namespaces through a real mount: a directory of many objects and a deep
//! tree (readdir, `ls -l`, `find`) with the daemon's memory bounded, and keys that are odd
//! or cannot be names: each served with its exact bytes or hidden with a warning, never
//! mangled, never a crash or a corrupted listing.
//!
//! `NAMESPACE_OBJECTS` sets the size of both the flat directory and the tree (default
//! 10,000 each, to keep CI short; the figure is 100,000: README gives the timings).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn objects() -> usize {
    std::env::var("NAMESPACE_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Runs a shell pipeline; its stdout.
fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(cmd: &str) -> usize {
    sh(cmd).trim().parse().expect("a count")
}

const MIB: u64 = 1 << 20;
/// The daemon's fixed overhead (runtime, SDK, FUSE threads): docs/semantics.md.
const OVERHEAD: u64 = 64 * MIB;
/// What one listed entry may cost while its listing and inode are held (measured ~0.4 KiB).
const PER_ENTRY: u64 = 1024;

#[test]
fn a_huge_directory_and_a_deep_tree_list_whole_in_bounded_memory() {
    need_rgw!();
    let n = objects();
    let bucket = unique_bucket("ns");
    create_bucket(&bucket);
    // The tree: three levels of 10 directories, then files spread over the 1,000 leaves.
    let t = Instant::now();
    let mut items: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("flat/f{i:06}"), Vec::new()))
        .collect();
    for i in 0..n {
        let leaf = i % 1000;
        items.push((
            format!(
                "tree/d{}/d{}/d{}/f{i:06}",
                leaf / 100,
                leaf / 10 % 10,
                leaf % 10
            ),
            Vec::new(),
        ));
    }
    put_many(&bucket, items);
    eprintln!("namespace: uploaded 2 x {n} objects in {:?}", t.elapsed());

    let cache = 16 * MIB;
    // TTL 2s: the relistings below ask S3 again.
    let m = mount(
        &format!("s3://{bucket}"),
        &["--cache-size", "16MiB", "--metadata-ttl", "2s"],
    );
    let flat = m.p("flat");
    let tree = m.p("tree");
    let timed = |what: &str, f: &dyn Fn() -> usize| {
        let t = Instant::now();
        let c = f();
        eprintln!("namespace: {what}: {c} in {:?}", t.elapsed());
        c
    };
    // readdir alone, then with attributes.
    let listed = timed("ls -f flat | wc -l", &|| {
        count(&format!("ls -f '{}' | wc -l", flat.display()))
    });
    assert_eq!(listed, n + 2, ". and .. and every object");
    let ls_l = timed("ls -l flat", &|| {
        let out = sh(&format!("ls -l '{}'", flat.display()));
        let files: Vec<&str> = out.lines().filter(|l| l.starts_with('-')).collect();
        assert!(files.iter().all(|l| l.contains(" 0 ")), "sizes from S3");
        files.len()
    });
    assert_eq!(ls_l, n);
    // Every name exactly once.
    let names: BTreeSet<String> = std::fs::read_dir(&flat)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), n);
    assert!(names.contains(&format!("f{:06}", n - 1)));
    let files = timed("find tree -type f", &|| {
        count(&format!("find '{}' -type f | wc -l", tree.display()))
    });
    assert_eq!(files, n);
    let dirs = timed("find tree -type d", &|| {
        count(&format!("find '{}' -type d | wc -l", tree.display()))
    });
    assert_eq!(dirs, 1 + 10 + 100 + n.min(1000));
    let (rss, peak) = m.rss();
    eprintln!(
        "namespace: daemon RSS {} MiB, peak {} MiB, after listing {} entries",
        rss / MIB,
        peak / MIB,
        2 * n
    );
    let bound = cache + OVERHEAD + PER_ENTRY * 2 * n as u64;
    assert!(peak < bound, "peak RSS {peak} over {bound}");

    // Listing again (after the TTL, so from S3) does not add up: memory of old listings
    // is given back.
    let mut after = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(count(&format!("ls -l '{}' | wc -l", flat.display())), n + 1);
        after.push(m.rss().0);
    }
    eprintln!(
        "namespace: RSS after relistings: {:?} MiB",
        after.iter().map(|r| r / MIB).collect::<Vec<_>>()
    );
    assert!(
        after[2] <= after[0] + after[0] / 4 + 16 * MIB,
        "RSS grows with each listing: {after:?}"
    );
    assert!(m.rss().1 < bound);
}

#[test]
fn odd_keys_are_served_exactly_or_hidden_with_a_warning() {
    need_rgw!();
    let bucket = unique_bucket("odd");
    create_bucket(&bucket);
    let long_ok = format!(
        "deep/{}/{}/{}/{}/{}",
        "a".repeat(250),
        "b".repeat(250),
        "c".repeat(250),
        "d".repeat(250),
        "e".repeat(15)
    );
    assert_eq!(long_ok.len(), 1024);
    let long_bad = format!("odd/{}", "y".repeat(1020));
    let served = [
        "odd/with space.txt",
        "odd/ünïcødé ✓.txt",
        "odd/100%.txt",
        "odd/%41",
        "odd/A",
        "odd/a+b",
        "odd/a b",
        "odd/%2B",
        "odd/new\nline",
        "odd/carriage\rreturn",
        "odd/ctl\u{1}char",
        "odd/tab\there",
        "odd/q?&=#;",
        "odd/back\\slash",
        "odd/trailing space ",
        &long_ok,
    ];
    let hidden = [
        "/leading-slash",
        "odd//double",
        "odd/./dot",
        "odd/../dotdot",
        &long_bad,
    ];
    for (i, k) in served.iter().chain(hidden.iter()).enumerate() {
        put(&bucket, k, format!("{i}:{k}"));
    }
    let m = mount(&format!("s3://{bucket}"), &[]);
    let ls = |rel: &str| -> BTreeSet<String> {
        std::fs::read_dir(m.p(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(
        ls(""),
        ["deep", "odd"].iter().map(|s| s.to_string()).collect(),
        "the leading-slash key is hidden at the root"
    );
    let want: BTreeSet<String> = served
        .iter()
        .filter_map(|k| k.strip_prefix("odd/"))
        .map(str::to_string)
        .collect();
    assert_eq!(ls("odd"), want, "exactly the valid names, unmangled");
    for (i, k) in served.iter().enumerate() {
        let got = std::fs::read(m.p(k)).unwrap_or_else(|e| panic!("{k:?}: {e}"));
        assert_eq!(got, format!("{i}:{k}").into_bytes(), "{k:?}");
    }
    // Hidden: not reachable, and each reported once, by the listing item that carried it.
    assert!(std::fs::metadata(m.p(&long_bad)).is_err());
    let log = m.log_text();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("key hidden")).collect();
    let long_bad_q = format!("{long_bad:?}");
    for item in [
        "\"/\"",
        "\"odd//\"",
        "\"odd/./\"",
        "\"odd/../\"",
        long_bad_q.as_str(),
    ] {
        assert_eq!(
            warned
                .iter()
                .filter(|l| l.contains(&format!("key={item}")))
                .count(),
            1,
            "{item} reported once; log:\n{log}"
        );
    }
    assert_eq!(
        warned.len(),
        hidden.len(),
        "nothing else hidden; log:\n{log}"
    );
    // Still serving.
    assert_eq!(std::fs::read(m.p("odd/A")).unwrap(), b"4:odd/A");
}
