//! Shared harness of the integration tests: a real S3 server (Ceph RGW on 127.0.0.1,
//! started by scripts/test.sh, which exports S3_ENDPOINT and its keys), a real FUSE mount
//! by the real binary, checked through ordinary syscalls and tools.
#![allow(dead_code)]

pub mod faultproxy;
pub mod fed;
pub mod iam;
pub mod idp;
pub mod standin;
pub mod stsproxy;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_s3-oidc-mount");

/// Whether the test S3 server (Ceph RGW, started by scripts/test.sh) is there. When it is
/// not, says on the terminal which test was skipped and why (libtest would hide a print).
pub fn rgw_available() -> bool {
    if std::env::var_os("S3_ENDPOINT").is_some() {
        return true;
    }
    use std::io::Write;
    let name = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {name}: needs Ceph RGW (S3_ENDPOINT is unset; scripts/test.sh starts it)"
    );
    false
}

/// Returns from the test, saying so, when the test S3 server is not there.
macro_rules! need_rgw {
    () => {
        if !$crate::common::rgw_available() {
            return;
        }
    };
}

pub fn endpoint() -> String {
    std::env::var("S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("S3_ENDPOINT is not set: run the integration tests through scripts/test.sh, which starts a local S3 server")
    })
}

/// A tokio runtime for the SDK calls the tests make to set up data.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

pub fn client() -> &'static aws_sdk_s3::Client {
    static C: OnceLock<aws_sdk_s3::Client> = OnceLock::new();
    C.get_or_init(|| {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint())
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY"),
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    })
}

/// A bucket name unique to this test process.
pub fn unique_bucket(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("it-{tag}-{}-{nanos}", std::process::id())
}

pub fn create_bucket(bucket: &str) {
    rt().block_on(client().create_bucket().bucket(bucket).send())
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
}

pub fn put(bucket: &str, key: &str, data: impl Into<Vec<u8>>) {
    let body = ByteStream::from(data.into());
    rt().block_on(
        client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body)
            .send(),
    )
    .unwrap_or_else(|e| panic!("put {key:?}: {e:?}"));
}

/// Uploads many objects, with many PUTs in flight (thousands of small objects).
pub fn put_many(bucket: &str, items: Vec<(String, Vec<u8>)>) {
    use futures::StreamExt;
    rt().block_on(
        futures::stream::iter(items).for_each_concurrent(64, |(k, v)| async move {
            client()
                .put_object()
                .bucket(bucket)
                .key(&k)
                .body(v.into())
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {k:?}: {e:?}"));
        }),
    );
}

/// The object's bytes, or `None` if there is no such key.
pub fn get(bucket: &str, key: &str) -> Option<Vec<u8>> {
    rt().block_on(async {
        match client().get_object().bucket(bucket).key(key).send().await {
            Ok(out) => Some(
                out.body
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("get {key:?}: {e:?}"))
                    .to_vec(),
            ),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => panic!("get {key:?}: {e:?}"),
        }
    })
}

/// Every key of the bucket, in order.
pub fn keys(bucket: &str) -> Vec<String> {
    rt().block_on(async {
        let mut keys = Vec::new();
        let mut pages = client()
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        keys
    })
}

/// Multipart uploads started in the bucket and neither completed nor aborted.
pub fn uploads_in_progress(bucket: &str) -> usize {
    rt().block_on(client().list_multipart_uploads().bucket(bucket).send())
        .unwrap_or_else(|e| panic!("list uploads {bucket}: {e:?}"))
        .uploads()
        .len()
}

pub fn delete(bucket: &str, key: &str) {
    rt().block_on(client().delete_object().bucket(bucket).key(key).send())
        .unwrap_or_else(|e| panic!("delete {key:?}: {e:?}"));
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

pub fn sha256_file(path: &Path) -> String {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// The daemon, mounted. Dropping it stops the daemon and clears the mount, even when a
/// test fails half-way.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    child: Option<Child>,
    pub log: PathBuf,
}

pub fn common_args() -> Vec<String> {
    vec![
        "--endpoint-url".into(),
        endpoint(),
        "--force-path-style".into(),
        "--region".into(),
        "us-east-1".into(),
    ]
}

/// Runs `s3-oidc-mount mount SOURCE MOUNTPOINT ARGS...` and waits until it is mounted.
pub fn mount(source: &str, extra: &[&str]) -> Mount {
    mount_with(source, extra, &Spawn::default())
}

/// How [`mount_with`] starts the daemon, beyond its arguments.
#[derive(Clone, Debug, Default)]
pub struct Spawn {
    /// Variables removed from the daemon's environment (before `env` is applied).
    pub env_remove: Vec<String>,
    /// Variables set in the daemon's environment.
    pub env: Vec<(String, String)>,
    /// The daemon's working directory (default: the test's).
    pub cwd: Option<PathBuf>,
    /// `--endpoint-url` (default: `S3_ENDPOINT`), e.g. a fault proxy's.
    pub endpoint: Option<String>,
    /// An existing directory to mount on (default: a fresh one in the test's temp dir).
    pub mountpoint: Option<PathBuf>,
}

/// [`mount`] with a changed environment and working directory.
pub fn mount_with(source: &str, extra: &[&str], spawn: &Spawn) -> Mount {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = match &spawn.mountpoint {
        Some(p) => p.clone(),
        None => {
            let p = dir.path().join("mnt");
            std::fs::create_dir(&p).expect("mkdir mnt");
            p
        }
    };
    let log = dir.path().join("daemon.log");
    let logf = std::fs::File::create(&log).expect("log file");
    let mut args: Vec<String> = vec!["mount".into(), source.into(), path.display().to_string()];
    let mut common = common_args();
    if let Some(ep) = &spawn.endpoint {
        common[1] = ep.clone();
    }
    args.extend(common);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = Command::new(BIN);
    cmd.args(&args).env("S3_OIDC_MOUNT_LOG_LEVEL", "info");
    for k in &spawn.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spawn.env {
        cmd.env(k, v);
    }
    if let Some(cwd) = &spawn.cwd {
        cmd.current_dir(cwd);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .expect("spawn daemon");
    let mut m = Mount {
        dir,
        path,
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s3_oidc_mount::mount::is_mount_point(&m.path) {
        if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!(
                "daemon exited before mounting ({st}); log:\n{}",
                m.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "not mounted after 30 s; log:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m
}

impl Mount {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `VmRSS` and `VmHWM` (peak) of the daemon, in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Sends SIGTERM and waits (bounded) for the daemon to exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(15))
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running after {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if s3_oidc_mount::mount::is_mount_point(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Runs the binary to completion (for error cases), returning status and stderr.
pub fn run_bin(args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (st, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            panic!(
                "{args:?} did not finish within {timeout:?} ({:?})",
                st.signal()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What [`run_bin_with`] gives back.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary to completion with a changed environment, capturing stdout and stderr.
pub fn run_bin_with(args: &[&str], spawn: &Spawn, timeout: Duration) -> Finished {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for k in &spawn.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spawn.env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{args:?} did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// `r` must have failed with `errno`.
pub fn assert_errno<T>(r: std::io::Result<T>, errno: i32, what: &str) {
    match r {
        Ok(_) => panic!("{what}: succeeded, expected errno {errno}"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(errno), "{what}: {e}"),
    }
}

/// Polls `f` every 100 ms until it holds or `timeout` passes; whether it held.
pub fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
