//! Property tests of the key -> name rules: random sets of keys, built from pieces chosen
//! to hit every rule (empty components, `.`, `..`, NUL, over-long components, a file next
//! to a directory of the same name, markers, odd characters), mounted under a random prefix
//! and listed through the real filesystem core (lookups, paged and parallel listings over
//! the in-memory store), compared with a small reference model written from the rules in
//! docs/semantics.md. Also the stable-toolchain driver of the fuzz target's body.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::inodes::{Kind, ROOT};
use super::{Fs, FsConfig, FsError};
use crate::cache::BlockCache;
use crate::store::memory::MemoryStore;
use crate::store::urlkey;

/// The reference model: the entries of directory `dir` (a key prefix), by the rules: the
/// first component after `dir` names a directory if more follows, else a file; a marker
/// (`dir` itself) is no entry; a name must be 1..=255 bytes, not `.` or `..`, without NUL;
/// a directory hides a file of the same name.
fn model_dir(keys: &[String], dir: &str) -> BTreeMap<String, Kind> {
    let valid =
        |n: &str| !n.is_empty() && n.len() <= 255 && n != "." && n != ".." && !n.contains('\0');
    let mut out = BTreeMap::new();
    for k in keys {
        let Some(rest) = k.strip_prefix(dir) else {
            continue;
        };
        let (name, kind) = match rest.find('/') {
            Some(i) => (&rest[..i], Kind::Dir),
            None => (rest, Kind::File),
        };
        if rest.is_empty() || !valid(name) {
            continue;
        }
        if kind == Kind::Dir || !out.contains_key(name) {
            out.insert(name.to_string(), kind);
        }
    }
    out
}

/// Pieces keys are made of.
const PIECES: &[&str] = &[
    "a", "b", "a", "b", "z", "/", "/", "/", ".", "..", "\0", "é", " ", "%", "+", "\n", "\r",
    "\u{1}", "0", "9",
];

fn key() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        10 => prop::sample::select(PIECES).prop_map(str::to_string),
        // Components of 250..300 bytes: some fit NAME_MAX, some do not.
        1 => (250usize..300).prop_map(|n| "L".repeat(n)),
    ];
    prop::collection::vec(piece, 1..8).prop_map(|p| p.concat())
}

fn config(prefix: &str) -> FsConfig {
    FsConfig {
        prefix: prefix.to_string(),
        ..FsConfig::default()
    }
}

async fn listed(fs: &Fs<MemoryStore>, ino: u64) -> BTreeMap<String, Kind> {
    let fh = fs.opendir(ino).await.expect("opendir");
    let out = fs
        .readdir(fh, 2, usize::MAX)
        .expect("readdir")
        .into_iter()
        .map(|e| (e.name.to_string(), e.kind))
        .collect();
    fs.releasedir(fh);
    out
}

/// Walks the model's tree from the mount root, checking every directory's listing and
/// every entry's lookup against the model.
async fn check_tree(keys: &[String], prefix: &str, page_size: usize) {
    let store = Arc::new(MemoryStore::with_page_size(page_size));
    for k in keys {
        store.put(k, k.as_bytes().to_vec());
    }
    let fs = Fs::new(store, config(prefix), BlockCache::new(16 << 20));
    let mut todo = vec![(ROOT, prefix.to_string())];
    while let Some((ino, dir)) = todo.pop() {
        let want = model_dir(keys, &dir);
        assert_eq!(listed(&fs, ino).await, want, "listing of {dir:?}");
        for (name, kind) in &want {
            let a = fs.lookup(ino, name).await.expect("lookup of a listed name");
            assert_eq!(a.kind, *kind, "{dir:?} {name:?}");
            match kind {
                Kind::Dir => todo.push((a.ino, format!("{dir}{name}/"))),
                // A file's bytes are its key: it is the object of that key.
                Kind::File => assert_eq!(a.size, (dir.len() + name.len()) as u64),
            }
        }
        // Names the model hides are not found either.
        for bad in [".", "..", "", "a\0b"] {
            assert!(matches!(fs.lookup(ino, bad).await, Err(FsError::NotFound)));
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // No regression files written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn listings_follow_the_reference_model(
        keys in prop::collection::vec(key(), 0..40),
        prefix in prop::sample::select(vec!["", "a/", "a/b/"]),
        page_size in 1usize..6,
    ) {
        runtime().block_on(check_tree(&keys, prefix, page_size));
    }
}

/// The fuzz target's body over the seed corpus in fuzz/corpus/listing.
#[test]
fn fuzz_body_over_the_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/listing");
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("fuzz/corpus/listing") {
        let data = std::fs::read(e.expect("corpus entry").path()).expect("corpus file");
        super::names::fuzz::check_listing(&data, urlkey::decode);
        n += 1;
    }
    assert!(n > 0, "empty corpus");
}

/// Inputs for the fuzz body: a directory and items encoded as S3 sends them, sometimes
/// with bytes that are not valid encodings.
fn listing_input() -> impl Strategy<Value = Vec<u8>> {
    let item = (any::<bool>(), key(), any::<bool>());
    (
        prop::sample::select(vec!["", "a/", "a/b/", "%"]),
        prop::collection::vec(item, 0..30),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(dir, items, noise)| {
            let mut out = urlkey::encode(dir).into_bytes();
            for (is_prefix, k, slash) in items {
                out.push(b'\n');
                if is_prefix {
                    out.extend_from_slice(b"P ");
                }
                let mut key = format!("{dir}{k}");
                if is_prefix && slash {
                    key.push('/');
                }
                out.extend_from_slice(urlkey::encode(&key).as_bytes());
            }
            out.extend_from_slice(&noise);
            out
        })
}

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn fuzz_body_over_random_listings(data in listing_input()) {
        super::names::fuzz::check_listing(&data, urlkey::decode);
    }

    #[test]
    fn fuzz_body_over_random_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        super::names::fuzz::check_listing(&data, urlkey::decode);
    }
}
