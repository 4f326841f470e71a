//! Inode table: numbers for (parent, name) pairs, kernel lookup counts, cached attributes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub type Ino = u64;
pub const ROOT: Ino = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What S3 told us about a file (directories are implicit and carry none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjStat {
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Arc<str>,
}

#[derive(Clone, Debug)]
pub struct Inode {
    pub parent: Ino,
    pub name: Arc<str>,
    /// Full S3 key: the object's key for a file, the listing prefix (ending in `/`, or
    /// the mount prefix for the root) for a directory.
    pub key: Arc<str>,
    pub kind: Kind,
    pub stat: Option<ObjStat>,
    /// Attributes are trusted until then.
    pub valid_until: Instant,
    /// ETag at the last open, to tell the kernel whether its page cache is still good.
    pub opened_etag: Option<Arc<str>>,
    /// Open file handles, all reading `opened_etag`: while there are any, this inode keeps
    /// that version (the kernel's page cache and file size of an inode are one version's).
    pub open_handles: u32,
    lookups: u64,
}

impl Inode {
    /// Whether open handles read a version other than `etag`: the object was replaced
    /// under them, and the new version needs an inode of its own.
    pub fn pinned_other_than(&self, etag: &str) -> bool {
        self.open_handles > 0 && self.opened_etag.as_deref() != Some(etag)
    }
}

pub struct InodeTable {
    by_ino: HashMap<Ino, Inode>,
    by_name: HashMap<(Ino, Arc<str>), Ino>,
    next: Ino,
}

impl InodeTable {
    pub fn new(root_key: &str) -> Self {
        let mut by_ino = HashMap::new();
        by_ino.insert(
            ROOT,
            Inode {
                parent: ROOT,
                name: "".into(),
                key: root_key.into(),
                kind: Kind::Dir,
                stat: None,
                valid_until: Instant::now(),
                opened_etag: None,
                open_handles: 0,
                lookups: 1,
            },
        );
        InodeTable {
            by_ino,
            by_name: HashMap::new(),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Inode> {
        self.by_ino.get_mut(&ino)
    }

    pub fn lookup_name(&self, parent: Ino, name: &str) -> Option<Ino> {
        self.by_name.get(&(parent, Arc::<str>::from(name))).copied()
    }

    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }

    /// Records `name` in `parent` as `kind` with `stat`, returning its inode number and
    /// counting one kernel lookup. A name whose kind changed gets a new number: the kernel
    /// must not see one inode change from file to directory. So does a file replaced by a
    /// new version while open: the open files keep the old inode (and the old version's
    /// pages and size in the kernel), new opens get the new one, as after a rename over it.
    pub fn upsert(
        &mut self,
        parent: Ino,
        name: &str,
        key: &str,
        kind: Kind,
        stat: Option<ObjStat>,
        valid_until: Instant,
    ) -> (Ino, &Inode) {
        let map_key = (parent, Arc::<str>::from(name));
        if let Some(&ino) = self.by_name.get(&map_key)
            && let Some(node) = self.by_ino.get(&ino)
            && node.kind == kind
            && !stat
                .as_ref()
                .is_some_and(|st| node.pinned_other_than(&st.etag))
        {
            let node = self.by_ino.get_mut(&ino).expect("checked above");
            node.stat = stat;
            node.valid_until = valid_until;
            node.lookups += 1;
            return (ino, node);
        }
        let ino = self.next;
        self.next += 1;
        self.by_name.insert(map_key.clone(), ino);
        let node = self.by_ino.entry(ino).or_insert(Inode {
            parent,
            name: map_key.1,
            key: key.into(),
            kind,
            stat,
            valid_until,
            opened_etag: None,
            open_handles: 0,
            lookups: 1,
        });
        (ino, node)
    }

    /// The kernel dropped `n` references; an inode nobody references is removed.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.by_ino.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            let node = self.by_ino.remove(&ino).expect("present");
            let map_key = (node.parent, node.name);
            if self.by_name.get(&map_key) == Some(&ino) {
                self.by_name.remove(&map_key);
            }
        }
    }

    /// Marks the attributes of `ino` as stale, so the next getattr/open asks S3.
    pub fn invalidate(&mut self, ino: Ino) {
        if let Some(n) = self.by_ino.get_mut(&ino) {
            n.valid_until = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_forget() {
        let mut t = InodeTable::new("");
        let now = Instant::now();
        let (a, _) = t.upsert(ROOT, "a", "a", Kind::File, None, now);
        let (a2, _) = t.upsert(ROOT, "a", "a", Kind::File, None, now);
        assert_eq!(a, a2);
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        // Kind change gives a new number.
        let (f, _) = t.upsert(ROOT, "b", "b", Kind::File, None, now);
        let (d, _) = t.upsert(ROOT, "b", "b/", Kind::Dir, None, now);
        assert_ne!(f, d);
        // Forgetting the old file does not unlink the new directory's name.
        t.forget(f, 1);
        let (d2, _) = t.upsert(ROOT, "b", "b/", Kind::Dir, None, now);
        assert_eq!(d, d2);
        // A new version of an open file gets a new number; of a closed one, the same.
        let st = |e: &str| {
            Some(ObjStat {
                size: 1,
                mtime: std::time::UNIX_EPOCH,
                etag: e.into(),
            })
        };
        let (c, _) = t.upsert(ROOT, "c", "c", Kind::File, st("v1"), now);
        let (c1, _) = t.upsert(ROOT, "c", "c", Kind::File, st("v2"), now);
        assert_eq!(c, c1);
        let n = t.get_mut(c).unwrap();
        n.opened_etag = Some("v2".into());
        n.open_handles = 1;
        let (c2, _) = t.upsert(ROOT, "c", "c", Kind::File, st("v2"), now);
        assert_eq!(c, c2, "same version: same inode");
        let (c3, _) = t.upsert(ROOT, "c", "c", Kind::File, st("v3"), now);
        assert_ne!(c, c3, "replaced while open: a new inode");
        assert_eq!(
            t.get(c).unwrap().stat,
            st("v2"),
            "the open one keeps its version"
        );
        assert_eq!(t.lookup_name(ROOT, "c"), Some(c3));
    }
}
