//! A bounded soak: many readers, sequential and random, plus listings and stats, for
//! `SOAK_SECS` seconds (default 25; a few minutes for a real soak), through the fault proxy
//! injecting throttling, resets and cut-off bodies now and then. Every byte read is checked;
//! a read may fail only with EIO; the daemon's peak RSS must stay under its cache budget
//! plus the documented fixed overhead. Prints requests, faults, retries, errors and RSS.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::faultproxy::{Fault, FaultProxy, Rule};
use crate::common::*;

const MIB: u64 = 1 << 20;
/// The daemon's fixed overhead over its cache budget (docs/semantics.md).
const OVERHEAD: u64 = 64 * MIB;
const CACHE: u64 = 64 * MIB;

fn soak_secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    whole_files: AtomicU64,
    listings: AtomicU64,
}

#[test]
fn many_readers_under_faults_read_right_bytes_in_bounded_memory() {
    need_rgw!();
    let bucket = unique_bucket("soak");
    create_bucket(&bucket);
    // Files larger than the cache together (so blocks are evicted and fetched again).
    let sizes = [24, 16, 12, 9, 7, 5, 3, 1].map(|m: usize| (m << 20) + 4321 * m);
    let data: Arc<Vec<Vec<u8>>> = Arc::new(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| random_bytes(n, 9000 + i as u64))
            .collect(),
    );
    let sums: Arc<Vec<String>> = Arc::new(data.iter().map(|d| sha256(d)).collect());
    for (i, d) in data.iter().enumerate() {
        put(&bucket, &format!("s/f{i}"), d.clone());
    }
    put_many(
        &bucket,
        (0..300)
            .map(|i| (format!("s/list/n{i:03}"), Vec::new()))
            .collect(),
    );
    let proxy = FaultProxy::start();
    // Now and then: throttled, reset, cut off; listings throttled.
    proxy.add(Rule::gets(Fault::slow_down()).every(37));
    proxy.add(Rule::gets(Fault::Reset).every(53));
    proxy.add(Rule::gets(Fault::CloseEarly(0.5)).every(71));
    proxy.add(Rule::lists(Fault::internal_error()).every(11));
    let m = mount_with(
        &format!("s3://{bucket}/s"),
        &[
            "--cache-size",
            "64MiB",
            "--metadata-ttl",
            "2s",
            "--request-timeout",
            "5s",
        ],
        &Spawn {
            endpoint: Some(proxy.url()),
            ..Spawn::default()
        },
    );
    let secs = soak_secs();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::new();
    for r in 0..8u64 {
        let (data, sums, stop, counts) = (data.clone(), sums.clone(), stop.clone(), counts.clone());
        let root = m.path.clone();
        threads.push(std::thread::spawn(move || {
            let mut seed = 0x9e3779b97f4a7c15u64.wrapping_mul(r + 1);
            let mut rnd = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut buf = vec![0u8; 3 << 20];
            while !stop.load(Ordering::Relaxed) {
                let i = (rnd() % data.len() as u64) as usize;
                let path = root.join(format!("f{i}"));
                // Some random readers bypass the kernel's page cache (every read reaches the
                // daemon); the others drop it after each file (fadvise below), so the daemon,
                // not the kernel, serves most of the data.
                let direct = r % 4 == 1;
                let mut opts = std::fs::OpenOptions::new();
                opts.read(true);
                if direct {
                    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_DIRECT);
                }
                let f = match opts.open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EIO), "open {i}: {e}");
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if r % 2 == 0 {
                    // Sequential, whole file, in reads of one size.
                    let chunk = [4096usize, 65536, 1 << 20, 3 << 20][(rnd() % 4) as usize];
                    let mut h = <sha2::Sha256 as sha2::Digest>::new();
                    let mut off = 0u64;
                    let ok = loop {
                        match f.read_at(&mut buf[..chunk], off) {
                            Ok(0) => break true,
                            Ok(n) => {
                                sha2::Digest::update(&mut h, &buf[..n]);
                                off += n as u64;
                                counts.reads.fetch_add(1, Ordering::Relaxed);
                                counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) => {
                                assert_eq!(e.raw_os_error(), Some(libc::EIO), "read {i}: {e}");
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                                break false;
                            }
                        }
                    };
                    // SAFETY: fadvise on our own open descriptor.
                    unsafe {
                        libc::posix_fadvise(
                            std::os::fd::AsRawFd::as_raw_fd(&f),
                            0,
                            0,
                            libc::POSIX_FADV_DONTNEED,
                        );
                    }
                    if ok {
                        let got = format!("{:x}", sha2::Digest::finalize(h));
                        assert_eq!(got, sums[i], "f{i}: wrong bytes in a sequential read");
                        counts.whole_files.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    // Random reads of random sizes, each compared with the source.
                    for _ in 0..32 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let len = [1usize, 700, 4096, 100_000, 1 << 20][(rnd() % 5) as usize];
                        let off = rnd() % data[i].len() as u64;
                        match f.read_at(&mut buf[..len], off) {
                            Ok(n) => {
                                let o = off as usize;
                                assert_eq!(&buf[..n], &data[i][o..o + n], "f{i} at {off}");
                                counts.reads.fetch_add(1, Ordering::Relaxed);
                                counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) => {
                                assert_eq!(e.raw_os_error(), Some(libc::EIO), "pread {i}: {e}");
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }));
    }
    {
        // Listings and stats alongside (the TTL makes them ask S3 again).
        let (stop, counts, root) = (stop.clone(), counts.clone(), m.path.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read_dir(root.join("list")) {
                    Ok(d) => {
                        let n = d.count();
                        assert_eq!(n, 300, "a listing is whole or fails");
                        counts.listings.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EIO), "listing: {e}");
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    let started = Instant::now();
    let mut peak_seen = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        peak_seen = peak_seen.max(m.rss().0);
        if threads.iter().any(|t| t.is_finished()) {
            break; // a reader failed: join below reports it
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a reader failed");
    }
    // Afterwards, with the faults off, every file reads whole and right.
    proxy.clear();
    for (i, sum) in sums.iter().enumerate() {
        assert_eq!(
            &sha256_file(&m.p(&format!("f{i}"))),
            sum,
            "f{i} after the soak"
        );
    }
    let (_, peak) = m.rss();
    let log = m.log_text();
    let retries = log.matches("retrying").count();
    let c = &counts;
    eprintln!(
        "soak: {secs} s, 8 readers + 1 lister: {} reads ({} MiB, {} whole files verified), {} listings, \
         {} errors (EIO); S3 requests {} ({} ranged GETs), faults injected {}, GET retries logged {retries}; \
         daemon peak RSS {} MiB (sampled {} MiB), bound {} MiB (cache {} + overhead {})",
        c.reads.load(Ordering::Relaxed),
        c.bytes.load(Ordering::Relaxed) / MIB,
        c.whole_files.load(Ordering::Relaxed),
        c.listings.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        proxy.request_count(),
        proxy.get_count(),
        proxy.fault_count(),
        peak / MIB,
        peak_seen / MIB,
        (CACHE + OVERHEAD) / MIB,
        CACHE / MIB,
        OVERHEAD / MIB,
    );
    assert!(c.reads.load(Ordering::Relaxed) > 0 && proxy.fault_count() > 0);
    // A read fails only when every attempt of it meets a fault (1 request in about 17 is
    // one, and --max-attempts is 4): failures must stay rare, not merely be EIO.
    let ops = c.reads.load(Ordering::Relaxed) + c.listings.load(Ordering::Relaxed);
    let errors = c.errors.load(Ordering::Relaxed);
    assert!(
        errors * 200 <= ops,
        "{errors} failed operations of {ops}: more than 0.5 %"
    );
    assert!(
        peak <= CACHE + OVERHEAD,
        "peak RSS {} MiB over the cache budget + overhead ({} MiB)",
        peak / MIB,
        (CACHE + OVERHEAD) / MIB
    );
    assert!(!log.contains("panicked"), "{log}");
}
