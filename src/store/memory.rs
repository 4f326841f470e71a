//! In-memory object store for unit tests: S3 listing semantics (delimiter, pages,
//! continuation), ETags that change on every put, If-Match on ranged reads.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;

use super::{ByteStream, ListFrom, ListPage, ObjectMeta, ObjectStore, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, ObjectMeta)>>,
    version: AtomicU64,
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
        let data = data.into();
        let v = self.version.fetch_add(1, Ordering::Relaxed);
        let meta = ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            last_modified: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_700_000_000 + v),
            etag: format!("\"v{v}\""),
        };
        self.lock().insert(key.to_string(), (data, meta));
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
