//! The daemon's keyless credentials against real parts: the real binary mounts a bucket of a
//! real Ceph RGW with credentials it gets from RGW's STS (AssumeRoleWithWebIdentity, JWT
//! validated for real by RGW) for an identity token from the GCP metadata-server stand-in
//! (tests/common/idp.rs) or from a token file; a proxy in front of STS
//! (tests/common/stsproxy.rs) shows what the daemon sends and can fail or shorten the
//! credentials. The daemon runs without any AWS key in its environment.
//!
//! Run: `source <rgw dir>/env && cargo test --test federation` (scripts/rgw.sh), with
//! S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (the RGW admin, used only by the
//! test to set up buckets and roles) and AWS_EC2_METADATA_DISABLED=true exported.

use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::fed::{AUD, World, assert_no_secret, keyless, refs, secrets, strings};
use crate::common::iam;
use crate::common::idp::{self, IdentityMode, Idp};
use crate::common::stsproxy::{self, StsProxy};
use crate::common::*;

const OBTAINED: &str = "AWS credentials obtained";
const STILL_SERVING: &str = "credential renewal failed; still serving with the current credentials";
const EXPIRED: &str = "AWS credentials expired and cannot be renewed";
const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

// ---- set-up ----

fn mount_keyless(w: &World, extra: &[String], spawn: &Spawn) -> Mount {
    mount_with(&w.source(), &refs(extra), spawn)
}

/// Writes `text` to `path` as kubelet does (new file, mode 0600, renamed over the old one),
/// so that the daemon never reads half a token.
fn write_token_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .expect("create token file");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write token file");
    f.sync_all().expect("sync token file");
    std::fs::rename(&tmp, path).expect("rename token file");
}

// ---- log reading ----

/// `s` without ANSI escape sequences (colours).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn log_of(m: &Mount) -> String {
    plain(&m.log_text())
}

/// The raw log's length now: a mark for [`log_since`].
fn log_mark(m: &Mount) -> usize {
    m.log_text().len()
}

/// What the daemon logged after `mark`.
fn log_since(m: &Mount, mark: usize) -> String {
    let raw = m.log_text();
    plain(raw.get(mark..).unwrap_or(""))
}

fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// The value of `key=value` (or `key="value"`) in a text log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let i = line.find(&pat)? + pat.len();
    let rest = &line[i..];
    if let Some(q) = rest.strip_prefix('"') {
        q.find('"').map(|j| &q[..j])
    } else {
        Some(rest.split_whitespace().next().unwrap_or(""))
    }
}

/// The reasons of the `AWS credentials obtained` lines of `log`, in order.
fn obtained_reasons(log: &str) -> Vec<String> {
    lines_with(log, OBTAINED)
        .iter()
        .map(|l| field(l, "reason").unwrap_or("?").to_string())
        .collect()
}

// ---- checks ----

/// RoleSessionName rules: 2-64 characters of `[A-Za-z0-9_+=,.@-]`.
fn valid_session_name(n: &str) -> bool {
    (2..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
}

/// Whether JSON text has no whitespace outside its strings.
fn compact_json(s: &str) -> bool {
    let (mut in_str, mut esc) = (false, false);
    for c in s.chars() {
        if in_str {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c.is_whitespace() {
            return false;
        }
    }
    true
}

/// The audiences of the identity requests the stand-in received (decoded), and whether each
/// asked for `format=standard`.
fn identity_audiences(idp: &Idp) -> Vec<(String, bool)> {
    idp.requests()
        .iter()
        .filter_map(|r| r.split_once(' ').map(|(_, t)| t.to_string()))
        .filter(|t| t.starts_with(IDENTITY_PATH))
        .map(|t| {
            let q = t.split_once('?').map(|(_, q)| q).unwrap_or("");
            let fields = stsproxy::form_fields(q);
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (get("audience"), get("format") == "standard")
        })
        .collect()
}

/// Reads `key` through the mount: stat (size), open and read all (bytes); with
/// `--metadata-ttl 0` the stat and the open both ask S3.
fn read_file(m: &Mount, key: &str, want: &[u8]) -> std::io::Result<()> {
    let p = m.p(key);
    let md = std::fs::metadata(&p)?;
    assert_eq!(md.len(), want.len() as u64, "size of {key}");
    let mut got = Vec::with_capacity(want.len());
    std::fs::File::open(&p)?.read_to_end(&mut got)?;
    assert!(got == want, "{key}: wrong bytes read");
    Ok(())
}

/// Reads a 64 KiB piece of `key` (opened anew) at a spread offset chosen by `round`.
fn read_piece(m: &Mount, key: &str, want: &[u8], round: u64) -> std::io::Result<()> {
    const PIECE: usize = 64 << 10;
    let span = (want.len() - PIECE) as u64;
    let off = (round.wrapping_mul(2_654_435_761) % span) as usize;
    let f = std::fs::File::open(m.p(key))?;
    let mut buf = vec![0u8; PIECE];
    f.read_exact_at(&mut buf, off as u64)?;
    assert!(
        buf == want[off..off + PIECE],
        "{key}: wrong bytes at offset {off}"
    );
    Ok(())
}

/// Continuous reading: every small file whole, and a piece of the big one.
struct Reader<'a> {
    m: &'a Mount,
    small: Vec<(&'a str, &'a [u8])>,
    big: (&'a str, &'a [u8]),
    rounds: u64,
    reads: u64,
    failures: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(m: &'a Mount, w: &'a World, big: &'a str) -> Reader<'a> {
        Reader {
            m,
            small: w
                .files
                .iter()
                .filter(|(k, _)| k != big)
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect(),
            big: (big, w.file(big)),
            rounds: 0,
            reads: 0,
            failures: Vec::new(),
        }
    }

    fn round(&mut self) {
        self.rounds += 1;
        let t = Instant::now();
        for (k, v) in self.small.clone() {
            self.record(k, read_file(self.m, k, v));
        }
        for i in 0..3 {
            let (k, v) = self.big;
            self.record(k, read_piece(self.m, k, v, self.rounds * 3 + i));
        }
        // About 5 rounds a second: continuous, without hammering the server.
        if let Some(rest) = Duration::from_millis(200).checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }

    fn record(&mut self, key: &str, read: std::io::Result<()>) {
        self.reads += 1;
        if let Err(e) = read {
            self.failures.push(format!(
                "{key} at round {}: {e} ({:?})",
                self.rounds,
                e.kind()
            ));
        }
    }

    /// Reads for `d`.
    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.round();
        }
    }

    /// Reads until `f` holds (checked after each round) or `timeout`; whether it held.
    fn run_until(&mut self, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            self.round();
            if f() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
        }
    }

    /// Reads until the daemon logs a line with `needle` after `mark` (within 30 s): that
    /// line; `when` says in a failure what was being waited for.
    fn until_logged(&mut self, mark: usize, needle: &str, when: &str) -> String {
        let m = self.m;
        let seen = self.run_until(Duration::from_secs(30), || {
            log_since(m, mark).contains(needle)
        });
        assert!(seen, "no '{needle}' {when}; log:\n{}", log_of(m));
        lines_with(&log_since(m, mark), needle)[0].clone()
    }

    fn assert_no_failures(&self, when: &str) {
        assert!(
            self.failures.is_empty(),
            "{when}: {} of {} reads failed: {:#?}\nlog:\n{}",
            self.failures.len(),
            self.reads,
            self.failures,
            log_of(self.m)
        );
    }
}

/// Runs the daemon to completion (for refusals): exit status, stderr (plain), time taken,
/// and whether anything was left mounted on the mountpoint.
fn run_daemon(
    source: &str,
    extra: &[String],
    spawn: &Spawn,
    timeout: Duration,
) -> (ExitStatus, String, Duration, bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).expect("mkdir mnt");
    let errpath = dir.path().join("stderr");
    let errf = std::fs::File::create(&errpath).expect("stderr file");
    let mut cmd = Command::new(BIN);
    cmd.arg("mount").arg(source).arg(&mp).args(common_args());
    cmd.args(extra);
    for k in &spawn.env_remove {
        cmd.env_remove(k);
    }
    cmd.env("S3_OIDC_MOUNT_LOG_LEVEL", "info");
    for (k, v) in &spawn.env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(errf)
        .spawn()
        .expect("spawn daemon");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let mounted = s3_oidc_mount::mount::is_mount_point(&mp);
            if mounted {
                let _ = Command::new("umount").arg("-l").arg(&mp).status();
            }
            panic!(
                "daemon still running after {timeout:?} (mounted: {mounted}); stderr:\n{}",
                plain(&std::fs::read_to_string(&errpath).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = t0.elapsed();
    let mounted = s3_oidc_mount::mount::is_mount_point(&mp);
    if mounted {
        let _ = Command::new("umount").arg("-l").arg(&mp).status();
    }
    let err = plain(&std::fs::read_to_string(&errpath).unwrap_or_default());
    (status, err, elapsed, mounted)
}

/// Stops the daemon: a clean exit, and none of `sec` in its log.
fn stop_leaving_no_secret(m: &mut Mount, sec: &[(String, String)]) {
    assert_eq!(m.stop().code(), Some(0), "log:\n{}", log_of(m));
    assert_no_secret("the log", m.log_text().as_bytes(), sec);
}

/// The `s3-oidc-mount: error: ...` line of a refusal: exactly one, and no ERROR-level log line.
fn the_error_line(case: &str, stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("s3-oidc-mount: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{case}: exactly one error line expected:\n{stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.contains(" ERROR ")),
        "{case}: ERROR-level log lines besides the error line:\n{stderr}"
    );
    errors[0].to_string()
}

// ---- 1. keyless gcp mount ----

#[test]
fn keyless_gcp_mount_reads_correct_bytes_and_leaks_no_secret() {
    need_rgw!();
    let w = World::new(
        "fed-gcp",
        vec![
            ("hello.txt", b"hello from a keyless mount\n".to_vec()),
            ("dir/data.json", br#"{"k":[1,2,3]}"#.to_vec()),
            ("big.bin", random_bytes((5 << 20) + 4321, 11)),
        ],
    );
    let cwd = tempfile::tempdir().expect("cwd");
    let mut spawn = keyless(&w.idp.host_port());
    spawn.cwd = Some(cwd.path().to_path_buf());
    let mut args = w.gcp_args();
    args.extend(strings(&[
        "--session-name",
        "my/odd name",
        "--log-level",
        "trace",
    ]));
    let mut m = mount_keyless(&w, &args, &spawn);

    // The bytes.
    for (k, v) in &w.files {
        assert_eq!(sha256_file(&m.p(k)), sha256(v), "{k}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&m.path)
        .expect("readdir")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "dir", "hello.txt"]);

    // What the daemon holds while it runs.
    let pid = m.pid();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ_text = String::from_utf8_lossy(&environ).replace('\0', "\n");
    for var in [
        "AWS_ACCESS_KEY_ID=",
        "AWS_SECRET_ACCESS_KEY=",
        "AWS_SESSION_TOKEN=",
    ] {
        assert!(
            !environ_text.lines().any(|l| l.starts_with(var)),
            "the keyless daemon's environment has {var}"
        );
    }
    // Regular files the daemon has open (besides its log): read them for secrets below.
    let mut open_files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir") {
        let Ok(target) = std::fs::read_link(fd.unwrap().path()) else {
            continue;
        };
        if target.is_absolute()
            && target != m.log
            && !target.starts_with("/dev")
            && !target.starts_with("/proc")
            && target.is_file()
            && let Ok(data) = std::fs::read(&target)
        {
            open_files.push((target, data));
        }
    }

    // The metadata server was asked, for the configured audience.
    let auds = identity_audiences(&w.idp);
    assert!(!auds.is_empty(), "no identity request reached the stand-in");
    assert!(w.idp.identity_requests() >= 1);
    for (aud, standard) in &auds {
        assert_eq!(aud, AUD, "audience of an identity request");
        assert!(standard, "identity request without format=standard");
    }
    assert_eq!(w.idp.last_audience().as_deref(), Some(AUD));

    // What the daemon sent to STS.
    let reqs = w.proxy.requests();
    assert!(
        !reqs.is_empty(),
        "the daemon did not use --sts-endpoint-url"
    );
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.field("Action"), Some("AssumeRoleWithWebIdentity"));
        assert_eq!(r.field("RoleArn"), Some(w.role.arn.as_str()));
        let token = r.field("WebIdentityToken").expect("WebIdentityToken");
        assert!(
            w.idp.served(token),
            "the daemon sent STS a token the stand-in did not serve"
        );
        let name = r.field("RoleSessionName").expect("RoleSessionName");
        assert!(valid_session_name(name), "invalid RoleSessionName {name:?}");
        assert_eq!(name, "my-odd-name", "--session-name my/odd name, sanitized");
        assert_eq!(r.field("DurationSeconds"), Some("3600"), "default 1h");
        let policy = r.field("Policy").expect("a session policy (auto)");
        let doc: serde_json::Value = serde_json::from_str(policy)
            .unwrap_or_else(|e| panic!("Policy is not JSON ({e}): {policy}"));
        assert!(doc.is_object(), "{policy}");
        assert!(compact_json(policy), "Policy is not compact: {policy}");
        assert!(
            policy.contains(&format!("arn:aws:s3:::{}", w.bucket)),
            "Policy does not name the bucket: {policy}"
        );
    }
    let issued = w.proxy.issued();
    assert!(!issued.is_empty(), "no credentials came through the proxy");

    // The log: what was obtained, for whom.
    let log = log_of(&m);
    let got = lines_with(&log, OBTAINED);
    assert!(!got.is_empty(), "no '{OBTAINED}' line; log:\n{log}");
    let first = &got[0];
    assert_eq!(field(first, "reason"), Some("initial"), "{first}");
    assert_eq!(
        field(first, "subject"),
        Some(idp::DEFAULT_SUBJECT),
        "{first}"
    );
    assert_eq!(field(first, "session"), Some("my-odd-name"), "{first}");
    assert!(
        log.lines()
            .any(|l| l.contains(" TRACE ") || l.contains(" DEBUG ")),
        "--log-level trace logged nothing below INFO"
    );

    // No secret anywhere.
    let sec = secrets(&w.idp.tokens_served(), &w.proxy);
    assert_no_secret("/proc/PID/cmdline", &cmdline, &sec);
    assert_no_secret("/proc/PID/environ", &environ, &sec);
    for (path, data) in &open_files {
        assert_no_secret(&format!("open file {}", path.display()), data, &sec);
    }
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "exit status; log:\n{}", log_of(&m));
    assert_no_secret("the trace-level log", m.log_text().as_bytes(), &sec);
    let left: Vec<_> = std::fs::read_dir(cwd.path())
        .expect("read cwd")
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        left.is_empty(),
        "the daemon wrote into its working directory: {left:?}"
    );
}

// ---- 2. renewals while mounted ----

#[test]
fn renews_while_reading_and_rides_out_an_identity_provider_outage() {
    need_rgw!();
    let w = World::new(
        "fed-renew",
        vec![
            ("a.txt", b"alpha\n".to_vec()),
            ("sub/b.txt", random_bytes(100_000, 3)),
            ("big.bin", random_bytes((12 << 20) + 99, 5)),
        ],
    );
    // Tokens shorter-lived than margin + 60 s: every renewal asks the metadata server.
    w.idp.set_lifetime(Duration::from_secs(600));
    let mut args = w.gcp_args();
    args.extend(strings(&[
        "--session-duration",
        "900s",
        "--refresh-margin",
        "890s",
        "--metadata-ttl",
        "0",
        "--cache-size",
        "64MiB",
    ]));
    let mut m = mount_keyless(&w, &args, &keyless(&w.idp.host_port()));
    let mut r = Reader::new(&m, &w, "big.bin");

    // Reading continuously for ~20 s: renewals every 4.5-9 s, no read fails. (Up to 10 s
    // more for the second renewal, should the machine be slow.)
    let scheduled_count = |m: &Mount| {
        obtained_reasons(&log_of(m))
            .iter()
            .filter(|r| *r == "scheduled")
            .count()
    };
    r.run_for(Duration::from_secs(20));
    r.run_until(Duration::from_secs(10), || scheduled_count(&m) >= 2);
    r.assert_no_failures("while renewing");
    assert!(r.rounds >= 20, "only {} rounds of reads", r.rounds);
    let log = log_of(&m);
    let reasons = obtained_reasons(&log);
    let scheduled = scheduled_count(&m);
    assert!(
        scheduled >= 2,
        "{scheduled} scheduled renewals in ~20 s ({reasons:?}); log:\n{log}"
    );
    assert!(
        w.idp.identity_requests() > scheduled,
        "renewals did not fetch new identity tokens ({} requests)",
        w.idp.identity_requests()
    );
    // Every exchange used a token the stand-in served, under the default session name
    // (the workload's, with the instance id's tail).
    let instance_tail = {
        let id = &w.idp.config().instance_id;
        id[id.len().saturating_sub(12)..].to_string()
    };
    for q in w.proxy.requests() {
        assert!(w.idp.served(q.field("WebIdentityToken").unwrap_or("")));
        let name = q.field("RoleSessionName").unwrap_or("");
        assert!(valid_session_name(name), "invalid RoleSessionName {name:?}");
        assert!(
            name.ends_with(&format!(".{instance_tail}")),
            "default RoleSessionName {name:?} lacks the instance id's tail {instance_tail}"
        );
        assert_eq!(q.field("DurationSeconds"), Some("900"));
    }

    // The metadata server fails: renewals fail, the current credentials keep serving.
    let asked = w.idp.identity_requests();
    let mark = log_mark(&m);
    w.idp.set_mode(IdentityMode::Fail);
    let warn = r.until_logged(mark, STILL_SERVING, "within 30 s of the outage");
    assert!(warn.contains(" WARN "), "{warn}");
    assert!(
        warn.contains("cannot get an identity token") && warn.contains("metadata server"),
        "the warning does not say what failed: {warn}"
    );
    assert!(w.idp.identity_requests() > asked);
    r.run_for(Duration::from_secs(5));
    r.assert_no_failures("during the identity-provider outage");
    assert!(
        !log_since(&m, mark).contains(EXPIRED),
        "credentials reported expired during a short outage"
    );

    // Back: a later renewal succeeds.
    let mark = log_mark(&m);
    w.idp.set_mode(IdentityMode::Normal);
    r.until_logged(
        mark,
        OBTAINED,
        "(no renewal) within 30 s after the metadata server came back",
    );
    let after = obtained_reasons(&log_since(&m, mark));
    assert_eq!(after[0], "scheduled", "{after:?}");
    r.run_for(Duration::from_secs(2));
    r.assert_no_failures("after the outage");

    let sec = secrets(&w.idp.tokens_served(), &w.proxy);
    let log = log_of(&m);
    stop_leaving_no_secret(&mut m, &sec);
    eprintln!(
        "renewals: {} STS requests over {} connections; reasons {:?}",
        w.proxy.request_count(),
        w.proxy.connection_count(),
        obtained_reasons(&log)
    );

    // Renewals follow the schedule: after one, the next is due 4.5-9 s later (margin 890 s
    // of 900 s, jitter up to half the 9 s before the margin), also right after an outage.
    let issued = w.proxy.issued();
    for pair in issued.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap_or_default();
        assert!(
            gap >= Duration::from_secs(2),
            "two STS exchanges {gap:?} apart (at {} and {}): a renewal right after a \
             renewal, not per the schedule; reasons {:?}; log:\n{log}",
            stsproxy::rfc3339(pair[0].at),
            stsproxy::rfc3339(pair[1].at),
            obtained_reasons(&log)
        );
    }
}

// ---- 3. expiry, then recovery ----

#[test]
fn expired_credentials_fail_reads_with_eacces_until_sts_answers_again() {
    need_rgw!();
    let w = World::new("fed-exp", vec![("f.txt", b"expiring\n".to_vec())]);
    let want = w.file("f.txt").to_vec();
    // The daemon is told its credentials expire in 25 s (RGW honours them for an hour).
    w.proxy.set_expiry_override(Some(Duration::from_secs(25)));
    let mut args = w.gcp_args();
    args.extend(strings(&["--metadata-ttl", "0", "--refresh-margin", "5s"]));
    let mut m = mount_keyless(&w, &args, &keyless(&w.idp.host_port()));
    for _ in 0..5 {
        read_file(&m, "f.txt", &want).expect("read with fresh credentials");
        std::thread::sleep(Duration::from_millis(200));
    }
    let issued = w.proxy.issued();
    let left = issued
        .last()
        .unwrap()
        .expiry_sent
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= Duration::from_secs(25),
        "expiry override not applied"
    );

    // STS fails from now on.
    let mark = log_mark(&m);
    w.proxy.set_fail(Some(503));
    let failed_at = Instant::now();
    let mut errors: Vec<(Duration, ErrorKind, String)> = Vec::new();
    let mut denied_at: Option<SystemTime> = None;
    let mut oks_after_denial = 0;
    // Until the first EACCES, then 3 s more (or any other error).
    poll(Duration::from_secs(60), || {
        match read_file(&m, "f.txt", &want) {
            Ok(()) if denied_at.is_some() => oks_after_denial += 1,
            Ok(()) => {}
            Err(e) => {
                if e.kind() == ErrorKind::PermissionDenied && denied_at.is_none() {
                    denied_at = Some(SystemTime::now());
                }
                errors.push((failed_at.elapsed(), e.kind(), e.to_string()));
                if e.kind() != ErrorKind::PermissionDenied {
                    return true;
                }
            }
        }
        denied_at.is_some_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3))
    });
    assert!(
        errors
            .iter()
            .all(|(_, k, _)| *k == ErrorKind::PermissionDenied),
        "reads with expired credentials must fail with EACCES only: {errors:?}; log:\n{}",
        log_of(&m)
    );
    let Some(denied_at) = denied_at else {
        panic!(
            "reads never failed with EACCES within 60 s of STS failing (errors {errors:?}); log:\n{}",
            log_of(&m)
        );
    };
    assert_eq!(
        oks_after_denial, 0,
        "reads succeeded again while STS was still failing: expired credentials used"
    );
    // Not before the daemon had to consider them expired (10 s before the Expiration it
    // was told; 1 s of slack for the whole-second Expiration).
    let last = w
        .proxy
        .issued()
        .last()
        .cloned()
        .expect("issued credentials");
    let expired_from = last.expiry_sent - Duration::from_secs(11);
    assert!(
        denied_at >= expired_from,
        "EACCES {:?} before the credentials were due to expire",
        expired_from.duration_since(denied_at).unwrap_or_default()
    );
    assert!(
        denied_at <= last.expiry_sent + Duration::from_secs(5),
        "reads kept working {:?} past the Expiration the daemon was given",
        denied_at
            .duration_since(last.expiry_sent)
            .unwrap_or_default()
    );
    // It was the daemon's own refusal: RGW still takes those credentials.
    let s3 = iam::s3_client_with_keys(
        &last.access_key_id,
        &last.secret_access_key,
        Some(&last.session_token),
    );
    rt().block_on(s3.list_objects_v2().bucket(&w.bucket).send())
        .expect("RGW honours the credentials the daemon no longer uses");
    assert!(w.proxy.injected_count() > 0, "the daemon never retried STS");
    let saw_error = poll(Duration::from_secs(20), || {
        log_since(&m, mark).contains(EXPIRED)
    });
    assert!(
        saw_error,
        "no '{EXPIRED}' line; log:\n{}",
        log_since(&m, mark)
    );
    let line = lines_with(&log_since(&m, mark), EXPIRED)[0].clone();
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains("ServiceUnavailable"),
        "the error does not say what STS answered: {line}"
    );

    // STS answers again: reads recover by themselves.
    let mark = log_mark(&m);
    let count_before = w.proxy.success_count();
    w.proxy.set_fail(None);
    let back = Instant::now();
    let recovered = poll(Duration::from_secs(30), || {
        read_file(&m, "f.txt", &want).is_ok()
    });
    assert!(
        recovered,
        "reads still fail 30 s after STS came back; log:\n{}",
        log_since(&m, mark)
    );
    eprintln!("recovered {:?} after STS came back", back.elapsed());
    assert!(w.proxy.success_count() > count_before);
    let reasons = obtained_reasons(&log_since(&m, mark));
    assert!(
        reasons.iter().any(|r| r == "expired" || r == "scheduled"),
        "no renewal logged after recovery: {reasons:?}"
    );
    for _ in 0..10 {
        read_file(&m, "f.txt", &want).expect("read after recovery");
        std::thread::sleep(Duration::from_millis(100));
    }

    let sec = secrets(&w.idp.tokens_served(), &w.proxy);
    stop_leaving_no_secret(&mut m, &sec);
}

// ---- 4. refused at mount ----

/// A mount that must be refused: exit status 1, nothing mounted, within `within`, and one
/// error line that contains each of `says`.
struct Refusal {
    case: String,
    source: String,
    args: Vec<String>,
    spawn: Spawn,
    within: Duration,
    says: Vec<String>,
    /// Checks of what the stand-ins saw, given stderr; it owns them, so they stay up until then.
    then: Box<dyn FnOnce(&str)>,
}

fn assert_refused(r: Refusal) {
    let case = r.case.as_str();
    let (st, err, took, mounted) =
        run_daemon(&r.source, &r.args, &r.spawn, Duration::from_secs(60));
    assert_eq!(st.code(), Some(1), "{case}: {err}");
    assert!(!mounted, "{case}: left mounted");
    let line = the_error_line(case, &err);
    for s in &r.says {
        assert!(line.contains(s.as_str()), "{case}: {line}");
    }
    (r.then)(&err);
    assert!(took < r.within, "{case}: took {took:?}");
    eprintln!("{case}: refused after {took:?}");
}

/// RGW's STS rejects the token (AccessDenied): at once, not retried, said in the one line
/// of stderr that mentions an error, with no secret in it; `also` checks the stand-ins more.
fn sts_rejection(
    case: &str,
    w: World,
    args: Vec<String>,
    says: &[&str],
    also: fn(&World),
) -> Refusal {
    let mut says: Vec<String> = says.iter().map(|s| s.to_string()).collect();
    says.insert(0, "AccessDenied".into());
    let name = case.to_string();
    Refusal {
        case: name.clone(),
        source: w.source(),
        args,
        spawn: keyless(&w.idp.host_port()),
        within: Duration::from_secs(15),
        says,
        then: Box::new(move |err| {
            let case = name;
            assert_eq!(
                err.lines().filter(|l| l.contains("error")).count(),
                1,
                "{case}: {err}"
            );
            also(&w);
            assert_eq!(w.proxy.request_count(), 1, "{case}: a rejection is final");
            assert_no_secret(
                "stderr",
                err.as_bytes(),
                &secrets(&w.idp.tokens_served(), &w.proxy),
            );
        }),
    }
}

/// The metadata server fails, or hangs: a few tries, then a clear error; STS never asked.
fn metadata_failure(mode: IdentityMode) -> Refusal {
    let idp = Idp::start();
    idp.set_mode(mode);
    let proxy = StsProxy::start();
    let args = strings(&[
        "--credentials",
        "gcp",
        "--role-arn",
        "arn:aws:iam:::role/never-assumed",
        "--audience",
        AUD,
        "--sts-endpoint-url",
        &proxy.url(),
    ]);
    let case = format!("metadata server {mode:?}");
    let hang = mode == IdentityMode::Hang;
    let mut says = vec!["cannot get an identity token".to_string()];
    if hang {
        says.push("timed out".into());
    }
    Refusal {
        case: case.clone(),
        source: "s3://fed-no-such-bucket".into(),
        args,
        spawn: keyless(&idp.host_port()),
        within: Duration::from_secs(if hang { 35 } else { 15 }),
        says,
        then: Box::new(move |err| {
            assert_eq!(idp.identity_requests(), 3, "{case}: 3 attempts; {err}");
            assert_eq!(
                proxy.request_count(),
                0,
                "{case}: STS asked without a token"
            );
        }),
    }
}

#[test]
fn refused_at_mount_with_one_clear_error_and_nothing_mounted() {
    need_rgw!();
    const WRONG_AUD: &str = "https://not-registered.test/aud";
    const OTHER_SUB: &str = "999000111222333444555";
    // Each case sets up its own stand-ins, in its own thread.
    let cases: [fn() -> Refusal; 5] = [
        || {
            let w = World::new("fed-rej-aud", vec![]);
            let mut args = w.gcp_args();
            let i = args.iter().position(|a| a == AUD).unwrap();
            args[i] = WRONG_AUD.into();
            let aud = format!("aud={WRONG_AUD}");
            sts_rejection("wrong audience", w, args, &[&aud], |w| {
                assert_eq!(w.idp.last_audience().as_deref(), Some(WRONG_AUD));
            })
        },
        // A service account the role does not trust.
        || {
            let w = World::new("fed-rej-sub", vec![]);
            w.idp.set_subject(OTHER_SUB);
            let args = w.gcp_args();
            let (sub, aud) = (format!("sub={OTHER_SUB}"), format!("aud={AUD}"));
            sts_rejection("untrusted subject", w, args, &[&sub, &aud], |_| {})
        },
        || metadata_failure(IdentityMode::Fail),
        || metadata_failure(IdentityMode::Hang),
        // gcp without a role.
        || {
            let idp = Idp::start();
            Refusal {
                case: "no --role-arn".into(),
                source: "s3://fed-no-such-bucket".into(),
                args: strings(&["--credentials", "gcp", "--audience", AUD]),
                spawn: keyless(&idp.host_port()),
                within: Duration::from_secs(15),
                says: vec!["--role-arn".into()],
                then: Box::new(move |_| {
                    assert_eq!(
                        idp.identity_requests(),
                        0,
                        "no --role-arn: asked for a token it cannot use"
                    );
                }),
            }
        },
    ];
    std::thread::scope(|s| {
        for case in cases {
            s.spawn(move || assert_refused(case()));
        }
    });
}

// ---- 5. token file ----

#[test]
fn token_file_is_read_again_for_each_renewal() {
    need_rgw!();
    let w = World::new(
        "fed-tf",
        vec![
            ("t.txt", b"token file mode\n".to_vec()),
            ("big.bin", random_bytes((2 << 20) + 7, 9)),
        ],
    );
    let dir = tempfile::tempdir().expect("token dir");
    let path = dir.path().join("token");
    let first = w.idp.mint(AUD);
    write_token_file(&path, &first);
    let args = strings(&[
        "--credentials",
        "token-file",
        "--token-file",
        path.to_str().unwrap(),
        "--role-arn",
        &w.role.arn,
        "--sts-endpoint-url",
        &w.proxy.url(),
        "--session-duration",
        "900s",
        "--refresh-margin",
        "890s",
        "--metadata-ttl",
        "0",
    ]);
    // No metadata server: a closed port.
    let mut m = mount_keyless(&w, &args, &keyless("127.0.0.1:1"));
    let mut r = Reader::new(&m, &w, "big.bin");
    r.run_for(Duration::from_secs(1));
    r.assert_no_failures("token-file mount");
    let log = log_of(&m);
    assert!(
        lines_with(&log, "credentials mode")
            .iter()
            .any(|l| l.contains("TokenFile")),
        "{log}"
    );
    // A scheduled renewal with the file's token.
    assert!(
        r.run_until(Duration::from_secs(20), || obtained_reasons(&log_of(&m))
            .iter()
            .any(|r| r == "scheduled")),
        "no scheduled renewal; log:\n{}",
        log_of(&m)
    );
    assert!(
        w.proxy
            .requests()
            .iter()
            .all(|q| q.field("WebIdentityToken") == Some(first.as_str()))
    );

    // Garbage in the file: the renewal fails, reads go on.
    let mark = log_mark(&m);
    let garbage = "this is not a token\n";
    write_token_file(&path, garbage);
    let warn = r.until_logged(mark, STILL_SERVING, "after the token file went bad");
    assert!(
        warn.contains("token file") && warn.contains(path.to_str().unwrap()),
        "the warning does not name the token file: {warn}"
    );
    assert!(!warn.contains("this is not a token"), "{warn}");
    r.run_for(Duration::from_secs(3));
    r.assert_no_failures("with a bad token file");
    assert!(
        w.proxy
            .requests()
            .iter()
            .all(|q| q.field("WebIdentityToken") != Some(garbage.trim())),
        "garbage sent to STS"
    );

    // A fresh token: a later renewal succeeds with it.
    std::thread::sleep(Duration::from_millis(1100)); // another iat, another token
    let fresh = w.idp.mint(AUD);
    assert_ne!(fresh, first);
    let mark = log_mark(&m);
    write_token_file(&path, &fresh);
    r.until_logged(mark, OBTAINED, "(no renewal) with the fresh token");
    assert!(
        w.proxy
            .requests()
            .iter()
            .any(|q| q.field("WebIdentityToken") == Some(fresh.as_str()) && q.status == 200),
        "the fresh token did not reach STS"
    );
    r.run_for(Duration::from_secs(1));
    r.assert_no_failures("after the token file was fixed");

    let sec = secrets(&[first, fresh], &w.proxy);
    stop_leaving_no_secret(&mut m, &sec);
}

#[test]
fn auto_mode_picks_the_token_file_from_the_environment() {
    need_rgw!();
    let w = World::new(
        "fed-auto",
        vec![("x/y.txt", b"auto picked the token file\n".to_vec())],
    );
    let dir = tempfile::tempdir().expect("token dir");
    let path = dir.path().join("token");
    let token = w.idp.mint(AUD);
    write_token_file(&path, &token);
    // No metadata server answers (closed port); the token file and role come from the
    // standard AWS variables.
    let mut spawn = keyless("127.0.0.1:1");
    spawn.env.push((
        "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
        path.to_str().unwrap().into(),
    ));
    spawn.env.push(("AWS_ROLE_ARN".into(), w.role.arn.clone()));
    let args = strings(&[
        "--credentials",
        "auto",
        "--sts-endpoint-url",
        &w.proxy.url(),
    ]);
    let mut m = mount_keyless(&w, &args, &spawn);
    for (k, v) in &w.files {
        assert_eq!(sha256_file(&m.p(k)), sha256(v), "{k}");
    }
    let log = log_of(&m);
    let mode = lines_with(&log, "credentials mode");
    assert_eq!(mode.len(), 1, "{log}");
    assert!(mode[0].contains("TokenFile"), "{}", mode[0]);
    let reqs = w.proxy.requests();
    assert!(!reqs.is_empty(), "STS not asked through the proxy");
    assert!(reqs.iter().all(|q| {
        q.field("WebIdentityToken") == Some(token.as_str())
            && q.field("RoleArn") == Some(w.role.arn.as_str())
            && valid_session_name(q.field("RoleSessionName").unwrap_or(""))
    }));
    assert_eq!(w.idp.identity_requests(), 0);
    let sec = secrets(&[token], &w.proxy);
    stop_leaving_no_secret(&mut m, &sec);
}
