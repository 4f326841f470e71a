//! The store conformance checks (src/store/conformance.rs) over the S3 store against Ceph
//! RGW: the same checks the in-memory store passes under AWS's rules, here under RGW 16's
//! (which ignores conditions on CompleteMultipartUpload), plus how errors are classified.

use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use s3_oidc_mount::store::conformance::{self, Server};
use s3_oidc_mount::store::s3::{S3Options, S3Store};

use crate::common;

fn store_at(bucket: &str, endpoint: &str, key_id: &str, secret: &str, attempts: u32) -> S3Store {
    let opts = S3Options {
        bucket: bucket.into(),
        region: "us-east-1".into(),
        endpoint_url: Some(endpoint.into()),
        force_path_style: true,
        max_attempts: attempts,
        request_timeout: Duration::from_secs(10),
    };
    let creds = Credentials::new(key_id, secret, None, None, "conformance");
    S3Store::new(&opts, SharedCredentialsProvider::new(creds), true)
}

fn key(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// One bucket for the checks of this process; each check writes under its own prefix.
fn bucket() -> &'static str {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        let b = common::unique_bucket("conformance");
        common::create_bucket(&b);
        b
    })
}

fn store() -> S3Store {
    store_at(
        bucket(),
        &common::endpoint(),
        &key("AWS_ACCESS_KEY_ID"),
        &key("AWS_SECRET_ACCESS_KEY"),
        3,
    )
}

fn check(name: &str, r: conformance::Checked) {
    if let Err(e) = r {
        panic!("{name} on Ceph RGW: {e}");
    }
}

macro_rules! on_rgw {
    ($($check:ident),* $(,)?) => {$(
        #[test]
        fn $check() {
            need_rgw!();
            let s = store();
            let base = concat!(stringify!($check), "/");
            check(
                stringify!($check),
                common::rt().block_on(conformance::$check(&s, Server::CEPH_RGW_16, base)),
            );
        }
    )*};
}

on_rgw!(
    list_pages,
    list_delimited,
    encoded_keys,
    head,
    get_range_bytes,
    get_range_pinned,
    put_absent,
    put_matches,
    multipart_part_sizes,
    multipart_part_order,
    multipart_abort,
    multipart_conditions,
);

#[test]
fn missing_bucket_is_no_such_bucket() {
    need_rgw!();
    let s = store_at(
        &common::unique_bucket("never-created"),
        &common::endpoint(),
        &key("AWS_ACCESS_KEY_ID"),
        &key("AWS_SECRET_ACCESS_KEY"),
        1,
    );
    check(
        "no_such_bucket",
        common::rt().block_on(conformance::no_such_bucket(&s)),
    );
}

#[test]
fn bad_credentials_are_access_denied() {
    need_rgw!();
    let unknown = store_at(
        bucket(),
        &common::endpoint(),
        "AKIDNOSUCHKEY0000000",
        "secret",
        1,
    );
    check(
        "access_denied, unknown key",
        common::rt().block_on(conformance::access_denied(&unknown)),
    );
    let wrong_secret = store_at(
        bucket(),
        &common::endpoint(),
        &key("AWS_ACCESS_KEY_ID"),
        "not-the-secret",
        1,
    );
    check(
        "access_denied, wrong secret",
        common::rt().block_on(conformance::access_denied(&wrong_secret)),
    );
}

#[test]
fn closed_port_is_unreachable() {
    need_rgw!();
    // Port 1 on loopback: refused at once.
    let s = store_at(bucket(), "http://127.0.0.1:1", "AKID", "secret", 1);
    check(
        "unreachable",
        common::rt().block_on(conformance::unreachable(&s)),
    );
}
