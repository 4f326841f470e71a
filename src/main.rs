use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use s3_oidc_mount::auth::{AuthConfig, policy, token::GcpMetadata};
use s3_oidc_mount::cli::{
    AuthArgs, Cli, Command, DoctorArgs, LogFormat, MountArgs, PolicyArgs, S3Args, Source,
    parse_source,
};
use s3_oidc_mount::doctor::RealEnv;
use s3_oidc_mount::fs::FsConfig;
use s3_oidc_mount::mount::{self, MountConfig, SessionOptions};
use s3_oidc_mount::run::RunConfig;
use s3_oidc_mount::store::s3::S3Options;
use s3_oidc_mount::util::env_nonempty;

fn main() -> ExitCode {
    // One malloc arena: with one per thread (glibc's default), freed cache blocks linger in
    // several arenas and RSS drifts well past the cache budget. Set before any thread starts.
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = Cli::parse();
    let format = cli.log_format;
    if let Err(e) = s3_oidc_mount::logging::init(&cli.log_level, format) {
        eprintln!("s3-oidc-mount: error: {e}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line, with the causes: what failed and what to do about it.
            let line = format!("s3-oidc-mount: error: {e:#}");
            match format {
                LogFormat::Text => eprintln!("{line}"),
                // A log collector reading JSON lines gets this one as JSON too, as an error.
                LogFormat::Json => {
                    eprintln!("{}", s3_oidc_mount::logging::json_line("ERROR", &line))
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; returns the process exit code.
fn run(cli: Cli) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3om-worker")
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Mount(args) => {
            let cfg = mount_config(&args)?;
            rt.block_on(async move {
                let mut signals = mount::Signals::catch()?;
                // A signal during the checks (a slow endpoint, say) stops them at once; once
                // the FUSE mount exists, a signal means a clean unmount.
                let prepared = tokio::select! {
                    p = mount::prepare(cfg) => p?,
                    sig = signals.recv() => anyhow::bail!("{sig} received during the checks; nothing mounted"),
                };
                let mounted = prepared.attach().await?;
                mounted.serve_until_signal(signals).await?;
                anyhow::Ok(())
            })?;
        }
        Command::Run(args) => {
            let app_user = match &args.app_user {
                Some(spec) => {
                    // SAFETY: geteuid cannot fail.
                    if unsafe { libc::geteuid() } != 0 {
                        anyhow::bail!(
                            "--app-user needs the daemon to run as root (it switches user only for the app)"
                        );
                    }
                    Some(s3_oidc_mount::user::resolve(spec)?)
                }
                None => None,
            };
            let mut mount = mount_config(&args.mount)?;
            if let Some(u) = &app_user {
                // The app must be able to reach the mount and own what it reads.
                mount.session.allow_other = true;
                mount.session.fs.uid = args.mount.uid.unwrap_or(u.uid);
                mount.session.fs.gid = args.mount.gid.unwrap_or(u.gid);
            }
            let cfg = RunConfig {
                mount,
                app_user,
                command: args.command.clone(),
                ready_file: args.ready_file.clone(),
                ready_timeout: args.ready_timeout,
                grace_period: args.grace_period,
            };
            return Ok(rt.block_on(s3_oidc_mount::run::run(cfg))?);
        }
        Command::Policy(args) => rt.block_on(print_policies(&args))?,
        Command::Doctor(args) => return rt.block_on(doctor(&args)),
    }
    Ok(0)
}

/// Runs every check, prints one line per step (and the policies that would make it work);
/// exit status 0 only if all passed.
async fn doctor(a: &DoctorArgs) -> anyhow::Result<u8> {
    let source = parse_source(&a.source).map_err(anyhow::Error::msg)?;
    let s3 = s3_options(&a.s3, &source)?;
    let auth = auth_config(&a.auth, &source, &s3.region)?;
    let (env, target) = RealEnv::new(auth, s3, source).await;
    let report = s3_oidc_mount::doctor::diagnose(&env, &target).await;
    print!("{}", report.render());
    Ok(if report.passed() { 0 } else { 1 })
}

async fn print_policies(a: &PolicyArgs) -> anyhow::Result<()> {
    let source = parse_source(&a.source).map_err(anyhow::Error::msg)?;
    let sa_id = match &a.service_account_id {
        Some(id) => id.clone(),
        None => {
            // The unique id is the `sub` of the service account's own identity token.
            let md = GcpMetadata::new(None, &a.audience);
            let token = md.identity_token().await.with_context(|| {
                "reading the service account's unique id from the metadata server (off GCP, pass \
                 --service-account-id from `gcloud iam service-accounts describe SA --format='value(uniqueId)'`)"
            })?;
            token.claims.sub.clone()
        }
    };
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    println!("# Trust policy of the IAM role (Trust relationships):");
    println!("{}", pretty(&policy::trust_policy(&a.audience, &sa_id)));
    println!();
    println!("# Permission policy of the role (least privilege, read-only {source}):");
    println!(
        "{}",
        pretty(&policy::permission_policy(
            &a.partition,
            &source.bucket,
            &source.prefix
        ))
    );
    println!();
    println!(
        "# Mount with: s3-oidc-mount mount {source} MOUNTPOINT --credentials gcp --role-arn ROLE_ARN --audience {}",
        a.audience
    );
    Ok(())
}

fn auth_config(a: &AuthArgs, source: &Source, s3_region: &str) -> anyhow::Result<AuthConfig> {
    if a.refresh_margin >= a.session_duration {
        anyhow::bail!(
            "--refresh-margin ({:?}) must be shorter than --session-duration ({:?})",
            a.refresh_margin,
            a.session_duration
        );
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
    })
}

/// The S3 options with their environment defaults.
fn s3_options(a: &S3Args, source: &Source) -> anyhow::Result<S3Options> {
    let region = a
        .region
        .clone()
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    // Also when it came from AWS_REGION or AWS_DEFAULT_REGION.
    s3_oidc_mount::cli::parse_region(&region).map_err(|e| {
        anyhow::anyhow!("region: {e} (from --region, AWS_REGION or AWS_DEFAULT_REGION)")
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

fn mount_config(a: &MountArgs) -> anyhow::Result<MountConfig> {
    let source = parse_source(&a.source).map_err(anyhow::Error::msg)?;
    let s3 = s3_options(&a.s3, &source)?;
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let fs = FsConfig {
        prefix: source.prefix.clone(),
        uid: a.uid.unwrap_or(uid),
        gid: a.gid.unwrap_or(gid),
        file_mode: a.file_mode,
        dir_mode: a.dir_mode,
        metadata_ttl: a.metadata_ttl,
        negative_ttl: a.negative_ttl,
        prefetch_listings: a.prefetch_listings,
        part_size: a.part_size.max(a.block_size),
        block_size: a.block_size,
        read_attempts: a.s3.max_attempts,
        request_timeout: a.s3.request_timeout,
        ..FsConfig::default()
    };
    let auth = auth_config(&a.auth, &source, &s3.region)?;
    let fsname = source.to_string();
    Ok(MountConfig {
        auth,
        s3,
        source,
        mountpoint: a.mountpoint.clone(),
        session: SessionOptions {
            fsname,
            fs,
            cache_bytes: a.cache_size.unwrap_or_else(mount::default_cache_bytes),
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
fn ready_min_validity(a: &MountArgs) -> std::time::Duration {
    let renewal = a
        .auth
        .refresh_margin
        .max(std::time::Duration::from_secs(20))
        * 4
        / 5;
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
