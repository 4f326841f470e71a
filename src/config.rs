//! Configuration: the parsed command line (`cli`) with its environment fallbacks and
//! cross-field rules, turned into the validated configuration of each part. `main.rs` only
//! dispatches; tests build mounts from the same flags.

use std::time::Duration;

use crate::auth::AuthConfig;
use crate::auth::policy::Access;
use crate::cli::{AuthArgs, MountArgs, S3Args, Source, parse_source};
use crate::fs::FsConfig;
use crate::fs::write::WriteConfig;
use crate::mount::{MountConfig, SessionOptions};
use crate::store::s3::S3Options;
use crate::user::AppUser;
use crate::util::env_nonempty;

/// A configuration the flags cannot make: the message says which flags and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub fn auth_config(
    a: &AuthArgs,
    source: &Source,
    s3_region: &str,
    access: Access,
) -> Result<AuthConfig, ConfigError> {
    if a.refresh_margin >= a.session_duration {
        return Err(ConfigError(format!(
            "--refresh-margin ({:?}) must be shorter than --session-duration ({:?})",
            a.refresh_margin, a.session_duration
        )));
    }
    Ok(AuthConfig {
        mode: a.credentials,
        role_arn: a.role_arn.clone(),
        audience: a.audience.clone(),
        token_file: a.token_file.clone(),
        metadata_host: None,
        sts_region: a
            .sts_region
            .clone()
            .unwrap_or_else(|| s3_region.to_string()),
        sts_endpoint_url: a.sts_endpoint_url.clone(),
        session_duration: a.session_duration,
        session_name: a.session_name.clone(),
        session_policy: a.session_policy.clone(),
        refresh_margin: a.refresh_margin,
        bucket: source.bucket.clone(),
        prefix: source.prefix.clone(),
        access,
    })
}

/// The S3 options with their environment defaults.
pub fn s3_options(a: &S3Args, source: &Source) -> Result<S3Options, ConfigError> {
    let region = a
        .region
        .clone()
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    // Also when it came from AWS_REGION or AWS_DEFAULT_REGION.
    crate::cli::parse_region(&region).map_err(|e| {
        ConfigError(format!(
            "region: {e} (from --region, AWS_REGION or AWS_DEFAULT_REGION)"
        ))
    })?;
    let endpoint_url = a
        .endpoint_url
        .clone()
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
    Ok(S3Options {
        bucket: source.bucket.clone(),
        region,
        endpoint_url,
        force_path_style: a.force_path_style,
        max_attempts: a.max_attempts,
        request_timeout: a.request_timeout,
    })
}

pub fn mount_config(a: &MountArgs) -> Result<MountConfig, ConfigError> {
    let source = parse_source(&a.source).map_err(ConfigError)?;
    let s3 = s3_options(&a.s3, &source)?;
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let fs = FsConfig {
        prefix: source.prefix.clone(),
        uid: a.uid.unwrap_or(uid),
        gid: a.gid.unwrap_or(gid),
        file_mode: a
            .file_mode
            .unwrap_or(if a.allow_write { 0o644 } else { 0o444 }),
        dir_mode: a
            .dir_mode
            .unwrap_or(if a.allow_write { 0o755 } else { 0o555 }),
        allow_write: a.allow_write,
        write: WriteConfig {
            part_size: a.write_part_size,
            staging_dir: staging_dir(a)?,
        },
        metadata_ttl: a.metadata_ttl,
        negative_ttl: a.negative_ttl,
        prefetch_listings: a.prefetch_listings,
        part_size: a.part_size.max(a.block_size),
        block_size: a.block_size,
        read_attempts: a.s3.max_attempts,
        request_timeout: a.s3.request_timeout,
        ..FsConfig::default()
    };
    let auth = auth_config(
        &a.auth,
        &source,
        &s3.region,
        Access {
            write: a.allow_write,
        },
    )?;
    let fsname = source.to_string();
    Ok(MountConfig {
        auth,
        s3,
        source,
        mountpoint: a.mountpoint.clone(),
        session: SessionOptions {
            fsname,
            fs,
            cache_bytes: a
                .cache_size
                .unwrap_or_else(crate::mount::default_cache_bytes),
            allow_other: a.allow_other,
            kernel_readahead: a.kernel_readahead,
            fuse_threads: usize::from(a.fuse_threads),
        },
        http_addr: a.http_addr,
        ready_min_validity: ready_min_validity(a),
    })
}

/// /readyz wants credentials valid for at least this long; it must stay below the point
/// where renewal starts (the margin, at least 20 s, less up to a fifth of jitter), or the
/// mount would report unready before every renewal while all is well.
fn ready_min_validity(a: &MountArgs) -> Duration {
    let renewal = a.auth.refresh_margin.max(Duration::from_secs(20)) * 4 / 5;
    if a.ready_min_validity < renewal {
        return a.ready_min_validity;
    }
    let lowered = renewal / 2;
    tracing::warn!(
        ready_min_validity_s = a.ready_min_validity.as_secs_f64(),
        refresh_margin_s = a.auth.refresh_margin.as_secs_f64(),
        lowered_to_s = lowered.as_secs_f64(),
        "--ready-min-validity is not below the renewal point of --refresh-margin; lowered so /readyz does not fail before every renewal"
    );
    lowered
}

/// `--staging-dir`: a directory where this process can create unnamed files (O_TMPFILE),
/// checked now rather than at the first file written out of order.
fn staging_dir(a: &MountArgs) -> Result<Option<std::path::PathBuf>, ConfigError> {
    let Some(dir) = &a.staging_dir else {
        return Ok(None);
    };
    if !a.allow_write {
        return Err(ConfigError(
            "--staging-dir is only used with --allow-write".into(),
        ));
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .map_err(|e| {
            ConfigError(format!(
                "--staging-dir {}: cannot create files there ({e}); give an existing, writable \
                 directory on a local or in-memory filesystem",
                dir.display()
            ))
        })?;
    Ok(Some(dir.clone()))
}

/// Under `run --app-user`: the app must be able to reach the mount (allow_other) and own
/// what it reads (files owned by the app user unless --uid/--gid say otherwise).
pub fn for_app_user(cfg: &mut MountConfig, a: &MountArgs, user: &AppUser) {
    cfg.session.allow_other = true;
    cfg.session.fs.uid = a.uid.unwrap_or(user.uid);
    cfg.session.fs.gid = a.gid.unwrap_or(user.gid);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn mount_args(flags: &[&str]) -> MountArgs {
        let mut argv = vec!["s3-oidc-mount", "mount", "s3://bucket/some/prefix", "/mnt"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Mount(a),
                ..
            }) => a,
            Ok(_) => unreachable!("a mount command"),
            Err(e) => panic!("{flags:?}: {e}"),
        }
    }

    fn config(flags: &[&str]) -> Result<MountConfig, ConfigError> {
        mount_config(&mount_args(flags))
    }

    #[test]
    fn defaults_and_what_follows_from_the_flags() {
        type Check = fn(&MountConfig) -> (u64, u64);
        let cases: &[(&[&str], Check, (u64, u64))] = &[
            // Read-only: files 0444, directories 0555; writable: 0644, 0755.
            (
                &[],
                |c| (c.session.fs.file_mode.into(), c.session.fs.dir_mode.into()),
                (0o444, 0o555),
            ),
            (
                &["--allow-write"],
                |c| (c.session.fs.file_mode.into(), c.session.fs.dir_mode.into()),
                (0o644, 0o755),
            ),
            (
                &["--allow-write", "--file-mode", "0600"],
                |c| (c.session.fs.file_mode.into(), c.session.fs.dir_mode.into()),
                (0o600, 0o755),
            ),
            // The write flag reaches the filesystem and the session policy.
            (
                &["--allow-write"],
                |c| (c.session.fs.allow_write.into(), c.auth.access.write.into()),
                (1, 1),
            ),
            (
                &[],
                |c| (c.session.fs.allow_write.into(), c.auth.access.write.into()),
                (0, 0),
            ),
            (
                &["--allow-write", "--write-part-size", "16MiB"],
                |c| (c.session.fs.write.part_size, 0),
                (16 << 20, 0),
            ),
            // A read part is never smaller than a block.
            (
                &["--block-size", "8MiB", "--part-size", "1MiB"],
                |c| (c.session.fs.part_size, c.session.fs.block_size),
                (8 << 20, 8 << 20),
            ),
            // Reads retry as often as other requests, and wait as long.
            (
                &["--max-attempts", "7", "--request-timeout", "3s"],
                |c| {
                    (
                        c.session.fs.read_attempts.into(),
                        c.session.fs.request_timeout.as_secs(),
                    )
                },
                (7, 3),
            ),
            // The mount prefix is the source's, ending in `/`.
            (&[], |c| (c.session.fs.prefix.len() as u64, 0), (12, 0)),
            (
                &["--uid", "123", "--gid", "456"],
                |c| (c.session.fs.uid.into(), c.session.fs.gid.into()),
                (123, 456),
            ),
            (
                &["--cache-size", "64MiB"],
                |c| (c.session.cache_bytes, 0),
                (64 << 20, 0),
            ),
        ];
        for (flags, get, want) in cases {
            let c = config(flags).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
            assert_eq!(get(&c), *want, "{flags:?}");
        }
        assert_eq!(config(&[]).unwrap().session.fs.prefix, "some/prefix/");
        assert_eq!(
            config(&[]).unwrap().session.fsname,
            "s3://bucket/some/prefix/"
        );
    }

    #[test]
    fn rules_across_flags_refuse_with_the_reason() {
        let staging = tempfile::tempdir().unwrap();
        let dir = staging.path().to_str().unwrap();
        let cases: &[(&[&str], Option<&str>)] = &[
            (
                &["--refresh-margin", "2h", "--session-duration", "1h"],
                Some("must be shorter than --session-duration"),
            ),
            (
                &["--staging-dir", dir],
                Some("--staging-dir is only used with --allow-write"),
            ),
            (
                &["--allow-write", "--staging-dir", "/nonexistent/dir"],
                Some("cannot create files there"),
            ),
            (&["--allow-write", "--staging-dir", dir], None),
        ];
        for (flags, want) in cases {
            match (config(flags), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{flags:?}: {e}"),
                (r, w) => panic!("{flags:?}: got {:?}, wanted {w:?}", r.map(|_| ())),
            }
        }
        let c = config(&["--allow-write", "--staging-dir", dir]).unwrap();
        assert_eq!(
            c.session.fs.write.staging_dir.as_deref(),
            Some(staging.path())
        );
    }

    #[test]
    fn the_app_user_can_reach_and_owns_the_files() {
        let user = AppUser {
            uid: 1000,
            gid: 1001,
            groups: vec![1001],
            name: Some("app".into()),
            home: None,
        };
        let a = mount_args(&[]);
        let mut c = mount_config(&a).unwrap();
        assert!(!c.session.allow_other);
        for_app_user(&mut c, &a, &user);
        assert!(c.session.allow_other, "the app must reach the mount");
        assert_eq!((c.session.fs.uid, c.session.fs.gid), (1000, 1001));
        // Explicit owners win.
        let a = mount_args(&["--uid", "5", "--gid", "6"]);
        let mut c = mount_config(&a).unwrap();
        for_app_user(&mut c, &a, &user);
        assert_eq!((c.session.fs.uid, c.session.fs.gid), (5, 6));
    }
}
