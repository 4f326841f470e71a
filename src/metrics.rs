//! Process-wide counters for `/metrics` (Prometheus text format) and the unmount summary.
//!
//! One daemon serves one mount, so the counters are global statics: the read path and the
//! FUSE adapter bump relaxed atomics (no lock, no allocation, no map lookup), and a scrape
//! reads them. Labels come from fixed sets (operation names, known errno and HTTP status
//! values), never from paths, keys or anything a user or S3 controls, so the number of
//! series is bounded and no secret can reach a label.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use crate::auth::refresh::Refresher;
use crate::cache::BlockCache;

/// A monotonically increasing count.
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

/// Upper bounds (seconds) of the latency buckets: 100 µs (a cached FUSE answer) to 10 s
/// (a slow S3 request).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BUCKET_NANOS: [u64; 16] = {
    let mut out = [0u64; 16];
    let micros = [
        100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000,
    ];
    let mut i = 0;
    while i < 16 {
        out[i] = micros[i] * 1_000;
        i += 1;
    }
    out
};

/// A latency histogram: one count per bucket (not cumulative; summed at scrape) plus +Inf,
/// and the sum of observations in nanoseconds.
pub struct Histogram {
    buckets: [AtomicU64; 17],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; 17],
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.partition_point(|&b| b < nanos);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Cumulative counts for each bound and +Inf (the last is the total count), and the sum
    /// in seconds.
    fn snapshot(&self) -> ([u64; 17], f64) {
        let mut out = [0u64; 17];
        let mut total = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Relaxed);
            *o = total;
        }
        (out, self.sum_nanos.load(Relaxed) as f64 / 1e9)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// FUSE operations, as labels. Every write-like operation is answered EROFS and counted as
/// `write`; getxattr/listxattr as `xattr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Open,
    Read,
    Flush,
    Release,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Statfs,
    Xattr,
    Write,
    Create,
    Mkdir,
    Fsync,
    Setattr,
}

impl FuseOp {
    pub const ALL: [FuseOp; N_FUSE_OPS] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Flush,
        FuseOp::Release,
        FuseOp::Opendir,
        FuseOp::Readdir,
        FuseOp::Readdirplus,
        FuseOp::Releasedir,
        FuseOp::Statfs,
        FuseOp::Xattr,
        FuseOp::Write,
        FuseOp::Create,
        FuseOp::Mkdir,
        FuseOp::Fsync,
        FuseOp::Setattr,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Flush => "flush",
            FuseOp::Release => "release",
            FuseOp::Opendir => "opendir",
            FuseOp::Readdir => "readdir",
            FuseOp::Readdirplus => "readdirplus",
            FuseOp::Releasedir => "releasedir",
            FuseOp::Statfs => "statfs",
            FuseOp::Xattr => "xattr",
            FuseOp::Write => "write",
            FuseOp::Create => "create",
            FuseOp::Mkdir => "mkdir",
            FuseOp::Fsync => "fsync",
            FuseOp::Setattr => "setattr",
        }
    }
}

const N_FUSE_OPS: usize = 17;

/// The errno values a FUSE reply is counted under; anything else is `other`.
const ERRNOS: [(i32, &str); N_ERRNOS] = [
    (libc::ENOENT, "ENOENT"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::EROFS, "EROFS"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::EACCES, "EACCES"),
    (libc::EIO, "EIO"),
    (libc::EBADF, "EBADF"),
    (libc::EEXIST, "EEXIST"),
    (libc::EPERM, "EPERM"),
    (libc::ENOSPC, "ENOSPC"),
    (libc::EFBIG, "EFBIG"),
    (0, "other"),
];
const N_ERRNOS: usize = 13;
/// Errnos that are ordinary answers (a missing name, a refused write), not failures.
const EXPECTED_ERRNOS: [i32; 8] = [
    libc::ENOENT,
    // A name that exists, a change the flags do not allow (the log says which flag).
    libc::EEXIST,
    libc::EPERM,
    libc::ENOTDIR,
    libc::EISDIR,
    libc::EROFS,
    libc::ENOSYS,
    // A file replaced while open: the kernel looks the name up again (docs/semantics.md).
    libc::ESTALE,
];

fn errno_index(errno: i32) -> usize {
    ERRNOS
        .iter()
        .position(|(e, _)| *e == errno)
        .unwrap_or(ERRNOS.len() - 1)
}

/// Whether a FUSE error reply is a failure (I/O, access) rather than an ordinary answer.
pub fn is_failure(errno: i32) -> bool {
    !EXPECTED_ERRNOS.contains(&errno)
}

pub struct FuseMetrics {
    latency: [Histogram; N_FUSE_OPS],
    errors: [[Counter; N_ERRNOS]; N_FUSE_OPS],
    /// Bytes returned by successful reads.
    pub bytes_served: Counter,
}

impl FuseMetrics {
    const fn new() -> Self {
        FuseMetrics {
            latency: [const { Histogram::new() }; N_FUSE_OPS],
            errors: [const { [const { Counter::new() }; N_ERRNOS] }; N_FUSE_OPS],
            bytes_served: Counter::new(),
        }
    }

    /// Records one answered request; `errno` 0 for success.
    pub fn record(&self, op: FuseOp, elapsed: Duration, errno: i32) {
        let i = op as usize;
        self.latency[i].observe(elapsed);
        if errno != 0 {
            self.errors[i][errno_index(errno)].inc();
        }
    }

    pub fn requests(&self) -> u64 {
        self.latency.iter().map(Histogram::count).sum()
    }

    pub fn requests_of(&self, op: FuseOp) -> u64 {
        self.latency[op as usize].count()
    }

    /// Error replies that were failures (not ENOENT, EROFS and the like).
    pub fn failures(&self) -> u64 {
        self.errors
            .iter()
            .flat_map(|per_op| {
                per_op
                    .iter()
                    .zip(ERRNOS)
                    .filter(|(_, (e, _))| *e == 0 || is_failure(*e))
                    .map(|(c, _)| c.get())
            })
            .sum()
    }
}

/// S3 operations, as the SDK names them.
const S3_OPS: [&str; N_OPS] = [
    "ListObjectsV2",
    "HeadObject",
    "GetObject",
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "other",
];
const N_OPS: usize = 9;
/// HTTP statuses an S3 request is counted under; `other` for the rest, `none` when no
/// response came (connection failure, timeout, no credentials).
const S3_STATUSES: [u16; 15] = [
    200, 206, 304, 400, 403, 404, 409, 412, 416, 429, 500, 501, 502, 503, 504,
];
const S3_STATUS_OTHER: usize = S3_STATUSES.len();
const S3_STATUS_NONE: usize = S3_STATUSES.len() + 1;

pub struct S3Metrics {
    requests: [[Counter; 17]; N_OPS],
    latency: [Histogram; N_OPS],
    /// Attempts beyond the first of one SDK operation (the SDK's own retries).
    pub retries: [Counter; N_OPS],
    /// Response body bytes received.
    pub bytes_read: Counter,
}

impl S3Metrics {
    const fn new() -> Self {
        S3Metrics {
            requests: [const { [const { Counter::new() }; 17] }; N_OPS],
            latency: [const { Histogram::new() }; N_OPS],
            retries: [const { Counter::new() }; N_OPS],
            bytes_read: Counter::new(),
        }
    }

    pub fn op_index(name: &str) -> usize {
        S3_OPS
            .iter()
            .position(|o| *o == name)
            .unwrap_or(S3_OPS.len() - 1)
    }

    /// Records one HTTP attempt of operation `op` (from [`S3Metrics::op_index`]): its status
    /// (`None`: no response) and the time to the response's headers.
    pub fn record_attempt(&self, op: usize, status: Option<u16>, elapsed: Duration) {
        let op = op.min(S3_OPS.len() - 1);
        let s = match status {
            None => S3_STATUS_NONE,
            Some(code) => S3_STATUSES
                .iter()
                .position(|c| *c == code)
                .unwrap_or(S3_STATUS_OTHER),
        };
        self.requests[op][s].inc();
        self.latency[op].observe(elapsed);
    }

    pub fn requests(&self) -> u64 {
        self.latency.iter().map(Histogram::count).sum()
    }

    pub fn requests_of(&self, op: &str) -> u64 {
        self.latency[Self::op_index(op)].count()
    }
}

/// The read path's own counters (beyond the cache's).
pub struct ReadMetrics {
    /// Bytes claimed for prefetch (fetched ahead of a sequential reader).
    pub prefetch_bytes: Counter,
    /// Ranged GETs started again after a transient failure (resuming after the last
    /// complete block), on top of the SDK's attempts.
    pub ranged_get_retries: Counter,
}

/// The write path's counters.
pub struct WriteMetrics {
    /// Uploads begun (one PutObject, or one multipart upload).
    pub started: Counter,
    pub completed: Counter,
    /// Uploads that failed or were aborted: nothing appeared under the name.
    pub failed: Counter,
    /// Bytes sent in puts and parts that S3 accepted.
    pub bytes: Counter,
}

pub static WRITES: WriteMetrics = WriteMetrics {
    started: Counter::new(),
    completed: Counter::new(),
    failed: Counter::new(),
    bytes: Counter::new(),
};

pub static FUSE: FuseMetrics = FuseMetrics::new();
pub static S3: S3Metrics = S3Metrics::new();
pub static READ: ReadMetrics = ReadMetrics {
    prefetch_bytes: Counter::new(),
    ranged_get_retries: Counter::new(),
};

/// The parts of a running mount that a scrape reads besides the counters.
#[derive(Default)]
pub struct Sources<'a> {
    pub cache: Option<&'a BlockCache>,
    /// Web-identity credentials (absent with the AWS chain).
    pub refresher: Option<&'a Refresher>,
    pub uptime: Duration,
    pub mounted: bool,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (cumulative, sum) = h.snapshot();
    for (bound, n) in LATENCY_BUCKETS.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
        cumulative[16]
    );
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", cumulative[16]);
}

/// The Prometheus text exposition (format 0.0.4) of every metric.
pub fn render(src: &Sources) -> String {
    let mut out = String::with_capacity(32 << 10);
    let o = &mut out;

    header(o, "s3om_up", "gauge", "1 while the FUSE mount is attached.");
    let _ = writeln!(o, "s3om_up {}", u8::from(src.mounted));
    header(
        o,
        "s3om_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    let _ = writeln!(o, "s3om_uptime_seconds {}", src.uptime.as_secs_f64());

    header(
        o,
        "s3om_fuse_request_duration_seconds",
        "histogram",
        "FUSE requests by operation: time from the kernel's request to our reply.",
    );
    for op in FuseOp::ALL {
        histogram(
            o,
            "s3om_fuse_request_duration_seconds",
            &format!("op=\"{}\"", op.label()),
            &FUSE.latency[op as usize],
        );
    }
    header(
        o,
        "s3om_fuse_errors_total",
        "counter",
        "FUSE requests answered with an error, by operation and errno.",
    );
    for op in FuseOp::ALL {
        for (c, (_, name)) in FUSE.errors[op as usize].iter().zip(ERRNOS) {
            let n = c.get();
            if n > 0 {
                let _ = writeln!(
                    o,
                    "s3om_fuse_errors_total{{op=\"{}\",errno=\"{name}\"}} {n}",
                    op.label()
                );
            }
        }
    }
    header(
        o,
        "s3om_fuse_read_bytes_total",
        "counter",
        "Bytes served to applications by successful reads.",
    );
    let _ = writeln!(o, "s3om_fuse_read_bytes_total {}", FUSE.bytes_served.get());

    header(
        o,
        "s3om_s3_requests_total",
        "counter",
        "S3 HTTP requests (every attempt) by operation and status; status=\"none\": no response (network, timeout, credentials).",
    );
    for (i, op) in S3_OPS.iter().enumerate() {
        for (s, c) in S3.requests[i].iter().enumerate() {
            let n = c.get();
            if n == 0 {
                continue;
            }
            let status = match s {
                S3_STATUS_OTHER => "other".to_string(),
                S3_STATUS_NONE => "none".to_string(),
                _ => S3_STATUSES[s].to_string(),
            };
            let _ = writeln!(
                o,
                "s3om_s3_requests_total{{op=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
    }
    header(
        o,
        "s3om_s3_request_duration_seconds",
        "histogram",
        "S3 HTTP requests by operation: time to the response headers (bodies stream after).",
    );
    for (i, op) in S3_OPS.iter().enumerate() {
        histogram(
            o,
            "s3om_s3_request_duration_seconds",
            &format!("op=\"{op}\""),
            &S3.latency[i],
        );
    }
    header(
        o,
        "s3om_s3_read_bytes_total",
        "counter",
        "Bytes of object data received from S3.",
    );
    let _ = writeln!(o, "s3om_s3_read_bytes_total {}", S3.bytes_read.get());
    header(
        o,
        "s3om_retries_total",
        "counter",
        "Retries: kind=\"s3_attempt\" (the SDK's attempts after the first, by operation), kind=\"ranged_get\" (a read resuming after a failed GET).",
    );
    for (i, op) in S3_OPS.iter().enumerate() {
        let _ = writeln!(
            o,
            "s3om_retries_total{{kind=\"s3_attempt\",op=\"{op}\"}} {}",
            S3.retries[i].get()
        );
    }
    let _ = writeln!(
        o,
        "s3om_retries_total{{kind=\"ranged_get\",op=\"GetObject\"}} {}",
        READ.ranged_get_retries.get()
    );
    header(
        o,
        "s3om_prefetch_bytes_total",
        "counter",
        "Bytes fetched ahead of sequential readers.",
    );
    let _ = writeln!(o, "s3om_prefetch_bytes_total {}", READ.prefetch_bytes.get());
    header(
        o,
        "s3om_uploads_total",
        "counter",
        "Uploads of files written through the mount, by outcome (started, completed, failed).",
    );
    for (outcome, c) in [
        ("started", &WRITES.started),
        ("completed", &WRITES.completed),
        ("failed", &WRITES.failed),
    ] {
        let _ = writeln!(o, "s3om_uploads_total{{outcome=\"{outcome}\"}} {}", c.get());
    }
    header(
        o,
        "s3om_upload_bytes_total",
        "counter",
        "Bytes of files written through the mount that S3 accepted.",
    );
    let _ = writeln!(o, "s3om_upload_bytes_total {}", WRITES.bytes.get());

    if let Some(c) = src.cache {
        let s = &c.stats;
        let counters = [
            (
                "s3om_cache_hits_total",
                "Blocks read from the cache.",
                s.hits.load(Relaxed),
            ),
            (
                "s3om_cache_misses_total",
                "Blocks a read had to fetch from S3.",
                s.misses.load(Relaxed),
            ),
            (
                "s3om_cache_inflight_hits_total",
                "Blocks a read found already being fetched (by prefetch or another reader) and waited for.",
                s.waits.load(Relaxed),
            ),
            (
                "s3om_cache_evictions_total",
                "Blocks evicted to stay within the budget.",
                s.evictions.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            header(o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        header(
            o,
            "s3om_cache_bytes",
            "gauge",
            "Bytes held by cached blocks.",
        );
        let _ = writeln!(o, "s3om_cache_bytes {}", c.bytes());
        header(
            o,
            "s3om_write_buffer_bytes",
            "gauge",
            "Bytes of the budget held by files being written (streamed parts, staged files).",
        );
        let _ = writeln!(o, "s3om_write_buffer_bytes {}", c.held());
        header(
            o,
            "s3om_cache_capacity_bytes",
            "gauge",
            "The cache and prefetch budget.",
        );
        let _ = writeln!(o, "s3om_cache_capacity_bytes {}", c.capacity());
    }

    if let Some(r) = src.refresher {
        let expiry = r
            .current()
            .and_then(|s| s.expiry.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        header(
            o,
            "s3om_credentials_expiry_timestamp_seconds",
            "gauge",
            "When the current AWS credentials expire (unix time).",
        );
        let _ = writeln!(o, "s3om_credentials_expiry_timestamp_seconds {expiry}");
        header(
            o,
            "s3om_credentials_refreshes_total",
            "counter",
            "Credentials obtained from STS (the first exchange included).",
        );
        let _ = writeln!(
            o,
            "s3om_credentials_refreshes_total {}",
            r.stats().renewals.load(Relaxed)
        );
        header(
            o,
            "s3om_credentials_refresh_failures_total",
            "counter",
            "Failed attempts to obtain credentials (identity token or STS).",
        );
        let _ = writeln!(
            o,
            "s3om_credentials_refresh_failures_total {}",
            r.stats().failures.load(Relaxed)
        );
    }
    out
}

/// The figures of the unmount summary line.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub bytes_served: u64,
    pub bytes_fetched: u64,
    pub s3_requests: u64,
    /// Share of blocks read that needed no GET of their own (cached, or already on the way).
    pub cache_hit_ratio: f64,
    pub errors: u64,
    pub uptime: Duration,
}

pub fn summary(cache: Option<&BlockCache>, uptime: Duration) -> Summary {
    let (hits, waits, misses) = cache.map_or((0, 0, 0), |c| {
        (
            c.stats.hits.load(Relaxed),
            c.stats.waits.load(Relaxed),
            c.stats.misses.load(Relaxed),
        )
    });
    let total = hits + waits + misses;
    Summary {
        requests: FUSE.requests(),
        bytes_served: FUSE.bytes_served.get(),
        bytes_fetched: S3.bytes_read.get(),
        s3_requests: S3.requests(),
        cache_hit_ratio: if total == 0 {
            0.0
        } else {
            (hits + waits) as f64 / total as f64
        },
        errors: FUSE.failures(),
        uptime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(50)); // first bucket
        h.observe(Duration::from_micros(100)); // on the bound: still the first
        h.observe(Duration::from_millis(3)); // le=0.005
        h.observe(Duration::from_secs(60)); // +Inf only
        let (c, sum) = h.snapshot();
        assert_eq!(c[0], 2);
        assert_eq!(c[4], 2, "le=0.0025");
        assert_eq!(c[5], 3, "le=0.005");
        assert_eq!(c[15], 3, "le=10");
        assert_eq!(c[16], 4, "+Inf");
        assert!((sum - 60.00315).abs() < 1e-9, "{sum}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn errno_labels_and_failures() {
        let f = FuseMetrics::new();
        f.record(FuseOp::Lookup, Duration::from_micros(10), libc::ENOENT);
        f.record(FuseOp::Read, Duration::from_micros(10), libc::EIO);
        f.record(FuseOp::Read, Duration::from_micros(10), libc::EACCES);
        f.record(FuseOp::Read, Duration::from_micros(10), libc::E2BIG);
        f.record(FuseOp::Read, Duration::from_micros(10), 0);
        assert_eq!(f.requests(), 5);
        assert_eq!(f.requests_of(FuseOp::Read), 4);
        assert_eq!(f.failures(), 3, "EIO, EACCES and an unlisted errno");
        assert_eq!(
            f.errors[FuseOp::Read as usize][errno_index(libc::E2BIG)].get(),
            1
        );
        assert_eq!(ERRNOS[errno_index(libc::E2BIG)].1, "other");
    }

    #[test]
    fn s3_statuses_map_to_fixed_labels() {
        let s = S3Metrics::new();
        let get = S3Metrics::op_index("GetObject");
        s.record_attempt(get, Some(206), Duration::from_millis(1));
        s.record_attempt(get, Some(418), Duration::from_millis(1));
        s.record_attempt(S3Metrics::op_index("PutObject"), None, Duration::ZERO);
        assert_eq!(s.requests(), 3);
        assert_eq!(s.requests_of("GetObject"), 2);
        assert_eq!(s.requests[get][1].get(), 1, "206");
        assert_eq!(s.requests[get][S3_STATUS_OTHER].get(), 1, "418");
        assert_eq!(
            s.requests[3][S3_STATUS_NONE].get(),
            1,
            "unknown op, no response"
        );
    }

    /// Every line of the exposition is a comment or `name{labels} value` with a float value,
    /// names are valid, and each histogram's buckets rise to its count.
    #[test]
    fn exposition_is_well_formed() {
        FUSE.record(FuseOp::Read, Duration::from_millis(2), 0);
        FUSE.record(FuseOp::Read, Duration::from_millis(2), libc::EIO);
        S3.record_attempt(
            S3Metrics::op_index("GetObject"),
            Some(206),
            Duration::from_millis(4),
        );
        let cache = BlockCache::new(1 << 20);
        let text = render(&Sources {
            cache: Some(&cache),
            refresher: None,
            uptime: Duration::from_secs(3),
            mounted: true,
        });
        let mut types = std::collections::HashMap::new();
        let mut last_bucket: Option<(String, u64)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "{line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE for {line}");
            if let Some(labels) = series.strip_prefix(name)
                && !labels.is_empty()
            {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
            if name.ends_with("_bucket") {
                let key = series.split(",le=").next().unwrap().to_string();
                if let Some((k, prev)) = &last_bucket
                    && *k == key
                {
                    assert!(v as u64 >= *prev, "buckets must not decrease: {line}");
                }
                last_bucket = Some((key, v as u64));
            }
        }
        assert!(text.contains("s3om_fuse_errors_total{op=\"read\",errno=\"EIO\"}"));
        assert!(text.contains("s3om_s3_requests_total{op=\"GetObject\",status=\"206\"}"));
        assert!(text.contains("s3om_cache_bytes 0"));
        assert!(text.contains("s3om_up 1"));
        assert!(
            !text.contains("s3om_credentials_expiry"),
            "no credential metrics without a refresher"
        );
    }

    #[test]
    fn summary_ratio() {
        let cache = BlockCache::new(1 << 20);
        cache.stats.hits.store(3, Relaxed);
        cache.stats.waits.store(1, Relaxed);
        cache.stats.misses.store(4, Relaxed);
        let s = summary(Some(&cache), Duration::from_secs(2));
        assert!((s.cache_hit_ratio - 0.5).abs() < 1e-9);
        assert_eq!(summary(None, Duration::ZERO).cache_hit_ratio, 0.0);
    }
}
