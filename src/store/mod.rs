//! Object storage behind a small trait, so the filesystem can be tested without S3.

pub mod conformance;
pub mod fault;
pub mod memory;
mod observe;
pub mod s3;
pub mod urlkey;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

/// One object as seen in a listing or a HEAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
    pub etag: String,
}

/// One page of a ListObjectsV2 call.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes (directories), each ending with the delimiter.
    pub prefixes: Vec<String>,
    /// Token for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Where a listing page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListFrom {
    Start,
    /// The continuation token of the previous page.
    Token(String),
    /// Keys strictly after this one (S3's StartAfter).
    After(String),
}

/// A body of a ranged GET: chunks in order, ending after exactly the requested length
/// (the reader checks that, a short or long body is an error).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// What a write requires of the key's current version: every write is conditional, so no
/// write ever replaces a version the app did not see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist (`If-None-Match: *`): a new file.
    Absent,
    /// The key must be this version (`If-Match: ETAG`): a change to what the app opened.
    Matches(String),
}

/// The version a write created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub etag: String,
}

/// One uploaded part of a multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// 1..=10,000, ascending in a completion.
    pub number: u32,
    pub etag: String,
}

/// Multipart limits of S3: at most this many parts, each but the last at least
/// [`MIN_PART_SIZE`] bytes.
pub const MAX_PARTS: u32 = 10_000;
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// What a store can fail with. The variants are the distinctions the filesystem acts on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("object changed (ETag no longer matches)")]
    PreconditionFailed,
    #[error("bucket does not exist")]
    NoSuchBucket,
    #[error("access denied ({code}): {message}")]
    AccessDenied { code: String, message: String },
    #[error("credentials unavailable: {0}")]
    Credentials(String),
    #[error("cannot reach endpoint: {0}")]
    Unreachable(String),
    /// Throttling, 5xx, timeouts, resets, bodies of the wrong length: worth retrying.
    #[error("transient error: {0}")]
    Transient(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::Unreachable(_))
    }
}

/// The operations the filesystem needs from an object store. Keys are full keys
/// (mount prefix included); the filesystem does all path mapping.
pub trait ObjectStore: Send + Sync + 'static {
    /// One page of ListObjectsV2 under `prefix`, with `/` as delimiter when `delimited`.
    fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        from: ListFrom,
        max_keys: Option<i32>,
    ) -> impl Future<Output = Result<ListPage, StoreError>> + Send;

    fn head(&self, key: &str) -> impl Future<Output = Result<ObjectMeta, StoreError>> + Send;

    /// Writes `body` as the whole object `key`, if `cond` holds (else `PreconditionFailed`,
    /// also for `Matches` on a key that is not there).
    fn put_object(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send;

    /// Starts a multipart upload of `key`; returns its upload id. Nothing is visible under
    /// the key until it is completed.
    fn create_upload(&self, key: &str) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Uploads part `number` of an upload (again with the same number replaces it).
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Completes an upload from `parts` (ascending), if `cond` holds: AWS S3 checks the
    /// condition at completion. Ceph RGW 16 ignores it there (docs/semantics.md).
    fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[Part],
        cond: &Precondition,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send;

    /// Abandons an upload: its parts are dropped, nothing appears under the key.
    fn abort_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// After how many days the bucket's lifecycle rules abort an incomplete multipart upload
    /// under the keys this store writes (`None`: no such rule), for `doctor`.
    fn abandoned_upload_days(
        &self,
    ) -> impl Future<Output = Result<Option<u32>, StoreError>> + Send {
        async { Err(StoreError::Other("not known for this store".into())) }
    }

    /// GET of `range` (non-empty, within the object) of the version with `etag` and `size`.
    /// An answer for an object of another size is refused as a changed object: with a
    /// server that sends no ETags, the size is all that tells two versions apart.
    fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
        size: u64,
    ) -> impl Future<Output = Result<ByteStream, StoreError>> + Send;
}

/// A shared store is a store (a test keeps a handle on the one it hands out).
impl<S: ObjectStore> ObjectStore for Arc<S> {
    fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        from: ListFrom,
        max_keys: Option<i32>,
    ) -> impl Future<Output = Result<ListPage, StoreError>> + Send {
        (**self).list_page(prefix, delimited, from, max_keys)
    }

    fn head(&self, key: &str) -> impl Future<Output = Result<ObjectMeta, StoreError>> + Send {
        (**self).head(key)
    }

    fn put_object(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send {
        (**self).put_object(key, body, cond)
    }

    fn create_upload(&self, key: &str) -> impl Future<Output = Result<String, StoreError>> + Send {
        (**self).create_upload(key)
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> impl Future<Output = Result<String, StoreError>> + Send {
        (**self).upload_part(key, upload_id, number, body)
    }

    fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[Part],
        cond: &Precondition,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send {
        (**self).complete_upload(key, upload_id, parts, cond)
    }

    fn abort_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).abort_upload(key, upload_id)
    }

    fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
        size: u64,
    ) -> impl Future<Output = Result<ByteStream, StoreError>> + Send {
        (**self).get_range(key, range, etag, size)
    }
}
