use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use s3_oidc_mount::auth::CredentialSource;
use s3_oidc_mount::cli::{Cli, Command, MountArgs, parse_source};
use s3_oidc_mount::fs::FsConfig;
use s3_oidc_mount::mount::{self, MountConfig};
use s3_oidc_mount::store::s3::S3Options;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = s3_oidc_mount::logging::init(&cli.log_level, cli.log_format) {
        eprintln!("s3-oidc-mount: error: {e}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, with the causes: what failed and what to do about it.
            eprintln!("s3-oidc-mount: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3om-worker")
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Mount(args) => {
            let cfg = mount_config(&args)?;
            rt.block_on(async move {
                let mounted = mount::mount(cfg).await?;
                mounted.serve_until_signal().await
            })?;
        }
    }
    Ok(())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn mount_config(a: &MountArgs) -> anyhow::Result<MountConfig> {
    let source = parse_source(&a.source).map_err(anyhow::Error::msg)?;
    let region = a
        .region
        .clone()
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string());
    let endpoint_url = a
        .endpoint_url
        .clone()
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let fs = FsConfig {
        prefix: source.prefix.clone(),
        uid: a.uid.unwrap_or(uid),
        gid: a.gid.unwrap_or(gid),
        file_mode: a.file_mode,
        dir_mode: a.dir_mode,
        metadata_ttl: a.metadata_ttl,
        part_size: a.part_size,
        ..FsConfig::default()
    };
    Ok(MountConfig {
        s3: S3Options {
            bucket: source.bucket.clone(),
            region,
            endpoint_url,
            force_path_style: a.force_path_style,
            max_attempts: 3,
        },
        source,
        mountpoint: a.mountpoint.clone(),
        fs,
        cache_bytes: a.cache_size.unwrap_or_else(mount::default_cache_bytes),
        allow_other: a.allow_other,
        fuse_threads: usize::from(a.fuse_threads),
        credentials: CredentialSource::AwsChain,
    })
}
