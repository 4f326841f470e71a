//! The read path's retries and resumes against a store that misbehaves on cue, in paused
//! tokio time: backoffs and body deadlines are checked to the millisecond without waiting.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::inodes::ROOT;
use super::read::concat;
use super::{Fs, FsConfig, FsError};
use crate::cache::BlockCache;
use crate::store::StoreError;
use crate::store::fault::{FaultStore, Op, Rule};
use crate::store::memory::MemoryStore;

type Faulty = FaultStore<MemoryStore>;

const BS: u64 = 4096;
/// Ten blocks, the last one short.
const N: u64 = 9 * BS + 3136;
const TIMEOUT: Duration = Duration::from_secs(2);

fn data() -> Vec<u8> {
    (0..N as usize)
        .map(|i| (i as u8).wrapping_mul(13) ^ (i >> 8) as u8)
        .collect()
}

fn transient() -> StoreError {
    StoreError::Transient("injected".into())
}

/// A mount of one file `f` (N bytes) over a fault store with these rules; returns the
/// store, the filesystem and an open handle of `f`.
async fn open_f(rules: Vec<Rule>) -> (Arc<Faulty>, Arc<Fs<Faulty>>, u64) {
    let store = Arc::new(FaultStore::new(MemoryStore::new()));
    store.inner().put("f", data());
    for r in rules {
        store.add(r);
    }
    let cfg = FsConfig {
        block_size: BS,
        part_size: 4 * BS,
        max_prefetch: 8 * BS,
        read_attempts: 4,
        request_timeout: TIMEOUT,
        ..FsConfig::default()
    };
    let fs = Fs::new(store.clone(), cfg, BlockCache::new(16 << 20));
    let f = fs.lookup(ROOT, "f").await.expect("lookup");
    let fh = fs.open(f.ino, false, false).await.expect("open").fh;
    (store, fs, fh)
}

/// One read of `len` bytes at `offset` (a read of the whole file is one GET).
async fn read(fs: &Fs<Faulty>, fh: u64, offset: u64, len: u64) -> Result<Vec<u8>, FsError> {
    Ok(concat(&fs.read(fh, offset, len as u32, false).await?).to_vec())
}

fn ranges(s: &Faulty) -> Vec<Range<u64>> {
    s.get_ranges().into_iter().map(|(_, r)| r).collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_backoff_and_the_bytes_are_exact() {
    let (s, fs, fh) = open_f(vec![
        Rule::new(Op::GetRange)
            .first(1)
            .fail(StoreError::Unreachable("refused".into())),
        Rule::new(Op::GetRange).every(2).first(2).fail(transient()),
    ])
    .await;
    let t0 = Instant::now();
    assert_eq!(read(&fs, fh, 0, N).await.unwrap(), data());
    assert_eq!(ranges(&s), [0..N, 0..N, 0..N]);
    // Backoffs after attempts 1 and 2: 50..=100 ms and 100..=200 ms.
    let took = t0.elapsed();
    assert!(took >= ms(150) && took <= ms(300), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cut_body_resumes_after_the_last_complete_block() {
    let (s, fs, fh) = open_f(vec![]).await;
    // An error 10,000 bytes in (blocks 0 and 1 complete), then an answer that ends
    // 5,000 bytes in (block 2 completes).
    s.add(
        Rule::new(Op::GetRange)
            .first(1)
            .body_error(10_000, transient()),
    );
    s.add(Rule::new(Op::GetRange).every(2).first(2).short_body(5_000));
    assert_eq!(read(&fs, fh, 0, N).await.unwrap(), data());
    assert_eq!(ranges(&s), [0..N, 2 * BS..N, 3 * BS..N]);
    // Everything is cached: reading again asks nothing.
    assert_eq!(read(&fs, fh, 5, N).await.unwrap(), data()[5..]);
    assert_eq!(s.calls(Op::GetRange), 3);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_hits_the_body_deadline_and_resumes() {
    let (s, fs, fh) = open_f(vec![
        Rule::new(Op::GetRange)
            .first(1)
            .stall_body(6_000, Duration::from_secs(3600)),
    ])
    .await;
    let t0 = Instant::now();
    assert_eq!(read(&fs, fh, 0, N).await.unwrap(), data());
    // Given up after the request timeout without bytes, resumed after block 0.
    assert_eq!(ranges(&s), [0..N, BS..N]);
    let took = t0.elapsed();
    assert!(
        took >= TIMEOUT + ms(50) && took <= TIMEOUT + ms(100),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn another_etag_or_size_is_never_served_nor_retried() {
    let (s, fs, fh) = open_f(vec![Rule::new(Op::GetRange).changed_etag()]).await;
    let e = read(&fs, fh, 0, N).await.unwrap_err();
    assert!(matches!(e, FsError::Stale), "{e:?}");
    assert_eq!(s.calls(Op::GetRange), 1);

    // Listed and HEADed one byte longer than the object the GET finds.
    let (s, fs, fh) = open_f(vec![
        Rule::new(Op::List).changed_size(),
        Rule::new(Op::Head).changed_size(),
    ])
    .await;
    assert_eq!(fs.handle_attr(fh).map(|a| a.size), Some(N + 1));
    let e = read(&fs, fh, 0, N + 1).await.unwrap_err();
    assert!(matches!(e, FsError::Stale), "{e:?}");
    assert_eq!(s.get_ranges(), vec![("f".to_string(), 0..N + 1)]);
}

#[tokio::test(start_paused = true)]
async fn persistent_failure_fails_after_read_attempts_and_is_not_cached() {
    let (s, fs, fh) = open_f(vec![Rule::new(Op::GetRange).fail(transient())]).await;
    let t0 = Instant::now();
    let e = read(&fs, fh, 0, N).await.unwrap_err();
    assert!(
        matches!(&e, FsError::Io(m) if m.contains("injected")),
        "{e:?}"
    );
    assert_eq!(s.calls(Op::GetRange), 4);
    // Three backoffs: 50..=100, 100..=200, 200..=400 ms.
    let took = t0.elapsed();
    assert!(took >= ms(350) && took <= ms(700), "{took:?}");
    // The failure is not remembered: once the store answers, the read succeeds.
    s.clear();
    assert_eq!(read(&fs, fh, 0, N).await.unwrap(), data());
    assert_eq!(s.calls(Op::GetRange), 5);

    // Not worth retrying: one GET.
    let (s, fs, fh) = open_f(vec![Rule::new(Op::GetRange).fail(
        StoreError::AccessDenied {
            code: "AccessDenied".into(),
            message: "injected".into(),
        },
    )])
    .await;
    let e = read(&fs, fh, 0, N).await.unwrap_err();
    assert!(matches!(e, FsError::Access(_)), "{e:?}");
    assert_eq!(s.calls(Op::GetRange), 1);
}

#[tokio::test(start_paused = true)]
async fn blocks_completed_by_failing_attempts_are_kept() {
    let (s, fs, fh) = open_f(vec![]).await;
    // Every answer breaks 10,000 bytes in: each attempt still completes two blocks.
    s.add(Rule::new(Op::GetRange).body_error(10_000, transient()));
    let e = read(&fs, fh, 0, N).await.unwrap_err();
    assert!(matches!(e, FsError::Io(_)), "{e:?}");
    assert_eq!(ranges(&s), [0..N, 2 * BS..N, 4 * BS..N, 6 * BS..N]);
    // Blocks 0 to 7 came in whole and are served without a GET.
    assert_eq!(
        read(&fs, fh, 0, 8 * BS).await.unwrap(),
        data()[..8 * BS as usize]
    );
    assert_eq!(s.calls(Op::GetRange), 4);
}
