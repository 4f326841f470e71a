//! Operations against real parts: the real binary mounted on a real RGW, its HTTP endpoints
//! scraped over real TCP while files are read, its JSON log parsed line by line, its summary
//! at unmount, and /readyz following the credentials' validity (keyless, through RGW's STS).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::common::fed::{World, assert_no_secret, keyless, refs, secrets, strings};
use crate::common::*;
use serde_json::Value;

// ---- HTTP and the exposition format ----

/// `GET path` over a new connection: the status and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|l| l.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(len, body.len(), "Content-Length of {path}");
    (status, body.to_string())
}

/// One sample of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed and checked: every line is a comment or a sample, every sample's
/// family has a TYPE, and every histogram's buckets rise to its count.
struct Scrape {
    samples: Vec<Sample>,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, r) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label in {s}"));
        let mut v = String::new();
        let mut chars = r.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        v.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => v.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {s}"));
        out.insert(k.to_string(), v);
        rest = r[end + 1..].trim_start_matches(',');
    }
    out
}

fn parse(text: &str) -> Scrape {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.into(), kind.into());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("closing brace"))),
            None => (series, BTreeMap::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name: {line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE before {line}");
        samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    let scrape = Scrape { samples };
    // Histograms: buckets never decrease, and +Inf is the count.
    for s in scrape.samples.iter().filter(|s| s.name.ends_with("_count")) {
        let family = s.name.trim_end_matches("_count");
        let mut buckets: Vec<(f64, f64)> = scrape
            .samples
            .iter()
            .filter(|b| {
                b.name == format!("{family}_bucket") && {
                    let mut l = b.labels.clone();
                    l.remove("le");
                    l == s.labels
                }
            })
            .map(|b| {
                let le = &b.labels["le"];
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                (bound, b.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            !buckets.is_empty(),
            "no buckets for {family} {:?}",
            s.labels
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family}: {buckets:?}"
        );
        assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
        assert_eq!(
            buckets.last().map(|b| b.1),
            Some(s.value),
            "{family} +Inf vs count"
        );
    }
    scrape
}

impl Scrape {
    /// Sum of the samples called `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

fn scrape(addr: &str) -> Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// The first 200 answer of `path` within 10 s, else the last answer: the kernel shows the
/// mount a moment before the daemon has finished attaching it.
fn wait_for(addr: &str, path: &str) -> (u16, String) {
    let mut last = (0, String::new());
    poll(Duration::from_secs(10), || {
        last = http_get(addr, path);
        last.0 == 200
    });
    last
}

/// The address of the daemon's HTTP endpoints, from its log (text or JSON).
fn http_addr(m: &Mount) -> String {
    let mut addr = None;
    let found = poll(Duration::from_secs(10), || {
        addr = m
            .log_text()
            .lines()
            .find(|l| l.contains("HTTP endpoints listening"))
            .and_then(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => v["addr"].as_str().map(str::to_string),
                Err(_) => l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(str::to_string),
            });
        addr.is_some()
    });
    assert!(
        found,
        "no 'HTTP endpoints listening' line:\n{}",
        m.log_text()
    );
    addr.unwrap()
}

/// The JSON log, every line parsed; each must carry Cloud Logging's fields.
fn json_log(m: &Mount) -> Vec<Value> {
    m.log_text()
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(
                ["DEBUG", "INFO", "WARNING", "ERROR"]
                    .contains(&v["severity"].as_str().unwrap_or("")),
                "severity: {l}"
            );
            assert!(v["message"].is_string(), "message: {l}");
            let t = v["time"].as_str().unwrap_or("");
            assert!(
                t.len() == 24 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
                "time: {l}"
            );
            assert!(
                v["timestamp"]["seconds"].as_u64().is_some(),
                "timestamp: {l}"
            );
            assert!(v["timestamp"]["nanos"].as_u64().is_some(), "timestamp: {l}");
            v
        })
        .collect()
}

// ---- tests ----

#[test]
fn metrics_health_json_log_and_summary_follow_real_reads() {
    need_rgw!();
    let bucket = unique_bucket("ops-metrics");
    create_bucket(&bucket);
    let small = random_bytes(1000, 1);
    let big = random_bytes((3 << 20) + 123, 2);
    put(&bucket, "small.txt", small.clone());
    put(&bucket, "dir/big.bin", big.clone());
    put(&bucket, "gone.bin", random_bytes(200 << 10, 3));
    let mut m = mount(
        &format!("s3://{bucket}"),
        &["--http-addr", "127.0.0.1:0", "--log-format", "json"],
    );
    let addr = http_addr(&m);

    let (code, body) = wait_for(&addr, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("credentials from the AWS chain"), "{body}");
    let (code, _) = http_get(&addr, "/nope");
    assert_eq!(code, 404);

    let before = scrape(&addr);
    assert_eq!(before.get("s3om_up", &[]), 1.0);

    // Read two files whole (checked byte for byte), probe a missing name, and read an
    // object deleted after it was opened (EIO).
    assert_eq!(sha256_file(&m.p("small.txt")), sha256(&small));
    assert_eq!(sha256_file(&m.p("dir/big.bin")), sha256(&big));
    let read_by_test = (small.len() + big.len()) as f64;
    assert_eq!(
        std::fs::metadata(m.p("no-such-file")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    let gone = std::fs::File::open(m.p("gone.bin")).expect("open gone.bin");
    delete(&bucket, "gone.bin");
    let mut buf = vec![0u8; 4096];
    let err = gone
        .read_at(&mut buf, 0)
        .expect_err("read of a deleted object");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(gone);

    let after = scrape(&addr);
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let served = delta("s3om_fuse_read_bytes_total", &[]);
    let fetched = delta("s3om_s3_read_bytes_total", &[]);
    assert!(
        served >= read_by_test,
        "served {served} < read {read_by_test}"
    );
    assert!(
        fetched >= read_by_test,
        "fetched {fetched} < read {read_by_test}"
    );
    // Each block is fetched once (single flight, nothing evicted): no more than the files.
    assert!(
        fetched <= read_by_test + (200 << 10) as f64,
        "fetched {fetched} bytes for {read_by_test} read"
    );
    let gets_ok = delta(
        "s3om_s3_requests_total",
        &[("op", "GetObject"), ("status", "206")],
    ) + delta(
        "s3om_s3_requests_total",
        &[("op", "GetObject"), ("status", "200")],
    );
    assert!(gets_ok > 0.0, "no successful GetObject counted");
    assert!(
        delta(
            "s3om_s3_requests_total",
            &[("op", "GetObject"), ("status", "404")]
        ) >= 1.0,
        "the GET of the deleted object is not counted as 404"
    );
    assert!(
        delta(
            "s3om_s3_request_duration_seconds_count",
            &[("op", "GetObject")]
        ) >= gets_ok
    );
    assert!(
        delta(
            "s3om_fuse_request_duration_seconds_count",
            &[("op", "read")]
        ) > 0.0
    );
    assert!(
        delta(
            "s3om_fuse_request_duration_seconds_count",
            &[("op", "lookup")]
        ) > 0.0
    );
    assert!(
        delta(
            "s3om_fuse_errors_total",
            &[("op", "lookup"), ("errno", "ENOENT")]
        ) >= 1.0
    );
    assert!(
        delta(
            "s3om_fuse_errors_total",
            &[("op", "read"), ("errno", "EIO")]
        ) >= 1.0
    );
    assert!(delta("s3om_cache_misses_total", &[]) > 0.0);
    assert!(after.get("s3om_cache_bytes", &[]) > 0.0);
    assert!(
        delta("s3om_prefetch_bytes_total", &[]) > 0.0,
        "3 MiB read sequentially, nothing prefetched"
    );
    assert_eq!(after.get("s3om_up", &[]), 1.0);
    assert_eq!(
        after.get("s3om_credentials_expiry_timestamp_seconds", &[]),
        0.0,
        "no web-identity credentials in this mount"
    );

    assert_eq!(m.stop().code(), Some(0), "{}", m.log_text());
    let log = json_log(&m);
    // The failed read, logged once with its path, operation and errno.
    let failed: Vec<&Value> = log
        .iter()
        .filter(|l| l["message"] == "request failed" && l["op"] == "read")
        .collect();
    assert!(!failed.is_empty(), "{}", m.log_text());
    for f in &failed {
        assert_eq!(f["path"], "/gone.bin", "{f}");
        assert_eq!(f["errno"], libc::EIO, "{f}");
    }
    assert_eq!(failed[0]["severity"], "WARNING");
    // The missing name: an ordinary answer, not a warning.
    assert!(
        !log.iter()
            .any(|l| l["severity"] == "WARNING" && l["path"] == "/no-such-file")
    );
    // One summary at unmount, with what was done.
    let summary: Vec<&Value> = log.iter().filter(|l| l["message"] == "summary").collect();
    assert_eq!(summary.len(), 1, "{}", m.log_text());
    let s = summary[0];
    assert_eq!(s["severity"], "INFO");
    assert!(s["requests"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    assert!(
        s["bytes_served"].as_f64().unwrap_or(0.0) >= read_by_test,
        "{s}"
    );
    assert!(
        s["bytes_fetched"].as_f64().unwrap_or(0.0) >= read_by_test,
        "{s}"
    );
    assert!(s["s3_requests"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    assert!(s["errors"].as_f64().unwrap_or(0.0) >= 1.0, "{s}");
    let ratio = s["cache_hit_ratio"].as_f64().expect("cache_hit_ratio");
    assert!((0.0..=1.0).contains(&ratio), "{s}");
    assert!(s["uptime_s"].is_u64(), "{s}");
    let last = log.last().expect("log lines");
    assert_eq!(last["message"], "summary", "the summary is the last line");
}

#[test]
fn http_port_in_use_fails_before_mounting() {
    need_rgw!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mut args = strings(&["mount", "s3://ops-port-bucket", mp.to_str().unwrap()]);
    args.extend(common_args());
    args.extend(strings(&["--http-addr", &addr]));
    let (st, err) = run_bin(&refs(&args), Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "{err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("s3-oidc-mount: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(&format!("cannot listen on {addr}"))
            && errors[0].contains("pick another"),
        "{err}"
    );
    // Refused before anything else: no credentials or listing were tried.
    assert!(!err.contains("credentials mode"), "{err}");
    assert!(!s3_oidc_mount::mount::is_mount_point(&mp));
}

#[test]
fn readyz_follows_the_credentials_validity() {
    need_rgw!();
    let w = World::new("ops-ready", vec![("f.txt", b"ready?\n".to_vec())]);
    // The daemon is told its credentials last 30 s; it renews them 20 s before expiry (the
    // least margin), so while STS answers they stay valid for more than 15 s.
    w.proxy.set_expiry_override(Some(Duration::from_secs(30)));
    let mut args = w.gcp_args();
    args.extend(strings(&[
        "--http-addr",
        "127.0.0.1:0",
        "--ready-min-validity",
        "15s",
        "--refresh-margin",
        "20s",
    ]));
    let mut m = mount_with(&w.source(), &refs(&args), &keyless(&w.idp.host_port()));
    let addr = http_addr(&m);
    let (code, body) = wait_for(&addr, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("credentials valid for"), "{body}");
    let expiry_gauge = |s: &Scrape| s.get("s3om_credentials_expiry_timestamp_seconds", &[]);
    let first = scrape(&addr);
    assert!(first.get("s3om_credentials_refreshes_total", &[]) >= 1.0);
    let issued = w.proxy.issued();
    let told = issued.last().expect("issued").expiry_sent;
    let told_secs = told.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
    assert!(
        (expiry_gauge(&first) - told_secs).abs() <= 1.0,
        "expiry gauge vs {told_secs}"
    );

    // STS fails from now on: renewals fail, validity runs down, /readyz turns 503 while
    // /healthz stays 200 (the mount itself is fine).
    w.proxy.set_fail(Some(503));
    let t0 = Instant::now();
    let mut last = (0, String::new());
    let flipped = poll(Duration::from_secs(45), || {
        last = http_get(&addr, "/readyz");
        last.0 == 503
    });
    assert!(
        flipped,
        "/readyz still {last:?} {:?} after STS failed; log:\n{}",
        t0.elapsed(),
        m.log_text()
    );
    assert!(
        last.1.contains("credentials valid for") && last.1.contains("less than 15 s"),
        "{}",
        last.1
    );
    eprintln!(
        "/readyz 503 {:?} after STS began failing: {}",
        t0.elapsed(),
        last.1.trim()
    );
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let failing = scrape(&addr);
    assert!(failing.get("s3om_credentials_refresh_failures_total", &[]) >= 1.0);
    let last_told = w.proxy.issued().last().unwrap().expiry_sent;
    let left = last_told
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left < Duration::from_secs(16),
        "503 with {left:?} of validity left"
    );

    // STS answers again: a renewal brings /readyz back.
    w.proxy.set_fail(None);
    let t1 = Instant::now();
    let back = poll(Duration::from_secs(60), || {
        http_get(&addr, "/readyz").0 == 200
    });
    assert!(back, "/readyz did not recover; log:\n{}", m.log_text());
    eprintln!("/readyz 200 again {:?} after STS came back", t1.elapsed());
    let recovered = scrape(&addr);
    assert!(
        recovered.get("s3om_credentials_refreshes_total", &[])
            > first.get("s3om_credentials_refreshes_total", &[])
    );
    assert!(expiry_gauge(&recovered) > expiry_gauge(&first));
    assert_eq!(std::fs::read(m.p("f.txt")).expect("read"), b"ready?\n");

    let sec = secrets(&w.idp.tokens_served(), &w.proxy);
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_no_secret(path, http_get(&addr, path).1.as_bytes(), &sec);
    }
    assert_eq!(m.stop().code(), Some(0), "{}", m.log_text());
    assert_no_secret("the log", m.log_text().as_bytes(), &sec);
}

#[test]
fn run_serves_the_endpoints_while_the_app_runs() {
    need_rgw!();
    let bucket = unique_bucket("ops-run");
    create_bucket(&bucket);
    put(&bucket, "x.txt", b"for the app\n".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let done = dir.path().join("done");
    let log = dir.path().join("stderr");
    let mut args = strings(&["run", "--http-addr", "127.0.0.1:0"]);
    args.extend(common_args());
    args.push(format!("s3://{bucket}"));
    args.push(mnt.display().to_string());
    // The app reads a file, then waits until the test has seen the endpoints.
    let script = format!(
        "cat {}/x.txt >/dev/null && while [ ! -e {} ]; do sleep 0.1; done",
        mnt.display(),
        done.display()
    );
    args.extend(strings(&["--", "sh", "-c", &script]));
    let mut child = std::process::Command::new(BIN)
        .args(&args)
        .env("S3_OIDC_MOUNT_LOG_LEVEL", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn run");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut addr = None;
    assert!(
        poll(Duration::from_secs(30), || {
            addr = text()
                .lines()
                .find(|l| l.contains("HTTP endpoints listening"))
                .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
                .map(str::to_string);
            addr.is_some()
        }),
        "{}",
        text()
    );
    let addr = addr.unwrap();
    assert!(
        poll(Duration::from_secs(30), || http_get(&addr, "/healthz").0
            == 200),
        "{}",
        text()
    );
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    // The app starts once the mount answers: its read may come a moment after /healthz.
    assert!(
        poll(Duration::from_secs(30), || scrape(&addr)
            .get("s3om_fuse_read_bytes_total", &[])
            >= 12.0),
        "the app's read"
    );
    std::fs::write(&done, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "run did not end: {}", text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", text());
    let summary: Vec<String> = text()
        .lines()
        .filter(|l| l.contains(" summary "))
        .map(str::to_string)
        .collect();
    assert_eq!(summary.len(), 1, "{}", text());
    assert!(
        summary[0].contains(" INFO ") && summary[0].contains("bytes_served="),
        "{}",
        summary[0]
    );
    assert!(!s3_oidc_mount::mount::is_mount_point(&mnt));
}
