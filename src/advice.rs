//! What to do about a failure, written once: `doctor` prints it after "fix:", the mount's
//! checks (`mount::preflight`, the FUSE checks) in their error, so the same failure gets the
//! same fix text in both.

use crate::auth::CredentialMode;

/// The metadata server does not answer.
pub const METADATA_UNAVAILABLE: &str = "run on GCP (Cloud Run, GCE, GKE with Workload Identity) or set \
     GCE_METADATA_HOST to an emulator; elsewhere use --credentials token-file or aws";

/// No identity token from the metadata server.
pub const TOKEN_GCP: &str = "the workload must run as a service account (Cloud Run: --service-account; \
     GKE: Workload Identity) and the metadata server must serve identity tokens";

/// No identity token from the token file.
pub const TOKEN_FILE: &str = "--token-file (or AWS_WEB_IDENTITY_TOKEN_FILE) must name a readable file \
     holding one JWT, e.g. a Kubernetes projected service account token";

pub const TOKEN_EXPIRED: &str = "the token has expired: for a token file, whatever rotates it has \
     stopped; check the clock";

/// The web-identity setup is incomplete (no role, say).
pub const NO_ROLE: &str = "give the role with --role-arn (or AWS_ROLE_ARN); `s3-oidc-mount policy` \
     prints its policies";

/// The standard AWS chain has no credentials.
pub const AWS_CHAIN_EMPTY: &str = "set AWS_PROFILE (after `aws sso login`) or \
     AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use --credentials gcp or token-file with --role-arn";

/// S3 failed for lack of credentials, after the credential checks.
pub const SEE_CREDENTIAL_STEPS: &str = "see the credential steps above";

/// Something did not answer in time.
pub const TIMED_OUT: &str =
    "check the endpoint and the network; a firewall that drops packets shows this way";

pub const NO_SUCH_BUCKET: &str = "check the bucket name, --endpoint-url and --region";

pub const S3_UNREACHABLE: &str = "check --endpoint-url, --region and the network";

/// Any other S3 failure.
pub const S3_OTHER: &str = "retry; if it persists, the message says what S3 objects to";

/// Fewer bytes than asked, with a success status.
pub const TRUNCATED: &str = "a proxy or the server truncates responses";

pub const FUSE_MISSING: &str = "/dev/fuse is missing: load the fuse module, or run the container \
     with --device /dev/fuse (on Cloud Run: the gen2 execution environment)";

/// Opening /dev/fuse failed for another reason than its absence.
pub const FUSE_UNOPENABLE: &str = "in Docker: --device /dev/fuse";

pub const NO_CAP_SYS_ADMIN: &str = "running as root without CAP_SYS_ADMIN, which mounting needs \
     (in Docker: --cap-add SYS_ADMIN; on Cloud Run: the gen2 execution environment)";

/// The mount(2) call itself was refused.
pub const MOUNT_NOT_PERMITTED: &str = "mounting needs root or CAP_SYS_ADMIN (in Docker: --cap-add \
     SYS_ADMIN --device /dev/fuse), or a setuid fusermount3 (apt-get install fuse3)";

/// The S3 permission `action` (`s3:ListBucket` or `s3:GetObject`) on the mounted prefix, as a
/// policy must name it.
pub fn s3_permission(partition: &str, bucket: &str, prefix: &str, action: &str) -> String {
    let bucket_arn = format!("arn:{partition}:s3:::{bucket}");
    if action != "s3:ListBucket" {
        format!("s3:GetObject on {bucket_arn}/{prefix}*")
    } else if prefix.is_empty() {
        format!("s3:ListBucket on {bucket_arn}")
    } else {
        format!("s3:ListBucket on {bucket_arn} with s3:prefix \"{prefix}\" and \"{prefix}*\"")
    }
}

/// What the identity needs for a refused S3 request (`permission`: from [`s3_permission`]),
/// and whether the session policy (`--session-policy`, web-identity modes) matters too.
pub fn s3_refused(permission: &str, mode: CredentialMode, session_policy: &str) -> String {
    let session = match mode {
        CredentialMode::Gcp | CredentialMode::TokenFile => match session_policy {
            "auto" => "; the session policy (--session-policy auto) allows exactly this already"
                .to_string(),
            "none" => String::new(),
            other => format!("; the session policy {other} must allow it too"),
        },
        _ => String::new(),
    };
    format!("the identity's permission policy must allow {permission} (see below){session}")
}

/// What the STS exchange needs to be told, for messages.
pub struct StsContext<'a> {
    /// The trust-policy hint for the token's claims (empty without a token).
    pub trust_hint: &'a str,
    pub role_arn: Option<&'a str>,
    pub sts_endpoint: &'a str,
    pub session_policy: &'a str,
}

/// What an STS error code usually means, and what to do.
pub fn sts(code: &str, c: &StsContext<'_>) -> (&'static str, String) {
    let hint = c.trust_hint;
    match code {
        "AccessDenied" | "IDPRejectedClaim" => (
            "the role's trust policy does not accept this token",
            format!(
                "{}; or, if the role is right, request the audience it trusts (--audience) as the \
                 service account it trusts",
                if hint.is_empty() {
                    "compare the role's trust policy with the token's claims"
                } else {
                    hint
                }
            ),
        ),
        "InvalidIdentityToken" => (
            "STS could not validate the token (issuer not trusted, or a key or thumbprint mismatch)",
            format!(
                "for Google tokens trust Principal {{\"Federated\":\"accounts.google.com\"}} and create no IAM \
                 OIDC provider for Google; for other issuers register the issuer as an IAM OIDC provider with \
                 this audience as a client id; {hint}"
            ),
        ),
        "ExpiredTokenException" | "ExpiredToken" => (
            "the token had expired when STS checked it",
            "check the clock of this machine; for a token file, whatever rotates it has stopped".into(),
        ),
        "MalformedPolicyDocument" | "PackedPolicyTooLarge" => (
            "STS refused the session policy",
            format!(
                "--session-policy {} was refused: use --session-policy none, or a valid, smaller @FILE",
                c.session_policy
            ),
        ),
        "NoSuchEntity" => (
            "the role does not exist",
            format!("check --role-arn {}", c.role_arn.unwrap_or("(none)")),
        ),
        "ValidationError" | "MissingParameter" | "InvalidParameterValue" => (
            "STS refused a parameter",
            "--session-duration must not exceed the role's MaxSessionDuration (default 1h); check --role-arn"
                .into(),
        ),
        "RegionDisabledException" => (
            "STS is not activated in this region",
            "activate the region in the IAM account settings, or use --sts-region with an active one"
                .into(),
        ),
        "InvalidClientTokenId" => (
            "STS did not accept the request's credentials",
            "AssumeRoleWithWebIdentity is sent unsigned: usually the STS region is not enabled for \
             the account (--sts-region), or something between us and STS signs it with other keys"
                .into(),
        ),
        "InvalidAction" | "InvalidArgument" => (
            "the endpoint does not take AssumeRoleWithWebIdentity",
            format!(
                "check that {} is an STS endpoint (--sts-endpoint-url), not S3 or a proxy",
                c.sts_endpoint
            ),
        ),
        "NetworkError" => (
            "STS did not answer",
            format!(
                "check that {} is reachable (--sts-endpoint-url, --sts-region, egress rules)",
                c.sts_endpoint
            ),
        ),
        _ => (
            "STS failed",
            "retry; if it persists, the message above says what STS objects to".into(),
        ),
    }
}

/// A daemon killed mid-upload leaves an incomplete multipart upload, billed until aborted.
pub const LIFECYCLE_RULE: &str = "add a bucket lifecycle rule with AbortIncompleteMultipartUpload \
     (DaysAfterInitiation 1) so uploads left by a killed daemon are cleaned up (docs/semantics.md)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_name_the_prefix() {
        assert_eq!(
            s3_permission("aws", "b", "p/", "s3:ListBucket"),
            "s3:ListBucket on arn:aws:s3:::b with s3:prefix \"p/\" and \"p/*\""
        );
        assert_eq!(
            s3_permission("aws", "b", "", "s3:ListBucket"),
            "s3:ListBucket on arn:aws:s3:::b"
        );
        assert_eq!(
            s3_permission("aws-cn", "b", "p/", "s3:GetObject"),
            "s3:GetObject on arn:aws-cn:s3:::b/p/*"
        );
    }
}
