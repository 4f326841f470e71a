//! The daemon's life: a real binary mounting a real S3 server, stopped by signals. What a
//! mount serves is in `fuse_suite` (over both stores).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn sigterm_unmounts_cleanly_even_when_busy() {
    need_rgw!();
    let bucket = unique_bucket("term");
    create_bucket(&bucket);
    put(&bucket, "small.txt", b"hello, world\n".to_vec());
    put(&bucket, "mid.bin", random_bytes(3 << 20, 7));
    let src = || format!("s3://{bucket}");
    // Idle mount.
    let mut m = mount(&src(), &[]);
    assert!(m.p("small.txt").exists());
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "exit status; log:\n{}", m.log_text());
    assert!(
        !s3_oidc_mount::mount::is_mount_point(&m.path),
        "still mounted after SIGTERM"
    );

    // A file held open: the daemon still exits 0, quickly, and leaves no mount behind.
    let mut m = mount(&src(), &[]);
    let f = std::fs::File::open(m.p("mid.bin")).unwrap();
    let mut b = [0u8; 16];
    f.read_at(&mut b, 0).unwrap();
    let t = Instant::now();
    let st = m.stop();
    assert_eq!(st.code(), Some(0), "log:\n{}", m.log_text());
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    assert!(!s3_oidc_mount::mount::is_mount_point(&m.path));
    drop(f);

    // SIGINT works the same.
    let mut m = mount(&src(), &[]);
    m.signal(libc::SIGINT);
    let st = m.wait(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0), "{st:?}; log:\n{}", m.log_text());
    assert!(!s3_oidc_mount::mount::is_mount_point(&m.path));
}
