//! The filesystem, free of FUSE types: inodes, listings, handles and reads over an
//! `ObjectStore`. The FUSE adapter (`crate::fuse`) only translates calls and replies.

pub mod dirs;
pub mod inodes;
pub mod names;
#[cfg(test)]
mod proptests;
pub mod read;
#[cfg(test)]
mod read_faults;
#[cfg(test)]
mod tests;
pub mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::BlockCache;
use crate::store::{ListFrom, ObjectStore, Precondition, StoreError};
use crate::util::lock;
use dirs::{DirCache, DirEntry, HiddenLog, Listing};
use inodes::{Ino, Inode, InodeTable, Kind, ObjStat, ROOT};
use read::FileHandle;
use write::{WriteConfig, WriteFile, Writer};

/// Settings of the filesystem core.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Mount prefix: "" or ending in `/`.
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long attributes and listings are trusted.
    pub metadata_ttl: Duration,
    /// How long "no such file" answers are trusted (by us and the kernel).
    pub negative_ttl: Duration,
    /// Cache block size (bytes).
    pub block_size: u64,
    /// Largest single ranged GET (bytes); sequential reads fetch parts of this size.
    pub part_size: u64,
    /// Most bytes fetched ahead of a sequential reader.
    pub max_prefetch: u64,
    /// Attempts of a ranged GET whose failure is transient.
    pub read_attempts: u32,
    /// Longest wait for the next bytes of a response body.
    pub request_timeout: Duration,
    /// Subdirectories listed ahead when a directory is first read (0: none).
    pub prefetch_listings: usize,
    /// Apps may create new files and directories.
    pub allow_write: bool,
    pub write: WriteConfig,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            prefix: String::new(),
            uid: 0,
            gid: 0,
            file_mode: 0o444,
            dir_mode: 0o555,
            metadata_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            block_size: 64 << 10,
            part_size: 8 << 20,
            max_prefetch: 64 << 20,
            read_attempts: 4,
            request_timeout: Duration::from_secs(30),
            prefetch_listings: 256,
            allow_write: false,
            write: WriteConfig::default(),
        }
    }
}

/// An open file: its handle, whether the kernel may keep its cached pages (same version as
/// the last open), and whether the version differs from the attributes the kernel was last
/// given (it must drop them, or it would read with the old size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    pub keep_cache: bool,
    pub attrs_changed: bool,
}

/// The page size of the kernel's page cache.
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// File attributes as the filesystem reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    #[error("object changed or was deleted since it was opened")]
    Stale,
    #[error("the kernel's file size is not that of the version this file reads")]
    SizeMismatch,
    /// The object was replaced while this inode's files are open: look the name up again.
    #[error("object replaced by a new version; look it up again")]
    Replaced,
    #[error("access denied: {0}")]
    Access(String),
    #[error("file exists")]
    Exists,
    /// A change the mount's flags do not allow (the log names the flag).
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("no space for the file being written")]
    NoSpace,
    #[error("file too large")]
    TooBig,
    #[error("invalid argument")]
    Invalid,
    #[error("file name too long")]
    NameTooLong,
    #[error("I/O error: {0}")]
    Io(String),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::Replaced => libc::ESTALE,
            FsError::Stale | FsError::SizeMismatch | FsError::Io(_) => libc::EIO,
            FsError::Access(_) => libc::EACCES,
            FsError::Exists => libc::EEXIST,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::NoSpace => libc::ENOSPC,
            FsError::TooBig => libc::EFBIG,
            FsError::Invalid => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => FsError::NotFound,
            StoreError::PreconditionFailed => FsError::Stale,
            StoreError::AccessDenied { .. } | StoreError::Credentials(_) => {
                FsError::Access(e.to_string())
            }
            other => FsError::Io(other.to_string()),
        }
    }
}

/// One entry of a directory read, at position `offset` (the kernel's cookie for it).
#[derive(Clone, Debug)]
pub struct ReaddirEntry {
    pub offset: u64,
    pub name: Arc<str>,
    pub kind: Kind,
    /// Index into the listing, or `None` for "." and "..".
    entry: Option<usize>,
}

impl ReaddirEntry {
    /// Whether readdirplus counts a kernel reference for this entry ("." and ".." take none).
    pub fn is_counted(&self) -> bool {
        self.entry.is_some()
    }
}

struct DirHandle {
    ino: Ino,
    parent: Ino,
    listing: Arc<Listing>,
}

pub struct Fs<S> {
    store: Arc<S>,
    cfg: FsConfig,
    inodes: Mutex<InodeTable>,
    dirs: Arc<DirCache>,
    /// Names recently found missing, so repeated probes (PATH or import searches) are cheap.
    negative: Mutex<HashMap<(Ino, Arc<str>), Instant>>,
    hidden: Arc<HiddenLog>,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dir_handles: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    cache: Arc<BlockCache>,
    mounted_at: SystemTime,
    writer: Writer<S>,
    /// Files being written, by inode, until their last handle is closed.
    writing: Mutex<HashMap<Ino, Arc<WriteFile>>>,
    /// Open handles of files being written.
    write_handles: Mutex<HashMap<u64, WriteHandle>>,
    /// Uploads started by a release (nobody waits for them): awaited at unmount.
    background: Mutex<tokio::task::JoinSet<()>>,
}

/// An open handle on a file being written.
#[derive(Clone)]
struct WriteHandle {
    ino: Ino,
    file: Arc<WriteFile>,
    writable: bool,
}

const NEGATIVE_MAX: usize = 100_000;
/// Keys asked for when probing whether a name is a directory: enough to get a small
/// directory whole, few enough to stay as fast as a one-key LIST.
const PROBE_LIST_KEYS: i32 = 100;
/// Subdirectory listings fetched at once when listing ahead (small requests: the server
/// handles many in parallel).
const LISTING_PREFETCH_PARALLELISM: usize = 16;

impl<S: ObjectStore> Fs<S> {
    pub fn new(store: Arc<S>, cfg: FsConfig, cache: Arc<BlockCache>) -> Arc<Self> {
        Arc::new(Fs {
            inodes: Mutex::new(InodeTable::new(&cfg.prefix)),
            dirs: Arc::new(DirCache::new(cfg.metadata_ttl)),
            negative: Mutex::new(HashMap::new()),
            hidden: Arc::default(),
            files: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            writer: Writer {
                store: store.clone(),
                cache: cache.clone(),
                cfg: cfg.write.clone(),
            },
            writing: Mutex::new(HashMap::new()),
            write_handles: Mutex::new(HashMap::new()),
            background: Mutex::new(tokio::task::JoinSet::new()),
            store,
            cfg,
            cache,
            mounted_at: SystemTime::now(),
        })
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    /// Inodes currently known (for tests and diagnostics).
    pub fn inode_count(&self) -> usize {
        lock(&self.inodes).len()
    }

    /// For logs: the path of `ino` inside the mount (`/` for the root), with `name` appended
    /// if given; an inode no longer known shows as `<inode N>`.
    pub fn describe(&self, ino: Ino, name: Option<&str>) -> String {
        let key = lock(&self.inodes).get(ino).map(|i| i.key.clone());
        let mut s = match key {
            Some(key) => {
                let rel = key.strip_prefix(self.cfg.prefix.as_str()).unwrap_or(&key);
                format!("/{}", rel.trim_end_matches('/'))
            }
            None => format!("<inode {ino}>"),
        };
        if let Some(n) = name {
            if !s.ends_with('/') {
                s.push('/');
            }
            s.push_str(n);
        }
        s
    }

    fn attr_of(&self, ino: Ino, node: &Inode) -> Attr {
        let being_written = lock(&self.writing).get(&ino).cloned();
        if let Some(wf) = being_written {
            return Attr {
                ino,
                kind: Kind::File,
                size: wf.size(),
                mtime: wf.mtime(),
                perm: self.cfg.file_mode,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
            };
        }
        match (&node.kind, &node.stat) {
            (Kind::File, Some(st)) => Attr {
                ino,
                kind: Kind::File,
                size: st.size,
                mtime: st.mtime,
                perm: self.cfg.file_mode,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
            },
            _ => Attr {
                ino,
                kind: node.kind,
                size: 0,
                mtime: self.mounted_at,
                perm: if node.kind == Kind::Dir {
                    self.cfg.dir_mode
                } else {
                    self.cfg.file_mode
                },
                uid: self.cfg.uid,
                gid: self.cfg.gid,
            },
        }
    }

    fn node(&self, ino: Ino) -> Result<Inode, FsError> {
        lock(&self.inodes)
            .get(ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    fn dir_node(&self, ino: Ino) -> Result<Inode, FsError> {
        let node = self.node(ino)?;
        if node.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(node)
    }

    fn child_key(dir: &Inode, name: &str, kind: Kind) -> String {
        match kind {
            Kind::File => format!("{}{name}", dir.key),
            Kind::Dir => format!("{}{name}/", dir.key),
        }
    }

    /// Records an entry as known to the kernel (one lookup reference) and returns its
    /// attributes, trusted until the TTL counted from when S3 said so (`as_of`), so a cached
    /// listing or an old directory snapshot cannot stretch the TTL.
    fn remember(&self, parent: Ino, dir: &Inode, e: &DirEntry, as_of: Instant) -> Attr {
        let key = Self::child_key(dir, &e.name, e.kind);
        let valid_until = as_of + self.cfg.metadata_ttl;
        let mut t = lock(&self.inodes);
        let (ino, node) = t.upsert(parent, &e.name, &key, e.kind, e.stat.clone(), valid_until);
        self.attr_of(ino, node)
    }

    /// Looks `name` up in `parent`, counting one kernel reference on success.
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let dir = self.dir_node(parent)?;
        if names::check_name(name).is_err() {
            return Err(FsError::NotFound);
        }
        // A file being written is not in S3's listings yet.
        if let Some(attr) = self.lookup_writing(parent, &dir, name) {
            return Ok(attr);
        }
        if let Some(listing) = self.dirs.fresh(&dir.key) {
            let e = listing.find(name).ok_or(FsError::NotFound)?;
            return Ok(self.remember(parent, &dir, e, listing.fetched));
        }
        let neg_key = (parent, Arc::<str>::from(name));
        if lock(&self.negative)
            .get(&neg_key)
            .is_some_and(|t| t.elapsed() < self.cfg.negative_ttl)
        {
            return Err(FsError::NotFound);
        }
        let asked = Instant::now();
        match self.probe(&dir, name).await {
            Ok(entry) => Ok(self.remember(parent, &dir, &entry, asked)),
            Err(FsError::NotFound) => {
                if !self.cfg.negative_ttl.is_zero() {
                    let mut neg = lock(&self.negative);
                    // Bounded: past the limit, old answers are dropped wholesale.
                    if neg.len() >= NEGATIVE_MAX {
                        let ttl = self.cfg.negative_ttl;
                        neg.retain(|_, t| t.elapsed() < ttl);
                        if neg.len() >= NEGATIVE_MAX {
                            neg.clear();
                        }
                    }
                    neg.insert(neg_key, Instant::now());
                }
                Err(FsError::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    /// Asks S3 whether `name` under `dir` is a directory (any key below `name/`) or a file.
    /// Both requests go out at once; the directory wins, as in listings.
    async fn probe(&self, dir: &Inode, name: &str) -> Result<DirEntry, FsError> {
        let file_key = Self::child_key(dir, name, Kind::File);
        let dir_key = Self::child_key(dir, name, Kind::Dir);
        let asked = Instant::now();
        let (head, list) = tokio::join!(
            self.store.head(&file_key),
            self.store
                .list_page(&dir_key, true, ListFrom::Start, Some(PROBE_LIST_KEYS))
        );
        let list = list?;
        if !list.objects.is_empty() || !list.prefixes.is_empty() {
            // A small directory came back whole: keep it, so the lookups inside it that
            // usually follow need no request.
            if let Some(l) = Listing::from_complete_page(&dir_key, &list, asked, &self.hidden) {
                self.dirs.insert(dir_key.as_str().into(), Arc::new(l));
            }
            if head.is_ok() {
                self.hidden
                    .hidden(&file_key, names::Hidden::ShadowedByDirectory);
            }
            return Ok(DirEntry {
                name: name.into(),
                kind: Kind::Dir,
                stat: None,
            });
        }
        match head {
            Ok(meta) => Ok(DirEntry {
                name: name.into(),
                kind: Kind::File,
                stat: Some(ObjStat {
                    size: meta.size,
                    mtime: meta.last_modified,
                    etag: meta.etag.as_str().into(),
                }),
            }),
            // With ListBucket granted only under a prefix, S3 answers HEAD of a missing key
            // with 403: the LIST above worked, so this is "not found".
            Err(StoreError::AccessDenied { code, .. }) => {
                tracing::debug!(key = %file_key, %code, "HEAD denied, treated as not found");
                Err(FsError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Attributes of `ino`, asking S3 again once they are older than the TTL.
    pub async fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        let node = self.node(ino)?;
        // An inode with open files is the version they read: the kernel sends fstat without
        // the file handle and never retries it on ESTALE, so it gets that version's
        // attributes. A path lookup after the TTL finds a newer version under a new inode.
        if node.kind == Kind::Dir
            || node.valid_until > Instant::now()
            || node.open_handles > 0
            || lock(&self.writing).contains_key(&ino)
        {
            return Ok(self.attr_of(ino, &node));
        }
        let node = self.refresh_file(ino, &node).await?;
        Ok(self.attr_of(ino, &node))
    }

    async fn refresh_file(&self, ino: Ino, node: &Inode) -> Result<Inode, FsError> {
        let meta = self.store.head(&node.key).await?;
        let stat = ObjStat {
            size: meta.size,
            mtime: meta.last_modified,
            etag: meta.etag.as_str().into(),
        };
        let mut t = lock(&self.inodes);
        let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
        if n.pinned_other_than(&stat.etag) {
            // This inode stays the version its open files read; the kernel looks the name up
            // again on ESTALE, and the lookup gives the new version a new inode.
            tracing::debug!(key = %node.key, "object replaced while open; the name gets a new inode");
            n.valid_until = Instant::now();
            return Err(FsError::Replaced);
        }
        n.stat = Some(stat);
        n.valid_until = Instant::now() + self.cfg.metadata_ttl;
        Ok(n.clone())
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        lock(&self.inodes).forget(ino, n);
    }

    /// The listing of directory `dir`, from the cache while fresh. The first time a
    /// listing is used, its subdirectories are listed ahead in the background, so a tree
    /// walk (`find`, `du`, `ls -R`) finds each level already listed.
    async fn listing(&self, dir: &Inode) -> Result<Arc<Listing>, FsError> {
        let listing = self.dirs.get(&*self.store, &dir.key, &self.hidden).await?;
        if self.cfg.prefetch_listings > 0
            && !listing
                .children_prefetched
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let children: Vec<String> = listing
                .entries
                .iter()
                .filter(|e| e.kind == Kind::Dir)
                .take(self.cfg.prefetch_listings)
                .map(|e| format!("{}{}/", dir.key, e.name))
                .collect();
            if !children.is_empty() {
                let (store, dirs, hidden) =
                    (self.store.clone(), self.dirs.clone(), self.hidden.clone());
                tokio::spawn(async move {
                    use futures::StreamExt;
                    futures::stream::iter(children)
                        .for_each_concurrent(LISTING_PREFETCH_PARALLELISM, |k| {
                            let (store, dirs, hidden) = (&store, &dirs, &hidden);
                            async move {
                                // One page each, kept only when it is the whole directory:
                                // listing ahead must stay cheap and bounded, whatever lies
                                // below (a huge subdirectory is listed when it is used). A
                                // failure here only means the directory is listed on use.
                                if dirs.fresh(&k).is_some() {
                                    return;
                                }
                                let asked = Instant::now();
                                if let Ok(page) =
                                    store.list_page(&k, true, ListFrom::Start, None).await
                                    && let Some(l) =
                                        Listing::from_complete_page(&k, &page, asked, hidden)
                                {
                                    dirs.insert(k.as_str().into(), Arc::new(l));
                                }
                            }
                        })
                        .await;
                });
            }
        }
        Ok(listing)
    }

    /// Opens directory `ino`: its listing is taken once here, so offsets stay stable
    /// across the readdir calls of this handle.
    pub async fn opendir(&self, ino: Ino) -> Result<u64, FsError> {
        let dir = self.dir_node(ino)?;
        let listing = self.with_files_being_written(&dir, self.listing(&dir).await?);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dir_handles).insert(
            fh,
            Arc::new(DirHandle {
                ino,
                parent: dir.parent,
                listing,
            }),
        );
        Ok(fh)
    }

    fn dir_handle(&self, fh: u64) -> Result<Arc<DirHandle>, FsError> {
        lock(&self.dir_handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Up to `max` entries from position `offset` ("." and ".." first).
    pub fn readdir(&self, fh: u64, offset: u64, max: usize) -> Result<Vec<ReaddirEntry>, FsError> {
        let h = self.dir_handle(fh)?;
        let total = h.listing.entries.len() as u64 + 2;
        let out = (offset..total)
            .take(max)
            .map(|pos| match pos {
                0 => ReaddirEntry {
                    offset: 1,
                    name: ".".into(),
                    kind: Kind::Dir,
                    entry: None,
                },
                1 => ReaddirEntry {
                    offset: 2,
                    name: "..".into(),
                    kind: Kind::Dir,
                    entry: None,
                },
                p => {
                    let e = &h.listing.entries[(p - 2) as usize];
                    ReaddirEntry {
                        offset: p + 1,
                        name: e.name.clone(),
                        kind: e.kind,
                        entry: Some((p - 2) as usize),
                    }
                }
            })
            .collect();
        Ok(out)
    }

    /// An inode number for a plain readdir entry, which takes no kernel reference: the
    /// known inode if there is one, else a stable number outside the allocated range.
    pub fn readdir_ino(&self, fh: u64, e: &ReaddirEntry) -> u64 {
        let Ok(h) = self.dir_handle(fh) else {
            return 0;
        };
        match (e.entry, &*e.name) {
            (None, ".") => h.ino,
            (None, _) => h.parent,
            (Some(_), name) => {
                let t = lock(&self.inodes);
                if let Some(ino) = t.lookup_name(h.ino, name) {
                    return ino;
                }
                use std::hash::{BuildHasher, BuildHasherDefault};
                let hasher =
                    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
                (1 << 63) | hasher.hash_one((h.ino, name))
            }
        }
    }

    /// For readdirplus: the attributes of an entry, counting one kernel reference for
    /// real entries ("." and ".." take none). Call `forget(ino, 1)` if the entry could
    /// not be sent.
    pub fn readdirplus_attr(&self, fh: u64, e: &ReaddirEntry) -> Result<Attr, FsError> {
        let h = self.dir_handle(fh)?;
        match e.entry {
            None => {
                let ino = if &*e.name == "." { h.ino } else { h.parent };
                let node = self.node(ino)?;
                Ok(self.attr_of(ino, &node))
            }
            Some(i) => {
                let dir = self.node(h.ino)?;
                Ok(self.remember(h.ino, &dir, &h.listing.entries[i], h.listing.fetched))
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dir_handles).remove(&fh);
    }

    /// Opens a file for reading, pinning the object version (ETag) it will read.
    pub async fn open(&self, ino: Ino, write: bool, truncate: bool) -> Result<Opened, FsError> {
        let being_written = lock(&self.writing).get(&ino).cloned();
        if let Some(file) = being_written {
            if write && truncate {
                file.truncate(&self.writer, 0).await?;
            }
            return Ok(Opened {
                fh: self.new_handle(ino, file, write),
                keep_cache: false,
                attrs_changed: false,
            });
        }
        if write {
            return Err(self.refuse_change(ino, "open for writing"));
        }
        let mut node = self.node(ino)?;
        if node.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let told = node.stat.as_ref().map(|s| s.etag.clone());
        if node.valid_until <= Instant::now() || node.stat.is_none() {
            node = self.refresh_file(ino, &node).await?;
        }
        let refreshed = node.stat.clone().ok_or(FsError::NotFound)?;
        let (stat, keep_cache) = {
            let mut t = lock(&self.inodes);
            let n = t.get_mut(ino).ok_or(FsError::NotFound)?;
            // Pin what the inode says now, which is what the kernel is told: a lookup may
            // have moved it to a newer version since the refresh above.
            let stat = if n.open_handles == 0 {
                n.stat.clone().ok_or(FsError::NotFound)?
            } else {
                refreshed
            };
            if n.pinned_other_than(&stat.etag) {
                // Replaced between the refresh and now: as in refresh_file.
                return Err(FsError::Replaced);
            }
            // The kernel may keep cached pages only if they are of the version opened now.
            let same = n.opened_etag.as_deref() == Some(&*stat.etag);
            n.opened_etag = Some(stat.etag.clone());
            n.open_handles += 1;
            (stat, same)
        };
        let attrs_changed = told.as_deref() != Some(&*stat.etag);
        let handle = Arc::new(FileHandle::new(ino, node.key.clone(), stat));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, handle);
        Ok(Opened {
            fh,
            keep_cache,
            attrs_changed,
        })
    }

    /// Attributes of the version an open file handle reads (for fstat).
    pub fn handle_attr(&self, fh: u64) -> Option<Attr> {
        let written = lock(&self.write_handles).get(&fh).cloned();
        if let Some(w) = written {
            let node = self.node(w.ino).ok()?;
            return Some(self.attr_of(w.ino, &node));
        }
        let h = lock(&self.files).get(&fh).cloned()?;
        Some(Attr {
            ino: h.ino,
            kind: Kind::File,
            size: h.stat.size,
            mtime: h.stat.mtime,
            perm: self.cfg.file_mode,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        })
    }

    pub fn release(self: &Arc<Self>, fh: u64) {
        let written = lock(&self.write_handles).remove(&fh);
        if let Some(w) = written {
            self.release_written(w);
            return;
        }
        let Some(h) = lock(&self.files).remove(&fh) else {
            return;
        };
        if let Some(n) = lock(&self.inodes).get_mut(h.ino) {
            n.open_handles = n.open_handles.saturating_sub(1);
        }
    }

    fn file_handle(&self, fh: u64) -> Result<Arc<FileHandle>, FsError> {
        lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Reads up to `size` bytes at `offset` of the version pinned by handle `fh`, as slices
    /// of cached blocks (in order; empty at end of file).
    ///
    /// `page_cache`: the read fills the kernel's page cache, which never asks beyond the
    /// page holding its idea of the end of file. A request past that page of this version
    /// means the kernel believes the file is longer: a short answer would be padded with
    /// zeros (wrong bytes), so the read fails instead ([`FsError::SizeMismatch`]).
    pub async fn read(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        page_cache: bool,
    ) -> Result<Vec<bytes::Bytes>, FsError> {
        let being_written = lock(&self.write_handles).get(&fh).cloned();
        if let Some(w) = being_written {
            return Ok(vec![w.file.read(offset, size).await?.into()]);
        }
        let h = self.file_handle(fh)?;
        if page_cache && offset + u64::from(size) > h.stat.size.next_multiple_of(page_size()) {
            tracing::warn!(key = %h.key, offset, size, file_size = h.stat.size, "the kernel asks beyond the end of the version this file reads; read fails");
            return Err(FsError::SizeMismatch);
        }
        let open_files = lock(&self.files).len();
        match read::read(
            &self.store,
            &self.cache,
            &self.cfg,
            &h,
            offset,
            size,
            open_files,
        )
        .await
        {
            // NotFound from a GET means the pinned object was deleted: as stale as changed.
            Err(FsError::Stale | FsError::NotFound) => {
                // The object changed or vanished: make the next open look again, and drop
                // blocks of the old version.
                tracing::warn!(key = %h.key, etag = %h.stat.etag, "object changed since open; read fails");
                lock(&self.inodes).invalidate(h.ino);
                self.cache.forget_object(&h.key);
                Err(FsError::Stale)
            }
            other => other,
        }
    }

    /// Drops the cached listing of a directory (tests; future invalidation).
    pub fn invalidate_dir(&self, ino: Ino) {
        if let Ok(n) = self.node(ino) {
            self.dirs.remove(&n.key);
        }
    }

    /// The flags refuse a change to an existing object: EROFS on a read-only mount, else
    /// EPERM, and the log says which flag would allow it.
    fn refuse_change(&self, ino: Ino, what: &'static str) -> FsError {
        if !self.cfg.allow_write {
            return FsError::ReadOnly;
        }
        tracing::info!(
            path = %self.describe(ino, None),
            op = what,
            "changing an existing object needs --allow-overwrite; refused (EPERM)"
        );
        FsError::NotPermitted("changing an existing object needs --allow-overwrite")
    }

    fn check_create(&self, parent: Ino, name: &str) -> Result<Inode, FsError> {
        if !self.cfg.allow_write {
            return Err(FsError::ReadOnly);
        }
        let dir = self.dir_node(parent)?;
        match names::check_name(name) {
            Ok(()) => Ok(dir),
            Err(names::Hidden::TooLong) => Err(FsError::NameTooLong),
            Err(_) => Err(FsError::Invalid),
        }
    }

    /// A name known to the kernel is being created again elsewhere in this mount, or the
    /// kernel's view is behind ours: refuse rather than start a second writer.
    fn taken(&self, parent: Ino, name: &str) -> bool {
        let t = lock(&self.inodes);
        t.lookup_name(parent, name)
            .is_some_and(|ino| lock(&self.writing).contains_key(&ino))
    }

    /// The entry of a file being written under `parent`, counting a kernel reference.
    fn lookup_writing(&self, parent: Ino, dir: &Inode, name: &str) -> Option<Attr> {
        let mut t = lock(&self.inodes);
        let ino = t.lookup_name(parent, name)?;
        if !lock(&self.writing).contains_key(&ino) {
            return None;
        }
        let key = Self::child_key(dir, name, Kind::File);
        let stat = t.get(ino)?.stat.clone();
        let valid_until = Instant::now() + self.cfg.metadata_ttl;
        let (ino, node) = t.upsert(parent, name, &key, Kind::File, stat, valid_until);
        Some(self.attr_of(ino, node))
    }

    /// `listing` with the files being written in `dir` added (they are in S3's listings
    /// only once uploaded).
    fn with_files_being_written(&self, dir: &Inode, listing: Arc<Listing>) -> Arc<Listing> {
        let extra: Vec<DirEntry> = {
            let writing = lock(&self.writing);
            if writing.is_empty() {
                return listing;
            }
            writing
                .values()
                .filter_map(|wf| {
                    let name = wf.key.strip_prefix(&*dir.key)?;
                    if name.is_empty() || name.contains('/') || listing.find(name).is_some() {
                        return None;
                    }
                    Some(DirEntry {
                        name: name.into(),
                        kind: Kind::File,
                        stat: Some(ObjStat {
                            size: wf.size(),
                            mtime: wf.mtime(),
                            etag: "".into(),
                        }),
                    })
                })
                .collect()
        };
        if extra.is_empty() {
            return listing;
        }
        Arc::new(listing.with_extra(extra))
    }

    fn new_handle(&self, ino: Ino, file: Arc<WriteFile>, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.write_handles).insert(
            fh,
            WriteHandle {
                ino,
                file,
                writable,
            },
        );
        fh
    }

    /// Creates a new file `name` in `parent`, open for writing. Nothing exists in S3 until
    /// it is uploaded (at its last close, or at fsync).
    pub async fn create(&self, parent: Ino, name: &str) -> Result<(Attr, u64), FsError> {
        let dir = self.check_create(parent, name)?;
        if self.taken(parent, name) {
            return Err(FsError::Exists);
        }
        let key = Self::child_key(&dir, name, Kind::File);
        let file = Arc::new(WriteFile::new(key.as_str().into()));
        let stat = ObjStat {
            size: 0,
            mtime: file.mtime(),
            etag: "".into(),
        };
        let ino = {
            let mut t = lock(&self.inodes);
            let valid_until = Instant::now() + self.cfg.metadata_ttl;
            let (ino, _) = t.upsert(parent, name, &key, Kind::File, Some(stat), valid_until);
            lock(&self.writing).insert(ino, file.clone());
            ino
        };
        lock(&self.negative).remove(&(parent, Arc::<str>::from(name)));
        let fh = self.new_handle(ino, file, true);
        let attr = self.attr_of(ino, &self.node(ino)?);
        tracing::debug!(key = %key, "file created");
        Ok((attr, fh))
    }

    /// Creates directory `name` in `parent`: a `name/` marker object, so other mounts and
    /// the S3 console see it at once, also while it is empty.
    pub async fn mkdir(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let dir = self.check_create(parent, name)?;
        if self.taken(parent, name) {
            return Err(FsError::Exists);
        }
        let key = Self::child_key(&dir, name, Kind::Dir);
        match self
            .store
            .put_object(&key, bytes::Bytes::new(), &Precondition::Absent)
            .await
        {
            Ok(_) => {}
            // The marker is there already: the directory exists.
            Err(StoreError::PreconditionFailed) => return Err(FsError::Exists),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "mkdir failed");
                return Err(e.into());
            }
        }
        lock(&self.negative).remove(&(parent, Arc::<str>::from(name)));
        self.dirs.remove(&dir.key);
        let entry = DirEntry {
            name: name.into(),
            kind: Kind::Dir,
            stat: None,
        };
        Ok(self.remember(parent, &dir, &entry, Instant::now()))
    }

    fn write_handle(&self, fh: u64) -> Result<WriteHandle, FsError> {
        lock(&self.write_handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Writes `data` at `offset` through handle `fh`.
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        pid: Option<u32>,
    ) -> Result<u32, FsError> {
        let h = self.write_handle(fh)?;
        if !h.writable {
            return Err(FsError::BadHandle);
        }
        if let Some(pid) = pid {
            h.file.note_writer(pid);
        }
        h.file.write(&self.writer, offset, data).await?;
        Ok(data.len() as u32)
    }

    /// Handles of `file` that may write, open now.
    fn writers_of(&self, file: &Arc<WriteFile>) -> usize {
        lock(&self.write_handles)
            .values()
            .filter(|h| h.writable && Arc::ptr_eq(&h.file, file))
            .count()
    }

    /// close(): the close of the last handle that may write uploads the file, and its
    /// result is close()'s.
    pub async fn flush(&self, fh: u64, pid: Option<u32>) -> Result<(), FsError> {
        let Ok(h) = self.write_handle(fh) else {
            return Ok(());
        };
        if !h.writable || self.writers_of(&h.file) > 1 {
            return Ok(());
        }
        // A close before anything was written is usually that of a descriptor dup'ed first
        // (a shell redirection, dd): the file is uploaded at a later close, or at release.
        if !h.file.touched() {
            return Ok(());
        }
        // Nor is a close by a process that never wrote to the file (a child that inherited
        // the descriptor, closing it at exec): the writer's own close uploads it, or release.
        if let Some(pid) = pid
            && !h.file.written_by(pid)
        {
            return Ok(());
        }
        self.commit(h.ino, &h.file).await
    }

    /// fsync(): uploads the file now (see docs/semantics.md for what follows).
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        match self.write_handle(fh) {
            Ok(h) => self.commit(h.ino, &h.file).await,
            Err(_) => Ok(()),
        }
    }

    async fn commit(&self, ino: Ino, file: &Arc<WriteFile>) -> Result<(), FsError> {
        if !file.dirty().await {
            return Ok(());
        }
        let result = file.commit(&self.writer).await;
        let parent_key = &file.key[..file.key.rfind('/').map_or(0, |i| i + 1)];
        // Listed again when next read: the new object is in S3's listing now.
        self.dirs.remove(parent_key);
        let mut t = lock(&self.inodes);
        if let Some(n) = t.get_mut(ino) {
            match &result {
                Ok(etag) => {
                    n.stat = Some(ObjStat {
                        size: file.size(),
                        mtime: file.mtime(),
                        etag: etag.as_str().into(),
                    });
                    n.valid_until = Instant::now() + self.cfg.metadata_ttl;
                }
                // Nothing was written: the next getattr asks S3 (and gets ENOENT).
                Err(_) => n.valid_until = Instant::now(),
            }
        }
        result.map(|_| ())
    }

    /// A handle of a file being written was released: a file whose last writer went away
    /// without a flush is uploaded in the background; one nobody holds any more leaves the
    /// table of files being written.
    fn release_written(self: &Arc<Self>, h: WriteHandle) {
        let remaining = lock(&self.write_handles)
            .values()
            .filter(|o| Arc::ptr_eq(&o.file, &h.file))
            .count();
        if remaining > 0 && (!h.writable || self.writers_of(&h.file) > 0) {
            return;
        }
        let fs = self.clone();
        lock(&self.background).spawn(async move {
            // Usually done already by the flush of the same close.
            let _ = fs.commit(h.ino, &h.file).await;
            if remaining == 0 {
                let mut writing = lock(&fs.writing);
                if writing.get(&h.ino).is_some_and(|f| Arc::ptr_eq(f, &h.file)) {
                    writing.remove(&h.ino);
                }
            }
        });
    }

    /// Changes attributes. Size changes are writes; mode, owner and times are accepted on
    /// a writable mount and not kept (S3 has no place for them), except the time of a file
    /// being written, which it reports until it is uploaded.
    pub async fn setattr(
        &self,
        ino: Ino,
        size: Option<u64>,
        mtime: Option<SystemTime>,
        other: bool,
    ) -> Result<Attr, FsError> {
        let node = self.node(ino)?;
        let being_written = lock(&self.writing).get(&ino).cloned();
        match &being_written {
            Some(file) => {
                if let Some(size) = size {
                    file.truncate(&self.writer, size).await?;
                }
                if let Some(t) = mtime {
                    file.set_mtime(t);
                }
            }
            None if size.is_some() => {
                if node.kind == Kind::Dir {
                    return Err(FsError::IsDir);
                }
                return Err(self.refuse_change(ino, "truncate"));
            }
            None if !self.cfg.allow_write && (mtime.is_some() || other) => {
                return Err(FsError::ReadOnly);
            }
            None => {}
        }
        self.getattr(ino).await
    }

    /// Before unmounting: uploads of closed files finish; files still open for writing are
    /// abandoned (nothing appears under their names). Returns their keys.
    pub async fn shutdown(&self) -> Vec<String> {
        let mut set = std::mem::take(&mut *lock(&self.background));
        while set.join_next().await.is_some() {}
        let open: Vec<Arc<WriteFile>> = lock(&self.writing).values().cloned().collect();
        let mut aborted = Vec::new();
        for file in open {
            if file.dirty().await {
                file.abort(&self.writer, "unmounted while open for writing")
                    .await;
                tracing::warn!(key = %file.key, "file still open for writing at unmount: upload abandoned, nothing written under its name");
                aborted.push(file.key.to_string());
            }
        }
        aborted
    }

    pub fn root(&self) -> Ino {
        ROOT
    }
}
