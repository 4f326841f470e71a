//! The refresher against fakes of its token source and exchanger, on paused tokio time with a
//! wall clock that moves with it (and can jump ahead, as it does when a throttled CPU starves
//! the renewal timer). Times are exact: paused time moves from one timer to the next.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::time::UNIX_EPOCH;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use super::*;
use crate::auth::token::{TokenError, TokenFile};

const LIFETIME: Duration = Duration::from_secs(3600);
const MARGIN: Duration = Duration::from_secs(300);
/// Wall time (unix seconds) when a test's clock starts.
const WALL0: u64 = 1_700_000_000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn at(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

/// Wall time that moves with tokio's paused clock, plus jumps.
struct FakeClock {
    start: Instant,
    jumped: Mutex<Duration>,
}

impl FakeClock {
    fn new() -> Arc<Self> {
        Arc::new(FakeClock {
            start: Instant::now(),
            jumped: Mutex::new(Duration::ZERO),
        })
    }

    /// Moves wall time on without firing any timer.
    fn jump(&self, d: Duration) {
        *lock(&self.jumped) += d;
    }

    /// Tokio time since the start.
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn unix(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(WALL0) + self.elapsed() + *lock(&self.jumped)
    }
}

fn jwt(sub: &str, exp: u64) -> String {
    let claims = format!(
        r#"{{"iss":"https://accounts.google.com","aud":"sts.amazonaws.com","sub":"{sub}","exp":{exp}}}"#
    );
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// Mints tokens `t1`, `t2`, ... (their `sub`), valid for `lifetime`, as GCP does.
#[derive(Clone)]
struct FakeSource(Arc<SourceState>);

struct SourceState {
    clock: Arc<FakeClock>,
    lifetime: Duration,
    calls: AtomicU64,
}

impl FakeSource {
    fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::SeqCst)
    }
}

impl TokenSource for FakeSource {
    fn identity_token(&self) -> BoxFuture<'_, Result<IdToken, TokenError>> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let exp = self.0.clock.unix() + self.0.lifetime.as_secs();
        Box::pin(async move {
            IdToken::parse(jwt(&format!("t{n}"), exp)).map_err(|e| TokenError::Invalid {
                from: "fake".into(),
                why: e.to_string(),
            })
        })
    }

    fn describe(&self) -> String {
        "fake source".into()
    }

    fn reuse_tokens(&self) -> bool {
        true
    }
}

/// STS: credentials `AKID1`, `AKID2`, ... valid for `lifetime`, unless told to fail.
#[derive(Clone)]
struct FakeSts(Arc<StsState>);

struct StsState {
    clock: Arc<FakeClock>,
    /// Of the credentials issued.
    lifetime: Duration,
    /// Each exchange: when (tokio time since the start) and the token's `sub`.
    calls: Mutex<Vec<(Duration, String)>>,
    issued: AtomicU64,
    /// Answers for the next exchanges, then `down`'s.
    next: Mutex<VecDeque<StsError>>,
    down: Mutex<Option<StsError>>,
    /// While held, exchanges wait for a permit.
    held: AtomicBool,
    gate: Semaphore,
}

fn unavailable() -> StsError {
    StsError::Transient {
        code: "ServiceUnavailable".into(),
        message: "HTTP 503".into(),
    }
}

impl FakeSts {
    fn times(&self) -> Vec<Duration> {
        lock(&self.0.calls).iter().map(|c| c.0).collect()
    }

    fn calls(&self) -> usize {
        lock(&self.0.calls).len()
    }

    fn tokens(&self) -> Vec<String> {
        lock(&self.0.calls).iter().map(|c| c.1.clone()).collect()
    }

    fn set_down(&self, e: Option<StsError>) {
        *lock(&self.0.down) = e;
    }

    fn hold(&self) {
        self.0.held.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.0.held.store(false, Ordering::SeqCst);
        self.0.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

impl Exchanger for FakeSts {
    fn exchange<'a>(&'a self, token: &'a IdToken) -> BoxFuture<'a, Result<Session, StsError>> {
        Box::pin(async move {
            let st = &self.0;
            lock(&st.calls).push((st.clock.elapsed(), token.claims.sub.clone()));
            if st.held.load(Ordering::SeqCst) {
                let _permit = st.gate.acquire().await;
            }
            let failure = lock(&st.next)
                .pop_front()
                .or_else(|| lock(&st.down).clone());
            if let Some(e) = failure {
                return Err(e);
            }
            let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
            let expiry = st.clock.now() + st.lifetime;
            Ok(Session {
                credentials: Credentials::new(
                    format!("AKID{n}"),
                    "fake-secret",
                    Some("fake-session-token".into()),
                    Some(expiry),
                    "fake",
                ),
                expiry,
                assumed_role_arn: "arn:aws:sts::000000000000:assumed-role/reader/test".into(),
                subject: token.claims.sub.clone(),
                audience: token.claims.aud.clone(),
                provider: token.claims.iss.clone(),
            })
        })
    }

    fn role_arn(&self) -> &str {
        "arn:aws:iam::000000000000:role/reader"
    }

    fn session_name(&self) -> &str {
        "test"
    }
}

struct Fixture {
    clock: Arc<FakeClock>,
    source: FakeSource,
    sts: FakeSts,
}

impl Fixture {
    /// Tokens and credentials valid for an hour.
    fn new() -> Self {
        Self::with(LIFETIME, LIFETIME)
    }

    fn with(token_lifetime: Duration, credential_lifetime: Duration) -> Self {
        let clock = FakeClock::new();
        Fixture {
            source: FakeSource(Arc::new(SourceState {
                clock: clock.clone(),
                lifetime: token_lifetime,
                calls: AtomicU64::new(0),
            })),
            sts: FakeSts(Arc::new(StsState {
                clock: clock.clone(),
                lifetime: credential_lifetime,
                calls: Mutex::new(Vec::new()),
                issued: AtomicU64::new(0),
                next: Mutex::new(VecDeque::new()),
                down: Mutex::new(None),
                held: AtomicBool::new(false),
                gate: Semaphore::new(0),
            })),
            clock,
        }
    }

    /// Starts a refresher over the fake source (or `source`) and lets its background task
    /// set its first timer.
    async fn start_over(
        &self,
        source: Box<dyn TokenSource>,
        margin: Duration,
        random: fn() -> f64,
    ) -> Result<Refresher, AuthError> {
        let r = Refresher::start_with(
            source,
            Box::new(self.sts.clone()),
            margin,
            self.clock.clone(),
            random,
        )
        .await;
        settle().await;
        r
    }

    async fn start(&self, margin: Duration, random: fn() -> f64) -> Refresher {
        self.start_over(Box::new(self.source.clone()), margin, random)
            .await
            .expect("first credentials")
    }

    /// Sleeps until `t` (tokio time since the start), then lets woken tasks run.
    async fn until(&self, t: Duration) {
        tokio::time::sleep_until(self.clock.start + t).await;
        settle().await;
    }
}

/// Lets every task that can run, run, without moving time.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// The access key id a request gets now.
async fn key(r: &Refresher) -> Result<String, CredentialsError> {
    r.provide_credentials()
        .await
        .map(|c| c.access_key_id().to_string())
}

fn ok(k: &str) -> Result<String, String> {
    Ok(k.to_string())
}

/// `key` with the error as text, for comparisons.
async fn key_text(r: &Refresher) -> Result<String, String> {
    key(r)
        .await
        .map_err(|e| aws_smithy_types::error::display::DisplayErrorContext(&e).to_string())
}

#[tokio::test(start_paused = true)]
async fn renewal_is_due_a_margin_before_expiry_less_the_jitter() {
    /// Credential lifetime, margin, jitter draw, when the first renewal is due.
    type Case = (u64, u64, fn() -> f64, f64);
    let cases: [Case; 6] = [
        // No jitter: exactly the margin before expiry.
        (3600, 300, || 0.0, 3300.0),
        // The jitter moves it earlier by up to a fifth of the margin...
        (3600, 300, || 0.5, 3270.0),
        (3600, 300, || 1.0, 3240.0),
        // ...at most a minute...
        (3600, 600, || 1.0, 2940.0),
        // ...and at most half the time left before the margin.
        (900, 890, || 1.0, 5.0),
        // Credentials inside the margin when issued: renewed at half their life.
        (600, 900, || 0.7, 300.0),
    ];
    for (lifetime, margin, random, due) in cases {
        let case = format!(
            "lifetime {lifetime} s, margin {margin} s, draw {}",
            random()
        );
        let f = Fixture::with(LIFETIME, secs(lifetime));
        let r = f.start(secs(margin), random).await;
        f.until(at(due) + secs(1)).await;
        assert_eq!(f.sts.times(), [at(0.0), at(due)], "{case}");
        assert_eq!(key(&r).await.unwrap(), "AKID2", "{case}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_real_jitter_stays_within_its_bounds() {
    let fixtures: Vec<Fixture> = (0..20).map(|_| Fixture::new()).collect();
    let mut refreshers = Vec::new();
    for f in &fixtures {
        refreshers.push(f.start(MARGIN, uniform).await);
    }
    fixtures[0].until(secs(3300)).await;
    let mut dues: Vec<Duration> = fixtures.iter().map(|f| f.sts.times()[1]).collect();
    for (f, due) in fixtures.iter().zip(&dues) {
        assert_eq!(f.sts.calls(), 2);
        // A fifth of the 300 s margin: up to 60 s early.
        assert!(
            (secs(3240)..=secs(3300)).contains(due),
            "renewal at {due:?}"
        );
    }
    dues.dedup();
    assert!(dues.len() > 1, "20 refreshers renewed in step at {dues:?}");
}

#[tokio::test(start_paused = true)]
async fn a_late_timer_is_caught_by_the_request_path() {
    let f = Fixture::new();
    let r = f.start(MARGIN, || 0.0).await;
    // Wall time passes to 200 s before expiry, inside the margin, but the timer (due at
    // 3300 s) does not fire: a request is served at once and nudges the renewal.
    f.clock.jump(secs(3400));
    assert_eq!(key(&r).await.unwrap(), "AKID1");
    assert_eq!(f.sts.calls(), 1, "the request waited for a renewal");
    settle().await;
    assert_eq!(f.sts.times(), [at(0.0), at(0.0)], "no timer fired");
    assert_eq!(key(&r).await.unwrap(), "AKID2");

    // Wall time passes the expiry: the request renews and waits for it.
    f.clock.jump(LIFETIME);
    assert_eq!(key(&r).await.unwrap(), "AKID3");
    assert_eq!(f.sts.times(), [at(0.0); 3]);
    // The background timer (set for 3300 s after the nudged renewal) finds nothing to do
    // until then.
    f.until(secs(3299)).await;
    assert_eq!(f.sts.calls(), 3);
    assert_eq!(r.stats().renewals.load(Ordering::SeqCst), 3);
    assert_eq!(r.stats().failures.load(Ordering::SeqCst), 0);
}

/// The retries of a renewal first due at 3300 s with STS down, each pause half its backoff
/// (draw 0): 1, 2, 4 ... 60 s.
const RETRIES: [f64; 15] = [
    3300.0, 3300.5, 3301.5, 3303.5, 3307.5, 3315.5, 3331.5, 3361.5, 3391.5, 3421.5, 3451.5, 3481.5,
    3511.5, 3541.5, 3571.5,
];

#[tokio::test(start_paused = true)]
async fn failed_renewals_back_off_while_the_old_credentials_serve() {
    let f = Fixture::new();
    let r = f.start(MARGIN, || 0.0).await;
    f.sts.set_down(Some(unavailable()));
    // Requests every 10 s meanwhile: the current credentials, no exchange of their own.
    for t in (3300..=3400).step_by(10) {
        f.until(secs(t)).await;
        assert_eq!(key(&r).await.unwrap(), "AKID1", "at {t} s");
    }
    let mut want: Vec<Duration> = vec![at(0.0)];
    want.extend(RETRIES[..9].iter().map(|&t| at(t)));
    assert_eq!(f.sts.times(), want);
    assert_eq!(r.stats().failures.load(Ordering::SeqCst), 9);

    // STS answers again: the next retry (30 s after the last) succeeds.
    f.sts.set_down(None);
    f.until(secs(3422)).await;
    want.push(at(3421.5));
    assert_eq!(f.sts.times(), want);
    assert_eq!(key(&r).await.unwrap(), "AKID2");
    // And the schedule is back to normal: the next renewal a margin before expiry.
    f.until(at(3421.5 + 3299.0)).await;
    assert_eq!(f.sts.calls(), want.len());
    f.until(at(3421.5 + 3300.0)).await;
    want.push(at(3421.5 + 3300.0));
    assert_eq!(f.sts.times(), want);
}

#[tokio::test(start_paused = true)]
async fn expired_credentials_fail_with_eacces_until_sts_answers_again() {
    use crate::fs::FsError;
    use crate::store::ObjectStore;
    use crate::store::s3::{S3Options, S3Store};

    let f = Fixture::new();
    let r = f.start(MARGIN, || 0.0).await;
    f.sts.set_down(Some(unavailable()));
    // 5 s before expiry, past the 10 s of safety: expired. The last background retry was
    // 23.5 s ago, so the request tries once more itself, and fails.
    f.until(secs(3595)).await;
    let mut want: Vec<Duration> = vec![at(0.0)];
    want.extend(RETRIES.iter().map(|&t| at(t)));
    assert_eq!(f.sts.times(), want);
    let err = key_text(&r).await.unwrap_err();
    want.push(at(3595.0));
    assert_eq!(f.sts.times(), want);
    assert!(
        err.contains("assuming role arn:aws:iam::000000000000:role/reader failed")
            && err.contains("ServiceUnavailable"),
        "{err}"
    );

    // What a read gets: the S3 client's credential error, which the filesystem answers
    // with EACCES. (The request never leaves: no credentials, no connection.)
    let store = S3Store::new(
        &S3Options {
            bucket: "b".into(),
            region: "us-east-1".into(),
            endpoint_url: Some("http://127.0.0.1:1".into()),
            force_path_style: true,
            max_attempts: 1,
            request_timeout: secs(5),
        },
        SharedCredentialsProvider::new(r.clone()),
        false,
    );
    let e = store.head("k").await.unwrap_err();
    assert!(
        matches!(e, crate::store::StoreError::Credentials(_)),
        "{e:?}"
    );
    assert_eq!(FsError::from(e).errno(), libc::EACCES);
    // Requests within 2 s of a failed renewal get its error without asking STS again.
    assert_eq!(f.sts.calls(), want.len());

    // STS is back: the first request 2 s after the failure renews, and is served.
    f.sts.set_down(None);
    f.until(at(3596.9)).await;
    assert!(key(&r).await.is_err());
    assert_eq!(f.sts.calls(), want.len());
    f.until(at(3597.0)).await;
    assert_eq!(key_text(&r).await, ok("AKID2"));
    want.push(at(3597.0));
    // The background retry due at 3601.5 s finds fresh credentials.
    f.until(secs(3700)).await;
    assert_eq!(f.sts.times(), want);
}

#[tokio::test(start_paused = true)]
async fn callers_during_one_renewal_share_it() {
    let f = Fixture::new();
    let r = f.start(MARGIN, || 0.0).await;
    // Expired (the timer is late), and STS slow to answer.
    f.sts.hold();
    f.clock.jump(LIFETIME);
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { key_text(&r).await })
        })
        .collect();
    settle().await;
    assert_eq!(f.sts.calls(), 2, "one exchange under way");
    assert!(callers.iter().all(|c| !c.is_finished()));
    f.sts.release();
    for c in callers {
        assert_eq!(c.await.unwrap(), ok("AKID2"));
    }
    assert_eq!(f.sts.times(), [at(0.0); 2]);

    // Inside the margin: all served at once, one renewal in the background.
    f.clock.jump(secs(3400));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { key_text(&r).await })
        })
        .collect();
    for c in callers {
        assert_eq!(c.await.unwrap(), ok("AKID2"));
    }
    settle().await;
    assert_eq!(f.sts.times(), [at(0.0); 3]);
    assert_eq!(key(&r).await.unwrap(), "AKID3");
}

#[tokio::test(start_paused = true)]
async fn the_token_file_is_read_again_for_each_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let f = Fixture::new();
    let valid = |sub: &str| jwt(sub, WALL0 + 86_400);
    std::fs::write(&path, valid("file-1")).unwrap();
    let source = Box::new(TokenFile { path: path.clone() });
    let r = f.start_over(source, MARGIN, || 0.0).await.unwrap();
    std::fs::write(&path, valid("file-2")).unwrap();
    // (The file is read on the blocking pool, which holds paused time still meanwhile.)
    f.until(secs(3300)).await;
    eventually(|| f.sts.calls() == 2).await;
    assert_eq!(f.sts.tokens(), ["file-1", "file-2"]);

    // An expired token in the file: refused before STS; the current credentials serve on.
    std::fs::write(&path, jwt("file-3", WALL0 + 100)).unwrap();
    f.until(secs(6600)).await;
    eventually(|| r.stats().failures.load(Ordering::SeqCst) == 1).await;
    assert_eq!(f.sts.calls(), 2);
    assert_eq!(key(&r).await.unwrap(), "AKID2");
    // A good one again: used at the next retry, half a second later.
    std::fs::write(&path, valid("file-4")).unwrap();
    f.until(at(6600.5)).await;
    eventually(|| f.sts.calls() == 3).await;
    assert_eq!(f.sts.tokens(), ["file-1", "file-2", "file-4"]);
    assert_eq!(f.sts.times(), [at(0.0), at(3300.0), at(6600.5)]);
}

/// Waits (real time, a few seconds at most) for work on the blocking pool.
async fn eventually(cond: impl Fn() -> bool) {
    for _ in 0..5000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("condition not met");
}

#[tokio::test(start_paused = true)]
async fn metadata_tokens_are_reused_while_they_last() {
    // Tokens for two hours, credentials for one, margin 300 s: a token is kept while it
    // has more than the margin and a minute left.
    let f = Fixture::with(secs(7200), LIFETIME);
    let _r = f.start(MARGIN, || 0.0).await;
    f.until(secs(3300)).await;
    assert_eq!(f.sts.tokens(), ["t1", "t1"]);
    // STS says the token expired (it did early, or clocks disagree): a fresh token and a
    // second exchange at once.
    lock(&f.sts.0.next).push_back(StsError::ExpiredToken {
        message: "expired".into(),
    });
    f.until(secs(6600)).await;
    assert_eq!(f.sts.tokens(), ["t1", "t1", "t1", "t2"]);
    assert_eq!(f.sts.times()[2..], [at(6600.0); 2]);
    // t2 has an hour and more left at the next renewal; t1 would have expired.
    f.until(secs(9900)).await;
    assert_eq!(f.sts.tokens(), ["t1", "t1", "t1", "t2", "t2"]);
    assert_eq!(f.source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn start_retries_what_may_pass_and_not_a_rejection() {
    // STS down at start: three tries, 1 s then 2 s apart, then the error.
    let f = Fixture::new();
    f.sts.set_down(Some(unavailable()));
    let source = Box::new(f.source.clone());
    let e = f.start_over(source, MARGIN, || 0.0).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(f.sts.times(), [at(0.0), at(1.0), at(3.0)]);

    // Rejected: at once.
    let f = Fixture::new();
    f.sts.set_down(Some(StsError::Rejected {
        code: "AccessDenied".into(),
        message: String::new(),
    }));
    let source = Box::new(f.source.clone());
    let e = f.start_over(source, MARGIN, || 0.0).await.unwrap_err();
    assert!(!e.is_transient());
    // The message names what the role's trust policy must allow.
    assert!(e.to_string().contains("sub=t1"), "{e}");
    assert_eq!(f.sts.times(), [at(0.0)]);
}
