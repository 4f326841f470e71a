//! The container image in a real Docker engine: the example app image (docs/app-image, the
//! image's binary copied into an app image) mounts a bucket of the real Ceph RGW with keyless
//! credentials (metadata-server stand-in -> RGW STS), the app reads the files as the
//! unprivileged `app` user and prints their hashes, and `docker stop` ends app and mount
//! cleanly. Without /dev/fuse or CAP_SYS_ADMIN the container exits at once with a message.
//!
//! These tests need images: `scripts/test.sh` builds them and runs
//! `S3OM_TEST_IMAGE=... S3OM_TEST_APP_IMAGE=... cargo test --test container -- --ignored`.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::fed::{AUD, World};
use crate::common::*;

const DOCKER: &str = "/usr/bin/docker";

fn image(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: scripts/test.sh builds the images and sets it")
    })
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("hello.txt", b"hello from s3\n".to_vec()),
        ("data/blob.bin", random_bytes(5 << 20, 41)),
        ("data/deeper/ünïcode name.csv", b"a,b\n1,2\n".to_vec()),
        ("empty", Vec::new()),
    ]
}

/// `docker run` options for a keyless mount of the world's bucket: configuration only
/// through S3_OIDC_MOUNT_* variables, no AWS key anywhere.
fn env_args(w: &World) -> Vec<String> {
    let env = [
        ("S3_OIDC_MOUNT_SOURCE", w.source()),
        ("S3_OIDC_MOUNT_ENDPOINT_URL", endpoint()),
        ("S3_OIDC_MOUNT_FORCE_PATH_STYLE", "true".into()),
        ("S3_OIDC_MOUNT_REGION", "us-east-1".into()),
        ("S3_OIDC_MOUNT_CREDENTIALS", "gcp".into()),
        ("S3_OIDC_MOUNT_ROLE_ARN", w.role.arn.clone()),
        ("S3_OIDC_MOUNT_AUDIENCE", AUD.into()),
        ("S3_OIDC_MOUNT_STS_ENDPOINT_URL", w.proxy.url()),
        ("GCE_METADATA_HOST", w.idp.host_port()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    env.iter()
        .flat_map(|(k, v)| ["-e".to_string(), format!("{k}={v}")])
        .collect()
}

/// A container name unique to this run; the container is removed when dropped.
struct Container(String);

impl Container {
    fn new(tag: &str) -> Container {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Container(format!("s3om-test-{tag}-{}-{nanos}", std::process::id()))
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.0]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn inspect(&self, format: &str) -> String {
        let out = docker(&["inspect", "-f", format, &self.0]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(DOCKER)
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new(DOCKER)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {DOCKER}: {e}"))
}

/// Runs a container in the foreground; fails the test if it has not exited after `limit`
/// (a hang is the failure this guards against).
fn run_to_end(args: &[String], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(DOCKER)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker run");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the container still runs after {limit:?}: it should have exited");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
#[ignore = "needs the images: scripts/test.sh builds them"]
fn app_image_reads_keyless_as_app_user_and_stops_cleanly() {
    need_rgw!();
    let app_image = image("S3OM_TEST_APP_IMAGE");
    let w = World::new("ctr", files());
    let c = Container::new("app");
    let mut args: Vec<String> = ["run", "-d", "--name", &c.0, "--device", "/dev/fuse"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--cap-add", "SYS_ADMIN", "--network", "host"].map(String::from));
    args.extend(env_args(&w));
    args.push(app_image);
    let t0 = epoch_secs();
    let out = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The app prints "serving" once it has hashed every file.
    let deadline = Instant::now() + Duration::from_secs(120);
    let logs = loop {
        let logs = c.logs();
        if logs.contains("app: serving") {
            break logs;
        }
        if c.inspect("{{.State.Running}}") == "false" {
            panic!("the container exited early:\n{logs}");
        }
        assert!(
            Instant::now() < deadline,
            "app not serving after 120 s:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        logs.contains("app: running as uid 10001"),
        "the app must run as the image's `app` user:\n{logs}"
    );
    for (key, data) in &w.files {
        let line = format!("{}  /mnt/s3/{key}", sha256(data));
        assert!(logs.contains(&line), "missing or wrong: {line}\n{logs}");
    }
    let first_read: f64 = logs
        .lines()
        .find_map(|l| l.strip_prefix("app: first read done at "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no first-read line:\n{logs}"));
    // The keyless path really ran: the daemon asked the stand-in for a token for AUD and
    // exchanged it with STS...
    assert!(w.idp.identity_requests() >= 1);
    assert_eq!(w.idp.last_audience().as_deref(), Some(AUD));
    assert!(w.proxy.request_count() > 0, "no STS request seen");
    // ...and no token it served shows in the container's output.
    for token in w.idp.tokens_served() {
        let sig = token.rsplit('.').next().unwrap_or_default();
        assert!(!logs.contains(sig), "a token signature is in the logs");
    }
    let env = c.inspect("{{json .Config.Env}}");
    assert!(
        !env.contains("AWS_SECRET") && !env.contains("AWS_SESSION_TOKEN"),
        "{env}"
    );

    // docker stop: SIGTERM to the daemon (PID 1), forwarded to the app, which exits 0; the
    // daemon unmounts and exits with the app's status, before docker's 10 s SIGKILL.
    let t_stop = Instant::now();
    let out = docker(&["stop", "-t", "10", &c.0]);
    let stop_took = t_stop.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = c.logs();
    assert_eq!(
        c.inspect("{{.State.ExitCode}}"),
        "0",
        "exit status after docker stop (137 = killed by docker):\n{logs}"
    );
    assert!(logs.contains("app: SIGTERM, exiting"), "{logs}");
    assert!(
        logs.contains("\"unmounted\"") || logs.contains(" unmounted"),
        "{logs}"
    );
    eprintln!(
        "container figures: docker run -> app's first read {:.2} s; docker stop {:.2} s",
        first_read - t0,
        stop_took.as_secs_f64()
    );
}

#[test]
#[ignore = "needs the images: scripts/test.sh builds them"]
fn without_fuse_device_or_capability_the_container_exits_with_a_message() {
    need_rgw!();
    let base = image("S3OM_TEST_IMAGE");
    let w = World::new("ctrfail", files());
    // The app would announce itself; it must never start.
    let app = ["run", "--", "sh", "-c", "echo APP-STARTED"].map(String::from);
    let cases: [(&str, &[&str], &str); 2] = [
        (
            "no device",
            &["--cap-add", "SYS_ADMIN"],
            "/dev/fuse is missing",
        ),
        (
            "no capability",
            &["--device", "/dev/fuse"],
            "without CAP_SYS_ADMIN",
        ),
    ];
    for (case, opts, want) in cases {
        let c = Container::new("fail");
        let mut args: Vec<String> = ["run", "--name", &c.0, "--network", "host"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(opts.iter().map(|s| s.to_string()));
        args.extend(env_args(&w));
        args.push(base.clone());
        args.extend(app.iter().cloned());
        let (code, out) = run_to_end(&args, Duration::from_secs(60));
        assert_eq!(code, Some(1), "{case}: exit status\n{out}");
        assert!(out.contains(want), "{case}: expected {want:?} in\n{out}");
        assert!(
            !out.contains("APP-STARTED"),
            "{case}: the app started\n{out}"
        );
        // It fails before asking for credentials: nothing to clean up, nothing leaked.
        assert_eq!(w.idp.identity_requests(), 0, "{case}");
    }
}
