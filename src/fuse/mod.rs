//! Thin FUSE adapter: turns fuser callbacks into calls on `fs::Fs` and replies from tokio
//! tasks, so no FUSE thread ever blocks on S3.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::inodes::Kind;
use crate::fs::{Attr, Fs, FsError};
use crate::store::ObjectStore;

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
    /// `reply_fd` may be filled in after the session is created; until then replies go
    /// through fuser.
    pub fn new(fs: Arc<Fs<S>>, rt: tokio::runtime::Handle, reply_fd: ReplyFd) -> Self {
        let ttl = fs.config().metadata_ttl;
        let negative_ttl = fs.config().negative_ttl;
        FuseAdapter {
            fs,
            rt,
            ttl,
            negative_ttl,
            reply_fd,
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Logs a failed request once, at a level that matches how surprising it is.
/// Logs a failed request. Expected answers (ENOENT, EROFS, ...) go to debug; real failures
/// to warn, at most once a second per operation and errno (an outage would otherwise log
/// every request), with the number of failures not logged since.
fn log_error(op: &'static str, ino: u64, e: &FsError) {
    match e {
        FsError::NotFound | FsError::ReadOnly | FsError::NotDir | FsError::IsDir => {
            tracing::debug!(op, ino, error = %e, "request failed")
        }
        _ => {
            if let Some(suppressed) = WARN_LIMIT.admit(op, e.errno()) {
                tracing::warn!(op, ino, errno = e.errno(), error = %e, suppressed, "request failed");
            } else {
                tracing::debug!(op, ino, errno = e.errno(), error = %e, "request failed");
            }
        }
    }
}

/// (operation, errno).
type GateKey = (&'static str, i32);
/// When the last warning was logged, and how many were held back since.
type Gate = (std::time::Instant, u64);

/// A once-a-second gate per (operation, errno).
struct RateLimit {
    last: std::sync::Mutex<std::collections::HashMap<GateKey, Gate>>,
}

static WARN_LIMIT: std::sync::LazyLock<RateLimit> = std::sync::LazyLock::new(|| RateLimit {
    last: Default::default(),
});

impl RateLimit {
    /// `Some(n)` if this one may be logged, `n` being how many were held back before it.
    fn admit(&self, op: &'static str, errno: i32) -> Option<u64> {
        let mut map = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match map.get_mut(&(op, errno)) {
            Some(entry) if now.duration_since(entry.0) < Duration::from_secs(1) => {
                entry.1 += 1;
                None
            }
            Some(entry) => {
                let held = entry.1;
                *entry = (now, 0);
                Some(held)
            }
            None => {
                map.insert((op, errno), (now, 0));
                Some(0)
            }
        }
    }
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
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_owned) else {
            // Keys are UTF-8: a non-UTF-8 name cannot exist.
            reply.error(Errno::ENOENT);
            return;
        };
        let (fs, ttl, neg_ttl) = (self.fs.clone(), self.ttl, self.negative_ttl);
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
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
                    reply.entry(&neg_ttl, &none, Generation(0))
                }
                Err(e) => {
                    log_error("lookup", parent.0, &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // fstat of an open file describes the version that file reads.
        if let Some(a) = fh.and_then(|fh| self.fs.handle_attr(fh.0)) {
            reply.attr(&self.ttl, &file_attr(&a));
            return;
        }
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => {
                    log_error("getattr", ino.0, &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
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
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.open(ino.0, write).await {
                Ok((fh, keep_cache)) => {
                    let mut f = FopenFlags::empty();
                    if keep_cache {
                        f |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    reply.opened(FileHandle(fh), f)
                }
                Err(e) => {
                    log_error("open", ino.0, &e);
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
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let unique = req.unique().0;
        let reply_fd = self.reply_fd.clone();
        self.rt.spawn(async move {
            match fs.read(fh.0, offset, size).await {
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
                    log_error("read", ino.0, &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
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
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => {
                    log_error("opendir", ino.0, &e);
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
        // Entries come from the listing taken at opendir: no S3 request here.
        match self.fs.readdir(fh.0, offset, READDIR_BATCH) {
            Ok(entries) => {
                for e in &entries {
                    let d_ino = self.fs.readdir_ino(fh.0, e);
                    if reply.add(INodeNo(d_ino), e.offset, file_type(e.kind), &*e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => {
                log_error("readdir", ino.0, &e);
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
        match self.fs.readdir(fh.0, offset, READDIR_BATCH) {
            Ok(entries) => {
                for e in &entries {
                    let attr = match self.fs.readdirplus_attr(fh.0, e) {
                        Ok(a) => a,
                        Err(err) => {
                            log_error("readdirplus", ino.0, &err);
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
                reply.ok();
            }
            Err(e) => {
                log_error("readdirplus", ino.0, &e);
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
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // S3 has no capacity; report a large, full, read-only volume so `df` works.
        let bsize = 4096u32;
        reply.statfs(1 << 40, 0, 0, 1 << 30, 0, bsize, 255, bsize);
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
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
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
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_per_op_and_errno() {
        let r = RateLimit {
            last: Default::default(),
        };
        assert_eq!(r.admit("read", 5), Some(0));
        assert_eq!(r.admit("read", 5), None);
        assert_eq!(r.admit("read", 5), None);
        // Another op or errno has its own gate.
        assert_eq!(r.admit("open", 5), Some(0));
        assert_eq!(r.admit("read", 13), Some(0));
        // A second later the next one is logged with the count held back.
        if let Some(e) = r.last.lock().unwrap().get_mut(&("read", 5)) {
            e.0 -= Duration::from_secs(2);
        }
        assert_eq!(r.admit("read", 5), Some(2));
    }
}
