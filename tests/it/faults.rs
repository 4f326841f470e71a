//! Faults between the daemon and S3, injected for real: the daemon's endpoint is a proxy
//! (tests/common/faultproxy.rs) in front of the real S3 server that resets, delays,
//! throttles, cuts, stretches, stalls or rewrites answers on a schedule. Every byte read
//! through the mount is checked against the SHA-256 of the object it came from.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::faultproxy::{Fault, FaultProxy, Rule};
use crate::common::*;

/// Short timeouts so injected stalls and delays cost seconds, not minutes; attempts as
/// the default.
const FAST: [&str; 4] = ["--request-timeout", "2s", "--max-attempts", "4"];
const OBJECTS: usize = 16;
const LISTED: usize = 25;
/// More than two LIST pages.
const BIG_DIR: usize = 2_500;
/// Small enough that a trickled answer is given up on after a few seconds.
const TRICKLED: usize = 100_000;

struct Fixture {
    bucket: String,
    data: Vec<Vec<u8>>,
}

/// Objects `f00..f15` (3-4 MiB each, distinct random bytes), `t.bin`, directories of
/// `LISTED` small files (`dir`, `l0`..`l4`) and one of `BIG_DIR` (`big`).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let bucket = unique_bucket("flt");
        create_bucket(&bucket);
        let data: Vec<Vec<u8>> = (0..OBJECTS)
            .map(|i| random_bytes((3 << 20) + i * 111_111, 1000 + i as u64))
            .collect();
        for (i, d) in data.iter().enumerate() {
            put(&bucket, &format!("f{i:02}"), d.clone());
        }
        let mut small = Vec::new();
        for dir in ["dir", "l0", "l1", "l2", "l3", "l4"] {
            for i in 0..LISTED {
                small.push((format!("{dir}/n{i:03}"), format!("{i}\n").into_bytes()));
            }
        }
        for i in 0..BIG_DIR {
            small.push((format!("big/e{i:05}"), Vec::new()));
        }
        small.push(("t.bin".into(), random_bytes(TRICKLED, 77)));
        put_many(&bucket, small);
        Fixture { bucket, data }
    })
}

fn mount_via(proxy: &FaultProxy, extra: &[&str]) -> Mount {
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend_from_slice(extra);
    mount_with(
        &format!("s3://{}", fixture().bucket),
        &args,
        &Spawn {
            endpoint: Some(proxy.url()),
            ..Spawn::default()
        },
    )
}

fn is_eio(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

/// Reads a whole file through the mount; the SHA-256 of what came back, or the error.
fn read_sha(path: &std::path::Path) -> std::io::Result<String> {
    std::fs::read(path).map(|d| sha256(&d))
}

fn gets_of(proxy: &FaultProxy, name: &str) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| {
            s.method == "GET" && s.range.is_some() && s.target.contains(&format!("/{name}"))
        })
        .count()
}

#[test]
fn transient_faults_on_reads_are_retried_and_every_byte_is_right() {
    need_rgw!();
    let fx = fixture();
    let proxy = FaultProxy::start();
    let m = mount_via(&proxy, &[]);
    // The first two GETs of each file get the fault; the reads must still return the
    // exact bytes, from retries.
    let faults = [
        Fault::slow_down(),
        Fault::internal_error(),
        Fault::Error(502, "BadGateway"),
        Fault::Reset,
        Fault::CloseEarly(0.4),
        Fault::ShortBody,
        Fault::LongBody(1000),
        Fault::WrongRange,
        Fault::Delay(Duration::from_secs(4)),
        Fault::Stall(0.3, Duration::from_secs(120)),
    ];
    for (i, fault) in faults.iter().enumerate() {
        let name = format!("f{i:02}");
        proxy.clear();
        proxy.add(Rule::gets(fault.clone()).path(&format!("/{name}")).times(2));
        let faults_before = proxy.fault_count();
        let got = read_sha(&m.p(&name)).unwrap_or_else(|e| {
            panic!("{fault:?}: read {name} failed: {e}; log:\n{}", m.log_text())
        });
        assert_eq!(got, sha256(&fx.data[i]), "{fault:?}: wrong bytes");
        assert_eq!(
            proxy.fault_count() - faults_before,
            2,
            "{fault:?} injected twice"
        );
        assert!(gets_of(&proxy, &name) > 2, "{fault:?}: retried");
    }
    // A body that keeps coming, too slowly to ever finish: given up on at a deadline
    // (--request-timeout plus the time at 64 KiB/s), then retried.
    proxy.clear();
    let trickle = Fault::Trickle {
        bytes: 100,
        every: Duration::from_millis(500),
    };
    proxy.add(Rule::gets(trickle).path("/t.bin").times(1));
    assert_eq!(
        read_sha(&m.p("t.bin")).unwrap(),
        sha256(&random_bytes(TRICKLED, 77))
    );
    // The trickled GET, then at least the retry (the kernel may split the read).
    assert!(gets_of(&proxy, "t.bin") >= 2);
    let log = m.log_text();
    assert!(log.contains("response body stalled or too slow"), "{log}");
    assert!(log.contains("ranged GET failed, retrying"), "{log}");
    // Retries of an S3 error answer name its request id.
    assert!(log.contains("request id faultproxy-"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn persistent_faults_fail_that_read_with_eio_and_the_mount_stays_healthy() {
    need_rgw!();
    let fx = fixture();
    let proxy = FaultProxy::start();
    let m = mount_via(&proxy, &[]);
    for (i, fault) in [
        Fault::slow_down(),
        Fault::internal_error(),
        Fault::Reset,
        Fault::ShortBody,
        Fault::Stall(0.1, Duration::from_secs(120)),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("f{:02}", 11 + i);
        proxy.clear();
        proxy.add(Rule::gets(fault.clone()).path(&format!("/{name}")));
        let gets_before = gets_of(&proxy, &name);
        let err = std::fs::read(m.p(&name)).expect_err("every GET fails: the read must too");
        assert!(is_eio(&err), "{fault:?}: {err}");
        // Bounded: each failing block run stops after --max-attempts GETs.
        let gets = gets_of(&proxy, &name) - gets_before;
        assert!(gets >= 4, "{fault:?}: {gets} GETs");
        // Meanwhile the rest of the mount works: another file, a listing.
        let other = (i + 1) % 4;
        assert_eq!(
            read_sha(&m.p(&format!("f{other:02}"))).unwrap(),
            sha256(&fx.data[other])
        );
        assert_eq!(std::fs::read_dir(m.p("dir")).unwrap().count(), LISTED);
        // And once S3 answers again, so does the file that failed.
        proxy.clear();
        assert_eq!(
            read_sha(&m.p(&name)).unwrap(),
            sha256(&fx.data[11 + i]),
            "{fault:?}: after recovery"
        );
    }
    let log = m.log_text();
    // The final failure is logged with the S3 request id of the last answer.
    assert!(
        log.lines().any(|l| l.contains("ranged GET failed")
            && !l.contains("retrying")
            && l.contains("request id faultproxy-")),
        "{log}"
    );
}

#[test]
fn an_answer_for_another_version_is_never_served() {
    need_rgw!();
    let fx = fixture();
    let proxy = FaultProxy::start();
    let m = mount_via(&proxy, &[]);
    // Every GET of f05 comes back labelled with another ETag: the bytes may be right, but
    // the daemon cannot know, so the read fails.
    proxy.add(Rule::gets(Fault::WrongEtag).path("/f05"));
    let err = std::fs::read(m.p("f05")).expect_err("another ETag must not be served");
    assert!(is_eio(&err), "{err}");
    assert!(m.log_text().contains("GET answered with another ETag"));
    proxy.clear();
    // A new open looks the object up again and reads it.
    assert_eq!(read_sha(&m.p("f05")).unwrap(), sha256(&fx.data[5]));
}

#[test]
fn listing_and_lookup_faults_never_give_a_partial_listing() {
    need_rgw!();
    let fx = fixture();
    let names = |m: &Mount, dir: &str| -> std::io::Result<BTreeSet<String>> {
        std::fs::read_dir(m.p(dir))?
            .map(|e| e.map(|e| e.file_name().into_string().unwrap()))
            .collect()
    };
    let small: BTreeSet<String> = (0..LISTED).map(|i| format!("n{i:03}")).collect();
    let proxy = FaultProxy::start();
    let m = mount_via(&proxy, &[]);
    // Each fault on its own directory (so no listing is cached yet), on the first LISTs of
    // it: throttled, failed, reset, answered with a document cut in half (with a matching
    // Content-Length: only the XML shows it), stalled. Retried; the listing is whole.
    let faults = [
        (Fault::slow_down(), 2),
        (Fault::internal_error(), 2),
        (Fault::Reset, 2),
        (Fault::MangleXml, 2),
        (Fault::Stall(0.5, Duration::from_secs(120)), 1),
    ];
    for (c, (fault, times)) in faults.iter().enumerate() {
        proxy.clear();
        proxy.add(Rule::lists(fault.clone()).times(*times));
        let before = proxy.fault_count();
        let dir = format!("l{c}");
        assert_eq!(names(&m, &dir).unwrap(), small, "{fault:?}");
        assert_eq!(proxy.fault_count() - before, *times as usize, "{fault:?}");
        // And the same listing again, from the cache.
        assert_eq!(names(&m, &dir).unwrap(), small, "{fault:?}");
    }
    // A lookup whose HEAD is throttled twice: retried, answered.
    proxy.clear();
    proxy.add(
        Rule {
            method: Some("HEAD".into()),
            ..Rule::all(Fault::slow_down())
        }
        .times(2),
    );
    assert_eq!(
        std::fs::metadata(m.p("f12")).unwrap().len(),
        fx.data[12].len() as u64
    );
    assert_eq!(proxy.fault_count(), 2 * 4 + 1 + 2);
    // A directory of several LIST pages, listed in parallel ranges, with pages cut short.
    proxy.clear();
    proxy.add(Rule::lists(Fault::MangleXml).skip(1).every(2).times(2));
    let big: BTreeSet<String> = (0..BIG_DIR).map(|i| format!("e{i:05}")).collect();
    assert_eq!(names(&m, "big").unwrap(), big);
    assert_eq!(proxy.fault_count(), 2 * 4 + 1 + 2 + 2);
    // LISTs failing for good: EIO (not an empty or partial listing), then fine again.
    proxy.clear();
    proxy.add(Rule::lists(Fault::slow_down()));
    let e = names(&m, "dir").expect_err("listing fails while every LIST is throttled");
    assert!(is_eio(&e), "{e}");
    // A lookup that cannot reach S3 is EIO, not ENOENT, and is not remembered as missing.
    proxy.add(Rule::all(Fault::internal_error()));
    let e = std::fs::metadata(m.p("f07")).expect_err("lookup fails");
    assert!(is_eio(&e), "{e}");
    proxy.clear();
    assert_eq!(names(&m, "dir").unwrap(), small);
    assert_eq!(
        std::fs::metadata(m.p("f07")).unwrap().len(),
        fx.data[7].len() as u64
    );
}

#[test]
fn s3_lost_for_a_while_gives_eio_then_everything_recovers() {
    need_rgw!();
    let fx = fixture();
    let proxy = FaultProxy::start();
    let m = mount_via(&proxy, &[]);
    // Before: a file open and partly read, a listing seen.
    let open = std::fs::File::open(m.p("f08")).unwrap();
    let mut head = vec![0u8; 4096];
    assert_eq!(open.read_at(&mut head, 0).unwrap(), 4096);
    assert_eq!(head, fx.data[8][..4096]);
    // S3 gone: every connection reset, nothing answered.
    proxy.add(Rule::all(Fault::Reset));
    let t = Instant::now();
    let mut buf = vec![0u8; 65536];
    let far = fx.data[8].len() as u64 - 65536;
    let e = open
        .read_at(&mut buf, far)
        .expect_err("uncached data cannot be read");
    assert!(is_eio(&e), "{e}");
    let e = std::fs::read(m.p("f09")).expect_err("new open needs S3");
    assert!(is_eio(&e), "{e}");
    let e = std::fs::read_dir(m.p("dir")).expect_err("listing needs S3");
    assert!(is_eio(&e), "{e}");
    // Only a guard against hanging, not a performance check.
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "took {:?}",
        t.elapsed()
    );
    // S3 back: the same handle, new opens and listings all work, bytes exact.
    proxy.clear();
    let n = open.read_at(&mut buf, far).unwrap();
    assert_eq!(&buf[..n], &fx.data[8][far as usize..far as usize + n]);
    assert_eq!(read_sha(&m.p("f09")).unwrap(), sha256(&fx.data[9]));
    assert_eq!(std::fs::read_dir(m.p("dir")).unwrap().count(), LISTED);
}

#[test]
fn corrupted_payload_bytes_are_caught_by_the_checksums_of_these_tests() {
    need_rgw!();
    // A control for the tests above: payload bytes flipped in transit with the framing and
    // headers intact cannot be detected by an S3 client over plain HTTP (S3 sends no
    // checksum for a range; TLS is what protects real endpoints). This shows the SHA-256
    // comparison the tests rely on does see wrong bytes, so it is not vacuous.
    let fx = fixture();
    let proxy = FaultProxy::start();
    let m = mount_via(&proxy, &[]);
    proxy.add(Rule::gets(Fault::Corrupt).path("/f10"));
    let got = read_sha(&m.p("f10")).unwrap();
    assert_ne!(got, sha256(&fx.data[10]));
}

/// What one whole read of a file gave: which version, or the error.
#[derive(Debug, PartialEq)]
enum Outcome {
    Old,
    New,
    Eio,
    Missing,
}

fn whole_read(path: &std::path::Path, old: &[u8], new: Option<&[u8]>) -> Outcome {
    match std::fs::read(path) {
        Ok(d) if d == old => Outcome::Old,
        Ok(d) if Some(&d[..]) == new => Outcome::New,
        Ok(d) => panic!(
            "{}: {} bytes that are neither version: {}",
            path.display(),
            d.len(),
            describe(&d, old, new.unwrap_or_default())
        ),
        Err(e) if is_eio(&e) => Outcome::Eio,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Outcome::Missing,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Which 64 KiB pieces of `got` match the old version, the new one, or neither.
fn describe(got: &[u8], old: &[u8], new: &[u8]) -> String {
    let piece = 64 << 10;
    let mut out = String::new();
    for (i, c) in got.chunks(piece).enumerate() {
        let at = i * piece;
        let same = |v: &[u8]| v.get(at..at + c.len()) == Some(c);
        out.push(if same(old) {
            'o'
        } else if same(new) {
            'n'
        } else if c.iter().all(|&b| b == 0) {
            '0'
        } else {
            '?'
        });
    }
    out
}

/// Reads the open file at offsets all over it: each read is the old version's bytes or EIO,
/// never anything else. Returns how many reads failed.
fn old_handle_reads_old_bytes_or_eio(f: &std::fs::File, old: &[u8]) -> usize {
    let mut failed = 0;
    let mut buf = vec![0u8; 300_000];
    let step = old.len() / 23;
    for i in 0..24 {
        // Odd offsets and lengths, so reads straddle cached and uncached blocks.
        let off = (i * step).saturating_sub(1_000 * i) as u64;
        match f.read_at(&mut buf, off) {
            Ok(n) => {
                let at = off as usize;
                assert_eq!(
                    &buf[..n],
                    &old[at..at + n],
                    "read at {off}: not the old bytes"
                );
            }
            Err(e) => {
                assert!(is_eio(&e), "read at {off}: {e}");
                failed += 1;
            }
        }
    }
    failed
}

/// Whole reads of fresh opens until one shows `want`; each is one version or an error,
/// never a mix. Bounded, to fail rather than hang.
fn poll_until(path: &std::path::Path, old: &[u8], new: Option<&[u8]>, want: Outcome) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = whole_read(path, old, new);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got:?}, not {want:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_object_overwritten_while_open_is_read_whole_or_not_at_all() {
    need_rgw!();
    let fx = fixture();
    let v1 = random_bytes((8 << 20) + 5, 501);
    let v2 = random_bytes((6 << 20) + 7, 502);
    put(&fx.bucket, "changing/ow.bin", v1.clone());
    let m = mount(&format!("s3://{}", fx.bucket), &["--metadata-ttl", "1s"]);
    let path = m.p("changing/ow.bin");
    let f = std::fs::File::open(&path).unwrap();
    let mut first = vec![0u8; 1 << 20];
    assert_eq!(f.read_at(&mut first, 0).unwrap(), 1 << 20);
    assert_eq!(first, v1[..1 << 20]);
    put(&fx.bucket, "changing/ow.bin", v2.clone());
    old_handle_reads_old_bytes_or_eio(&f, &v1);
    // The open file still describes the version it reads.
    assert_eq!(f.metadata().unwrap().len(), v1.len() as u64);
    // New opens: the old version or EIO until the TTL has passed, then the new one.
    poll_until(&path, &v1, Some(&v2), Outcome::New);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), v2.len() as u64);
    // And the old handle still never mixes.
    old_handle_reads_old_bytes_or_eio(&f, &v1);
}

#[test]
fn an_object_deleted_while_open_is_read_whole_or_not_at_all() {
    need_rgw!();
    let fx = fixture();
    // Far more than a first read fetches ahead, so some of it is never cached.
    let v1 = random_bytes((32 << 20) + 3, 601);
    put(&fx.bucket, "changing/del.bin", v1.clone());
    let m = mount(
        &format!("s3://{}", fx.bucket),
        &["--metadata-ttl", "1s", "--negative-ttl", "1s"],
    );
    let path = m.p("changing/del.bin");
    let f = std::fs::File::open(&path).unwrap();
    let mut first = vec![0u8; 100_000];
    assert_eq!(f.read_at(&mut first, 0).unwrap(), 100_000);
    assert_eq!(first, v1[..100_000]);
    delete(&fx.bucket, "changing/del.bin");
    let failed = old_handle_reads_old_bytes_or_eio(&f, &v1);
    // Some of the file was never read before the delete, and S3 has nothing to give.
    assert!(
        failed > 0,
        "uncached parts of a deleted object cannot be read"
    );
    // New opens: the old version or EIO until the TTL has passed (the kernel may answer a
    // stat from its cache for that long), then no such file.
    poll_until(&path, &v1, None, Outcome::Missing);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&path).is_ok() {
        assert!(Instant::now() < deadline, "still there for stat");
        std::thread::sleep(Duration::from_millis(200));
    }
    let e = std::fs::metadata(&path).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(whole_read(&path, &v1, None), Outcome::Missing);
}

#[test]
fn a_killed_daemon_leaves_enotconn_and_the_next_mount_clears_it() {
    need_rgw!();
    let fx = fixture();
    let src = format!("s3://{}", fx.bucket);
    let mut dead = mount(&src, &[]);
    assert_eq!(read_sha(&dead.p("f03")).unwrap(), sha256(&fx.data[3]));
    dead.signal(libc::SIGKILL);
    let st = dead.wait(Duration::from_secs(15));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    // (stat may still be answered from the kernel's attribute cache; a listing is not)
    let e = std::fs::read_dir(&dead.path).expect_err("a dead mount answers nothing");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");

    // A new daemon on the same path clears the dead mount and serves.
    let mut again = mount_with(
        &src,
        &[],
        &Spawn {
            mountpoint: Some(dead.path.clone()),
            ..Spawn::default()
        },
    );
    // (stat may be answered from the dead mount's cache, and a listing of the bare
    // directory works between the two mounts: opening a file tells)
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::File::open(again.p("f03")).is_err() {
        assert!(
            Instant::now() < deadline,
            "not served after 30 s; log:\n{}",
            again.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read_sha(&again.p("f03")).unwrap(), sha256(&fx.data[3]));
    let log = again.log_text();
    assert!(log.contains("cleared the dead mount"), "{log}");
    let st = again.stop();
    assert_eq!(st.code(), Some(0), "{}", again.log_text());
    // Nothing is left mounted: neither the new mount nor the dead one.
    assert!(!s3_oidc_mount::mount::is_mount_point(&again.path));
}
