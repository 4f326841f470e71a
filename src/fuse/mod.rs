//! Thin FUSE adapter: turns fuser callbacks into calls on `fs::Fs` and replies from tokio
//! tasks, so no FUSE thread ever blocks on S3.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::inodes::Kind;
use crate::fs::{Attr, Fs, FsError};
use crate::metrics::{self, FuseOp};
use crate::store::ObjectStore;
use crate::util::RateLimit;

/// Entries prepared per readdir call: more than a kernel page of entries holds, few enough
/// not to build thousands for each call on a huge directory.
const READDIR_BATCH: usize = 512;

/// Largest read the kernel may send us (also its readahead unit).
pub const MAX_READ: u32 = 1 << 20;

pub struct FuseAdapter<S> {
    fs: Arc<Fs<S>>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    negative_ttl: Duration,
    reply_fd: ReplyFd,
    notify: Notify,
}

/// The session's notifier, set once the session exists: tells the kernel to drop cached
/// attributes and pages of a file whose version changed.
pub type Notify = Arc<OnceLock<fuser::Notifier>>;

/// Makes the kernel drop the cached attributes and pages of `ino` (it asks again before
/// the next read). Off the async workers: the kernel may wait for reads in flight on that
/// file to finish first.
async fn invalidate_inode(notify: &Notify, ino: u64) {
    let Some(n) = notify.get().cloned() else {
        return;
    };
    let done = tokio::task::spawn_blocking(move || n.inval_inode(INodeNo(ino), 0, 0)).await;
    if let Ok(Err(e)) = done {
        tracing::debug!(ino, error = %e, "cannot invalidate the kernel's cache of the file");
    }
}

/// A duplicate of the session's /dev/fuse descriptor, set once the session exists, used to
/// answer reads with one vectored write of the cached blocks. fuser's `ReplyData` would copy
/// every read into a new Vec first.
pub type ReplyFd = Arc<OnceLock<OwnedFd>>;

/// Writes a successful read reply (`fuse_out_header` + data) straight to /dev/fuse.
fn write_read_reply(fd: &OwnedFd, unique: u64, parts: &[Bytes]) -> std::io::Result<()> {
    let len = 16 + parts.iter().map(Bytes::len).sum::<usize>();
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    // error = 0 (bytes 4..8)
    header[8..16].copy_from_slice(&unique.to_ne_bytes());
    let mut iov = Vec::with_capacity(parts.len() + 1);
    iov.push(libc::iovec {
        iov_base: header.as_ptr() as *mut libc::c_void,
        iov_len: header.len(),
    });
    for p in parts.iter().filter(|p| !p.is_empty()) {
        iov.push(libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        });
    }
    // SAFETY: every iovec points into a buffer (header, parts) that outlives the call; the
    // kernel only reads from them. /dev/fuse takes a whole reply in one write.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != len {
        return Err(std::io::Error::other(format!(
            "short write to /dev/fuse: {n} of {len}"
        )));
    }
    Ok(())
}

impl<S: ObjectStore> FuseAdapter<S> {
    /// Answers a change this release does not make (delete, rename, links, xattrs): EROFS on
    /// a read-only mount, EPERM with --allow-write.
    fn refuse(&self, op: FuseOp) -> Errno {
        let e = if self.fs.config().allow_write {
            Errno::EPERM
        } else {
            Errno::EROFS
        };
        done(op, Instant::now(), e.code());
        e
    }

    /// `reply_fd` and `notify` may be filled in after the session is created; until then
    /// replies go through fuser and no invalidation is sent.
    pub fn new(
        fs: Arc<Fs<S>>,
        rt: tokio::runtime::Handle,
        reply_fd: ReplyFd,
        notify: Notify,
    ) -> Self {
        let ttl = fs.config().metadata_ttl;
        let negative_ttl = fs.config().negative_ttl;
        FuseAdapter {
            fs,
            rt,
            ttl,
            negative_ttl,
            reply_fd,
            notify,
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Logs a failed request, once, with its path (or inode and name), operation and errno.
/// Expected answers (ENOENT, EROFS, ...) go to debug; failures to warn, at most once a second
/// per operation and errno (an outage would otherwise log every request), with the number
/// of failures held back since.
/// `path` is only built when the line is written: it takes the inode table's lock, and an
/// error storm (or a negative-lookup flood) must not pay for lines nobody sees.
fn log_error(op: FuseOp, path: impl FnOnce() -> String, e: &FsError) {
    let errno = e.errno();
    let warn = if metrics::is_failure(errno) {
        WARN_LIMIT.admit((op.label(), errno))
    } else {
        None
    };
    if let Some(suppressed) = warn {
        let path = path();
        tracing::warn!(op = op.label(), path, errno, error = %e, suppressed, "request failed");
    } else if tracing::enabled!(tracing::Level::DEBUG) {
        let path = path();
        tracing::debug!(op = op.label(), path, errno, error = %e, "request failed");
    }
}

/// One warning a second per (operation, errno).
static WARN_LIMIT: LazyLock<RateLimit<(&'static str, i32)>> = LazyLock::new(|| RateLimit::new(1));

/// Counts an answered request in the metrics; `errno` 0 for success.
fn done(op: FuseOp, started: Instant, errno: i32) {
    metrics::FUSE.record(op, started.elapsed(), errno);
}

/// Object keys are UTF-8: a name that is not cannot be created.
fn utf8_name(name: &OsStr, op: FuseOp, t0: Instant) -> Option<String> {
    let n = name.to_str().map(str::to_owned);
    if n.is_none() {
        done(op, t0, libc::EINVAL);
    }
    n
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: MAX_READ,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

impl<S: ObjectStore> fuser::Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each setting is best effort: an older kernel keeps its default.
        let _ = config.set_max_write(MAX_READ);
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Listings carry attributes, so `ls -l` needs no lookup per entry; always use it.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Before reading, the kernel checks that its cached attributes are still valid (and
        // asks again once they have expired or were invalidated), and drops cached pages when
        // size or mtime changed: its file size then always matches the version being read.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t0 = Instant::now();
        let Some(name) = name.to_str().map(str::to_owned) else {
            // Keys are UTF-8: a non-UTF-8 name cannot exist.
            done(FuseOp::Lookup, t0, libc::ENOENT);
            reply.error(Errno::ENOENT);
            return;
        };
        let (fs, ttl, neg_ttl) = (self.fs.clone(), self.ttl, self.negative_ttl);
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => {
                    done(FuseOp::Lookup, t0, 0);
                    reply.entry(&ttl, &file_attr(&a), Generation(0))
                }
                // Inode 0 is a negative entry: the kernel remembers the name is missing.
                Err(FsError::NotFound) if !neg_ttl.is_zero() => {
                    let mut none = file_attr(&Attr {
                        ino: 0,
                        kind: Kind::File,
                        size: 0,
                        mtime: std::time::UNIX_EPOCH,
                        perm: 0,
                        uid: 0,
                        gid: 0,
                    });
                    none.ino = INodeNo(0);
                    done(FuseOp::Lookup, t0, libc::ENOENT);
                    reply.entry(&neg_ttl, &none, Generation(0))
                }
                Err(e) => {
                    done(FuseOp::Lookup, t0, e.errno());
                    log_error(FuseOp::Lookup, || fs.describe(parent.0, Some(&name)), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let t0 = Instant::now();
        // fstat of an open file describes the version that file reads.
        if let Some(a) = fh.and_then(|fh| self.fs.handle_attr(fh.0)) {
            done(FuseOp::Getattr, t0, 0);
            reply.attr(&self.ttl, &file_attr(&a));
            return;
        }
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(a) => {
                    done(FuseOp::Getattr, t0, 0);
                    reply.attr(&ttl, &file_attr(&a))
                }
                Err(e) => {
                    done(FuseOp::Getattr, t0, e.errno());
                    log_error(FuseOp::Getattr, || fs.describe(ino.0, None), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let t0 = Instant::now();
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => std::time::SystemTime::now(),
        });
        let other = mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some();
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.setattr(ino.0, size, mtime, other).await {
                Ok(a) => {
                    done(FuseOp::Setattr, t0, 0);
                    reply.attr(&ttl, &file_attr(&a))
                }
                Err(e) => {
                    done(FuseOp::Setattr, t0, e.errno());
                    log_error(FuseOp::Setattr, || fs.describe(ino.0, None), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let t0 = Instant::now();
        // Only regular files have a place in S3.
        if mode & libc::S_IFMT != libc::S_IFREG {
            let e = if self.fs.config().allow_write {
                Errno::EPERM
            } else {
                Errno::EROFS
            };
            done(FuseOp::Create, t0, e.code());
            reply.error(e);
            return;
        }
        let Some(name) = utf8_name(name, FuseOp::Create, t0) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            // A file made by mknod is empty and closed: upload it as it is.
            let r = match fs.create(parent.0, &name).await {
                Ok((a, fh)) => fs.flush(fh, None).await.map(|()| (a, fh)),
                Err(e) => Err(e),
            };
            match r {
                Ok((a, fh)) => {
                    fs.release(fh);
                    done(FuseOp::Create, t0, 0);
                    reply.entry(&ttl, &file_attr(&a), Generation(0))
                }
                Err(e) => {
                    done(FuseOp::Create, t0, e.errno());
                    log_error(FuseOp::Create, || fs.describe(parent.0, Some(&name)), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let t0 = Instant::now();
        let Some(name) = utf8_name(name, FuseOp::Mkdir, t0) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.mkdir(parent.0, &name).await {
                Ok(a) => {
                    done(FuseOp::Mkdir, t0, 0);
                    reply.entry(&ttl, &file_attr(&a), Generation(0))
                }
                Err(e) => {
                    done(FuseOp::Mkdir, t0, e.errno());
                    log_error(FuseOp::Mkdir, || fs.describe(parent.0, Some(&name)), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse(FuseOp::Write));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse(FuseOp::Write));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse(FuseOp::Write));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse(FuseOp::Write));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse(FuseOp::Write));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let t0 = Instant::now();
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || truncate;
        let fs = self.fs.clone();
        let notify = self.notify.clone();
        self.rt.spawn(async move {
            match fs.open(ino.0, write, truncate).await {
                Ok(o) => {
                    done(FuseOp::Open, t0, 0);
                    // The kernel still has the old version's size: make it ask again before
                    // it reads, or it would pad a shorter version with zeros.
                    if o.attrs_changed {
                        invalidate_inode(&notify, ino.0).await;
                    }
                    let mut f = FopenFlags::empty();
                    if o.keep_cache {
                        f |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    reply.opened(FileHandle(o.fh), f)
                }
                Err(e) => {
                    done(FuseOp::Open, t0, e.errno());
                    log_error(FuseOp::Open, || fs.describe(ino.0, None), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let t0 = Instant::now();
        let fs = self.fs.clone();
        let unique = req.unique().0;
        let reply_fd = self.reply_fd.clone();
        let notify = self.notify.clone();
        // O_DIRECT reads bypass the page cache: a short answer is the app's end of file.
        let page_cache = flags.0 & libc::O_DIRECT == 0;
        self.rt.spawn(async move {
            let result = fs.read(fh.0, offset, size, page_cache).await;
            match &result {
                Ok(parts) => {
                    done(FuseOp::Read, t0, 0);
                    let n: usize = parts.iter().map(Bytes::len).sum();
                    metrics::FUSE.bytes_served.add(n as u64);
                }
                Err(e) => done(FuseOp::Read, t0, e.errno()),
            }
            match result {
                Ok(parts) => match reply_fd.get() {
                    Some(fd) => match write_read_reply(fd, unique, &parts) {
                        // Answered: fuser's reply must not answer again (it would send EIO
                        // on drop). Forgetting it leaks no memory, only a reference count.
                        Ok(()) => std::mem::forget(reply),
                        // ENOENT: the request was interrupted; the kernel no longer waits.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => std::mem::forget(reply),
                        Err(e) => {
                            tracing::warn!(error = %e, "direct reply failed; replying through fuser");
                            reply.data(&crate::fs::read::concat(&parts))
                        }
                    },
                    None => reply.data(&crate::fs::read::concat(&parts)),
                },
                Err(e) => {
                    log_error(FuseOp::Read, || fs.describe(ino.0, None), &e);
                    reply.error(errno(&e));
                    // After the reply (the kernel holds the pages of this read until then):
                    // make it fetch the size again.
                    if matches!(e, FsError::SizeMismatch) {
                        invalidate_inode(&notify, ino.0).await;
                    }
                }
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let t0 = Instant::now();
        // The kernel's buffer is only lent for this call: the one copy of the bytes.
        let data = data.to_vec();
        let fs = self.fs.clone();
        let pid = req.pid();
        self.rt.spawn(async move {
            match fs.write(fh.0, offset, &data, Some(pid)).await {
                Ok(n) => {
                    done(FuseOp::Write, t0, 0);
                    reply.written(n)
                }
                Err(e) => {
                    done(FuseOp::Write, t0, e.errno());
                    log_error(FuseOp::Write, || fs.describe(ino.0, None), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let t0 = Instant::now();
        let fs = self.fs.clone();
        let pid = req.pid();
        self.rt.spawn(async move {
            match fs.flush(fh.0, Some(pid)).await {
                Ok(()) => {
                    done(FuseOp::Flush, t0, 0);
                    reply.ok()
                }
                Err(e) => {
                    done(FuseOp::Flush, t0, e.errno());
                    log_error(FuseOp::Flush, || fs.describe(ino.0, None), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let t0 = Instant::now();
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.fsync(fh.0).await {
                Ok(()) => {
                    done(FuseOp::Fsync, t0, 0);
                    reply.ok()
                }
                Err(e) => {
                    done(FuseOp::Fsync, t0, e.errno());
                    log_error(FuseOp::Fsync, || fs.describe(ino.0, None), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let t0 = Instant::now();
        // A release may start an upload in the background.
        let _rt = self.rt.enter();
        self.fs.release(fh.0);
        done(FuseOp::Release, t0, 0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let t0 = Instant::now();
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => {
                    done(FuseOp::Opendir, t0, 0);
                    reply.opened(FileHandle(fh), FopenFlags::empty())
                }
                Err(e) => {
                    done(FuseOp::Opendir, t0, e.errno());
                    log_error(FuseOp::Opendir, || fs.describe(ino.0, None), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let t0 = Instant::now();
        // Entries come from the listing taken at opendir: no S3 request here.
        match self.fs.readdir(fh.0, offset, READDIR_BATCH) {
            Ok(entries) => {
                for e in &entries {
                    let d_ino = self.fs.readdir_ino(fh.0, e);
                    if reply.add(INodeNo(d_ino), e.offset, file_type(e.kind), &*e.name) {
                        break;
                    }
                }
                done(FuseOp::Readdir, t0, 0);
                reply.ok();
            }
            Err(e) => {
                done(FuseOp::Readdir, t0, e.errno());
                log_error(FuseOp::Readdir, || self.fs.describe(ino.0, None), &e);
                reply.error(errno(&e));
            }
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let t0 = Instant::now();
        match self.fs.readdir(fh.0, offset, READDIR_BATCH) {
            Ok(entries) => {
                for e in &entries {
                    let attr = match self.fs.readdirplus_attr(fh.0, e) {
                        Ok(a) => a,
                        Err(err) => {
                            // One entry left out; the request itself succeeds.
                            log_error(
                                FuseOp::Readdirplus,
                                || self.fs.describe(ino.0, Some(&e.name)),
                                &err,
                            );
                            continue;
                        }
                    };
                    let full = reply.add(
                        INodeNo(attr.ino),
                        e.offset,
                        &*e.name,
                        &self.ttl,
                        &file_attr(&attr),
                        Generation(0),
                    );
                    if full {
                        // Not sent: give back the reference readdirplus_attr took.
                        if e.is_counted() {
                            self.fs.forget(attr.ino, 1);
                        }
                        break;
                    }
                }
                done(FuseOp::Readdirplus, t0, 0);
                reply.ok();
            }
            Err(e) => {
                done(FuseOp::Readdirplus, t0, e.errno());
                log_error(FuseOp::Readdirplus, || self.fs.describe(ino.0, None), &e);
                reply.error(errno(&e));
            }
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let t0 = Instant::now();
        self.fs.releasedir(fh.0);
        done(FuseOp::Releasedir, t0, 0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // S3 has no capacity; report a large volume so `df` works: full when read-only, with
        // room when apps may write (tools that check free space first must not refuse).
        let bsize = 4096u32;
        let free = if self.fs.config().allow_write {
            1 << 39
        } else {
            0
        };
        done(FuseOp::Statfs, Instant::now(), 0);
        reply.statfs(
            1 << 40,
            free,
            free,
            1 << 30,
            free.min(1 << 29),
            bsize,
            255,
            bsize,
        );
    }

    // ENOSYS makes the kernel stop asking (it answers EOPNOTSUPP itself from then on):
    // `ls -l` would otherwise cost two round trips per file for ACL/SELinux attributes.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        done(FuseOp::Xattr, Instant::now(), libc::ENOSYS);
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        done(FuseOp::Xattr, Instant::now(), libc::ENOSYS);
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse(FuseOp::Write));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse(FuseOp::Write));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let t0 = Instant::now();
        let Some(name) = utf8_name(name, FuseOp::Create, t0) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.create(parent.0, &name).await {
                Ok((a, fh)) => {
                    done(FuseOp::Create, t0, 0);
                    reply.created(
                        &ttl,
                        &file_attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    )
                }
                Err(e) => {
                    done(FuseOp::Create, t0, e.errno());
                    log_error(FuseOp::Create, || fs.describe(parent.0, Some(&name)), &e);
                    reply.error(errno(&e))
                }
            }
        });
    }
}
