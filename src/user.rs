//! The user `run --app-user` starts the app as: the daemon keeps root (mounting needs it),
//! the app does not.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("--app-user {spec:?}: {why}")]
    Invalid { spec: String, why: String },
}

/// A resolved user: ids to switch to and what the app's environment should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group), the primary group included.
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// Resolves `USER[:GROUP]`, each a name or a number. A number that /etc/passwd does not know
/// is used as is (its group is then the same number unless given).
pub fn resolve(spec: &str) -> Result<AppUser, UserError> {
    let bad = |why: String| UserError::Invalid {
        spec: spec.to_string(),
        why,
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(bad(
            "expected USER or USER:GROUP (names or numeric ids)".into()
        ));
    }
    let (uid, pw) = match user.parse::<u32>() {
        Ok(uid) => (uid, getpw(PwKey::Uid(uid)).map_err(&bad)?),
        Err(_) => {
            let p = getpw(PwKey::Name(user))
                .map_err(&bad)?
                .ok_or_else(|| bad(format!("no user named {user:?} in /etc/passwd")))?;
            (p.uid, Some(p))
        }
    };
    let gid = match group {
        None => pw.as_ref().map_or(uid, |p| p.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => getgr(g)
                .map_err(&bad)?
                .ok_or_else(|| bad(format!("no group named {g:?} in /etc/group")))?,
        },
    };
    let groups = match &pw {
        Some(p) if group.is_none() => group_list(&p.name, gid),
        _ => vec![gid],
    };
    Ok(AppUser {
        uid,
        gid,
        groups,
        name: pw.as_ref().map(|p| p.name.clone()),
        home: pw.map(|p| p.home),
    })
}

enum PwKey<'a> {
    Uid(u32),
    Name(&'a str),
}

/// Runs a reentrant libc lookup (getpw*_r, getgr*_r) with a buffer that grows while the
/// answer does not fit (ERANGE). `call` returns the status and what it found.
fn with_buffer<T>(
    file: &str,
    mut call: impl FnMut(&mut [u8]) -> (libc::c_int, Option<T>),
) -> Result<Option<T>, String> {
    let mut buf = vec![0u8; 4096];
    loop {
        match call(&mut buf) {
            (libc::ERANGE, _) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            (0, found) => return Ok(found),
            (rc, _) => {
                return Err(format!(
                    "reading {file}: {}",
                    std::io::Error::from_raw_os_error(rc)
                ));
            }
        }
    }
}

fn getpw(key: PwKey<'_>) -> Result<Option<Passwd>, String> {
    let name = match &key {
        PwKey::Name(n) => {
            Some(CString::new(*n).map_err(|_| "the name holds a NUL byte".to_string())?)
        }
        PwKey::Uid(_) => None,
    };
    with_buffer("/etc/passwd", |buf| {
        // SAFETY: an all-zero passwd is a valid out value; every pointer passed is live and
        // `buf` is as long as said.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let (ptr, len) = (buf.as_mut_ptr().cast(), buf.len());
        let rc = match (&key, &name) {
            (PwKey::Uid(uid), _) => unsafe { libc::getpwuid_r(*uid, &mut pwd, ptr, len, &mut out) },
            (PwKey::Name(_), Some(c)) => unsafe {
                libc::getpwnam_r(c.as_ptr(), &mut pwd, ptr, len, &mut out)
            },
            (PwKey::Name(_), None) => return (0, None),
        };
        if rc != 0 || out.is_null() {
            return (rc, None);
        }
        // SAFETY: on success the strings point into `buf`, NUL-terminated.
        let (name, home) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
        let found = Passwd {
            name: name.to_string_lossy().into_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: PathBuf::from(home.to_string_lossy().into_owned()),
        };
        (0, Some(found))
    })
}

fn getgr(name: &str) -> Result<Option<u32>, String> {
    let c = CString::new(name).map_err(|_| "the group name holds a NUL byte".to_string())?;
    with_buffer("/etc/group", |buf| {
        // SAFETY: as in getpw.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        (rc, (rc == 0 && !out.is_null()).then_some(grp.gr_gid))
    })
}

fn group_list(name: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many and sets
        // `n` to the number it needs.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n <= asked || n > 65536 {
            return vec![gid];
        }
    }
}

impl AppUser {
    /// Switches the calling (forked, not yet exec'd) process to this user. Only
    /// async-signal-safe calls: it runs between fork and exec.
    pub fn switch(&self) -> std::io::Result<()> {
        // SAFETY: plain syscalls with a live slice; the order (groups, gid, uid) matters
        // because dropping the uid first would forbid the others.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_numbers_and_refuses_unknowns() {
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.name.as_deref(), Some("root"));
        assert!(root.groups.contains(&0));
        assert_eq!(resolve("0").unwrap().name.as_deref(), Some("root"));
        // A number nobody owns is used as is.
        let anon = resolve("4000123").unwrap();
        assert_eq!((anon.uid, anon.gid, anon.name), (4000123, 4000123, None));
        let with_group = resolve("4000123:77").unwrap();
        assert_eq!((with_group.gid, with_group.groups), (77, vec![77]));
        assert_eq!(resolve("root:root").unwrap().gid, 0);
        for bad in [
            "",
            ":",
            "root:",
            ":0",
            "no-such-user-xyz",
            "root:no-such-group-xyz",
        ] {
            assert!(resolve(bad).is_err(), "{bad:?} accepted");
        }
    }
}
