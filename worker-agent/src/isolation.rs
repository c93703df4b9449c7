//! Isolation mutexes, per agent process. A full-isolation script holds its mutex alone; a script
//! without isolation that names a mutex shares it with other readers. Tokio's lock is fair, so
//! a waiting full-isolation script is not starved by a stream of readers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// A held isolation mutex; released on drop.
#[allow(dead_code)] // held only for its drop
pub enum IsolationGuard {
    Shared(OwnedRwLockReadGuard<()>),
    Exclusive(OwnedRwLockWriteGuard<()>),
}

#[derive(Default)]
pub struct Mutexes {
    locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

impl Mutexes {
    fn lock(&self, name: &str) -> Arc<RwLock<()>> {
        let mut locks = self.locks.lock().expect("mutex table poisoned");
        locks.entry(name.to_owned()).or_default().clone()
    }

    /// Takes the mutex now if it is free.
    pub fn try_acquire(&self, name: &str, exclusive: bool) -> Option<IsolationGuard> {
        let lock = self.lock(name);
        if exclusive {
            lock.try_write_owned().ok().map(IsolationGuard::Exclusive)
        } else {
            lock.try_read_owned().ok().map(IsolationGuard::Shared)
        }
    }

    /// Waits for the mutex, in arrival order.
    pub async fn acquire(&self, name: &str, exclusive: bool) -> IsolationGuard {
        let lock = self.lock(name);
        if exclusive {
            IsolationGuard::Exclusive(lock.write_owned().await)
        } else {
            IsolationGuard::Shared(lock.read_owned().await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_excludes_everyone_and_shared_share() {
        let m = Mutexes::default();
        let r1 = m.try_acquire("x", false).unwrap();
        let r2 = m.try_acquire("x", false).unwrap();
        assert!(m.try_acquire("x", true).is_none());
        drop((r1, r2));
        let w = m.try_acquire("x", true).unwrap();
        assert!(m.try_acquire("x", false).is_none());
        assert!(m.try_acquire("y", true).is_some());
        drop(w);
        assert!(m.try_acquire("x", true).is_some());
    }
}
