//! Policy documents: the session policy that scopes each STS session to the mount, and the
//! trust and permission policies a user attaches to the role (printed by `policy`).

use serde_json::{Value, json};

use super::jwt::Claims;

/// STS limit on the inline session policy (characters).
pub const SESSION_POLICY_MAX: usize = 2048;

/// The ARN partition of a role ARN (`aws`, `aws-cn`, `aws-us-gov`), so generated resource
/// ARNs match the role's partition.
pub fn partition(role_arn: &str) -> &str {
    role_arn
        .strip_prefix("arn:")
        .and_then(|r| r.split(':').next())
        .filter(|p| !p.is_empty())
        .unwrap_or("aws")
}

/// What the mount does to the bucket: the policies grant exactly that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// New files and directories (`--allow-write`): PutObject and the multipart calls.
    pub write: bool,
}

/// Statements that allow reading `bucket/prefix` (prefix "" or ending in `/`), plus what
/// `access` needs there, and nothing else.
fn statements(partition: &str, bucket: &str, prefix: &str, access: Access) -> Vec<Value> {
    let mut s = read_statements(partition, bucket, prefix);
    if access.write {
        // CreateMultipartUpload, UploadPart and CompleteMultipartUpload are s3:PutObject.
        s.push(json!({"Effect":"Allow",
            "Action":["s3:PutObject","s3:AbortMultipartUpload"],
            "Resource":format!("arn:{partition}:s3:::{bucket}/{prefix}*")}));
    }
    s
}

fn read_statements(partition: &str, bucket: &str, prefix: &str) -> Vec<Value> {
    let bucket_arn = format!("arn:{partition}:s3:::{bucket}");
    let list = if prefix.is_empty() {
        json!({"Effect":"Allow","Action":"s3:ListBucket","Resource":bucket_arn})
    } else {
        json!({"Effect":"Allow","Action":"s3:ListBucket","Resource":bucket_arn,
               "Condition":{"StringLike":{"s3:prefix":[prefix, format!("{prefix}*")]}}})
    };
    vec![
        list,
        json!({"Effect":"Allow","Action":"s3:GetObject","Resource":format!("{bucket_arn}/{prefix}*")}),
    ]
}

/// The default session policy: this bucket and prefix only, read-only unless `access` says
/// more. Compact JSON (some STS implementations reject spaces in form-encoded policies).
pub fn session_policy(
    partition: &str,
    bucket: &str,
    prefix: &str,
    access: Access,
) -> Result<String, String> {
    let doc =
        json!({"Version":"2012-10-17","Statement":statements(partition, bucket, prefix, access)});
    let s = doc.to_string();
    if s.len() > SESSION_POLICY_MAX {
        return Err(format!(
            "the generated session policy is {} characters, over STS's limit of {SESSION_POLICY_MAX} \
             (a very long prefix?): use --session-policy none or --session-policy @FILE",
            s.len()
        ));
    }
    Ok(s)
}

/// Checks a user-supplied session policy: JSON, within the size limit; returned compact.
pub fn check_session_policy(text: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let s = v.to_string();
    if s.len() > SESSION_POLICY_MAX {
        return Err(format!(
            "{} characters, over STS's limit of {SESSION_POLICY_MAX}",
            s.len()
        ));
    }
    Ok(s)
}

/// Least-privilege permission policy for the role (attach it to the role in IAM).
pub fn permission_policy(partition: &str, bucket: &str, prefix: &str, access: Access) -> Value {
    json!({"Version":"2012-10-17","Statement":statements(partition, bucket, prefix, access)})
}

/// Trust policy for a Google service account on AWS: Google is a built-in identity provider
/// (`accounts.google.com`); `:aud` is the token's `azp` (the service account's unique id),
/// `:oaud` the audience the daemon requests, `:sub` the unique id.
pub fn trust_policy(audience: &str, service_account_id: &str) -> Value {
    json!({"Version":"2012-10-17","Statement":[{
        "Effect":"Allow",
        "Principal":{"Federated":"accounts.google.com"},
        "Action":"sts:AssumeRoleWithWebIdentity",
        "Condition":{"StringEquals":{
            "accounts.google.com:aud":service_account_id,
            "accounts.google.com:oaud":audience,
            "accounts.google.com:sub":service_account_id}}}]})
}

/// The issuer of a token as IAM names its provider: the URL without scheme and trailing `/`.
pub fn provider_host(iss: &str) -> &str {
    iss.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
}

/// The trust policy that accepts tokens with these claims (for `doctor`): Google's built-in
/// provider for `accounts.google.com` (`:aud` = `azp`, `:oaud` = `aud`), else the IAM OIDC
/// provider registered for the issuer in `account` (`:aud` = `aud`).
pub fn trust_policy_for_claims(claims: &Claims, partition: &str, account: &str) -> Value {
    let host = provider_host(&claims.iss);
    if host == "accounts.google.com" {
        let azp = claims.azp.as_deref().unwrap_or(&claims.aud);
        return json!({"Version":"2012-10-17","Statement":[{
            "Effect":"Allow",
            "Principal":{"Federated":"accounts.google.com"},
            "Action":"sts:AssumeRoleWithWebIdentity",
            "Condition":{"StringEquals":{
                "accounts.google.com:aud":azp,
                "accounts.google.com:oaud":claims.aud,
                "accounts.google.com:sub":claims.sub}}}]});
    }
    json!({"Version":"2012-10-17","Statement":[{
        "Effect":"Allow",
        "Principal":{"Federated":format!("arn:{partition}:iam::{account}:oidc-provider/{host}")},
        "Action":"sts:AssumeRoleWithWebIdentity",
        "Condition":{"StringEquals":{
            format!("{host}:aud"):claims.aud,
            format!("{host}:sub"):claims.sub}}}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_access_adds_put_and_abort_on_the_prefix_only() {
        let ro: Value =
            serde_json::from_str(&session_policy("aws", "b", "p/", Access::default()).unwrap())
                .unwrap();
        assert!(!ro.to_string().contains("PutObject"), "{ro}");
        let rw: Value = serde_json::from_str(
            &session_policy("aws", "b", "p/", Access { write: true }).unwrap(),
        )
        .unwrap();
        let st = &rw["Statement"];
        let w = st
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s.to_string().contains("PutObject"))
            .expect("a write statement");
        assert_eq!(
            w["Action"],
            json!(["s3:PutObject", "s3:AbortMultipartUpload"])
        );
        assert_eq!(w["Resource"], "arn:aws:s3:::b/p/*");
        assert!(!rw.to_string().contains("DeleteObject"), "{rw}");
        assert_eq!(
            permission_policy("aws", "b", "p/", Access { write: true }),
            rw
        );
    }

    #[test]
    fn trust_policies_follow_the_issuer() {
        let google = Claims {
            iss: "https://accounts.google.com".into(),
            aud: "my-aud".into(),
            azp: Some("1234".into()),
            sub: "1234".into(),
            ..Claims::default()
        };
        let t = trust_policy_for_claims(&google, "aws", "111");
        let c = &t["Statement"][0]["Condition"]["StringEquals"];
        assert_eq!(c["accounts.google.com:aud"], "1234");
        assert_eq!(c["accounts.google.com:oaud"], "my-aud");
        assert_eq!(
            t["Statement"][0]["Principal"]["Federated"],
            "accounts.google.com"
        );
        let other = Claims {
            iss: "https://idp.example.com/".into(),
            aud: "a".into(),
            sub: "s".into(),
            ..Claims::default()
        };
        let t = trust_policy_for_claims(&other, "aws", "111");
        assert_eq!(
            t["Statement"][0]["Principal"]["Federated"],
            "arn:aws:iam::111:oidc-provider/idp.example.com"
        );
        assert_eq!(
            t["Statement"][0]["Condition"]["StringEquals"]["idp.example.com:aud"],
            "a"
        );
    }

    #[test]
    fn session_policy_scopes_to_the_prefix() {
        let p = session_policy("aws", "b", "data/x/", Access::default()).unwrap();
        let v: Value = serde_json::from_str(&p).unwrap();
        assert!(!p.contains(' '), "compact: {p}");
        assert_eq!(
            v["Statement"][0]["Condition"]["StringLike"]["s3:prefix"],
            json!(["data/x/", "data/x/*"])
        );
        assert_eq!(v["Statement"][1]["Resource"], "arn:aws:s3:::b/data/x/*");
        assert_eq!(v["Statement"][1]["Action"], "s3:GetObject");
        let whole = session_policy("aws", "b", "", Access::default()).unwrap();
        assert!(!whole.contains("Condition"));
        assert!(whole.contains("arn:aws:s3:::b/*"));
        // Quotes in a prefix are escaped, not injected.
        let q = session_policy("aws", "b", "a\"b/", Access::default()).unwrap();
        assert!(serde_json::from_str::<Value>(&q).is_ok());
        assert!(
            session_policy(
                "aws",
                "b",
                &format!("{}/", "p".repeat(1000)),
                Access::default()
            )
            .is_err()
        );
    }

    #[test]
    fn partitions_and_checks() {
        assert_eq!(partition("arn:aws-cn:iam::123:role/r"), "aws-cn");
        assert_eq!(partition("arn:aws:iam::123:role/r"), "aws");
        assert_eq!(partition("nonsense"), "aws");
        assert_eq!(check_session_policy("{ \"a\" : 1 }").unwrap(), "{\"a\":1}");
        assert!(check_session_policy("{").is_err());
        let t = trust_policy("my-aud", "1234");
        assert_eq!(
            t["Statement"][0]["Condition"]["StringEquals"]["accounts.google.com:oaud"],
            "my-aud"
        );
    }
}
