//! Directory listings: every page of a delimited ListObjectsV2, turned into names by the
//! rules of `names`, cached with a TTL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::inodes::{Ino, Kind, ObjStat};
use super::names::{self, Hidden};
use crate::store::{ObjectStore, StoreError};

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
}

impl Listing {
    pub fn find(&self, name: &str) -> Option<&DirEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
}

/// Lists everything directly under `dir_key`, all pages.
pub async fn list_dir<S: ObjectStore>(
    store: &S,
    dir_key: &str,
    warn: &HiddenLog,
) -> Result<Listing, StoreError> {
    let fetched = Instant::now();
    let mut map: BTreeMap<Arc<str>, DirEntry> = BTreeMap::new();
    let mut next = None;
    let mut pages = 0u32;
    loop {
        let page = store.list_page(dir_key, true, next, None).await?;
        pages += 1;
        for cp in &page.prefixes {
            let Some(name) = names::entry_name(dir_key, cp, true) else {
                continue;
            };
            if let Err(why) = names::check_name(name) {
                warn.hidden(cp, why);
                continue;
            }
            let name: Arc<str> = name.into();
            if let Some(old) = map.get(&name)
                && old.kind == Kind::File
            {
                warn.hidden(&format!("{dir_key}{name}"), Hidden::ShadowedByDirectory);
            }
            map.insert(
                name.clone(),
                DirEntry {
                    name,
                    kind: Kind::Dir,
                    stat: None,
                },
            );
        }
        for obj in &page.objects {
            let Some(name) = names::entry_name(dir_key, &obj.key, false) else {
                continue; // the directory's own marker object
            };
            if let Err(why) = names::check_name(name) {
                warn.hidden(&obj.key, why);
                continue;
            }
            if map.get(name).is_some_and(|e| e.kind == Kind::Dir) {
                warn.hidden(&obj.key, Hidden::ShadowedByDirectory);
                continue;
            }
            let name: Arc<str> = name.into();
            map.insert(
                name.clone(),
                DirEntry {
                    name,
                    kind: Kind::File,
                    stat: Some(ObjStat {
                        size: obj.size,
                        mtime: obj.last_modified,
                        etag: obj.etag.as_str().into(),
                    }),
                },
            );
        }
        // An empty last page without a token is normal (RGW sends one); a token means more.
        match page.next {
            Some(t) => next = Some(t),
            None => break,
        }
    }
    let entries: Vec<DirEntry> = map.into_values().collect();
    tracing::debug!(
        dir = dir_key,
        pages,
        entries = entries.len(),
        ms = fetched.elapsed().as_millis() as u64,
        "listed"
    );
    let index = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.clone(), i))
        .collect();
    Ok(Listing {
        entries,
        index,
        fetched,
    })
}

/// Cached listings by directory inode.
pub struct DirCache {
    ttl: Duration,
    map: Mutex<HashMap<Ino, Arc<Listing>>>,
}

impl DirCache {
    pub fn new(ttl: Duration) -> Self {
        DirCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, Arc<Listing>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listing of `dir` if it is younger than the TTL.
    pub fn fresh(&self, dir: Ino) -> Option<Arc<Listing>> {
        let map = self.lock();
        map.get(&dir)
            .filter(|l| l.fetched.elapsed() < self.ttl)
            .cloned()
    }

    pub fn insert(&self, dir: Ino, listing: Arc<Listing>) {
        let mut map = self.lock();
        // Expired listings are only dead weight: drop them as new ones arrive.
        if map.len() >= 64 {
            let ttl = self.ttl;
            map.retain(|_, l| l.fetched.elapsed() < ttl);
        }
        map.insert(dir, listing);
    }

    pub fn remove(&self, dir: Ino) {
        self.lock().remove(&dir);
    }
}

/// Warns once per hidden key, and stops remembering keys after a bound so a namespace
/// full of bad keys cannot grow memory without limit.
#[derive(Default)]
pub struct HiddenLog {
    seen: Mutex<HashSet<String>>,
}

const HIDDEN_LOG_MAX: usize = 10_000;

impl HiddenLog {
    pub fn hidden(&self, key: &str, why: Hidden) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= HIDDEN_LOG_MAX {
            tracing::debug!(key, reason = %why, "key hidden");
            return;
        }
        if seen.insert(key.to_string()) {
            tracing::warn!(key, reason = %why, "key hidden: it cannot be shown as a file or directory");
        }
    }
}
