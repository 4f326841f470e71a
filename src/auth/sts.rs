//! The exchange: STS AssumeRoleWithWebIdentity (sent unsigned: the identity token is the
//! proof), with a session named after the workload and a session policy.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;
use futures::future::BoxFuture;

use super::jwt::{Claims, IdToken};

#[derive(Clone, Debug)]
pub struct StsConfig {
    pub role_arn: String,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub session_name: String,
    pub duration: Duration,
    /// Inline session policy (compact JSON), or none.
    pub policy: Option<String>,
}

/// What one exchange gave: the credentials (secret parts zeroed on drop by their type) and
/// the facts worth logging.
#[derive(Clone, Debug)]
pub struct Session {
    pub credentials: Credentials,
    pub expiry: SystemTime,
    pub assumed_role_arn: String,
    pub subject: String,
    pub audience: String,
    pub provider: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StsError {
    /// The token expired on the way: fetch a new one and try again.
    #[error("STS says the identity token expired ({message})")]
    ExpiredToken { message: String },
    /// STS, the network or the identity provider failed for now.
    #[error("STS {code}: {message}")]
    Transient { code: String, message: String },
    /// The setup is wrong (trust policy, role, policy, region); retrying will not help.
    #[error("STS refused ({code}): {message}")]
    Rejected { code: String, message: String },
}

impl StsError {
    pub fn is_transient(&self) -> bool {
        !matches!(self, StsError::Rejected { .. })
    }
}

/// Trades an identity token for AWS credentials. A boxed future keeps the trait usable as
/// `dyn Exchanger` (tests put a fake in its place).
pub trait Exchanger: Send + Sync {
    fn exchange<'a>(&'a self, token: &'a IdToken) -> BoxFuture<'a, Result<Session, StsError>>;
    /// The role assumed, for messages.
    fn role_arn(&self) -> &str;
    /// The RoleSessionName sent, for the log.
    fn session_name(&self) -> &str;
}

/// STS AssumeRoleWithWebIdentity.
pub struct StsExchanger {
    client: aws_sdk_sts::Client,
    cfg: StsConfig,
}

impl StsExchanger {
    pub fn new(cfg: StsConfig) -> Self {
        let mut b = aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new(cfg.region.clone()))
            .retry_config(aws_sdk_sts::config::retry::RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                aws_sdk_sts::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .build(),
            );
        if let Some(url) = &cfg.endpoint_url {
            b = b.endpoint_url(url);
        }
        // No credentials provider: AssumeRoleWithWebIdentity goes out unsigned.
        StsExchanger {
            client: aws_sdk_sts::Client::from_conf(b.build()),
            cfg,
        }
    }

    pub async fn assume_role(&self, token: &IdToken) -> Result<Session, StsError> {
        let out = self
            .client
            .assume_role_with_web_identity()
            .role_arn(&self.cfg.role_arn)
            .role_session_name(&self.cfg.session_name)
            .web_identity_token(token.secret())
            .duration_seconds(self.cfg.duration.as_secs().clamp(900, 43_200) as i32)
            .set_policy(self.cfg.policy.clone())
            .send()
            .await
            .map_err(classify)?;
        let c = out.credentials().ok_or_else(|| StsError::Transient {
            code: "NoCredentials".into(),
            message: "the STS answer had no credentials".into(),
        })?;
        let expiry = SystemTime::try_from(*c.expiration()).map_err(|_| StsError::Transient {
            code: "BadExpiration".into(),
            message: "the STS answer had an unreadable expiration".into(),
        })?;
        let credentials = Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            Some(expiry),
            "s3-oidc-mount-web-identity",
        );
        Ok(Session {
            credentials,
            expiry,
            assumed_role_arn: out
                .assumed_role_user()
                .map(|u| u.arn().to_string())
                .unwrap_or_default(),
            subject: out
                .subject_from_web_identity_token()
                .map(str::to_string)
                .unwrap_or_else(|| token.claims.sub.clone()),
            audience: out
                .audience()
                .map(str::to_string)
                .unwrap_or_else(|| token.claims.aud.clone()),
            provider: out
                .provider()
                .map(str::to_string)
                .unwrap_or_else(|| token.claims.iss.clone()),
        })
    }
}

impl Exchanger for StsExchanger {
    fn exchange<'a>(&'a self, token: &'a IdToken) -> BoxFuture<'a, Result<Session, StsError>> {
        Box::pin(self.assume_role(token))
    }

    fn role_arn(&self) -> &str {
        &self.cfg.role_arn
    }

    fn session_name(&self) -> &str {
        &self.cfg.session_name
    }
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim().to_string()).filter(|t| !t.is_empty())
}

fn classify<E>(
    err: SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> StsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::ServiceError(se) = &err {
        // Some STS implementations (Ceph RGW) answer with a bare <Error> document the SDK
        // cannot parse: read the code from the body then.
        let body = se.raw().body().bytes().map(String::from_utf8_lossy);
        let from_body = |tag: &str| body.as_deref().and_then(|b| xml_text(b, tag));
        let code = se
            .err()
            .code()
            .map(str::to_string)
            .or_else(|| from_body("Code"))
            .unwrap_or_else(|| format!("HTTP {}", se.raw().status().as_u16()));
        let message = se
            .err()
            .message()
            .map(str::to_string)
            .or_else(|| from_body("Message"))
            .unwrap_or_default();
        return match code.as_str() {
            "ExpiredTokenException" | "ExpiredToken" => StsError::ExpiredToken { message },
            // Configuration errors: asking again cannot help.
            "AccessDenied"
            | "InvalidIdentityToken"
            | "IDPRejectedClaim"
            | "MalformedPolicyDocument"
            | "PackedPolicyTooLarge"
            | "RegionDisabledException"
            | "InvalidParameterValue"
            | "InvalidArgument"
            | "ValidationError"
            | "MissingParameter"
            | "InvalidAction"
            | "InvalidClientTokenId"
            | "NoSuchEntity" => StsError::Rejected { code, message },
            // Throttling, 5xx, and anything unexpected (RGW answers BucketAlreadyExists when
            // two first exchanges of one subject race): retried, bounded.
            _ => StsError::Transient { code, message },
        };
    }
    StsError::Transient {
        code: "NetworkError".into(),
        message: DisplayErrorContext(&err).to_string().replace('\n', " "),
    }
}

/// Characters STS allows in a RoleSessionName.
fn session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// A RoleSessionName (2-64 of `[A-Za-z0-9_+=,.@-]`) from any text.
pub fn sanitize_session_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| if session_char(c) { c } else { '-' })
        .collect();
    s.truncate(64);
    while s.len() < 2 {
        s.push('-');
    }
    s
}

/// The session name that makes CloudTrail entries match the workload: the Cloud Run
/// revision (or job execution and task) plus the instance id's tail, else the host name.
pub fn workload_session_name(instance_id: Option<&str>) -> String {
    let env = crate::util::env_nonempty;
    let base = if let Some(exec) = env("CLOUD_RUN_EXECUTION") {
        match env("CLOUD_RUN_TASK_INDEX") {
            Some(i) => format!("{exec}.t{i}"),
            None => exec,
        }
    } else if let Some(rev) = env("K_REVISION") {
        rev
    } else if let Some(svc) = env("K_SERVICE") {
        svc
    } else {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        format!("s3-oidc-mount.{host}")
    };
    // The instance tail is kept whole; the workload part gives way if too long.
    let tail = instance_id
        .map(|i| {
            let i: String = i.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
            i[i.len().saturating_sub(12)..].to_string()
        })
        .filter(|t| !t.is_empty());
    let raw = match tail {
        Some(t) => {
            let room = 64 - 1 - t.len();
            let head: String = base.chars().take(room).collect();
            format!("{head}.{t}")
        }
        None => base,
    };
    sanitize_session_name(&raw)
}

/// The condition keys a trust policy compares with a token's claims, for error messages:
/// for Google, `:aud` is the token's `azp` and `:oaud` its `aud`.
pub fn trust_hint(c: &Claims) -> String {
    let azp = c.azp.as_deref().unwrap_or("-");
    let provider = c
        .iss
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if provider == "accounts.google.com" {
        format!(
            "token claims iss={} aud={} azp={azp} sub={}; the role's trust policy must allow \
             Principal {{\"Federated\":\"accounts.google.com\"}} with accounts.google.com:aud = {azp}, \
             accounts.google.com:oaud = {}, accounts.google.com:sub = {} \
             (a common mistake: the audience under :aud instead of :oaud)",
            c.iss, c.aud, c.sub, c.aud, c.sub
        )
    } else {
        format!(
            "token claims iss={} aud={} azp={azp} sub={}; the role's trust policy must allow the OIDC \
             provider {provider} (registered with this audience as a client id) with \
             {provider}:aud (Ceph: {provider}:app_id) = {} and {provider}:sub = {}",
            c.iss, c.aud, c.sub, c.aud, c.sub
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_valid() {
        assert_eq!(sanitize_session_name("a b/c"), "a-b-c");
        assert_eq!(sanitize_session_name("x"), "x-");
        assert_eq!(sanitize_session_name(&"y".repeat(100)).len(), 64);
        let n = workload_session_name(Some("00bf4bf02d2c3a8f9e0a1b2c3d4e5f6a7b8c9d0e"));
        assert!(n.len() <= 64 && n.chars().all(session_char), "{n}");
        assert!(n.ends_with(".8c9d0e") || n.contains('.'), "{n}");
    }

    #[test]
    fn xml_codes() {
        let b = "<Error><Code>AccessDenied</Code><Message></Message></Error>";
        assert_eq!(xml_text(b, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(xml_text(b, "Message"), None);
        assert_eq!(xml_text(b, "RequestId"), None);
    }

    #[test]
    fn hints_name_the_condition_keys() {
        let c = Claims {
            iss: "https://accounts.google.com".into(),
            aud: "my-aud".into(),
            azp: Some("1234".into()),
            sub: "1234".into(),
            ..Claims::default()
        };
        let h = trust_hint(&c);
        assert!(h.contains("accounts.google.com:oaud = my-aud"), "{h}");
        assert!(h.contains("accounts.google.com:aud = 1234"), "{h}");
    }
}
