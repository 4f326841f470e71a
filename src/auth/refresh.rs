//! Credentials served from memory, renewed in the background before they expire.
//!
//! The S3 client asks for credentials on every request (`ProvideCredentials`); the answer
//! comes from memory at once. A background task renews them a margin before expiry (with
//! jitter), retrying with bounded backoff while the current ones stay valid. Because a
//! throttled CPU (Cloud Run between requests) can starve that timer, the request path also
//! checks: inside the margin it wakes the task, and only with really expired credentials does
//! a request wait for a renewal.
//!
//! The refresher sees its token source, its exchanger and the wall clock through traits, and
//! sleeps on tokio's timer, so that tests drive it with fakes and paused time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::AuthError;
use super::jwt::IdToken;
use super::sts::{Exchanger, Session, StsError, trust_hint};
use super::token::{TokenSource, unexpired};
use crate::util::lock;

/// Credentials this close to expiry are treated as expired (clock skew, request time).
const EXPIRY_SAFETY: Duration = Duration::from_secs(10);
/// How long a request may wait for a renewal of expired credentials.
const SYNC_REFRESH_TIMEOUT: Duration = Duration::from_secs(20);
/// Minimum time between renewals attempted from the request path after a failure.
const SYNC_RETRY_INTERVAL: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wall clock, which expiries (of credentials, of tokens) are told in.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The real clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Uniform in [0, 1): the draw behind the renewal and retry jitter.
fn uniform() -> f64 {
    rand::random()
}

#[derive(Default, Debug)]
pub struct RefreshStats {
    pub renewals: AtomicU64,
    pub failures: AtomicU64,
}

struct Inner {
    source: Box<dyn TokenSource>,
    exchanger: Box<dyn Exchanger>,
    clock: Arc<dyn Clock>,
    /// `uniform` (tests pin it to see exact times).
    random: fn() -> f64,
    margin: Duration,
    current: RwLock<Option<Arc<Session>>>,
    /// A cached identity token (GCP mints a new one per call; reuse it while it lasts).
    token: tokio::sync::Mutex<Option<IdToken>>,
    /// One renewal at a time.
    renewing: tokio::sync::Mutex<()>,
    wake: Notify,
    last_failure: Mutex<Option<(Instant, AuthError)>>,
    stats: RefreshStats,
}

#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("source", &self.inner.source.describe())
            .field("role", &self.inner.exchanger.role_arn())
            .finish()
    }
}

impl Refresher {
    /// Gets the first credentials (a failure here is a configuration error, reported with
    /// what to fix) and starts the background renewal.
    pub async fn start(
        source: Box<dyn TokenSource>,
        exchanger: Box<dyn Exchanger>,
        margin: Duration,
    ) -> Result<Self, AuthError> {
        Self::start_with(source, exchanger, margin, Arc::new(SystemClock), uniform).await
    }

    async fn start_with(
        source: Box<dyn TokenSource>,
        exchanger: Box<dyn Exchanger>,
        margin: Duration,
        clock: Arc<dyn Clock>,
        random: fn() -> f64,
    ) -> Result<Self, AuthError> {
        // Credentials count as expired EXPIRY_SAFETY early: renewing any later than that
        // would make requests wait for renewals.
        let min_margin = EXPIRY_SAFETY + Duration::from_secs(10);
        if margin < min_margin {
            tracing::info!(
                requested_s = margin.as_secs(),
                using_s = min_margin.as_secs(),
                "refresh margin raised"
            );
        }
        let margin = margin.max(min_margin);
        let inner = Arc::new(Inner {
            source,
            exchanger,
            clock,
            random,
            margin,
            current: RwLock::new(None),
            token: tokio::sync::Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            last_failure: Mutex::new(None),
            stats: RefreshStats::default(),
        });
        // A transient failure at start gets a few tries; a rejection fails at once.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match inner.renew("initial").await {
                Ok(_) => break,
                Err(e) if e.is_transient() && attempt < 3 => {
                    tracing::warn!(error = %e, attempt, "getting credentials failed, retrying");
                    tokio::time::sleep(MIN_BACKOFF * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
        tokio::spawn(background(Arc::downgrade(&inner)));
        Ok(Refresher { inner })
    }

    pub fn current(&self) -> Option<Arc<Session>> {
        self.inner.current()
    }

    pub fn stats(&self) -> &RefreshStats {
        &self.inner.stats
    }

    async fn credentials(&self) -> aws_credential_types::provider::Result {
        if let Some(s) = self.inner.current() {
            let left = self.inner.left(&s);
            if left > EXPIRY_SAFETY {
                if left < self.inner.margin {
                    // The background renewal is late (starved timer): nudge it, don't wait.
                    self.inner.wake.notify_one();
                }
                return Ok(s.credentials.clone());
            }
        }
        // Expired: this request has to wait for a renewal, unless one just failed.
        if let Some((at, e)) = &*lock(&self.inner.last_failure)
            && at.elapsed() < SYNC_RETRY_INTERVAL
        {
            return Err(CredentialsError::provider_error(e.clone()));
        }
        match tokio::time::timeout(SYNC_REFRESH_TIMEOUT, self.inner.renew("expired")).await {
            Ok(Ok(s)) => Ok(s.credentials.clone()),
            Ok(Err(e)) => Err(CredentialsError::provider_error(e)),
            Err(_) => Err(CredentialsError::provider_timed_out(SYNC_REFRESH_TIMEOUT)),
        }
    }
}

/// The most a renewal is moved earlier than the margin: a fifth of it, at most a minute.
fn max_jitter(margin: Duration) -> Duration {
    (margin / 5).min(Duration::from_secs(60))
}

impl Inner {
    fn current(&self) -> Option<Arc<Session>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How long `s` stays valid.
    fn left(&self, s: &Session) -> Duration {
        s.expiry
            .duration_since(self.clock.now())
            .unwrap_or_default()
    }

    fn valid_for(&self) -> Duration {
        self.current().map(|s| self.left(&s)).unwrap_or_default()
    }

    fn now_unix(&self) -> u64 {
        self.clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// An identity token with at least `margin + 60 s` left: the cached one, or a new one.
    async fn token(&self, fresh: bool) -> Result<(), AuthError> {
        let mut slot = self.token.lock().await;
        let keep = !fresh
            && self.source.reuse_tokens()
            && slot
                .as_ref()
                .is_some_and(|t| t.remaining(self.now_unix()) > self.margin.as_secs() + 60);
        if !keep {
            let token = self
                .source
                .identity_token()
                .await
                .and_then(|t| unexpired(t, &*self.source, self.now_unix()))
                .map_err(|e| AuthError::Token {
                    source_desc: self.source.describe(),
                    why: e.to_string(),
                    transient: e.is_transient(),
                })?;
            *slot = Some(token);
        }
        Ok(())
    }

    async fn exchange(&self) -> Result<Session, StsError> {
        let slot = self.token.lock().await;
        match slot.as_ref() {
            Some(t) => self.exchanger.exchange(t).await,
            None => Err(StsError::Transient {
                code: "NoToken".into(),
                message: "no identity token".into(),
            }),
        }
    }

    /// Gets a new session: token (cached or fresh), exchange; on ExpiredToken a fresh token
    /// and one more exchange.
    async fn renew(&self, reason: &str) -> Result<Arc<Session>, AuthError> {
        let _one = self.renewing.lock().await;
        // Someone else may have renewed while we waited for the lock (or since the timer
        // was set): nothing to do while the current credentials are good enough.
        let good_for = match reason {
            "expired" => {
                // Requests queued behind a renewal that just failed get its error instead
                // of each trying again in turn.
                if let Some((at, e)) = &*lock(&self.last_failure)
                    && at.elapsed() < SYNC_RETRY_INTERVAL
                {
                    return Err(e.clone());
                }
                EXPIRY_SAFETY
            }
            // The timer fires up to the largest jitter before the margin: that is on time.
            "scheduled" => self.margin + max_jitter(self.margin),
            _ => Duration::MAX,
        };
        if let Some(s) = self.current()
            && self.left(&s) > good_for
        {
            return Ok(s);
        }
        let result = self.renew_locked().await;
        match &result {
            Ok(s) => {
                self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_failure) = None;
                let expires_in = self.left(s);
                tracing::info!(
                    reason,
                    role = %s.assumed_role_arn,
                    subject = %s.subject,
                    audience = %s.audience,
                    provider = %s.provider,
                    session = %self.exchanger.session_name(),
                    expires_in_s = expires_in.as_secs(),
                    "AWS credentials obtained"
                );
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_failure) = Some((Instant::now(), e.clone()));
            }
        }
        result
    }

    async fn renew_locked(&self) -> Result<Arc<Session>, AuthError> {
        self.token(false).await?;
        let session = match self.exchange().await {
            Err(StsError::ExpiredToken { .. }) => {
                tracing::info!("STS says the identity token expired; fetching a new one");
                self.token(true).await?;
                self.exchange().await
            }
            other => other,
        };
        let session = match session {
            Ok(s) => Arc::new(s),
            Err(e) => {
                let claims = self.token.lock().await.as_ref().map(|t| t.claims.clone());
                return Err(AuthError::Sts {
                    role: self.exchanger.role_arn().to_string(),
                    transient: e.is_transient(),
                    // The claims matter for trust failures, not for policy or parameter errors.
                    hint: match (&e, claims) {
                        (StsError::Rejected { code, .. }, Some(c))
                            if matches!(
                                code.as_str(),
                                "AccessDenied" | "InvalidIdentityToken" | "IDPRejectedClaim"
                            ) =>
                        {
                            trust_hint(&c)
                        }
                        _ => String::new(),
                    },
                    error: e.to_string(),
                });
            }
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(session.clone());
        Ok(session)
    }

    /// When the next renewal is due: `margin` before expiry, a little earlier by a random
    /// jitter (up to a fifth of the margin, at most a minute) so that many instances do not
    /// renew in step; the jitter never takes more than half of the time left before the margin.
    /// Credentials that are already inside the margin when issued (STS gave a shorter
    /// lifetime than the margin) are renewed at half their life, not in a tight loop.
    fn next_renewal(&self) -> Duration {
        let Some(s) = self.current() else {
            return Duration::ZERO;
        };
        let left = self.left(&s);
        let until_margin = left.saturating_sub(self.margin);
        if until_margin.is_zero() {
            return left / 2;
        }
        let max_jitter = max_jitter(self.margin).min(until_margin / 2);
        until_margin.saturating_sub(max_jitter.mul_f64((self.random)()))
    }
}

async fn background(weak: Weak<Inner>) {
    let mut backoff = MIN_BACKOFF;
    let mut retrying = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if !retrying {
            let wait = inner.next_renewal();
            let woken_by_timer = tokio::select! {
                _ = tokio::time::sleep(wait) => true,
                _ = inner.wake.notified() => false,
            };
            // A nudge from a request that saw credentials inside the margin, but a renewal
            // since then (a stored wake-up): nothing to do.
            if !woken_by_timer && inner.valid_for() > inner.margin {
                continue;
            }
        }
        match inner.renew("scheduled").await {
            Ok(_) => {
                backoff = MIN_BACKOFF;
                retrying = false;
            }
            Err(e) => {
                retrying = true;
                let left = inner.valid_for();
                if left > EXPIRY_SAFETY {
                    tracing::warn!(error = %e, valid_for_s = left.as_secs(), retry_in_s = backoff.as_secs(),
                        "credential renewal failed; still serving with the current credentials");
                } else {
                    tracing::error!(error = %e, retry_in_s = backoff.as_secs(),
                        "AWS credentials expired and cannot be renewed; reads fail with EACCES until the identity provider and STS answer again");
                }
                // Half to all of the backoff.
                let pause = backoff.mul_f64(0.5 + 0.5 * (inner.random)());
                drop(inner);
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

impl ProvideCredentials for Refresher {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.credentials())
    }
}

#[cfg(test)]
mod tests;
