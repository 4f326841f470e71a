//! Directory listings: every page of a delimited ListObjectsV2, turned into names by the
//! rules of `names`, cached with a TTL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::inodes::{Kind, ObjStat};
use super::names::{DirNames, Hidden};
use futures::StreamExt;
use tokio::sync::watch;

use crate::store::{ListFrom, ListPage, ObjectStore, StoreError};
use crate::util::{RateLimit, lock};

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Arc<str>,
    pub kind: Kind,
    pub stat: Option<ObjStat>,
}

/// A directory's entries, sorted by name, as of `fetched`.
#[derive(Debug)]
pub struct Listing {
    pub entries: Vec<DirEntry>,
    index: HashMap<Arc<str>, usize>,
    pub fetched: Instant,
    /// Set once the subdirectories of this listing have been listed ahead.
    pub children_prefetched: std::sync::atomic::AtomicBool,
}

impl Listing {
    pub fn find(&self, name: &str) -> Option<&DirEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// This listing with `extra` entries (names it does not have) added, in name order.
    pub fn with_extra(&self, extra: Vec<DirEntry>) -> Listing {
        let mut entries = self.entries.clone();
        entries.extend(extra);
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Listing {
            entries,
            index,
            fetched: self.fetched,
            children_prefetched: true.into(),
        }
    }
}

/// At most this many ranges of a large directory are listed at once.
const LIST_PARALLELISM: usize = 8;

/// Lists everything directly under `dir_key`, all pages.
///
/// A directory of more than one page is listed in parallel ranges: from the first page's
/// last name, split points are guessed (the same name with the next characters at the
/// position where names vary, e.g. `f01`, `f02`, ... after `f00999`), and each range
/// `(split_i, split_i+1]` is listed on its own. The ranges cover every key whatever the
/// guess; a bad guess only costs a few empty LISTs, entries seen twice are merged.
pub async fn list_dir<S: ObjectStore>(
    store: &S,
    dir_key: &str,
    warn: &HiddenLog,
) -> Result<Listing, StoreError> {
    let fetched = Instant::now();
    let mut map = DirNames::new(dir_key);
    let first = store
        .list_page(dir_key, true, ListFrom::Start, None)
        .await?;
    let mut pages = 1usize;
    let plan = first
        .next
        .clone()
        .map(|token| (token, split_points(dir_key, &first)));
    add_page(&mut map, &first, warn);
    if let Some((token, splits)) = plan {
        // Range 0 continues with the token up to the first split; range i lists
        // (split_i-1, split_i]; the last one runs to the end.
        let mut ranges: Vec<(ListFrom, Option<String>)> = Vec::with_capacity(splits.len() + 1);
        ranges.push((ListFrom::Token(token), splits.first().cloned()));
        for (i, sp) in splits.iter().enumerate() {
            ranges.push((ListFrom::After(sp.clone()), splits.get(i + 1).cloned()));
        }
        let results: Vec<Result<Vec<ListPage>, StoreError>> = futures::stream::iter(ranges)
            .map(|(from, until)| list_range(store, dir_key, from, until))
            .buffered(LIST_PARALLELISM)
            .collect()
            .await;
        for r in results {
            for page in r? {
                pages += 1;
                add_page(&mut map, &page, warn);
            }
        }
    }
    tracing::debug!(
        dir = dir_key,
        pages,
        entries = map.len(),
        ms = fetched.elapsed().as_millis() as u64,
        "listed"
    );
    Ok(Listing::new(map, fetched))
}

impl Listing {
    fn new(map: DirNames<ObjStat>, fetched: Instant) -> Self {
        let entries: Vec<DirEntry> = map
            .into_entries()
            .map(|(name, file)| DirEntry {
                name,
                kind: if file.is_some() {
                    Kind::File
                } else {
                    Kind::Dir
                },
                stat: file,
            })
            .collect();
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Listing {
            entries,
            index,
            fetched,
            children_prefetched: Default::default(),
        }
    }

    /// The listing of `dir_key` when one page holds all of it (the page has no
    /// continuation), e.g. a small directory seen while looking it up.
    pub fn from_complete_page(
        dir_key: &str,
        page: &ListPage,
        fetched: Instant,
        warn: &HiddenLog,
    ) -> Option<Self> {
        if page.next.is_some() {
            return None;
        }
        let mut map = DirNames::new(dir_key);
        add_page(&mut map, page, warn);
        Some(Listing::new(map, fetched))
    }
}

/// Pages from `from` until an item beyond `until` (dropped) or the end of the listing.
async fn list_range<S: ObjectStore>(
    store: &S,
    dir_key: &str,
    mut from: ListFrom,
    until: Option<String>,
) -> Result<Vec<ListPage>, StoreError> {
    let mut out = Vec::new();
    loop {
        let mut page = store.list_page(dir_key, true, from, None).await?;
        let mut past_end = false;
        if let Some(u) = &until {
            let before = page.objects.len() + page.prefixes.len();
            page.objects.retain(|o| o.key.as_str() <= u.as_str());
            page.prefixes.retain(|p| p.as_str() <= u.as_str());
            past_end = page.objects.len() + page.prefixes.len() < before;
        }
        let next = page.next.take();
        out.push(page);
        // An empty last page without a token is normal (RGW sends one); a token means more.
        match next {
            Some(t) if !past_end => from = ListFrom::Token(t),
            _ => return Ok(out),
        }
    }
}

fn first_item(p: &ListPage) -> Option<&str> {
    let o = p.objects.first().map(|o| o.key.as_str());
    let c = p.prefixes.first().map(String::as_str);
    match (o, c) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn last_item(p: &ListPage) -> Option<&str> {
    let o = p.objects.last().map(|o| o.key.as_str());
    let c = p.prefixes.last().map(String::as_str);
    match (o, c) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Split points after the first page for the rest of a listing, guessed from its names.
/// Where the page's first and last names first differ, the next character to the left is
/// the one that changes next (`f00000.txt`..`f00999.txt` are followed by `f01...`; hex names
/// `00..`..`03..` by `04..`, then `1`..`f`), so the points are the last name's head up to
/// that position followed by each later character seen on the page at or after it (digits
/// and letters only). If none is later, the position moves left. Split points increase and
/// all come after the page's last name; a wrong guess costs a few empty LISTs.
pub fn split_points(dir_key: &str, page: &ListPage) -> Vec<String> {
    const MAX_SPLITS: usize = 32;
    let (Some(first), Some(last)) = (first_item(page), last_item(page)) else {
        return Vec::new();
    };
    let (Some(a), Some(b)) = (first.strip_prefix(dir_key), last.strip_prefix(dir_key)) else {
        return Vec::new();
    };
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    // The alphabet the names are written in: the characters at the positions where the
    // page's names vary (a constant suffix such as ".txt" says nothing), digits and letters
    // only, completed to all digits and to every letter up to the highest one seen.
    let from = common.saturating_sub(1);
    let names: Vec<Vec<char>> = page
        .objects
        .iter()
        .map(|o| o.key.as_str())
        .chain(page.prefixes.iter().map(String::as_str))
        .map(|n| n.get(dir_key.len()..).unwrap_or("").chars().collect())
        .collect();
    let width = names.iter().map(Vec::len).max().unwrap_or(0);
    let mut seen: Vec<char> = Vec::new();
    for p in from..width {
        let mut at: Vec<char> = names.iter().filter_map(|n| n.get(p).copied()).collect();
        at.sort_unstable();
        at.dedup();
        if at.len() > 1 {
            seen.extend(at.into_iter().filter(char::is_ascii_alphanumeric));
        }
    }
    let top = |lo: char, hi: char| {
        seen.iter()
            .filter(|c| (lo..=hi).contains(*c))
            .max()
            .copied()
    };
    let mut alphabet: Vec<char> = Vec::new();
    if top('0', '9').is_some() {
        alphabet.extend('0'..='9');
    }
    if let Some(t) = top('A', 'Z') {
        alphabet.extend('A'..=t);
    }
    if let Some(t) = top('a', 'z') {
        alphabet.extend('a'..=t);
    }
    let mut level = common.min(b.len()).saturating_sub(1);
    loop {
        let Some(&c) = b.get(level) else {
            return Vec::new();
        };
        let head: String = b[..level].iter().collect();
        let mut out: Vec<String> = alphabet
            .iter()
            .filter(|&&x| x > c)
            .map(|x| format!("{dir_key}{head}{x}"))
            .filter(|p| p.as_str() > last)
            .collect();
        if !out.is_empty() || level == 0 {
            out.truncate(MAX_SPLITS);
            return out;
        }
        level -= 1;
    }
}

fn add_page(map: &mut DirNames<ObjStat>, page: &ListPage, warn: &HiddenLog) {
    let mut hidden = |key: &str, why: Hidden| warn.hidden(key, why);
    for cp in &page.prefixes {
        map.add_prefix(cp, &mut hidden);
    }
    for obj in &page.objects {
        let stat = ObjStat {
            size: obj.size,
            mtime: obj.last_modified,
            etag: obj.etag.as_str().into(),
        };
        map.add_object(&obj.key, stat, &mut hidden);
    }
}

type Shared = Option<Result<Arc<Listing>, StoreError>>;

/// Most directory listings kept at once (a walk of a huge tree drops old ones wholesale).
const DIR_CACHE_MAX: usize = 20_000;

/// Cached listings by directory key, each listed by one request chain at a time: callers
/// that ask while a listing is under way share its result.
pub struct DirCache {
    ttl: Duration,
    sweep_at: std::sync::atomic::AtomicUsize,
    map: Mutex<HashMap<Arc<str>, Arc<Listing>>>,
    inflight: Mutex<HashMap<Arc<str>, watch::Receiver<Shared>>>,
}

/// Removes the in-flight entry however the listing ends (even if its task is dropped).
struct InflightGuard<'a> {
    cache: &'a DirCache,
    key: Arc<str>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.cache.inflight).remove(&self.key);
    }
}

impl DirCache {
    pub fn new(ttl: Duration) -> Self {
        DirCache {
            ttl,
            sweep_at: 64.into(),
            map: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The listing of directory `key` if it is younger than the TTL.
    pub fn fresh(&self, key: &str) -> Option<Arc<Listing>> {
        lock(&self.map)
            .get(key)
            .filter(|l| l.fetched.elapsed() < self.ttl)
            .cloned()
    }

    pub fn insert(&self, key: Arc<str>, listing: Arc<Listing>) {
        let mut map = lock(&self.map);
        // Expired listings are only dead weight: sweep them when the map has doubled since
        // the last sweep (not on every insert), and never keep more than a bound.
        let sweep_at = self.sweep_at.load(std::sync::atomic::Ordering::Relaxed);
        if map.len() >= sweep_at {
            let ttl = self.ttl;
            map.retain(|_, l| l.fetched.elapsed() < ttl);
            if map.len() >= DIR_CACHE_MAX {
                map.clear();
            }
            self.sweep_at.store(
                (map.len() * 2).max(64),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        map.insert(key, listing);
    }

    pub fn remove(&self, key: &str) {
        lock(&self.map).remove(key);
    }

    /// The listing of `key`: cached while fresh, else listed (or joined, if another caller
    /// is listing it right now).
    pub async fn get<S: ObjectStore>(
        &self,
        store: &S,
        key: &str,
        warn: &HiddenLog,
    ) -> Result<Arc<Listing>, StoreError> {
        if let Some(l) = self.fresh(key) {
            return Ok(l);
        }
        let key: Arc<str> = key.into();
        let follow = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        match follow {
            Err(mut rx) => match rx.wait_for(Option::is_some).await {
                Ok(v) => v
                    .clone()
                    .unwrap_or_else(|| Err(StoreError::Transient("listing abandoned".into()))),
                Err(_) => Err(StoreError::Transient("listing abandoned".into())),
            },
            Ok(tx) => {
                let _guard = InflightGuard {
                    cache: self,
                    key: key.clone(),
                };
                let result = list_dir(store, &key, warn).await.map(Arc::new);
                if let Ok(l) = &result {
                    self.insert(key, l.clone());
                }
                let _ = tx.send(Some(result.clone()));
                result
            }
        }
    }
}

/// Warns once per hidden key, at most `HIDDEN_WARNINGS_PER_SECOND` a second (a listing of
/// thousands of bad keys would flood the log; the next warning says how many were held back,
/// and each one is still logged at debug), and stops remembering keys after a bound so a
/// namespace full of bad keys cannot grow memory without limit.
pub struct HiddenLog {
    seen: Mutex<HashSet<String>>,
    limit: RateLimit<()>,
}

impl Default for HiddenLog {
    fn default() -> Self {
        HiddenLog {
            seen: Mutex::default(),
            limit: RateLimit::new(HIDDEN_WARNINGS_PER_SECOND),
        }
    }
}

const HIDDEN_LOG_MAX: usize = 10_000;
const HIDDEN_WARNINGS_PER_SECOND: u64 = 10;

impl HiddenLog {
    pub fn hidden(&self, key: &str, why: Hidden) {
        let mut seen = lock(&self.seen);
        if seen.len() >= HIDDEN_LOG_MAX {
            tracing::debug!(key, reason = %why, "key hidden");
            return;
        }
        if seen.insert(key.to_string()) {
            drop(seen);
            match self.limit.admit(()) {
                Some(suppressed) => tracing::warn!(
                    key,
                    reason = %why,
                    suppressed,
                    "key hidden: it cannot be shown as a file or directory"
                ),
                None => tracing::debug!(key, reason = %why, "key hidden"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn page(keys: &[&str]) -> ListPage {
        ListPage {
            objects: keys
                .iter()
                .map(|k| crate::store::ObjectMeta {
                    key: k.to_string(),
                    size: 1,
                    last_modified: std::time::UNIX_EPOCH,
                    etag: String::new(),
                })
                .collect(),
            prefixes: Vec::new(),
            next: Some("t".into()),
        }
    }

    #[test]
    fn split_points_follow_the_names() {
        let s = split_points(
            "d/",
            &page(&["d/f00000.txt", "d/f00500.txt", "d/f00999.txt"]),
        );
        assert_eq!(
            s,
            [
                "d/f01", "d/f02", "d/f03", "d/f04", "d/f05", "d/f06", "d/f07", "d/f08", "d/f09"
            ]
        );
        let hex = split_points("", &page(&["0003ab", "01ffee", "03f1c9"]));
        assert_eq!(
            hex,
            [
                "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"
            ]
        );
        // The last name ends the alphabet at that position: move left.
        let z = split_points("", &page(&["b0", "b9", "c0", "c9"]));
        assert!(z.is_empty() || z.iter().all(|x| x.as_str() > "c9"), "{z:?}");
        assert!(split_points("", &page(&["~x", "~y"])).is_empty());
    }

    async fn names_of(store: &MemoryStore, dir: &str) -> Vec<String> {
        let l = list_dir(store, dir, &HiddenLog::default()).await.unwrap();
        l.entries.iter().map(|e| e.name.to_string()).collect()
    }

    #[tokio::test]
    async fn parallel_ranges_list_everything_exactly_once() {
        // Counting names, hex names, names the guess gets wrong, and subdirectories.
        let s = MemoryStore::with_page_size(100);
        let mut want = Vec::new();
        for i in 0..1234 {
            s.put(&format!("d/f{i:05}"), "x");
            want.push(format!("f{i:05}"));
        }
        for i in 0..300u32 {
            let h = format!("{:08x}", i.wrapping_mul(2_654_435_761));
            s.put(&format!("d/{h}"), "x");
            want.push(h);
        }
        for n in [
            "Zeta",
            "_under",
            "~tilde",
            "ünï",
            "f0/sub",
            "f00500x/deep/er",
        ] {
            s.put(&format!("d/{n}"), "x");
            want.push(n.split('/').next().unwrap_or(n).to_string());
        }
        want.sort();
        want.dedup();
        assert_eq!(names_of(&s, "d/").await, want);
        let lists_parallel = s.lists.load(std::sync::atomic::Ordering::Relaxed);
        assert!(lists_parallel > 0);
    }
}
