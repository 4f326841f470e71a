//! `s3bench`: the raw GET and PUT client of the benchmark (`scripts/bench.sh`), and its helpers.
//!
//! A plain aws-sdk-s3 client with the settings any S3 program would use: path-style URLs,
//! the endpoint from `S3_ENDPOINT` (or `--endpoint-url`), keys from `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY`, region from `AWS_REGION` (default us-east-1), SDK defaults for
//! everything else. It is the baseline the FUSE mounts are compared with: what reading (or
//! writing) the same bytes costs without a filesystem in between. Uploads send Content-MD5
//! on every PutObject and UploadPart and no SDK CRC32 (`WhenRequired`), as s3-oidc-mount
//! does, so both pay for the same integrity check (`--no-md5` drops it).
//!
//! ```text
//! cargo build --release --example s3bench
//! s3bench put-data  --bucket B [--bucket-only]  create the bucket and the data set (skips what exists)
//! s3bench get       --bucket B [-c N] [--part-size 8MiB|0] KEY...
//!                                               read objects with N connections in ranged parts
//!                                               (0 = one GET per object), check the byte count
//! s3bench randget   --bucket B --block 4KiB --seconds 15 KEY
//!                                               random aligned ranged GETs, one at a time
//! s3bench ttfb      --bucket B [--samples 9] KEY  median latency of a cold 4 KiB ranged GET
//! s3bench list      --bucket B --prefix P [--delimiter /]
//!                                               time a full listing (every ListObjectsV2 page)
//! s3bench put       --bucket B [-c 4] [--part-size 8MiB] [--size 1GiB] KEY
//!                                               upload one object of random bytes held in memory:
//!                                               a multipart upload, N parts in flight (one
//!                                               PutObject when it fits in one part)
//! s3bench put-many  --bucket B --prefix P [-c 1] [--count 1000] [--size 4KiB]
//!                                               COUNT PutObjects of SIZE, N at a time: files/s
//! s3bench wait-objects --bucket B --prefix P --count N [--size S] [--since T]
//!                                               wait until N objects (of size S) are listed under
//!                                               P, print seconds since T
//! s3bench verify    --bucket B KEY --file F     check the object's size and ETag against a file
//! s3bench delete    --bucket B --prefix P       delete every object (and unfinished multipart
//!                                               upload) under P
//! s3bench open-read PATH [--bytes 4096]         time open + read of a local file (a mount)
//! s3bench wait-mount MOUNTPOINT --since T [--pid P]
//!                                               wait until MOUNTPOINT is in /proc/self/mountinfo,
//!                                               print seconds since T (a Unix time, $EPOCHREALTIME)
//! ```
//! Measurements are printed on stdout as one line of `name=value` pairs; progress goes to stderr.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt, stream};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Parser)]
#[command(
    name = "s3bench",
    about = "Raw S3 GET/PUT client and helpers for scripts/bench.sh"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the bucket and the benchmark data set (objects that already exist with the
    /// right size are skipped).
    PutData(PutDataArgs),
    /// Read whole objects with N concurrent connections in ranged parts; print MiB/s and
    /// the CPU seconds of this process.
    Get(GetArgs),
    /// Random aligned ranged GETs of one object, one request at a time, for a fixed time.
    Randget(RandgetArgs),
    /// Median latency of a ranged GET of the first bytes at a random offset, new client each time.
    Ttfb(TtfbArgs),
    /// Time a full listing of a prefix (every ListObjectsV2 page), new client.
    List(ListArgs),
    /// Upload one object of random bytes from memory, as a multipart upload with N parts in
    /// flight; print MiB/s and the CPU seconds of this process.
    Put(PutArgs),
    /// Upload COUNT small objects, N at a time; print files/s.
    PutMany(PutManyArgs),
    /// Wait until COUNT objects (of SIZE, if given) are listed under a prefix; print seconds
    /// since --since.
    WaitObjects(WaitObjectsArgs),
    /// Check an object's size and ETag against a local file (any part size).
    Verify(VerifyArgs),
    /// Delete every object and unfinished multipart upload under a prefix.
    Delete(DeleteArgs),
    /// Time open + read of the first bytes of a local file (a file on a fresh mount).
    OpenRead(OpenReadArgs),
    /// Wait until a mountpoint appears in /proc/self/mountinfo; print seconds since --since.
    WaitMount(WaitMountArgs),
}

#[derive(Args)]
struct S3Args {
    /// Bucket name.
    #[arg(long)]
    bucket: String,
    /// S3 endpoint URL.
    #[arg(long, env = "S3_ENDPOINT")]
    endpoint_url: String,
}

#[derive(Args)]
struct PutDataArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Concurrent uploads (parts of large objects, or small objects).
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Number of small objects in `flat/`.
    #[arg(long, default_value_t = 10_000)]
    flat_objects: u32,
    /// Number of directories in `tree/`, each with as many small objects.
    #[arg(long, default_value_t = 100)]
    tree_dirs: u32,
    /// Size of each small object.
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    small_size: u64,
    /// Only create the bucket (for the write workloads, which need no data set).
    #[arg(long)]
    bucket_only: bool,
}

#[derive(Args)]
struct GetArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Concurrent requests (each on its own connection).
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,
    /// Bytes per ranged GET; 0 = one GET of the whole object.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    part_size: u64,
    /// Objects to read.
    #[arg(required = true)]
    keys: Vec<String>,
}

#[derive(Args)]
struct RandgetArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Bytes per GET (aligned to this size).
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    block: u64,
    /// How long to run.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Stop after reading this many bytes (0 = no limit), like fio's one pass over a file.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    max_bytes: u64,
    /// The object to read.
    key: String,
}

#[derive(Args)]
struct TtfbArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Number of requests (the median is reported).
    #[arg(long, default_value_t = 9)]
    samples: usize,
    /// Bytes per request.
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    bytes: u64,
    /// The object to read.
    key: String,
}

#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Prefix to list.
    #[arg(long)]
    prefix: String,
    /// Delimiter (e.g. /), for one directory level; none lists every key under the prefix.
    #[arg(long)]
    delimiter: Option<String>,
}

/// How uploads are sent.
#[derive(Args, Clone, Copy)]
struct UploadOpts {
    /// Send no Content-MD5 (the SDK then sends no checksum at all).
    #[arg(long)]
    no_md5: bool,
    /// Sign the request without hashing the body (UNSIGNED-PAYLOAD) instead of the
    /// SDK's default SHA-256 of every byte.
    #[arg(long)]
    unsigned_payload: bool,
}

#[derive(Args)]
struct PutArgs {
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    upload: UploadOpts,
    /// Parts in flight at once (each on its own connection).
    #[arg(short = 'c', long, default_value_t = 4)]
    connections: usize,
    /// Bytes per part.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    part_size: u64,
    /// Size of the object.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// The key to write (it is overwritten if it exists).
    key: String,
}

#[derive(Args)]
struct PutManyArgs {
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    upload: UploadOpts,
    /// Keys are PREFIX followed by f0000, f0001, ...
    #[arg(long)]
    prefix: String,
    /// PutObjects at once (1: one after another, as `cp -r` writes).
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,
    /// Number of objects.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Size of each object.
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    size: u64,
}

#[derive(Args)]
struct WaitObjectsArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Prefix to list (no delimiter: every key under it).
    #[arg(long)]
    prefix: String,
    /// Objects to wait for.
    #[arg(long)]
    count: usize,
    /// Count only objects of this size (directory markers and partial objects are not).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Start time as Unix seconds with a fraction (bash's $EPOCHREALTIME); default: now.
    #[arg(long)]
    since: Option<f64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    s3: S3Args,
    /// The local file the object should be a copy of.
    #[arg(long)]
    file: PathBuf,
    /// The object.
    key: String,
}

#[derive(Args)]
struct DeleteArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Prefix to empty (must not be empty).
    #[arg(long)]
    prefix: String,
}

#[derive(Args)]
struct OpenReadArgs {
    /// File to open and read.
    path: PathBuf,
    /// Bytes to read from the start.
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    bytes: u64,
}

#[derive(Args)]
struct WaitMountArgs {
    /// Mountpoint to wait for.
    mountpoint: PathBuf,
    /// Start time as Unix seconds with a fraction (bash's $EPOCHREALTIME).
    #[arg(long)]
    since: f64,
    /// Fail as soon as this process has exited (the mount daemon).
    #[arg(long)]
    pid: Option<i32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::OpenRead(a) => open_read(&a),
        Cmd::WaitMount(a) => wait_mount(&a),
        cmd => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(async move {
                match cmd {
                    Cmd::PutData(a) => put_data(&a).await,
                    Cmd::Get(a) => get(&a).await,
                    Cmd::Randget(a) => randget(&a).await,
                    Cmd::Ttfb(a) => ttfb(&a).await,
                    Cmd::List(a) => list(&a).await,
                    Cmd::Put(a) => put(&a).await,
                    Cmd::PutMany(a) => put_many(&a).await,
                    Cmd::WaitObjects(a) => wait_objects(&a).await,
                    Cmd::Verify(a) => verify(&a).await,
                    Cmd::Delete(a) => delete(&a).await,
                    Cmd::OpenRead(_) | Cmd::WaitMount(_) => unreachable!(),
                }
            })
        }
    }
}

/// A client as a plain program would make it: keys from the environment, path style.
fn client(s3: &S3Args) -> Result<Client> {
    Ok(Client::from_conf(config(s3)?.build()))
}

/// The client of the uploads: the SDK adds no checksum of its own (the request carries
/// Content-MD5 instead, as s3-oidc-mount's do).
fn upload_client(s3: &S3Args) -> Result<Client> {
    Ok(Client::from_conf(
        config(s3)?
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build(),
    ))
}

fn config(s3: &S3Args) -> Result<aws_sdk_s3::config::Builder> {
    let var = |name: &str| {
        std::env::var(name).with_context(|| format!("{name} is not set (source the RGW env file)"))
    };
    let creds = Credentials::new(
        var("AWS_ACCESS_KEY_ID")?,
        var("AWS_SECRET_ACCESS_KEY")?,
        std::env::var("AWS_SESSION_TOKEN").ok(),
        None,
        "environment",
    );
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_string());
    Ok(aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .endpoint_url(&s3.endpoint_url)
        .force_path_style(true)
        .credentials_provider(creds))
}

/// An SDK error with its causes on one line (the SDK's own Display is only the top level).
fn sdk_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow!("{}", aws_sdk_s3::error::DisplayErrorContext(e))
}

/// Sizes with optional binary units: 4096, 4k, 4KiB, 8MiB, 1G.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 4KiB or 8MiB"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => MIB,
        "g" | "gib" | "gb" => GIB,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use k, M, G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// CPU seconds (user + system) and peak RSS (MiB) of this process so far.
fn rusage() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return (f64::NAN, f64::NAN);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(ru.ru_utime) + secs(ru.ru_stime),
        ru.ru_maxrss as f64 / 1024.0,
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------
// put-data

/// One object of the data set.
struct Obj {
    key: String,
    size: u64,
}

/// The data set: large objects for throughput, many small ones for metadata workloads.
fn data_set(a: &PutDataArgs) -> (Vec<Obj>, Vec<Obj>) {
    let mut large = vec![Obj {
        key: "seq/1GiB.bin".into(),
        size: GIB,
    }];
    for i in 0..4 {
        large.push(Obj {
            key: format!("par/{i}.bin"),
            size: 256 * MIB,
        });
    }
    large.push(Obj {
        key: "ttfb/100MiB.bin".into(),
        size: 100 * MIB,
    });
    let mut small = Vec::new();
    for i in 0..a.flat_objects {
        small.push(Obj {
            key: format!("flat/f{i:05}.txt"),
            size: a.small_size,
        });
    }
    for d in 0..a.tree_dirs {
        for f in 0..a.tree_dirs {
            small.push(Obj {
                key: format!("tree/d{d:03}/f{f:03}.txt"),
                size: a.small_size,
            });
        }
    }
    (large, small)
}

fn random_bytes(len: u64) -> Bytes {
    let mut buf = vec![0u8; len as usize];
    SmallRng::from_os_rng().fill_bytes(&mut buf);
    Bytes::from(buf)
}

async fn put_data(a: &PutDataArgs) -> Result<()> {
    let c = client(&a.s3)?;
    let bucket = a.s3.bucket.as_str();
    match c.create_bucket().bucket(bucket).send().await {
        Ok(_) => eprintln!("s3bench: created bucket {bucket}"),
        Err(e) => {
            let svc = e.as_service_error();
            if svc
                .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists())
            {
                eprintln!("s3bench: bucket {bucket} exists");
            } else {
                return Err(sdk_err(e)).context(format!("creating bucket {bucket}"));
            }
        }
    }
    if a.bucket_only {
        return Ok(());
    }

    // What is there already (key -> size), so that a second run only fills gaps.
    let mut existing = HashSet::new();
    let mut pages = c.list_objects_v2().bucket(bucket).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(sdk_err)?;
        for o in page.contents() {
            if let (Some(k), Some(s)) = (o.key(), o.size()) {
                existing.insert((k.to_string(), s as u64));
            }
        }
    }

    let (large, small) = data_set(a);
    let t0 = Instant::now();
    let mut uploaded = 0u64;
    for o in &large {
        if existing.contains(&(o.key.clone(), o.size)) {
            continue;
        }
        eprintln!("s3bench: uploading {} ({} MiB)", o.key, o.size / MIB);
        put_large(&c, bucket, o, a.parallel).await?;
        uploaded += o.size;
    }
    let todo: Vec<&Obj> = small
        .iter()
        .filter(|o| !existing.contains(&(o.key.clone(), o.size)))
        .collect();
    if !todo.is_empty() {
        eprintln!("s3bench: uploading {} small objects", todo.len());
    }
    let n = todo.len() as u64;
    stream::iter(todo)
        .map(|o| {
            let c = c.clone();
            let (bucket, key, size) = (bucket.to_string(), o.key.clone(), o.size);
            async move {
                c.put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(ByteStream::from(random_bytes(size)))
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("uploading {key}"))
            }
        })
        .buffer_unordered(a.parallel.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    uploaded += n * a.small_size;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "s3bench: data set ready ({} MiB uploaded in {secs:.1} s)",
        uploaded / MIB
    );
    Ok(())
}

/// Multipart upload of random content, parts in parallel.
async fn put_large(c: &Client, bucket: &str, o: &Obj, parallel: usize) -> Result<()> {
    const PART: u64 = 16 * MIB;
    let up = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(&o.key)
        .send()
        .await
        .map_err(sdk_err)?;
    let id = up.upload_id().context("no upload id")?.to_string();
    let parts = o.size.div_ceil(PART);
    let mut done: Vec<CompletedPart> = stream::iter(0..parts)
        .map(|i| {
            let (c, bucket, key, id) = (c.clone(), bucket.to_string(), o.key.clone(), id.clone());
            let len = PART.min(o.size - i * PART);
            async move {
                // Random content is generated off the async threads (it is CPU work).
                let body = tokio::task::spawn_blocking(move || random_bytes(len)).await?;
                let n = i as i32 + 1;
                let out = c
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(n)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(sdk_err)?;
                Ok::<_, anyhow::Error>(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            }
        })
        .buffer_unordered(parallel.clamp(1, 8))
        .try_collect()
        .await?;
    done.sort_by_key(|p| p.part_number());
    c.complete_multipart_upload()
        .bucket(bucket)
        .key(&o.key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .map_err(sdk_err)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// get, randget, ttfb

/// GET `[start, start+len)` of `key` (the whole object if `len` is None); the body is
/// counted and dropped. Fails if the byte count is not the one asked for.
async fn fetch(c: Client, bucket: String, key: String, range: Option<(u64, u64)>) -> Result<u64> {
    let mut req = c.get_object().bucket(&bucket).key(&key);
    if let Some((start, len)) = range {
        req = req.range(format!("bytes={}-{}", start, start + len - 1));
    }
    let out = req
        .send()
        .await
        .map_err(sdk_err)
        .with_context(|| format!("GET {key}"))?;
    let want = out.content_length().unwrap_or(-1);
    let mut body = out.body;
    let mut n = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .with_context(|| format!("reading the body of {key}"))?
    {
        n += chunk.len() as u64;
    }
    ensure!(
        want < 0 || n == want as u64,
        "GET {key}: {n} bytes, Content-Length {want}"
    );
    if let Some((_, len)) = range {
        ensure!(n == len, "GET {key} {range:?}: {n} bytes instead of {len}");
    }
    Ok(n)
}

async fn object_size(c: &Client, bucket: &str, key: &str) -> Result<u64> {
    let h = c
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(sdk_err)
        .with_context(|| format!("HEAD {key}"))?;
    Ok(h.content_length().unwrap_or(0).max(0) as u64)
}

async fn get(a: &GetArgs) -> Result<()> {
    let c = client(&a.s3)?;
    let bucket = &a.s3.bucket;
    let mut parts = Vec::new();
    let mut expected = 0u64;
    for key in &a.keys {
        let size = object_size(&c, bucket, key).await?;
        expected += size;
        if a.part_size == 0 {
            parts.push((key.clone(), None));
        } else {
            let mut off = 0;
            while off < size {
                let len = a.part_size.min(size - off);
                parts.push((key.clone(), Some((off, len))));
                off += len;
            }
        }
    }
    let requests = parts.len();
    let (cpu0, _) = rusage();
    let t0 = Instant::now();
    let total: u64 = stream::iter(parts)
        .map(|(key, range)| tokio::spawn(fetch(c.clone(), bucket.clone(), key, range)))
        .buffer_unordered(a.connections.max(1))
        .map(|r| r.map_err(anyhow::Error::from).and_then(|r| r))
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = rusage();
    ensure!(total == expected, "read {total} bytes, expected {expected}");
    let cpu = cpu1 - cpu0;
    println!(
        "bytes={total} seconds={secs:.3} mib_per_s={:.1} cpu_seconds={cpu:.3} cpu_seconds_per_gib={:.3} max_rss_mib={rss:.1} requests={requests}",
        total as f64 / MIB as f64 / secs,
        cpu / (total as f64 / GIB as f64),
    );
    Ok(())
}

async fn randget(a: &RandgetArgs) -> Result<()> {
    ensure!(a.block > 0, "--block must be positive");
    let c = client(&a.s3)?;
    let size = object_size(&c, &a.s3.bucket, &a.key).await?;
    let blocks = size / a.block;
    ensure!(blocks > 0, "{} is smaller than one block", a.key);
    let mut rng = SmallRng::from_os_rng();
    let deadline = Duration::from_secs_f64(a.seconds);
    let t0 = Instant::now();
    let (mut total, mut ops) = (0u64, 0u64);
    while t0.elapsed() < deadline && (a.max_bytes == 0 || total < a.max_bytes) {
        let off = rng.random_range(0..blocks) * a.block;
        total += fetch(
            c.clone(),
            a.s3.bucket.clone(),
            a.key.clone(),
            Some((off, a.block)),
        )
        .await?;
        ops += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "bytes={total} seconds={secs:.3} ops={ops} iops={:.1} mib_per_s={:.1}",
        ops as f64 / secs,
        total as f64 / MIB as f64 / secs
    );
    Ok(())
}

async fn ttfb(a: &TtfbArgs) -> Result<()> {
    ensure!(
        a.bytes > 0 && a.samples > 0,
        "--bytes and --samples must be positive"
    );
    let probe = client(&a.s3)?;
    let size = object_size(&probe, &a.s3.bucket, &a.key).await?;
    let slots = (size / a.bytes).max(1);
    let mut rng = SmallRng::from_os_rng();
    let mut ms = Vec::with_capacity(a.samples);
    for _ in 0..a.samples {
        // A new client each time: a new connection, as a freshly started reader would have.
        let c = client(&a.s3)?;
        let off = rng.random_range(0..slots) * a.bytes;
        let len = a.bytes.min(size - off);
        let t0 = Instant::now();
        fetch(c, a.s3.bucket.clone(), a.key.clone(), Some((off, len))).await?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let list: Vec<String> = ms.iter().map(|v| format!("{v:.3}")).collect();
    let (min, max) = (
        ms.iter().copied().fold(f64::INFINITY, f64::min),
        ms.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "median_ms={:.3} min_ms={min:.3} max_ms={max:.3} samples_ms={}",
        median(&mut ms),
        list.join(",")
    );
    Ok(())
}

async fn list(a: &ListArgs) -> Result<()> {
    let c = client(&a.s3)?;
    let t0 = Instant::now();
    let mut pages = c
        .list_objects_v2()
        .bucket(&a.s3.bucket)
        .prefix(&a.prefix)
        .set_delimiter(a.delimiter.clone())
        .into_paginator()
        .send();
    let (mut objects, mut prefixes, mut requests) = (0usize, 0usize, 0usize);
    while let Some(page) = pages.next().await {
        let page = page.map_err(sdk_err).context("ListObjectsV2")?;
        requests += 1;
        objects += page.contents().len();
        prefixes += page.common_prefixes().len();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("seconds={secs:.4} objects={objects} prefixes={prefixes} requests={requests}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// put, put-many, wait-objects, verify, delete

fn md5_digest(b: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(b).into()
}

fn b64(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// One PutObject; returns the ETag.
async fn put_object(
    c: Client,
    bucket: String,
    key: String,
    body: Bytes,
    o: UploadOpts,
) -> Result<String> {
    let mut req = c.put_object().bucket(bucket).key(&key);
    if !o.no_md5 {
        req = req.content_md5(b64(&md5_digest(&body)));
    }
    let req = req.body(ByteStream::from(body));
    let out = if o.unsigned_payload {
        req.customize().disable_payload_signing().send().await
    } else {
        req.send().await
    };
    let out = out
        .map_err(sdk_err)
        .with_context(|| format!("PutObject {key}"))?;
    Ok(out.e_tag().unwrap_or_default().to_string())
}

/// One UploadPart; returns the completed part.
async fn upload_part(
    c: Client,
    bucket: String,
    key: String,
    upload_id: String,
    number: i32,
    body: Bytes,
    o: UploadOpts,
) -> Result<CompletedPart> {
    let mut req = c
        .upload_part()
        .bucket(bucket)
        .key(&key)
        .upload_id(upload_id)
        .part_number(number);
    if !o.no_md5 {
        req = req.content_md5(b64(&md5_digest(&body)));
    }
    let req = req.body(ByteStream::from(body));
    let out = if o.unsigned_payload {
        req.customize().disable_payload_signing().send().await
    } else {
        req.send().await
    };
    let out = out
        .map_err(sdk_err)
        .with_context(|| format!("UploadPart {key} #{number}"))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(out.e_tag().map(str::to_string))
        .build())
}

/// Multipart upload of `data` in parts of `part_size`, `parallel` parts in flight; returns
/// the ETag. The upload is aborted if a part fails.
async fn multipart(
    c: &Client,
    bucket: &str,
    key: &str,
    data: &Bytes,
    part_size: u64,
    parallel: usize,
    o: UploadOpts,
) -> Result<String> {
    let up = c
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(sdk_err)
        .with_context(|| format!("CreateMultipartUpload {key}"))?;
    let id = up.upload_id().context("no upload id")?.to_string();
    let size = data.len() as u64;
    let parts = size.div_ceil(part_size);
    let result: Result<Vec<CompletedPart>> = stream::iter(0..parts)
        .map(|i| {
            let start = i * part_size;
            let body = data.slice(start as usize..(start + part_size).min(size) as usize);
            tokio::spawn(upload_part(
                c.clone(),
                bucket.to_string(),
                key.to_string(),
                id.clone(),
                i as i32 + 1,
                body,
                o,
            ))
        })
        .buffer_unordered(parallel.max(1))
        .map(|r| r.map_err(anyhow::Error::from).and_then(|r| r))
        .try_collect()
        .await;
    let mut done = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = c
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .send()
                .await;
            return Err(e);
        }
    };
    done.sort_by_key(|p| p.part_number());
    let out = c
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .map_err(sdk_err)
        .with_context(|| format!("CompleteMultipartUpload {key}"))?;
    Ok(out.e_tag().unwrap_or_default().to_string())
}

async fn put(a: &PutArgs) -> Result<()> {
    ensure!(
        a.size > 0 && a.part_size > 0,
        "--size and --part-size must be positive"
    );
    let c = upload_client(&a.s3)?;
    let bucket = a.s3.bucket.as_str();
    let size = a.size;
    // The content exists before the clock starts: this measures the upload, not a source.
    let data = tokio::task::spawn_blocking(move || random_bytes(size)).await?;
    let (cpu0, _) = rusage();
    let t0 = Instant::now();
    let requests = if size <= a.part_size {
        put_object(
            c.clone(),
            bucket.to_string(),
            a.key.clone(),
            data.clone(),
            a.upload,
        )
        .await?;
        1
    } else {
        multipart(
            &c,
            bucket,
            &a.key,
            &data,
            a.part_size,
            a.connections,
            a.upload,
        )
        .await?;
        size.div_ceil(a.part_size) + 2
    };
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = rusage();
    // RGW's answer to CompleteMultipartUpload has no ETag the SDK reads: ask.
    let h = c
        .head_object()
        .bucket(bucket)
        .key(&a.key)
        .send()
        .await
        .map_err(sdk_err)
        .with_context(|| format!("HEAD {}", a.key))?;
    let stored = h.content_length().unwrap_or(0).max(0) as u64;
    ensure!(stored == size, "{} has {stored} bytes, not {size}", a.key);
    let etag = h.e_tag().unwrap_or_default();
    let cpu = cpu1 - cpu0;
    println!(
        "bytes={size} seconds={secs:.3} mib_per_s={:.1} cpu_seconds={cpu:.3} cpu_seconds_per_gib={:.3} max_rss_mib={rss:.1} requests={requests} etag={}",
        size as f64 / MIB as f64 / secs,
        cpu / (size as f64 / GIB as f64),
        etag.trim_matches('"'),
    );
    Ok(())
}

async fn put_many(a: &PutManyArgs) -> Result<()> {
    ensure!(a.count > 0, "--count must be positive");
    let c = upload_client(&a.s3)?;
    let bodies: Vec<Bytes> = (0..a.count).map(|_| random_bytes(a.size)).collect();
    let (cpu0, _) = rusage();
    let t0 = Instant::now();
    let n = stream::iter(bodies.into_iter().enumerate())
        .map(|(i, body)| {
            tokio::spawn(put_object(
                c.clone(),
                a.s3.bucket.clone(),
                format!("{}f{i:04}", a.prefix),
                body,
                a.upload,
            ))
        })
        .buffer_unordered(a.connections.max(1))
        .map(|r| r.map_err(anyhow::Error::from).and_then(|r| r))
        .try_fold(0usize, |acc, _| async move { Ok(acc + 1) })
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, _) = rusage();
    println!(
        "files={n} seconds={secs:.3} files_per_s={:.1} ms_per_file={:.3} cpu_seconds={:.3}",
        n as f64 / secs,
        secs * 1e3 / n as f64,
        cpu1 - cpu0,
    );
    Ok(())
}

/// Every object under `prefix` (no delimiter): (key, size).
async fn list_all(c: &Client, bucket: &str, prefix: &str) -> Result<Vec<(String, u64)>> {
    let mut pages = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(sdk_err).context("ListObjectsV2")?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                out.push((k.to_string(), o.size().unwrap_or(0).max(0) as u64));
            }
        }
    }
    Ok(out)
}

fn unix_now() -> Result<f64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64())
}

async fn wait_objects(a: &WaitObjectsArgs) -> Result<()> {
    let since = match a.since {
        Some(t) => t,
        None => unix_now()?,
    };
    let c = client(&a.s3)?;
    let t0 = Instant::now();
    let mut polls = 0u64;
    loop {
        let objects = list_all(&c, &a.s3.bucket, &a.prefix).await?;
        polls += 1;
        let n = objects
            .iter()
            .filter(|(_, s)| a.size.is_none_or(|want| *s == want))
            .count();
        if n >= a.count {
            println!(
                "seconds={:.4} objects={n} polls={polls}",
                unix_now()? - since
            );
            return Ok(());
        }
        if t0.elapsed().as_secs_f64() > a.timeout {
            bail!(
                "{n} of {} objects under {} after {} s",
                a.count,
                a.prefix,
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ETag S3 gives `path`'s content uploaded in parts of `part` bytes (`None`: in one
/// PutObject): the MD5 of the body, or the MD5 of the parts' MD5s followed by `-N`.
fn file_etag(path: &Path, part: Option<u64>) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let chunk = part.unwrap_or(8 * MIB) as usize;
    let mut buf = vec![0u8; chunk];
    let mut whole = <md5::Md5 as md5::Digest>::new();
    let mut digests = Vec::new();
    loop {
        let mut n = 0;
        while n < chunk {
            let r = f.read(&mut buf[n..])?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        if part.is_some() {
            digests.extend_from_slice(&md5_digest(&buf[..n]));
        } else {
            md5::Digest::update(&mut whole, &buf[..n]);
        }
        if n < chunk {
            break;
        }
    }
    Ok(match part {
        None => hex(&md5::Digest::finalize(whole)),
        Some(_) => format!("{}-{}", hex(&md5_digest(&digests)), digests.len() / 16),
    })
}

async fn verify(a: &VerifyArgs) -> Result<()> {
    let c = client(&a.s3)?;
    let h = c
        .head_object()
        .bucket(&a.s3.bucket)
        .key(&a.key)
        .send()
        .await
        .map_err(sdk_err)
        .with_context(|| format!("HEAD {}", a.key))?;
    let size = h.content_length().unwrap_or(0).max(0) as u64;
    let etag = h.e_tag().unwrap_or_default().trim_matches('"').to_string();
    let want = std::fs::metadata(&a.file)
        .with_context(|| format!("{}", a.file.display()))?
        .len();
    ensure!(size == want, "{} has {size} bytes, the file {want}", a.key);
    // A multipart ETag does not say the part size; try the whole-MiB sizes that give as
    // many parts (every client here uses such sizes).
    let candidates: Vec<Option<u64>> = match etag.split_once('-') {
        None => vec![None],
        Some((_, n)) => {
            let n: u64 = n.parse().with_context(|| format!("ETag {etag}"))?;
            (5..=5 * 1024)
                .map(|m| m * MIB)
                .filter(|p| size.div_ceil(*p) == n)
                .take(4)
                .map(Some)
                .collect()
        }
    };
    for part in &candidates {
        if file_etag(&a.file, *part)? == etag {
            let parts = part.map_or(1, |p| size.div_ceil(p));
            let mib = part.map_or(0, |p| p / MIB);
            println!("size={size} etag={etag} parts={parts} part_size_mib={mib} checked=etag");
            return Ok(());
        }
    }
    // Parts of another layout (s3fs folds a short last part into the one before): compare
    // the content itself.
    let out = c
        .get_object()
        .bucket(&a.s3.bucket)
        .key(&a.key)
        .send()
        .await
        .map_err(sdk_err)
        .with_context(|| format!("GET {}", a.key))?;
    let mut body = out.body;
    let mut got = <md5::Md5 as md5::Digest>::new();
    while let Some(chunk) = body.try_next().await? {
        md5::Digest::update(&mut got, &chunk);
    }
    let got = hex(&md5::Digest::finalize(got));
    ensure!(
        got == file_etag(&a.file, None)?,
        "{}: the content differs from {} (MD5 {got})",
        a.key,
        a.file.display()
    );
    let parts = etag.split_once('-').map_or("1", |(_, n)| n);
    println!("size={size} etag={etag} parts={parts} part_size_mib=? checked=content");
    Ok(())
}

async fn delete(a: &DeleteArgs) -> Result<()> {
    ensure!(!a.prefix.is_empty(), "--prefix must not be empty");
    let c = client(&a.s3)?;
    let bucket = a.s3.bucket.as_str();
    let keys = list_all(&c, bucket, &a.prefix).await?;
    let deleted = keys.len();
    stream::iter(keys)
        .map(|(key, _)| {
            let c = c.clone();
            async move {
                c.delete_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("DeleteObject {key}"))
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let uploads = c
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(&a.prefix)
        .send()
        .await
        .map_err(sdk_err)
        .context("ListMultipartUploads")?;
    let mut aborted = 0;
    for u in uploads.uploads() {
        if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
            c.abort_multipart_upload()
                .bucket(bucket)
                .key(k)
                .upload_id(id)
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("AbortMultipartUpload {k}"))?;
            aborted += 1;
        }
    }
    println!("deleted={deleted} aborted={aborted}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// open-read, wait-mount

fn open_read(a: &OpenReadArgs) -> Result<()> {
    let mut buf = vec![0u8; a.bytes as usize];
    let t0 = Instant::now();
    let mut f =
        std::fs::File::open(&a.path).with_context(|| format!("opening {}", a.path.display()))?;
    f.read_exact(&mut buf)
        .with_context(|| format!("reading {} bytes of {}", a.bytes, a.path.display()))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    println!("ms={ms:.3} bytes={}", a.bytes);
    Ok(())
}

/// Whether `path` is a mountpoint, from /proc/self/mountinfo (field 5, octal escapes).
fn is_mounted(path: &Path) -> Result<bool> {
    let want = path.to_string_lossy();
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().any(|l| {
        l.split(' ').nth(4).is_some_and(|mp| {
            mp.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
                == want
        })
    }))
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn wait_mount(a: &WaitMountArgs) -> Result<()> {
    let path = std::path::absolute(&a.mountpoint)?;
    let t0 = Instant::now();
    loop {
        if is_mounted(&path)? {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
            println!("seconds={:.4}", now - a.since);
            return Ok(());
        }
        if let Some(pid) = a.pid
            && !alive(pid)
        {
            bail!(
                "the mount process {pid} exited before {} was mounted",
                path.display()
            );
        }
        if t0.elapsed().as_secs_f64() > a.timeout {
            bail!("{} not mounted after {} s", path.display(), a.timeout);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_medians() {
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("8MiB").unwrap(), 8 * MIB);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("8 parsecs").is_err());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn etags_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(
            file_etag(&path, None).unwrap(),
            "781e5e245d69b566979b86e28d23f2c7"
        );
        // Parts "0123", "4567", "89": the MD5 of their MD5s, then the count.
        assert_eq!(
            file_etag(&path, Some(4)).unwrap(),
            "61e3716e3a7767581863b67c4e785584-3"
        );
    }

    #[test]
    fn data_set_shape() {
        let a = PutDataArgs::defaults_for_test();
        let (large, small) = data_set(&a);
        assert_eq!(
            large.iter().map(|o| o.size).sum::<u64>(),
            2 * GIB + 100 * MIB
        );
        assert_eq!(small.len(), 20_000);
    }

    impl PutDataArgs {
        fn defaults_for_test() -> Self {
            PutDataArgs {
                s3: S3Args {
                    bucket: "b".into(),
                    endpoint_url: "http://127.0.0.1:1".into(),
                },
                parallel: 1,
                flat_objects: 10_000,
                tree_dirs: 100,
                small_size: 1024,
                bucket_only: false,
            }
        }
    }
}
