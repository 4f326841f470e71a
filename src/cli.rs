//! Command line and environment: every option of `mount` can also be set from an
//! environment variable (`S3_OIDC_MOUNT_*`), since containers are configured that way.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::{
    CredentialMode, DEFAULT_AUDIENCE, SessionPolicy, parse_role_arn, parse_session_policy,
};
use crate::fs::names;

#[derive(Parser, Debug)]
#[command(
    name = "s3-oidc-mount",
    version,
    about = "Mount an S3 bucket prefix as a directory, with keyless credentials"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(
        long,
        global = true,
        env = "S3_OIDC_MOUNT_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Log format: text for terminals, json (one object per line) for log collectors.
    #[arg(long, global = true, env = "S3_OIDC_MOUNT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
// Parsed once at start: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Mount s3://BUCKET[/PREFIX] read-only at MOUNTPOINT and serve it in the foreground
    /// until SIGTERM/SIGINT (then unmount and exit 0).
    Mount(MountArgs),
    /// Container entrypoint: mount, wait until the mount answers, run APP with the same stdio,
    /// forward SIGTERM/SIGINT/SIGHUP to it, and when it exits unmount and exit with its status
    /// (128+signal if it was killed). Usage: run [mount options] s3://BUCKET[/PREFIX] MOUNTPOINT -- APP [ARGS...]
    Run(RunArgs),
    /// Print the IAM trust policy and the least-privilege permission policy for a role that
    /// a Google service account assumes to read s3://BUCKET/PREFIX.
    Policy(PolicyArgs),
    /// Check the whole chain step by step (metadata server, identity token, STS exchange,
    /// listing, reading one object) with the same options as mount, and say what to fix.
    /// Exit status 0 only if every step passes.
    Doctor(DoctorArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// What to check: s3://BUCKET or s3://BUCKET/PREFIX.
    #[arg(env = "S3_OIDC_MOUNT_SOURCE", value_name = "s3://BUCKET[/PREFIX]")]
    pub source: String,

    #[command(flatten)]
    pub s3: S3Args,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// Also check that the mount may create files (starts and aborts a multipart upload,
    /// leaving nothing behind) and whether the bucket cleans up abandoned uploads.
    #[arg(long, env = "S3_OIDC_MOUNT_ALLOW_WRITE")]
    pub allow_write: bool,
}

/// Where the bucket is (shared by the commands that talk to S3).
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// S3 endpoint URL (e.g. http://127.0.0.1:7480); default: AWS_ENDPOINT_URL_S3,
    /// AWS_ENDPOINT_URL, else AWS S3 for the region.
    #[arg(long, env = "S3_OIDC_MOUNT_ENDPOINT_URL", value_parser = parse_url)]
    pub endpoint_url: Option<String>,

    /// AWS region of the bucket; default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long, env = "S3_OIDC_MOUNT_REGION", value_parser = parse_region)]
    pub region: Option<String>,

    /// Use path-style URLs (http://host/bucket/key), as most S3-compatible servers need.
    #[arg(long, env = "S3_OIDC_MOUNT_FORCE_PATH_STYLE")]
    pub force_path_style: bool,

    /// Attempts of each S3 request whose failure is transient (throttling, 5xx, timeouts,
    /// connection resets, cut-off bodies), with jittered exponential backoff in between; then
    /// the operation fails (EIO for a read).
    #[arg(long, env = "S3_OIDC_MOUNT_MAX_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub max_attempts: u32,

    /// Longest wait for S3 to answer one attempt of a request, and for the next bytes of a
    /// response body (100ms..10m).
    #[arg(long, env = "S3_OIDC_MOUNT_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_request_timeout)]
    pub request_timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub mount: MountArgs,

    /// A file created once the mount answers and removed at unmount (readiness for other
    /// container tooling).
    #[arg(long, env = "S3_OIDC_MOUNT_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// How long the mount may take to answer before the app is given up on.
    #[arg(long, env = "S3_OIDC_MOUNT_READY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// After SIGTERM, how long the app has to exit before it is killed (Cloud Run allows 10 s
    /// in all, so the default leaves time to unmount).
    #[arg(long, env = "S3_OIDC_MOUNT_GRACE_PERIOD", default_value = "8s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// Start the app as this user (USER[:GROUP], names or numeric ids) while the daemon keeps
    /// root to mount; implies --allow-other, and files are owned by that user unless
    /// --uid/--gid say otherwise.
    #[arg(long, env = "S3_OIDC_MOUNT_APP_USER", value_name = "USER[:GROUP]")]
    pub app_user: Option<String>,

    /// The app to run, after `--`.
    #[arg(last = true, required = true, value_name = "APP")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    /// The mount the role is for: s3://BUCKET or s3://BUCKET/PREFIX.
    #[arg(value_name = "s3://BUCKET[/PREFIX]")]
    pub source: String,

    /// The audience the daemon requests (the trust policy's accounts.google.com:oaud).
    #[arg(long, env = "S3_OIDC_MOUNT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,

    /// The service account's numeric unique id (`gcloud iam service-accounts describe SA
    /// --format='value(uniqueId)'`); default: read from the GCP metadata server.
    #[arg(long)]
    pub service_account_id: Option<String>,

    /// ARN partition of the generated resources (aws, aws-cn, aws-us-gov).
    #[arg(long, default_value = "aws")]
    pub partition: String,

    /// The mount creates files (mount --allow-write): the permission policy grants
    /// s3:PutObject and s3:AbortMultipartUpload under the prefix too.
    #[arg(long)]
    pub allow_write: bool,
}

/// How the daemon gets AWS credentials (shared by the commands that talk to AWS).
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// Where credentials come from: gcp (metadata-server identity token -> STS), token-file
    /// (a rotated token file -> STS), aws (the standard AWS chain), or auto.
    #[arg(long, env = "S3_OIDC_MOUNT_CREDENTIALS", value_enum, default_value_t = CredentialMode::Auto)]
    pub credentials: CredentialMode,

    /// IAM role to assume with the identity token; default: AWS_ROLE_ARN.
    #[arg(long, env = "S3_OIDC_MOUNT_ROLE_ARN", value_parser = parse_role_arn)]
    pub role_arn: Option<String>,

    /// Audience of the requested identity token (must match the role's trust policy).
    #[arg(long, env = "S3_OIDC_MOUNT_AUDIENCE", default_value = DEFAULT_AUDIENCE, value_parser = parse_nonempty)]
    pub audience: String,

    /// Identity token file for --credentials token-file; default: AWS_WEB_IDENTITY_TOKEN_FILE.
    #[arg(long, env = "S3_OIDC_MOUNT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// STS region; default: the bucket's region.
    #[arg(long, env = "S3_OIDC_MOUNT_STS_REGION", value_parser = parse_region)]
    pub sts_region: Option<String>,

    /// STS endpoint URL (private endpoints, tests); default: the regional AWS endpoint.
    #[arg(long, env = "S3_OIDC_MOUNT_STS_ENDPOINT_URL", value_parser = parse_url)]
    pub sts_endpoint_url: Option<String>,

    /// Lifetime of each STS session, 15m..12h (at most the role's MaxSessionDuration).
    #[arg(long, env = "S3_OIDC_MOUNT_SESSION_DURATION", default_value = "1h", value_parser = parse_session_duration)]
    pub session_duration: Duration,

    /// RoleSessionName (shown in CloudTrail); default: from the workload (Cloud Run
    /// revision or job execution, and instance id).
    #[arg(long, env = "S3_OIDC_MOUNT_SESSION_NAME", value_parser = parse_nonempty)]
    pub session_name: Option<String>,

    /// Session policy: auto (read-only, this bucket and prefix), none, or @FILE (JSON).
    #[arg(long, env = "S3_OIDC_MOUNT_SESSION_POLICY", default_value = "auto", value_parser = parse_session_policy)]
    pub session_policy: SessionPolicy,

    /// Renew credentials this long before they expire (jittered).
    #[arg(long, env = "S3_OIDC_MOUNT_REFRESH_MARGIN", default_value = "5m", value_parser = parse_duration)]
    pub refresh_margin: Duration,
}

fn parse_session_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if (900..=43_200).contains(&d.as_secs()) {
        Ok(d)
    } else {
        Err(format!(
            "session duration {s:?} must be between 15m and 12h"
        ))
    }
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// What to mount: s3://BUCKET or s3://BUCKET/PREFIX.
    #[arg(env = "S3_OIDC_MOUNT_SOURCE", value_name = "s3://BUCKET[/PREFIX]")]
    pub source: String,

    /// An existing, empty directory to mount on.
    #[arg(env = "S3_OIDC_MOUNT_MOUNTPOINT", value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    #[command(flatten)]
    pub s3: S3Args,

    /// Owner of every file and directory; default: the daemon's user.
    #[arg(long, env = "S3_OIDC_MOUNT_UID")]
    pub uid: Option<u32>,

    /// Group of every file and directory; default: the daemon's group.
    #[arg(long, env = "S3_OIDC_MOUNT_GID")]
    pub gid: Option<u32>,

    /// Permission bits of files (octal); default 0444, or 0644 with --allow-write.
    #[arg(long, env = "S3_OIDC_MOUNT_FILE_MODE", value_parser = parse_mode)]
    pub file_mode: Option<u16>,

    /// Permission bits of directories (octal); default 0555, or 0755 with --allow-write.
    #[arg(long, env = "S3_OIDC_MOUNT_DIR_MODE", value_parser = parse_mode)]
    pub dir_mode: Option<u16>,

    /// Let apps create new files and directories: a file is uploaded when it is closed (or
    /// at fsync), and only if its name is still free. Without it the mount is read-only.
    #[arg(long, env = "S3_OIDC_MOUNT_ALLOW_WRITE")]
    pub allow_write: bool,

    /// Where files written out of order (databases, random-access writers) are kept until
    /// they are uploaded: an in-memory volume or a local disk. Default: in memory, within
    /// the --cache-size budget.
    #[arg(long, env = "S3_OIDC_MOUNT_STAGING_DIR", value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,

    /// Size of each part of the multipart upload of a large file (binary units,
    /// 5MiB..5GiB); a file may have 10,000 parts.
    #[arg(long, env = "S3_OIDC_MOUNT_WRITE_PART_SIZE", default_value = "8MiB", value_parser = parse_write_part_size)]
    pub write_part_size: u64,

    /// Let users other than the daemon's access the mount (FUSE allow_other).
    #[arg(long, env = "S3_OIDC_MOUNT_ALLOW_OTHER")]
    pub allow_other: bool,

    /// How long file attributes and directory listings are trusted before S3 is asked
    /// again (e.g. 60s, 500ms, 5m; 0 = always ask).
    #[arg(long, env = "S3_OIDC_MOUNT_METADATA_TTL", default_value = "60s", value_parser = parse_duration)]
    pub metadata_ttl: Duration,

    /// How long a "no such file" answer is trusted (by the daemon and the kernel); 0 = never.
    #[arg(long, env = "S3_OIDC_MOUNT_NEGATIVE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub negative_ttl: Duration,

    /// Subdirectories listed ahead, in the background, when a directory is first read, so
    /// tree walks (find, du, ls -R) find each level already listed; 0 turns it off.
    #[arg(long, env = "S3_OIDC_MOUNT_PREFETCH_LISTINGS", default_value_t = 256)]
    pub prefetch_listings: usize,

    /// Memory budget of the block cache and prefetch, in bytes with binary units
    /// (e.g. 512MiB, 2G); default: a quarter of the cgroup memory limit (64 MiB..2 GiB),
    /// or 512 MiB without a limit.
    #[arg(long, env = "S3_OIDC_MOUNT_CACHE_SIZE", value_parser = parse_cache_size)]
    pub cache_size: Option<u64>,

    /// Size of one ranged GET for sequential reads (binary units, 1MiB..64MiB).
    #[arg(long, env = "S3_OIDC_MOUNT_PART_SIZE", default_value = "8MiB", value_parser = parse_part_size)]
    pub part_size: u64,

    /// Cache block size: the unit of random reads (binary units, 16KiB..8MiB).
    #[arg(long, env = "S3_OIDC_MOUNT_BLOCK_SIZE", default_value = "64KiB", value_parser = parse_block_size)]
    pub block_size: u64,

    /// Kernel readahead for the mount (sequential reads ask this far ahead; 0 keeps the
    /// kernel's default). Needs write access to /sys; skipped with a debug log otherwise.
    #[arg(long, env = "S3_OIDC_MOUNT_KERNEL_READAHEAD", default_value = "2MiB", value_parser = parse_readahead)]
    pub kernel_readahead: u64,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// FUSE worker threads.
    #[arg(long, env = "S3_OIDC_MOUNT_FUSE_THREADS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub fuse_threads: u16,

    /// Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this address, e.g.
    /// 127.0.0.1:9090 (port 0: any free port, logged at start); default: no HTTP server.
    #[arg(long, env = "S3_OIDC_MOUNT_HTTP_ADDR", value_name = "ADDR:PORT")]
    pub http_addr: Option<std::net::SocketAddr>,

    /// /readyz answers 503 once the web-identity credentials are valid for less than this
    /// (renewals failing); it does not apply to credentials from the AWS chain.
    #[arg(long, env = "S3_OIDC_MOUNT_READY_MIN_VALIDITY", default_value = "60s", value_parser = parse_duration)]
    pub ready_min_validity: Duration,
}

/// `s3://BUCKET[/PREFIX]` split and checked: the prefix is "" or ends in `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub bucket: String,
    pub prefix: String,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

pub fn parse_source(s: &str) -> Result<Source, String> {
    let rest = s
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{s:?} is not an S3 URL: expected s3://BUCKET[/PREFIX]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    check_bucket(bucket)?;
    let prefix = names::normalize_prefix(prefix)?;
    Ok(Source {
        bucket: bucket.to_string(),
        prefix,
    })
}

/// S3's bucket naming rules (3-63 characters of a-z 0-9 . -, starting and ending with a
/// letter or digit), so a typo fails here rather than as a confusing HTTP error.
fn check_bucket(b: &str) -> Result<(), String> {
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let ends_ok = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if (3..=63).contains(&b.len())
        && ok_chars
        && ends_ok(b.bytes().next())
        && ends_ok(b.bytes().last())
        && !b.contains("..")
    {
        Ok(())
    } else {
        Err(format!(
            "invalid bucket name {b:?}: 3-63 characters of a-z, 0-9, '.', '-', starting and ending with a letter or digit"
        ))
    }
}

fn parse_url(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("http://") || s.starts_with("https://"))
        && s.len() > "https://".len()
        && !s.contains(char::is_whitespace);
    if ok {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err(format!("{s:?} is not an http:// or https:// URL"))
    }
}

pub fn parse_mode(s: &str) -> Result<u16, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u16::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 0444 or 755")),
    }
}

/// Sizes in bytes with optional binary units: 4096, 64k, 512M, 512MiB, 2G, 1GiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 512MiB, 2G or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown size unit {unit:?} (use k, M, G, T)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_part_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if (1 << 20..=64 << 20).contains(&n) {
        Ok(n)
    } else {
        Err(format!("part size {s:?} must be between 1MiB and 64MiB"))
    }
}

fn parse_write_part_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if (5 << 20..=5 << 30).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "write part size {s:?} must be between 5MiB and 5GiB (S3's part limits)"
        ))
    }
}

fn parse_block_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if (16 << 10..=8 << 20).contains(&n) && n.is_power_of_two() {
        Ok(n)
    } else {
        Err(format!(
            "block size {s:?} must be a power of two between 16KiB and 8MiB"
        ))
    }
}

/// Region names: AWS's (`eu-west-1`) and other servers' (`garage`, `fr-par`, `auto`).
pub fn parse_region(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a region name (letters, digits, '-' and '_', such as us-east-1)"
        ))
    }
}

fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// Less could not hold the blocks of one sequential read and its prefetch.
fn parse_cache_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n >= 16 << 20 {
        Ok(n)
    } else {
        Err(format!("cache size {s:?} must be at least 16MiB"))
    }
}

fn parse_readahead(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n <= 1 << 30 {
        Ok(n)
    } else {
        Err(format!("kernel readahead {s:?} must be at most 1GiB"))
    }
}

fn parse_request_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "request timeout {s:?} must be between 100ms and 10m"
        ))
    }
}

/// Durations: 60s, 500ms, 5m, 1h, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 60s, 500ms or 5m"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{s:?}: unknown duration unit {unit:?} (use ms, s, m, h)"
            ));
        }
    };
    // Longer makes no sense for any option and would overflow clock arithmetic.
    if d > Duration::from_secs(30 * 24 * 3600) {
        return Err(format!("{s:?} is too long (at most 30 days)"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            parse_source("s3://my-bucket").unwrap(),
            Source {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(parse_source("s3://b.c1/x/y").unwrap().prefix, "x/y/");
        assert_eq!(parse_source("s3://b.c1/x/y/").unwrap().prefix, "x/y/");
        for bad in [
            "b",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-ab",
            "s3://a..b",
            "s3://ok-bucket/a/../b",
            "s3://ok-bucket/a//b",
        ] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_modes_durations() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_mode("0444").unwrap(), 0o444);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("17777").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("100000000000h").is_err());
        assert!(parse_part_size("512k").is_err());
    }
}
