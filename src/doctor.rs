//! `doctor`: checks, one step at a time, the chain a mount depends on (metadata server,
//! identity token, STS exchange or AWS chain, ListBucket, HEAD and GET of one object) and
//! says for each step what is wrong and how to fix it; then prints the policies that would
//! make it work. The steps are a table ([`checks`]) with declared dependencies: a step whose
//! dependency failed is shown as skipped, and so is one that does not apply to the
//! credential mode. The fix texts come from [`crate::advice`], shared with the mount.
//!
//! The steps run against an [`Env`]: the real one talks to the metadata server, STS and S3;
//! unit tests use fakes. The identity token is only ever shown as its decoded claims, never
//! its text or signature.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_types::error::display::DisplayErrorContext;
use futures::StreamExt;
use serde_json::Value;

use crate::advice;
use crate::auth::jwt::{Claims, IdToken, now_unix};
use crate::auth::sts::{Session, StsError, trust_hint};
use crate::auth::token::{TokenError, TokenFile};
use crate::auth::{self, AuthConfig, AuthError, CredentialMode, Plan, policy};
use crate::cli::Source;
use crate::store::s3::{S3Options, S3Store};
use crate::store::{ListFrom, ListPage, ObjectMeta, ObjectStore, StoreError};
use crate::util::rfc3339;

/// Longest any one step may take (STS and S3 retry inside it).
const STEP_TIMEOUT: Duration = Duration::from_secs(65);
/// Bytes read by the GET step.
const GET_BYTES: u64 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Skip,
    Info,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "OK",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
            Outcome::Info => "INFO",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    pub fix: Option<String>,
    /// A refusal (trust or permission) that the policies shown after the steps fix.
    pub refused: bool,
}

pub struct Report {
    pub header: String,
    pub steps: Vec<Step>,
    /// Policies to show: title and document.
    pub policies: Vec<(String, Value)>,
}

impl Report {
    /// Whether every check passed (skipped steps that do not apply are no failure).
    pub fn passed(&self) -> bool {
        !self.steps.iter().any(|s| s.outcome == Outcome::Fail)
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// One line per step, then the policies.
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.header);
        for s in &self.steps {
            let mut line = format!("{:<4}  {:<15}  {}", s.outcome.label(), s.name, s.detail);
            if let Some(fix) = &s.fix {
                line.push_str(" -- fix: ");
                line.push_str(fix);
            }
            out.push_str(line.replace('\n', " ").trim_end());
            out.push('\n');
        }
        for (title, doc) in &self.policies {
            out.push('\n');
            out.push_str(&format!("# {title}\n"));
            out.push_str(&serde_json::to_string_pretty(doc).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}

/// Why an exchange did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The setup is incomplete (no role, bad role ARN, unreadable session policy).
    #[error(transparent)]
    Config(AuthError),
    #[error(transparent)]
    Sts(StsError),
}

/// What the steps talk to.
pub trait Env: Sync {
    type Store: ObjectStore;
    /// Asks the metadata server something that needs no identity: its project id.
    fn metadata(&self) -> impl Future<Output = Result<String, String>> + Send;
    fn identity_token(&self) -> impl Future<Output = Result<IdToken, TokenError>> + Send;
    fn exchange(
        &self,
        token: &IdToken,
    ) -> impl Future<Output = Result<Session, ExchangeError>> + Send;
    /// Credentials from the standard AWS chain.
    fn aws_credentials(&self) -> impl Future<Output = Result<Credentials, String>> + Send;
    fn store(&self, credentials: Credentials) -> Self::Store;
}

/// What is being checked, for messages.
#[derive(Clone, Debug)]
pub struct Target {
    pub source: Source,
    pub mode: CredentialMode,
    /// How the mode was chosen, when `auto` chose it.
    pub mode_reason: Option<String>,
    pub audience: String,
    pub role_arn: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The S3 endpoint, for messages ("AWS S3 in eu-west-1" or the URL).
    pub endpoint: String,
    /// The STS endpoint, for messages.
    pub sts_endpoint: String,
    /// The metadata server's base URL.
    pub metadata_url: String,
    /// The session policy option as given (auto, none, @FILE).
    pub session_policy: String,
    /// What the mount would do there (`--allow-write`: also create files).
    pub access: policy::Access,
}

impl Target {
    fn partition(&self) -> &str {
        self.role_arn.as_deref().map_or("aws", policy::partition)
    }

    fn account(&self) -> &str {
        self.role_arn
            .as_deref()
            .and_then(|a| a.split(':').nth(4))
            .unwrap_or("")
    }
}

fn ok(name: &'static str, detail: impl Into<String>) -> Step {
    Step {
        name,
        outcome: Outcome::Ok,
        detail: detail.into(),
        fix: None,
        refused: false,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Step {
    Step {
        name,
        outcome: Outcome::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
        refused: false,
    }
}

fn skip(name: &'static str, why: impl Into<String>) -> Step {
    Step {
        name,
        outcome: Outcome::Skip,
        detail: why.into(),
        fix: None,
        refused: false,
    }
}

const METADATA: &str = "metadata server";
const TOKEN: &str = "identity token";
const STS: &str = "sts exchange";
const AWS_CHAIN: &str = "aws credentials";
const LIST: &str = "list";
const READ: &str = "read";
const WRITE: &str = "write";
const POLICY: &str = "policy";

async fn bounded<T>(f: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(STEP_TIMEOUT, f).await.ok()
}

fn timed_out(name: &'static str, what: &str) -> Step {
    fail(
        name,
        format!("{what} did not answer within {} s", STEP_TIMEOUT.as_secs()),
        advice::TIMED_OUT,
    )
}

/// `exp` as RFC 3339 and how far it is from now.
fn describe_exp(exp: u64) -> String {
    let now = now_unix();
    let when = rfc3339(UNIX_EPOCH + Duration::from_secs(exp));
    if exp > now {
        format!("{when} (in {})", human(exp - now))
    } else {
        format!("{when} (expired {} ago)", human(now - exp))
    }
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn claims_line(c: &Claims) -> String {
    format!(
        "iss={} aud={} azp={} sub={} exp={}",
        c.iss,
        c.aud,
        c.azp.as_deref().unwrap_or("-"),
        c.sub,
        describe_exp(c.exp)
    )
}

/// What to allow, for a refused S3 request.
fn permission_fix(t: &Target, action: &str) -> String {
    let permission =
        advice::s3_permission(t.partition(), &t.source.bucket, &t.source.prefix, action);
    advice::s3_refused(&permission, t.mode, &t.session_policy)
}

fn store_failure(name: &'static str, what: &str, e: &StoreError, t: &Target, action: &str) -> Step {
    match e {
        StoreError::NoSuchBucket => fail(
            name,
            format!(
                "{what}: bucket {:?} does not exist at {}",
                t.source.bucket, t.endpoint
            ),
            advice::NO_SUCH_BUCKET,
        ),
        StoreError::AccessDenied { code, message } => Step {
            refused: true,
            ..fail(
                name,
                format!("{what}: S3 refused ({code}): {message}"),
                permission_fix(t, action),
            )
        },
        StoreError::Credentials(m) => fail(
            name,
            format!("{what}: no usable credentials: {m}"),
            advice::SEE_CREDENTIAL_STEPS,
        ),
        StoreError::Unreachable(m) => fail(
            name,
            format!("{what}: cannot reach {}: {m}", t.endpoint),
            advice::S3_UNREACHABLE,
        ),
        e => fail(
            name,
            format!("{what} at {}: {e}", t.endpoint),
            advice::S3_OTHER,
        ),
    }
}

/// What the steps found, for the steps after them.
struct Found<S> {
    claims: Option<Claims>,
    token: Option<IdToken>,
    credentials: Option<Credentials>,
    store: Option<S>,
    page: Option<ListPage>,
}

type StepFuture<'a> = Pin<Box<dyn Future<Output = Step> + Send + 'a>>;

/// One check: it runs unless a step it depends on failed (or was skipped for a failure).
struct StepDef<E: Env> {
    name: &'static str,
    after: &'static [&'static str],
    /// Whether the step is listed at all for this target (the STS exchange and the AWS
    /// chain stand in the same place, for different modes).
    listed: fn(&Target) -> bool,
    run: for<'a> fn(&'a E, &'a Target, &'a mut Found<E::Store>) -> StepFuture<'a>,
}

fn web_identity(t: &Target) -> bool {
    matches!(t.mode, CredentialMode::Gcp | CredentialMode::TokenFile)
}

/// The checks, in order.
fn checks<E: Env>() -> [StepDef<E>; 7] {
    [
        StepDef {
            name: METADATA,
            after: &[],
            listed: |_| true,
            run: |env, t, _| Box::pin(check_metadata(env, t)),
        },
        StepDef {
            name: TOKEN,
            after: &[METADATA],
            listed: |_| true,
            run: |env, t, found| Box::pin(check_token(env, t, found)),
        },
        StepDef {
            name: STS,
            after: &[TOKEN],
            listed: web_identity,
            run: |env, t, found| Box::pin(check_sts(env, t, found)),
        },
        StepDef {
            name: AWS_CHAIN,
            after: &[],
            listed: |t| !web_identity(t),
            run: |env, _, found| Box::pin(check_aws_chain(env, found)),
        },
        StepDef {
            name: LIST,
            after: &[STS, AWS_CHAIN],
            listed: |_| true,
            run: |env, t, found| Box::pin(check_list(env, t, found)),
        },
        StepDef {
            name: READ,
            after: &[LIST],
            listed: |_| true,
            run: |_, t, found| Box::pin(check_read(t, found)),
        },
        StepDef {
            name: WRITE,
            after: &[LIST],
            listed: |t| t.access.write,
            run: |_, t, found| Box::pin(check_write(t, found)),
        },
    ]
}

/// Runs every step.
pub async fn diagnose<E: Env>(env: &E, t: &Target) -> Report {
    let mut steps: Vec<Step> = Vec::new();
    // For each step listed: the failed step that stopped it (itself, if it failed).
    let mut stopped_by: Vec<(&'static str, Option<&'static str>)> = Vec::new();
    let mut found = Found {
        claims: None,
        token: None,
        credentials: None,
        store: None,
        page: None,
    };
    for def in checks::<E>().iter().filter(|d| (d.listed)(t)) {
        let blocker = stopped_by
            .iter()
            .filter(|(name, _)| def.after.contains(name))
            .find_map(|(_, by)| *by);
        let step = match blocker {
            Some(f) => skip(def.name, format!("not run: {f} failed")),
            None => (def.run)(env, t, &mut found).await,
        };
        let by = blocker.or((step.outcome == Outcome::Fail).then_some(def.name));
        stopped_by.push((def.name, by));
        steps.push(step);
    }
    // The first failure, which the policy step speaks of.
    let failed = steps
        .iter()
        .find(|s| s.outcome == Outcome::Fail)
        .map(|s| s.name);

    // The policies that make it work, when a refusal stopped it.
    let mut policies = Vec::new();
    let refusal = steps.iter().find(|s| s.refused).map(|s| s.name);
    let detail = match (failed, refusal) {
        (None, _) => "nothing to change (`s3-oidc-mount policy` prints the policies)".to_string(),
        (Some(STS), Some(_)) => match &found.claims {
            Some(c) => {
                policies.push((
                    format!(
                        "Trust policy of the role{} (Trust relationships), for this token's claims:",
                        t.role_arn
                            .as_deref()
                            .map(|r| format!(" {r}"))
                            .unwrap_or_default()
                    ),
                    policy::trust_policy_for_claims(c, t.partition(), t.account()),
                ));
                "the trust policy below accepts this token".to_string()
            }
            None => "see `s3-oidc-mount policy` for the trust policy".to_string(),
        },
        (Some(f), Some(_)) => {
            policies.push((
                format!(
                    "Permission policy of the role (least privilege, {} {}):",
                    if t.access.write {
                        "read and create files in"
                    } else {
                        "read-only"
                    },
                    t.source
                ),
                policy::permission_policy(
                    t.partition(),
                    &t.source.bucket,
                    &t.source.prefix,
                    t.access,
                ),
            ));
            format!("{f} was refused: the permission policy below allows it")
        }
        (Some(f), None) => format!("not a policy problem: fix {f} first"),
    };
    steps.push(Step {
        name: POLICY,
        outcome: Outcome::Info,
        detail,
        fix: None,
        refused: false,
    });

    let mode = match t.mode {
        CredentialMode::Gcp => "gcp",
        CredentialMode::TokenFile => "token-file",
        _ => "aws",
    };
    let header = match &t.mode_reason {
        Some(why) => format!(
            "s3-oidc-mount doctor {} with --credentials {mode} ({why})",
            t.source
        ),
        None => format!(
            "s3-oidc-mount doctor {} with --credentials {mode}",
            t.source
        ),
    };
    Report {
        header,
        steps,
        policies,
    }
}

/// The metadata server, asked something that needs no identity.
async fn check_metadata<E: Env>(env: &E, t: &Target) -> Step {
    match t.mode {
        CredentialMode::Gcp => match bounded(env.metadata()).await {
            Some(Ok(project)) => ok(
                METADATA,
                format!("{} answers (project {project})", t.metadata_url),
            ),
            Some(Err(e)) => fail(METADATA, e, advice::METADATA_UNAVAILABLE),
            None => timed_out(METADATA, &t.metadata_url),
        },
        CredentialMode::TokenFile => skip(METADATA, "not used with --credentials token-file"),
        _ => skip(
            METADATA,
            "not used with --credentials aws (the standard AWS chain)",
        ),
    }
}

/// The identity token, shown by its claims.
async fn check_token<E: Env>(env: &E, t: &Target, found: &mut Found<E::Store>) -> Step {
    if !web_identity(t) {
        return skip(TOKEN, "not used with --credentials aws");
    }
    match bounded(env.identity_token()).await {
        Some(Ok(tok)) => {
            let c = tok.claims.clone();
            let step = if c.exp != 0 && c.exp <= now_unix() {
                fail(TOKEN, claims_line(&c), advice::TOKEN_EXPIRED)
            } else {
                ok(TOKEN, claims_line(&c))
            };
            found.claims = Some(c);
            found.token = Some(tok);
            step
        }
        Some(Err(e)) => {
            let fix = match t.mode {
                CredentialMode::Gcp => advice::TOKEN_GCP,
                _ => advice::TOKEN_FILE,
            };
            fail(TOKEN, e.to_string(), fix)
        }
        None => timed_out(TOKEN, "the token source"),
    }
}

/// The STS exchange of the token for credentials.
async fn check_sts<E: Env>(env: &E, t: &Target, found: &mut Found<E::Store>) -> Step {
    let Some(tok) = &found.token else {
        return skip(STS, "not run: no token");
    };
    match bounded(env.exchange(tok)).await {
        Some(Ok(s)) => {
            found.credentials = Some(s.credentials.clone());
            let left = s
                .expiry
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            ok(
                STS,
                format!(
                    "assumed {} until {} (in {}); STS saw subject {} audience {}",
                    s.assumed_role_arn,
                    rfc3339(s.expiry),
                    human(left.as_secs()),
                    s.subject,
                    s.audience
                ),
            )
        }
        Some(Err(ExchangeError::Config(e))) => fail(STS, crate::util::chain(&e), advice::NO_ROLE),
        Some(Err(ExchangeError::Sts(e))) => {
            let (code, message) = match &e {
                StsError::ExpiredToken { message } => ("ExpiredTokenException", message),
                StsError::Transient { code, message } | StsError::Rejected { code, message } => {
                    (code.as_str(), message)
                }
            };
            let hint = found.claims.as_ref().map(trust_hint).unwrap_or_default();
            let (meaning, fix) = advice::sts(
                code,
                &advice::StsContext {
                    trust_hint: &hint,
                    role_arn: t.role_arn.as_deref(),
                    sts_endpoint: &t.sts_endpoint,
                    session_policy: &t.session_policy,
                },
            );
            let message = if message.is_empty() {
                String::new()
            } else {
                format!(" ({message})")
            };
            Step {
                refused: matches!(
                    code,
                    "AccessDenied" | "IDPRejectedClaim" | "InvalidIdentityToken"
                ),
                ..fail(
                    STS,
                    format!(
                        "{} for role {}: {code}{message}: {meaning}",
                        t.sts_endpoint,
                        t.role_arn.as_deref().unwrap_or("-")
                    ),
                    fix,
                )
            }
        }
        None => timed_out(STS, &t.sts_endpoint),
    }
}

/// Credentials from the standard AWS chain.
async fn check_aws_chain<E: Env>(env: &E, found: &mut Found<E::Store>) -> Step {
    match bounded(env.aws_credentials()).await {
        Some(Ok(c)) => {
            let kind = if c.session_token().is_some() {
                "temporary credentials"
            } else {
                "long-term keys"
            };
            let until = c
                .expiry()
                .map(|e| format!(" until {}", rfc3339(e)))
                .unwrap_or_default();
            found.credentials = Some(c);
            ok(AWS_CHAIN, format!("{kind} from the AWS chain{until}"))
        }
        Some(Err(e)) => fail(
            AWS_CHAIN,
            format!("the AWS chain has no credentials: {e}"),
            advice::AWS_CHAIN_EMPTY,
        ),
        None => timed_out(AWS_CHAIN, "the AWS chain"),
    }
}

/// ListBucket on the prefix.
async fn check_list<E: Env>(env: &E, t: &Target, found: &mut Found<E::Store>) -> Step {
    let Some(credentials) = found.credentials.clone() else {
        return skip(LIST, "not run: no credentials");
    };
    let store = found.store.insert(env.store(credentials));
    let what = format!("ListObjectsV2 {}", t.source);
    match bounded(store.list_page(&t.source.prefix, true, ListFrom::Start, Some(100))).await {
        Some(Ok(p)) => {
            let more = if p.next.is_some() { "+" } else { "" };
            let step = ok(
                LIST,
                format!(
                    "{what}: objects: {}{more}, directories: {}{more}",
                    p.objects.len(),
                    p.prefixes.len()
                ),
            );
            found.page = Some(p);
            step
        }
        Some(Err(e)) => store_failure(LIST, &what, &e, t, "s3:ListBucket"),
        None => timed_out(LIST, &t.endpoint),
    }
}

/// HEAD and GET of one object.
async fn check_read<S: ObjectStore>(t: &Target, found: &mut Found<S>) -> Step {
    match (&found.store, &found.page) {
        (Some(store), Some(p)) => match bounded(read_one(store, p, t)).await {
            Some(step) => step,
            None => timed_out(READ, &t.endpoint),
        },
        _ => skip(READ, "not run: nothing listed"),
    }
}

/// HEAD and a small ranged GET of one object under the prefix (the first non-empty one
/// listed, looking deeper than the first level if needed).
async fn read_one<S: ObjectStore>(store: &S, first: &ListPage, t: &Target) -> Step {
    let pick = |objects: &[ObjectMeta]| {
        objects
            .iter()
            .find(|o| o.size > 0 && !o.key.ends_with('/'))
            .or_else(|| objects.iter().find(|o| !o.key.ends_with('/')))
            .cloned()
    };
    let mut chosen = pick(&first.objects).filter(|o| o.size > 0);
    if chosen.is_none() {
        // Only directories (or empty files) at the top: any object further down will do.
        match store
            .list_page(&t.source.prefix, false, ListFrom::Start, Some(1000))
            .await
        {
            Ok(p) => chosen = pick(&p.objects),
            Err(e) => {
                return store_failure(
                    READ,
                    &format!("ListObjectsV2 {} (without delimiter)", t.source),
                    &e,
                    t,
                    "s3:ListBucket",
                );
            }
        }
    }
    let Some(obj) = chosen else {
        return skip(
            READ,
            format!(
                "no object under {} to read (the mount would be empty)",
                t.source
            ),
        );
    };
    let url = format!("s3://{}/{}", t.source.bucket, obj.key);
    let head = match store.head(&obj.key).await {
        Ok(h) => h,
        Err(e) => {
            return store_failure(READ, &format!("HEAD {url}"), &e, t, "s3:GetObject");
        }
    };
    if head.size == 0 {
        return ok(READ, format!("HEAD {url}: 0 bytes, nothing to GET"));
    }
    let want = head.size.min(GET_BYTES);
    let what = format!("GET {url} bytes 0-{}", want - 1);
    let mut body = match store
        .get_range(&obj.key, 0..want, &head.etag, head.size)
        .await
    {
        Ok(b) => b,
        Err(e) => return store_failure(READ, &what, &e, t, "s3:GetObject"),
    };
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got += c.len() as u64,
            Err(e) => return store_failure(READ, &what, &e, t, "s3:GetObject"),
        }
    }
    if got != want {
        return fail(
            READ,
            format!("{what}: {got} bytes received, {want} asked"),
            advice::TRUNCATED,
        );
    }
    ok(
        READ,
        format!("HEAD and GET of {url}: {got} of {} bytes read", head.size),
    )
}

/// Whether the mount may create files: a multipart upload under the prefix is started and
/// aborted (nothing is ever visible), and the bucket's rule for abandoned uploads is read.
async fn check_write<S: ObjectStore>(t: &Target, found: &mut Found<S>) -> Step {
    let Some(store) = &found.store else {
        return skip(WRITE, "not run: no store");
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = format!("{}.s3-oidc-mount-doctor-{nanos}", t.source.prefix);
    let url = format!("s3://{}/{key}", t.source.bucket);
    let id = match bounded(store.create_upload(&key)).await {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            return store_failure(
                WRITE,
                &format!("CreateMultipartUpload {url}"),
                &e,
                t,
                "s3:PutObject",
            );
        }
        None => return timed_out(WRITE, &t.endpoint),
    };
    match bounded(store.abort_upload(&key, &id)).await {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            return store_failure(
                WRITE,
                &format!("AbortMultipartUpload {url}"),
                &e,
                t,
                "s3:AbortMultipartUpload",
            );
        }
        None => return timed_out(WRITE, &t.endpoint),
    }
    let cleanup = match bounded(store.abandoned_upload_days()).await {
        Some(Ok(Some(days))) => {
            format!("the bucket aborts uploads abandoned for {days} days")
        }
        Some(Ok(None)) => format!(
            "WARNING: no lifecycle rule aborts abandoned uploads: {}",
            advice::LIFECYCLE_RULE
        ),
        Some(Err(e)) => {
            format!("cannot tell whether a lifecycle rule aborts abandoned uploads ({e})")
        }
        None => "cannot tell whether a lifecycle rule aborts abandoned uploads (timed out)".into(),
    };
    ok(
        WRITE,
        format!(
            "CreateMultipartUpload and AbortMultipartUpload under {}: allowed; {cleanup}",
            t.source
        ),
    )
}

/// The real environment: the metadata server, STS and S3 of the configuration.
pub struct RealEnv {
    cfg: AuthConfig,
    plan: Plan,
    s3: S3Options,
}

impl RealEnv {
    /// Decides the credential mode (as `mount` would) and describes what is checked.
    pub async fn new(cfg: AuthConfig, s3: S3Options, source: Source) -> (RealEnv, Target) {
        let plan = auth::plan(&cfg).await;
        let mode_reason = (cfg.mode == CredentialMode::Auto).then(|| {
            match plan.mode {
                CredentialMode::Gcp => "auto: a role is set and a metadata server answers",
                CredentialMode::TokenFile => {
                    "auto: a role and a token file are set, no metadata server answers"
                }
                _ => "auto: no role with a metadata server or token file",
            }
            .to_string()
        });
        let target = Target {
            source,
            mode: plan.mode,
            mode_reason,
            audience: cfg.audience.clone(),
            role_arn: plan.role_arn.clone(),
            token_file: plan.token_file.clone(),
            endpoint: s3
                .endpoint_url
                .clone()
                .unwrap_or_else(|| format!("AWS S3 in {}", s3.region)),
            sts_endpoint: cfg
                .sts_endpoint_url
                .clone()
                .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", cfg.sts_region)),
            metadata_url: plan.gcp.base_url().to_string(),
            session_policy: match &cfg.session_policy {
                auth::SessionPolicy::Auto => "auto".into(),
                auth::SessionPolicy::None => "none".into(),
                auth::SessionPolicy::File(p) => format!("@{}", p.display()),
            },
            access: cfg.access,
        };
        (RealEnv { cfg, plan, s3 }, target)
    }
}

impl Env for RealEnv {
    type Store = S3Store;

    async fn metadata(&self) -> Result<String, String> {
        self.plan
            .gcp
            .get("project/project-id", &[])
            .await
            .map(|p| p.trim().to_string())
            .map_err(|e| e.to_string())
    }

    async fn identity_token(&self) -> Result<IdToken, TokenError> {
        // Not through the refresher's check: an expired token is shown with its claims.
        match (&self.plan.mode, &self.plan.token_file) {
            (CredentialMode::TokenFile, Some(path)) => {
                TokenFile { path: path.clone() }.read_identity_token().await
            }
            (CredentialMode::TokenFile, None) => Err(TokenError::File {
                path: "(none)".into(),
                why: "--credentials token-file needs --token-file or AWS_WEB_IDENTITY_TOKEN_FILE"
                    .into(),
            }),
            _ => self.plan.gcp.mint_identity_token().await,
        }
    }

    async fn exchange(&self, token: &IdToken) -> Result<Session, ExchangeError> {
        let (_, exchanger) = auth::web_identity(&self.cfg, self.plan.clone())
            .await
            .map_err(ExchangeError::Config)?;
        exchanger
            .assume_role(token)
            .await
            .map_err(ExchangeError::Sts)
    }

    async fn aws_credentials(&self) -> Result<Credentials, String> {
        auth::aws_chain(&self.cfg.sts_region)
            .await
            .provide_credentials()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())
    }

    fn store(&self, credentials: Credentials) -> S3Store {
        S3Store::new(&self.s3, SharedCredentialsProvider::new(credentials), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fault::{FaultStore, Op, Rule};
    use crate::store::memory::MemoryStore;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::sync::Arc;

    const SIG: &str = "c2lnbmF0dXJlLW5vdC1zaG93bg";

    fn token(exp: u64) -> IdToken {
        let payload = format!(
            r#"{{"iss":"https://accounts.google.com","aud":"my-aud","azp":"1234","sub":"1234","exp":{exp}}}"#
        );
        IdToken::parse(format!(
            "{}.{}.{SIG}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        ))
        .unwrap()
    }

    fn denied() -> StoreError {
        StoreError::AccessDenied {
            code: "AccessDenied".into(),
            message: "HTTP 403".into(),
        }
    }

    struct FakeEnv {
        metadata_up: bool,
        token_exp: u64,
        sts: Option<StsError>,
        aws_chain: bool,
        store: Arc<FaultStore<MemoryStore>>,
    }

    impl FakeEnv {
        fn healthy() -> FakeEnv {
            let store = Arc::new(FaultStore::new(MemoryStore::new()));
            store.inner().put("data/dir/a.bin", vec![7u8; 5000]);
            store.inner().put("data/empty", Vec::new());
            FakeEnv {
                metadata_up: true,
                token_exp: now_unix() + 3600,
                sts: None,
                aws_chain: true,
                store,
            }
        }
    }

    impl Env for FakeEnv {
        type Store = Arc<FaultStore<MemoryStore>>;

        async fn metadata(&self) -> Result<String, String> {
            if self.metadata_up {
                Ok("test-project".into())
            } else {
                Err("metadata server http://127.0.0.1:1: unreachable (connection refused)".into())
            }
        }

        async fn identity_token(&self) -> Result<IdToken, TokenError> {
            Ok(token(self.token_exp))
        }

        async fn exchange(&self, t: &IdToken) -> Result<Session, ExchangeError> {
            if let Some(e) = &self.sts {
                return Err(ExchangeError::Sts(e.clone()));
            }
            let expiry = SystemTime::now() + Duration::from_secs(3600);
            Ok(Session {
                credentials: Credentials::new(
                    "AKIDFAKE",
                    "fake-secret",
                    Some("fake-session".into()),
                    Some(expiry),
                    "fake",
                ),
                expiry,
                assumed_role_arn: "arn:aws:sts::111:assumed-role/r/s".into(),
                subject: t.claims.sub.clone(),
                audience: t.claims.aud.clone(),
                provider: t.claims.iss.clone(),
            })
        }

        async fn aws_credentials(&self) -> Result<Credentials, String> {
            if self.aws_chain {
                Ok(Credentials::new(
                    "AKIDFAKE",
                    "fake-secret",
                    None,
                    None,
                    "env",
                ))
            } else {
                Err("no providers in chain provided credentials".into())
            }
        }

        fn store(&self, _c: Credentials) -> Self::Store {
            self.store.clone()
        }
    }

    fn target(mode: CredentialMode, prefix: &str) -> Target {
        Target {
            source: Source {
                bucket: "b".into(),
                prefix: prefix.into(),
            },
            mode,
            mode_reason: None,
            audience: "my-aud".into(),
            role_arn: Some("arn:aws:iam::111:role/r".into()),
            token_file: None,
            endpoint: "http://s3.test".into(),
            sts_endpoint: "http://sts.test".into(),
            metadata_url: "http://md.test".into(),
            session_policy: "auto".into(),
            access: policy::Access::default(),
        }
    }

    fn outcomes(r: &Report) -> Vec<(&str, Outcome)> {
        r.steps.iter().map(|s| (s.name, s.outcome)).collect()
    }

    #[tokio::test]
    async fn everything_passes() {
        let r = diagnose(&FakeEnv::healthy(), &target(CredentialMode::Gcp, "data/")).await;
        assert_eq!(
            outcomes(&r),
            [
                (METADATA, Outcome::Ok),
                (TOKEN, Outcome::Ok),
                (STS, Outcome::Ok),
                (LIST, Outcome::Ok),
                (READ, Outcome::Ok),
                (POLICY, Outcome::Info)
            ]
        );
        assert!(r.passed());
        assert!(r.policies.is_empty());
        let text = r.render();
        assert!(text.contains("aud=my-aud azp=1234 sub=1234"), "{text}");
        assert!(
            text.contains("s3://b/data/dir/a.bin: 1024 of 5000 bytes"),
            "{text}"
        );
        // The token is shown by its claims only.
        assert!(!text.contains(SIG) && !text.contains("eyJ"), "{text}");
        assert!(
            !text.contains("fake-secret") && !text.contains("fake-session"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_failure_skips_what_depends_on_it_and_shows_the_fix() {
        let mut env = FakeEnv::healthy();
        env.metadata_up = false;
        let r = diagnose(&env, &target(CredentialMode::Gcp, "data/")).await;
        assert!(!r.passed());
        assert_eq!(r.steps[0].outcome, Outcome::Fail);
        assert!(
            r.steps[0]
                .fix
                .as_deref()
                .unwrap()
                .contains("GCE_METADATA_HOST")
        );
        for s in &r.steps[1..5] {
            assert_eq!(s.outcome, Outcome::Skip, "{s:?}");
            assert!(s.detail.contains("metadata server failed"), "{s:?}");
        }
        // Not something a policy fixes: none shown.
        assert!(r.policies.is_empty());
        assert!(
            r.step(POLICY)
                .unwrap()
                .detail
                .contains("fix metadata server first")
        );

        let mut env = FakeEnv::healthy();
        env.sts = Some(StsError::Rejected {
            code: "AccessDenied".into(),
            message: "Not authorized".into(),
        });
        let r = diagnose(&env, &target(CredentialMode::Gcp, "data/")).await;
        let sts = r.step(STS).unwrap();
        assert_eq!(sts.outcome, Outcome::Fail);
        assert!(
            sts.detail.contains("AccessDenied") && sts.detail.contains("trust policy"),
            "{sts:?}"
        );
        assert!(
            sts.fix
                .as_deref()
                .unwrap()
                .contains("accounts.google.com:oaud = my-aud"),
            "{sts:?}"
        );
        assert_eq!(r.step(LIST).unwrap().outcome, Outcome::Skip);
        assert_eq!(r.policies.len(), 1, "the trust policy");
        assert_eq!(
            r.policies[0].1["Statement"][0]["Condition"]["StringEquals"]["accounts.google.com:aud"],
            "1234"
        );

        let mut env = FakeEnv::healthy();
        env.token_exp = now_unix() - 60;
        let r = diagnose(&env, &target(CredentialMode::Gcp, "data/")).await;
        let tok = r.step(TOKEN).unwrap();
        assert_eq!(tok.outcome, Outcome::Fail);
        assert!(tok.detail.contains("expired 1m00s ago"), "{tok:?}");
        assert_eq!(r.step(STS).unwrap().outcome, Outcome::Skip);
    }

    #[tokio::test]
    async fn refused_listing_and_reads_name_the_permission() {
        let env = FakeEnv::healthy();
        env.store.add(Rule::new(Op::List).fail(denied()));
        let r = diagnose(&env, &target(CredentialMode::Gcp, "data/")).await;
        let list = r.step(LIST).unwrap();
        assert_eq!(list.outcome, Outcome::Fail);
        let fix = list.fix.as_deref().unwrap();
        assert!(
            fix.contains("s3:ListBucket on arn:aws:s3:::b with s3:prefix \"data/\""),
            "{fix}"
        );
        assert_eq!(r.step(READ).unwrap().outcome, Outcome::Skip);
        assert_eq!(r.policies.len(), 1, "the permission policy");
        assert_eq!(
            r.policies[0].1["Statement"][1]["Resource"],
            "arn:aws:s3:::b/data/*"
        );

        let env = FakeEnv::healthy();
        env.store.add(Rule::new(Op::Head).fail(denied()));
        let r = diagnose(&env, &target(CredentialMode::Gcp, "data/")).await;
        let read = r.step(READ).unwrap();
        assert_eq!(read.outcome, Outcome::Fail);
        assert!(
            read.fix
                .as_deref()
                .unwrap()
                .contains("s3:GetObject on arn:aws:s3:::b/data/*"),
            "{read:?}"
        );
        assert!(!r.passed());
    }

    #[tokio::test]
    async fn a_short_or_failing_body_fails_the_read() {
        let env = FakeEnv::healthy();
        env.store
            .add(Rule::new(Op::GetRange).first(1).short_body(100));
        env.store
            .add(Rule::new(Op::GetRange).body_error(10, denied()));
        let r = diagnose(&env, &target(CredentialMode::Gcp, "data/")).await;
        let read = r.step(READ).unwrap();
        assert_eq!(read.outcome, Outcome::Fail);
        assert!(
            read.detail.contains("100 bytes received, 1024 asked"),
            "{read:?}"
        );
        assert_eq!(read.fix.as_deref(), Some(advice::TRUNCATED));
        // Refused half-way: the permission is named as for a refused GET.
        let r = diagnose(&env, &target(CredentialMode::Gcp, "data/")).await;
        let read = r.step(READ).unwrap();
        assert_eq!(read.outcome, Outcome::Fail);
        assert!(
            read.fix.as_deref().unwrap().contains("s3:GetObject"),
            "{read:?}"
        );
        assert_eq!(env.store.calls(Op::GetRange), 2);
    }

    #[tokio::test]
    async fn aws_mode_skips_the_identity_steps() {
        let env = FakeEnv::healthy();
        let r = diagnose(&env, &target(CredentialMode::Aws, "data/")).await;
        assert_eq!(
            outcomes(&r),
            [
                (METADATA, Outcome::Skip),
                (TOKEN, Outcome::Skip),
                (AWS_CHAIN, Outcome::Ok),
                (LIST, Outcome::Ok),
                (READ, Outcome::Ok),
                (POLICY, Outcome::Info)
            ]
        );
        assert!(r.passed());
        let mut env = FakeEnv::healthy();
        env.aws_chain = false;
        let r = diagnose(&env, &target(CredentialMode::Aws, "data/")).await;
        assert_eq!(r.step(AWS_CHAIN).unwrap().outcome, Outcome::Fail);
        assert!(!r.passed());
    }

    #[tokio::test]
    async fn an_empty_prefix_passes_with_nothing_to_read() {
        let r = diagnose(
            &FakeEnv::healthy(),
            &target(CredentialMode::Gcp, "nothing/"),
        )
        .await;
        assert_eq!(r.step(READ).unwrap().outcome, Outcome::Skip);
        assert!(r.passed());
        // Only directories at the top: an object further down is read.
        let r = diagnose(&FakeEnv::healthy(), &target(CredentialMode::Gcp, "")).await;
        let read = r.step(READ).unwrap();
        assert_eq!(read.outcome, Outcome::Ok, "{read:?}");
        assert!(read.detail.contains("data/dir/a.bin"), "{read:?}");
    }
}
