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
