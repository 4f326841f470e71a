//! In-memory object store for tests: S3 listing semantics (delimiter, pages, continuation),
//! ETags that change on every put, If-Match on ranged reads, and AWS's rules for writes:
//! conditional puts and conditional multipart completions (which Ceph RGW 16 ignores),
//! part sizes and numbers, nothing visible before completion.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;

use super::{
    ByteStream, ListFrom, ListPage, MAX_PARTS, MIN_PART_SIZE, ObjectMeta, ObjectStore, Part,
    Precondition, StoreError, Written,
};

/// An upload in progress: its key and parts (number -> body, ETag).
type Upload = (String, BTreeMap<u32, (Bytes, String)>);

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, ObjectMeta)>>,
    uploads: Mutex<HashMap<String, Upload>>,
    version: AtomicU64,
    /// Writes (puts and completed uploads) done through the trait.
    pub writes: AtomicU64,
    /// Number of GET requests served, so tests can check caching.
    pub gets: AtomicU64,
    /// Number of LIST requests served.
    pub lists: AtomicU64,
    page_size: usize,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_page_size(1000)
    }

    /// A store that returns at most `page_size` entries per LIST page.
    pub fn with_page_size(page_size: usize) -> Self {
        MemoryStore {
            page_size: page_size.max(1),
            ..Default::default()
        }
    }

    pub fn put(&self, key: &str, data: impl Into<Bytes>) {
        Self::store(&mut self.lock(), &self.version, key, data.into());
    }

    /// Stores a new version of `key` and returns its ETag.
    fn store(
        objects: &mut BTreeMap<String, (Bytes, ObjectMeta)>,
        version: &AtomicU64,
        key: &str,
        data: Bytes,
    ) -> String {
        let v = version.fetch_add(1, Ordering::Relaxed);
        let meta = ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            last_modified: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_700_000_000 + v),
            etag: format!("\"v{v}\""),
        };
        let etag = meta.etag.clone();
        objects.insert(key.to_string(), (data, meta));
        etag
    }

    /// The current bytes of `key`.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.lock().get(key).map(|(d, _)| d.clone())
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Multipart uploads started and neither completed nor aborted (what a bucket lifecycle
    /// rule would clean up).
    pub fn uploads_in_progress(&self) -> usize {
        self.uploads_lock().len()
    }

    fn uploads_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(
        objects: &BTreeMap<String, (Bytes, ObjectMeta)>,
        key: &str,
        cond: &Precondition,
    ) -> Result<(), StoreError> {
        let current = objects.get(key).map(|(_, m)| m.etag.as_str());
        match (cond, current) {
            (Precondition::Absent, None) => Ok(()),
            (Precondition::Matches(e), Some(c)) if e == c => Ok(()),
            // If-Match on a missing key too: the S3 store answers it so whether the server
            // says 404 (AWS) or 412 (Ceph RGW 16).
            _ => Err(StoreError::PreconditionFailed),
        }
    }

    pub fn delete(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, ObjectMeta)>> {
        // A panic while holding the lock only happens in a failing test; keep going.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ObjectStore for MemoryStore {
    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        from: ListFrom,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        let max = max_keys.map_or(self.page_size, |m| (m.max(1) as usize).min(self.page_size));
        let objects = self.lock();
        let mut page = ListPage::default();
        let mut count = 0;
        let mut last: Option<String> = None;
        // Our continuation tokens are the last key returned, so both forms mean "after".
        let start = match from {
            ListFrom::Start => String::new(),
            ListFrom::Token(t) | ListFrom::After(t) => t,
        };
        for (key, (_, meta)) in objects.range::<str, _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        )) {
            if !key.starts_with(prefix) {
                break;
            }
            if !start.is_empty() && key.as_str() <= start.as_str() {
                continue;
            }
            let entry = if delimited {
                match key[prefix.len()..].find('/') {
                    Some(i) => {
                        let cp = key[..prefix.len() + i + 1].to_string();
                        if !start.is_empty() && cp.as_str() <= start.as_str() {
                            // Already returned this common prefix on an earlier page.
                            continue;
                        }
                        if page.prefixes.last() == Some(&cp) {
                            continue;
                        }
                        Err(cp)
                    }
                    None => Ok(meta.clone()),
                }
            } else {
                Ok(meta.clone())
            };
            if count == max {
                page.next = last.clone();
                break;
            }
            count += 1;
            match entry {
                Ok(m) => {
                    last = Some(m.key.clone());
                    page.objects.push(m)
                }
                Err(cp) => {
                    // Continue after every key under this prefix.
                    let mut after = cp.clone();
                    after.push(char::MAX);
                    last = Some(after);
                    page.prefixes.push(cp)
                }
            }
        }
        Ok(page)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.lock()
            .get(key)
            .map(|(_, m)| m.clone())
            .ok_or(StoreError::NotFound)
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
    ) -> Result<Written, StoreError> {
        let mut objects = self.lock();
        Self::check(&objects, key, cond)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let etag = Self::store(&mut objects, &self.version, key, body);
        Ok(Written { etag })
    }

    async fn create_upload(&self, key: &str) -> Result<String, StoreError> {
        let id = format!("upload-{}", self.version.fetch_add(1, Ordering::Relaxed));
        self.uploads_lock()
            .insert(id.clone(), (key.to_string(), BTreeMap::new()));
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        if !(1..=MAX_PARTS).contains(&number) {
            return Err(StoreError::Other(format!(
                "InvalidArgument: part number {number} not in 1..={MAX_PARTS}"
            )));
        }
        let mut uploads = self.uploads_lock();
        let (k, parts) = uploads.get_mut(upload_id).ok_or(StoreError::NotFound)?;
        if k != key {
            return Err(StoreError::NotFound);
        }
        let etag = format!("\"p{}\"", self.version.fetch_add(1, Ordering::Relaxed));
        parts.insert(number, (body, etag.clone()));
        Ok(etag)
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[Part],
        cond: &Precondition,
    ) -> Result<Written, StoreError> {
        let mut uploads = self.uploads_lock();
        let (k, stored) = uploads.get(upload_id).ok_or(StoreError::NotFound)?;
        if k != key {
            return Err(StoreError::NotFound);
        }
        if parts.is_empty() || !parts.windows(2).all(|w| w[0].number < w[1].number) {
            return Err(StoreError::Other(
                "InvalidPartOrder: parts must be given in ascending order".into(),
            ));
        }
        let mut body = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let (data, etag) = stored
                .get(&p.number)
                .filter(|(_, e)| *e == p.etag)
                .ok_or_else(|| StoreError::Other(format!("InvalidPart: part {}", p.number)))?;
            if i + 1 < parts.len() && (data.len() as u64) < MIN_PART_SIZE {
                return Err(StoreError::Other(format!(
                    "EntityTooSmall: part {} has {} bytes ({etag})",
                    p.number,
                    data.len()
                )));
            }
            body.extend_from_slice(data);
        }
        let mut objects = self.lock();
        // AWS checks the condition at completion, and the upload stays open when it fails.
        Self::check(&objects, key, cond)?;
        uploads.remove(upload_id);
        self.writes.fetch_add(1, Ordering::Relaxed);
        let etag = Self::store(&mut objects, &self.version, key, body.into());
        Ok(Written { etag })
    }

    async fn abort_upload(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.uploads_lock()
            .remove(upload_id)
            .map(|_| ())
            .ok_or(StoreError::NotFound)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
        size: u64,
    ) -> Result<ByteStream, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let objects = self.lock();
        let (data, meta) = objects.get(key).ok_or(StoreError::NotFound)?;
        if meta.etag != etag || meta.size != size {
            return Err(StoreError::PreconditionFailed);
        }
        if range.start >= range.end || range.end > data.len() as u64 {
            return Err(StoreError::Other(format!("invalid range {range:?}")));
        }
        let chunk = data.slice(range.start as usize..range.end as usize);
        Ok(Box::pin(futures::stream::iter([Ok(chunk)])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_all(s: &MemoryStore, prefix: &str) -> (Vec<String>, Vec<String>) {
        let (mut objs, mut cps, mut next) = (vec![], vec![], None);
        loop {
            let from = next.map_or(ListFrom::Start, ListFrom::Token);
            let p = s.list_page(prefix, true, from, None).await.unwrap();
            objs.extend(p.objects.into_iter().map(|o| o.key));
            cps.extend(p.prefixes);
            next = p.next;
            if next.is_none() {
                return (objs, cps);
            }
        }
    }

    #[tokio::test]
    async fn delimited_listing_pages_like_s3() {
        let s = MemoryStore::with_page_size(2);
        for k in ["a", "a/1", "a/2", "a-b", "b/c/d", "c"] {
            s.put(k, "x");
        }
        let (objs, cps) = list_all(&s, "").await;
        assert_eq!(objs, vec!["a", "a-b", "c"]);
        assert_eq!(cps, vec!["a/", "b/"]);
        let (objs, cps) = list_all(&s, "a/").await;
        assert_eq!(objs, vec!["a/1", "a/2"]);
        assert!(cps.is_empty());
    }
}
