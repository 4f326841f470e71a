//! Bad input and unusable setups: a clear one-line error, a non-zero exit, nothing mounted.

use std::time::Duration;

use crate::common::*;

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

/// Every option of `mount` (and `run`'s own), each with values it must refuse: exit 2 for
/// values the parser refuses (usage), 1 for those only checked when the options meet; the
/// message names the problem; nothing is mounted.
#[test]
fn every_flag_refuses_bad_values() {
    need_rgw!();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().to_str().unwrap();
    let token_file = ["--credentials", "token-file", "--role-arn"];
    let role = "arn:aws:iam::123456789012:role/r";
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--endpoint-url", "ftp://x"],
            2,
            "not an http:// or https:// URL",
        ),
        (vec!["--region", ""], 2, "not a region name"),
        (vec!["--region", "eu west"], 2, "not a region name"),
        (vec!["--region", "us/east-1"], 2, "not a region name"),
        (vec!["--force-path-style=yes"], 2, "force-path-style"),
        (vec!["--uid", "abc"], 2, "--uid"),
        (vec!["--uid", "99999999999"], 2, "--uid"),
        (vec!["--gid", "-5"], 2, "-5"),
        (vec!["--file-mode", "999"], 2, "octal"),
        (vec!["--file-mode", "17777"], 2, "octal"),
        (vec!["--dir-mode", "rwx"], 2, "octal"),
        (vec!["--allow-other=maybe"], 2, "allow-other"),
        (vec!["--metadata-ttl", "5 fortnights"], 2, "duration"),
        (vec!["--metadata-ttl", "99999h"], 2, "too long"),
        (vec!["--negative-ttl", "1y"], 2, "unknown duration unit"),
        (
            vec!["--prefetch-listings", "many"],
            2,
            "--prefetch-listings",
        ),
        (vec!["--prefetch-listings", "-3"], 2, "-3"),
        (vec!["--cache-size", "lots"], 2, "not a size"),
        (vec!["--cache-size", "1MiB"], 2, "at least 16MiB"),
        (vec!["--cache-size", "0"], 2, "at least 16MiB"),
        (vec!["--part-size", "100k"], 2, "part size"),
        (vec!["--part-size", "128MiB"], 2, "part size"),
        (
            vec!["--write-part-size", "1MiB"],
            2,
            "between 5MiB and 5GiB",
        ),
        (
            vec!["--write-part-size", "6GiB"],
            2,
            "between 5MiB and 5GiB",
        ),
        (vec!["--allow-write=maybe"], 2, "allow-write"),
        (
            vec!["--staging-dir", "/tmp"],
            1,
            "--staging-dir is only used with --allow-write",
        ),
        (
            vec!["--allow-write", "--staging-dir", "/nonexistent/staging"],
            1,
            "cannot create files there",
        ),
        (vec!["--block-size", "3000"], 2, "power of two"),
        (vec!["--block-size", "16MiB"], 2, "power of two"),
        (vec!["--kernel-readahead", "5T"], 2, "at most 1GiB"),
        (vec!["--kernel-readahead", "x"], 2, "not a size"),
        (vec!["--max-attempts", "0"], 2, "--max-attempts"),
        (vec!["--max-attempts", "21"], 2, "--max-attempts"),
        (vec!["--request-timeout", "0"], 2, "request timeout"),
        (vec!["--request-timeout", "11m"], 2, "request timeout"),
        (vec!["--request-timeout", "soon"], 2, "duration"),
        (vec!["--fuse-threads", "0"], 2, "--fuse-threads"),
        (vec!["--fuse-threads", "65"], 2, "--fuse-threads"),
        (vec!["--credentials", "magic"], 2, "possible values"),
        (vec!["--role-arn", "reader"], 2, "not an IAM role ARN"),
        (
            vec!["--role-arn", "arn:aws:s3:::bucket"],
            2,
            "not an IAM role ARN",
        ),
        (vec!["--audience", ""], 2, "must not be empty"),
        (
            [
                &token_file[..],
                &[role, "--token-file", "/nonexistent/token"],
            ]
            .concat(),
            1,
            "/nonexistent/token",
        ),
        (vec!["--sts-region", "a b"], 2, "not a region name"),
        (
            vec!["--sts-endpoint-url", "nope"],
            2,
            "not an http:// or https:// URL",
        ),
        (vec!["--session-duration", "5m"], 2, "between 15m and 12h"),
        (vec!["--session-duration", "13h"], 2, "between 15m and 12h"),
        (vec!["--session-name", ""], 2, "must not be empty"),
        (
            vec!["--session-policy", "bogus"],
            2,
            "use auto, none or @FILE",
        ),
        (
            vec!["--session-policy", "@/nonexistent/p.json"],
            2,
            "does not exist",
        ),
        (
            vec!["--refresh-margin", "2h"],
            1,
            "must be shorter than --session-duration",
        ),
        (vec!["--refresh-margin", "soon"], 2, "duration"),
        (vec!["--http-addr", "1.2.3"], 2, "socket address"),
        (vec!["--http-addr", "127.0.0.1:99999"], 2, "socket address"),
        (vec!["--ready-min-validity", "soon"], 2, "duration"),
        (vec!["--log-level", "verbose"], 2, "verbose"),
        (vec!["--log-format", "xml"], 2, "possible values"),
        (vec!["--no-such-flag"], 2, "no-such-flag"),
    ];
    for (extra, want, needle) in &cases {
        // A flag the common arguments already give is given once, with the bad value.
        let mut args = mount_args("s3://some-bucket", mp, &[]);
        let flag = extra[0].split('=').next().unwrap_or("");
        if let Some(i) = args.iter().position(|a| a == flag) {
            let n = if flag == "--force-path-style" { 1 } else { 2 };
            args.drain(i..i + n);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let (code, err) = run(&args);
        assert_eq!(code, Some(*want), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {needle:?} not in {err}");
        assert!(
            !s3_oidc_mount::mount::is_mount_point(dir.path()),
            "{extra:?}"
        );
    }
    // The same through the environment, as containers set them.
    for (var, value, want, needle) in [
        ("S3_OIDC_MOUNT_ALLOW_OTHER", "maybe", 2, "allow-other"),
        ("S3_OIDC_MOUNT_CACHE_SIZE", "lots", 2, "not a size"),
        ("S3_OIDC_MOUNT_MAX_ATTEMPTS", "0", 2, "--max-attempts"),
        ("S3_OIDC_MOUNT_REQUEST_TIMEOUT", "forever", 2, "duration"),
        ("S3_OIDC_MOUNT_ROLE_ARN", "reader", 2, "not an IAM role ARN"),
        ("S3_OIDC_MOUNT_LOG_FORMAT", "xml", 2, "possible values"),
        // The SDK's own variable is checked too, when --region is not given.
        ("AWS_REGION", "eu west", 1, "not a region name"),
    ] {
        let mut args = mount_args("s3://some-bucket", mp, &[]);
        if var == "AWS_REGION" {
            let i = args.iter().position(|a| a == "--region").unwrap();
            args.drain(i..i + 2);
        }
        let out = std::process::Command::new(BIN)
            .args(&args)
            .env(var, value)
            .env_remove("AWS_DEFAULT_REGION")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(want), "{var}={value}: {err}");
        assert!(
            err.contains(needle),
            "{var}={value}: {needle:?} not in {err}"
        );
    }
    // `run`'s own options, and `run` without an app.
    for (extra, want, needle) in [
        (vec!["--ready-timeout", "5x"], 2, "duration"),
        (vec!["--grace-period", "-1"], 2, "-1"),
        (vec!["--app-user", "no-such-user-here"], 1, "no user named"),
        (
            vec!["--app-user", "0:no-such-group-here"],
            1,
            "no group named",
        ),
        (vec!["--app-user", ":"], 1, "expected USER or USER:GROUP"),
    ] {
        let mut args = vec!["run".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(mount_args("s3://some-bucket", mp, &[]).into_iter().skip(1));
        args.extend(["--".to_string(), "true".to_string()]);
        let (code, err) = run(&args);
        assert_eq!(code, Some(want), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    // `doctor` shares the S3 and credential options, and their checks.
    for (extra, needle) in [
        (vec!["--max-attempts", "0"], "--max-attempts"),
        (vec!["--role-arn", "reader"], "not an IAM role ARN"),
    ] {
        let mut args = vec!["doctor".to_string(), "s3://some-bucket".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "doctor {extra:?}: {err}");
        assert!(err.contains(needle), "doctor {extra:?}: {err}");
    }
    let mut args = vec!["run".to_string()];
    args.extend(mount_args("s3://some-bucket", mp, &[]).into_iter().skip(1));
    let (code, err) = run(&args);
    assert_eq!(code, Some(2), "run without an app: {err}");
    assert!(!s3_oidc_mount::mount::is_mount_point(dir.path()));
}

#[test]
fn bad_sources_and_mountpoints_fail_before_mounting() {
    need_rgw!();
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
    for (src, needle) in [
        ("s3://a", "invalid bucket name"),
        ("s3://ab-", "invalid bucket name"),
        ("s3://", "invalid bucket name"),
        ("s3://ok-bucket/..", "prefix"),
        ("s3://ok-bucket/a/./b", "prefix"),
        ("s3://ok-bucket/a//b", "prefix"),
    ] {
        let (code, err) = run(&mount_args(src, mps, &[]));
        assert_eq!(code, Some(1), "{src}: {err}");
        assert_one_line_error(&err, needle);
    }
    assert!(!s3_oidc_mount::mount::is_mount_point(&mp));
}

#[test]
fn a_mountpoint_in_use_is_refused() {
    need_rgw!();
    let bucket = unique_bucket("busy");
    create_bucket(&bucket);
    put(&bucket, "x", "x");
    let m = mount(&format!("s3://{bucket}"), &[]);
    let (code, err) = run(&mount_args(
        &format!("s3://{bucket}"),
        m.path.to_str().unwrap(),
        &[],
    ));
    assert_eq!(code, Some(1), "{err}");
    assert_one_line_error(&err, "already mounted");
    // The mount that was there is untouched.
    assert_eq!(std::fs::read(m.p("x")).unwrap(), b"x");
}

#[test]
fn unknown_bucket_unreachable_endpoint_and_wrong_keys() {
    need_rgw!();
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
