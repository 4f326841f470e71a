//! A stand-in for the GCP metadata server that is also an OIDC issuer, for the credentials tests.
//!
//! It listens on `127.0.0.1:<random port>` (plain HTTP) inside the test process, run as
//! [`super::standin`] says (its own runtime; stops, closing every open connection, hung ones
//! included, when the [`Idp`] is dropped).
//!
//! - Metadata endpoints (`/computeMetadata/v1/...`) require `Metadata-Flavor: Google` (else 403)
//!   and answer with the header `Metadata-Flavor: Google`, like the real server.
//! - `.../service-accounts/default/identity?audience=AUD&format=standard|full` mints an RS256
//!   JWT with Google's claim shape (`iss` = this server's URL, `aud`, `azp` = `sub` = the numeric
//!   service-account id, `iat`, `exp`; `email` and `email_verified` too with `format=full`).
//! - OIDC discovery: `/.well-known/openid-configuration` and the JWKS at `/oauth2/v3/certs`
//!   (also `/jwks` and Keycloak's `/protocol/openid-connect/certs`), one RSA key with `x5c`.
//!
//! The issuer is `http://127.0.0.1:PORT`: Ceph RGW (Pacific) accepts a plain-HTTP issuer; it
//! registers the provider as `arn:aws:iam:::oidc-provider/127.0.0.1:PORT` (scheme stripped),
//! and the trust-policy condition keys are `127.0.0.1:PORT:app_id` (= `aud`) and
//! `127.0.0.1:PORT:<claim>` (`sub`, `aud`, `azp`, ...). RGW fetches the discovery document and
//! then the JWKS on every exchange. See tests/federation_setup.rs for what RGW does with each
//! token.
//!
//! The RSA key and its self-signed certificate are made at start-up with the `openssl` CLI.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use s3_oidc_mount::http::serve;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::standin::{Port, StandIn, target};
use super::stsproxy::form_decode;

/// Default numeric service-account id (`sub` and `azp` of the tokens).
pub const DEFAULT_SUBJECT: &str = "112233445566778899001";
/// Default token lifetime, as Google's: one hour.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// What the identity endpoint does with a (well-formed) request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityMode {
    /// Mint and return a fresh token (200).
    Normal,
    /// Answer HTTP 500 (body "internal error").
    Fail,
    /// Never answer while this mode lasts; a hung request is answered normally (per the mode then
    /// in force) once the mode changes, and closed when the stand-in is dropped.
    Hang,
    /// Return a token whose `exp` is 10 minutes in the past (and `iat` one lifetime before that).
    Expired,
}

/// Fixed answers of the metadata endpoints and the identity of the tokens.
#[derive(Clone, Debug)]
pub struct IdpConfig {
    /// Numeric service-account unique id: `sub` and `azp` of the tokens.
    pub subject: String,
    pub email: String,
    pub project_id: String,
    pub numeric_project_id: String,
    pub instance_id: String,
    /// As the metadata server gives it: `projects/NUMBER/regions/REGION`.
    pub region: String,
    /// Lifetime (`exp - iat`) of the tokens minted.
    pub lifetime: Duration,
}

impl Default for IdpConfig {
    fn default() -> Self {
        IdpConfig {
            subject: DEFAULT_SUBJECT.into(),
            email: "mount-reader@test-project.iam.gserviceaccount.com".into(),
            project_id: "test-project".into(),
            numeric_project_id: "123456789012".into(),
            instance_id: "4512345678901234567".into(),
            region: "projects/123456789012/regions/europe-west1".into(),
            lifetime: DEFAULT_LIFETIME,
        }
    }
}

/// An RSA signing key with its self-signed certificate.
pub struct KeyPair {
    /// `kid` of the JWT header and of the JWK.
    pub kid: String,
    encoding: jsonwebtoken::EncodingKey,
    /// Private key (PKCS#8 PEM).
    pub key_pem: String,
    /// Self-signed certificate (PEM).
    pub cert_pem: String,
    /// Certificate (DER), base64 (standard, padded): the JWK's `x5c[0]`.
    pub cert_der_b64: String,
    /// SHA-1 of the certificate (DER), lower-case hex without separators (40 chars): what RGW
    /// compares (case-insensitively) with the provider's ThumbprintList.
    pub thumbprint: String,
    /// Modulus, big-endian, base64url without padding: the JWK's `n`.
    pub n: String,
    /// Public exponent, base64url: the JWK's `e`.
    pub e: String,
}

impl KeyPair {
    /// Generates an RSA-2048 key and a self-signed certificate with `openssl` (in a temp dir).
    pub fn generate(kid: &str) -> KeyPair {
        let dir = tempfile::tempdir().expect("tempdir for the IdP key");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-sha256",
                "-subj",
                "/CN=metadata-idp-stand-in",
            ],
        );
        openssl(
            d,
            &[
                "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
            ],
        );
        let modulus = openssl(d, &["x509", "-in", "cert.pem", "-noout", "-modulus"]);
        let modulus = modulus
            .trim()
            .strip_prefix("Modulus=")
            .unwrap_or_else(|| panic!("openssl -modulus printed {modulus:?}"));
        let text = openssl(d, &["x509", "-in", "cert.pem", "-noout", "-text"]);
        assert!(
            text.contains("Exponent: 65537 (0x10001)"),
            "unexpected RSA exponent:\n{text}"
        );
        let fingerprint = openssl(
            d,
            &["x509", "-in", "cert.pem", "-noout", "-fingerprint", "-sha1"],
        );
        // "SHA1 Fingerprint=AB:CD:..." (the label differs between openssl versions).
        let thumbprint: String = fingerprint
            .trim()
            .rsplit('=')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        assert!(
            thumbprint.len() == 40 && thumbprint.chars().all(|c| c.is_ascii_hexdigit()),
            "unexpected fingerprint output {fingerprint:?}"
        );
        let read = |f: &str| std::fs::read(d.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
        let key_pem = String::from_utf8(read("key.pem")).expect("key.pem is text");
        let cert_pem = String::from_utf8(read("cert.pem")).expect("cert.pem is text");
        let encoding =
            jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).expect("RSA key for JWTs");
        KeyPair {
            kid: kid.into(),
            encoding,
            key_pem,
            cert_pem,
            cert_der_b64: STANDARD.encode(read("cert.der")),
            thumbprint,
            n: URL_SAFE_NO_PAD.encode(hex_decode(modulus)),
            e: URL_SAFE_NO_PAD.encode([1u8, 0, 1]),
        }
    }

    /// The public JWK (with `x5c`, which RGW requires).
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": self.n,
            "e": self.e,
            "x5c": [self.cert_der_b64],
        })
    }

    /// Signs `claims` as an RS256 JWT with header `{"alg":"RS256","kid":KID,"typ":"JWT"}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(claims, &self.kid)
    }

    /// Signs `claims` with this key but names `kid` in the header.
    pub fn sign_as(&self, claims: &Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign JWT")
    }
}

/// A second key, never published by any stand-in (for "signed by someone else" tests).
pub fn foreign_key() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(|| KeyPair::generate("foreign-key"))
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("hex {s:?}")))
        .collect()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

#[derive(Default)]
struct Stats {
    identity_requests: usize,
    last_audience: Option<String>,
    minted: Vec<String>,
    /// "METHOD PATH?QUERY" of every request, in order.
    requests: Vec<String>,
}

struct Shared {
    base_url: String,
    key: KeyPair,
    mode: watch::Sender<IdentityMode>,
    subject: Mutex<String>,
    lifetime: Mutex<Duration>,
    stats: Mutex<Stats>,
    cfg: IdpConfig,
}

/// The running stand-in. Dropping it stops the server.
pub struct Idp {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: StandIn,
}

impl Idp {
    /// Starts a stand-in with the default configuration.
    pub fn start() -> Idp {
        Idp::start_with(IdpConfig::default())
    }

    /// Starts a stand-in on 127.0.0.1 (random port).
    pub fn start_with(cfg: IdpConfig) -> Idp {
        let port = Port::take();
        let addr = port.addr();
        let base_url = format!("http://{addr}");
        let key = KeyPair::generate(&format!("stand-in-{}", addr.port()));
        let (mode, _) = watch::channel(IdentityMode::Normal);
        let shared = Arc::new(Shared {
            base_url,
            key,
            mode,
            subject: Mutex::new(cfg.subject.clone()),
            lifetime: Mutex::new(cfg.lifetime),
            stats: Mutex::default(),
            cfg,
        });
        let sh = shared.clone();
        let server = port.serve(
            &format!("idp-stand-in-{}", addr.port()),
            Duration::from_secs(120),
            move |req| handle(sh.clone(), req),
        );
        Idp {
            shared,
            addr,
            _server: server,
        }
    }

    /// The issuer, `http://127.0.0.1:PORT` (no trailing slash): the tokens' `iss`.
    pub fn issuer(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Same as [`Idp::issuer`]: the base URL of the metadata endpoints.
    pub fn url(&self) -> String {
        self.issuer()
    }

    /// `127.0.0.1:PORT`: the value for `GCE_METADATA_HOST`, and RGW's name of the provider
    /// (ARN suffix and condition-key prefix).
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// RGW's ARN of this issuer once registered: `arn:aws:iam:::oidc-provider/127.0.0.1:PORT`.
    pub fn provider_arn(&self) -> String {
        format!("arn:aws:iam:::oidc-provider/{}", self.host_port())
    }

    /// SHA-1 thumbprint of the signing certificate: 40 lower-case hex digits.
    pub fn thumbprint(&self) -> String {
        self.shared.key.thumbprint.clone()
    }

    /// The signing key (and certificate) this stand-in publishes.
    pub fn key(&self) -> &KeyPair {
        &self.shared.key
    }

    pub fn config(&self) -> &IdpConfig {
        &self.shared.cfg
    }

    /// The numeric service-account id now put in `sub` and `azp`.
    pub fn subject(&self) -> String {
        self.shared.subject.lock().unwrap().clone()
    }

    /// Changes `sub`/`azp` of the tokens minted from now on.
    pub fn set_subject(&self, subject: &str) {
        *self.shared.subject.lock().unwrap() = subject.into();
    }

    pub fn email(&self) -> String {
        self.shared.cfg.email.clone()
    }

    pub fn set_mode(&self, mode: IdentityMode) {
        self.shared.mode.send_replace(mode);
    }

    pub fn mode(&self) -> IdentityMode {
        *self.shared.mode.borrow()
    }

    /// Changes the lifetime (`exp - iat`) of the tokens minted from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.shared.lifetime.lock().unwrap() = lifetime;
    }

    pub fn lifetime(&self) -> Duration {
        *self.shared.lifetime.lock().unwrap()
    }

    /// Identity requests received with the right header and an audience, whatever the mode
    /// (failed and hung ones included).
    pub fn identity_requests(&self) -> usize {
        self.shared.stats.lock().unwrap().identity_requests
    }

    /// The audience of the last identity request (with the right header).
    pub fn last_audience(&self) -> Option<String> {
        self.shared.stats.lock().unwrap().last_audience.clone()
    }

    /// Every token served by the identity endpoint, oldest first (not those of `mint*`; not
    /// those of hung requests whose client went away). Tokens minted in the same second for
    /// the same audience and subject are identical (RS256 signatures are deterministic).
    pub fn tokens_served(&self) -> Vec<String> {
        self.shared.stats.lock().unwrap().minted.clone()
    }

    /// Whether the identity endpoint served exactly this token.
    pub fn served(&self, token: &str) -> bool {
        self.shared
            .stats
            .lock()
            .unwrap()
            .minted
            .iter()
            .any(|t| t == token)
    }

    /// "METHOD PATH?QUERY" of every request received so far (RGW's fetches of the discovery
    /// document and the JWKS included).
    pub fn requests(&self) -> Vec<String> {
        self.shared.stats.lock().unwrap().requests.clone()
    }

    /// The claims the identity endpoint would put in a token for `audience` now (format
    /// `standard`); change them and [`Idp::sign`] them to make odd tokens.
    pub fn claims(&self, audience: &str) -> Value {
        self.shared.claims(audience, false, false)
    }

    /// Signs `claims` with this stand-in's published key.
    pub fn sign(&self, claims: &Value) -> String {
        self.shared.key.sign(claims)
    }

    /// A valid token for `audience` (not recorded as served).
    pub fn mint(&self, audience: &str) -> String {
        self.sign(&self.claims(audience))
    }

    /// A token for `audience` that expired 10 minutes ago.
    pub fn mint_expired(&self, audience: &str) -> String {
        self.sign(&self.shared.claims(audience, false, true))
    }

    /// A token with the right claims and `kid`, signed by a key this stand-in does not publish.
    pub fn mint_foreign(&self, audience: &str) -> String {
        foreign_key().sign_as(&self.claims(audience), &self.shared.key.kid)
    }

    /// The OIDC discovery document served at `/.well-known/openid-configuration`.
    pub fn discovery_document(&self) -> Value {
        self.shared.discovery()
    }

    /// The JWKS served at `/oauth2/v3/certs`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.shared.key.jwk()] })
    }
}

impl Shared {
    fn claims(&self, audience: &str, full: bool, expired: bool) -> Value {
        let lifetime = self.lifetime.lock().unwrap().as_secs() as i64;
        let now = now_secs();
        let (iat, exp) = if expired {
            (now - 600 - lifetime, now - 600)
        } else {
            (now, now + lifetime)
        };
        let subject = self.subject.lock().unwrap().clone();
        let mut c = json!({
            "aud": audience,
            "azp": subject,
            "exp": exp,
            "iat": iat,
            "iss": self.base_url,
            "sub": subject,
        });
        if full {
            c["email"] = json!(self.cfg.email);
            c["email_verified"] = json!(true);
        }
        c
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.base_url,
            "jwks_uri": format!("{}/oauth2/v3/certs", self.base_url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"],
        })
    }
}

/// One request as the routes see it.
struct Req {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    metadata_flavor: bool,
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    metadata_flavor: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            metadata_flavor: false,
        }
    }

    fn json(v: &Value) -> Response {
        Response {
            status: 200,
            content_type: "application/json",
            body: v.to_string(),
            metadata_flavor: false,
        }
    }

    fn metadata(mut self) -> Response {
        self.metadata_flavor = true;
        self
    }

    fn into_http(self) -> hyper::Response<serve::Body> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = serve::text(status, self.body);
        let h = r.headers_mut();
        h.insert("content-type", HeaderValue::from_static(self.content_type));
        if self.metadata_flavor {
            h.insert("metadata-flavor", HeaderValue::from_static("Google"));
        }
        r
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Bytes>) -> hyper::Response<serve::Body> {
    let target = target(&req);
    shared
        .stats
        .lock()
        .unwrap()
        .requests
        .push(format!("{} {target}", req.method()));
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect();
    let req = Req {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        query,
        metadata_flavor: req
            .headers()
            .get("metadata-flavor")
            .is_some_and(|v| v == "Google"),
    };
    let resp = match route(&req, &shared) {
        Routed::Answer(r) => r,
        // A hung request whose client goes away is dropped by the server: nothing minted.
        Routed::Identity => identity(&req, &shared).await,
    };
    resp.into_http()
}

/// What a request is for: a plain answer, or a token (which may hang).
enum Routed {
    Answer(Response),
    Identity,
}

fn route(req: &Req, shared: &Shared) -> Routed {
    let path = req.path.as_str();
    match path {
        "/.well-known/openid-configuration" => {
            return Routed::Answer(Response::json(&shared.discovery()));
        }
        "/oauth2/v3/certs" | "/jwks" | "/protocol/openid-connect/certs" => {
            return Routed::Answer(Response::json(&json!({ "keys": [shared.key.jwk()] })));
        }
        _ => {}
    }
    if !path.starts_with("/computeMetadata/") {
        return Routed::Answer(Response::text(404, "not found"));
    }
    if !req.metadata_flavor {
        // As the real server: 403 and an explanation, still with the header.
        let msg = "Missing required header: Metadata-Flavor: Google";
        return Routed::Answer(Response::text(403, msg).metadata());
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return Routed::Answer(Response::text(405, "method not allowed").metadata());
    }
    match metadata_value(path, shared) {
        Some(Some(value)) => Routed::Answer(Response::text(200, value).metadata()),
        Some(None) => Routed::Identity,
        None => Routed::Answer(Response::text(404, "not found").metadata()),
    }
}

/// The value of a metadata path; `Some(None)` for the identity endpoint, `None` if unknown.
fn metadata_value(path: &str, shared: &Shared) -> Option<Option<String>> {
    const SA: &str = "/computeMetadata/v1/instance/service-accounts/";
    let account = path
        .strip_prefix(SA)
        .and_then(|rest| rest.split_once('/'))
        .filter(|(who, _)| *who == "default" || *who == shared.cfg.email);
    let cfg = &shared.cfg;
    let value = match (path, account) {
        (_, Some((_, "identity"))) => return Some(None),
        (_, Some((_, "email"))) => cfg.email.clone(),
        ("/computeMetadata/v1/project/project-id", _) => cfg.project_id.clone(),
        ("/computeMetadata/v1/project/numeric-project-id", _) => cfg.numeric_project_id.clone(),
        ("/computeMetadata/v1/instance/id", _) => cfg.instance_id.clone(),
        ("/computeMetadata/v1/instance/region", _) => cfg.region.clone(),
        ("/computeMetadata/v1/instance/zone", _) => {
            let region = cfg.region.rsplit('/').next().unwrap_or("europe-west1");
            format!("projects/{}/zones/{region}-b", cfg.numeric_project_id)
        }
        _ => return None,
    };
    Some(Some(value))
}

/// The identity endpoint.
async fn identity(req: &Req, shared: &Shared) -> Response {
    let Some(audience) = req.query.get("audience").filter(|a| !a.is_empty()) else {
        let msg = "non-empty audience parameter required";
        return Response::text(400, msg).metadata();
    };
    let full = match req.query.get("format").map(String::as_str) {
        None | Some("standard") => false,
        Some("full") => true,
        Some(other) => {
            return Response::text(400, format!("invalid format {other:?}")).metadata();
        }
    };
    {
        let mut st = shared.stats.lock().unwrap();
        st.identity_requests += 1;
        st.last_audience = Some(audience.clone());
    }
    // Hang while the mode says so. The server drops this future if the client gives up (then
    // nothing is minted) or the stand-in stops meanwhile.
    let mut rx = shared.mode.subscribe();
    let mode = match rx.wait_for(|m| *m != IdentityMode::Hang).await {
        Ok(m) => *m,
        Err(_) => IdentityMode::Fail, // the stand-in is going away
    };
    let claims = match mode {
        IdentityMode::Fail => return Response::text(500, "internal error").metadata(),
        IdentityMode::Expired => shared.claims(audience, full, true),
        IdentityMode::Normal | IdentityMode::Hang => shared.claims(audience, full, false),
    };
    let token = shared.key.sign(&claims);
    shared.stats.lock().unwrap().minted.push(token.clone());
    Response::text(200, token).metadata()
}
