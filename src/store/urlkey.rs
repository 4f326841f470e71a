//! Keys as ListObjectsV2 returns them with `encoding-type=url`.
//!
//! Listings are XML, and XML 1.0 cannot carry most control characters (and normalises `\r`),
//! so a key containing one would fail or silently change a whole page. Asking S3 to
//! URL-encode keys avoids both; this decodes them. Kept free of dependencies (std only) so
//! the fuzz target can compile it as it is.

/// Decodes a URL-encoded key: `%XX` is the byte XX and `+` is a space (S3 encodes a literal
/// `+` as `%2B`). `None` if an escape is malformed or the bytes are not UTF-8, which S3
/// requires of keys.
pub fn decode(encoded: &str) -> Option<String> {
    let b = encoded.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex(*b.get(i + 1)?)?;
                let lo = hex(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Encodes a key the way S3 does for `encoding-type=url` (unreserved characters and `/`
/// kept, everything else `%XX`): the inverse of [`decode`], for tests and the fuzz target.
pub fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &c in key.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_s3_sends() {
        // As RGW encodes them (space as %20) and as AWS does (space as +).
        assert_eq!(decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(decode("a+b").as_deref(), Some("a b"));
        assert_eq!(decode("a%2Bb").as_deref(), Some("a+b"));
        assert_eq!(decode("%2541").as_deref(), Some("%41"));
        assert_eq!(decode("x%0Ay%0dz").as_deref(), Some("x\ny\rz"));
        assert_eq!(decode("%C3%BC/d/").as_deref(), Some("ü/d/"));
        assert_eq!(decode("plain/key.txt").as_deref(), Some("plain/key.txt"));
        for bad in ["%", "%4", "%zz", "a%g1", "%FF", "%C3"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn encode_round_trips() {
        for k in ["a b+c%d", "\u{1}\r\n", "ünï/cødé", "/lead//x", ""] {
            assert_eq!(decode(&encode(k)).as_deref(), Some(k));
        }
    }
}
