//! IAM and STS on the local Ceph RGW, for the credentials tests: register the metadata stand-in
//! ([`super::idp::Idp`]) as an OIDC provider, create web-identity roles with S3 permissions, and
//! exchange tokens for temporary credentials.
//!
//! IAM calls are form POSTs to `S3_ENDPOINT/` signed with SigV4 (service `iam`, region
//! `us-east-1`) as the RGW admin user of `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`; no
//! `x-amz-content-sha256` header is sent. Values are percent-encoded (`%20`, never `+`: RGW
//! Pacific does not decode `+` in form bodies) and policies are compact JSON.
//!
//! What RGW (16.2, Pacific) does, as checked by tests/federation_setup.rs:
//! - a provider is named by its URL without the scheme: `arn:aws:iam:::oidc-provider/HOST:PORT`
//!   (a plain `http://` issuer is fine); there is one per URL (a second CreateOpenIDConnectProvider
//!   is 409 EntityAlreadyExists), so [`register_idp`] replaces an existing one;
//! - trust-policy condition keys: `HOST:PORT:CLAIM` for each string claim of the token (`aud`,
//!   `sub`, `azp`, `iss`, `email`, ...) plus `HOST:PORT:app_id` (= `aud`);
//! - the ThumbprintList is stored but not enforced (any value works);
//! - every STS rejection of a token or of the trust policy is HTTP 403 `AccessDenied` with an
//!   empty `<Message>`; bad parameters are 400 (`InvalidArgument`, `MalformedPolicyDocument`);
//! - roles and providers are left in place (the RGW of a test run is thrown away); role names
//!   are unique per call ([`unique_name`]).
//!
//! The functions are async; sync tests run them with `common::rt().block_on(..)`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_runtime_api::client::identity::Identity;

use super::idp::Idp;

/// Region used for signing and for the SDK clients (RGW ignores it, the SDK requires one).
pub const REGION: &str = "us-east-1";

/// An IAM or STS error answer (RGW sends `<Error><Code>..</Code><Message>..</Message>..`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub body: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {} {:?} ({})",
            self.status, self.code, self.message, self.body
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn from_response(status: u16, body: String) -> ApiError {
        ApiError {
            status,
            code: xml_text(&body, "Code").unwrap_or_default(),
            message: xml_text(&body, "Message").unwrap_or_default(),
            body,
        }
    }
}

/// The RGW admin user's IAM API.
pub struct Iam {
    endpoint: String,
    access_key: String,
    secret_key: String,
    http: reqwest::Client,
}

impl Iam {
    /// From `S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`.
    pub fn from_env() -> Iam {
        Iam::new(
            &super::endpoint(),
            &std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID"),
            &std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY"),
        )
    }

    pub fn new(endpoint: &str, access_key: &str, secret_key: &str) -> Iam {
        Iam {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    /// One signed IAM call (`Action` and `Version` added); returns the response body.
    pub async fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<String, ApiError> {
        let mut all = vec![("Action", action), ("Version", "2010-05-08")];
        all.extend_from_slice(params);
        let body = form_encode(&all);
        let url = format!("{}/", self.endpoint);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let identity: Identity = aws_credential_types::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "rgw-admin",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name("iam")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .expect("signing params")
            .into();
        let signable = SignableRequest::new(
            "POST",
            &url,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .expect("signable request");
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        let mut req = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("IAM {action} at {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(ApiError::from_response(status, text))
        }
    }

    /// `CreateOpenIDConnectProvider`; returns the provider's ARN.
    pub async fn create_oidc_provider(
        &self,
        url: &str,
        client_ids: &[&str],
        thumbprints: &[&str],
    ) -> Result<String, ApiError> {
        let mut names = Vec::new();
        for (i, _) in client_ids.iter().enumerate() {
            names.push(format!("ClientIDList.member.{}", i + 1));
        }
        for (i, _) in thumbprints.iter().enumerate() {
            names.push(format!("ThumbprintList.member.{}", i + 1));
        }
        let mut params = vec![("Url", url)];
        params.extend(
            names
                .iter()
                .map(String::as_str)
                .zip(client_ids.iter().chain(thumbprints).copied()),
        );
        let body = self.call("CreateOpenIDConnectProvider", &params).await?;
        Ok(xml_text(&body, "OpenIDConnectProviderArn")
            .unwrap_or_else(|| panic!("no OpenIDConnectProviderArn in {body}")))
    }

    pub async fn delete_oidc_provider(&self, arn: &str) -> Result<(), ApiError> {
        self.call(
            "DeleteOpenIDConnectProvider",
            &[("OpenIDConnectProviderArn", arn)],
        )
        .await
        .map(drop)
    }

    /// `GetOpenIDConnectProvider`: the raw XML answer.
    pub async fn get_oidc_provider(&self, arn: &str) -> Result<String, ApiError> {
        self.call(
            "GetOpenIDConnectProvider",
            &[("OpenIDConnectProviderArn", arn)],
        )
        .await
    }

    /// ARNs of all providers.
    pub async fn list_oidc_providers(&self) -> Result<Vec<String>, ApiError> {
        let body = self.call("ListOpenIDConnectProviders", &[]).await?;
        Ok(xml_all(&body, "Arn"))
    }

    /// `CreateRole` (path `/`); returns the role's ARN (`arn:aws:iam:::role/NAME`).
    pub async fn create_role(
        &self,
        name: &str,
        trust_policy: &str,
        max_session_duration: Option<u32>,
    ) -> Result<String, ApiError> {
        let max = max_session_duration.map(|m| m.to_string());
        let mut params = vec![
            ("RoleName", name),
            ("Path", "/"),
            ("AssumeRolePolicyDocument", trust_policy),
        ];
        if let Some(m) = &max {
            params.push(("MaxSessionDuration", m));
        }
        let body = self.call("CreateRole", &params).await?;
        Ok(xml_text(&body, "Arn").unwrap_or_else(|| panic!("no Arn in {body}")))
    }

    pub async fn delete_role(&self, name: &str) -> Result<(), ApiError> {
        self.call("DeleteRole", &[("RoleName", name)])
            .await
            .map(drop)
    }

    /// `PutRolePolicy`: an inline permission policy of the role.
    pub async fn put_role_policy(
        &self,
        role: &str,
        policy_name: &str,
        policy: &str,
    ) -> Result<(), ApiError> {
        self.call(
            "PutRolePolicy",
            &[
                ("RoleName", role),
                ("PolicyName", policy_name),
                ("PolicyDocument", policy),
            ],
        )
        .await
        .map(drop)
    }

    pub async fn delete_role_policy(&self, role: &str, policy_name: &str) -> Result<(), ApiError> {
        self.call(
            "DeleteRolePolicy",
            &[("RoleName", role), ("PolicyName", policy_name)],
        )
        .await
        .map(drop)
    }
}

/// A name unique to this call (process id, counter, time): `TAG-PID-N-NANOS`, at most 64 chars
/// for a short tag.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Trust policy allowing `sts:AssumeRoleWithWebIdentity` to the OIDC provider `provider`
/// (`HOST:PORT`, see [`Idp::host_port`]) under `StringEquals` conditions given as
/// `(claim key, value)`, e.g. `[("app_id", AUD), ("sub", SUB)]`; keys become `HOST:PORT:KEY`.
pub fn web_identity_trust_policy(provider: &str, conditions: &[(&str, &str)]) -> String {
    let mut statement = serde_json::json!({
        "Effect": "Allow",
        "Principal": { "Federated": [format!("arn:aws:iam:::oidc-provider/{provider}")] },
        "Action": ["sts:AssumeRoleWithWebIdentity"],
    });
    if !conditions.is_empty() {
        let eq: serde_json::Map<String, serde_json::Value> = conditions
            .iter()
            .map(|(k, v)| (format!("{provider}:{k}"), serde_json::json!(v)))
            .collect();
        statement["Condition"] = serde_json::json!({ "StringEquals": eq });
    }
    serde_json::json!({ "Version": "2012-10-17", "Statement": [statement] }).to_string()
}

/// Read-only S3 permissions on `bucket` (whole bucket) or on `prefix` (ending in `/`) in it:
/// ListBucket (with `s3:prefix` conditions for a prefix), GetBucketLocation, GetObject.
pub fn s3_read_policy(bucket: &str, prefix: Option<&str>) -> String {
    let mut list = serde_json::json!({
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": [format!("arn:aws:s3:::{bucket}")],
    });
    let objects = match prefix {
        Some(p) => {
            list["Condition"] =
                serde_json::json!({ "StringLike": { "s3:prefix": [p, format!("{p}*")] } });
            format!("arn:aws:s3:::{bucket}/{p}*")
        }
        None => format!("arn:aws:s3:::{bucket}/*"),
    };
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            list,
            {
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation"],
                "Resource": [format!("arn:aws:s3:::{bucket}")],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [objects],
            },
        ],
    })
    .to_string()
}

/// Registers `idp` with RGW as an OIDC provider (Url = its issuer, ClientIDList = `audiences`,
/// ThumbprintList = its certificate's SHA-1), replacing a provider left for the same URL by
/// an earlier stand-in on the same port. Returns the provider's ARN.
pub async fn register_idp(iam: &Iam, idp: &Idp, audiences: &[&str]) -> Result<String, ApiError> {
    let thumbprint = idp.thumbprint();
    match iam
        .create_oidc_provider(&idp.issuer(), audiences, &[&thumbprint])
        .await
    {
        Err(e) if e.code == "EntityAlreadyExists" || e.status == 409 => {
            iam.delete_oidc_provider(&idp.provider_arn()).await?;
            iam.create_oidc_provider(&idp.issuer(), audiences, &[&thumbprint])
                .await
        }
        other => other,
    }
}

/// A role created for web identity.
#[derive(Debug, Clone)]
pub struct WebIdentityRole {
    pub name: String,
    pub arn: String,
    pub provider_arn: String,
    pub trust_policy: String,
    pub permissions: String,
}

/// Creates a role (unique name) trusting `provider` (`HOST:PORT`) under `conditions` (see
/// [`web_identity_trust_policy`]) with `permissions` as its inline policy `perm`.
pub async fn create_web_identity_role(
    iam: &Iam,
    provider: &str,
    conditions: &[(&str, &str)],
    permissions: &str,
    max_session_duration: Option<u32>,
) -> Result<WebIdentityRole, ApiError> {
    let name = unique_name("wi");
    let trust_policy = web_identity_trust_policy(provider, conditions);
    let arn = iam
        .create_role(&name, &trust_policy, max_session_duration)
        .await?;
    iam.put_role_policy(&name, "perm", permissions).await?;
    Ok(WebIdentityRole {
        name,
        arn,
        provider_arn: format!("arn:aws:iam:::oidc-provider/{provider}"),
        trust_policy,
        permissions: permissions.into(),
    })
}

/// The usual set-up: registers `idp` for `audience` and creates a role that trusts it for
/// that audience and the stand-in's subject, with read access to `bucket` (whole bucket, or
/// `prefix`). Panics on failure.
pub async fn federate(
    idp: &Idp,
    audience: &str,
    bucket: &str,
    prefix: Option<&str>,
) -> WebIdentityRole {
    let iam = Iam::from_env();
    register_idp(&iam, idp, &[audience])
        .await
        .unwrap_or_else(|e| panic!("register the stand-in as OIDC provider: {e}"));
    let subject = idp.subject();
    create_web_identity_role(
        &iam,
        &idp.host_port(),
        &[("app_id", audience), ("sub", &subject)],
        &s3_read_policy(bucket, prefix),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("create the web-identity role: {e}"))
}

/// `RoleSessionName` of the exchanges made by [`assume_role_with_web_identity`].
pub const SESSION_NAME: &str = "s3-oidc-mount-test";

/// STS client configuration for `S3_ENDPOINT`: behavior version, region, endpoint and no
/// credentials provider at all, so AssumeRoleWithWebIdentity is sent unsigned.
pub fn sts_config() -> aws_sdk_sts::config::Builder {
    aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(REGION))
        .endpoint_url(super::endpoint())
}

/// An STS client from [`sts_config`].
pub fn sts_client() -> aws_sdk_sts::Client {
    aws_sdk_sts::Client::from_conf(sts_config().build())
}

/// A failed exchange, read from the raw HTTP answer: the SDK does not find the code in RGW's
/// `<Error>` documents (it expects `<ErrorResponse><Error>..`), so `code()` is `None` there.
#[derive(Debug, Clone)]
pub struct StsFailure {
    /// Status, `<Code>` and `<Message>` of RGW's answer.
    pub error: ApiError,
    /// What the SDK made of it: `ProvideErrorMetadata::code()` and its display.
    pub sdk_code: Option<String>,
    pub sdk_display: String,
}

pub type AssumeOutput =
    aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityOutput;

/// AssumeRoleWithWebIdentity (session name [`SESSION_NAME`]) with [`sts_client`].
pub async fn assume_role_with_web_identity(
    role_arn: &str,
    token: &str,
    duration_seconds: Option<i32>,
    session_policy: Option<&str>,
) -> Result<AssumeOutput, StsFailure> {
    assume_role_with_web_identity_via(
        &sts_client(),
        role_arn,
        token,
        duration_seconds,
        session_policy,
    )
    .await
}

/// AssumeRoleWithWebIdentity (session name [`SESSION_NAME`]) with the given client.
/// Panics if no HTTP answer came back.
pub async fn assume_role_with_web_identity_via(
    sts: &aws_sdk_sts::Client,
    role_arn: &str,
    token: &str,
    duration_seconds: Option<i32>,
    session_policy: Option<&str>,
) -> Result<AssumeOutput, StsFailure> {
    use aws_sdk_sts::error::ProvideErrorMetadata;
    let res = sts
        .assume_role_with_web_identity()
        .role_arn(role_arn)
        .role_session_name(SESSION_NAME)
        .web_identity_token(token)
        .set_duration_seconds(duration_seconds)
        .set_policy(session_policy.map(str::to_string))
        .send()
        .await;
    res.map_err(|e| {
        let sdk_code = e.code().map(str::to_string);
        // "service error: unhandled error (Error { aws_request_id: .. })" for RGW's answers.
        let sdk_display = match e.as_service_error() {
            Some(s) => format!("{e}: {s}"),
            None => aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
        };
        let Some(raw) = e.raw_response() else {
            panic!("STS call failed without an HTTP answer: {sdk_display}");
        };
        let body = raw
            .body()
            .bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        StsFailure {
            error: ApiError::from_response(raw.status().as_u16(), body),
            sdk_code,
            sdk_display,
        }
    })
}

/// An S3 client for `S3_ENDPOINT` using temporary credentials from STS.
pub fn s3_client_with(creds: &aws_sdk_sts::types::Credentials) -> aws_sdk_s3::Client {
    s3_client_with_keys(
        creds.access_key_id(),
        creds.secret_access_key(),
        Some(creds.session_token()),
    )
}

/// An S3 client for `S3_ENDPOINT` with explicit keys (and session token).
pub fn s3_client_with_keys(
    access_key: &str,
    secret_key: &str,
    session_token: Option<&str>,
) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .endpoint_url(super::endpoint())
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            access_key,
            secret_key,
            session_token.map(str::to_string),
            None,
            "sts-test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// `application/x-www-form-urlencoded` body, every byte outside `A-Za-z0-9-_.~` as `%XX`.
pub fn form_encode(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes every byte outside `A-Za-z0-9-_.~` (a query or form value).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Text of the first leaf element `<tag>...</tag>` in `xml` (entities decoded).
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    xml_all(xml, tag).into_iter().next()
}

/// Texts of every leaf element `<tag>...</tag>` in `xml` (RGW nests same-name elements, e.g.
/// `<Arn><Arn>arn:..</Arn></Arn>` in ListOpenIDConnectProviders: the inner ones are taken).
pub fn xml_all(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        let text = &after[..j];
        if text.contains('<') {
            // Not a leaf: look inside.
            rest = after;
            continue;
        }
        out.push(
            text.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[j + close.len()..];
    }
    out
}
