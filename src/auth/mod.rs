//! Where AWS credentials come from. Credentials live only in memory and reach the S3
//! client through `ProvideCredentials`. Today: the standard AWS chain (environment,
//! profile, SSO, process). The keyless modes (GCP metadata server and token file,
//! exchanged with STS AssumeRoleWithWebIdentity) plug in here.

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_types::region::Region;

/// How the daemon obtains credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// The standard AWS credential chain, for local development and tests.
    AwsChain,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Config(String),
}

/// Builds the credentials provider the S3 client uses.
pub async fn provider(
    source: &CredentialSource,
    region: &str,
) -> Result<SharedCredentialsProvider, AuthError> {
    match source {
        CredentialSource::AwsChain => {
            let conf = aws_config::provider_config::ProviderConfig::default()
                .with_region(Some(Region::new(region.to_string())));
            let chain = DefaultCredentialsChain::builder()
                .configure(conf)
                .region(Region::new(region.to_string()))
                .build()
                .await;
            Ok(SharedCredentialsProvider::new(chain))
        }
    }
}
