//! Reading the claims of an identity token, for logs and diagnostics. The signature is not
//! checked here (STS checks it) and is never printed; neither is the token itself.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use zeroize::Zeroizing;

/// The claims that decide whether a role's trust policy accepts a token.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Claims {
    #[serde(default)]
    pub iss: String,
    #[serde(default, deserialize_with = "aud_string")]
    pub aud: String,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub email: Option<String>,
}

/// `aud` may be a string or a list; a list is shown comma-separated.
fn aud_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(s) => s,
        Aud::Many(v) => v.join(","),
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a JWT: {0}")]
pub struct JwtError(pub &'static str);

/// An identity token: the secret text, wiped from memory on drop, and its claims.
pub struct IdToken {
    jwt: Zeroizing<String>,
    pub claims: Claims,
}

impl std::fmt::Debug for IdToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdToken")
            .field("jwt", &"** redacted **")
            .field("claims", &self.claims)
            .finish()
    }
}

impl IdToken {
    pub fn parse(jwt: String) -> Result<Self, JwtError> {
        let jwt = Zeroizing::new(jwt.trim().to_string());
        let claims = decode_claims(&jwt)?;
        Ok(IdToken { jwt, claims })
    }

    /// The token text, for the one place that sends it (the STS request).
    pub fn secret(&self) -> &str {
        &self.jwt
    }

    /// Seconds of validity left at `now` (unix seconds); 0 once expired.
    pub fn remaining(&self, now: u64) -> u64 {
        self.claims.exp.saturating_sub(now)
    }
}

pub fn decode_claims(jwt: &str) -> Result<Claims, JwtError> {
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError("expected three dot-separated parts"));
    };
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| JwtError("payload is not base64url"))?,
    );
    serde_json::from_slice(&bytes).map_err(|_| JwtError("payload is not a JSON claims object"))
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn claims_are_decoded_and_the_token_redacted() {
        let t = IdToken::parse(jwt(
            r#"{"iss":"https://accounts.google.com","aud":"sts.amazonaws.com","azp":"123","sub":"123","exp":2000,"iat":1000}"#,
        ))
        .unwrap();
        assert_eq!(t.claims.iss, "https://accounts.google.com");
        assert_eq!(t.claims.aud, "sts.amazonaws.com");
        assert_eq!(t.claims.azp.as_deref(), Some("123"));
        assert_eq!(t.remaining(1500), 500);
        assert_eq!(t.remaining(2500), 0);
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(t.secret()) && dbg.contains("redacted"));
        let many = decode_claims(&jwt(r#"{"aud":["a","b"]}"#)).unwrap();
        assert_eq!(many.aud, "a,b");
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(IdToken::parse("not-a-jwt".into()).is_err());
        assert!(IdToken::parse("a.b.c.d".into()).is_err());
        assert!(IdToken::parse("a.!!!.c".into()).is_err());
        assert!(IdToken::parse(jwt("[1,2]")).is_err());
    }
}
