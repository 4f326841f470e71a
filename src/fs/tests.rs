//! The filesystem core against the in-memory store, without FUSE.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::inodes::{Kind, ROOT};
use super::read::concat;
use super::{Fs, FsConfig, FsError};
use crate::cache::BlockCache;
use crate::store::memory::MemoryStore;

fn fs_with(store: Arc<MemoryStore>, cfg: FsConfig) -> Arc<Fs<MemoryStore>> {
    Fs::new(store, cfg, BlockCache::new(64 << 20))
}

fn small_blocks() -> FsConfig {
    FsConfig {
        block_size: 4096,
        part_size: 4 * 4096,
        max_prefetch: 8 * 4096,
        ..FsConfig::default()
    }
}

async fn names(fs: &Fs<MemoryStore>, dir: u64) -> Vec<(String, Kind)> {
    let fh = fs.opendir(dir).await.unwrap();
    let v = fs
        .readdir(fh, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.name.to_string(), e.kind))
        .collect();
    fs.releasedir(fh);
    v
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[tokio::test]
async fn nested_directories_and_prefix_stripping() {
    let s = Arc::new(MemoryStore::new());
    s.put("data/a/b/c.txt", "c");
    s.put("data/top.txt", "top");
    s.put("other/x", "x");
    let cfg = FsConfig {
        prefix: "data/".into(),
        ..FsConfig::default()
    };
    let fs = fs_with(s, cfg);
    assert_eq!(
        names(&fs, ROOT).await,
        vec![
            (".".into(), Kind::Dir),
            ("..".into(), Kind::Dir),
            ("a".into(), Kind::Dir),
            ("top.txt".into(), Kind::File)
        ]
    );
    let a = fs.lookup(ROOT, "a").await.unwrap();
    let b = fs.lookup(a.ino, "b").await.unwrap();
    let c = fs.lookup(b.ino, "c.txt").await.unwrap();
    assert_eq!((c.kind, c.size), (Kind::File, 1));
    assert!(matches!(
        fs.lookup(ROOT, "other").await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(fs.lookup(ROOT, "x").await, Err(FsError::NotFound)));
    // Paths for logs are relative to the mount, without the prefix.
    assert_eq!(fs.describe(ROOT, None), "/");
    assert_eq!(fs.describe(ROOT, Some("missing")), "/missing");
    assert_eq!(fs.describe(b.ino, Some("zz")), "/a/b/zz");
    assert_eq!(fs.describe(c.ino, None), "/a/b/c.txt");
    assert_eq!(fs.describe(9999, Some("n")), "<inode 9999>/n");
}

#[tokio::test]
async fn directory_wins_over_file_and_bad_keys_are_hidden() {
    let s = Arc::new(MemoryStore::new());
    for k in [
        "a",
        "a/inner",
        "x//y",
        "dir/../z",
        "./dot",
        "ok",
        "marker/",
        &"n".repeat(256),
    ] {
        s.put(k, "v");
    }
    let fs = fs_with(s.clone(), FsConfig::default());
    let listed: Vec<String> = names(&fs, ROOT).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(listed, vec![".", "..", "a", "dir", "marker", "ok", "x"]);
    // Without a cached listing, lookup probes S3 and still prefers the directory.
    let fresh = fs_with(s, FsConfig::default());
    assert_eq!(fresh.lookup(ROOT, "a").await.unwrap().kind, Kind::Dir);
    assert_eq!(fresh.lookup(ROOT, "marker").await.unwrap().kind, Kind::Dir);
    let x = fresh.lookup(ROOT, "x").await.unwrap();
    assert_eq!(
        names(&fresh, x.ino).await.len(),
        2,
        "x// holds only a hidden entry"
    );
    let dir = fresh.lookup(ROOT, "dir").await.unwrap();
    assert_eq!(names(&fresh, dir.ino).await.len(), 2, "dir/.. is hidden");
    assert!(fresh.lookup(ROOT, &"n".repeat(256)).await.is_err());
    assert!(fresh.lookup(ROOT, ".").await.is_err());
}

#[tokio::test]
async fn listing_spans_pages_and_answers_lookups_without_requests() {
    let s = Arc::new(MemoryStore::with_page_size(100));
    for i in 0..2_550 {
        s.put(&format!("many/f{i:05}"), "x");
    }
    let fs = fs_with(s.clone(), FsConfig::default());
    let many = fs.lookup(ROOT, "many").await.unwrap();
    assert_eq!(names(&fs, many.ino).await.len(), 2_552);
    let before = s.lists.load(Ordering::Relaxed);
    for i in (0..2_550).step_by(97) {
        fs.lookup(many.ino, &format!("f{i:05}")).await.unwrap();
    }
    assert!(matches!(
        fs.lookup(many.ino, "nope").await,
        Err(FsError::NotFound)
    ));
    assert_eq!(
        s.lists.load(Ordering::Relaxed),
        before,
        "lookups came from the listing"
    );
}

#[tokio::test]
async fn readdir_resumes_at_offsets() {
    let s = Arc::new(MemoryStore::new());
    for i in 0..10 {
        s.put(&format!("f{i}"), "x");
    }
    let fs = fs_with(s, FsConfig::default());
    let fh = fs.opendir(ROOT).await.unwrap();
    let first = fs.readdir(fh, 0, 4).unwrap();
    let rest = fs
        .readdir(fh, first.last().unwrap().offset, usize::MAX)
        .unwrap();
    let all: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(all.len(), 12);
    assert_eq!(&all[2..4], ["f0", "f1"]);
    assert_eq!(all[11], "f9");
}

#[tokio::test]
async fn reads_return_exact_bytes_at_any_offset() {
    let s = Arc::new(MemoryStore::new());
    let data = pattern(100_003, 7);
    s.put("blob", data.clone());
    s.put("empty", "");
    let fs = fs_with(s.clone(), small_blocks());
    let blob = fs.lookup(ROOT, "blob").await.unwrap();
    let fh = fs.open(blob.ino, false, false).await.unwrap().fh;
    // Sequential, whole.
    let mut got = Vec::new();
    let mut off = 0u64;
    loop {
        let b = concat(&fs.read(fh, off, 8192, false).await.unwrap());
        if b.is_empty() {
            break;
        }
        off += b.len() as u64;
        got.extend_from_slice(&b);
    }
    assert_eq!(got, data);
    // Unaligned reads across block boundaries, and past the end.
    for (o, n) in [
        (4095u64, 2u32),
        (1, 20_000),
        (99_990, 100),
        (100_003, 10),
        (50_000, 0),
    ] {
        let b = concat(&fs.read(fh, o, n, false).await.unwrap());
        let end = (o as usize + n as usize).min(data.len());
        let start = (o as usize).min(end);
        assert_eq!(&b[..], &data[start..end], "read at {o} len {n}");
    }
    let e = fs.lookup(ROOT, "empty").await.unwrap();
    let efh = fs.open(e.ino, false, false).await.unwrap().fh;
    assert!(concat(&fs.read(efh, 0, 4096, false).await.unwrap()).is_empty());
    assert!(matches!(
        fs.open(blob.ino, true, false).await,
        Err(FsError::ReadOnly)
    ));
}

#[tokio::test]
async fn blocks_are_cached_and_shared_by_concurrent_readers() {
    let s = Arc::new(MemoryStore::new());
    let data = pattern(64 * 4096, 3);
    s.put("f", data.clone());
    let fs = fs_with(s.clone(), small_blocks());
    let f = fs.lookup(ROOT, "f").await.unwrap();
    let mut tasks = Vec::new();
    for r in 0..8u64 {
        let fs = fs.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let fh = fs.open(f.ino, false, false).await.unwrap().fh;
            for i in 0..64u64 {
                let o = ((i + r * 8) % 64) * 4096;
                let b = concat(&fs.read(fh, o, 4096, false).await.unwrap());
                assert_eq!(&b[..], &data[o as usize..o as usize + 4096]);
            }
            fs.release(fh);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let gets = s.gets.load(Ordering::Relaxed);
    assert!(
        gets <= 64,
        "8 readers of 64 blocks made {gets} GETs: blocks were not shared"
    );
}

#[tokio::test]
async fn a_changed_object_fails_reads_on_the_old_handle_and_reopens_fresh() {
    let s = Arc::new(MemoryStore::new());
    let old = pattern(20_000, 1);
    s.put("f", old.clone());
    let cfg = FsConfig {
        metadata_ttl: Duration::ZERO,
        ..small_blocks()
    };
    let fs = fs_with(s.clone(), cfg);
    let f = fs.lookup(ROOT, "f").await.unwrap();
    let fh = fs.open(f.ino, false, false).await.unwrap().fh;
    assert_eq!(concat(&fs.read(fh, 0, 10, false).await.unwrap()).len(), 10);
    let new = pattern(30_000, 2);
    s.put("f", new.clone());
    // fstat of the open file still describes the version it reads.
    assert_eq!(fs.handle_attr(fh).map(|a| a.size), Some(20_000));
    // Block 0 is cached for the old version; block 3 is not and must not mix versions.
    assert!(matches!(
        fs.read(fh, 3 * 4096, 10, false).await,
        Err(FsError::Stale)
    ));
    // While a file of it is open, the inode stays the old version (its pages and size in
    // the kernel are that version's): getattr (fstat comes without the handle and is never
    // retried) describes that version, an open that finds the new one gets ESTALE, and the
    // kernel looks the name up again...
    assert_eq!(fs.getattr(f.ino).await.map(|a| a.size).ok(), Some(20_000));
    assert!(matches!(
        fs.open(f.ino, false, false).await,
        Err(FsError::Replaced)
    ));
    assert_eq!(fs.getattr(f.ino).await.map(|a| a.size).ok(), Some(20_000));
    // ...which gives the new version an inode of its own.
    let g = fs.lookup(ROOT, "f").await.unwrap();
    assert_ne!(g.ino, f.ino);
    assert_eq!(g.size, 30_000);
    let o = fs.open(g.ino, false, false).await.unwrap();
    assert!(!o.keep_cache, "a new inode has no pages to keep");
    let fh2 = o.fh;
    assert_eq!(
        &concat(&fs.read(fh2, 12_000, 100, false).await.unwrap())[..],
        &new[12_000..12_100]
    );
    // The old file still reads its own version or nothing.
    match fs.read(fh, 0, 10, false).await {
        Ok(b) => assert_eq!(&concat(&b)[..], &old[..10]),
        Err(e) => assert!(matches!(e, FsError::Stale), "{e}"),
    }
    assert_eq!(fs.handle_attr(fh).map(|a| a.size), Some(20_000));
    assert_eq!(fs.handle_attr(fh2).map(|a| a.size), Some(30_000));
    // A page-cache read beyond the last page of this version means the kernel thinks the
    // file is longer: failed, not answered short (the kernel would pad it with zeros).
    let end = 30_000u64.next_multiple_of(super::page_size());
    assert!(fs.read(fh2, end - 4096, 4096, true).await.is_ok());
    assert!(matches!(
        fs.read(fh2, end, 4096, true).await,
        Err(FsError::SizeMismatch)
    ));
    // The same read without the page cache (O_DIRECT) is simply at the end of the file.
    assert!(concat(&fs.read(fh2, end, 4096, false).await.unwrap()).is_empty());
    // Once the old file is closed, its inode may move on to the new version; the kernel
    // must then drop what it has of the old one.
    fs.release(fh);
    let o2 = fs.open(f.ino, false, false).await.unwrap();
    assert!(!o2.keep_cache && o2.attrs_changed);
    // Opening the same version again changes nothing the kernel has.
    let again = fs.open(g.ino, false, false).await.unwrap();
    assert!(again.keep_cache && !again.attrs_changed);
    assert_eq!(fs.getattr(g.ino).await.unwrap().size, 30_000);
    s.delete("f");
    // Open files keep describing their version; once closed, the deletion shows.
    assert_eq!(fs.getattr(g.ino).await.unwrap().size, 30_000);
    fs.release(fh2);
    fs.release(again.fh);
    assert!(matches!(fs.getattr(g.ino).await, Err(FsError::NotFound)));
}

#[tokio::test]
async fn subdirectories_are_listed_ahead_once_their_parent_is_read() {
    let s = Arc::new(MemoryStore::new());
    for d in 0..20 {
        for f in 0..5 {
            s.put(&format!("t/d{d:02}/f{f}"), "x");
        }
    }
    let fs = fs_with(s.clone(), FsConfig::default());
    let t = fs.lookup(ROOT, "t").await.unwrap();
    assert_eq!(names(&fs, t.ino).await.len(), 22);
    // The background listing of the 20 subdirectories completes shortly.
    // The lookup's probe of t (a small directory) returns it whole; then its 20 children.
    let want = 1 + 20;
    for _ in 0..200 {
        if s.lists.load(Ordering::Relaxed) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = s.lists.load(Ordering::Relaxed);
    assert_eq!(before, want);
    for d in 0..20 {
        let dir = fs.lookup(t.ino, &format!("d{d:02}")).await.unwrap();
        assert_eq!(names(&fs, dir.ino).await.len(), 7);
    }
    // Walking the level below needed no LIST of its own (its own children are files).
    assert_eq!(s.lists.load(Ordering::Relaxed), before);
    // Turned off, nothing is listed ahead.
    let s2 = Arc::new(MemoryStore::new());
    s2.put("t/d/f", "x");
    let cfg = FsConfig {
        prefetch_listings: 0,
        ..FsConfig::default()
    };
    let fs2 = fs_with(s2.clone(), cfg);
    let t2 = fs2.lookup(ROOT, "t").await.unwrap();
    names(&fs2, t2.ino).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        s2.lists.load(Ordering::Relaxed),
        1,
        "the probe's page was the listing"
    );
}

#[tokio::test]
async fn a_deleted_object_fails_reads_with_eio_not_enoent() {
    let s = Arc::new(MemoryStore::new());
    s.put("f", pattern(20_000, 1));
    let fs = fs_with(s.clone(), small_blocks());
    let f = fs.lookup(ROOT, "f").await.unwrap();
    let fh = fs.open(f.ino, false, false).await.unwrap().fh;
    s.delete("f");
    let e = fs.read(fh, 3 * 4096, 10, false).await.unwrap_err();
    assert!(matches!(e, FsError::Stale), "{e:?}");
    assert_eq!(e.errno(), libc::EIO);
}

#[tokio::test]
async fn attributes_from_a_listing_expire_a_ttl_after_the_listing() {
    let s = Arc::new(MemoryStore::new());
    s.put("d/f", "old");
    let cfg = FsConfig {
        metadata_ttl: Duration::from_millis(300),
        ..FsConfig::default()
    };
    let fs = fs_with(s.clone(), cfg);
    let d = fs.lookup(ROOT, "d").await.unwrap();
    names(&fs, d.ino).await; // the listing of d, at t0
    s.put("d/f", "newer");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Answered from the t0 listing: the old size, trusted only until t0 + TTL.
    let f = fs.lookup(d.ino, "f").await.unwrap();
    assert_eq!(f.size, 3);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        fs.getattr(f.ino).await.unwrap().size,
        5,
        "stale past t0 + TTL"
    );
}
