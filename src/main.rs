use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use s3_oidc_mount::auth::{policy, token::GcpMetadata};
use s3_oidc_mount::cli::{Cli, Command, DoctorArgs, LogFormat, PolicyArgs, parse_source};
use s3_oidc_mount::config::{self, auth_config, mount_config, s3_options};
use s3_oidc_mount::doctor::RealEnv;
use s3_oidc_mount::mount;
use s3_oidc_mount::run::RunConfig;

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
            // One line, with the causes: what failed and what to do about it (a cause that
            // quotes a server's message may hold line breaks).
            let line = format!("s3-oidc-mount: error: {e:#}").replace('\n', " ");
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
                config::for_app_user(&mut mount, &args.mount, u);
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
    let access = policy::Access {
        write: a.allow_write,
    };
    let auth = auth_config(&a.auth, &source, &s3.region, access)?;
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
            let token = md.mint_identity_token().await.with_context(|| {
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
    let access = policy::Access {
        write: a.allow_write,
    };
    let what = if a.allow_write {
        "read and create files in"
    } else {
        "read-only"
    };
    println!("# Permission policy of the role (least privilege, {what} {source}):");
    println!(
        "{}",
        pretty(&policy::permission_policy(
            &a.partition,
            &source.bucket,
            &source.prefix,
            access
        ))
    );
    println!();
    println!(
        "# Mount with: s3-oidc-mount mount {source} MOUNTPOINT --credentials gcp --role-arn ROLE_ARN --audience {}{}",
        a.audience,
        if a.allow_write { " --allow-write" } else { "" }
    );
    Ok(())
}
