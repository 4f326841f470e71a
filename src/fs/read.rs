//! The read path: open handles pin one object version; reads are served from the block
//! cache, missing blocks are fetched with ranged GETs (If-Match the pinned ETag), and a
//! sequential reader gets a growing window of blocks prefetched in parallel parts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;

use super::inodes::{Ino, ObjStat};
use super::{FsConfig, FsError};
use crate::cache::{self, Block, BlockCache, BlockKey, Claim, FetchSlot};
use crate::store::{ObjectStore, StoreError};

/// Slowest body a GET may trickle in at (bytes per second) before it counts as failed: a
/// body that keeps sending a byte now and then must not hold a read forever either.
const MIN_BODY_RATE: u64 = 64 << 10;

/// Runs of at least this many bytes keep the response's chunks as they are (see fetch_once).
const ZERO_COPY_RUN: u64 = 4 << 20;

pub struct FileHandle {
    pub ino: Ino,
    pub key: Arc<str>,
    /// The version its cached blocks are keyed by (the ETag, or size and mtime without one).
    version: Arc<str>,
    pub stat: ObjStat,
    seq: Mutex<SeqState>,
}

impl FileHandle {
    pub fn new(ino: Ino, key: Arc<str>, stat: ObjStat) -> Self {
        // Cached blocks are keyed by version. Where the server sends no ETag, size and
        // modification time stand in for it, so two versions never share blocks.
        let version = if stat.etag.is_empty() {
            let mtime = stat
                .mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!("~{}:{}", stat.size, mtime.as_nanos()).into()
        } else {
            stat.etag.clone()
        };
        FileHandle {
            ino,
            key,
            version,
            stat,
            seq: Mutex::new(SeqState::default()),
        }
    }
}

/// Sequential-access detection for one handle.
#[derive(Default)]
struct SeqState {
    /// Where the next sequential read would start.
    next: u64,
    /// Blocks to keep fetched ahead of the reader.
    window: u64,
    /// First block not yet claimed by prefetch (prefetch never claims a block twice).
    frontier: u64,
}

impl SeqState {
    /// Updates the state for a read of `[offset, end)` covering `blocks` blocks and returns
    /// the prefetch window in blocks (0 for random access). Reads near the expected position
    /// count as sequential: the kernel's readahead sends several reads at once, which can
    /// arrive slightly out of order.
    fn on_read(&mut self, offset: u64, end: u64, blocks: u64, slack: u64, max_window: u64) -> u64 {
        let near = offset.abs_diff(self.next) <= slack;
        if near {
            self.window = (self.window * 2).max(blocks).clamp(1, max_window.max(1));
            self.next = self.next.max(end);
        } else {
            self.window = 0;
            self.frontier = 0;
            self.next = end;
        }
        self.window
    }
}

fn block_key(h: &FileHandle, index: u64) -> BlockKey {
    BlockKey {
        key: h.key.clone(),
        etag: h.version.clone(),
        index,
    }
}

pub async fn read<S: ObjectStore>(
    store: &Arc<S>,
    cache: &Arc<BlockCache>,
    cfg: &FsConfig,
    h: &Arc<FileHandle>,
    offset: u64,
    size: u32,
    open_files: usize,
) -> Result<Vec<Bytes>, FsError> {
    let file_size = h.stat.size;
    if offset >= file_size || size == 0 {
        return Ok(Vec::new());
    }
    let end = (offset + u64::from(size)).min(file_size);
    let bs = cfg.block_size.max(4096);
    let first = offset / bs;
    let last = (end - 1) / bs;
    let last_block = (file_size - 1) / bs;
    let block_len = |index: u64| (((index + 1) * bs).min(file_size) - index * bs) as usize;
    let part_blocks = (cfg.part_size / bs).max(1);

    // Prefetch may hold at most half of the budget (the cache enforces it too), shared by
    // the open files, so readers do not evict each other's prefetched blocks.
    let share = cache.capacity() as u64 / 2 / open_files.max(1) as u64;
    let max_window = (cfg.max_prefetch.min(share) / bs).max(1);
    let (prefetch_from, prefetch_to, sequential) = {
        let mut seq = h.seq.lock().unwrap_or_else(|e| e.into_inner());
        let window = seq.on_read(
            offset,
            end,
            last - first + 1,
            cfg.part_size.max(bs) * 2,
            max_window,
        );
        let from = seq.frontier.max(last + 1);
        let to = (last + window).min(last_block);
        // Prefetch in whole parts (fewer, larger GETs), except for a file's tail.
        if window > 0
            && to >= from
            && (to - from + 1 >= part_blocks.min(window) || to == last_block)
        {
            seq.frontier = to + 1;
            (from, to, true)
        } else {
            (1, 0, window > 0)
        }
    };

    // Demanded blocks first, in their own GET: the reader does not wait for prefetched data.
    let mut wanted = Vec::with_capacity((last - first + 1) as usize);
    let mut run: Vec<FetchSlot> = Vec::new();
    for index in first..=last {
        match cache.claim(&block_key(h, index), block_len(index), false) {
            Claim::Ready(b) => {
                wanted.push(Ok(b));
                spawn_run(store, cfg, h, &mut run);
            }
            Claim::Wait(rx) => {
                wanted.push(Err(rx));
                spawn_run(store, cfg, h, &mut run);
            }
            Claim::Fetch(slot) => {
                wanted.push(Err(slot.subscribe()));
                run.push(slot);
            }
            Claim::Busy => unreachable!("demand claims are never refused"),
        }
    }
    spawn_run(store, cfg, h, &mut run);

    for index in prefetch_from..=prefetch_to {
        match cache.claim(&block_key(h, index), block_len(index), true) {
            Claim::Fetch(slot) => {
                crate::metrics::READ
                    .prefetch_bytes
                    .add(block_len(index) as u64);
                run.push(slot);
                if run.len() as u64 >= part_blocks {
                    spawn_run(store, cfg, h, &mut run);
                }
            }
            Claim::Busy => {
                // Budget full: stop here and let a later read extend the prefetch.
                let mut seq = h.seq.lock().unwrap_or_else(|e| e.into_inner());
                seq.frontier = seq.frontier.min(index);
                break;
            }
            Claim::Ready(_) | Claim::Wait(_) => spawn_run(store, cfg, h, &mut run),
        }
    }
    spawn_run(store, cfg, h, &mut run);

    let mut blocks = Vec::with_capacity(wanted.len());
    for w in wanted {
        blocks.push(match w {
            Ok(b) => b,
            Err(rx) => cache::wait(rx).await.map_err(FsError::from)?,
        });
    }
    if sequential {
        // Read through by a sequential reader: evict these before unread prefetched blocks.
        let done_upto = if end == file_size || end.is_multiple_of(bs) {
            last + 1
        } else {
            last
        };
        let done: Vec<BlockKey> = (first..done_upto).map(|i| block_key(h, i)).collect();
        cache.demote(&done);
    }
    slices(&blocks, first, bs, offset, end)
}

/// Cuts `[offset, end)` out of consecutive blocks starting at block `first`, as slices of
/// the cached blocks (no copy: the FUSE reply is written with one vectored write).
fn slices(
    blocks: &[Block],
    first: u64,
    bs: u64,
    offset: u64,
    end: u64,
) -> Result<Vec<Bytes>, FsError> {
    let mut parts = Vec::with_capacity(blocks.len() * 2);
    for (i, b) in blocks.iter().enumerate() {
        let base = (first + i as u64) * bs;
        let from = offset.saturating_sub(base) as usize;
        let to = (end - base).min(bs) as usize;
        if to > b.len() || from > to {
            return Err(FsError::Io(format!(
                "block {} has {} bytes, needed {from}..{to}",
                first + i as u64,
                b.len()
            )));
        }
        b.slice_into(from, to, &mut parts);
    }
    Ok(parts)
}

/// The slices of a read as one buffer (one copy), for callers that need contiguous bytes.
pub fn concat(parts: &[Bytes]) -> Bytes {
    match parts {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut out = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for p in many {
                out.extend_from_slice(p);
            }
            out.freeze()
        }
    }
}

fn spawn_run<S: ObjectStore>(
    store: &Arc<S>,
    cfg: &FsConfig,
    h: &Arc<FileHandle>,
    run: &mut Vec<FetchSlot>,
) {
    if run.is_empty() {
        return;
    }
    let slots: VecDeque<FetchSlot> = std::mem::take(run).into();
    let store = store.clone();
    let h = h.clone();
    let bs = cfg.block_size.max(4096);
    let limits = Limits {
        attempts: cfg.read_attempts.max(1),
        timeout: cfg.request_timeout,
    };
    tokio::spawn(async move { fetch_run(&*store, &h, bs, limits, slots).await });
}

#[derive(Clone, Copy)]
struct Limits {
    /// Attempts of one ranged GET.
    attempts: u32,
    /// Longest wait for the next bytes of a body.
    timeout: Duration,
}

/// Fetches consecutive blocks with one ranged GET, completing each block as soon as its
/// bytes are in. A transient failure resumes from the first incomplete block, with
/// bounded, jittered backoff; the last error fails the remaining blocks.
async fn fetch_run<S: ObjectStore>(
    store: &S,
    h: &FileHandle,
    bs: u64,
    limits: Limits,
    mut slots: VecDeque<FetchSlot>,
) {
    let mut attempt = 0;
    while !slots.is_empty() {
        attempt += 1;
        match fetch_once(store, h, bs, limits.timeout, &mut slots).await {
            Ok(()) => return,
            Err(e) if e.is_retryable() && attempt < limits.attempts => {
                crate::metrics::READ.ranged_get_retries.inc();
                let backoff = backoff(attempt);
                tracing::warn!(key = %h.key, attempt, error = %e, ?backoff, "ranged GET failed, retrying");
                tokio::time::sleep(backoff).await;
            }
            Err(e) => {
                tracing::error!(key = %h.key, attempts = attempt, error = %e, "ranged GET failed");
                for s in slots.drain(..) {
                    s.complete(Err(e.clone()));
                }
                return;
            }
        }
    }
}

/// Exponential backoff from 50 ms, capped at 2 s, with full jitter.
pub fn backoff(attempt: u32) -> Duration {
    let cap = 50u64.saturating_mul(1 << attempt.min(6)).min(2000);
    Duration::from_millis(rand::random_range(cap / 2..=cap))
}

async fn fetch_once<S: ObjectStore>(
    store: &S,
    h: &FileHandle,
    bs: u64,
    timeout: Duration,
    slots: &mut VecDeque<FetchSlot>,
) -> Result<(), StoreError> {
    let (Some(front), Some(back)) = (slots.front(), slots.back()) else {
        return Ok(());
    };
    let size = h.stat.size;
    let start = front.key().index * bs;
    let end = ((back.key().index + 1) * bs).min(size);
    let block_len = |index: u64| ((index + 1) * bs).min(size) - index * bs;
    let mut stream = store
        .get_range(&h.key, start..end, &h.stat.etag, h.stat.size)
        .await?;
    // The body must keep coming (no gap longer than the timeout) and arrive whole by a
    // deadline, so no read waits on a stalled or trickling response forever.
    let deadline = tokio::time::Instant::now()
        + timeout
        + Duration::from_millis((end - start).saturating_mul(1000) / MIN_BODY_RATE);
    // Blocks are cut from the response's own chunks. A chunk is a slice of the HTTP client's
    // read buffer and keeps that whole buffer alive while any block cut from it is cached.
    // A long run uses its buffers whole (at most the last one is partly wasted), so its
    // blocks keep the slices: no copy on the sequential path. A short run (random reads)
    // would pin buffers several times its size (measured: peak RSS 170 MiB instead of 108
    // MiB for a 64 MiB budget under random readers), so its blocks are copied into
    // allocations of their own size.
    let copy = end - start < ZERO_COPY_RUN;
    let mut current: Vec<Bytes> = Vec::new();
    let mut have = 0usize;
    loop {
        let until = deadline.min(tokio::time::Instant::now() + timeout);
        let chunk = match tokio::time::timeout_at(until, stream.next()).await {
            Err(_) => {
                return Err(StoreError::Transient(format!(
                    "GET {} {start}..{end}: response body stalled or too slow",
                    h.key
                )));
            }
            Ok(None) => break,
            Ok(Some(chunk)) => chunk?,
        };
        let mut chunk = chunk;
        while chunk.has_remaining() {
            let Some(slot) = slots.front() else {
                return Err(StoreError::Transient(format!(
                    "GET {} returned more bytes than the {} asked",
                    h.key,
                    end - start
                )));
            };
            let want = block_len(slot.key().index) as usize;
            let n = (want - have).min(chunk.len());
            current.push(chunk.split_to(n));
            have += n;
            if have == want
                && let Some(slot) = slots.pop_front()
            {
                let parts = std::mem::take(&mut current);
                have = 0;
                let block = if copy {
                    let mut own = BytesMut::with_capacity(want);
                    parts.iter().for_each(|p| own.extend_from_slice(p));
                    Block::from(own.freeze())
                } else {
                    Block::new(parts)
                };
                slot.complete(Ok(block));
            }
        }
    }
    if slots.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Transient(format!(
            "GET {} ended early: body shorter than asked",
            h.key
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_detection_grows_and_resets() {
        let mut s = SeqState::default();
        let mb = 1 << 20;
        assert_eq!(s.on_read(0, mb, 1, 2 * mb, 8), 1);
        assert_eq!(s.on_read(mb, 2 * mb, 1, 2 * mb, 8), 2);
        assert_eq!(s.on_read(2 * mb, 3 * mb, 1, 2 * mb, 8), 4);
        assert_eq!(s.on_read(3 * mb, 4 * mb, 1, 2 * mb, 8), 8);
        assert_eq!(s.on_read(4 * mb, 5 * mb, 1, 2 * mb, 8), 8);
        s.frontier = 20;
        assert_eq!(s.on_read(500 * mb, 501 * mb, 1, 2 * mb, 8), 0);
        assert_eq!(s.frontier, 0, "random access resets the prefetch frontier");
        // A large first read starts with a window of its own size.
        let mut t = SeqState::default();
        assert_eq!(t.on_read(0, 4 * mb, 16, 2 * mb, 64), 16);
    }

    #[test]
    fn slices_cut_across_blocks() {
        let blocks = [
            Block::from(Bytes::from_static(b"abcd")),
            Block::new(vec![Bytes::from_static(b"ef"), Bytes::from_static(b"gh")]),
        ];
        assert_eq!(
            &concat(&slices(&blocks, 2, 4, 9, 15).unwrap())[..],
            b"bcdefg"
        );
        assert_eq!(
            &concat(&slices(&blocks[..1], 2, 4, 9, 11).unwrap())[..],
            b"bc"
        );
        assert!(slices(&[Block::from(Bytes::from_static(b"ab"))], 0, 4, 0, 4).is_err());
    }
}
