//! Where identity tokens come from: the GCP metadata server (Cloud Run, GCE, GKE) or a
//! token file (Kubernetes projected tokens, `AWS_WEB_IDENTITY_TOKEN_FILE`).

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use zeroize::Zeroizing;

use super::jwt::IdToken;

/// Default metadata server host, overridable with `GCE_METADATA_HOST` (as Google's libraries do).
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("metadata server {url}: {why}")]
    Metadata { url: String, why: String },
    #[error("metadata server {url} timed out after {secs} s")]
    MetadataTimeout { url: String, secs: u64 },
    #[error("token file {path}: {why}")]
    File { path: String, why: String },
    #[error("identity token from {from} is unusable: {why}")]
    Invalid { from: String, why: String },
}

impl TokenError {
    /// Whether trying again later may help (the server was down or slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TokenError::Metadata { .. }
                | TokenError::MetadataTimeout { .. }
                | TokenError::File { .. }
        )
    }
}

/// Where the refresher gets identity tokens. A boxed future keeps the trait usable as
/// `dyn TokenSource` (the mode is chosen at run time; tests put fakes in its place).
pub trait TokenSource: Send + Sync {
    /// A token as the source has it now: the metadata server mints a new one, a file is
    /// read again.
    fn identity_token(&self) -> BoxFuture<'_, Result<IdToken, TokenError>>;
    /// Which source, for messages (`GCP metadata server URL`, `token file PATH`).
    fn describe(&self) -> String;
    /// Whether one token may serve several exchanges while it lasts: yes where each call
    /// mints a new one (GCP), no for a file that something else rotates.
    fn reuse_tokens(&self) -> bool;
}

/// A token that has expired already, refused before it goes to STS (`now` in unix seconds).
pub fn unexpired(t: IdToken, from: &dyn TokenSource, now: u64) -> Result<IdToken, TokenError> {
    if t.claims.exp != 0 && t.remaining(now) == 0 {
        return Err(TokenError::Invalid {
            from: from.describe(),
            why: format!("the token expired at {} (unix time)", t.claims.exp),
        });
    }
    Ok(t)
}

/// The GCP metadata server.
#[derive(Clone, Debug)]
pub struct GcpMetadata {
    base: String,
    audience: String,
    client: reqwest::Client,
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

impl GcpMetadata {
    /// `host` is `host[:port]` as in `GCE_METADATA_HOST`; `None` uses that variable or the default.
    pub fn new(host: Option<String>, audience: &str) -> Self {
        let host = host
            .or_else(|| crate::util::env_nonempty("GCE_METADATA_HOST"))
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_string());
        let base = if host.starts_with("http://") || host.starts_with("https://") {
            host.trim_end_matches('/').to_string()
        } else {
            format!("http://{host}")
        };
        let client = reqwest::Client::builder()
            // The metadata server is link-local: never through a proxy.
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(METADATA_TIMEOUT)
            .build()
            .unwrap_or_default();
        GcpMetadata {
            base,
            audience: audience.to_string(),
            client,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// GET of a metadata path (relative to /computeMetadata/v1/), checking that the answer
    /// really comes from a metadata server.
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Zeroizing<String>, TokenError> {
        let url = format!("{}/computeMetadata/v1/{path}", self.base);
        let err = |why: String| TokenError::Metadata {
            url: url.clone(),
            why,
        };
        let resp = self
            .client
            .get(&url)
            .query(query)
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    TokenError::MetadataTimeout {
                        url: url.clone(),
                        secs: METADATA_TIMEOUT.as_secs(),
                    }
                } else {
                    err(format!("unreachable ({})", error_chain(&e)))
                }
            })?;
        let status = resp.status();
        let flavor_ok = resp
            .headers()
            .get("Metadata-Flavor")
            .is_some_and(|v| v.as_bytes() == b"Google");
        let body = Zeroizing::new(resp.text().await.map_err(|e| err(error_chain(&e)))?);
        if !status.is_success() {
            // Error bodies carry no secret, but keep them short.
            let snippet: String = body.chars().take(200).collect();
            return Err(err(format!("HTTP {status}: {}", snippet.trim())));
        }
        if !flavor_ok {
            return Err(err(
                "the answer lacks the header Metadata-Flavor: Google, so it is not a GCP metadata server".into(),
            ));
        }
        Ok(body)
    }

    /// Whether a metadata server answers at all (used by `--credentials auto`).
    pub async fn answers(&self) -> bool {
        let probe = tokio::time::timeout(
            Duration::from_millis(1500),
            self.get("project/project-id", &[]),
        );
        matches!(probe.await, Ok(Ok(_)))
    }

    /// A new ID token for this service account with our audience.
    pub async fn mint_identity_token(&self) -> Result<IdToken, TokenError> {
        let body = self
            .get(
                "instance/service-accounts/default/identity",
                &[("audience", self.audience.as_str()), ("format", "standard")],
            )
            .await?;
        IdToken::parse(body.to_string()).map_err(|e| TokenError::Invalid {
            from: self.base.clone(),
            why: e.to_string(),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A token file that something else keeps fresh (kubelet): read again for each exchange.
#[derive(Clone, Debug)]
pub struct TokenFile {
    pub path: PathBuf,
}

impl TokenFile {
    pub async fn read_identity_token(&self) -> Result<IdToken, TokenError> {
        let err = |why: String| TokenError::File {
            path: self.path.display().to_string(),
            why,
        };
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map(Zeroizing::new)
            .map_err(|e| err(e.to_string()))?;
        if text.trim().is_empty() {
            return Err(err("file is empty".into()));
        }
        IdToken::parse(text.to_string()).map_err(|e| TokenError::Invalid {
            from: self.path.display().to_string(),
            why: e.to_string(),
        })
    }
}

impl TokenSource for GcpMetadata {
    fn identity_token(&self) -> BoxFuture<'_, Result<IdToken, TokenError>> {
        Box::pin(self.mint_identity_token())
    }

    fn describe(&self) -> String {
        format!("GCP metadata server {}", self.base)
    }

    fn reuse_tokens(&self) -> bool {
        true
    }
}

impl TokenSource for TokenFile {
    fn identity_token(&self) -> BoxFuture<'_, Result<IdToken, TokenError>> {
        Box::pin(self.read_identity_token())
    }

    fn describe(&self) -> String {
        format!("token file {}", self.path.display())
    }

    fn reuse_tokens(&self) -> bool {
        false
    }
}
