//! Object storage behind a small trait, so the filesystem can be tested without S3.

pub mod memory;
mod observe;
pub mod s3;
pub mod urlkey;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
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
