//! A store that answers like the one it wraps, except where a rule says otherwise: errors,
//! stalls, short, cut, stalled or corrupted bodies, another version of an object. For
//! tests of what the filesystem does when S3 misbehaves, without a network (the HTTP fault
//! proxy of the integration tests covers what only the wire shows).
//!
//! ```
//! # use s3_oidc_mount::store::{StoreError, memory::MemoryStore};
//! # use s3_oidc_mount::store::fault::{FaultStore, Op, Rule};
//! let store = FaultStore::new(MemoryStore::new());
//! // The first two parts uploaded under a/ fail, then parts go through.
//! store.add(
//!     Rule::new(Op::UploadPart)
//!         .key_prefix("a/")
//!         .first(2)
//!         .fail(StoreError::Transient("injected".into())),
//! );
//! ```

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{
    ByteStream, ListFrom, ListPage, ObjectMeta, ObjectStore, Part, Precondition, StoreError,
    Written,
};
use crate::util::lock;

/// The operations of [`ObjectStore`], which rules and counters are kept by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    List,
    Head,
    Put,
    CreateUpload,
    UploadPart,
    CompleteUpload,
    AbortUpload,
    GetRange,
}

const OPS: usize = 8;

/// What a rule does to a call it fires on.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answers this error; the inner store is not asked.
    Error(StoreError),
    /// Waits this long (tokio time, so paused-time tests skip it), then answers normally.
    Stall(Duration),
    /// GET: the body ends, without an error, after this many bytes.
    ShortBody(u64),
    /// GET: every byte of the body is inverted (same length, wrong bytes).
    CorruptBody,
    /// GET: after this many bytes the body fails with this error.
    BodyError(u64, StoreError),
    /// GET: after this many bytes the body sends nothing for this long, then the rest.
    BodyStall(u64, Duration),
    /// The key is at another version than the caller knows: HEAD and listings report
    /// another ETag, and a GET or an `If-Match` write pinned to the real one fails as
    /// after a change (the inner store is asked with the other ETag).
    ChangedEtag,
    /// As `ChangedEtag` for the size: HEAD and listings report one byte more, and a GET
    /// pinned to the real size is asked with that one.
    ChangedSize,
}

#[derive(Clone, Debug)]
enum KeyMatch {
    Any,
    Exact(String),
    Prefix(String),
}

/// Which calls get a fault: an operation, optionally a key (for a listing, its prefix
/// argument), optionally only some of the matching calls. Without a fault, a rule only
/// counts the calls it matches.
#[derive(Clone, Debug)]
pub struct Rule {
    op: Op,
    key: KeyMatch,
    first: Option<u64>,
    every: u64,
    fault: Option<Fault>,
}

impl Rule {
    pub fn new(op: Op) -> Self {
        Rule {
            op,
            key: KeyMatch::Any,
            first: None,
            every: 1,
            fault: None,
        }
    }

    pub fn key(mut self, key: &str) -> Self {
        self.key = KeyMatch::Exact(key.to_string());
        self
    }

    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.key = KeyMatch::Prefix(prefix.to_string());
        self
    }

    /// Only the first `n` matching calls (counted among those matching op and key).
    pub fn first(mut self, n: u64) -> Self {
        self.first = Some(n);
        self
    }

    /// Only every `n`-th matching call (the n-th, 2n-th, ...). With [`Rule::first`], both
    /// hold: `.every(2).first(2)` fires on the second matching call only.
    pub fn every(mut self, n: u64) -> Self {
        self.every = n.max(1);
        self
    }

    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    pub fn fail(self, e: StoreError) -> Self {
        self.fault(Fault::Error(e))
    }

    pub fn stall(self, d: Duration) -> Self {
        self.fault(Fault::Stall(d))
    }

    pub fn short_body(self, after: u64) -> Self {
        self.fault(Fault::ShortBody(after))
    }

    pub fn corrupt_body(self) -> Self {
        self.fault(Fault::CorruptBody)
    }

    pub fn body_error(self, after: u64, e: StoreError) -> Self {
        self.fault(Fault::BodyError(after, e))
    }

    pub fn stall_body(self, after: u64, d: Duration) -> Self {
        self.fault(Fault::BodyStall(after, d))
    }

    pub fn changed_etag(self) -> Self {
        self.fault(Fault::ChangedEtag)
    }

    pub fn changed_size(self) -> Self {
        self.fault(Fault::ChangedSize)
    }

    fn matches(&self, op: Op, key: &str) -> bool {
        self.op == op
            && match &self.key {
                KeyMatch::Any => true,
                KeyMatch::Exact(k) => k == key,
                KeyMatch::Prefix(p) => key.starts_with(p.as_str()),
            }
    }
}

/// Handle of an added rule, for [`FaultStore::matched`] and [`FaultStore::fired`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId(usize);

struct Active {
    rule: Rule,
    matched: u64,
    fired: u64,
}

/// An [`ObjectStore`] that delegates to `S`, applying the rules added with
/// [`FaultStore::add`]. When several rules fire on a call, the one added first applies
/// (every matching rule still counts the call).
pub struct FaultStore<S> {
    inner: S,
    rules: Mutex<Vec<Active>>,
    calls: [AtomicU64; OPS],
    gets: Mutex<Vec<(String, Range<u64>)>>,
}

impl<S: ObjectStore> FaultStore<S> {
    pub fn new(inner: S) -> Self {
        FaultStore {
            inner,
            rules: Mutex::new(Vec::new()),
            calls: Default::default(),
            gets: Mutex::new(Vec::new()),
        }
    }

    /// The wrapped store, to set up or inspect data without faults or counting.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn add(&self, rule: Rule) -> RuleId {
        let mut rules = lock(&self.rules);
        rules.push(Active {
            rule,
            matched: 0,
            fired: 0,
        });
        RuleId(rules.len() - 1)
    }

    /// Removes every rule (counters of calls stay).
    pub fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// Calls of `op` so far, faulted or not.
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op as usize].load(Ordering::Relaxed)
    }

    /// Calls the rule matched (by op and key) so far; 0 once cleared.
    pub fn matched(&self, id: RuleId) -> u64 {
        lock(&self.rules).get(id.0).map_or(0, |a| a.matched)
    }

    /// Calls the rule's fault was applied to so far; 0 once cleared.
    pub fn fired(&self, id: RuleId) -> u64 {
        lock(&self.rules).get(id.0).map_or(0, |a| a.fired)
    }

    /// Every `get_range` call so far: key and range, in order.
    pub fn get_ranges(&self) -> Vec<(String, Range<u64>)> {
        lock(&self.gets).clone()
    }

    /// Counts the call and picks its fault, if any.
    fn fault_for(&self, op: Op, key: &str) -> Option<Fault> {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
        let mut chosen = None;
        for a in lock(&self.rules).iter_mut() {
            if !a.rule.matches(op, key) {
                continue;
            }
            a.matched += 1;
            let n = a.matched;
            let fires = n.is_multiple_of(a.rule.every) && a.rule.first.is_none_or(|f| n <= f);
            if fires
                && chosen.is_none()
                && let Some(f) = &a.rule.fault
            {
                a.fired += 1;
                chosen = Some(f.clone());
            }
        }
        if let Some(f) = &chosen {
            tracing::debug!(?op, key, fault = ?f, "injecting a fault");
        }
        chosen
    }
}

/// What happens before the inner store is asked: an error instead, or a wait.
async fn before(fault: &Option<Fault>) -> Result<(), StoreError> {
    match fault {
        Some(Fault::Error(e)) => Err(e.clone()),
        Some(Fault::Stall(d)) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An ETag no version has: what the key answers with as "another version".
fn other_etag(etag: &str) -> String {
    format!("\"{}-changed\"", etag.trim_matches('"'))
}

fn change_meta(fault: &Option<Fault>, meta: &mut ObjectMeta) {
    match fault {
        Some(Fault::ChangedEtag) => meta.etag = other_etag(&meta.etag),
        Some(Fault::ChangedSize) => meta.size += 1,
        _ => {}
    }
}

/// The condition as the inner store sees it: pinned to another version under ChangedEtag.
fn change_cond(fault: &Option<Fault>, cond: &Precondition) -> Precondition {
    match (fault, cond) {
        (Some(Fault::ChangedEtag), Precondition::Matches(e)) => {
            Precondition::Matches(other_etag(e))
        }
        _ => cond.clone(),
    }
}

/// What a body does once its first bytes are through.
enum Then {
    End,
    Fail(StoreError),
    Pause(Duration),
}

/// Passes the first `at` bytes of `body` through (splitting a chunk if needed), then does
/// `then`; after a pause the rest follows.
fn cut(body: ByteStream, at: u64, then: Then) -> ByteStream {
    struct St {
        body: ByteStream,
        left: u64,
        pending: Option<Bytes>,
        then: Option<Then>,
        done: bool,
    }
    let st = St {
        body,
        left: at,
        pending: None,
        then: Some(then),
        done: false,
    };
    Box::pin(futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if st.left == 0 {
            match st.then.take() {
                Some(Then::End) => return None,
                Some(Then::Fail(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                Some(Then::Pause(d)) => tokio::time::sleep(d).await,
                None => {}
            }
        }
        let mut chunk = match st.pending.take() {
            Some(c) => c,
            None => match st.body.next().await? {
                Ok(c) => c,
                Err(e) => return Some((Err(e), st)),
            },
        };
        if st.then.is_some() && chunk.len() as u64 > st.left {
            st.pending = Some(chunk.split_off(st.left as usize));
        }
        if st.then.is_some() {
            st.left -= chunk.len() as u64;
        }
        Some((Ok(chunk), st))
    }))
}

impl<S: ObjectStore> ObjectStore for FaultStore<S> {
    async fn list_page(
        &self,
        prefix: &str,
        delimited: bool,
        from: ListFrom,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        let fault = self.fault_for(Op::List, prefix);
        before(&fault).await?;
        let mut page = self
            .inner
            .list_page(prefix, delimited, from, max_keys)
            .await?;
        for o in &mut page.objects {
            change_meta(&fault, o);
        }
        Ok(page)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let fault = self.fault_for(Op::Head, key);
        before(&fault).await?;
        let mut meta = self.inner.head(key).await?;
        change_meta(&fault, &mut meta);
        Ok(meta)
    }

    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
    ) -> Result<Written, StoreError> {
        let fault = self.fault_for(Op::Put, key);
        before(&fault).await?;
        let cond = change_cond(&fault, cond);
        self.inner.put_object(key, body, &cond).await
    }

    async fn create_upload(&self, key: &str) -> Result<String, StoreError> {
        let fault = self.fault_for(Op::CreateUpload, key);
        before(&fault).await?;
        self.inner.create_upload(key).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let fault = self.fault_for(Op::UploadPart, key);
        before(&fault).await?;
        self.inner.upload_part(key, upload_id, number, body).await
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[Part],
        cond: &Precondition,
    ) -> Result<Written, StoreError> {
        let fault = self.fault_for(Op::CompleteUpload, key);
        before(&fault).await?;
        let cond = change_cond(&fault, cond);
        self.inner
            .complete_upload(key, upload_id, parts, &cond)
            .await
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let fault = self.fault_for(Op::AbortUpload, key);
        before(&fault).await?;
        self.inner.abort_upload(key, upload_id).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
        size: u64,
    ) -> Result<ByteStream, StoreError> {
        let fault = self.fault_for(Op::GetRange, key);
        lock(&self.gets).push((key.to_string(), range.clone()));
        before(&fault).await?;
        let (etag, size) = match &fault {
            Some(Fault::ChangedEtag) => (other_etag(etag), size),
            Some(Fault::ChangedSize) => (etag.to_string(), size + 1),
            _ => (etag.to_string(), size),
        };
        let body = self.inner.get_range(key, range, &etag, size).await?;
        Ok(match fault {
            Some(Fault::ShortBody(n)) => cut(body, n, Then::End),
            Some(Fault::BodyError(n, e)) => cut(body, n, Then::Fail(e)),
            Some(Fault::BodyStall(n, d)) => cut(body, n, Then::Pause(d)),
            Some(Fault::CorruptBody) => {
                Box::pin(body.map_ok(|b| b.iter().map(|x| !x).collect::<Vec<u8>>().into()))
            }
            _ => body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn transient() -> StoreError {
        StoreError::Transient("injected".into())
    }

    /// Outcome of a HEAD as a short string, for compact assertions.
    async fn head(s: &FaultStore<MemoryStore>, key: &str) -> String {
        match s.head(key).await {
            Ok(m) => format!("{} {}", m.size, m.etag),
            Err(e) => format!("{e:?}"),
        }
    }

    /// The body of a GET: bytes until the end or the first error.
    async fn body(mut b: ByteStream) -> (Vec<u8>, Option<StoreError>) {
        let mut got = Vec::new();
        while let Some(c) = b.next().await {
            match c {
                Ok(c) => got.extend_from_slice(&c),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    #[tokio::test]
    async fn rules_match_by_op_key_first_and_every() {
        let s = FaultStore::new(MemoryStore::new());
        s.inner().put("a/1", "x");
        s.inner().put("b", "yy");
        let exact = s.add(
            Rule::new(Op::Head)
                .key("b")
                .first(2)
                .fail(StoreError::NotFound),
        );
        let every = s.add(
            Rule::new(Op::Head)
                .key_prefix("a/")
                .every(3)
                .fail(transient()),
        );
        let counting = s.add(Rule::new(Op::Head));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(head(&s, "b").await);
        }
        for _ in 0..6 {
            got.push(head(&s, "a/1").await);
        }
        let t = "Transient(\"injected\")";
        assert_eq!(
            got,
            [
                "NotFound", "NotFound", "2 \"v1\"", "1 \"v0\"", "1 \"v0\"", t, "1 \"v0\"",
                "1 \"v0\"", t
            ]
        );
        assert_eq!((s.matched(exact), s.fired(exact)), (3, 2));
        assert_eq!((s.matched(every), s.fired(every)), (6, 2));
        assert_eq!((s.matched(counting), s.fired(counting)), (9, 0));
        assert_eq!((s.calls(Op::Head), s.calls(Op::List)), (9, 0));
        // every + first: only the second matching call.
        s.clear();
        s.add(Rule::new(Op::Head).every(2).first(2).fail(transient()));
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(head(&s, "b").await);
        }
        assert_eq!(got, ["2 \"v1\"", t, "2 \"v1\"", "2 \"v1\""]);
        // The first rule added wins when two fire.
        s.clear();
        s.add(Rule::new(Op::Head).fail(StoreError::PreconditionFailed));
        s.add(Rule::new(Op::Head).fail(transient()));
        assert_eq!(head(&s, "b").await, "PreconditionFailed");
    }

    #[tokio::test]
    async fn body_faults_cut_stall_and_corrupt_at_the_byte() {
        let s = FaultStore::new(MemoryStore::new());
        let data: Vec<u8> = (0..100u8).collect();
        s.inner().put("k", data.clone());
        let etag = s.head("k").await.unwrap().etag;
        let get = |r: Range<u64>| s.get_range("k", r, &etag, 100);

        s.add(Rule::new(Op::GetRange).first(1).short_body(30));
        let (got, err) = body(get(10..90).await.unwrap()).await;
        assert_eq!((got, err.is_none()), (data[10..40].to_vec(), true));
        let (got, err) = body(get(10..90).await.unwrap()).await;
        assert_eq!((got, err.is_none()), (data[10..90].to_vec(), true));

        s.clear();
        s.add(Rule::new(Op::GetRange).body_error(7, transient()));
        let (got, err) = body(get(0..100).await.unwrap()).await;
        assert_eq!(got, data[..7]);
        assert!(matches!(err, Some(StoreError::Transient(_))), "{err:?}");
        // Cut at 0: the error comes first.
        s.clear();
        s.add(Rule::new(Op::GetRange).body_error(0, StoreError::NotFound));
        let (got, err) = body(get(0..100).await.unwrap()).await;
        assert!(got.is_empty() && matches!(err, Some(StoreError::NotFound)));

        s.clear();
        s.add(Rule::new(Op::GetRange).corrupt_body());
        let (got, err) = body(get(5..8).await.unwrap()).await;
        assert_eq!((got, err.is_none()), (vec![!5, !6, !7], true));
        assert_eq!(
            s.get_ranges()
                .iter()
                .map(|(_, r)| r.clone())
                .collect::<Vec<_>>(),
            [10..90, 10..90, 0..100, 0..100, 5..8]
        );
        assert_eq!(s.calls(Op::GetRange), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn stalls_wait_in_tokio_time() {
        let s = FaultStore::new(MemoryStore::new());
        let data = vec![9u8; 50];
        s.inner().put("k", data.clone());
        let etag = s.head("k").await.unwrap().etag;
        s.add(
            Rule::new(Op::GetRange)
                .first(1)
                .stall(Duration::from_secs(7)),
        );
        s.add(Rule::new(Op::GetRange).stall_body(20, Duration::from_secs(3)));
        let t0 = tokio::time::Instant::now();
        let mut b = s.get_range("k", 0..50, &etag, 50).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(7));
        assert_eq!(
            b.next().await.map(|c| c.map(|c| c.len()).ok()),
            Some(Some(50))
        );
        // The second GET: 20 bytes at once, the other 30 three seconds later.
        let t1 = tokio::time::Instant::now();
        let mut b = s.get_range("k", 0..50, &etag, 50).await.unwrap();
        let first = b.next().await.and_then(|c| c.ok()).map(|c| c.len());
        assert_eq!((first, t1.elapsed()), (Some(20), Duration::ZERO));
        let (rest, err) = body(b).await;
        assert_eq!((rest.len(), err.is_none()), (30, true));
        assert_eq!(t1.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn another_version_is_reported_and_refused() {
        let s = FaultStore::new(MemoryStore::new());
        let etag = s
            .put_object("k", Bytes::from_static(b"abc"), &Precondition::Absent)
            .await
            .unwrap()
            .etag;
        s.add(Rule::new(Op::Head).changed_etag());
        s.add(Rule::new(Op::List).changed_size());
        s.add(Rule::new(Op::GetRange).first(1).changed_etag());
        s.add(Rule::new(Op::GetRange).first(2).changed_size());
        s.add(Rule::new(Op::Put).changed_etag());
        let head = s.head("k").await.unwrap();
        assert_eq!(head.etag, other_etag(&etag));
        assert_ne!(head.etag, etag);
        let page = s.list_page("", false, ListFrom::Start, None).await.unwrap();
        assert_eq!((page.objects[0].size, &page.objects[0].etag), (4, &etag));
        for _ in 0..2 {
            assert!(matches!(
                s.get_range("k", 0..3, &etag, 3).await.err(),
                Some(StoreError::PreconditionFailed)
            ));
        }
        let (got, _) = body(s.get_range("k", 0..3, &etag, 3).await.unwrap()).await;
        assert_eq!(got, b"abc");
        let put = s
            .put_object(
                "k",
                Bytes::from_static(b"new"),
                &Precondition::Matches(etag),
            )
            .await;
        assert!(
            matches!(put, Err(StoreError::PreconditionFailed)),
            "{put:?}"
        );
        assert_eq!(s.inner().get("k").as_deref(), Some(&b"abc"[..]));
    }
}
