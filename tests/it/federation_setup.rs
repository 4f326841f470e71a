//! Proof that the credentials-test support works against a real Ceph RGW: the metadata/OIDC
//! stand-in (tests/common/idp.rs) and the IAM/STS helpers (tests/common/iam.rs). Also records
//! what RGW (16.2, Pacific) answers in each failure case, which the daemon has to report.
//!
//! Run: `source <rgw dir>/env && cargo test --test federation_setup` (scripts/rgw.sh).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::iam::{self, Iam, StsFailure};
use crate::common::idp::{self, IdentityMode, Idp, IdpConfig};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sts::config::{ConfigBag, Intercept, RuntimeComponents};
use serde_json::Value;

const AUD: &str = "https://s3-oidc-mount.test/federation";
const IDENTITY: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

fn block_on<F: Future>(f: F) -> F::Output {
    crate::common::rt().block_on(f)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// GET `url` with `Metadata-Flavor: Google`: (status, Metadata-Flavor answer header, body).
async fn metadata_get(url: &str) -> (u16, Option<String>, String) {
    let resp = http()
        .get(url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let flavor = resp
        .headers()
        .get("metadata-flavor")
        .map(|v| v.to_str().unwrap().to_string());
    (status, flavor, resp.text().await.unwrap())
}

/// A token from the stand-in's identity endpoint, over HTTP, as the daemon gets it.
async fn fetch_token(idp: &Idp, audience: &str) -> String {
    let url = format!(
        "{}{IDENTITY}?audience={}&format=standard",
        idp.url(),
        iam::url_encode(audience)
    );
    let (status, flavor, body) = metadata_get(&url).await;
    assert_eq!(status, 200, "identity endpoint: {body}");
    assert_eq!(flavor.as_deref(), Some("Google"));
    body
}

/// The claims of a JWT (not verified).
fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// A bucket with a few objects (content = key).
async fn bucket_with(tag: &str, keys: &[&str]) -> String {
    let bucket = crate::common::unique_bucket(tag);
    let s3 = crate::common::client();
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    for k in keys {
        s3.put_object()
            .bucket(&bucket)
            .key(*k)
            .body(k.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e:?}"));
    }
    bucket
}

/// (HTTP status, S3 error code) of a failed S3 call.
fn s3_failure<E: ProvideErrorMetadata>(e: SdkError<E, HttpResponse>) -> (u16, String) {
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    (status, e.code().unwrap_or("").to_string())
}

/// Asserts that STS rejected the exchange with `status`/`code`; returns the failure.
fn assert_rejected(
    what: &str,
    res: Result<iam::AssumeOutput, StsFailure>,
    status: u16,
    code: &str,
) -> StsFailure {
    let f = match res {
        Ok(o) => panic!("{what}: STS accepted it ({:?})", o.assumed_role_user()),
        Err(f) => f,
    };
    assert_eq!(
        (f.error.status, f.error.code.as_str()),
        (status, code),
        "{what}: {}",
        f.error
    );
    // RGW sends `<Error><Code>..` (no `<ErrorResponse>`): the SDK finds no code in it.
    assert!(
        f.sdk_code.is_none() || f.sdk_code.as_deref() == Some(code),
        "{what}: SDK code {:?}",
        f.sdk_code
    );
    eprintln!(
        "{what}: HTTP {} {} message={:?}; SDK: code={:?} {}",
        f.error.status, f.error.code, f.error.message, f.sdk_code, f.sdk_display
    );
    f
}

/// Asserts that STS accepted the exchange; returns its answer.
fn accepted(what: &str, res: Result<iam::AssumeOutput, StsFailure>) -> iam::AssumeOutput {
    res.unwrap_or_else(|f| panic!("{what}: {}", f.error))
}

/// What an exchange must give: accepted (`None`), or refused with this status and code.
type Outcome = Option<(u16, &'static str)>;
const ACCEPTED: Outcome = None;
const DENIED: Outcome = Some((403, "AccessDenied"));
const INVALID: Outcome = Some((400, "InvalidArgument"));

/// Asserts that `res` is `want`; the answer, if accepted.
fn assert_outcome(
    what: &str,
    res: Result<iam::AssumeOutput, StsFailure>,
    want: Outcome,
) -> Option<iam::AssumeOutput> {
    match want {
        None => Some(accepted(what, res)),
        Some((status, code)) => {
            assert_rejected(what, res, status, code);
            None
        }
    }
}

/// A new role of the provider at `provider` (host:port) that trusts tokens meeting
/// `conditions` and allows `permissions`: what exchanging `token` for it gives.
async fn assume_new_role(
    iam: &Iam,
    provider: &str,
    conditions: &[(&str, &str)],
    permissions: &str,
    token: &str,
) -> Result<iam::AssumeOutput, StsFailure> {
    let role = iam::create_web_identity_role(iam, provider, conditions, permissions, None)
        .await
        .unwrap();
    iam::assume_role_with_web_identity(&role.arn, token, None, None).await
}

/// Asserts that S3 refused a call with 403 AccessDenied.
fn assert_denied<T, E: ProvideErrorMetadata>(
    what: &str,
    res: Result<T, SdkError<E, HttpResponse>>,
) {
    match res {
        Ok(_) => panic!("{what}: allowed"),
        Err(e) => assert_eq!(s3_failure(e), (403, "AccessDenied".into()), "{what}"),
    }
}

/// The HTTP status of a HEAD of `key`, which must fail.
async fn head_failure_status(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> u16 {
    let head = s3.head_object().bucket(bucket).key(key).send().await;
    head.unwrap_err().raw_response().unwrap().status().as_u16()
}

fn assert_expires_in(o: &iam::AssumeOutput, secs: i64) {
    let exp = o.credentials().expect("credentials").expiration().secs();
    let now = idp::now_secs();
    assert!(
        (exp - now - secs).abs() <= 5,
        "Expiration {exp} is not now ({now}) + {secs} s"
    );
}

/// Records whether the SDK's STS request carried an Authorization header.
#[derive(Debug, Default, Clone)]
struct SeeAuthorization(Arc<Mutex<Vec<bool>>>);

impl Intercept for SeeAuthorization {
    fn name(&self) -> &'static str {
        "SeeAuthorization"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let h = context.request().headers();
        self.0
            .lock()
            .unwrap()
            .push(h.contains_key("authorization") || h.contains_key("x-amz-security-token"));
        Ok(())
    }
}

// ---- the stand-in alone (no RGW needed) ----

#[test]
fn stand_in_serves_google_shaped_tokens_and_oidc_discovery() {
    need_rgw!();
    let idp = Idp::start();
    block_on(async {
        let base = idp.url();
        assert_eq!(base, format!("http://{}", idp.host_port()));

        // The header rule.
        let url = format!("{base}{IDENTITY}?audience=a&format=standard");
        let resp = http().get(&url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 403);
        let resp = http()
            .get(&url)
            .header("Metadata-Flavor", "google-ish")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403);
        assert_eq!(idp.identity_requests(), 0);
        let (status, _, _) = metadata_get(&format!("{base}{IDENTITY}?format=standard")).await;
        assert_eq!(status, 400, "missing audience");
        assert_eq!(idp.identity_requests(), 0);

        // A token, as the daemon fetches it.
        let token = fetch_token(&idp, "https://aud.example/x?y=1 2").await;
        assert_eq!(idp.identity_requests(), 1);
        assert_eq!(
            idp.last_audience().as_deref(),
            Some("https://aud.example/x?y=1 2")
        );
        assert!(idp.served(&token));
        assert_eq!(idp.tokens_served(), vec![token.clone()]);
        assert!(!idp.served(&idp.mint("another audience")));
        let c = claims_of(&token);
        assert_eq!(c["iss"], base.as_str());
        assert_eq!(c["aud"], "https://aud.example/x?y=1 2");
        assert_eq!(c["sub"], idp::DEFAULT_SUBJECT);
        assert_eq!(c["azp"], idp::DEFAULT_SUBJECT);
        assert!(c.get("email").is_none(), "format=standard has no email");
        let iat = c["iat"].as_i64().unwrap();
        assert!((iat - idp::now_secs()).abs() <= 5);
        assert_eq!(c["exp"].as_i64().unwrap() - iat, 3600);

        // format=full adds the e-mail; the response is text/plain.
        let resp = http()
            .get(format!("{base}{IDENTITY}?audience=b&format=full"))
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ctype.starts_with("text/plain"), "{ctype}");
        let full = claims_of(&resp.text().await.unwrap());
        assert_eq!(full["email"], idp.email().as_str());
        assert_eq!(full["email_verified"], true);
        assert_eq!(idp.identity_requests(), 2);
        assert_eq!(idp.last_audience().as_deref(), Some("b"));

        // Discovery and JWKS (no header needed), and the token verifies with the JWK.
        let disco: Value = http()
            .get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        assert_eq!(disco["issuer"], base.as_str());
        let jwks_uri = disco["jwks_uri"].as_str().unwrap().to_string();
        assert!(jwks_uri.starts_with(&base));
        let jwks: Value = http()
            .get(&jwks_uri)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        assert_eq!(jwks, idp.jwks());
        let jwk = &jwks["keys"][0];
        for field in ["kty", "alg", "use", "kid", "n", "e", "x5c"] {
            assert!(jwk.get(field).is_some(), "JWK lacks {field}: {jwk}");
        }
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
            jwk["kid"].as_str()
        );
        let key = jsonwebtoken::DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["https://aud.example/x?y=1 2"]);
        v.set_issuer(&[base.as_str()]);
        jsonwebtoken::decode::<Value>(&token, &key, &v).expect("token verifies with the JWK");
        let foreign = idp.mint_foreign("https://aud.example/x?y=1 2");
        assert!(jsonwebtoken::decode::<Value>(&foreign, &key, &v).is_err());

        // The thumbprint is the SHA-1 of the x5c certificate.
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(jwk["x5c"][0].as_str().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.der"), der).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha1", "-r"])
            .arg(dir.path().join("c.der"))
            .output()
            .unwrap();
        let digest = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            digest.split_whitespace().next(),
            Some(idp.thumbprint().as_str())
        );

        // The other metadata endpoints.
        let cfg = IdpConfig::default();
        for (path, want) in [
            (
                "/computeMetadata/v1/instance/service-accounts/default/email",
                cfg.email.as_str(),
            ),
            ("/computeMetadata/v1/project/project-id", &cfg.project_id),
            (
                "/computeMetadata/v1/project/numeric-project-id",
                &cfg.numeric_project_id,
            ),
            ("/computeMetadata/v1/instance/id", &cfg.instance_id),
            ("/computeMetadata/v1/instance/region", &cfg.region),
        ] {
            let (status, flavor, body) = metadata_get(&format!("{base}{path}")).await;
            assert_eq!((status, body.as_str()), (200, want), "{path}");
            assert_eq!(flavor.as_deref(), Some("Google"), "{path}");
            let bare = http().get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(bare.status().as_u16(), 403, "{path} without the header");
        }
        assert_eq!(cfg.region, "projects/123456789012/regions/europe-west1");
        let (status, _, _) = metadata_get(&format!("{base}/computeMetadata/v1/nope")).await;
        assert_eq!(status, 404);
    });
}

#[test]
fn stand_in_controls_fail_hang_expired_lifetime_and_stops_on_drop() {
    need_rgw!();
    let idp = Idp::start_with(IdpConfig {
        subject: "998877".into(),
        ..IdpConfig::default()
    });
    let base = idp.url();
    let url = format!("{base}{IDENTITY}?audience=ctl&format=standard");
    block_on(async {
        assert_eq!(claims_of(&fetch_token(&idp, "ctl").await)["sub"], "998877");
        idp.set_subject("554433");
        let c = claims_of(&fetch_token(&idp, "ctl").await);
        assert_eq!((&c["sub"], &c["azp"]), (&"554433".into(), &"554433".into()));

        idp.set_mode(IdentityMode::Fail);
        let (status, flavor, _) = metadata_get(&url).await;
        assert_eq!(status, 500);
        assert_eq!(flavor.as_deref(), Some("Google"));

        idp.set_mode(IdentityMode::Expired);
        let c = claims_of(&fetch_token(&idp, "ctl").await);
        assert!(c["exp"].as_i64().unwrap() < idp::now_secs() - 60, "{c}");

        idp.set_mode(IdentityMode::Normal);
        idp.set_lifetime(Duration::from_secs(600));
        let c = claims_of(&fetch_token(&idp, "ctl").await);
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);

        // Hang: no answer while hanging; answered once switched back.
        idp.set_mode(IdentityMode::Hang);
        let quick = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let r = quick
            .get(&url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await;
        assert!(r.is_err_and(|e| e.is_timeout()), "hung request answered");
        let pending = tokio::spawn({
            let url = url.clone();
            async move { metadata_get(&url).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished());
        idp.set_mode(IdentityMode::Normal);
        let (status, _, token) = pending.await.unwrap();
        assert_eq!(status, 200);
        assert!(idp.served(&token));
        // 2 fetches, fail, expired, lifetime, 2 hung (the first one's client gave up: no token).
        assert_eq!(idp.identity_requests(), 7);
        assert_eq!(idp.tokens_served().len(), 5);

        // A request hung when the stand-in is dropped is closed, and the port is closed.
        idp.set_mode(IdentityMode::Hang);
        let hung = tokio::spawn(async move {
            http()
                .get(url)
                .header("Metadata-Flavor", "Google")
                .send()
                .await
                .map(|r| r.status())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = std::time::Instant::now();
        drop(idp);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "drop took {:?}",
            t0.elapsed()
        );
        let r = tokio::time::timeout(Duration::from_secs(5), hung)
            .await
            .expect("hung request not closed on drop")
            .unwrap();
        assert!(r.is_err(), "{r:?}");
        let again = http()
            .get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await;
        assert!(again.is_err_and(|e| e.is_connect()), "still listening");
    });
}

// ---- against RGW ----

#[test]
fn token_from_stand_in_buys_credentials_that_read_the_bucket() {
    need_rgw!();
    let idp = Idp::start();
    block_on(async {
        let bucket = bucket_with("fed-ok", &["dir/a.txt", "dir/b.txt", "top.txt"]).await;
        let role = iam::federate(&idp, AUD, &bucket, None).await;
        assert_eq!(role.provider_arn, idp.provider_arn());
        assert!(role.arn.starts_with("arn:aws:iam:::role/"), "{}", role.arn);
        assert!(
            Iam::from_env()
                .list_oidc_providers()
                .await
                .unwrap()
                .contains(&idp.provider_arn())
        );

        let token = fetch_token(&idp, AUD).await;
        let seen = SeeAuthorization::default();
        let sts =
            aws_sdk_sts::Client::from_conf(iam::sts_config().interceptor(seen.clone()).build());
        let out = iam::assume_role_with_web_identity_via(&sts, &role.arn, &token, None, None)
            .await
            .unwrap_or_else(|f| panic!("exchange: {}", f.error));
        assert_eq!(*seen.0.lock().unwrap(), vec![false], "request was signed");
        assert_eq!(
            out.subject_from_web_identity_token(),
            Some(idp::DEFAULT_SUBJECT)
        );
        assert_eq!(out.audience(), Some(AUD));
        assert_eq!(out.provider(), Some(idp.issuer().as_str()));
        assert_eq!(
            out.assumed_role_user().map(|u| u.arn()),
            Some(
                format!(
                    "arn:aws:sts:::assumed-role/{}/{}",
                    role.name,
                    iam::SESSION_NAME
                )
                .as_str()
            )
        );
        assert_expires_in(&out, 3600);
        // RGW fetched the discovery document, then the JWKS it names.
        let reqs = idp.requests();
        assert!(
            reqs.contains(&"GET /.well-known/openid-configuration".to_string())
                && reqs.contains(&"GET /oauth2/v3/certs".to_string()),
            "{reqs:?}"
        );

        let creds = out.credentials().unwrap();
        assert!(!creds.session_token().is_empty());
        let s3 = iam::s3_client_with(creds);
        let listed = s3
            .list_objects_v2()
            .bucket(&bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list with STS credentials: {e:?}"));
        let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, ["dir/a.txt", "dir/b.txt", "top.txt"]);
        let got = s3
            .get_object()
            .bucket(&bucket)
            .key("dir/b.txt")
            .send()
            .await
            .unwrap_or_else(|e| panic!("get with STS credentials: {e:?}"));
        assert_eq!(got.body.collect().await.unwrap().to_vec(), b"dir/b.txt");
        // Read-only role: writes are refused.
        let put = s3
            .put_object()
            .bucket(&bucket)
            .key("new")
            .body(b"x".to_vec().into())
            .send()
            .await;
        assert_denied("put", put);
    });
}

#[test]
fn rgw_rejects_bad_tokens_and_unmet_trust_conditions() {
    need_rgw!();
    let idp = Idp::start();
    block_on(async {
        let iam = Iam::from_env();
        let bucket = bucket_with("fed-neg", &["k"]).await;
        // The provider knows two client ids; the role trusts only AUD and the default subject.
        iam::register_idp(&iam, &idp, &[AUD, "second-client"])
            .await
            .unwrap();
        let read = iam::s3_read_policy(&bucket, None);
        let sub = idp.subject();
        let role = iam::create_web_identity_role(
            &iam,
            &idp.host_port(),
            &[("app_id", AUD), ("sub", &sub)],
            &read,
            None,
        )
        .await
        .unwrap();
        let assume = |token: String| {
            let arn = role.arn.clone();
            async move { iam::assume_role_with_web_identity(&arn, &token, None, None).await }
        };
        assume(idp.mint(AUD)).await.expect("control: a good token");
        let no_sub = {
            let mut c = idp.claims(AUD);
            c.as_object_mut().unwrap().remove("sub");
            idp.sign(&c)
        };

        let cases: Vec<(&str, String, u16, &str)> = vec![
            (
                "audience not in the provider's ClientIDList",
                idp.mint("https://not-registered.test"),
                403,
                "AccessDenied",
            ),
            (
                "audience registered but not the role's app_id",
                idp.mint("second-client"),
                403,
                "AccessDenied",
            ),
            ("expired token", idp.mint_expired(AUD), 403, "AccessDenied"),
            (
                "signed by another key",
                idp.mint_foreign(AUD),
                403,
                "AccessDenied",
            ),
            ("not a JWT", "not-a-jwt".into(), 403, "AccessDenied"),
            (
                "expired 5 s ago (no leeway)",
                {
                    let mut c = idp.claims(AUD);
                    c["exp"] = (idp::now_secs() - 5).into();
                    idp.sign(&c)
                },
                403,
                "AccessDenied",
            ),
            (
                "iat 5 min in the future",
                {
                    let mut c = idp.claims(AUD);
                    c["iat"] = (idp::now_secs() + 300).into();
                    idp.sign(&c)
                },
                403,
                "AccessDenied",
            ),
            (
                "issuer not registered",
                {
                    let mut c = idp.claims(AUD);
                    c["iss"] = "http://127.0.0.1:9".into();
                    idp.sign(&c)
                },
                403,
                "AccessDenied",
            ),
            // (With a role without conditions: 400 InvalidArgument, see below.)
            ("no sub claim", no_sub.clone(), 403, "AccessDenied"),
        ];
        for (what, token, status, code) in cases {
            let f = assert_rejected(what, assume(token).await, status, code);
            assert_eq!(f.error.message, "", "RGW sends empty messages");
        }

        // Another service account (sub) than the role's condition.
        const OTHER_SUB: &str = "999999999999999999999";
        idp.set_subject(OTHER_SUB);
        let other = fetch_token(&idp, AUD).await;
        assert_rejected("another subject", assume(other).await, 403, "AccessDenied");

        /// What, provider, trust conditions, token, outcome.
        type RoleCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], String, Outcome);
        let here = idp.host_port();
        let roles: [RoleCase; 3] = [
            // A role trusting that other subject accepts it.
            (
                "role for the other subject",
                &here,
                &[("app_id", AUD), ("sub", OTHER_SUB)],
                idp.mint(AUD),
                ACCEPTED,
            ),
            // A token without `sub` for a role without conditions: the trust policy
            // passes, then the request is refused for the missing subject.
            (
                "no sub claim, role without conditions",
                &here,
                &[],
                no_sub,
                INVALID,
            ),
            // A role of an unknown provider.
            (
                "role trusts another provider",
                "127.0.0.1:9",
                &[],
                idp.mint(AUD),
                DENIED,
            ),
        ];
        for (what, provider, conditions, token, want) in roles {
            let res = assume_new_role(&iam, provider, conditions, &read, &token).await;
            assert_outcome(what, res, want);
        }
    });
}

#[test]
fn trust_condition_keys_are_the_token_claims_plus_app_id() {
    need_rgw!();
    let idp = Idp::start();
    block_on(async {
        let iam = Iam::from_env();
        let bucket = bucket_with("fed-keys", &[]).await;
        iam::register_idp(&iam, &idp, &[AUD]).await.unwrap();
        let mut c = idp.claims(AUD);
        c["azp"] = "authorized-party-7".into();
        c["email"] = "sa@test-project.iam.gserviceaccount.com".into();
        let token = idp.sign(&c);
        let sub = idp.subject();
        let issuer = idp.issuer();
        let read = iam::s3_read_policy(&bucket, None);
        let mut cases: Vec<(&str, &str, Outcome)> = Vec::new();
        for (key, value) in [
            ("app_id", AUD),
            ("aud", AUD),
            ("sub", sub.as_str()),
            ("azp", "authorized-party-7"),
            ("iss", issuer.as_str()),
            ("email", "sa@test-project.iam.gserviceaccount.com"),
        ] {
            cases.push((key, value, ACCEPTED));
            cases.push((key, "something-else", DENIED));
        }
        // AWS's Google keys do not exist here: a condition on one is never met.
        cases.push(("oaud", AUD, DENIED));
        for (key, v, want) in cases {
            let res = assume_new_role(&iam, &idp.host_port(), &[(key, v)], &read, &token).await;
            let what = format!("condition {}:{key} = {v}", idp.host_port());
            assert_outcome(&what, res, want);
        }
    });
}

#[test]
fn rgw_pacific_does_not_check_the_thumbprint() {
    need_rgw!();
    // Recorded, not wished for: RGW 16.2 accepts tokens whatever ThumbprintList holds (its
    // certificate loop marks any x5c certificate as valid). A fixed RGW fails this test: then
    // the thumbprint matters, and Idp::thumbprint() is the right value (lower-case hex SHA-1).
    let idp = Idp::start();
    block_on(async {
        let iam = Iam::from_env();
        iam.create_oidc_provider(&idp.issuer(), &[AUD], &["00".repeat(20).as_str()])
            .await
            .unwrap();
        let role = iam::create_web_identity_role(
            &iam,
            &idp.host_port(),
            &[("app_id", AUD)],
            &iam::s3_read_policy("any", None),
            None,
        )
        .await
        .unwrap();
        iam::assume_role_with_web_identity(&role.arn, &idp.mint(AUD), None, None)
            .await
            .unwrap_or_else(|f| panic!("wrong thumbprint rejected: {}", f.error));
        // Upper-case hex is accepted as well (RGW compares case-insensitively).
        let upper = idp.thumbprint().to_uppercase();
        iam.delete_oidc_provider(&idp.provider_arn()).await.unwrap();
        iam.create_oidc_provider(&idp.issuer(), &[AUD], &[&upper])
            .await
            .unwrap();
        iam::assume_role_with_web_identity(&role.arn, &idp.mint(AUD), None, None)
            .await
            .unwrap_or_else(|f| panic!("upper-case thumbprint: {}", f.error));
        // One provider per URL: a second registration is refused, register_idp replaces it.
        let dup = iam
            .create_oidc_provider(&idp.issuer(), &[AUD], &[&idp.thumbprint()])
            .await
            .unwrap_err();
        assert_eq!(
            (dup.status, dup.code.as_str()),
            (409, "EntityAlreadyExists")
        );
        let arn = iam::register_idp(&iam, &idp, &[AUD]).await.unwrap();
        assert_eq!(arn, idp.provider_arn());
        let got = iam.get_oidc_provider(&arn).await.unwrap();
        assert_eq!(
            iam::xml_all(&got, "member"),
            vec![AUD.to_string(), idp.thumbprint()]
        );
        assert_eq!(iam::xml_text(&got, "Url"), Some(idp.issuer()));
    });
}

#[test]
fn temporary_credentials_need_their_session_token() {
    need_rgw!();
    let idp = Idp::start();
    block_on(async {
        let bucket = bucket_with("fed-tok", &["k"]).await;
        let role = iam::federate(&idp, AUD, &bucket, None).await;
        let out = accepted(
            "exchange",
            iam::assume_role_with_web_identity(&role.arn, &idp.mint(AUD), None, None).await,
        );
        let c = out.credentials().unwrap();
        let list = |client: aws_sdk_s3::Client| {
            let bucket = bucket.clone();
            async move { client.list_objects_v2().bucket(bucket).send().await }
        };
        list(iam::s3_client_with(c)).await.expect("control");
        let mut tampered = c.session_token().to_string();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        for (what, token, secret, want) in [
            (
                "no session token",
                None,
                c.secret_access_key(),
                "AccessDenied",
            ),
            (
                "garbage session token",
                Some("AAAA"),
                c.secret_access_key(),
                "AccessDenied",
            ),
            (
                "wrong secret",
                Some(c.session_token()),
                "not-the-secret",
                "SignatureDoesNotMatch",
            ),
        ] {
            let client = iam::s3_client_with_keys(c.access_key_id(), secret, token);
            let err = list(client).await.expect_err(what);
            assert_eq!(s3_failure(err), (403, want.to_string()), "{what}");
        }
        // A session token with one character changed: refused, as 400 InvalidArgument (when
        // it no longer decrypts) or 403 AccessDenied, depending on the character.
        let client =
            iam::s3_client_with_keys(c.access_key_id(), c.secret_access_key(), Some(&tampered));
        let err = s3_failure(list(client).await.expect_err("tampered session token"));
        assert!(
            err == (400, "InvalidArgument".into()) || err == (403, "AccessDenied".into()),
            "tampered session token: {err:?}"
        );
        eprintln!("tampered session token: {err:?}");
        // Another session's token with these keys.
        let other = iam::assume_role_with_web_identity(&role.arn, &idp.mint("x"), None, None).await;
        assert!(other.is_err(), "audience x is not registered");
        let out2 = iam::assume_role_with_web_identity(&role.arn, &idp.mint(AUD), Some(900), None)
            .await
            .unwrap_or_else(|f| panic!("second exchange: {}", f.error));
        let c2 = out2.credentials().unwrap();
        assert_ne!(c2.access_key_id(), c.access_key_id());
        let client = iam::s3_client_with_keys(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c2.session_token()),
        );
        let err = s3_failure(list(client).await.expect_err("another session's token"));
        eprintln!("another session's token: {err:?}");
        assert_eq!(err.0, 403, "another session's token: {err:?}");
    });
}

#[test]
fn session_policy_narrows_the_role() {
    need_rgw!();
    let idp = Idp::start();
    block_on(async {
        let bucket = bucket_with("fed-sp", &["a/1", "a/2", "b/1", "top"]).await;
        let role = iam::federate(&idp, AUD, &bucket, None).await;
        // Compact JSON, as the daemon should send it.
        let narrow = iam::s3_read_policy(&bucket, Some("a/"));
        assert!(!narrow.contains(' '));
        let out =
            iam::assume_role_with_web_identity(&role.arn, &idp.mint(AUD), None, Some(&narrow))
                .await
                .unwrap_or_else(|f| panic!("exchange with a session policy: {}", f.error));
        let s3 = iam::s3_client_with(out.credentials().unwrap());
        let get = |key: &'static str| s3.get_object().bucket(&bucket).key(key).send();
        get("a/1").await.expect("inside the session policy");
        assert_denied("get b/1", get("b/1").await);
        assert_denied("get top", get("top").await);
        let list = |prefix: Option<&'static str>| {
            s3.list_objects_v2()
                .bucket(&bucket)
                .set_prefix(prefix.map(str::to_string))
                .send()
        };
        assert_eq!(list(Some("a/")).await.unwrap().key_count(), Some(2));
        assert_denied("list b/", list(Some("b/")).await);
        assert_denied("list", list(None).await);
        // The role grants ListBucket on the whole bucket: HEAD of a missing key is a 404.
        assert_eq!(head_failure_status(&s3, &bucket, "a/missing").await, 404);

        // A malformed session policy.
        let res =
            iam::assume_role_with_web_identity(&role.arn, &idp.mint(AUD), None, Some("{nope"))
                .await;
        assert_rejected(
            "malformed session policy",
            res,
            400,
            "MalformedPolicyDocument",
        );
    });
}

#[test]
fn prefix_scoped_role_answers_403_for_a_missing_key() {
    need_rgw!();
    let idp = Idp::start();
    block_on(async {
        let bucket = bucket_with("fed-pfx", &["a/1", "b/1"]).await;
        let role = iam::federate(&idp, AUD, &bucket, Some("a/")).await;
        let out = accepted(
            "exchange",
            iam::assume_role_with_web_identity(&role.arn, &idp.mint(AUD), None, None).await,
        );
        let s3 = iam::s3_client_with(out.credentials().unwrap());
        s3.get_object()
            .bucket(&bucket)
            .key("a/1")
            .send()
            .await
            .expect("a/1");
        let listed = s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix("a/")
            .delimiter("/")
            .send()
            .await
            .expect("list a/");
        assert_eq!(listed.key_count(), Some(1));
        let get_b = s3.get_object().bucket(&bucket).key("b/1").send().await;
        assert_denied("get b/1", get_b);
        // ListBucket only under a prefix condition: HEAD of a missing key is 403, not 404.
        assert_eq!(head_failure_status(&s3, &bucket, "a/missing").await, 403);
    });
}

#[test]
fn duration_seconds_limits_and_returned_expiration() {
    need_rgw!();
    let idp = Idp::start();
    block_on(async {
        let iam = Iam::from_env();
        let bucket = bucket_with("fed-dur", &[]).await;
        let role = iam::federate(&idp, AUD, &bucket, None).await;
        let assume = |arn: String, d: Option<i32>| {
            let token = idp.mint(AUD);
            async move { iam::assume_role_with_web_identity(&arn, &token, d, None).await }
        };
        // MaxSessionDuration: 900..=43200 at CreateRole; DurationSeconds up to it.
        let trust = iam::web_identity_trust_policy(&idp.host_port(), &[("app_id", AUD)]);
        for bad in [899, 43201] {
            let e = iam
                .create_role(&iam::unique_name("dur"), &trust, Some(bad))
                .await
                .unwrap_err();
            assert_eq!((e.status, e.code.as_str()), (400, "InvalidInput"), "{bad}");
        }
        let long = iam::create_web_identity_role(
            &iam,
            &idp.host_port(),
            &[("app_id", AUD)],
            &iam::s3_read_policy(&bucket, None),
            Some(43200),
        )
        .await
        .unwrap();
        // The default role (MaxSessionDuration 3600) allows 900..=3600, the long one up to
        // 43200: (role, its MaxSessionDuration, DurationSeconds, outcome).
        for (arn, max, d, want) in [
            (&role.arn, 3600, 0, INVALID),
            (&role.arn, 3600, 899, INVALID),
            (&role.arn, 3600, 900, ACCEPTED),
            (&role.arn, 3600, 3600, ACCEPTED),
            (&role.arn, 3600, 3601, INVALID),
            (&long.arn, 43200, 43200, ACCEPTED),
            (&long.arn, 43200, 43201, INVALID),
        ] {
            let what = format!("DurationSeconds={d} (MaxSessionDuration {max})");
            if let Some(out) = assert_outcome(&what, assume(arn.clone(), Some(d)).await, want) {
                assert_expires_in(&out, d as i64);
            }
        }
        // Without DurationSeconds: 3600.
        assert_expires_in(&assume(role.arn.clone(), None).await.unwrap(), 3600);
    });
}
