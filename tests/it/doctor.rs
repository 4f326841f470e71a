//! `doctor` against real parts: the metadata-server/OIDC stand-in, RGW's STS (behind the
//! proxy) and RGW's S3, in each failure mode an operator meets, and all passing. Each case
//! asserts the step lines, the exit status, and that no token or key is printed.

use std::time::Duration;

use crate::common::fed::{AUD, World, assert_no_secret, keyless, refs, secrets, strings};
use crate::common::iam::{self, Iam};
use crate::common::*;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `doctor SOURCE` with the test server's endpoint options and `extra`.
fn doctor(source: &str, extra: &[String], spawn: &Spawn) -> Finished {
    let mut args = strings(&["doctor", source]);
    args.extend(common_args());
    args.extend(extra.iter().cloned());
    let out = run_bin_with(&refs(&args), spawn, TIMEOUT);
    // Shown with --nocapture (and for a failing test): what an operator would read.
    eprintln!("$ s3-oidc-mount doctor {source} ...\n{}", out.stdout);
    out
}

/// The line of step `name`: exactly one.
fn line<'a>(out: &'a Finished, name: &str) -> &'a str {
    let found: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.get(6..).is_some_and(|r| r.starts_with(name)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one line for step {name:?} expected; stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    found[0]
}

fn assert_step(out: &Finished, name: &str, outcome: &str, needles: &[&str]) {
    let l = line(out, name);
    assert!(
        l.starts_with(&format!("{outcome:<4}  ")),
        "step {name}: {outcome} expected: {l}\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    for n in needles {
        assert!(l.contains(n), "step {name}: {n:?} missing from: {l}");
    }
}

fn assert_failed(out: &Finished, case: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{case}: exit 1 expected; stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

fn assert_skipped_after(out: &Finished, steps: &[&str], failed: &str) {
    for s in steps {
        assert_step(out, s, "SKIP", &[&format!("{failed} failed")]);
    }
}

fn no_secret_printed(w: &World, out: &Finished) {
    let sec = secrets(&w.idp.tokens_served(), &w.proxy);
    assert_no_secret("doctor's stdout", out.stdout.as_bytes(), &sec);
    assert_no_secret("doctor's stderr", out.stderr.as_bytes(), &sec);
}

#[test]
fn doctor_passes_and_pinpoints_each_failure() {
    need_rgw!();
    std::thread::scope(|s| {
        // Everything in place: every step OK, exit 0.
        s.spawn(|| {
            let w = World::new(
                "doc-ok",
                vec![
                    ("data/sub/b.bin", random_bytes(5000, 1)),
                    ("data/a.txt", b"alpha\n".to_vec()),
                ],
            );
            let out = doctor(
                &format!("{}/data", w.source()),
                &w.gcp_args(),
                &keyless(&w.idp.host_port()),
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "stdout:\n{}\nstderr:\n{}",
                out.stdout,
                out.stderr
            );
            assert_step(&out, "metadata server", "OK", &[&w.idp.url()]);
            assert_step(
                &out,
                "identity token",
                "OK",
                &[
                    &format!("iss={}", w.idp.issuer()),
                    &format!("aud={AUD}"),
                    &format!("azp={}", w.idp.subject()),
                    &format!("sub={}", w.idp.subject()),
                    "exp=",
                ],
            );
            assert_step(&out, "sts exchange", "OK", &["assumed", &w.role.name]);
            assert_step(&out, "list", "OK", &["objects: 1, directories: 1"]);
            assert_step(
                &out,
                "read",
                "OK",
                &[&format!("s3://{}/data/a.txt", w.bucket), "6 of 6 bytes"],
            );
            assert_step(&out, "policy", "INFO", &["nothing to change"]);
            assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
            // The exchange went through the configured STS endpoint.
            assert_eq!(w.proxy.success_count(), 1);
            no_secret_printed(&w, &out);
        });

        // No metadata server: the first step fails, the others are shown as skipped.
        s.spawn(|| {
            let w = World::new("doc-md", vec![("x", b"x".to_vec())]);
            let out = doctor(&w.source(), &w.gcp_args(), &keyless("127.0.0.1:1"));
            assert_failed(&out, "metadata down");
            assert_step(
                &out,
                "metadata server",
                "FAIL",
                &["127.0.0.1:1", "unreachable", "fix: ", "GCE_METADATA_HOST"],
            );
            assert_skipped_after(
                &out,
                &["identity token", "sts exchange", "list", "read"],
                "metadata server",
            );
            assert_step(&out, "policy", "INFO", &["not a policy problem"]);
            assert!(
                !out.stdout.contains("# "),
                "no policy to show: {}",
                out.stdout
            );
            assert_eq!(w.proxy.request_count(), 0, "STS asked without a token");
        });

        // The audience the role does not trust: the token is fine, STS refuses it, and
        // the fix names the claims next to the condition keys.
        s.spawn(|| {
            const WRONG: &str = "https://not-registered.test/aud";
            let w = World::new("doc-aud", vec![("x", b"x".to_vec())]);
            let mut args = w.gcp_args();
            let i = args.iter().position(|a| a == AUD).unwrap();
            args[i] = WRONG.into();
            let out = doctor(&w.source(), &args, &keyless(&w.idp.host_port()));
            assert_failed(&out, "wrong audience");
            assert_step(&out, "identity token", "OK", &[&format!("aud={WRONG}")]);
            assert_step(
                &out,
                "sts exchange",
                "FAIL",
                &[
                    "AccessDenied",
                    "trust policy does not accept this token",
                    "fix: ",
                    &format!("aud={WRONG}"),
                ],
            );
            assert_skipped_after(&out, &["list", "read"], "sts exchange");
            // The trust policy for the token's claims follows.
            let host = w.idp.host_port();
            assert!(
                out.stdout.contains("# Trust policy of the role")
                    && out.stdout.contains(&format!("\"{host}:aud\": \"{WRONG}\"")),
                "{}",
                out.stdout
            );
            no_secret_printed(&w, &out);
        });

        // A service account the role does not trust.
        s.spawn(|| {
            const OTHER: &str = "999000111222333444555";
            let w = World::new("doc-sub", vec![("x", b"x".to_vec())]);
            w.idp.set_subject(OTHER);
            let out = doctor(&w.source(), &w.gcp_args(), &keyless(&w.idp.host_port()));
            assert_failed(&out, "untrusted subject");
            assert_step(&out, "identity token", "OK", &[&format!("sub={OTHER}")]);
            assert_step(
                &out,
                "sts exchange",
                "FAIL",
                &["AccessDenied", &format!("sub={OTHER}"), &w.role.arn],
            );
            assert_skipped_after(&out, &["list", "read"], "sts exchange");
            assert_eq!(w.proxy.request_count(), 1);
            no_secret_printed(&w, &out);
        });

        // The bucket does not exist (the role may read any bucket, so only its absence fails).
        s.spawn(|| {
            let w = World::new("doc-nb", vec![]);
            let iam = Iam::from_env();
            let subject = w.idp.subject();
            let any = rt()
                .block_on(iam::create_web_identity_role(
                    &iam,
                    &w.idp.host_port(),
                    &[("app_id", AUD), ("sub", &subject)],
                    &iam::s3_read_policy("*", None),
                    None,
                ))
                .expect("role");
            let mut args = w.gcp_args();
            let i = args.iter().position(|a| *a == w.role.arn).unwrap();
            args[i] = any.arn.clone();
            let missing = format!("{}-missing", w.bucket);
            let out = doctor(
                &format!("s3://{missing}/data"),
                &args,
                &keyless(&w.idp.host_port()),
            );
            assert_failed(&out, "missing bucket");
            assert_step(&out, "sts exchange", "OK", &[]);
            assert_step(
                &out,
                "list",
                "FAIL",
                &[
                    &format!("bucket \"{missing}\" does not exist"),
                    "fix: check the bucket name",
                ],
            );
            assert_skipped_after(&out, &["read"], "list");
            assert_step(&out, "policy", "INFO", &["not a policy problem"]);
            no_secret_printed(&w, &out);
        });

        // The role may read another prefix only: the listing is refused, and the fix names
        // the permission and the prefix.
        s.spawn(|| {
            let w = World::new(
                "doc-prefix",
                vec![
                    ("allowed/a.txt", b"a".to_vec()),
                    ("other/b.txt", b"b".to_vec()),
                ],
            );
            let iam = Iam::from_env();
            let subject = w.idp.subject();
            let narrow = rt()
                .block_on(iam::create_web_identity_role(
                    &iam,
                    &w.idp.host_port(),
                    &[("app_id", AUD), ("sub", &subject)],
                    &iam::s3_read_policy(&w.bucket, Some("allowed/")),
                    None,
                ))
                .expect("role");
            let mut args = w.gcp_args();
            let i = args.iter().position(|a| *a == w.role.arn).unwrap();
            args[i] = narrow.arn.clone();
            let spawn = keyless(&w.idp.host_port());
            let out = doctor(&format!("{}/other", w.source()), &args, &spawn);
            assert_failed(&out, "no permission on the prefix");
            assert_step(&out, "sts exchange", "OK", &[]);
            assert_step(
                &out,
                "list",
                "FAIL",
                &[
                    "AccessDenied",
                    "fix: ",
                    &format!(
                        "s3:ListBucket on arn:aws:s3:::{} with s3:prefix \"other/\"",
                        w.bucket
                    ),
                ],
            );
            assert_skipped_after(&out, &["read"], "list");
            assert_step(&out, "policy", "INFO", &["list was refused"]);
            assert!(
                !out.stdout.contains("# Trust policy")
                    && out.stdout.contains("# Permission policy")
                    && out
                        .stdout
                        .contains(&format!("arn:aws:s3:::{}/other/*", w.bucket)),
                "{}",
                out.stdout
            );
            // The same role passes on the prefix it may read.
            let ok = doctor(&format!("{}/allowed", w.source()), &args, &spawn);
            assert_eq!(ok.status.code(), Some(0), "{}\n{}", ok.stdout, ok.stderr);
            no_secret_printed(&w, &out);
        });

        // A token file whose token has expired (its rotation stopped).
        s.spawn(|| {
            let w = World::new("doc-tf", vec![("x", b"x".to_vec())]);
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("token");
            std::fs::write(&path, w.idp.mint_expired(AUD)).expect("token file");
            let mut args = w.gcp_args();
            args[1] = "token-file".into();
            args.extend(strings(&["--token-file", path.to_str().unwrap()]));
            let out = doctor(&w.source(), &args, &keyless("127.0.0.1:1"));
            assert_failed(&out, "expired token file");
            assert_step(
                &out,
                "metadata server",
                "SKIP",
                &["--credentials token-file"],
            );
            assert_step(
                &out,
                "identity token",
                "FAIL",
                &["expired", "ago", "fix: ", "rotates"],
            );
            assert_skipped_after(&out, &["sts exchange", "list", "read"], "identity token");
            assert_eq!(w.proxy.request_count(), 0, "an expired token sent to STS");
            let token = std::fs::read_to_string(&path).unwrap();
            let sig = token.rsplit('.').next().unwrap();
            assert!(!out.stdout.contains(sig) && !out.stderr.contains(sig));
        });

        // --credentials aws (a laptop): the identity steps do not apply and say so.
        s.spawn(|| {
            let bucket = unique_bucket("doc-aws");
            create_bucket(&bucket);
            put(&bucket, "k/v.txt", b"value".to_vec());
            let out = doctor(
                &format!("s3://{bucket}/k"),
                &strings(&["--credentials", "aws"]),
                &Spawn::default(),
            );
            assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
            assert_step(&out, "metadata server", "SKIP", &["--credentials aws"]);
            assert_step(&out, "identity token", "SKIP", &["--credentials aws"]);
            assert_step(&out, "aws credentials", "OK", &["long-term keys"]);
            assert_step(&out, "read", "OK", &["k/v.txt", "5 of 5 bytes"]);
            let key = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
            assert!(!key.is_empty() && !out.stdout.contains(&key) && !out.stderr.contains(&key));
        });
    });
}
