//! Mounting: checks (mountpoint, bucket, credentials) before anything is mounted, the
//! FUSE session, and a clean unmount on SIGTERM/SIGINT.

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{MountOption, SessionACL};

use crate::advice;
use crate::auth::{self, AuthConfig, AuthError, policy};
use crate::cache::BlockCache;
use crate::cli::Source;
use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseAdapter;
use crate::http::serve::Serving;
use crate::http::{self, HttpError, Status};
use crate::store::s3::{S3Options, S3Store};
use crate::store::{ListFrom, ObjectStore, StoreError};

/// Everything a mount needs, validated.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub source: Source,
    pub mountpoint: PathBuf,
    pub s3: S3Options,
    pub session: SessionOptions,
    pub auth: AuthConfig,
    /// Where to serve /healthz, /readyz and /metrics (none: no HTTP server).
    pub http_addr: Option<SocketAddr>,
    /// /readyz fails once the credentials are valid for less than this.
    pub ready_min_validity: Duration,
}

/// What the FUSE session over a store needs, whatever the store.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Shown as the mount's source (`s3://bucket/prefix`).
    pub fsname: String,
    pub fs: FsConfig,
    pub cache_bytes: u64,
    pub allow_other: bool,
    /// Bytes of kernel readahead to set on the mount (0: leave the default).
    pub kernel_readahead: u64,
    pub fuse_threads: usize,
}

impl SessionOptions {
    /// Defaults for a mount of `fsname` (tests, the in-memory store).
    pub fn new(fsname: impl Into<String>, fs: FsConfig) -> Self {
        SessionOptions {
            fsname: fsname.into(),
            fs,
            cache_bytes: 256 << 20,
            allow_other: false,
            kernel_readahead: 2 << 20,
            fuse_threads: 4,
        }
    }
}

// The messages never repeat their `source`: the binary prints the whole chain (`{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mountpoint {path}: {why}")]
    Mountpoint {
        path: PathBuf,
        why: String,
        #[source]
        source: Option<std::io::Error>,
    },
    /// The LIST before mounting failed: what happened and what to do (`crate::advice`).
    #[error("{what}; {fix}")]
    Preflight {
        what: String,
        fix: String,
        /// None where it would only repeat `what` (no such bucket).
        #[source]
        source: Option<StoreError>,
    },
    #[error("credentials")]
    Auth(#[from] AuthError),
    #[error("FUSE mount at {path} failed: {why}")]
    Fuse {
        path: PathBuf,
        why: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a mount task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl MountError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        MountError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Checks the mountpoint: an existing, empty directory that nothing is mounted on. A dead
/// mount left there by a killed daemon of ours is cleared first.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    check(path, true)
}

fn check_live_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    check(path, false)
}

/// Our daemon was killed (SIGKILL, OOM) and its mount is still attached, answering
/// ENOTCONN: nothing can use it any more, so detach it and check again. Only a dead mount of
/// ours is cleared.
fn clear_and_recheck(path: &Path) -> Result<PathBuf, MountError> {
    match clear_dead_mount(path) {
        Ok(()) => {
            tracing::warn!(
                mountpoint = %path.display(),
                "cleared the dead mount of a killed s3-oidc-mount daemon (lazy unmount)"
            );
            check_live_mountpoint(path)
        }
        Err(why) => Err(MountError::Mountpoint {
            path: path.to_path_buf(),
            source: None,
            why: format!(
                "a dead FUSE mount is still attached (the daemon was killed?) and was not \
                 cleared ({why}); clear it with `fusermount3 -u {0}` (or `umount -l {0}`) and retry",
                path.display()
            ),
        }),
    }
}

fn check(path: &Path, clear_dead: bool) -> Result<PathBuf, MountError> {
    let err = |why: String| MountError::Mountpoint {
        path: path.to_path_buf(),
        why,
        source: None,
    };
    let io = |why: &str, e: std::io::Error| MountError::Mountpoint {
        path: path.to_path_buf(),
        why: why.to_string(),
        source: Some(e),
    };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => return Err(err("not a directory".into())),
        Ok(_) => {}
        Err(e) if clear_dead && e.raw_os_error() == Some(libc::ENOTCONN) => {
            return clear_and_recheck(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(format!(
                "does not exist; create it first (mkdir -p {})",
                path.display()
            )));
        }
        Err(e) => return Err(io("cannot look it up", e)),
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| io("cannot resolve it", e))?;
    if is_mount_point(&canonical) {
        // Only a mount of ours is probed: listing a live but stuck mount of another daemon
        // could hang. The kernel may answer stat of a dead mount from its cache: listing
        // it tells.
        let ours = mount_source(&canonical).is_some_and(|(t, s)| is_ours(&t, &s));
        let dead = ours
            && std::fs::read_dir(&canonical)
                .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
        if clear_dead && dead {
            return clear_and_recheck(path);
        }
        return Err(err("something is already mounted here".into()));
    }
    let mut entries = std::fs::read_dir(&canonical).map_err(|e| io("cannot list it", e))?;
    if entries.next().is_some() {
        return Err(err(
            "not empty; mounting would hide its files, use an empty directory".into(),
        ));
    }
    Ok(canonical)
}

/// Detaches the dead FUSE mount of ours at `path` (a daemon of this program, killed): lazily
/// with umount2 as root, else with `fusermount3 -u -z` (the setuid helper).
fn clear_dead_mount(path: &Path) -> Result<(), String> {
    // The path cannot be resolved through the dead mount itself, only up to its parent.
    let abs = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            parent
                .canonicalize()
                .map_err(|e| format!("resolving {}: {e}", parent.display()))?
                .join(name)
        }
        _ => return Err("not a mount of this program".into()),
    };
    match mount_source(&abs) {
        Some((fstype, source)) if is_ours(&fstype, &source) => {}
        Some((fstype, source)) => {
            return Err(format!("the mount there ({fstype} {source}) is not ours"));
        }
        None => return Err("no mount found there in /proc/self/mountinfo".into()),
    }
    if lazy_unmount(&abs).is_ok() {
        return Ok(());
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(&abs)
        .output()
        .map_err(|e| format!("umount2 not permitted and fusermount3 not runnable: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "fusermount3 -u -z failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A mount of this program: FUSE (with our subtype where fusermount3 mounted it; a mount
/// made as root shows plain `fuse`), the `s3://` URL as its source.
fn is_ours(fstype: &str, source: &str) -> bool {
    matches!(fstype, "fuse" | "fuse.s3-oidc-mount") && source.starts_with("s3://")
}

/// The filesystem type and source of what is mounted at `path` (the last mount there), from
/// /proc/self/mountinfo: ours are FUSE mounts whose source is the `s3://` URL.
fn mount_source(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    info.lines()
        .rev()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| unescape_mountinfo(mp).as_bytes() == want)
        })
        .filter_map(|l| {
            let (_, after) = l.split_once(" - ")?;
            let mut f = after.split(' ');
            Some((f.next()?.to_string(), unescape_mountinfo(f.next()?)))
        })
        .next()
}

/// Whether `path` is the mount point of some filesystem, from /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp).as_bytes() == want)
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len() + 1
            && let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One LIST of the prefix before mounting: a wrong bucket, endpoint or credentials fail
/// here with a message that says what to fix, instead of as EIO later.
pub async fn preflight<S: ObjectStore>(store: &S, cfg: &MountConfig) -> Result<(), MountError> {
    let src = &cfg.source;
    let endpoint = cfg
        .s3
        .endpoint_url
        .clone()
        .unwrap_or_else(|| format!("AWS S3 in {}", cfg.s3.region));
    let fail = |what: String, fix: String, source: Option<StoreError>| MountError::Preflight {
        what,
        fix,
        source,
    };
    match store
        .list_page(&src.prefix, true, ListFrom::Start, Some(1))
        .await
    {
        Ok(page) => {
            if page.objects.is_empty() && page.prefixes.is_empty() {
                tracing::warn!(source = %src, "nothing under this prefix yet; the mount starts empty");
            }
            Ok(())
        }
        Err(StoreError::NoSuchBucket) => Err(fail(
            format!("bucket {:?} does not exist at {endpoint}", src.bucket),
            advice::NO_SUCH_BUCKET.into(),
            None,
        )),
        Err(e @ StoreError::AccessDenied { .. }) => {
            let partition = cfg
                .auth
                .role_arn
                .as_deref()
                .map_or("aws", policy::partition);
            let permission =
                advice::s3_permission(partition, &src.bucket, &src.prefix, "s3:ListBucket");
            Err(fail(
                format!("S3 refused to list {src}"),
                format!("check the credentials and that they allow {permission}"),
                Some(e),
            ))
        }
        Err(e @ StoreError::Credentials(_)) => Err(fail(
            "no usable AWS credentials".into(),
            advice::AWS_CHAIN_EMPTY.into(),
            Some(e),
        )),
        Err(e @ StoreError::Unreachable(_)) => Err(fail(
            format!("cannot reach the S3 endpoint {endpoint}"),
            advice::S3_UNREACHABLE.into(),
            Some(e),
        )),
        Err(e) => Err(fail(
            format!("listing {src} at {endpoint} failed"),
            advice::S3_OTHER.into(),
            Some(e),
        )),
    }
}

/// Default cache budget: a quarter of the cgroup memory limit, within 64 MiB..2 GiB;
/// 512 MiB where no limit is set.
pub fn default_cache_bytes() -> u64 {
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .or_else(|| {
            // cgroup v1; its "no limit" is a huge number, caught by the clamp below.
            std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|&l| l < 1 << 50)
        });
    match limit {
        Some(l) => (l / 4).clamp(64 << 20, 2 << 30),
        None => 512 << 20,
    }
}

/// SIGTERM and SIGINT, caught from the moment this is created.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn catch() -> Result<Self, MountError> {
        use tokio::signal::unix::{SignalKind, signal};
        let io = |e| MountError::io("installing signal handlers", e);
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(io)?,
            int: signal(SignalKind::interrupt()).map_err(io)?,
        })
    }

    /// Waits for either signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Before unmounting: lets uploads of closed files finish, abandons files still open for
/// writing; gives their names.
type Drain = Box<
    dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<String>> + Send>> + Send,
>;

/// A live mount, served by fuser's threads until `unmount`.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    pub mountpoint: PathBuf,
    status: Arc<Status>,
    http: Option<Serving>,
    drain: Option<Drain>,
    /// Files still open for writing at unmount, abandoned.
    abandoned: usize,
}

/// Checks everything, then mounts (`prepare`, then `attach`).
pub async fn mount(cfg: MountConfig) -> Result<Mounted, MountError> {
    prepare(cfg).await?.attach().await
}

/// Everything checked and ready to mount.
pub struct Prepared {
    cfg: MountConfig,
    mountpoint: PathBuf,
    store: Arc<S3Store>,
    started: Instant,
    status: Arc<Status>,
    http: Option<Serving>,
}

/// The checks: HTTP port, mountpoint, credentials, one LIST. Nothing is mounted yet, so
/// this may be abandoned at any point (e.g. on a signal).
pub async fn prepare(cfg: MountConfig) -> Result<Prepared, MountError> {
    let started = Instant::now();
    // The port first: a port in use is a configuration error like the others, found before
    // any credential exchange. Served from now on (/healthz says "not mounted" until then).
    let server = match cfg.http_addr {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let mountpoint = check_mountpoint(&cfg.mountpoint)?;
    // Before credentials and S3: a container started without FUSE fails in milliseconds.
    check_fuse_access().map_err(|(why, source)| MountError::Fuse {
        path: mountpoint.clone(),
        why,
        source,
    })?;
    let status = Status::new(&mountpoint, cfg.ready_min_validity);
    // Served until dropped: every early return below stops it.
    let http = server.map(|s| s.spawn(status.clone()));
    let creds = auth::resolve(&cfg.auth).await?;
    status.set_refresher(creds.refresher.clone());
    let store = Arc::new(S3Store::new(
        &cfg.s3,
        creds.provider.clone(),
        creds.sdk_cache,
    ));
    preflight(&*store, &cfg).await?;
    Ok(Prepared {
        cfg,
        mountpoint,
        store,
        started,
        status,
        http,
    })
}

impl Prepared {
    /// Mounts. Returns once the kernel has completed the FUSE handshake, i.e. the mount answers.
    pub async fn attach(self) -> Result<Mounted, MountError> {
        let Prepared {
            cfg,
            mountpoint,
            store,
            started,
            status,
            http,
        } = self;
        // On failure `attach` drops the endpoints' server, which stops it.
        attach(cfg.session, mountpoint, store, started, status, http).await
    }
}

/// Mounts `store` on `mountpoint` as it is: no credentials, no preflight LIST, no HTTP
/// endpoints. The entry point for any store (the in-memory store in tests).
pub async fn mount_store<S: ObjectStore>(
    store: Arc<S>,
    mountpoint: &Path,
    opts: SessionOptions,
) -> Result<Mounted, MountError> {
    let mountpoint = check_mountpoint(mountpoint)?;
    let status = Status::new(&mountpoint, Duration::ZERO);
    attach(opts, mountpoint, store, Instant::now(), status, None).await
}

async fn attach<S: ObjectStore>(
    cfg: SessionOptions,
    mountpoint: PathBuf,
    store: Arc<S>,
    started: Instant,
    status: Arc<Status>,
    http: Option<Serving>,
) -> Result<Mounted, MountError> {
    let cache = BlockCache::new(cfg.cache_bytes as usize);
    let fs = Fs::new(store, cfg.fs.clone(), cache.clone());
    let drain: Drain = {
        let fs = fs.clone();
        Box::new(move || Box::pin(async move { fs.shutdown().await }))
    };
    let reply_fd = crate::fuse::ReplyFd::default();
    let notify = crate::fuse::Notify::default();
    let adapter = FuseAdapter::new(
        fs,
        tokio::runtime::Handle::current(),
        reply_fd.clone(),
        notify.clone(),
    );
    let mut fcfg = fuser::Config::default();
    fcfg.mount_options = vec![
        MountOption::FSName(cfg.fsname.clone()),
        MountOption::Subtype("s3-oidc-mount".into()),
        if cfg.fs.allow_write {
            MountOption::RW
        } else {
            MountOption::RO
        },
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    fcfg.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fcfg.n_threads = Some(cfg.fuse_threads.max(1));
    // One shared /dev/fuse descriptor: direct read replies must go to the descriptor that
    // read the request, and a duplicate of the shared one is that descriptor.
    fcfg.clone_fd = false;

    let mp = mountpoint.clone();
    let session = tokio::task::spawn_blocking(move || {
        let session = fuser::Session::new(adapter, &mp, &fcfg)?;
        let _ = notify.set(session.notifier());
        match std::os::fd::AsFd::as_fd(&session).try_clone_to_owned() {
            Ok(fd) => {
                let _ = reply_fd.set(fd);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot duplicate /dev/fuse; reads are copied once more")
            }
        }
        session.spawn()
    })
    .await?
    .map_err(|e| MountError::Fuse {
        path: mountpoint.clone(),
        why: explain_mount_error(&e).to_string(),
        source: Some(e),
    })?;
    if cfg.kernel_readahead > 0 {
        let mp = mountpoint.clone();
        let bytes = cfg.kernel_readahead;
        let _ = tokio::task::spawn_blocking(move || set_kernel_readahead(&mp, bytes)).await;
    }
    tracing::info!(
        source = %cfg.fsname,
        mountpoint = %mountpoint.display(),
        ready_ms = started.elapsed().as_millis() as u64,
        cache_bytes = cfg.cache_bytes,
        "mounted"
    );
    status.set_mounted(cache);
    Ok(Mounted {
        session: Some(session),
        mountpoint,
        status,
        http,
        drain: Some(drain),
        abandoned: 0,
    })
}

/// Sets the mount's readahead (FUSE starts at 128 KiB and only sysfs can raise it), so
/// sequential reads reach the daemon as large, concurrent requests.
fn set_kernel_readahead(mountpoint: &Path, bytes: u64) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot stat the mount to set readahead");
            return;
        }
    };
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&path, format!("{}\n", bytes / 1024)) {
        Ok(()) => tracing::debug!(path, kib = bytes / 1024, "kernel readahead set"),
        Err(e) => {
            tracing::debug!(path, error = %e, "cannot set kernel readahead; the kernel default applies")
        }
    }
}

/// Whether this process can mount FUSE at all: /dev/fuse present and openable, and, when
/// running as root (so no setuid fusermount3 is involved), CAP_SYS_ADMIN held. The error: what
/// to do, and the cause if there is one.
fn check_fuse_access() -> Result<(), (String, Option<std::io::Error>)> {
    const CAP_SYS_ADMIN: u32 = 21;
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => (advice::FUSE_MISSING.into(), None),
            _ => (
                format!("cannot open /dev/fuse ({})", advice::FUSE_UNOPENABLE),
                Some(e),
            ),
        });
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
        if eff.is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) == 0) {
            return Err((advice::NO_CAP_SYS_ADMIN.into(), None));
        }
    }
    Ok(())
}

/// What to do about a failed mount(2), before its cause.
fn explain_mount_error(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) if !Path::new("/dev/fuse").exists() => advice::FUSE_MISSING,
        Some(libc::EPERM) | Some(libc::EACCES) => advice::MOUNT_NOT_PERMITTED,
        _ => "the kernel refused it",
    }
}

impl Mounted {
    /// Whether fuser's session ended (e.g. someone ran `fusermount3 -u`).
    pub fn ended(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Serves until SIGTERM or SIGINT, or until the mount goes away, then unmounts.
    /// `signals` must have been set up before mounting, so a signal that arrives while
    /// mounting is not lost (or fatal: the default action of both is to terminate).
    pub async fn serve_until_signal(mut self, mut signals: Signals) -> Result<(), MountError> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                sig = signals.recv() => { tracing::info!(signal = sig, "unmounting"); break; }
                _ = tick.tick() => {
                    if self.ended() {
                        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted from outside; exiting");
                        self.session = None;
                        self.finished().await;
                        return Ok(());
                    }
                }
            }
        }
        self.unmount().await
    }

    /// Unmounts; if files are still open, detaches lazily (the kernel finishes the
    /// unmount when they are closed) so shutdown never hangs.
    pub async fn unmount(&mut self) -> Result<(), MountError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if let Some(drain) = self.drain.take() {
            let abandoned = drain().await;
            self.abandoned = abandoned.len();
            if !abandoned.is_empty() {
                tracing::warn!(files = ?abandoned, "files open for writing at unmount were not uploaded");
            }
        }
        self.status.set_unmounted();
        let mp = self.mountpoint.display().to_string();
        let joined = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::task::spawn_blocking(move || session.umount_and_join()),
        )
        .await;
        let result = match joined {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::warn!(mountpoint = %mp, "mount busy (files open); detaching lazily");
                lazy_unmount(&self.mountpoint)
            }
            Ok(Ok(Err(e))) if is_mount_point(&self.mountpoint) => {
                Err(MountError::io(format!("unmount of {mp} failed"), e))
            }
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e, "FUSE session ended with an error");
                Ok(())
            }
            Ok(Err(e)) => Err(MountError::Task(e)),
            Err(_) => {
                tracing::warn!(mountpoint = %mp, "FUSE threads did not stop within 3 s");
                Ok(())
            }
        };
        if result.is_ok() {
            tracing::info!(mountpoint = %mp, "unmounted");
        }
        // The summary and the end of the endpoints come whether or not the unmount worked.
        self.finished().await;
        result
    }

    /// The end of the mount: the HTTP endpoints stop (an answer under way gets a moment to
    /// finish), and one summary line says what it did.
    async fn finished(&mut self) {
        self.status.set_unmounted();
        if let Some(h) = self.http.take() {
            h.shutdown(Duration::from_secs(1)).await;
        }
        let s = crate::metrics::summary(self.status.cache().map(|c| &**c), self.status.uptime());
        tracing::info!(
            requests = s.requests,
            bytes_served = s.bytes_served,
            bytes_fetched = s.bytes_fetched,
            s3_requests = s.s3_requests,
            cache_hit_ratio = (s.cache_hit_ratio * 1000.0).round() / 1000.0,
            errors = s.errors,
            uploads = crate::metrics::WRITES.completed.get(),
            uploads_failed = crate::metrics::WRITES.failed.get(),
            uploads_abandoned = self.abandoned,
            uptime_s = s.uptime.as_secs(),
            "summary"
        );
    }
}

fn lazy_unmount(path: &Path) -> Result<(), MountError> {
    let what = || format!("lazy unmount of {} failed", path.display());
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        MountError::io(
            what(),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })?;
    // NOFOLLOW: a symlink swapped in for the path must not redirect the unmount.
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } != 0 {
        return Err(MountError::io(what(), std::io::Error::last_os_error()));
    }
    Ok(())
}
