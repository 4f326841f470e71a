//! The key -> name rules on arbitrary listing pages: a page as S3 sends it (URL-encoded
//! keys and common prefixes) goes through the daemon's own decoder and name rules, compiled
//! from its source files (std only, so this crate stays small), and must match a model of
//! the rules whatever the bytes (see `names::fuzz::check_listing`).
#![no_main]
// Parts of the included files this target does not call.
#![allow(dead_code)]

#[path = "../../src/fs/names.rs"]
mod names;
#[path = "../../src/store/urlkey.rs"]
mod urlkey;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    names::fuzz::check_listing(data, urlkey::decode);
});
