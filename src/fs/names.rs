//! S3 key <-> POSIX name rules (docs/semantics.md states each one).
//!
//! A directory is a key prefix ending in `/`; a name is one path component between
//! slashes. Keys whose components cannot be names are hidden, never shown mangled.
//!
//! Free of dependencies (std only), so the fuzz target (fuzz/) compiles this file as it is.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Longest name most POSIX tools accept (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Why a key is not shown in the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    Empty,
    Dot,
    DotDot,
    Nul,
    /// A `/` inside a name: a listing item past the delimiter (a server that does not
    /// split at `/` as asked).
    Slash,
    TooLong,
    /// A file whose name is also a directory (`a` next to `a/`): the directory wins.
    ShadowedByDirectory,
    /// A listing item that is not under the directory listed, or a common prefix without
    /// the trailing `/` (a server answering other than asked).
    Malformed,
}

impl fmt::Display for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hidden::Empty => "empty path component (\"//\" in the key)",
            Hidden::Dot => "path component \".\"",
            Hidden::DotDot => "path component \"..\"",
            Hidden::Nul => "NUL byte in the key",
            Hidden::Slash => "'/' inside a name (listing not split at '/')",
            Hidden::TooLong => "path component longer than 255 bytes",
            Hidden::ShadowedByDirectory => "a directory of the same name exists",
            Hidden::Malformed => "listing item outside the directory or without its '/'",
        })
    }
}

/// Checks that `name` can be a file or directory name.
pub fn check_name(name: &str) -> Result<(), Hidden> {
    match name {
        "" => Err(Hidden::Empty),
        "." => Err(Hidden::Dot),
        ".." => Err(Hidden::DotDot),
        n if n.contains('\0') => Err(Hidden::Nul),
        n if n.contains('/') => Err(Hidden::Slash),
        n if n.len() > NAME_MAX => Err(Hidden::TooLong),
        _ => Ok(()),
    }
}

/// The name a listing entry under `dir_prefix` gets: the key with the prefix stripped, and
/// for a common prefix its trailing `/` too. `None` for the directory's own marker object.
pub fn entry_name<'a>(dir_prefix: &str, key: &'a str, is_prefix: bool) -> Option<&'a str> {
    let rest = key.strip_prefix(dir_prefix)?;
    let rest = if is_prefix {
        rest.strip_suffix('/')?
    } else {
        rest
    };
    if !is_prefix && rest.is_empty() {
        return None;
    }
    Some(rest)
}

/// The entries of one directory, built from the items of its listing pages (the keys and
/// common prefixes of a delimited ListObjectsV2 under `dir_prefix`) by the rules above:
/// names that cannot be names are hidden (and reported), the directory's own marker object
/// is skipped, and a directory wins over a file of the same name, whatever the order the
/// items come in. `V` is what the caller keeps for a file.
pub struct DirNames<V> {
    dir_prefix: String,
    /// `None`: a directory; `Some`: a file.
    map: BTreeMap<Arc<str>, Option<V>>,
}

impl<V> DirNames<V> {
    pub fn new(dir_prefix: &str) -> Self {
        DirNames {
            dir_prefix: dir_prefix.to_string(),
            map: BTreeMap::new(),
        }
    }

    /// A common prefix (`dir_prefix` + name + `/`).
    pub fn add_prefix(&mut self, prefix: &str, hidden: &mut impl FnMut(&str, Hidden)) {
        let Some(name) = entry_name(&self.dir_prefix, prefix, true) else {
            hidden(prefix, Hidden::Malformed);
            return;
        };
        if let Err(why) = check_name(name) {
            hidden(prefix, why);
            return;
        }
        let name: Arc<str> = name.into();
        if let Some(Some(_)) = self.map.get(&name) {
            hidden(
                &format!("{}{name}", self.dir_prefix),
                Hidden::ShadowedByDirectory,
            );
        }
        self.map.insert(name, None);
    }

    /// An object (`dir_prefix` + name).
    pub fn add_object(&mut self, key: &str, file: V, hidden: &mut impl FnMut(&str, Hidden)) {
        if !key.starts_with(&self.dir_prefix) {
            hidden(key, Hidden::Malformed);
            return;
        }
        let Some(name) = entry_name(&self.dir_prefix, key, false) else {
            return; // the directory's own marker object
        };
        if let Err(why) = check_name(name) {
            hidden(key, why);
            return;
        }
        if let Some(None) = self.map.get(name) {
            hidden(key, Hidden::ShadowedByDirectory);
            return;
        }
        self.map.insert(name.into(), Some(file));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entries, sorted by name: `None` for a directory, `Some` for a file.
    pub fn into_entries(self) -> impl Iterator<Item = (Arc<str>, Option<V>)> {
        self.map.into_iter()
    }
}

/// Normalises the PREFIX of `s3://BUCKET/PREFIX` to "" or "a/b/": every component must be
/// a valid name, since it becomes part of every path.
pub fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for comp in trimmed.split('/') {
        if let Err(why) = check_name(comp) {
            return Err(format!("prefix {prefix:?} is not usable: {why}"));
        }
    }
    Ok(format!("{trimmed}/"))
}

/// The fuzz target's body (fuzz/fuzz_targets/listing.rs), also run over a corpus and random
/// inputs by the tests on a stable toolchain: a listing page as S3 sends it, URL-encoded,
/// through `decode` and [`DirNames`], must give exactly what an independent model of the
/// rules says, whatever the bytes and whatever the order of the items.
#[cfg(any(test, fuzzing))]
pub mod fuzz {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    /// `data`: the directory prefix on the first line, then one item per line, URL-encoded
    /// (so keys may hold any byte); an item starting with `P ` is a common prefix.
    pub fn check_listing(data: &[u8], decode: fn(&str) -> Option<String>) {
        let text = String::from_utf8_lossy(data);
        let mut lines = text.split('\n');
        let Some(dir) = lines.next().and_then(decode) else {
            return;
        };
        let mut prefixes = Vec::new();
        let mut objects = Vec::new();
        for line in lines {
            let (is_prefix, enc) = match line.strip_prefix("P ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            // Undecodable keys are dropped before the rules, as the store does.
            let Some(key) = decode(enc) else { continue };
            if !key.starts_with(&dir) {
                continue; // S3 only lists keys under the prefix
            }
            if is_prefix {
                prefixes.push(key);
            } else {
                objects.push(key);
            }
        }
        let build = |reverse: bool| {
            let mut n = DirNames::new(&dir);
            let mut hidden = Vec::new();
            let mut h = |k: &str, why: Hidden| hidden.push((k.to_string(), why));
            let (mut p, mut o): (Vec<&String>, Vec<&String>) =
                (prefixes.iter().collect(), objects.iter().collect());
            if reverse {
                p.reverse();
                o.reverse();
                // Objects first, then prefixes: the other page order.
                for k in o {
                    n.add_object(k, k.clone(), &mut h);
                }
                for k in p {
                    n.add_prefix(k, &mut h);
                }
            } else {
                for k in p {
                    n.add_prefix(k, &mut h);
                }
                for k in o {
                    n.add_object(k, k.clone(), &mut h);
                }
            }
            (n.into_entries().collect::<Vec<_>>(), hidden)
        };
        let (entries, hidden) = build(false);
        let (again, _) = build(true);
        assert_eq!(
            entries, again,
            "the result depends on the order of the items"
        );

        // The model: a prefix names a directory, an object a file; a name must be 1..=255
        // bytes, not "." or "..", without NUL or '/'; directories win.
        let valid = |n: &str| {
            !n.is_empty() && n.len() <= 255 && n != "." && n != ".." && !n.contains(['\0', '/'])
        };
        let mut model: BTreeMap<String, Option<String>> = BTreeMap::new();
        let dir_names: BTreeSet<String> = prefixes
            .iter()
            .filter_map(|p| p[dir.len()..].strip_suffix('/').map(str::to_string))
            .filter(|n| valid(n))
            .collect();
        for n in &dir_names {
            model.insert(n.clone(), None);
        }
        let mut files: HashMap<String, String> = HashMap::new();
        for k in &objects {
            let n = &k[dir.len()..];
            if valid(n) && !dir_names.contains(n) {
                files.insert(n.to_string(), k.clone());
            }
        }
        for (n, k) in files {
            model.insert(n, Some(k));
        }
        let got: BTreeMap<String, Option<String>> = entries
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        assert_eq!(got, model, "listing of {dir:?} differs from the model");
        for (n, v) in &entries {
            assert!(
                check_name(n).is_ok(),
                "shown name {n:?} is not a valid name"
            );
            if let Some(k) = v {
                assert_eq!(k, &format!("{dir}{n}"), "a file shows another key");
            }
        }
        // Every item is shown, skipped as the marker, or reported hidden.
        for k in objects.iter().chain(prefixes.iter()) {
            let n = k[dir.len()..].trim_end_matches('/');
            let shown = got.contains_key(n) && valid(n);
            let marker = k == &dir;
            let reported = hidden
                .iter()
                .any(|(h, _)| h == k || h.trim_end_matches('/') == k.trim_end_matches('/'));
            assert!(
                shown || marker || reported,
                "{k:?} vanished without a warning"
            );
        }

        // Prefixes given on the command line: normalised, or refused; never half-way.
        if let Ok(p) = normalize_prefix(&dir) {
            assert!(p.is_empty() || p.ends_with('/'));
            assert_eq!(normalize_prefix(&p).as_deref(), Ok(p.as_str()));
            for c in p.split('/').filter(|c| !c.is_empty()) {
                assert!(check_name(c).is_ok());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(check_name("a").is_ok());
        assert!(check_name("with space + % ünï").is_ok());
        assert_eq!(check_name(""), Err(Hidden::Empty));
        assert_eq!(check_name("."), Err(Hidden::Dot));
        assert_eq!(check_name(".."), Err(Hidden::DotDot));
        assert_eq!(check_name("a\0b"), Err(Hidden::Nul));
        assert_eq!(check_name("a/b"), Err(Hidden::Slash));
        assert!(check_name(&"x".repeat(255)).is_ok());
        assert_eq!(check_name(&"x".repeat(256)), Err(Hidden::TooLong));
    }

    #[test]
    fn entry_names_strip_prefix_and_slash() {
        assert_eq!(entry_name("d/", "d/f", false), Some("f"));
        assert_eq!(entry_name("d/", "d/sub/", true), Some("sub"));
        assert_eq!(entry_name("d/", "d//", true), Some(""));
        assert_eq!(entry_name("d/", "d/", false), None);
        assert_eq!(entry_name("", "top", false), Some("top"));
    }

    #[test]
    fn prefixes_are_normalised_or_rejected() {
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("/").unwrap(), "");
        assert_eq!(normalize_prefix("a/b").unwrap(), "a/b/");
        assert_eq!(normalize_prefix("a/b/").unwrap(), "a/b/");
        assert!(normalize_prefix("a//b").is_err());
        assert!(normalize_prefix("a/../b").is_err());
        assert!(normalize_prefix("./a").is_err());
    }
}
