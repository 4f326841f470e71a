//! `ObjectStore` over aws-sdk-s3: one bucket, any endpoint, path or virtual-host style.

use std::error::Error as _;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{SharedCredentialsProvider, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::RequestId;
use aws_sdk_s3::types::EncodingType;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextMut;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;

use super::{
    ByteStream, ListFrom, ListPage, ObjectMeta, ObjectStore, Part, Precondition, StoreError,
    Written, urlkey,
};

/// How to reach the bucket.
#[derive(Clone, Debug)]
pub struct S3Options {
    pub bucket: String,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    /// Attempts per request for transient errors (5xx, throttling, timeouts, resets). LIST and
    /// HEAD are retried by the SDK; ranged GETs by the reader, which resumes mid-range.
    pub max_attempts: u32,
    /// Longest wait for a response to one attempt (connecting included).
    pub request_timeout: Duration,
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// `sdk_cache`: let the SDK cache credentials; off for providers that answer from
    /// memory and must see every request (our refresher).
    pub fn new(opts: &S3Options, credentials: SharedCredentialsProvider, sdk_cache: bool) -> Self {
        // Every attempt is bounded: connecting, waiting for the response head, and (for LIST
        // and HEAD, whose bodies the SDK reads within the attempt) the whole response. GET
        // bodies are streamed to the reader, which bounds them itself.
        let timeout = opts.request_timeout.max(Duration::from_millis(100));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .read_timeout(timeout)
            .operation_attempt_timeout(timeout)
            .build();
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(opts.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(opts.force_path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(opts.max_attempts.max(1)))
            .timeout_config(timeouts)
            .interceptor(super::observe::MetricsInterceptor)
            // Writes carry Content-MD5 instead (below): one checksum, which AWS S3 and Ceph
            // RGW both verify (RGW 16 ignores the SDK's CRC32 header).
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .stalled_stream_protection(
                aws_sdk_s3::config::StalledStreamProtectionConfig::enabled()
                    .grace_period(timeout)
                    .build(),
            );
        if let Some(url) = &opts.endpoint_url {
            b = b.endpoint_url(url);
        }
        if !sdk_cache {
            b = b.identity_cache(aws_sdk_s3::config::IdentityCache::no_cache());
        }
        S3Store {
            client: Client::from_conf(b.build()),
            bucket: opts.bucket.clone(),
        }
    }
}

/// Content-MD5 of a body: the server refuses a body that arrives different (BadDigest).
fn md5(body: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(body).into()
}

fn b64(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ETag S3 gives a multipart object: the MD5 of the parts' MD5s, then `-N`. `None`
/// when a part's ETag is not an MD5 (encrypted with KMS, say).
fn multipart_etag(parts: &[Part]) -> Option<String> {
    let mut all = Vec::with_capacity(parts.len() * 16);
    for p in parts {
        let h = p.etag.trim_matches('"');
        if h.len() != 32 {
            return None;
        }
        for i in (0..32).step_by(2) {
            all.push(u8::from_str_radix(h.get(i..i + 2)?, 16).ok()?);
        }
    }
    Some(format!("\"{}-{}\"", hex(&md5(&all)), parts.len()))
}

fn to_system_time(t: Option<&aws_smithy_types::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Turn an SDK error into the distinctions the filesystem acts on, keeping the S3 code,
/// message and request id in the text for the log.
fn classify<E>(err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_string();
            let message = se.err().message().unwrap_or("").to_string();
            let rid = se.err().meta().request_id().unwrap_or("-").to_string();
            let detail = format!("HTTP {status} {code} {message} (request id {rid})");
            match (status, code.as_str()) {
                (404, "NoSuchBucket") => StoreError::NoSuchBucket,
                (404, _) => StoreError::NotFound,
                (412, _) | (409, "ConditionalRequestConflict") => StoreError::PreconditionFailed,
                (403, _) | (400, "InvalidAccessKeyId") | (400, "ExpiredToken") => {
                    StoreError::AccessDenied {
                        code: if code.is_empty() { "403".into() } else { code },
                        message: detail,
                    }
                }
                (429, _) | (500..=599, _) => StoreError::Transient(detail),
                (_, "SlowDown" | "RequestTimeout" | "InternalError") => {
                    StoreError::Transient(detail)
                }
                _ => StoreError::Other(detail),
            }
        }
        SdkError::DispatchFailure(df) => {
            let text = DisplayErrorContext(&err).to_string();
            let mut src = err.source();
            while let Some(s) = src {
                if s.downcast_ref::<CredentialsError>().is_some() {
                    return StoreError::Credentials(text);
                }
                src = s.source();
            }
            if df.is_io() || df.is_timeout() {
                StoreError::Unreachable(text)
            } else {
                StoreError::Other(text)
            }
        }
        SdkError::ResponseError(re) => {
            // A response that could not be read or parsed (cut off, malformed XML).
            let rid = re
                .raw()
                .headers()
                .get("x-amz-request-id")
                .unwrap_or("-")
                .to_string();
            StoreError::Transient(format!("{} (request id {rid})", DisplayErrorContext(&err)))
        }
        SdkError::TimeoutError(_) => StoreError::Transient(DisplayErrorContext(&err).to_string()),
        _ => StoreError::Other(DisplayErrorContext(&err).to_string()),
    }
}

/// `classify` for a conditional write: `If-Match` on a key that is not there is a failed
/// condition, as the trait promises. AWS answers it with 404 NoSuchKey, Ceph RGW 16 with
/// 412; either way the version the write expected is gone. (A 404 NoSuchUpload of a
/// completion stays NotFound.)
fn classify_write<E>(cond: &Precondition) -> impl Fn(SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let if_match = matches!(cond, Precondition::Matches(_));
    move |err| {
        let no_such_key = err
            .as_service_error()
            .is_some_and(|e| e.code() == Some("NoSuchKey"));
        if if_match && no_such_key {
            StoreError::PreconditionFailed
        } else {
            classify(err)
        }
    }
}

/// Fails an attempt whose successful XML answer does not end with its root's closing tag,
/// as a response error (which the SDK retries). The SDK's XML reader accepts a document cut
/// off between two elements, so a LIST answer cut short with matching framing (a broken
/// proxy, a server closing early) would otherwise look like a whole page with fewer keys.
#[derive(Debug)]
struct WholeDocument(&'static str);

impl Intercept for WholeDocument {
    fn name(&self) -> &'static str {
        "WholeDocument"
    }

    fn modify_before_attempt_completion(
        &self,
        ctx: &mut FinalizerInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(resp) = ctx.response() else {
            return Ok(());
        };
        if !resp.status().is_success() {
            return Ok(());
        }
        let whole = resp
            .body()
            .bytes()
            .is_some_and(|b| b.trim_ascii_end().ends_with(self.0.as_bytes()));
        if !whole && let Some(out @ Ok(_)) = ctx.output_or_error_mut() {
            *out = Err(OrchestratorError::response(
                format!("incomplete XML answer: no {} at its end", self.0).into(),
            ));
        }
        Ok(())
    }
}

impl S3Store {
    /// A write refused as a precondition failure may be our own write whose answer was lost
    /// and whose retry then found it: the object there with exactly our ETag is ours.
    async fn written_by_a_lost_answer(
        &self,
        key: &str,
        err: StoreError,
        ours: Option<String>,
    ) -> Result<Written, StoreError> {
        if !matches!(err, StoreError::PreconditionFailed) {
            return Err(err);
        }
        if let Some(ours) = ours
            && let Ok(meta) = self.head(key).await
            && meta.etag == ours
        {
            tracing::debug!(key, etag = %ours, "conditional write found in place after a retry: ours");
            return Ok(Written { etag: ours });
        }
        Err(err)
    }
}

impl ObjectStore for S3Store {
    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        from: ListFrom,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .encoding_type(EncodingType::Url)
            .set_max_keys(max_keys);
        req = match from {
            ListFrom::Start => req,
            ListFrom::Token(t) => req.continuation_token(t),
            ListFrom::After(k) => req.start_after(k),
        };
        if delimited {
            req = req.delimiter("/");
        }
        let out = req
            .customize()
            .interceptor(WholeDocument("</ListBucketResult>"))
            .send()
            .await
            .map_err(classify)?;
        // Keys come URL-encoded if the server honoured the request (a server that ignores
        // it sends them as they are, and says so by omitting EncodingType).
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        let key_of = |k: &str| -> Option<String> {
            if !encoded {
                return Some(k.to_string());
            }
            let decoded = urlkey::decode(k);
            if decoded.is_none() {
                tracing::warn!(
                    key = k,
                    "listed key is not URL-encoded UTF-8; hidden (request id {})",
                    out.request_id().unwrap_or("-")
                );
            }
            decoded
        };
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: key_of(o.key()?)?,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: to_system_time(o.last_modified()),
                    etag: o.e_tag().unwrap_or("").to_string(),
                })
            })
            .collect();
        let prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| key_of(p.prefix()?))
            .collect();
        // A truncated page without a token would loop forever; treat it as the end.
        let next = match out.is_truncated() {
            Some(true) => out.next_continuation_token().map(str::to_string),
            _ => None,
        };
        Ok(ListPage {
            objects,
            prefixes,
            next,
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            last_modified: to_system_time(out.last_modified()),
            etag: out.e_tag().unwrap_or("").to_string(),
        })
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
    ) -> Result<Written, StoreError> {
        let digest = md5(&body);
        let put = |if_match: Option<&str>| {
            let req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_md5(b64(&digest))
                .body(aws_sdk_s3::primitives::ByteStream::from(body.clone()));
            match (cond, if_match) {
                (Precondition::Absent, _) => req.if_none_match("*"),
                (Precondition::Matches(_), Some(e)) => req.if_match(e),
                (Precondition::Matches(e), None) => req.if_match(e),
            }
            .send()
        };
        let mut result = put(None).await.map_err(classify_write(cond));
        // Ceph RGW 16 compares If-Match on PUT with the ETag without its quotes, so it
        // refuses the quoted (RFC 7232) form even when the version is the one expected. When
        // the object there is exactly that version, ask again in RGW's form (AWS S3 never
        // refuses a matching If-Match, so never gets here).
        if let (Err(StoreError::PreconditionFailed), Precondition::Matches(e)) = (&result, cond)
            && e.starts_with('"')
            && self.head(key).await.is_ok_and(|m| m.etag == *e)
        {
            tracing::debug!(
                key,
                "If-Match refused for the current version; asking again unquoted"
            );
            result = put(Some(e.trim_matches('"')))
                .await
                .map_err(classify_write(cond));
        }
        match result {
            Ok(out) => Ok(Written {
                etag: out.e_tag().unwrap_or("").to_string(),
            }),
            Err(e) => {
                let ours = format!("\"{}\"", hex(&digest));
                self.written_by_a_lost_answer(key, e, Some(ours)).await
            }
        }
    }

    async fn create_upload(&self, key: &str) -> Result<String, StoreError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other(format!("CreateMultipartUpload {key}: no upload id")))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_md5(b64(&md5(&body)))
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .map_err(classify)?;
        out.e_tag().map(str::to_string).ok_or_else(|| {
            StoreError::Transient(format!("UploadPart {key} #{number}: no ETag in the answer"))
        })
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[Part],
        cond: &Precondition,
    ) -> Result<Written, StoreError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.number as i32)
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed);
        let req = match cond {
            Precondition::Absent => req.if_none_match("*"),
            Precondition::Matches(e) => req.if_match(e),
        };
        match req.send().await.map_err(classify_write(cond)) {
            Ok(out) => {
                let etag = match out.e_tag() {
                    Some(e) if !e.is_empty() => e.to_string(),
                    // Ceph RGW 16 answers `<ETag></ETag>`. The ETag S3 gives a multipart
                    // object is the one computed from the parts; where it cannot be (parts
                    // not MD5s), ask.
                    _ => match multipart_etag(parts) {
                        Some(e) => e,
                        None => self.head(key).await.map(|m| m.etag).unwrap_or_default(),
                    },
                };
                Ok(Written { etag })
            }
            Err(e) => {
                self.written_by_a_lost_answer(key, e, multipart_etag(parts))
                    .await
            }
        }
    }

    async fn abandoned_upload_days(&self) -> Result<Option<u32>, StoreError> {
        let out = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => out,
            // No lifecycle configuration at all.
            Err(e)
                if e.as_service_error()
                    .and_then(|s| s.meta().code())
                    .is_some_and(|c| c == "NoSuchLifecycleConfiguration") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(classify(e)),
        };
        use aws_sdk_s3::types::ExpirationStatus;
        // The shortest enabled rule that aborts uploads (a filter narrower than the bucket
        // counts too: it is reported, not second-guessed).
        Ok(out
            .rules()
            .iter()
            .filter(|r| r.status() == &ExpirationStatus::Enabled)
            .filter_map(|r| {
                r.abort_incomplete_multipart_upload()?
                    .days_after_initiation()
            })
            .filter_map(|d| u32::try_from(d).ok())
            .min())
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
        size: u64,
    ) -> Result<ByteStream, StoreError> {
        let want = range.end - range.start;
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1));
        if !etag.is_empty() {
            req = req.if_match(etag);
        }
        // One attempt: the reader retries ranged GETs itself, resuming after the blocks it
        // already has, so GETs are not retried twice over.
        let out = req
            .customize()
            .config_override(aws_sdk_s3::Config::builder().retry_config(RetryConfig::disabled()))
            .send()
            .await
            .map_err(classify)?;
        let rid = out.request_id().unwrap_or("-").to_string();
        // Never hand out bytes of another version or another range.
        if !etag.is_empty() {
            match out.e_tag() {
                Some(e) if e == etag => {}
                Some(e) => {
                    tracing::warn!(key, pinned = etag, got = e, request_id = %rid, "GET answered with another ETag");
                    return Err(StoreError::PreconditionFailed);
                }
                None => {
                    return Err(StoreError::Transient(format!(
                        "GET {key} {range:?}: no ETag in the response (request id {rid})"
                    )));
                }
            }
        }
        // The length must be known up front: HTTP framing then guarantees the body cannot
        // run past it, and a short body is caught by the reader.
        match out.content_length() {
            Some(len) if len as u64 == want => {}
            len => {
                return Err(StoreError::Transient(format!(
                    "GET {key} {range:?}: Content-Length {len:?}, expected {want} (request id {rid})"
                )));
            }
        }
        // A part of the object must say which part of how much: the total tells another
        // version apart even where the server sends no ETag.
        match out.content_range() {
            Some(cr) => {
                let expected = format!("bytes {}-{}/", range.start, range.end - 1);
                let Some(total) = cr.strip_prefix(&expected) else {
                    return Err(StoreError::Transient(format!(
                        "GET {key}: Content-Range {cr:?}, expected {expected:?} (request id {rid})"
                    )));
                };
                if total != "*" && total.parse::<u64>().ok() != Some(size) {
                    tracing::warn!(key, size, content_range = cr, request_id = %rid, "GET answered for an object of another size");
                    return Err(StoreError::PreconditionFailed);
                }
            }
            None if range != (0..size) => {
                return Err(StoreError::Transient(format!(
                    "GET {key} {range:?}: no Content-Range in a partial answer (request id {rid})"
                )));
            }
            None => {}
        }
        let body = out.body;
        let stream = futures::stream::unfold((body, rid), |(mut body, rid)| async move {
            match body.next().await {
                None => None,
                Some(Ok(b)) => {
                    crate::metrics::S3.bytes_read.add(b.len() as u64);
                    Some((Ok(b), (body, rid)))
                }
                Some(Err(e)) => {
                    let err = StoreError::Transient(format!(
                        "body: {} (request id {rid})",
                        DisplayErrorContext(&e)
                    ));
                    Some((Err(err), (body, rid)))
                }
            }
        });
        Ok(Box::pin(stream))
    }
}
