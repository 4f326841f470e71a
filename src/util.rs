//! Small helpers shared across modules.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, tolerating poison: no critical section in this crate can panic half-way,
/// so a poisoned lock still guards valid state.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An environment variable, if set to something non-empty.
pub fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// An error with its causes, `what: cause: cause`, as the binary prints errors: for logs,
/// where `%e` would show only the outermost message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// `t` as RFC 3339 in UTC with milliseconds (`2024-05-01T12:34:56.789Z`), for logs and
/// reports; no date library needed for this one format.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Lets through at most `per_second` events a second per key; the rest are counted, and the
/// next event let through carries how many were held back (so a flood of identical warnings
/// becomes one line a second with a count, and nothing is silently lost).
pub struct RateLimit<K> {
    per_second: u64,
    /// Per key: start of the current one-second window, events let through in it, and
    /// events held back since the last one let through.
    state: Mutex<std::collections::HashMap<K, (std::time::Instant, u64, u64)>>,
}

impl<K: std::hash::Hash + Eq> RateLimit<K> {
    pub fn new(per_second: u64) -> Self {
        RateLimit {
            per_second: per_second.max(1),
            state: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// `Some(n)` if this event may be logged, `n` being how many were held back before it.
    pub fn admit(&self, key: K) -> Option<u64> {
        self.admit_at(key, std::time::Instant::now())
    }

    fn admit_at(&self, key: K, now: std::time::Instant) -> Option<u64> {
        let mut map = lock(&self.state);
        let entry = map.entry(key).or_insert((now, 0, 0));
        if now.duration_since(entry.0) >= std::time::Duration::from_secs(1) {
            entry.0 = now;
            entry.1 = 0;
        }
        if entry.1 < self.per_second {
            entry.1 += 1;
            Some(std::mem::take(&mut entry.2))
        } else {
            entry.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // last second of 2024
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn rate_limit_counts_what_it_holds_back() {
        let r = RateLimit::new(2);
        let t0 = Instant::now();
        assert_eq!(r.admit_at("a", t0), Some(0));
        assert_eq!(r.admit_at("a", t0), Some(0));
        assert_eq!(r.admit_at("a", t0), None);
        assert_eq!(r.admit_at("a", t0 + Duration::from_millis(500)), None);
        // Another key has its own allowance.
        assert_eq!(r.admit_at("b", t0), Some(0));
        // A second later the next one is let through with the count held back.
        assert_eq!(r.admit_at("a", t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(r.admit_at("a", t0 + Duration::from_secs(1)), Some(0));
    }
}
