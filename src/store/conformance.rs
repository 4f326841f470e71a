//! Checks that an [`ObjectStore`] behaves as AWS S3 does, for what the filesystem relies
//! on: listing pages and common prefixes, keys that need URL encoding, GETs pinned to a
//! version, conditional writes, multipart rules, error classification. The same checks run
//! over the in-memory store (unit tests) and over the S3 store against Ceph RGW
//! (tests/it/store_conformance.rs), so the memory store the filesystem tests use is held
//! to what a real server does.
//!
//! AWS's documentation is the reference. Where a server is known to differ, [`Server`] says
//! so and the check asserts that server's behaviour instead, so the difference stays
//! visible (and a server that changes is noticed).
//!
//! Every check writes its data through the trait, only under the `base` it is given (a
//! prefix ending in `/` that no other check uses), and answers a [`Failure`] naming what
//! differed rather than panicking.

use std::fmt::Debug;
use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;

use super::{ListFrom, MIN_PART_SIZE, ObjectStore, Part, Precondition, StoreError};

/// What a server is known to do differently from AWS S3.
#[derive(Clone, Copy, Debug)]
pub struct Server {
    pub name: &'static str,
    /// Whether `If-None-Match: *` and `If-Match` are checked on CompleteMultipartUpload.
    /// AWS S3 does; Ceph RGW 16 ignores them and completes over whatever is there (the
    /// write path looks first with a HEAD for that reason).
    pub honours_complete_conditions: bool,
    /// Whether a completion must list its parts in ascending order (AWS: else 400
    /// InvalidPartOrder; Ceph RGW 16 sorts them and completes). The write path sorts them.
    pub refuses_unordered_parts: bool,
    /// How completing an aborted upload fails (a [`StoreError`] variant): AWS answers 404
    /// NoSuchUpload (`NotFound`); Ceph RGW 16 answers 500 InternalError "This multipart
    /// completion is already in progress" (`Transient`: retried, then failed).
    pub aborted_completion: &'static str,
    /// Whether a completion may leave out parts that were uploaded (AWS: yes, they are
    /// dropped; Ceph RGW 16 refuses it with InvalidPart). The write path lists them all.
    pub completes_part_subset: bool,
}

impl Server {
    pub const AWS: Server = Server {
        name: "AWS S3",
        honours_complete_conditions: true,
        refuses_unordered_parts: true,
        aborted_completion: "NotFound",
        completes_part_subset: true,
    };
    pub const CEPH_RGW_16: Server = Server {
        name: "Ceph RGW 16",
        honours_complete_conditions: false,
        refuses_unordered_parts: false,
        aborted_completion: "Transient",
        completes_part_subset: false,
    };
}

/// What a check found different from what it expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failure(String);

pub type Checked = Result<(), Failure>;

fn want<T: PartialEq + Debug>(what: &str, got: T, expected: T) -> Checked {
    if got == expected {
        Ok(())
    } else {
        Err(Failure(format!(
            "{what}: got {got:?}, expected {expected:?}"
        )))
    }
}

fn ok<T>(what: &str, r: Result<T, StoreError>) -> Result<T, Failure> {
    r.map_err(|e| Failure(format!("{what}: failed: {e:?}")))
}

/// `want` for large bodies: says where they differ instead of printing them.
fn same_bytes(what: &str, got: &[u8], expected: &[u8]) -> Checked {
    if got == expected {
        return Ok(());
    }
    let at = got.iter().zip(expected).position(|(a, b)| a != b);
    Err(Failure(format!(
        "{what}: {} bytes, expected {}; first difference at {at:?}",
        got.len(),
        expected.len()
    )))
}

/// The variant of an error, for comparisons.
fn kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::NotFound => "NotFound",
        StoreError::PreconditionFailed => "PreconditionFailed",
        StoreError::NoSuchBucket => "NoSuchBucket",
        StoreError::AccessDenied { .. } => "AccessDenied",
        StoreError::Credentials(_) => "Credentials",
        StoreError::Unreachable(_) => "Unreachable",
        StoreError::Transient(_) => "Transient",
        StoreError::Other(_) => "Other",
    }
}

/// Whether `text` holds `word` whole (InvalidPart is not InvalidPartOrder).
fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == word)
}

/// The call failed with an error of variant `expected` (whose text, for `Other`, holds
/// `code`: the S3 error code that tells those apart).
fn want_err<T>(
    what: &str,
    r: Result<T, StoreError>,
    expected: &str,
    code: Option<&str>,
) -> Checked {
    let got = match r {
        Err(e) if kind(&e) == expected && code.is_none_or(|c| has_word(&e.to_string(), c)) => {
            return Ok(());
        }
        Err(e) => format!("{e:?}"),
        Ok(_) => "success".into(),
    };
    Err(Failure(format!(
        "{what}: got {got}, expected {expected}{}",
        code.map(|c| format!(" ({c})")).unwrap_or_default()
    )))
}

/// Deterministic bytes that differ at every offset a test might confuse.
fn pattern(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn put_new<S: ObjectStore>(s: &S, key: &str, body: Bytes) -> Result<String, Failure> {
    let w = ok(
        &format!("put {key:?}"),
        s.put_object(key, body, &Precondition::Absent).await,
    )?;
    Ok(w.etag)
}

/// The bytes of a GET, checked to be exactly as long as asked.
async fn get<S: ObjectStore>(
    s: &S,
    key: &str,
    range: Range<u64>,
    etag: &str,
    size: u64,
) -> Result<Bytes, Failure> {
    let what = format!("GET {key:?} {range:?}");
    let mut body = ok(&what, s.get_range(key, range.clone(), etag, size).await)?;
    let mut got = Vec::new();
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&ok(&what, chunk)?);
    }
    want(
        &format!("{what}: body length"),
        got.len() as u64,
        range.end - range.start,
    )?;
    Ok(got.into())
}

/// The current bytes and ETag of `key`, by HEAD and GET.
async fn read<S: ObjectStore>(s: &S, key: &str) -> Result<(Bytes, String), Failure> {
    let m = ok(&format!("HEAD {key:?}"), s.head(key).await)?;
    if m.size == 0 {
        return Ok((Bytes::new(), m.etag));
    }
    Ok((get(s, key, 0..m.size, &m.etag, m.size).await?, m.etag))
}

/// One listing, page by page: the entries of each page (objects as keys, common prefixes
/// as themselves, each in its page's order: objects first) and whether a page said more.
async fn pages<S: ObjectStore>(
    s: &S,
    prefix: &str,
    delimited: bool,
    from: ListFrom,
    max_keys: Option<i32>,
) -> Result<Vec<(Vec<String>, Vec<String>)>, Failure> {
    let mut out = Vec::new();
    let mut from = from;
    loop {
        let what = format!("list {prefix:?} page {} from {from:?}", out.len() + 1);
        let p = ok(&what, s.list_page(prefix, delimited, from, max_keys).await)?;
        out.push((p.objects.into_iter().map(|o| o.key).collect(), p.prefixes));
        match p.next {
            Some(t) if out.len() < 100 => from = ListFrom::Token(t),
            Some(_) => return Err(Failure(format!("{what}: more than 100 pages"))),
            None => return Ok(out),
        }
    }
}

/// Every key of a listing (objects and prefixes together, sorted as S3 orders them).
fn entries(pages: &[(Vec<String>, Vec<String>)]) -> Vec<String> {
    let mut all: Vec<String> = pages
        .iter()
        .flat_map(|(o, p)| o.iter().chain(p))
        .cloned()
        .collect();
    all.sort();
    all
}

/// Pages of at most `max_keys`, continued by token, and StartAfter, without delimiter.
pub async fn list_pages<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let p = format!("{base}p/");
    let keys: Vec<String> = (0..7).map(|i| format!("{p}k{i:02}")).collect();
    for k in &keys {
        put_new(s, k, Bytes::from_static(b"x")).await?;
    }
    // Neighbours that sort just before and after the prefix must not show.
    put_new(s, &format!("{base}p.before"), Bytes::new()).await?;
    put_new(s, &format!("{base}p0after"), Bytes::new()).await?;
    let k = |r: Range<usize>| keys[r].to_vec();

    let got = pages(s, &p, false, ListFrom::Start, Some(3)).await?;
    want(
        "pages of 3 keys",
        got,
        vec![(k(0..3), vec![]), (k(3..6), vec![]), (k(6..7), vec![])],
    )?;
    // A page that holds exactly the rest is the last one: no token to an empty page.
    want(
        "one page of exactly all 7 keys",
        pages(s, &p, false, ListFrom::Start, Some(7)).await?,
        vec![(k(0..7), vec![])],
    )?;
    want(
        "6 keys a page",
        pages(s, &p, false, ListFrom::Start, Some(6)).await?,
        vec![(k(0..6), vec![]), (k(6..7), vec![])],
    )?;
    want(
        "the default page size",
        pages(s, &p, false, ListFrom::Start, None).await?,
        vec![(k(0..7), vec![])],
    )?;
    // StartAfter: strictly after the key, which need not exist.
    want(
        "StartAfter k02",
        pages(s, &p, false, ListFrom::After(keys[2].clone()), Some(3)).await?,
        vec![(k(3..6), vec![]), (k(6..7), vec![])],
    )?;
    want(
        "StartAfter k03a (no such key)",
        pages(s, &p, false, ListFrom::After(format!("{p}k03a")), None).await?,
        vec![(k(4..7), vec![])],
    )?;
    want(
        "StartAfter the last key",
        pages(s, &p, false, ListFrom::After(keys[6].clone()), None).await?,
        vec![(vec![], vec![])],
    )?;
    want(
        "a prefix with nothing under it",
        pages(s, &format!("{base}none/"), false, ListFrom::Start, None).await?,
        vec![(vec![], vec![])],
    )
}

/// With `/` as delimiter: common prefixes once each, counted as one entry of a page, in
/// key order with the objects, continued across pages.
pub async fn list_delimited<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let p = format!("{base}d/");
    for k in ["a", "b", "b/1", "b/2", "c/x/y", "d", "e/"] {
        put_new(s, &format!("{p}{k}"), Bytes::from_static(b"x")).await?;
    }
    let q = |names: &[&str]| names.iter().map(|n| format!("{p}{n}")).collect::<Vec<_>>();
    want(
        "delimited listing",
        pages(s, &p, true, ListFrom::Start, None).await?,
        vec![(q(&["a", "b", "d"]), q(&["b/", "c/", "e/"]))],
    )?;
    // S3 counts each common prefix as one key of max-keys.
    want(
        "delimited, 2 entries a page",
        pages(s, &p, true, ListFrom::Start, Some(2)).await?,
        vec![
            (q(&["a", "b"]), vec![]),
            (vec![], q(&["b/", "c/"])),
            (q(&["d"]), q(&["e/"])),
        ],
    )?;
    let one = pages(s, &p, true, ListFrom::Start, Some(1)).await?;
    want(
        "delimited, 1 entry a page",
        (one.len(), entries(&one)),
        (6, q(&["a", "b", "b/", "c/", "d", "e/"])),
    )?;
    want(
        "delimited, StartAfter an object",
        pages(s, &p, true, ListFrom::After(format!("{p}b")), None).await?,
        vec![(q(&["d"]), q(&["b/", "c/", "e/"]))],
    )?;
    want(
        "a directory's own listing",
        pages(s, &format!("{p}b/"), true, ListFrom::Start, None).await?,
        vec![(q(&["b/1", "b/2"]), vec![])],
    )?;
    want(
        "without delimiter",
        pages(s, &p, false, ListFrom::Start, None).await?,
        vec![(q(&["a", "b", "b/1", "b/2", "c/x/y", "d", "e/"]), vec![])],
    )
}

/// Keys that a listing must URL-encode (spaces, `+`, `%`, non-ASCII, control characters
/// XML cannot carry) come back exactly as written, and HEAD and GET find them.
pub async fn encoded_keys<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let p = format!("{base}enc/");
    let names = [
        "with space",
        "plus+sign",
        "a+b c%2B",
        "100%",
        "%41 is not A",
        "ünïcødé/ö",
        "日本語",
        "emoji 😀",
        "tab\there",
        "new\nline",
        "cr\rhere",
        "quote\"'<&>",
        "query?x=1#frag",
        "back\\slash",
    ];
    let mut keys: Vec<String> = names.iter().map(|n| format!("{p}{n}")).collect();
    for k in &keys {
        put_new(s, k, Bytes::copy_from_slice(k.as_bytes())).await?;
    }
    keys.sort();
    let flat = pages(s, &p, false, ListFrom::Start, None).await?;
    want("listing of the keys", entries(&flat), keys.clone())?;
    // Small pages: the continuation token carries such keys too.
    let small = pages(s, &p, false, ListFrom::Start, Some(4)).await?;
    want(
        "listing in pages of 4",
        (small.len(), entries(&small)),
        (4, keys.clone()),
    )?;
    let after = pages(s, &p, false, ListFrom::After(format!("{p}plus+sign")), None).await?;
    want(
        "StartAfter a key with +",
        entries(&after),
        keys.iter()
            .filter(|k| k.as_str() > format!("{p}plus+sign").as_str())
            .cloned()
            .collect(),
    )?;
    let delimited = pages(s, &p, true, ListFrom::Start, None).await?;
    let mut expect: Vec<String> = keys.iter().filter(|k| !k.contains("/ö")).cloned().collect();
    expect.push(format!("{p}ünïcødé/"));
    expect.sort();
    want("delimited listing of the keys", entries(&delimited), expect)?;
    for k in &keys {
        let (body, _) = read(s, k).await?;
        want(&format!("bytes of {k:?}"), &body[..], k.as_bytes())?;
    }
    Ok(())
}

/// HEAD reports size and the ETag the write returned; a missing key is NotFound (also
/// where keys exist below it: there are no directories).
pub async fn head<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let k = format!("{base}h/obj");
    let etag = put_new(s, &k, pattern(1234, 1)).await?;
    let m = ok("HEAD", s.head(&k).await)?;
    want(
        "HEAD",
        (m.key.as_str(), m.size, m.etag.as_str()),
        (k.as_str(), 1234, etag.as_str()),
    )?;
    want_err(
        "HEAD of a missing key",
        s.head(&format!("{base}h/nope")).await,
        "NotFound",
        None,
    )?;
    want_err(
        "HEAD of a key prefix",
        s.head(&format!("{base}h")).await,
        "NotFound",
        None,
    )?;
    want_err(
        "HEAD of key + /",
        s.head(&format!("{k}/")).await,
        "NotFound",
        None,
    )?;
    let e = put_new(s, &format!("{base}h/empty"), Bytes::new()).await?;
    let m = ok(
        "HEAD of an empty object",
        s.head(&format!("{base}h/empty")).await,
    )?;
    want("HEAD of an empty object", (m.size, m.etag), (0, e))
}

/// Ranged GETs return exactly the bytes asked, at any offset.
pub async fn get_range_bytes<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let k = format!("{base}g/obj");
    let n = 300_007u64;
    let data = pattern(n as usize, 2);
    let etag = put_new(s, &k, data.clone()).await?;
    for r in [0..1, 0..n, 1..n, n - 1..n, 65_535..65_537, 12_345..200_000] {
        let got = get(s, &k, r.clone(), &etag, n).await?;
        same_bytes(
            &format!("GET {r:?}"),
            &got,
            &data[r.start as usize..r.end as usize],
        )?;
    }
    Ok(())
}

/// A GET pinned to a version (ETag and size) is refused for any other version: wrong
/// ETag, wrong size, an object replaced since; a missing key is NotFound.
pub async fn get_range_pinned<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let k = format!("{base}gp/obj");
    let etag = put_new(s, &k, pattern(1000, 3)).await?;
    let pf = "PreconditionFailed";
    want_err(
        "GET, wrong ETag",
        s.get_range(&k, 0..10, "\"0123456789abcdef0123456789abcdef\"", 1000)
            .await,
        pf,
        None,
    )?;
    want_err(
        "GET, size + 1",
        s.get_range(&k, 0..10, &etag, 1001).await,
        pf,
        None,
    )?;
    want_err(
        "GET, size - 1",
        s.get_range(&k, 0..10, &etag, 999).await,
        pf,
        None,
    )?;
    // The whole object, with the wrong size: the server's answer has no Content-Range to
    // tell, but the length does.
    want_err(
        "GET of 0..size with size - 1",
        s.get_range(&k, 0..999, &etag, 999).await,
        pf,
        None,
    )?;
    want_err(
        "GET of a missing key",
        s.get_range(&format!("{base}gp/nope"), 0..1, &etag, 1000)
            .await,
        "NotFound",
        None,
    )?;
    let w = ok(
        "replace",
        s.put_object(&k, pattern(1000, 4), &Precondition::Matches(etag.clone()))
            .await,
    )?;
    want_err(
        "GET of the replaced version",
        s.get_range(&k, 0..10, &etag, 1000).await,
        pf,
        None,
    )?;
    let got = get(s, &k, 0..10, &w.etag, 1000).await?;
    want("GET of the new version", &got[..], &pattern(1000, 4)[..10])
}

/// `If-None-Match: *` on PutObject: a new key is written, an existing one is refused and
/// left as it was.
pub async fn put_absent<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let k = format!("{base}pa/obj");
    let etag = put_new(s, &k, pattern(100, 5)).await?;
    want(
        "ETag of the write and of HEAD",
        read(s, &k).await?,
        (pattern(100, 5), etag.clone()),
    )?;
    let again = s
        .put_object(&k, pattern(50, 6), &Precondition::Absent)
        .await;
    want_err(
        "Absent over an existing key",
        again,
        "PreconditionFailed",
        None,
    )?;
    want(
        "the object after the refused write",
        read(s, &k).await?,
        (pattern(100, 5), etag),
    )?;
    // An empty object exists too.
    let e = format!("{base}pa/empty");
    put_new(s, &e, Bytes::new()).await?;
    let again = s
        .put_object(&e, pattern(10, 6), &Precondition::Absent)
        .await;
    want_err(
        "Absent over an empty object",
        again,
        "PreconditionFailed",
        None,
    )
}

/// `If-Match` on PutObject: the current ETag replaces, a stale one is refused, and so is
/// a key that is not there (AWS answers 404 NoSuchKey, Ceph RGW 16 412: the trait says
/// PreconditionFailed for both).
pub async fn put_matches<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let k = format!("{base}pm/obj");
    let v1 = put_new(s, &k, pattern(100, 7)).await?;
    let w = ok(
        "If-Match the current ETag",
        s.put_object(&k, pattern(120, 8), &Precondition::Matches(v1.clone()))
            .await,
    )?;
    if w.etag == v1 {
        return Err(Failure(format!("a new version kept the ETag {v1}")));
    }
    want(
        "after the write",
        read(s, &k).await?,
        (pattern(120, 8), w.etag.clone()),
    )?;
    let stale = s
        .put_object(&k, pattern(10, 9), &Precondition::Matches(v1))
        .await;
    want_err("If-Match a stale ETag", stale, "PreconditionFailed", None)?;
    want(
        "after the refused write",
        read(s, &k).await?,
        (pattern(120, 8), w.etag.clone()),
    )?;
    let missing = s
        .put_object(
            &format!("{base}pm/nope"),
            pattern(10, 9),
            &Precondition::Matches(w.etag),
        )
        .await;
    want_err(
        "If-Match on a missing key",
        missing,
        "PreconditionFailed",
        None,
    )?;
    want_err(
        "nothing written",
        s.head(&format!("{base}pm/nope")).await,
        "NotFound",
        None,
    )
}

/// An upload's part numbers and ETags.
async fn upload_parts<S: ObjectStore>(
    s: &S,
    key: &str,
    id: &str,
    bodies: &[(u32, Bytes)],
) -> Result<Vec<Part>, Failure> {
    let mut parts = Vec::new();
    for (number, body) in bodies {
        let etag = ok(
            &format!("UploadPart {number}"),
            s.upload_part(key, id, *number, body.clone()).await,
        )?;
        parts.push(Part {
            number: *number,
            etag,
        });
    }
    Ok(parts)
}

fn concat(parts: &[&Bytes]) -> Bytes {
    parts
        .iter()
        .flat_map(|b| b.iter().copied())
        .collect::<Vec<u8>>()
        .into()
}

/// Every part but the last must be at least 5 MiB: smaller ones are refused at completion
/// (EntityTooSmall), which leaves the upload open; a small last part, or a single small
/// part, is fine. Nothing is visible before completion.
pub async fn multipart_part_sizes<S: ObjectStore>(s: &S, _: Server, base: &str) -> Checked {
    let k = format!("{base}mps/obj");
    let id = ok("CreateMultipartUpload", s.create_upload(&k).await)?;
    let small = pattern(1024, 10);
    let parts = upload_parts(s, &k, &id, &[(1, small.clone()), (2, small.clone())]).await?;
    want_err("HEAD before completion", s.head(&k).await, "NotFound", None)?;
    let r = s
        .complete_upload(&k, &id, &parts, &Precondition::Absent)
        .await;
    want_err(
        "a 1 KiB part that is not the last",
        r,
        "Other",
        Some("EntityTooSmall"),
    )?;
    want_err(
        "HEAD after the refused completion",
        s.head(&k).await,
        "NotFound",
        None,
    )?;
    // The upload is still open: a big first part makes it complete.
    let big = pattern(MIN_PART_SIZE as usize, 11);
    let mut parts2 = upload_parts(s, &k, &id, &[(1, big.clone())]).await?;
    parts2.push(parts[1].clone());
    let w = ok(
        "5 MiB + 1 KiB",
        s.complete_upload(&k, &id, &parts2, &Precondition::Absent)
            .await,
    )?;
    let m = ok("HEAD", s.head(&k).await)?;
    want(
        "size and ETag",
        (m.size, &m.etag),
        (MIN_PART_SIZE + 1024, &w.etag),
    )?;
    let seam = MIN_PART_SIZE - 10..MIN_PART_SIZE + 10;
    let got = get(s, &k, seam.clone(), &m.etag, m.size).await?;
    let whole = concat(&[&big, &small]);
    same_bytes(
        "bytes across the parts' seam",
        &got,
        &whole[seam.start as usize..seam.end as usize],
    )?;
    // One small part alone is also the last.
    let k1 = format!("{base}mps/one");
    let id = ok("CreateMultipartUpload", s.create_upload(&k1).await)?;
    let parts = upload_parts(s, &k1, &id, &[(1, small.clone())]).await?;
    ok(
        "one 1 KiB part",
        s.complete_upload(&k1, &id, &parts, &Precondition::Absent)
            .await,
    )?;
    want("one small part", read(s, &k1).await?.0, small)
}

/// Parts are completed with the ETag of their latest upload (else InvalidPart) and, on
/// AWS, listed in ascending order (else InvalidPartOrder; Ceph RGW 16 sorts them itself);
/// numbers may have gaps; AWS also completes from a subset of the uploaded parts, which
/// Ceph RGW 16 refuses.
pub async fn multipart_part_order<S: ObjectStore>(s: &S, server: Server, base: &str) -> Checked {
    let big = |seed| pattern(MIN_PART_SIZE as usize, seed);
    let (a, b, c) = (big(12), big(13), big(14));
    let (small1, small2) = (pattern(100, 15), pattern(200, 16));
    let absent = &Precondition::Absent;

    let k = format!("{base}mpo/order");
    let id = ok("CreateMultipartUpload", s.create_upload(&k).await)?;
    let first = upload_parts(s, &k, &id, &[(1, a)]).await?;
    let parts = upload_parts(
        s,
        &k,
        &id,
        &[(1, b.clone()), (2, c.clone()), (3, small1.clone())],
    )
    .await?;
    let old = [first[0].clone(), parts[1].clone(), parts[2].clone()];
    let r = s.complete_upload(&k, &id, &old, absent).await;
    want_err(
        "part 1 with the ETag of its replaced upload",
        r,
        "Other",
        Some("InvalidPart"),
    )?;
    let unordered = [parts[1].clone(), parts[0].clone(), parts[2].clone()];
    let r = s.complete_upload(&k, &id, &unordered, absent).await;
    if server.refuses_unordered_parts {
        want_err("parts 2, 1, 3", r, "Other", Some("InvalidPartOrder"))?;
        ok(
            "parts 1, 2, 3",
            s.complete_upload(&k, &id, &parts, absent).await,
        )?;
    } else {
        ok(
            &format!("{}: parts 2, 1, 3 (sorted by the server)", server.name),
            r,
        )?;
    }
    same_bytes(
        "bytes of parts 1, 2, 3",
        &read(s, &k).await?.0,
        &concat(&[&b, &c, &small1]),
    )?;

    let k = format!("{base}mpo/subset");
    let id = ok("CreateMultipartUpload", s.create_upload(&k).await)?;
    let bodies = [(1, b.clone()), (2, c.clone()), (3, small2.clone())];
    let parts = upload_parts(s, &k, &id, &bodies).await?;
    let subset = [parts[0].clone(), parts[2].clone()];
    let r = s.complete_upload(&k, &id, &subset, absent).await;
    if server.completes_part_subset {
        ok("parts 1, 3 of 1, 2, 3", r)?;
        same_bytes(
            "bytes of parts 1 and 3",
            &read(s, &k).await?.0,
            &concat(&[&b, &small2]),
        )?;
    } else {
        let what = format!("{}: parts 1, 3 of 1, 2, 3", server.name);
        want_err(&what, r, "Other", Some("InvalidPart"))?;
        ok(
            "parts 1, 2, 3",
            s.complete_upload(&k, &id, &parts, absent).await,
        )?;
        same_bytes(
            "bytes of parts 1, 2, 3",
            &read(s, &k).await?.0,
            &concat(&[&b, &c, &small2]),
        )?;
    }

    // Numbers need not start at 1 nor follow each other.
    let k = format!("{base}mpo/gaps");
    let id = ok("CreateMultipartUpload", s.create_upload(&k).await)?;
    let parts = upload_parts(s, &k, &id, &[(3, b.clone()), (7, small1.clone())]).await?;
    ok(
        "parts 3, 7",
        s.complete_upload(&k, &id, &parts, absent).await,
    )?;
    same_bytes(
        "bytes of parts 3 and 7",
        &read(s, &k).await?.0,
        &concat(&[&b, &small1]),
    )
}

/// An aborted upload is gone: its parts cannot be added to or completed, nothing appears;
/// another upload of the same key is unaffected.
pub async fn multipart_abort<S: ObjectStore>(s: &S, server: Server, base: &str) -> Checked {
    let k = format!("{base}mpa/obj");
    let id = ok("CreateMultipartUpload", s.create_upload(&k).await)?;
    let other = ok("a second upload of the key", s.create_upload(&k).await)?;
    if id == other {
        return Err(Failure(format!("two uploads got one id {id}")));
    }
    let parts = upload_parts(s, &k, &id, &[(1, pattern(100, 16))]).await?;
    ok("AbortMultipartUpload", s.abort_upload(&k, &id).await)?;
    let r = s.upload_part(&k, &id, 2, pattern(10, 17)).await;
    want_err("UploadPart after abort", r, "NotFound", None)?;
    let r = s
        .complete_upload(&k, &id, &parts, &Precondition::Absent)
        .await;
    want_err("completion after abort", r, server.aborted_completion, None)?;
    want_err("HEAD after abort", s.head(&k).await, "NotFound", None)?;
    let parts = upload_parts(s, &k, &other, &[(1, pattern(10, 18))]).await?;
    ok(
        "the other upload",
        s.complete_upload(&k, &other, &parts, &Precondition::Absent)
            .await,
    )?;
    want(
        "bytes of the other upload",
        read(s, &k).await?.0,
        pattern(10, 18),
    )
}

/// Conditions on CompleteMultipartUpload: AWS refuses `If-None-Match: *` over an existing
/// key and `If-Match` with a stale ETag (412), leaving the object as it was. A server that
/// ignores them ([`Server::honours_complete_conditions`]) completes over it: asserted as
/// such, so it is known where the write path must look first.
pub async fn multipart_conditions<S: ObjectStore>(s: &S, server: Server, base: &str) -> Checked {
    let k = format!("{base}mpc/obj");
    let v1 = put_new(s, &k, pattern(100, 19)).await?;
    let complete = |body: Bytes, cond: Precondition| {
        let k = k.clone();
        async move {
            let id = ok("CreateMultipartUpload", s.create_upload(&k).await)?;
            let parts = upload_parts(s, &k, &id, &[(1, body)]).await?;
            let r = s.complete_upload(&k, &id, &parts, &cond).await;
            if r.is_err() {
                // Only cleanup: whether a refused upload stays open is not checked.
                let _ = s.abort_upload(&k, &id).await;
            }
            Ok::<_, Failure>(r)
        }
    };
    let r = complete(pattern(10, 20), Precondition::Absent).await?;
    if server.honours_complete_conditions {
        want_err("Absent over an existing key", r, "PreconditionFailed", None)?;
        want(
            "the object after",
            read(s, &k).await?,
            (pattern(100, 19), v1.clone()),
        )?;
        let r = complete(
            pattern(10, 21),
            Precondition::Matches("\"0123456789abcdef0123456789abcdef\"".into()),
        )
        .await?;
        want_err("If-Match a stale ETag", r, "PreconditionFailed", None)?;
        want(
            "the object after",
            read(s, &k).await?,
            (pattern(100, 19), v1.clone()),
        )?;
        let gone = format!("{base}mpc/gone");
        let id = ok("CreateMultipartUpload", s.create_upload(&gone).await)?;
        let parts = upload_parts(s, &gone, &id, &[(1, pattern(10, 25))]).await?;
        let r = s
            .complete_upload(&gone, &id, &parts, &Precondition::Matches(v1.clone()))
            .await;
        want_err("If-Match on a missing key", r, "PreconditionFailed", None)?;
        want_err("nothing written", s.head(&gone).await, "NotFound", None)?;
        ok("abort", s.abort_upload(&gone, &id).await)?;
    } else {
        let w = ok(
            &format!("{}: Absent over an existing key (ignored)", server.name),
            r,
        )?;
        want(
            "the object, overwritten",
            read(s, &k).await?,
            (pattern(10, 20), w.etag),
        )?;
        let r = complete(pattern(10, 21), Precondition::Matches(v1.clone())).await?;
        let w = ok(
            &format!("{}: If-Match a stale ETag (ignored)", server.name),
            r,
        )?;
        want(
            "the object, overwritten",
            read(s, &k).await?,
            (pattern(10, 21), w.etag),
        )?;
    }
    let current = ok("HEAD", s.head(&k).await)?.etag;
    let r = complete(pattern(10, 22), Precondition::Matches(current)).await?;
    let w = ok("If-Match the current ETag", r)?;
    want(
        "the object after",
        read(s, &k).await?,
        (pattern(10, 22), w.etag),
    )?;
    let fresh = format!("{base}mpc/new");
    let id = ok("CreateMultipartUpload", s.create_upload(&fresh).await)?;
    let parts = upload_parts(s, &fresh, &id, &[(1, pattern(10, 24))]).await?;
    ok(
        "Absent on a new key",
        s.complete_upload(&fresh, &id, &parts, &Precondition::Absent)
            .await,
    )?;
    want("the new object", read(s, &fresh).await?.0, pattern(10, 24))
}

/// A store for a bucket that does not exist: NoSuchBucket from every request whose answer
/// has a body to say so. A HEAD answer has none, so HEAD can only say NotFound.
pub async fn no_such_bucket<S: ObjectStore>(s: &S) -> Checked {
    let nsb = "NoSuchBucket";
    want_err(
        "LIST",
        s.list_page("", true, ListFrom::Start, None).await,
        nsb,
        None,
    )?;
    want_err(
        "GET",
        s.get_range("k", 0..1, "\"0123456789abcdef0123456789abcdef\"", 1)
            .await,
        nsb,
        None,
    )?;
    want_err(
        "PUT",
        s.put_object("k", pattern(1, 0), &Precondition::Absent)
            .await,
        nsb,
        None,
    )?;
    want_err(
        "CreateMultipartUpload",
        s.create_upload("k").await,
        nsb,
        None,
    )?;
    want_err(
        "HEAD (no body, so no code)",
        s.head("k").await,
        "NotFound",
        None,
    )
}

/// A store with credentials the server does not accept: AccessDenied from everything.
pub async fn access_denied<S: ObjectStore>(s: &S) -> Checked {
    let ad = "AccessDenied";
    want_err(
        "LIST",
        s.list_page("", true, ListFrom::Start, None).await,
        ad,
        None,
    )?;
    want_err("HEAD", s.head("k").await, ad, None)?;
    want_err(
        "GET",
        s.get_range("k", 0..1, "\"0123456789abcdef0123456789abcdef\"", 1)
            .await,
        ad,
        None,
    )?;
    want_err(
        "PUT",
        s.put_object("k", pattern(1, 0), &Precondition::Absent)
            .await,
        ad,
        None,
    )?;
    want_err(
        "CreateMultipartUpload",
        s.create_upload("k").await,
        ad,
        None,
    )
}

/// A store whose endpoint does not answer: Unreachable, which is worth retrying.
pub async fn unreachable<S: ObjectStore>(s: &S) -> Checked {
    let r = s.list_page("", true, ListFrom::Start, None).await;
    if !r.as_ref().is_err_and(StoreError::is_retryable) {
        return Err(Failure(format!(
            "LIST: got {r:?}, expected a retryable error"
        )));
    }
    want_err("HEAD", s.head("k").await, "Unreachable", None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// Each check over a fresh in-memory store, held to AWS's rules.
    macro_rules! on_memory {
        ($($check:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $check() {
                let s = MemoryStore::new();
                if let Err(e) = super::$check(&s, Server::AWS, "conf/").await {
                    panic!("{} on the memory store: {e}", stringify!($check));
                }
            }
        )*};
    }

    on_memory!(
        list_pages,
        list_delimited,
        encoded_keys,
        head,
        get_range_bytes,
        get_range_pinned,
        put_absent,
        put_matches,
        multipart_part_sizes,
        multipart_part_order,
        multipart_abort,
        multipart_conditions,
    );

    /// The checks can fail: a memory store held to RGW's rule for completions fails it.
    #[tokio::test]
    async fn a_store_is_held_to_its_servers_rules() {
        let e = super::multipart_conditions(&MemoryStore::new(), Server::CEPH_RGW_16, "conf/")
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("Absent over an existing key (ignored)"),
            "{e}"
        );
    }
}
