//! Bad input and unusable setups: a clear one-line error, a non-zero exit, nothing mounted.

mod common;

use std::time::Duration;

use common::*;

fn mount_args<'a>(source: &'a str, mp: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v = vec!["mount".to_string(), source.to_string(), mp.to_string()];
    v.extend(common_args());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(args: &[String]) -> (Option<i32>, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (st, err) = run_bin(&refs, Duration::from_secs(60));
    (st.code(), err)
}

fn assert_one_line_error(err: &str, needle: &str) {
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line expected:\n{err}");
    assert!(
        lines[0].contains(needle),
        "{needle:?} not in {:?}",
        lines[0]
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().to_str().unwrap();
    for (extra, needle) in [
        (vec!["--cache-size", "lots"], "lots"),
        (vec!["--file-mode", "999"], "octal"),
        (vec!["--metadata-ttl", "5 fortnights"], "duration"),
        (vec!["--part-size", "100k"], "part size"),
        (vec!["--fuse-threads", "0"], "fuse-threads"),
        (vec!["--log-format", "xml"], "xml"),
        (vec!["--log-level", "verbose"], "verbose"),
        (vec!["--no-such-flag"], "no-such-flag"),
        (vec!["--endpoint-url", "ftp://x"], "URL"),
    ] {
        let (code, err) = run(&mount_args("s3://some-bucket", mp, &extra));
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    assert!(!s3_oidc_mount::mount::is_mount_point(dir.path()));
}

#[test]
fn bad_sources_and_mountpoints_fail_before_mounting() {
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let mps = mp.to_str().unwrap();
    for (src, needle) in [
        ("bucket-without-scheme", "not an S3 URL"),
        ("s3://Bad_Bucket", "invalid bucket name"),
        ("s3://ok-bucket/a/../b", "prefix"),
    ] {
        let (code, err) = run(&mount_args(src, mps, &[]));
        assert_eq!(code, Some(1), "{src}: {err}");
        assert_one_line_error(&err, needle);
    }
    let missing = dir.path().join("missing");
    let (code, err) = run(&mount_args(
        "s3://ok-bucket",
        missing.to_str().unwrap(),
        &[],
    ));
    assert_eq!(code, Some(1));
    assert_one_line_error(&err, "does not exist");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let (code, err) = run(&mount_args("s3://ok-bucket", file.to_str().unwrap(), &[]));
    assert_eq!(code, Some(1));
    assert_one_line_error(&err, "not a directory");
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let (code, err) = run(&mount_args("s3://ok-bucket", full.to_str().unwrap(), &[]));
    assert_eq!(code, Some(1));
    assert_one_line_error(&err, "not empty");
}

#[test]
fn unknown_bucket_unreachable_endpoint_and_wrong_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mps = dir.path().to_str().unwrap();
    let (code, err) = run(&mount_args("s3://no-such-bucket-here", mps, &[]));
    assert_eq!(code, Some(1));
    assert_one_line_error(&err, "does not exist");

    let bucket = unique_bucket("err");
    create_bucket(&bucket);
    let source = format!("s3://{bucket}");
    // Nothing listens on port 1.
    let mut args = mount_args(&source, mps, &[]);
    let i = args.iter().position(|a| a == "--endpoint-url").unwrap();
    args[i + 1] = "http://127.0.0.1:1".into();
    let (code, err) = run(&args);
    assert_eq!(code, Some(1));
    assert_one_line_error(&err, "cannot reach");

    // Wrong secret: refused, and the message says to check the credentials.
    let refs: Vec<&str> = mount_args(&source, mps, &[])
        .leak()
        .iter()
        .map(String::as_str)
        .collect();
    let out = std::process::Command::new(BIN)
        .args(&refs)
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "definitely-wrong-secret-key-000000000000",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_one_line_error(&err, "check the credentials");
    assert!(!s3_oidc_mount::mount::is_mount_point(dir.path()));
}
