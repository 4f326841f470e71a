//! `run`: the entrypoint wrapper, without Docker: the app sees the files, signals reach it,
//! its exit status comes back, a failed mount never starts it.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;

fn bucket() -> &'static String {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        let b = unique_bucket("run");
        create_bucket(&b);
        put(&b, "data/hello.txt", b"hello from s3\n".to_vec());
        put(&b, "data/blob.bin", random_bytes(3 << 20, 9));
        b
    })
}

struct Wrapped {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

/// Starts `s3-oidc-mount run [extra] s3://B DIR/mnt -- APP...`.
fn start(extra: &[&str], app: &[&str]) -> Wrapped {
    let dir = tempfile::tempdir().unwrap();
    // Open to all, so an app started as another user (--app-user) can reach the mount.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(common_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("s3://{}", bucket()));
    args.push(mnt.display().to_string());
    args.push("--".into());
    args.extend(
        app.iter()
            .map(|s| s.replace("MNT", &mnt.display().to_string())),
    );
    let child = Command::new(BIN)
        .args(&args)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    Wrapped { child, dir }
}

impl Wrapped {
    fn finish(self, timeout: Duration) -> (Option<i32>, String, String, tempfile::TempDir) {
        let Wrapped { mut child, dir } = self;
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("run did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let mnt = dir.path().join("mnt");
        assert!(
            !s3_oidc_mount::mount::is_mount_point(&mnt),
            "still mounted after run ended"
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            dir,
        )
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

#[test]
fn the_app_reads_the_mount_and_its_exit_status_comes_back() {
    need_rgw!();
    let want = sha256(&random_bytes(3 << 20, 9));
    let w = start(
        &[],
        &[
            "sh",
            "-c",
            "cat MNT/data/hello.txt; sha256sum MNT/data/blob.bin; exit 3",
        ],
    );
    let (code, out, err, _d) = w.finish(Duration::from_secs(60));
    assert_eq!(code, Some(3), "stderr:\n{err}");
    assert!(out.contains("hello from s3"), "{out}");
    assert!(out.contains(&want), "{out}");
}

#[test]
fn the_app_runs_as_the_app_user_and_reads_the_mount() {
    need_rgw!();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test switches users: run the tests as root (scripts/test.sh does)");
    }
    let want = sha256(&random_bytes(3 << 20, 9));
    let w = start(
        &["--app-user", "nobody"],
        &[
            "sh",
            "-c",
            "id -u; id -g; echo HOME=$HOME USER=$USER; stat -c '%u:%g %a' MNT/data/blob.bin; \
             sha256sum MNT/data/blob.bin; touch MNT/x 2>&1; exit 0",
        ],
    );
    let (code, out, err, _d) = w.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "stderr:\n{err}");
    let nobody = s3_oidc_mount::user::resolve("nobody").unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string(), "{out}");
    assert_eq!(lines[1], nobody.gid.to_string(), "{out}");
    assert!(lines[2].contains("USER=nobody"), "{out}");
    // Files belong to the app's user (reachable through allow_other), read-only.
    assert_eq!(
        lines[3],
        format!("{}:{} 444", nobody.uid, nobody.gid),
        "{out}"
    );
    assert!(out.contains(&want), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");

    // An unknown user is refused before anything is mounted or started.
    let w = start(&["--app-user", "no-such-user-xyz"], &["true"]);
    let (code, _, err, _d) = w.finish(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no user named \"no-such-user-xyz\""), "{err}");
}

#[test]
fn a_killed_app_gives_128_plus_the_signal() {
    need_rgw!();
    let w = start(&[], &["sh", "-c", "kill -KILL $$"]);
    let (code, _, err, _d) = w.finish(Duration::from_secs(60));
    assert_eq!(code, Some(137), "stderr:\n{err}");
}

#[test]
fn sigterm_is_forwarded_and_the_ready_file_comes_and_goes() {
    need_rgw!();
    // The app reports the ready file, then waits for SIGTERM and exits 7 on it.
    let w = start(
        &["--ready-file", "READY"],
        &[
            "sh",
            "-c",
            "test -f READY && echo ready-file-present; trap 'echo got-term; exit 7' TERM; echo started; while :; do sleep 0.05; done",
        ],
    );
    // Wait until the app runs, then stop the wrapper as `docker stop` would.
    let ready = w.dir.path().join("READY");
    let t = Instant::now();
    while !ready.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "no ready file");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    w.signal(libc::SIGTERM);
    let (code, out, err, d) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(7), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("ready-file-present") && out.contains("got-term"),
        "{out}"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stopped.elapsed()
    );
    assert!(!d.path().join("READY").exists(), "ready file left behind");
}

#[test]
fn an_app_ignoring_sigterm_is_killed_after_the_grace_period() {
    need_rgw!();
    let w = start(
        &["--grace-period", "1s"],
        &[
            "sh",
            "-c",
            "trap '' TERM; echo started; while :; do sleep 0.05; done",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    w.signal(libc::SIGTERM);
    let (code, _, err, _d) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(137), "stderr:\n{err}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[test]
fn a_failed_mount_never_starts_the_app() {
    need_rgw!();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let marker = dir.path().join("app-ran");
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(common_args());
    args.push("s3://no-such-bucket-for-run".into());
    args.push(mnt.display().to_string());
    args.push("--".into());
    args.push("touch".into());
    args.push(marker.display().to_string());
    let out = Command::new(BIN).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!marker.exists(), "the app ran although the mount failed");
    assert!(!s3_oidc_mount::mount::is_mount_point(&mnt));
    // And a missing app is a clear error after a clean unmount.
    let (code, err) = {
        let w = start(&[], &["/nonexistent/app"]);
        let (c, _, e, _d) = w.finish(Duration::from_secs(60));
        (c, e)
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot start /nonexistent/app"), "{err}");
}

/// Zombie children of `pid`, from /proc.
fn zombies_of(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next());
        if state == Some("Z") && ppid == Some(pid.to_string().as_str()) {
            out.push(stat);
        }
    }
    out
}

#[test]
fn orphans_of_the_app_are_reaped() {
    need_rgw!();
    // The app leaves a short-lived orphan behind and keeps running for a while.
    let w = start(&[], &["sh", "-c", "(sleep 0.2 &) ; sleep 2; exit 0"]);
    let pid = w.child.id();
    std::thread::sleep(Duration::from_millis(1200));
    let z = zombies_of(pid);
    assert!(z.is_empty(), "zombies left under the wrapper: {z:?}");
    let (code, _, err, _d) = w.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
}
