//! Where AWS credentials come from. They live only in memory and reach the S3 client through
//! `ProvideCredentials`.
//!
//! - `gcp`: an ID token from the GCP metadata server, exchanged with STS
//!   AssumeRoleWithWebIdentity, renewed in the background (`refresh`);
//! - `token-file`: the same with a token file that something else rotates (Kubernetes);
//! - `aws`: the standard AWS chain (environment, profile, SSO), for local development.

pub mod jwt;
pub mod policy;
pub mod refresh;
pub mod sts;
pub mod token;

use std::path::PathBuf;
use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_types::region::Region;

use crate::util::env_nonempty;
use refresh::Refresher;
use sts::{StsConfig, StsExchanger};
use token::{GcpMetadata, TokenFile, TokenSource};

/// `--credentials`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialMode {
    /// gcp if a role ARN is given and a metadata server answers; token-file if a token file
    /// is configured; else the AWS chain.
    Auto,
    Gcp,
    TokenFile,
    Aws,
}

/// `--session-policy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionPolicy {
    /// Generated from the mount: this bucket and prefix, read-only.
    Auto,
    None,
    File(PathBuf),
}

pub fn parse_session_policy(s: &str) -> Result<SessionPolicy, String> {
    match s {
        "auto" => Ok(SessionPolicy::Auto),
        "none" => Ok(SessionPolicy::None),
        f if f.starts_with('@') && f.len() > 1 => {
            // Read at each exchange; a file that is not there is a typo, said at once.
            let path = PathBuf::from(&f[1..]);
            if path.is_file() {
                Ok(SessionPolicy::File(path))
            } else {
                Err(format!("session policy file {:?} does not exist", path))
            }
        }
        _ => Err(format!("{s:?}: use auto, none or @FILE")),
    }
}

/// The audience requested when none is given. It must match the role's trust policy
/// (`accounts.google.com:oaud`).
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub mode: CredentialMode,
    pub role_arn: Option<String>,
    pub audience: String,
    pub token_file: Option<PathBuf>,
    /// `host[:port]` of the metadata server; default `GCE_METADATA_HOST` or metadata.google.internal.
    pub metadata_host: Option<String>,
    pub sts_region: String,
    pub sts_endpoint_url: Option<String>,
    pub session_duration: Duration,
    pub session_name: Option<String>,
    pub session_policy: SessionPolicy,
    pub refresh_margin: Duration,
    /// The mount, for the generated session policy.
    pub bucket: String,
    pub prefix: String,
    /// What the mount does there, for the generated session policy.
    pub access: policy::Access,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Config(String),
    #[error("cannot get an identity token from the {source_desc}: {why}")]
    Token {
        source_desc: String,
        why: String,
        transient: bool,
    },
    #[error("assuming role {role} failed: {error}{}", if hint.is_empty() { String::new() } else { format!("; {hint}") })]
    Sts {
        role: String,
        error: String,
        hint: String,
        transient: bool,
    },
}

impl AuthError {
    pub fn is_transient(&self) -> bool {
        match self {
            AuthError::Config(_) => false,
            AuthError::Token { transient, .. } | AuthError::Sts { transient, .. } => *transient,
        }
    }
}

/// What the S3 client gets.
pub struct Resolved {
    pub provider: SharedCredentialsProvider,
    /// Our refresher answers from memory and must see every request (so the SDK's own
    /// identity cache is turned off); the AWS chain wants the SDK cache.
    pub sdk_cache: bool,
    pub refresher: Option<Refresher>,
    pub mode: CredentialMode,
}

/// The credential mode, the role and the token file, with their environment defaults;
/// `auto` is decided here (gcp if a role is given and a metadata server answers, token-file
/// if a role and a token file are given, else the AWS chain).
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: CredentialMode,
    pub role_arn: Option<String>,
    pub token_file: Option<PathBuf>,
    pub gcp: GcpMetadata,
}

pub async fn plan(cfg: &AuthConfig) -> Plan {
    let role_arn = cfg
        .role_arn
        .clone()
        .or_else(|| env_nonempty("AWS_ROLE_ARN"));
    let token_file = cfg
        .token_file
        .clone()
        .or_else(|| env_nonempty("AWS_WEB_IDENTITY_TOKEN_FILE").map(PathBuf::from));
    let gcp = GcpMetadata::new(cfg.metadata_host.clone(), &cfg.audience);
    let mode = match cfg.mode {
        CredentialMode::Auto => {
            if role_arn.is_some() && gcp.answers().await {
                CredentialMode::Gcp
            } else if token_file.is_some() && role_arn.is_some() {
                CredentialMode::TokenFile
            } else {
                CredentialMode::Aws
            }
        }
        m => m,
    };
    Plan {
        mode,
        role_arn,
        token_file,
        gcp,
    }
}

/// Picks the mode and builds the provider; for web identity this performs the first
/// exchange, so configuration errors surface here, before mounting.
pub async fn resolve(cfg: &AuthConfig) -> Result<Resolved, AuthError> {
    let plan = plan(cfg).await;
    let mode = plan.mode;
    tracing::info!(mode = ?mode, "credentials mode");
    if matches!(mode, CredentialMode::Aws | CredentialMode::Auto) {
        return Ok(Resolved {
            provider: aws_chain(&cfg.sts_region).await,
            sdk_cache: true,
            refresher: None,
            mode,
        });
    }
    let (source, exchanger) = web_identity(cfg, plan).await?;
    let refresher = Refresher::start(source, Box::new(exchanger), cfg.refresh_margin).await?;
    Ok(Resolved {
        provider: SharedCredentialsProvider::new(refresher.clone()),
        sdk_cache: false,
        refresher: Some(refresher),
        mode,
    })
}

/// The token source and the STS exchange of a web-identity mode (gcp, token-file), checked
/// (role ARN, session policy) but not used yet.
pub async fn web_identity(
    cfg: &AuthConfig,
    plan: Plan,
) -> Result<(Box<dyn TokenSource>, StsExchanger), AuthError> {
    let Plan {
        mode,
        role_arn,
        token_file,
        gcp,
    } = plan;
    let source: Box<dyn TokenSource> = match mode {
        CredentialMode::Aws | CredentialMode::Auto => {
            return Err(AuthError::Config(
                "web identity needs --credentials gcp or token-file".into(),
            ));
        }
        CredentialMode::Gcp => Box::new(gcp.clone()),
        CredentialMode::TokenFile => Box::new(TokenFile {
            path: token_file.ok_or_else(|| {
                AuthError::Config(
                    "--credentials token-file needs --token-file or AWS_WEB_IDENTITY_TOKEN_FILE"
                        .into(),
                )
            })?,
        }),
    };
    let role_arn = role_arn.ok_or_else(|| {
        AuthError::Config(format!(
            "--credentials {} needs --role-arn (or AWS_ROLE_ARN): the IAM role to assume",
            if mode == CredentialMode::Gcp {
                "gcp"
            } else {
                "token-file"
            }
        ))
    })?;
    check_role_arn(&role_arn)?;
    let policy = match &cfg.session_policy {
        SessionPolicy::None => None,
        SessionPolicy::Auto => Some(
            policy::session_policy(
                policy::partition(&role_arn),
                &cfg.bucket,
                &cfg.prefix,
                cfg.access,
            )
            .map_err(AuthError::Config)?,
        ),
        SessionPolicy::File(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| AuthError::Config(format!("session policy {}: {e}", p.display())))?;
            Some(
                policy::check_session_policy(&text).map_err(|e| {
                    AuthError::Config(format!("session policy {}: {e}", p.display()))
                })?,
            )
        }
    };
    let session_name = match &cfg.session_name {
        Some(n) => sts::sanitize_session_name(n),
        None => {
            // The instance id ties the session to one Cloud Run instance in the logs.
            let id = match mode {
                CredentialMode::Gcp => gcp
                    .get("instance/id", &[])
                    .await
                    .ok()
                    .map(|z| z.to_string()),
                _ => None,
            };
            sts::workload_session_name(id.as_deref())
        }
    };
    let exchanger = StsExchanger::new(StsConfig {
        role_arn,
        region: cfg.sts_region.clone(),
        endpoint_url: cfg.sts_endpoint_url.clone(),
        session_name,
        duration: cfg.session_duration,
        policy,
    });
    Ok((source, exchanger))
}

/// `--role-arn`: checked when given, whatever the credential mode.
pub fn parse_role_arn(s: &str) -> Result<String, String> {
    check_role_arn(s).map_err(|e| match e {
        AuthError::Config(m) => m,
        other => other.to_string(),
    })?;
    Ok(s.to_string())
}

fn check_role_arn(arn: &str) -> Result<(), AuthError> {
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() == 6 && parts[0] == "arn" && parts[2] == "iam" && parts[5].starts_with("role/") {
        Ok(())
    } else {
        Err(AuthError::Config(format!(
            "{arn:?} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        )))
    }
}

/// The standard AWS chain (environment, profile, SSO, process, then container/instance
/// metadata).
pub async fn aws_chain(region: &str) -> SharedCredentialsProvider {
    let chain = DefaultCredentialsChain::builder()
        .region(Region::new(region.to_string()))
        .build()
        .await;
    SharedCredentialsProvider::new(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_policy_flag() {
        assert_eq!(parse_session_policy("auto").unwrap(), SessionPolicy::Auto);
        assert_eq!(parse_session_policy("none").unwrap(), SessionPolicy::None);
        let f = tempfile::NamedTempFile::new().unwrap();
        let at = format!("@{}", f.path().display());
        assert_eq!(
            parse_session_policy(&at).unwrap(),
            SessionPolicy::File(f.path().into())
        );
        assert!(parse_session_policy("@/nonexistent/p.json").is_err());
        assert!(parse_session_policy("@").is_err());
        assert!(parse_session_policy("strict").is_err());
    }

    #[test]
    fn role_arns() {
        assert!(check_role_arn("arn:aws:iam::123456789012:role/reader").is_ok());
        assert!(check_role_arn("arn:aws:iam:::role/reader").is_ok());
        assert!(check_role_arn("arn:aws:s3:::bucket").is_err());
        assert!(check_role_arn("reader").is_err());
    }
}
