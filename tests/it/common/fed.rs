//! A keyless world for the credential tests: a metadata-server/OIDC stand-in, an STS proxy
//! in front of RGW's STS, a bucket with files, and a role that trusts the stand-in.

use super::iam::{self, WebIdentityRole};
use super::idp::Idp;
use super::stsproxy::StsProxy;
use super::{Spawn, create_bucket, put, rt, unique_bucket};

/// The audience the roles trust (registered as the provider's client id).
pub const AUD: &str = "https://s3-oidc-mount.test/federation";

/// One test's own world: metadata/OIDC stand-in, STS proxy, bucket with files, and a role
/// trusting the stand-in (audience AUD, its subject) with read access to the bucket.
pub struct World {
    pub idp: Idp,
    pub proxy: StsProxy,
    pub bucket: String,
    pub role: WebIdentityRole,
    pub files: Vec<(String, Vec<u8>)>,
}

impl World {
    pub fn new(tag: &str, files: Vec<(&str, Vec<u8>)>) -> World {
        let idp = Idp::start();
        let proxy = StsProxy::start();
        let bucket = unique_bucket(tag);
        create_bucket(&bucket);
        let files: Vec<(String, Vec<u8>)> =
            files.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in &files {
            put(&bucket, k, v.clone());
        }
        let role = rt().block_on(iam::federate(&idp, AUD, &bucket, None));
        World {
            idp,
            proxy,
            bucket,
            role,
            files,
        }
    }

    pub fn source(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    /// `--credentials gcp` with this world's role, audience and STS proxy.
    pub fn gcp_args(&self) -> Vec<String> {
        strings(&[
            "--credentials",
            "gcp",
            "--role-arn",
            &self.role.arn,
            "--audience",
            AUD,
            "--sts-endpoint-url",
            &self.proxy.url(),
        ])
    }

    pub fn file(&self, key: &str) -> &[u8] {
        &self
            .files
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no file {key}"))
            .1
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The daemon's environment for keyless mode: no AWS_* variable of the test's (so no key
/// at all; the admin keys stay with the test), the EC2 metadata client off, no shared AWS
/// config files, and the metadata server at `metadata_host`.
pub fn keyless(metadata_host: &str) -> Spawn {
    Spawn {
        env_remove: std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("AWS_") || k.starts_with("S3_OIDC_MOUNT_"))
            .collect(),
        env: vec![
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                "/nonexistent/s3-oidc-mount-test/credentials".into(),
            ),
            (
                "AWS_CONFIG_FILE".into(),
                "/nonexistent/s3-oidc-mount-test/config".into(),
            ),
            ("GCE_METADATA_HOST".into(), metadata_host.into()),
        ],
        ..Spawn::default()
    }
}

/// Every secret the daemon handled, as (description, text to look for): the identity tokens
/// (whole, and their signature alone), the secret keys and session tokens STS issued (whole
/// and a 32-character head), and the RGW admin's secret key (which the daemon must not have).
pub fn secrets(tokens: &[String], proxy: &StsProxy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut tokens: Vec<String> = tokens.to_vec();
    tokens.extend(
        proxy
            .requests()
            .iter()
            .filter_map(|r| r.field("WebIdentityToken").map(str::to_string)),
    );
    tokens.sort();
    tokens.dedup();
    for t in &tokens {
        out.push(("identity token".to_string(), t.clone()));
        if let Some(sig) = t.rsplit('.').next().filter(|s| s.len() >= 40) {
            out.push(("identity token signature".to_string(), sig.to_string()));
        }
    }
    for c in proxy.issued() {
        out.push(("secret access key".to_string(), c.secret_access_key.clone()));
        out.push(("session token".to_string(), c.session_token.clone()));
        if c.session_token.len() > 32 {
            out.push((
                "session token head".to_string(),
                c.session_token[..32].to_string(),
            ));
        }
    }
    if let Ok(admin) = std::env::var("AWS_SECRET_ACCESS_KEY") {
        out.push(("the RGW admin's secret key".to_string(), admin));
    }
    assert!(
        out.iter().any(|(w, _)| w == "identity token"),
        "no identity token to look for"
    );
    out
}

pub fn assert_no_secret(place: &str, haystack: &[u8], secrets: &[(String, String)]) {
    let text = String::from_utf8_lossy(haystack);
    for (what, s) in secrets {
        assert!(
            !s.is_empty() && !text.contains(s.as_str()),
            "{what} found in {place}"
        );
    }
}
