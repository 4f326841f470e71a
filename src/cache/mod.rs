//! In-memory block cache: blocks of one object version keyed by (key, etag, index), bounded
//! in bytes (LRU), with one fetch in flight per block that every reader of it shares.
//!
//! One budget covers cached blocks and blocks being fetched: claiming a block for fetching
//! reserves its size and evicts least-recently-used blocks to make room, so memory stays
//! within the budget whatever the mix of readers. Prefetch may only hold half the budget in
//! flight; beyond that it is refused (back-pressure) while demanded reads always proceed.
//! Write buffers take their bytes from the same budget ([`Reservation`]): cached blocks give
//! way to them, and a writer waits (or, where waiting cannot help, is refused) rather than
//! go beyond it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::watch;

use crate::store::StoreError;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub index: u64,
}

/// One block of an object, in one or more chunks (the HTTP body's own, for long runs; one
/// exact-size copy for short ones, see `fs::read::fetch_once`); a read answers with slices
/// of them in one vectored write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Block {
    chunks: Arc<[Bytes]>,
    len: usize,
}

impl Block {
    pub fn new(chunks: Vec<Bytes>) -> Self {
        let len = chunks.iter().map(Bytes::len).sum();
        Block {
            chunks: chunks.into(),
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends slices covering `[from, to)` of the block to `out` (no copy).
    pub fn slice_into(&self, from: usize, to: usize, out: &mut Vec<Bytes>) {
        let mut base = 0;
        for c in self.chunks.iter() {
            let (start, end) = (base, base + c.len());
            base = end;
            if end <= from || c.is_empty() {
                continue;
            }
            if start >= to {
                break;
            }
            out.push(c.slice(from.max(start) - start..to.min(end) - start));
        }
    }
}

impl From<Bytes> for Block {
    fn from(b: Bytes) -> Self {
        Block::new(vec![b])
    }
}

#[derive(Clone, Debug)]
pub enum BlockState {
    Pending,
    Ready(Block),
    Failed(StoreError),
}

/// The outcome of asking for a block.
pub enum Claim {
    Ready(Block),
    /// Someone else is fetching it: wait on this.
    Wait(watch::Receiver<BlockState>),
    /// Nobody is: the caller must fetch it and complete the slot.
    Fetch(FetchSlot),
    /// A prefetch claim refused: too much is in flight already.
    Busy,
}

struct Inner {
    lru: LruCache<BlockKey, Block>,
    /// Bytes of cached blocks.
    bytes: usize,
    /// Bytes reserved by fetches in flight.
    reserved: usize,
    /// Bytes held by write buffers.
    held: usize,
    inflight: HashMap<BlockKey, watch::Receiver<BlockState>>,
}

#[derive(Default, Debug)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub waits: AtomicU64,
    pub evictions: AtomicU64,
    pub prefetch_refused: AtomicU64,
}

pub struct BlockCache {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Woken when write bytes are given back.
    released: tokio::sync::Notify,
    pub stats: CacheStats,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Arc<Self> {
        Arc::new(BlockCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                reserved: 0,
                held: 0,
                inflight: HashMap::new(),
            }),
            capacity: capacity_bytes,
            released: tokio::sync::Notify::new(),
            stats: CacheStats::default(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by cached blocks.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Bytes reserved by fetches in flight.
    pub fn reserved(&self) -> usize {
        self.lock().reserved
    }

    /// Bytes held by write buffers.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// Takes `len` bytes of the budget for a write buffer, evicting cached blocks to make
    /// room; `None` if fetches and other writers already hold too much.
    pub fn try_reserve(self: &Arc<Self>, len: usize) -> Option<Reservation> {
        let mut r = Reservation::empty(self);
        r.try_grow(len).then_some(r)
    }

    /// As [`try_reserve`](Self::try_reserve), waiting for writers to give bytes back. A
    /// request larger than the whole budget is given what the budget has, so it cannot hang.
    pub async fn reserve(self: &Arc<Self>, len: usize) -> Reservation {
        let len = len.min(self.capacity / 2);
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_reserve(len) {
                return r;
            }
            notified.await;
        }
    }

    fn give_back(&self, len: usize) {
        if len == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.held -= len;
        drop(inner);
        self.released.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections cannot panic half-way; a poisoned lock still holds valid state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the block is cached or being fetched (no LRU promotion).
    pub fn contains(&self, key: &BlockKey) -> bool {
        let inner = self.lock();
        inner.lru.contains(key) || inner.inflight.contains_key(key)
    }

    /// Returns the block, a fetch to wait on, or the duty to fetch it (reserving `len` bytes).
    /// A `prefetch` claim is refused (`Busy`) when half the budget is already in flight.
    pub fn claim(self: &Arc<Self>, key: &BlockKey, len: usize, prefetch: bool) -> Claim {
        let mut inner = self.lock();
        if let Some(b) = inner.lru.get(key) {
            if !prefetch {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
            }
            return Claim::Ready(b.clone());
        }
        if let Some(rx) = inner.inflight.get(key) {
            if !prefetch {
                self.stats.waits.fetch_add(1, Ordering::Relaxed);
            }
            return Claim::Wait(rx.clone());
        }
        if prefetch && inner.reserved + inner.held + len > self.capacity / 2 {
            self.stats.prefetch_refused.fetch_add(1, Ordering::Relaxed);
            return Claim::Busy;
        }
        if !prefetch {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        inner.reserved += len;
        self.evict_to_fit(&mut inner);
        let (tx, rx) = watch::channel(BlockState::Pending);
        inner.inflight.insert(key.clone(), rx);
        Claim::Fetch(FetchSlot {
            cache: self.clone(),
            key: key.clone(),
            reserved: len,
            tx: Some(tx),
        })
    }

    fn evict_to_fit(&self, inner: &mut Inner) {
        while inner.bytes + inner.reserved + inner.held > self.capacity {
            match inner.lru.pop_lru() {
                Some((_, old)) => {
                    inner.bytes -= old.len();
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
    }

    fn finish(&self, key: &BlockKey, reserved: usize, state: BlockState) -> BlockState {
        let mut inner = self.lock();
        inner.inflight.remove(key);
        inner.reserved -= reserved;
        if let BlockState::Ready(b) = &state
            && b.len() <= self.capacity
        {
            inner.bytes += b.len();
            if let Some(old) = inner.lru.put(key.clone(), b.clone()) {
                inner.bytes -= old.len();
            }
            self.evict_to_fit(&mut inner);
        }
        state
    }

    /// Marks blocks as read through: a sequential reader will not come back for them, so
    /// they are the first to go, before prefetched blocks nobody has read yet.
    pub fn demote(&self, keys: &[BlockKey]) {
        let mut inner = self.lock();
        for k in keys {
            inner.lru.demote(k);
        }
    }

    /// Drops every cached block of `key` (any version): used when an object is known to
    /// have changed, so stale blocks do not occupy the budget.
    pub fn forget_object(&self, key: &str) {
        let mut inner = self.lock();
        let stale: Vec<BlockKey> = inner
            .lru
            .iter()
            .filter(|(k, _)| &*k.key == key)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(b) = inner.lru.pop(&k) {
                inner.bytes -= b.len();
            }
        }
    }
}

/// Bytes of the budget held by a write buffer, given back when dropped.
pub struct Reservation {
    cache: Arc<BlockCache>,
    len: usize,
}

impl Reservation {
    /// No bytes yet.
    pub fn empty(cache: &Arc<BlockCache>) -> Self {
        Reservation {
            cache: cache.clone(),
            len: 0,
        }
    }

    /// Moves `n` of these bytes (at most all) to a reservation of their own.
    pub fn split(&mut self, n: usize) -> Reservation {
        let n = n.min(self.len);
        self.len -= n;
        Reservation {
            cache: self.cache.clone(),
            len: n,
        }
    }

    /// Takes over the bytes of `other`.
    pub fn absorb(&mut self, mut other: Reservation) {
        self.len += other.len;
        other.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes `more` bytes too, if they fit (cached blocks are evicted for them).
    pub fn try_grow(&mut self, more: usize) -> bool {
        let cache = &self.cache;
        let mut inner = cache.lock();
        if inner.held + inner.reserved + more > cache.capacity {
            return false;
        }
        inner.held += more;
        cache.evict_to_fit(&mut inner);
        self.len += more;
        true
    }

    /// Gives back all but `keep` bytes.
    pub fn shrink_to(&mut self, keep: usize) {
        if keep < self.len {
            self.cache.give_back(self.len - keep);
            self.len = keep;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.cache.give_back(self.len);
    }
}

/// The duty to fetch one block. Completing it wakes every waiter; dropping it without
/// completing (a cancelled or panicked fetch) fails the waiters instead of hanging them.
pub struct FetchSlot {
    cache: Arc<BlockCache>,
    key: BlockKey,
    reserved: usize,
    tx: Option<watch::Sender<BlockState>>,
}

impl FetchSlot {
    pub fn key(&self) -> &BlockKey {
        &self.key
    }

    /// A receiver that sees this slot's result, for a reader that also needs the block.
    pub fn subscribe(&self) -> watch::Receiver<BlockState> {
        match &self.tx {
            Some(tx) => tx.subscribe(),
            None => {
                watch::channel(BlockState::Failed(StoreError::Transient(
                    "block fetch already finished".into(),
                )))
                .1
            }
        }
    }

    pub fn complete(mut self, result: Result<Block, StoreError>) {
        self.send(match result {
            Ok(b) => BlockState::Ready(b),
            Err(e) => BlockState::Failed(e),
        });
    }

    fn send(&mut self, state: BlockState) {
        if let Some(tx) = self.tx.take() {
            let state = self.cache.finish(&self.key, self.reserved, state);
            // No receivers left is fine: the block is cached for later readers.
            let _ = tx.send(state);
        }
    }
}

impl Drop for FetchSlot {
    fn drop(&mut self) {
        self.send(BlockState::Failed(StoreError::Transient(
            "block fetch abandoned".into(),
        )));
    }
}

/// Waits for a block fetched by someone else.
pub async fn wait(mut rx: watch::Receiver<BlockState>) -> Result<Block, StoreError> {
    let state = rx
        .wait_for(|s| !matches!(s, BlockState::Pending))
        .await
        .map(|s| s.clone())
        .unwrap_or(BlockState::Failed(StoreError::Transient(
            "block fetch abandoned".into(),
        )));
    match state {
        BlockState::Ready(b) => Ok(b),
        BlockState::Failed(e) => Err(e),
        BlockState::Pending => Err(StoreError::Transient("block fetch abandoned".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BlockKey {
        BlockKey {
            key: "k".into(),
            etag: "e".into(),
            index: i,
        }
    }

    fn fetch(c: &Arc<BlockCache>, i: u64, len: usize, prefetch: bool) -> FetchSlot {
        match c.claim(&key(i), len, prefetch) {
            Claim::Fetch(s) => s,
            _ => panic!("block {i} should need fetching"),
        }
    }

    #[tokio::test]
    async fn single_flight_and_byte_bound() {
        let c = BlockCache::new(10);
        let slot = fetch(&c, 0, 6, false);
        let rx = match c.claim(&key(0), 6, false) {
            Claim::Wait(rx) => rx,
            _ => panic!("second claim must wait"),
        };
        slot.complete(Ok(Bytes::from_static(b"123456").into()));
        assert_eq!(
            wait(rx).await.unwrap(),
            Bytes::from_static(b"123456").into()
        );
        assert!(matches!(c.claim(&key(0), 6, false), Claim::Ready(_)));
        // Reserving 6 more bytes than fit evicts the least recently used block at claim time.
        let s1 = fetch(&c, 1, 6, false);
        assert_eq!((c.bytes(), c.reserved()), (0, 6));
        s1.complete(Ok(Bytes::from_static(b"abcdef").into()));
        assert_eq!((c.bytes(), c.reserved()), (6, 0));
        assert!(!c.contains(&key(0)));
        assert!(c.contains(&key(1)));
    }

    #[test]
    fn blocks_slice_across_chunks() {
        let b = Block::new(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
            Bytes::from_static(b"f"),
        ]);
        assert_eq!(b.len(), 6);
        let cut = |from, to| {
            let mut v = Vec::new();
            b.slice_into(from, to, &mut v);
            v.concat()
        };
        assert_eq!(cut(0, 6), b"abcdef");
        assert_eq!(cut(1, 4), b"bcd");
        assert_eq!(cut(2, 5), b"cde");
        assert_eq!(cut(5, 6), b"f");
        assert_eq!(cut(3, 3), b"");
    }

    #[tokio::test]
    async fn demoted_blocks_are_evicted_first() {
        let c = BlockCache::new(12);
        for i in 0..3 {
            fetch(&c, i, 4, false).complete(Ok(Bytes::from(vec![0u8; 4]).into()));
        }
        // Block 2 was read through; the next insert evicts it, not block 0.
        c.demote(&[key(2)]);
        fetch(&c, 3, 4, false).complete(Ok(Bytes::from(vec![0u8; 4]).into()));
        assert!(c.contains(&key(0)) && !c.contains(&key(2)));
    }

    #[tokio::test]
    async fn prefetch_is_refused_beyond_half_the_budget() {
        let c = BlockCache::new(100);
        let a = fetch(&c, 0, 40, true);
        assert!(matches!(c.claim(&key(1), 40, true), Claim::Busy));
        // Demand reads are never refused.
        let b = fetch(&c, 2, 40, false);
        a.complete(Ok(Bytes::from(vec![0u8; 40]).into()));
        b.complete(Ok(Bytes::from(vec![0u8; 40]).into()));
        assert!(matches!(c.claim(&key(1), 40, true), Claim::Fetch(_)));
    }

    #[tokio::test]
    async fn abandoned_fetch_fails_waiters_and_releases_its_reservation() {
        let c = BlockCache::new(10);
        let slot = fetch(&c, 0, 4, false);
        let rx = match c.claim(&key(0), 4, false) {
            Claim::Wait(rx) => rx,
            _ => panic!(),
        };
        drop(slot);
        assert!(wait(rx).await.is_err());
        assert_eq!(c.reserved(), 0);
        // And the next reader fetches afresh.
        assert!(matches!(c.claim(&key(0), 4, false), Claim::Fetch(_)));
    }
}
