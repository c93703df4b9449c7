//! Isolation mutexes, per agent process. A full-isolation script holds its mutex alone; a script
//! without isolation that names a mutex shares it with other readers. Tokio's lock is fair, so
//! a waiting full-isolation script is not starved by a stream of readers.
//!
//! A mutex exists only while a script holds it or waits for it: the last one to let go removes
//! its name, so commands naming ever new mutexes cannot grow the table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// A held isolation mutex; released (and its name freed if nobody else uses it) on drop.
pub(crate) struct IsolationGuard {
    // Declared first, so dropped before `_name`: the lock is released before its name is
    // considered for removal.
    _held: Held,
    _name: Named,
}

#[allow(dead_code, reason = "held only for its drop")]
enum Held {
    Shared(OwnedRwLockReadGuard<()>),
    Exclusive(OwnedRwLockWriteGuard<()>),
}

#[derive(Default)]
pub(crate) struct Mutexes {
    locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

/// One user (holder or waiter) of a named mutex; the last to drop removes the name.
struct Named {
    table: Arc<Mutexes>,
    name: String,
    lock: Option<Arc<RwLock<()>>>,
}

impl Drop for Named {
    fn drop(&mut self) {
        let mut locks = self.table.locks.lock().expect("mutex table poisoned");
        drop(self.lock.take());
        // Only the table's own reference left: nobody holds or waits for it.
        if locks.get(&self.name).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            locks.remove(&self.name);
        }
    }
}

impl Mutexes {
    fn named(self: &Arc<Self>, name: &str) -> Named {
        let mut locks = self.locks.lock().expect("mutex table poisoned");
        let lock = locks.entry(name.to_owned()).or_default().clone();
        Named { table: self.clone(), name: name.to_owned(), lock: Some(lock) }
    }

    /// Takes the mutex now if it is free.
    pub(crate) fn try_acquire(self: &Arc<Self>, name: &str, exclusive: bool) -> Option<IsolationGuard> {
        let named = self.named(name);
        let lock = named.lock.clone().expect("set until drop");
        let held = if exclusive {
            Held::Exclusive(lock.try_write_owned().ok()?)
        } else {
            Held::Shared(lock.try_read_owned().ok()?)
        };
        Some(IsolationGuard { _held: held, _name: named })
    }

    /// Waits for the mutex, in arrival order.
    pub(crate) async fn acquire(self: &Arc<Self>, name: &str, exclusive: bool) -> IsolationGuard {
        let named = self.named(name);
        let lock = named.lock.clone().expect("set until drop");
        let held =
            if exclusive { Held::Exclusive(lock.write_owned().await) } else { Held::Shared(lock.read_owned().await) };
        IsolationGuard { _held: held, _name: named }
    }

    /// Names in the table now: those held or waited for.
    pub(crate) fn len(&self) -> usize {
        self.locks.lock().expect("mutex table poisoned").len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn exclusive_excludes_everyone_and_shared_share() {
        let m = Arc::new(Mutexes::default());
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

    #[tokio::test]
    async fn names_are_freed_once_nobody_holds_or_waits_for_them() {
        let m = Arc::new(Mutexes::default());
        for i in 0..10_000 {
            let guard = m.try_acquire(&format!("m-{i}"), i % 2 == 0).unwrap();
            drop(guard);
        }
        assert!(m.is_empty());
        let held = m.try_acquire("x", true).unwrap();
        // A waiter that gives up (mutex timeout, cancel) keeps nothing either.
        assert!(tokio::time::timeout(Duration::from_millis(10), m.acquire("x", true)).await.is_err());
        assert_eq!(m.len(), 1);
        let waiter = tokio::spawn({
            let m = m.clone();
            async move { drop(m.acquire("x", false).await) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        waiter.await.unwrap();
        assert!(m.is_empty(), "the last one to let go frees the name");
    }
}
