//! S3 key <-> POSIX name rules (docs/semantics.md states each one).
//!
//! A directory is a key prefix ending in `/`; a name is one path component between
//! slashes. Keys whose components cannot be names are hidden, never shown mangled.

use std::fmt;

/// Longest name most POSIX tools accept (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Why a key is not shown in the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    Empty,
    Dot,
    DotDot,
    Nul,
    TooLong,
    /// A file whose name is also a directory (`a` next to `a/`): the directory wins.
    ShadowedByDirectory,
}

impl fmt::Display for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hidden::Empty => "empty path component (\"//\" in the key)",
            Hidden::Dot => "path component \".\"",
            Hidden::DotDot => "path component \"..\"",
            Hidden::Nul => "NUL byte in the key",
            Hidden::TooLong => "path component longer than 255 bytes",
            Hidden::ShadowedByDirectory => "a directory of the same name exists",
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
