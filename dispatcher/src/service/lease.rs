//! Leases: which replica follows an in-flight ticket. A replica takes a free lease with
//! `SET NX PX`, renews it well before it expires, and releases it when it stops following; a
//! replica that dies stops renewing, and another takes the ticket up once the lease has expired.

use super::journal::{Journal, JournalResult};
use contracts::wire::ticket::Ticket;
use deadpool_redis::redis::Script;
use std::time::Duration;

// Takes a free lease, or one this replica's name already holds: a replica restarted under the
// same `--replica-id` resumes its tickets at once instead of waiting for its old leases to expire.
const ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

// Renews (or releases) a lease only if this replica still holds it.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"#;

/// Leases held by one replica.
#[derive(Clone)]
pub(super) struct Leases {
    journal: Journal,
    /// This replica's id, the value of its leases.
    pub replica: String,
    /// How long a lease lasts without renewal: how soon another replica takes over.
    pub ttl: Duration,
}

impl Leases {
    pub(super) fn new(journal: Journal, replica: String, ttl: Duration) -> Self {
        debug_assert!(ttl >= Duration::from_millis(300), "a lease must outlast a renewal round trip");
        Leases { journal, replica, ttl }
    }

    fn key(&self, ticket: &Ticket) -> String {
        self.journal.key(&format!("lease:{}", ticket.store_key()))
    }

    /// Takes the ticket's lease if nobody else holds it.
    pub(super) async fn acquire(&self, ticket: &Ticket) -> JournalResult<bool> {
        let mut con = self.journal.connection().await?;
        let won: i64 = Script::new(ACQUIRE)
            .key(self.key(ticket))
            .arg(&self.replica)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut con)
            .await?;
        Ok(won == 1)
    }

    /// Extends the lease; false if this replica no longer holds it.
    pub(super) async fn renew(&self, ticket: &Ticket) -> JournalResult<bool> {
        let mut con = self.journal.connection().await?;
        let renewed: i64 = Script::new(RENEW)
            .key(self.key(ticket))
            .arg(&self.replica)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut con)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lease up, so another replica may take the ticket at once.
    pub(super) async fn release(&self, ticket: &Ticket) -> JournalResult<()> {
        let mut con = self.journal.connection().await?;
        let _: i64 = Script::new(RELEASE).key(self.key(ticket)).arg(&self.replica).invoke_async(&mut con).await?;
        Ok(())
    }

    /// How often a held lease is renewed (and a cancel request looked for).
    pub(super) fn renew_every(&self) -> Duration {
        (self.ttl / 3).min(Duration::from_secs(1))
    }
}
