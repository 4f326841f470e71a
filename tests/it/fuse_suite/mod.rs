//! The FUSE-level suite: each test body is written once, against a [`Backend`], and runs
//! twice: over the in-memory store, mounted in this process (no server: plain `cargo test`),
//! and over Ceph RGW through the real binary (when `S3_ENDPOINT` is set, as in
//! `scripts/test.sh`). Both mounts are built from the same command-line flags.
//!
//! A test is a `fn name(kind: Kind)` listed in its module's `suite!` call.

mod reads;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use clap::Parser;
use s3_oidc_mount::store::memory::MemoryStore;

use crate::common;

/// Where a test body runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Rgw,
}

/// Declares the listed test bodies twice: `memory::NAME` and `rgw::NAME`.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name($crate::fuse_suite::Kind::Memory) } )*
        }
        mod rgw {
            $( #[test] fn $name() { need_rgw!(); super::$name($crate::fuse_suite::Kind::Rgw) } )*
        }
    };
}
pub(crate) use suite;

/// One bucket: a fresh in-memory store, or a fresh bucket on RGW.
#[derive(Clone)]
pub enum Backend {
    Memory(Arc<MemoryStore>),
    Rgw { bucket: String },
}

impl Backend {
    /// An empty bucket of this kind.
    pub fn new(kind: Kind, tag: &str) -> Self {
        match kind {
            // S3's page size, so listings take several pages as on a real server.
            Kind::Memory => Backend::Memory(Arc::new(MemoryStore::with_page_size(1000))),
            Kind::Rgw => {
                let bucket = common::unique_bucket(tag);
                common::create_bucket(&bucket);
                Backend::Rgw { bucket }
            }
        }
    }

    #[allow(dead_code)] // for bodies that differ by store (server-specific rules)
    pub fn kind(&self) -> Kind {
        match self {
            Backend::Memory(_) => Kind::Memory,
            Backend::Rgw { .. } => Kind::Rgw,
        }
    }

    /// `s3://bucket/prefix` of this bucket.
    pub fn source(&self, prefix: &str) -> String {
        let bucket = match self {
            Backend::Memory(_) => "memory",
            Backend::Rgw { bucket } => bucket,
        };
        if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        }
    }

    /// Writes an object behind the mount's back (test data, another writer).
    pub fn put(&self, key: &str, data: &[u8]) {
        match self {
            Backend::Memory(s) => s.put(key, data.to_vec()),
            Backend::Rgw { bucket } => common::put(bucket, key, data.to_vec()),
        }
    }

    /// The object's bytes as S3 has them (not through a mount).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Backend::Memory(s) => s.get(key).map(|b| b.to_vec()),
            Backend::Rgw { bucket } => common::get(bucket, key),
        }
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Backend::Memory(s) => s.keys(),
            Backend::Rgw { bucket } => {
                let mut k = common::keys(bucket);
                k.sort();
                k
            }
        }
    }

    /// Multipart uploads neither completed nor aborted.
    pub fn uploads_in_progress(&self) -> usize {
        match self {
            Backend::Memory(s) => s.uploads_in_progress(),
            Backend::Rgw { bucket } => common::uploads_in_progress(bucket),
        }
    }

    /// Many objects at once.
    pub fn put_many(&self, items: Vec<(String, Vec<u8>)>) {
        match self {
            Backend::Memory(s) => items.into_iter().for_each(|(k, v)| s.put(&k, v)),
            Backend::Rgw { bucket } => common::put_many(bucket, items),
        }
    }

    /// Mounts `prefix` of this bucket with these flags (as given to `s3-oidc-mount mount`).
    pub fn mount(&self, prefix: &str, flags: &[&str]) -> TestMount {
        let source = self.source(prefix);
        match self {
            Backend::Rgw { .. } => {
                let m = common::mount(&source, flags);
                TestMount {
                    path: m.path.clone(),
                    inner: Inner::Daemon(m),
                }
            }
            Backend::Memory(store) => InProcess::mount(store.clone(), &source, flags),
        }
    }
}

/// A mount made for a test; unmounted when dropped.
pub struct TestMount {
    pub path: PathBuf,
    inner: Inner,
}

enum Inner {
    Daemon(common::Mount),
    InProcess(InProcess),
}

impl TestMount {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// A scratch directory outside the mount, removed with it.
    pub fn scratch(&self) -> &Path {
        match &self.inner {
            Inner::Daemon(m) => m.dir.path(),
            Inner::InProcess(m) => m.dir.path(),
        }
    }

    /// The daemon's log, where there is a daemon (the in-process mount logs nowhere).
    pub fn log(&self) -> Option<String> {
        match &self.inner {
            Inner::Daemon(m) => Some(m.log_text()),
            Inner::InProcess(_) => None,
        }
    }
}

/// The in-memory store mounted by this test process, through the same configuration code
/// and FUSE session as the binary (`config::mount_config`, `mount::mount_store`).
struct InProcess {
    dir: tempfile::TempDir,
    mounted: Option<s3_oidc_mount::mount::Mounted>,
}

/// The runtime serving in-process mounts (the binary has its own).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("suite-fs")
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// `S3OM_TEST_LOG=debug` (a tracing filter) logs what in-process mounts do to stderr.
fn init_log() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Ok(filter) = std::env::var("S3OM_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

impl InProcess {
    fn mount(store: Arc<MemoryStore>, source: &str, flags: &[&str]) -> TestMount {
        use s3_oidc_mount::cli::{Cli, Command};
        init_log();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir mnt");
        let mut argv = vec![
            "s3-oidc-mount".to_string(),
            "mount".into(),
            source.into(),
            path.display().to_string(),
        ];
        argv.extend(flags.iter().map(|s| s.to_string()));
        let args = match Cli::try_parse_from(&argv) {
            Ok(Cli {
                command: Command::Mount(a),
                ..
            }) => a,
            Ok(_) => unreachable!("parsed a mount command"),
            Err(e) => panic!("flags {flags:?}: {e}"),
        };
        let cfg = s3_oidc_mount::config::mount_config(&args)
            .unwrap_or_else(|e| panic!("flags {flags:?}: {e}"));
        let mounted = runtime()
            .block_on(s3_oidc_mount::mount::mount_store(store, &path, cfg.session))
            .unwrap_or_else(|e| panic!("mounting the in-memory store: {e}"));
        TestMount {
            path: mounted.mountpoint.clone(),
            inner: Inner::InProcess(InProcess {
                dir,
                mounted: Some(mounted),
            }),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(mut m) = self.mounted.take() {
            let _ = runtime().block_on(m.unmount());
        }
    }
}
