//! The write path for new files: a file written front to back streams to S3 as it is
//! written (one PutObject when small, a multipart upload in parts when large); any other
//! order is staged (in memory within the budget, or in `--staging-dir`) and uploaded whole.
//! The object appears only when the upload completes, at the last close or at fsync, and
//! only if no object took the name meanwhile (`If-None-Match: *`).
//!
//! Streaming keeps the first part in memory until the end, so writers that go back to fix
//! up their header (zip, media muxers) still stream, and one complete part behind the
//! write point, for fix-ups just behind it. A write that lands in bytes already uploaded
//! cannot be honoured and fails with EIO (docs/semantics.md).

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::FsError;
use crate::cache::{BlockCache, Reservation};
use crate::metrics;
use crate::store::{MAX_PARTS, MIN_PART_SIZE, ObjectStore, Part, Precondition, StoreError};

/// Parts of one file uploading at once.
const UPLOAD_PARALLELISM: usize = 4;
/// Longest a writer waits for other writers to give memory back before its write fails.
const BUDGET_WAIT: Duration = Duration::from_secs(30);
/// Largest object S3 stores.
const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// How new files are written.
#[derive(Clone, Debug)]
pub struct WriteConfig {
    /// Size of each uploaded part (and of the largest single PutObject).
    pub part_size: u64,
    /// Where out-of-order files are staged (none: in memory, within the budget).
    pub staging_dir: Option<std::path::PathBuf>,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            part_size: 8 << 20,
            staging_dir: None,
        }
    }
}

/// A file being written, shared by every handle open on it.
pub struct WriteFile {
    pub key: Arc<str>,
    size: AtomicU64,
    /// Whether anything was written (or the size set) since it was created.
    touched: std::sync::atomic::AtomicBool,
    /// Modification time reported while it is written (utimes may set it).
    mtime: std::sync::Mutex<SystemTime>,
    /// Processes (thread group ids) that wrote to it; `None` in the set: one not known.
    writers: std::sync::Mutex<std::collections::HashSet<Option<u32>>>,
    state: tokio::sync::Mutex<State>,
}

/// What happened to the data so far.
enum State {
    Stream(Stream),
    Staged(Staged),
    /// Uploaded as version `etag`; the bytes are gone (streamed).
    Committed {
        etag: String,
    },
    /// The upload failed or was aborted: every further write and close fails.
    Failed(String),
}

impl WriteFile {
    pub fn new(key: Arc<str>) -> Self {
        WriteFile {
            key,
            size: AtomicU64::new(0),
            touched: false.into(),
            writers: Default::default(),
            mtime: std::sync::Mutex::new(SystemTime::now()),
            state: tokio::sync::Mutex::new(State::Stream(Stream::default())),
        }
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Notes that thread `tid` (the pid of a FUSE write) wrote to the file.
    pub fn note_writer(&self, tid: u32) {
        let p = process_of(tid);
        crate::util::lock(&self.writers).insert(p);
    }

    /// Whether the closing thread `tid` belongs to a process that wrote to the file (true
    /// when that cannot be told). A child that inherited the descriptor and closes it at
    /// exec must not publish the file half-written.
    pub fn written_by(&self, tid: u32) -> bool {
        let w = crate::util::lock(&self.writers);
        if w.is_empty() || w.contains(&None) {
            return true;
        }
        process_of(tid).is_none_or(|p| w.contains(&Some(p)))
    }

    /// Whether anything was written (or the size set) since it was created.
    pub fn touched(&self) -> bool {
        self.touched.load(Ordering::Relaxed)
    }

    pub fn mtime(&self) -> SystemTime {
        *crate::util::lock(&self.mtime)
    }

    /// Sets the reported time (utimes): the app has done something to the file (touch,
    /// tar), so its close uploads it even if nothing was written.
    pub fn set_mtime(&self, t: SystemTime) {
        *crate::util::lock(&self.mtime) = t;
        self.touched.store(true, Ordering::Relaxed);
    }

    /// Writes `data` at `offset`.
    pub async fn write<S: ObjectStore>(
        &self,
        w: &Writer<S>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        let end = offset + data.len() as u64;
        if end > w.max_size() {
            return Err(FsError::TooBig);
        }
        self.touched.store(true, Ordering::Relaxed);
        let mut st = self.state.lock().await;
        loop {
            match &mut *st {
                State::Stream(s) => match s.write(w, &self.key, offset, data).await {
                    Ok(Applied::Done) => break,
                    // A part that could not be uploaded, or a write that cannot be placed:
                    // the file can no longer become what the app wrote, so it fails whole
                    // (close returns EIO, nothing appears) rather than become something else.
                    Err(e @ FsError::Io(_)) => {
                        s.abort(w, &self.key).await;
                        *st = State::Failed(e.to_string());
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                    Ok(Applied::NeedsStaging) => {
                        let staged = Staged::from_stream(w, s)?;
                        tracing::debug!(key = %self.key, offset, "out-of-order write: file staged");
                        *st = State::Staged(staged);
                    }
                },
                State::Staged(s) => {
                    s.write(w, offset, data)?;
                    break;
                }
                State::Committed { .. } => {
                    tracing::warn!(key = %self.key, offset, "write after the file was uploaded by fsync/close: its streamed bytes are no longer held; write fails");
                    return Err(FsError::Io("file already uploaded".into()));
                }
                State::Failed(why) => return Err(FsError::Io(why.clone())),
            }
        }
        self.size.fetch_max(end, Ordering::Relaxed);
        Ok(())
    }

    /// Reads back what was written, where it is still held.
    pub async fn read(&self, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let st = self.state.lock().await;
        let len = self.size();
        let end = (offset + u64::from(size)).min(len);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let ok = match &*st {
            State::Stream(s) => s.read(offset, &mut out),
            State::Staged(s) => s.read(offset, &mut out).map(|_| true)?,
            State::Committed { .. } | State::Failed(_) => false,
        };
        if !ok {
            tracing::warn!(key = %self.key, offset, size, "read of a file being written, in bytes already uploaded: fails");
            return Err(FsError::Io(
                "bytes of a file being written are no longer held".into(),
            ));
        }
        Ok(out)
    }

    /// Changes the size (ftruncate). Streams only allow it where nothing is lost.
    pub async fn truncate<S: ObjectStore>(&self, w: &Writer<S>, size: u64) -> Result<(), FsError> {
        if size > w.max_size() {
            return Err(FsError::TooBig);
        }
        self.touched.store(true, Ordering::Relaxed);
        let mut st = self.state.lock().await;
        if self.size() == size {
            return Ok(());
        }
        if let State::Stream(s) = &mut *st {
            if size == 0 && s.upload.is_none() {
                *s = Stream::default();
                self.size.store(0, Ordering::Relaxed);
                return Ok(());
            }
            if s.upload.is_some() {
                tracing::warn!(key = %self.key, size, "truncate of a file already streaming: fails");
                return Err(FsError::Io("file already streaming".into()));
            }
            *st = State::Staged(Staged::from_stream(w, s)?);
        }
        match &mut *st {
            State::Staged(s) => s.set_len(w, size)?,
            State::Failed(why) => return Err(FsError::Io(why.clone())),
            _ => return Err(FsError::Io("file already uploaded".into())),
        }
        self.size.store(size, Ordering::Relaxed);
        Ok(())
    }

    /// Uploads what was written (at fsync and at the last close). Returns the new version's
    /// ETag; an error means nothing appeared under the key.
    pub async fn commit<S: ObjectStore>(&self, w: &Writer<S>) -> Result<String, FsError> {
        let mut st = self.state.lock().await;
        let size = self.size();
        // A file still all in memory is staged first and kept: writes after this close or
        // fsync (a descriptor dup'ed before, a database's next transaction) go on as a change
        // of the version uploaded now.
        if let State::Stream(s) = &mut *st
            && s.upload.is_none()
        {
            match Staged::from_stream(w, s) {
                Ok(staged) => *st = State::Staged(staged),
                Err(e) => {
                    *st = State::Failed(e.to_string());
                    return Err(e);
                }
            }
        }
        let result = match &mut *st {
            State::Committed { etag } => return Ok(etag.clone()),
            State::Failed(why) => return Err(FsError::Io(why.clone())),
            State::Stream(s) => s.finish(w, &self.key).await,
            State::Staged(s) => {
                if let Some(etag) = &s.committed
                    && !s.dirty
                {
                    return Ok(etag.clone());
                }
                let cond = match &s.committed {
                    None => Precondition::Absent,
                    Some(e) => Precondition::Matches(e.clone()),
                };
                upload_staged(w, &self.key, s, &cond).await
            }
        };
        match result {
            Ok(etag) => {
                metrics::WRITES.completed.inc();
                tracing::info!(key = %self.key, size, etag = %etag, "uploaded");
                match &mut *st {
                    State::Staged(s) => {
                        s.committed = Some(etag.clone());
                        s.dirty = false;
                    }
                    other => {
                        *other = State::Committed { etag: etag.clone() };
                    }
                }
                Ok(etag)
            }
            Err(e) => {
                metrics::WRITES.failed.inc();
                let why = match &e {
                    StoreError::PreconditionFailed => {
                        "another writer created or changed this object meanwhile; not overwritten"
                            .to_string()
                    }
                    other => other.to_string(),
                };
                tracing::error!(key = %self.key, size, error = %why, "upload failed; nothing written under this name");
                *st = State::Failed(why.clone());
                Err(FsError::Io(why))
            }
        }
    }

    /// Abandons the file: nothing appears under its key (unmount with the file still open,
    /// or an unlink while it is written).
    pub async fn abort<S: ObjectStore>(&self, w: &Writer<S>, why: &str) {
        let mut st = self.state.lock().await;
        if let State::Stream(s) = &mut *st {
            s.abort(w, &self.key).await;
        }
        if !matches!(&*st, State::Committed { .. }) {
            *st = State::Failed(why.to_string());
        }
    }

    /// Whether there are bytes not uploaded yet.
    pub async fn dirty(&self) -> bool {
        match &*self.state.lock().await {
            State::Stream(_) => true,
            State::Staged(s) => s.dirty || s.committed.is_none(),
            State::Committed { .. } | State::Failed(_) => false,
        }
    }
}

/// The process (thread group) of thread `tid`, from /proc; `None` when it cannot be told
/// (0: outside the daemon's pid namespace; gone).
fn process_of(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What the write path needs of the filesystem.
pub struct Writer<S> {
    pub store: Arc<S>,
    pub cache: Arc<BlockCache>,
    pub cfg: WriteConfig,
}

impl<S: ObjectStore> Writer<S> {
    fn max_size(&self) -> u64 {
        (self.cfg.part_size * u64::from(MAX_PARTS)).min(MAX_OBJECT_SIZE)
    }

    fn part_size(&self) -> usize {
        self.cfg.part_size.max(MIN_PART_SIZE) as usize
    }

    /// Bytes of complete parts a streaming file keeps behind its write point, so writers
    /// that go back to fix up what they wrote (a zip entry's header after its data) still
    /// stream: a quarter of the budget, within 2 parts..128 MiB.
    fn window(&self) -> u64 {
        let p = self.part_size() as u64;
        (self.cache.capacity() as u64 / 4).clamp(2 * p, (128 << 20).max(2 * p))
    }
}

/// Waits (up to [`BUDGET_WAIT`]) for other writers to give back `n` bytes of the budget,
/// then adds them to `res`; ENOSPC if they do not.
async fn wait_for_budget(
    cache: &Arc<BlockCache>,
    res: &mut Reservation,
    n: usize,
) -> Result<(), FsError> {
    let waited = tokio::time::timeout(BUDGET_WAIT, async {
        let mut got = 0;
        while got < n {
            let r = cache.reserve(n - got).await;
            got += r.len();
            res.absorb(r);
        }
    })
    .await;
    waited.map_err(|_| {
        tracing::warn!(
            held = cache.held(),
            budget = cache.capacity(),
            "files being written hold the whole memory budget; write fails with ENOSPC (raise --cache-size, or use --staging-dir)"
        );
        FsError::NoSpace
    })
}

/// One part upload in flight.
struct InFlight {
    number: u32,
    task: JoinHandle<Result<String, StoreError>>,
}

impl InFlight {
    async fn join(mut self) -> Result<Part, StoreError> {
        let etag = (&mut self.task)
            .await
            .map_err(|e| StoreError::Other(format!("upload task: {e}")))??;
        Ok(Part {
            number: self.number,
            etag,
        })
    }

    /// Stops the upload and waits until it has let go of its bytes.
    async fn cancel(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// A part upload nobody waits for any more (an upload given up on an error) is stopped.
impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A multipart upload under way.
struct Upload {
    id: String,
    parts: Vec<Part>,
    inflight: VecDeque<InFlight>,
}

/// A file written front to back so far.
#[derive(Default)]
struct Stream {
    /// Bytes [0, head.len()): the first part, held until the end.
    head: Vec<u8>,
    /// Complete and partial parts after the head not uploaded yet, in order: part number
    /// and bytes; the last one is being filled.
    tail: VecDeque<(u32, Vec<u8>)>,
    /// Where the next sequential write goes.
    written: u64,
    upload: Option<Upload>,
    res: Option<Reservation>,
}

enum Applied {
    Done,
    NeedsStaging,
}

impl Stream {
    /// Offset of the first byte of the tail (the tail is contiguous up to `written`).
    fn tail_start(&self) -> u64 {
        self.written - self.tail.iter().map(|(_, c)| c.len() as u64).sum::<u64>()
    }

    /// Whether `[offset, offset + len)` is all held in memory: in the head, in the tail, or
    /// across both when nothing was uploaded between them.
    fn held(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        let head_end = self.head.len() as u64;
        let tail_start = self.tail_start();
        end <= head_end || (end <= self.written && (offset >= tail_start || tail_start <= head_end))
    }

    /// The held bytes overlapping `[offset, offset + len)`, as (position in the range,
    /// position in the buffer, length, buffer index: 0 the head, i + 1 tail chunk i).
    fn overlaps(&self, offset: u64, len: u64) -> Vec<(usize, usize, usize, usize)> {
        let end = offset + len;
        let mut out = Vec::new();
        let mut start = 0u64;
        let tail_start = self.tail_start();
        let bufs = std::iter::once(&self.head).chain(self.tail.iter().map(|(_, c)| c));
        for (i, buf) in bufs.enumerate() {
            if i == 1 {
                start = tail_start;
            }
            let (b0, b1) = (start, start + buf.len() as u64);
            let (lo, hi) = (offset.max(b0), end.min(b1));
            if lo < hi {
                out.push((
                    (lo - offset) as usize,
                    (lo - b0) as usize,
                    (hi - lo) as usize,
                    i,
                ));
            }
            start = b1;
        }
        out
    }

    /// Copies held bytes at `offset` into `out`; false if any of them is not held.
    fn read(&self, offset: u64, out: &mut [u8]) -> bool {
        if !self.held(offset, out.len() as u64) {
            return false;
        }
        for (at, from, n, i) in self.overlaps(offset, out.len() as u64) {
            let buf = if i == 0 {
                &self.head
            } else {
                &self.tail[i - 1].1
            };
            out[at..at + n].copy_from_slice(&buf[from..from + n]);
        }
        true
    }

    /// Patches held bytes in place (all of `[offset, offset + data.len())` is held).
    fn patch(&mut self, offset: u64, data: &[u8]) {
        for (at, to, n, i) in self.overlaps(offset, data.len() as u64) {
            let buf = if i == 0 {
                &mut self.head
            } else {
                &mut self.tail[i - 1].1
            };
            buf[to..to + n].copy_from_slice(&data[at..at + n]);
        }
    }

    async fn write<S: ObjectStore>(
        &mut self,
        w: &Writer<S>,
        key: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<Applied, FsError> {
        let p = w.part_size() as u64;
        let end = offset + data.len() as u64;
        // The part of the write over bytes already written must be held to be patched.
        let overlap_end = end.min(self.written);
        if offset > self.written
            || (offset < overlap_end && !self.held(offset, overlap_end - offset))
        {
            if self.upload.is_none() {
                return Ok(Applied::NeedsStaging);
            }
            tracing::warn!(
                key,
                offset,
                len = data.len(),
                streamed_to = self.written,
                "write behind what was already uploaded (the file was written front to back \
                 until now and streams to S3); write fails: an app that writes out of order \
                 after its first part needs to create the file elsewhere and copy it"
            );
            return Err(FsError::Io(
                "out-of-order write into bytes already uploaded".into(),
            ));
        }
        if offset < overlap_end {
            self.patch(offset, &data[..(overlap_end - offset) as usize]);
        }
        let mut rest = &data[(overlap_end.max(offset) - offset) as usize..];
        while !rest.is_empty() {
            // Into the head, then into part-size tail chunks.
            let in_head = (self.written < p).then(|| (p - self.written) as usize);
            let room = match in_head {
                Some(r) => r,
                None => {
                    let full = self.tail.back().is_none_or(|(_, c)| c.len() as u64 >= p);
                    if full {
                        let number = (self.written / p) as u32 + 1;
                        self.tail
                            .push_back((number, Vec::with_capacity(p as usize)));
                    }
                    let (_, c) = self.tail.back().expect("pushed above");
                    p as usize - c.len()
                }
            };
            let n = room.min(rest.len());
            self.reserve(w, key, n).await?;
            match in_head {
                Some(_) => self.head.extend_from_slice(&rest[..n]),
                None => {
                    let (_, c) = self.tail.back_mut().expect("pushed above");
                    c.extend_from_slice(&rest[..n]);
                }
            }
            self.written += n as u64;
            rest = &rest[n..];
            // Complete parts stay behind the write point up to the window (for fix-ups
            // there); older ones go.
            while self.complete_tail_bytes(p) > w.window() {
                self.send_oldest(w, key).await?;
            }
        }
        Ok(Applied::Done)
    }

    /// Bytes of complete parts in the tail.
    fn complete_tail_bytes(&self, p: u64) -> u64 {
        self.tail
            .iter()
            .filter(|(_, c)| c.len() as u64 >= p)
            .map(|(_, c)| c.len() as u64)
            .sum()
    }

    /// Takes `n` more bytes of the budget for this file: the cache gives way; then this
    /// file's own uploads in flight, then its complete parts held for fix-ups, give their
    /// bytes back; then other writers' (waiting for them, bounded).
    async fn reserve<S: ObjectStore>(
        &mut self,
        w: &Writer<S>,
        key: &str,
        n: usize,
    ) -> Result<(), FsError> {
        let p = w.part_size() as u64;
        loop {
            let res = self.res.get_or_insert_with(|| Reservation::empty(&w.cache));
            if res.try_grow(n) {
                return Ok(());
            }
            if let Some(u) = &mut self.upload
                && let Some(f) = u.inflight.pop_front()
            {
                u.parts
                    .push(f.join().await.map_err(|e| upload_error(key, e))?);
                continue;
            }
            if self.complete_tail_bytes(p) > 0 {
                self.send_oldest(w, key).await?;
                continue;
            }
            break;
        }
        let res = self.res.get_or_insert_with(|| Reservation::empty(&w.cache));
        wait_for_budget(&w.cache, res, n).await
    }

    /// Uploads the oldest tail chunk as its part (starting the upload if need be), waiting
    /// while [`UPLOAD_PARALLELISM`] parts are in flight.
    async fn send_oldest<S: ObjectStore>(
        &mut self,
        w: &Writer<S>,
        key: &str,
    ) -> Result<(), FsError> {
        let Some((number, chunk)) = self.tail.pop_front() else {
            return Ok(());
        };
        let len = chunk.len();
        if self.upload.is_none() {
            let id = w.store.create_upload(key).await.map_err(|e| {
                tracing::error!(key, error = %e, "cannot start the multipart upload");
                FsError::Io(e.to_string())
            })?;
            metrics::WRITES.started.inc();
            tracing::debug!(key, upload_id = %id, "multipart upload started");
            self.upload = Some(Upload {
                id,
                parts: Vec::new(),
                inflight: VecDeque::new(),
            });
        }
        let u = self.upload.as_mut().expect("set above");
        while u.inflight.len() >= UPLOAD_PARALLELISM {
            let f = u.inflight.pop_front().expect("non-empty");
            let part = f.join().await.map_err(|e| upload_error(key, e))?;
            u.parts.push(part);
        }
        // The chunk's bytes leave this file's reservation with the chunk: the task gives
        // them back when the part is uploaded.
        let part_res = match &mut self.res {
            Some(r) => r.split(len),
            None => Reservation::empty(&w.cache),
        };
        u.inflight.push_back(spawn_part(
            w,
            key,
            &u.id,
            number,
            Bytes::from(chunk),
            part_res,
        ));
        Ok(())
    }

    /// Uploads everything held and completes the object.
    async fn finish<S: ObjectStore>(
        &mut self,
        w: &Writer<S>,
        key: &str,
    ) -> Result<String, StoreError> {
        let r = self.finish_inner(w, key).await;
        if r.is_err() {
            self.abort(w, key).await;
        }
        self.res = None;
        r
    }

    async fn finish_inner<S: ObjectStore>(
        &mut self,
        w: &Writer<S>,
        key: &str,
    ) -> Result<String, StoreError> {
        if self.upload.is_none() {
            // Small enough to have stayed in memory: one PutObject.
            let mut body = std::mem::take(&mut self.head);
            for (_, c) in self.tail.drain(..) {
                body.extend_from_slice(&c);
            }
            metrics::WRITES.started.inc();
            let len = body.len() as u64;
            let written = w
                .store
                .put_object(key, Bytes::from(body), &Precondition::Absent)
                .await?;
            metrics::WRITES.bytes.add(len);
            return Ok(written.etag);
        }
        while !self.tail.is_empty() {
            self.send_oldest(w, key)
                .await
                .map_err(|e| StoreError::Other(e.to_string()))?;
        }
        let head = Bytes::from(std::mem::take(&mut self.head));
        let u = self.upload.as_mut().expect("checked above");
        let head_res = match &mut self.res {
            Some(r) => r.split(r.len()),
            None => Reservation::empty(&w.cache),
        };
        u.inflight
            .push_back(spawn_part(w, key, &u.id, 1, head, head_res));
        while let Some(f) = u.inflight.pop_front() {
            u.parts.push(f.join().await?);
        }
        u.parts.sort_by_key(|p| p.number);
        // Ceph RGW ignores the condition on completion: look first, so a name taken
        // meanwhile is at least caught before (AWS S3 checks it at completion itself).
        match w.store.head(key).await {
            Ok(_) => return Err(StoreError::PreconditionFailed),
            Err(StoreError::NotFound) | Err(StoreError::AccessDenied { .. }) => {}
            Err(e) => return Err(e),
        }
        let written = w
            .store
            .complete_upload(key, &u.id, &u.parts, &Precondition::Absent)
            .await?;
        self.upload = None;
        Ok(written.etag)
    }

    async fn abort<S: ObjectStore>(&mut self, w: &Writer<S>, key: &str) {
        if let Some(u) = self.upload.take() {
            // Stopped and awaited, so their bytes are back in the budget on return.
            for f in u.inflight {
                f.cancel().await;
            }
            if let Err(e) = w.store.abort_upload(key, &u.id).await {
                tracing::warn!(key, upload_id = %u.id, error = %e, "cannot abort the multipart upload; a bucket lifecycle rule (AbortIncompleteMultipartUpload) cleans it up");
            }
        }
        self.head = Vec::new();
        self.tail.clear();
        self.res = None;
    }
}

fn upload_error(key: &str, e: StoreError) -> FsError {
    tracing::error!(key, error = %e, "part upload failed");
    FsError::Io(e.to_string())
}

fn spawn_part<S: ObjectStore>(
    w: &Writer<S>,
    key: &str,
    upload_id: &str,
    number: u32,
    body: Bytes,
    res: Reservation,
) -> InFlight {
    let (store, key, id) = (w.store.clone(), key.to_string(), upload_id.to_string());
    let task = tokio::spawn(async move {
        let len = body.len() as u64;
        let r = store.upload_part(&key, &id, number, body).await;
        if r.is_ok() {
            metrics::WRITES.bytes.add(len);
        }
        drop(res);
        r
    });
    InFlight { number, task }
}

/// A file written in any order, kept whole until it is uploaded.
struct Staged {
    body: StagedBody,
    /// The version uploaded by the last fsync, if any: the next upload replaces exactly it.
    committed: Option<String>,
    dirty: bool,
}

enum StagedBody {
    Memory { data: Vec<u8>, res: Reservation },
    File { file: std::fs::File, len: u64 },
}

impl Staged {
    fn new<S: ObjectStore>(w: &Writer<S>) -> Result<Self, FsError> {
        let body = match &w.cfg.staging_dir {
            Some(dir) => StagedBody::File {
                file: staging_file(dir).map_err(|e| {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot create a staging file");
                    io_error(&e)
                })?,
                len: 0,
            },
            None => StagedBody::Memory {
                data: Vec::new(),
                res: Reservation::empty(&w.cache),
            },
        };
        Ok(Staged {
            body,
            committed: None,
            dirty: true,
        })
    }

    /// The bytes held by a stream that has not started uploading, staged.
    fn from_stream<S: ObjectStore>(w: &Writer<S>, s: &mut Stream) -> Result<Self, FsError> {
        let mut staged = Staged::new(w)?;
        let head = std::mem::take(&mut s.head);
        staged.write_unreserved(w, 0, &head)?;
        let mut off = head.len() as u64;
        for (_, c) in s.tail.drain(..) {
            staged.write_unreserved(w, off, &c)?;
            off += c.len() as u64;
        }
        // The stream's reservation now covers the staged bytes (in memory; on disk they
        // need none).
        if let (StagedBody::Memory { res, .. }, Some(old)) = (&mut staged.body, s.res.take()) {
            res.absorb(old);
        }
        *s = Stream::default();
        Ok(staged)
    }

    fn len(&self) -> u64 {
        match &self.body {
            StagedBody::Memory { data, .. } => data.len() as u64,
            StagedBody::File { len, .. } => *len,
        }
    }

    fn write_unreserved<S: ObjectStore>(
        &mut self,
        _w: &Writer<S>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        let end = offset + data.len() as u64;
        match &mut self.body {
            StagedBody::Memory { data: buf, .. } => {
                if (buf.len() as u64) < end {
                    buf.resize(end as usize, 0);
                }
                buf[offset as usize..end as usize].copy_from_slice(data);
            }
            StagedBody::File { file, len } => {
                file.write_all_at(data, offset).map_err(|e| io_error(&e))?;
                *len = (*len).max(end);
            }
        }
        Ok(())
    }

    fn write<S: ObjectStore>(
        &mut self,
        w: &Writer<S>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        let end = offset + data.len() as u64;
        if let StagedBody::Memory { data: buf, res } = &mut self.body {
            let more = (end as usize).saturating_sub(buf.len());
            // Staged bytes stay until close: waiting would not bring memory back.
            if more > 0 && !res.try_grow(more) {
                tracing::warn!(
                    size = end,
                    budget = w.cache.capacity(),
                    "staged file outgrows the memory budget; write fails with ENOSPC (use --staging-dir, or raise --cache-size)"
                );
                return Err(FsError::NoSpace);
            }
        }
        self.write_unreserved(w, offset, data)?;
        self.dirty = true;
        Ok(())
    }

    fn set_len<S: ObjectStore>(&mut self, w: &Writer<S>, size: u64) -> Result<(), FsError> {
        match &mut self.body {
            StagedBody::Memory { data, res } => {
                let more = (size as usize).saturating_sub(data.len());
                if more > 0 && !res.try_grow(more) {
                    return Err(FsError::NoSpace);
                }
                data.resize(size as usize, 0);
                res.shrink_to(data.len());
            }
            StagedBody::File { file, len } => {
                file.set_len(size).map_err(|e| io_error(&e))?;
                *len = size;
            }
        }
        let _ = w;
        self.dirty = true;
        Ok(())
    }

    /// Reads `out.len()` bytes at `offset` (within the length).
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), FsError> {
        match &self.body {
            StagedBody::Memory { data, .. } => {
                out.copy_from_slice(&data[offset as usize..offset as usize + out.len()]);
                Ok(())
            }
            StagedBody::File { file, .. } => {
                file.read_exact_at(out, offset).map_err(|e| io_error(&e))
            }
        }
    }

    /// Bytes `[offset, offset + len)` as one buffer for an upload.
    fn chunk(&self, offset: u64, len: usize) -> Result<Bytes, FsError> {
        match &self.body {
            StagedBody::Memory { data, .. } => Ok(Bytes::copy_from_slice(
                &data[offset as usize..offset as usize + len],
            )),
            StagedBody::File { file, .. } => {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset)
                    .map_err(|e| io_error(&e))?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// A staging file nobody else can open: created in `dir` and unlinked at once, so it
/// vanishes with the daemon whatever happens.
fn staging_file(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
}

fn io_error(e: &io::Error) -> FsError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
        Some(libc::EFBIG) => FsError::TooBig,
        _ => FsError::Io(e.to_string()),
    }
}

/// Uploads a staged file whole: one PutObject up to a part, else a multipart upload with
/// parts read from the staging in turn.
async fn upload_staged<S: ObjectStore>(
    w: &Writer<S>,
    key: &str,
    s: &Staged,
    cond: &Precondition,
) -> Result<String, StoreError> {
    let fs_err = |e: FsError| StoreError::Other(e.to_string());
    let p = w.part_size() as u64;
    let size = s.len();
    metrics::WRITES.started.inc();
    if size <= p {
        let body = s.chunk(0, size as usize).map_err(fs_err)?;
        let written = w.store.put_object(key, body, cond).await?;
        metrics::WRITES.bytes.add(size);
        return Ok(written.etag);
    }
    let id = w.store.create_upload(key).await?;
    let result = async {
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut parts = Vec::new();
        let mut off = 0u64;
        let mut number = 1u32;
        while off < size {
            let len = p.min(size - off) as usize;
            while inflight.len() >= UPLOAD_PARALLELISM {
                parts.push(inflight.pop_front().expect("non-empty").join().await?);
            }
            // Copies of staged bytes in flight count too; wait for room rather than exceed
            // the budget.
            let res = w.cache.reserve(len).await;
            let body = s.chunk(off, len).map_err(fs_err)?;
            inflight.push_back(spawn_part(w, key, &id, number, body, res));
            off += len as u64;
            number += 1;
        }
        while let Some(f) = inflight.pop_front() {
            parts.push(f.join().await?);
        }
        parts.sort_by_key(|p| p.number);
        if matches!(cond, Precondition::Absent) {
            // See Stream::finish_inner: RGW ignores the condition at completion.
            match w.store.head(key).await {
                Ok(_) => return Err(StoreError::PreconditionFailed),
                Err(StoreError::NotFound) | Err(StoreError::AccessDenied { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        w.store.complete_upload(key, &id, &parts, cond).await
    }
    .await;
    match result {
        Ok(written) => Ok(written.etag),
        Err(e) => {
            if let Err(ae) = w.store.abort_upload(key, &id).await {
                tracing::warn!(key, upload_id = %id, error = %ae, "cannot abort the multipart upload");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const P: u64 = MIN_PART_SIZE;

    fn writer(budget: usize) -> (Writer<MemoryStore>, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let w = Writer {
            store: store.clone(),
            cache: BlockCache::new(budget),
            cfg: WriteConfig {
                part_size: P,
                staging_dir: None,
            },
        };
        (w, store)
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// Writes `d` front to back in 1 MiB writes.
    async fn write_all(f: &WriteFile, w: &Writer<MemoryStore>, d: &[u8]) {
        for (i, c) in d.chunks(1 << 20).enumerate() {
            f.write(w, (i << 20) as u64, c).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_stream_uploads_parts_behind_the_window_and_completes_at_commit() {
        // Budget 40 MiB: window = max(2 parts, 10 MiB) = 10 MiB.
        let (w, store) = writer(40 << 20);
        let f = WriteFile::new("k".into());
        let d = data((7 * P + 123) as usize, 1);
        write_all(&f, &w, &d).await;
        assert_eq!(
            store.uploads_in_progress(),
            1,
            "a multipart upload under way"
        );
        assert!(store.get("k").is_none(), "nothing visible before commit");
        // The head is still held: a fix-up at the start is honoured.
        f.write(&w, 10, b"HEADER").await.unwrap();
        // So is the window behind the write point.
        f.write(&w, 6 * P, b"recent").await.unwrap();
        f.commit(&w).await.unwrap();
        let mut want = d.clone();
        want[10..16].copy_from_slice(b"HEADER");
        want[6 * P as usize..6 * P as usize + 6].copy_from_slice(b"recent");
        assert_eq!(store.get("k").unwrap(), want);
        assert_eq!(store.uploads_in_progress(), 0);
        assert_eq!(w.cache.held(), 0, "every byte given back");
    }

    #[tokio::test]
    async fn a_write_into_uploaded_bytes_fails_and_nothing_appears() {
        let (w, store) = writer(40 << 20);
        let f = WriteFile::new("k".into());
        write_all(&f, &w, &data((7 * P) as usize, 2)).await;
        // Part 2 ([P, 2P)) went out long ago.
        let e = f.write(&w, P + 5, b"late").await.unwrap_err();
        assert!(matches!(e, FsError::Io(_)), "{e:?}");
        // The file can no longer be what the app wrote: it fails whole.
        assert!(f.write(&w, 7 * P, b"more").await.is_err());
        assert!(f.commit(&w).await.is_err());
        assert!(store.get("k").is_none());
        assert_eq!(store.uploads_in_progress(), 0, "the upload is aborted");
        assert_eq!(w.cache.held(), 0);
    }

    #[tokio::test]
    async fn out_of_order_early_is_staged_and_uploaded_whole() {
        let (w, store) = writer(64 << 20);
        let f = WriteFile::new("db".into());
        // A database's pattern: page 3, page 1, page 2, then page 1 again.
        f.write(&w, 8192, &[3; 4096]).await.unwrap();
        f.write(&w, 0, &[1; 4096]).await.unwrap();
        f.write(&w, 4096, &[2; 4096]).await.unwrap();
        f.write(&w, 0, &[9; 10]).await.unwrap();
        assert_eq!(
            f.read(4090, 12).await.unwrap(),
            [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
        );
        f.commit(&w).await.unwrap();
        let got = store.get("db").unwrap();
        assert_eq!(got.len(), 12288);
        assert_eq!(&got[..11], &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 1]);
        assert_eq!(got[8192], 3);
        // The staged bytes are kept after commit: the next change replaces this version.
        f.write(&w, 12288, &[4; 100]).await.unwrap();
        f.commit(&w).await.unwrap();
        assert_eq!(store.get("db").unwrap().len(), 12388);
        // Changed elsewhere meanwhile: the next upload is refused, nothing overwritten.
        store.put("db", "someone else");
        f.write(&w, 0, &[5]).await.unwrap();
        assert!(f.commit(&w).await.is_err());
        assert_eq!(&store.get("db").unwrap()[..], b"someone else");
    }

    #[tokio::test]
    async fn a_staged_file_beyond_the_budget_fails_with_enospc() {
        let (w, store) = writer(16 << 20);
        let f = WriteFile::new("big".into());
        f.write(&w, 1 << 20, &[1; 100]).await.unwrap(); // a hole first: staged
        let mut failed = None;
        for i in 0..32u64 {
            if let Err(e) = f.write(&w, i << 20, &vec![7; 1 << 20]).await {
                failed = Some(e);
                break;
            }
        }
        assert!(matches!(failed, Some(FsError::NoSpace)), "{failed:?}");
        f.abort(&w, "test").await;
        assert!(store.get("big").is_none());
    }

    #[tokio::test]
    async fn a_name_taken_meanwhile_is_never_overwritten() {
        let (w, store) = writer(64 << 20);
        for (len, key) in [(100usize, "small"), ((3 * P) as usize, "large")] {
            let f = WriteFile::new(key.into());
            write_all(&f, &w, &data(len, 3)).await;
            store.put(key, "first");
            assert!(f.commit(&w).await.is_err(), "{key}");
            assert_eq!(&store.get(key).unwrap()[..], b"first", "{key}");
        }
        assert_eq!(
            store.uploads_in_progress(),
            0,
            "the loser's upload is aborted"
        );
    }
}
