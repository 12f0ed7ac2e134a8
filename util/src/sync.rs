//! Locking shared device and VMM state.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, carrying on through a poisoned lock: device state stays usable even if
/// another thread panicked while holding it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
