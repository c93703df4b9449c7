//! The ticket store in Redis. One record per ticket, created with `SET NX` (the claim) and later
//! changed only by compare-and-set against the exact value read, so two writers can never both
//! win. Beside it: the owner's lease (a key with a TTL the owner keeps renewing), the log list,
//! a cancel flag, and the set of tickets each agent id is running (for recovery after a crash).

use crate::record::decode_record;
use contracts::receipt::ChainHead;
use contracts::store::record::TicketRecord;
use contracts::store::MAX_LINES_PER_READ;
use contracts::store::{
    Cancel, Claim, ClaimReplication, Epoch, LeaseRenewal, Release, TicketKeys, TicketStore, TicketView,
};
use contracts::wire::status::LogLine;
use contracts::wire::topology::MAX_STATUS_LOG_BYTES;
use edge::connect::store::{RedisLink, RedisTarget, WaitLink};
use redis::AsyncCommands;
use std::sync::Arc;
use std::time::Duration;

/// The ticket store could not be used. Always transient from the dispatcher's point of view.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ticket store unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("local ticket store failed: cannot open {}: {source}", path.display())]
    LocalOpen { path: std::path::PathBuf, source: redb::DatabaseError },
    /// The embedded store's error (redb's, its task's, or a line it could not decode).
    #[error("local ticket store failed: {0}")]
    Local(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// KEYS: record, lease, running set, epoch. Refuses ({2}) when the store's epoch is not the one
/// the agent knows: the store lost its data (or was never initialised) since.
const CLAIM: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[6] then
  return {2, '', 0}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
  redis.call('SADD', KEYS[3], ARGV[5])
  return {1, '', 1}
end
return {0, redis.call('GET', KEYS[1]), redis.call('EXISTS', KEYS[2])}
"#;

/// Compare-and-set on the exact record value; on success deletes KEYS[2..] in one step and
/// removes ARGV[5] from the set ARGV[4] (if named). ARGV[3] is the new TTL in ms, 0 keeps the
/// current one.
const COMPARE_AND_SET: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if #KEYS > 1 then redis.call('DEL', unpack(KEYS, 2)) end
if ARGV[4] ~= '' then redis.call('SREM', ARGV[4], ARGV[5]) end
return 1
"#;

/// A run's own end in one step: compare-and-set of the record (KEYS[1], ARGV[1] -> ARGV[2],
/// keeping its TTL), how many lines the run wrote (KEYS[2] = ARGV[3]), the lease (KEYS[3])
/// released, the ticket ARGV[4] out of the running set KEYS[5], and the run's last lines
/// (ARGV[6..]) appended to its log (KEYS[4]). The log and the count expire ARGV[5] ms from now,
/// as every append sets; 0 (no lines) gives the count the record's own expiry.
const END_RUN: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
local ttl = tonumber(ARGV[5])
if ttl == 0 then ttl = redis.call('PTTL', KEYS[1]) end
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl) else redis.call('SET', KEYS[2], ARGV[3]) end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[5], ARGV[4])
if #ARGV > 5 then
  redis.call('RPUSH', KEYS[4], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return 1
"#;

/// Kept out of [`RedisStore`] to keep it small, like [`CONFIRM_CLAIM_SCRIPT`].
static END_RUN_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(END_RUN));

/// KEYS: record, lease, logs, lines written. ARGV: the sequence number to read after, lines at
/// most. Answers the record, whether the lease exists, the last stored line's sequence number,
/// the lines the run wrote (if it recorded them) and the lines after ARGV[1], found by their
/// sequence numbers: lines the store lost (a failover, a restart without persistence) leave the
/// list shorter than them. Lines are only ever appended in order, so the line at position i has
/// a number of at least i + 1, and the first wanted one is at position ARGV[1] at most: at it
/// when nothing was lost before it (checked on the line just before), else searched for. A line
/// that cannot be decoded counts as its position's number, as when reading by position.
///
/// Only what a reader uses is asked of Redis: the lease only for a record not finished (`2|d|`
/// ended, `2|t|` a tombstone: read as finished whatever the lease), the count of lines written
/// only for a run that ended, and for a first page that holds the whole log (the usual answer
/// to a start), neither the log's length nor its last line, which the page gives.
const READ: &str = r#"
local after = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local record = redis.call('GET', KEYS[1])
local kind = record and string.sub(record, 1, 4)
local lease = 0
if record and kind ~= '2|d|' and kind ~= '2|t|' then lease = redis.call('EXISTS', KEYS[2]) end
local written = false
if record and kind ~= '2|t|' then written = redis.call('GET', KEYS[4]) end
local function decoded_seq(raw, position)
  local ok, line = pcall(cmsgpack.unpack, raw)
  if ok and type(line) == 'table' and type(line.seq) == 'number' then return line.seq end
  return position
end
if after == 0 then
  local lines = redis.call('LRANGE', KEYS[3], 0, want - 1)
  if #lines < want then
    local last = 0
    if #lines > 0 then last = decoded_seq(lines[#lines], #lines) end
    return {record, lease, last, written, lines}
  end
end
local n = redis.call('LLEN', KEYS[3])
local function seq(i)
  if i < 0 then i = n + i end
  return decoded_seq(redis.call('LINDEX', KEYS[3], i), i + 1)
end
local last = 0
if n > 0 then last = seq(-1) end
local from = math.min(after, n)
local before = last
if from > 0 and from < n then before = seq(from - 1) end
if from > 0 and before > after then
  local lo, hi = 0, from - 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if seq(mid) > after then hi = mid else lo = mid + 1 end
  end
  from = lo
end
local lines = {}
if from < n then lines = redis.call('LRANGE', KEYS[3], from, from + want - 1) end
return {record, lease, last, written, lines}
"#;

/// KEYS: record, lease. Takes the lease again if the record is still exactly ARGV[1] (the claim
/// as written): a write, so a `WAIT` after it covers the claim. 0 if the claim is gone (lost in
/// a failover) or changed (cancelled).
const CONFIRM_CLAIM: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Used only with `--claim-replicas`; kept out of [`RedisStore`] to keep it small.
static CONFIRM_CLAIM_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CONFIRM_CLAIM));

/// KEYS: record. Writes the record ARGV[1] again if it still holds exactly that (1), so a `WAIT`
/// after it covers it and all written before it; 0 if it is gone (lost in a failover) or changed.
const CONFIRM_RECORD: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1
"#;

/// Used only with `--claim-replicas`, like [`CONFIRM_CLAIM_SCRIPT`].
static CONFIRM_RECORD_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CONFIRM_RECORD));

/// KEYS: record, cancel flag. Creates the tombstone ARGV[1] (PX ARGV[2]) if the ticket has no
/// record (0), else sets the cancel flag (PX ARGV[3]) and tells the worker running the ticket
/// at once: publishes the ticket ARGV[5] on the cancel channel ARGV[4] (see
/// [`crate::cancel_notices`]) (1). Atomic with [`CLAIM`]'s SET NX. A Redis user that may not
/// publish there (ACL channels) still cancels: the flag reaches the run at its lease renewal.
const CANCEL: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.pcall('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// Kept out of [`RedisStore`] to keep it small, like [`CONFIRM_CLAIM_SCRIPT`].
static CANCEL_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(CANCEL));

const RENEW_LEASE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, redis.call('EXISTS', KEYS[2])} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, redis.call('EXISTS', KEYS[2])}
"#;

/// A receipt appended to its chain (KEYS[1], the head, holding ARGV[1] or nothing for '') in one
/// step: the head becomes ARGV[2] and the receipt ARGV[4] joins the pending set KEYS[2] with
/// score ARGV[3], its sequence.
static APPEND_RECEIPT_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
"#,
    )
});

/// The Redis ticket store of one agent (or of a whole pool, which shares the prefix).
#[derive(Clone)]
pub struct RedisStore {
    con: RedisLink,
    /// Only for claim confirmations (`WAIT`), which hold their connection.
    wait_con: std::sync::Arc<WaitLink>,
    prefix: String,
    claim: redis::Script,
    compare_and_set: redis::Script,
    read: redis::Script,
    renew_lease: redis::Script,
}

impl RedisStore {
    /// Connects, waiting for Redis no longer than `connect_timeout`; the link reconnects by
    /// itself afterwards, to the new master after a Sentinel failover (the command that hit a
    /// broken connection still fails).
    pub async fn connect(target: &RedisTarget, prefix: &str, connect_timeout: Duration) -> Result<Self, StoreError> {
        let con = RedisLink::connect(target, connect_timeout).await?;
        Ok(RedisStore {
            con,
            wait_con: std::sync::Arc::new(WaitLink::new(target.clone(), connect_timeout)),
            prefix: prefix.to_owned(),
            claim: redis::Script::new(CLAIM),
            compare_and_set: redis::Script::new(COMPARE_AND_SET),
            read: redis::Script::new(READ),
            renew_lease: redis::Script::new(RENEW_LEASE),
        })
    }

    fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    fn running_set(&self, agent_id: &str) -> String {
        format!("{}agent:{agent_id}:running", self.prefix)
    }

    /// The head of an agent id's receipt chain, and its receipts not yet published (a sorted
    /// set scored by sequence). Never expiring: the chain outlives every ticket.
    fn receipt_keys(&self, agent_id: &str) -> [String; 2] {
        [
            format!("{}agent:{agent_id}:receipts:head", self.prefix),
            format!("{}agent:{agent_id}:receipts:pending", self.prefix),
        ]
    }

    /// Runs `invocation` of `script` (a write that answers 0 when what it checks no longer
    /// stands), then waits up to `timeout` for `replicas` replicas to hold it. One pipeline: the
    /// script and the WAIT after it go over the same connection, so the WAIT counts replicas
    /// that have this write, and so everything written before it. That connection is not the
    /// shared one, which WAIT would hold.
    async fn write_and_wait(
        &self,
        script: &redis::Script,
        invocation: &redis::ScriptInvocation<'_>,
        replicas: u32,
        timeout: Duration,
    ) -> Result<ClaimReplication, StoreError> {
        let (_, standing, acked): (String, i64, u32) = redis::pipe()
            .load_script(script)
            .invoke_script(invocation)
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis().max(1) as u64)
            .query_async(&mut self.wait_con.get().await?)
            .await?;
        Ok(match standing {
            0 => ClaimReplication::Lost,
            _ => ClaimReplication::Acked(acked),
        })
    }
}

#[async_trait::async_trait]
impl TicketStore for RedisStore {
    type Error = StoreError;

    fn keys(&self, ticket_key: &str) -> TicketKeys {
        TicketKeys::new(&self.prefix, ticket_key)
    }

    /// The store's epoch, created now if the store has none (new, or restarted empty).
    async fn epoch(&self, now_ms: u64) -> Result<Epoch, StoreError> {
        let fresh = format!("{now_ms}-{}", uuid::Uuid::new_v4().simple());
        let opts = redis::SetOptions::default().conditional_set(redis::ExistenceCheck::NX);
        let mut con = self.con.clone();
        let _: bool = con.set_options(self.epoch_key(), &fresh, opts).await?;
        let value: String = con.get(self.epoch_key()).await?;
        Ok(Epoch::parse(value))
    }

    /// Claims a ticket: creates its record if none exists (SET NX), and takes the lease.
    async fn claim(
        &self,
        keys: &TicketKeys,
        record: &TicketRecord,
        record_ttl: Duration,
        lease_ttl: Duration,
        epoch: &Epoch,
    ) -> Result<Claim, StoreError> {
        let raw = record.encode();
        let (won, existing, lease): (i64, Option<String>, Option<i64>) = self
            .claim
            .key(&keys.record)
            .key(&keys.lease)
            .key(self.running_set(&record.agent_id))
            .key(self.epoch_key())
            .arg(&raw)
            .arg(&record.owner)
            .arg(record_ttl.as_millis() as u64)
            .arg(lease_ttl.as_millis() as u64)
            .arg(&keys.ticket)
            .arg(&epoch.value)
            .invoke_async(&mut self.con.clone())
            .await?;
        match won {
            1 => return Ok(Claim::Won),
            2 => return Ok(Claim::EpochChanged),
            _ => {}
        }
        let raw = existing.unwrap_or_default();
        Ok(Claim::Existing { record: decode_record(&raw), raw, lease_alive: lease == Some(1) })
    }

    /// Checks that the claim `raw` still stands and takes its lease again, then waits up to
    /// `timeout` for `replicas` replicas to hold it (Redis `WAIT`, on a connection of its own).
    async fn confirm_claim(
        &self,
        keys: &TicketKeys,
        raw: &str,
        owner: &str,
        lease_ttl: Duration,
        replicas: u32,
        timeout: Duration,
    ) -> Result<ClaimReplication, StoreError> {
        let mut confirm = CONFIRM_CLAIM_SCRIPT.key(&keys.record);
        confirm.key(&keys.lease).arg(raw).arg(owner).arg(lease_ttl.as_millis() as u64);
        self.write_and_wait(&CONFIRM_CLAIM_SCRIPT, &confirm, replicas, timeout).await
    }

    /// Checks that the record `raw` still stands and writes it again, then waits up to
    /// `timeout` for `replicas` replicas to hold it (Redis `WAIT`, as for a claim).
    async fn confirm_record(
        &self,
        keys: &TicketKeys,
        raw: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<ClaimReplication, StoreError> {
        let mut confirm = CONFIRM_RECORD_SCRIPT.key(&keys.record);
        confirm.arg(raw);
        self.write_and_wait(&CONFIRM_RECORD_SCRIPT, &confirm, replicas, timeout).await
    }

    /// Cancels a ticket in one step against its claim: the tombstone `tombstone` (kept
    /// `record_ttl`) if it has no record, else its cancel flag (kept `flag_ttl`), published to
    /// the worker running it.
    async fn cancel(
        &self,
        keys: &TicketKeys,
        tombstone: &TicketRecord,
        record_ttl: Duration,
        flag_ttl: Duration,
    ) -> Result<Cancel, StoreError> {
        let flagged: i64 = CANCEL_SCRIPT
            .key(&keys.record)
            .key(&keys.cancel)
            .arg(tombstone.encode())
            .arg(record_ttl.as_millis() as u64)
            .arg(flag_ttl.as_millis() as u64)
            .arg(crate::cancel_notices::channel(&self.prefix))
            .arg(&keys.ticket)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(if flagged == 1 { Cancel::Flagged } else { Cancel::Tombstoned })
    }

    /// Replaces the record if it still holds exactly `expected`; on success also drops the
    /// lease (a run's own end goes through [`RedisStore::end_run`]), or, once completed, the
    /// lease, logs, lines written and cancel flag. `ttl` of `None` keeps the TTL.
    async fn compare_and_set(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        ttl: Option<Duration>,
        release: Release,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.compare_and_set.key(&keys.record);
        match release {
            Release::Nothing => {}
            Release::Lease => {
                invocation.key(&keys.lease);
            }
            Release::Ended { lines_written } => {
                return self.end_run(keys, expected, new, &[], lines_written, None).await
            }
            Release::LeaseAndOutput => {
                invocation.key(&keys.lease).key(&keys.logs).key(&keys.cancel).key(&keys.lines_written);
            }
        }
        let running_set = if release == Release::Nothing { String::new() } else { self.running_set(&new.agent_id) };
        let done: i64 = invocation
            .arg(expected)
            .arg(new.encode())
            .arg(ttl.map_or(0, |t| t.as_millis().max(1) as u64))
            .arg(running_set)
            .arg(&keys.ticket)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(done == 1)
    }

    /// A run's own end and its last lines in one script ([`END_RUN`]).
    async fn end_run(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        lines: &[LogLine],
        lines_written: u64,
        logs_ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let mut invocation = END_RUN_SCRIPT.key(&keys.record);
        invocation.key(&keys.lines_written).key(&keys.lease).key(&keys.logs).key(self.running_set(&new.agent_id));
        invocation.arg(expected).arg(new.encode()).arg(lines_written).arg(&keys.ticket);
        let logs_ttl = if lines.is_empty() { None } else { logs_ttl };
        invocation.arg(logs_ttl.map_or(0, |t| t.as_millis().max(1) as u64));
        for line in lines {
            invocation.arg(rmp_serde::to_vec_named(line).expect("log lines always encode"));
        }
        let done: i64 = invocation.invoke_async(&mut self.con.clone()).await?;
        Ok(done == 1)
    }

    /// Reads the record, the lease and the log lines after `after_seq` (by their sequence
    /// numbers, see [`READ`]) in one step, so a record read as complete always comes with all
    /// of its logs.
    async fn read(&self, keys: &TicketKeys, after_seq: u64) -> Result<TicketView, StoreError> {
        let (raw, lease, last_stored, lines_written, lines): (Option<String>, i64, u64, Option<u64>, Vec<Vec<u8>>) =
            self.read
                .key(&keys.record)
                .key(&keys.lease)
                .key(&keys.logs)
                .key(&keys.lines_written)
                .arg(after_seq.min(i64::MAX as u64 / 2))
                .arg(MAX_LINES_PER_READ)
                .invoke_async(&mut self.con.clone())
                .await?;
        let mut logs = Vec::with_capacity(lines.len());
        let mut bytes = 0;
        for line in lines {
            bytes += line.len();
            if bytes > MAX_STATUS_LOG_BYTES && !logs.is_empty() {
                break;
            }
            match rmp_serde::from_slice::<LogLine>(&line) {
                Ok(line) => logs.push(line),
                Err(error) => {
                    tracing::error!(key = %keys.logs, %error, "undecodable log line in store");
                    break;
                }
            }
        }
        let record = raw.map(|raw| (decode_record(&raw), raw));
        Ok(TicketView { record, lease_alive: lease == 1, logs, last_stored, lines_written })
    }

    /// Appends log lines (already numbered, in order) and keeps the list as long as the record.
    async fn append_logs(&self, keys: &TicketKeys, lines: &[LogLine], ttl: Duration) -> Result<(), StoreError> {
        let encoded: Vec<Vec<u8>> =
            lines.iter().map(|l| rmp_serde::to_vec_named(l).expect("log lines always encode")).collect();
        let _: () = redis::pipe()
            .rpush(&keys.logs, encoded)
            .ignore()
            .pexpire(&keys.logs, ttl.as_millis() as i64)
            .ignore()
            .query_async(&mut self.con.clone())
            .await?;
        Ok(())
    }

    /// Renews the lease if `owner` still holds it, and says whether a cancel was requested.
    async fn renew_lease(&self, keys: &TicketKeys, owner: &str, ttl: Duration) -> Result<LeaseRenewal, StoreError> {
        let (held, cancel): (i64, i64) = self
            .renew_lease
            .key(&keys.lease)
            .key(&keys.cancel)
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(LeaseRenewal { held: held == 1, cancel_requested: cancel == 1 })
    }

    /// Whether the ticket's cancel flag is set: one `EXISTS`.
    async fn cancel_requested(&self, keys: &TicketKeys) -> Result<bool, StoreError> {
        Ok(self.con.clone().exists(&keys.cancel).await?)
    }

    /// Tickets an agent id was running when it last stopped.
    async fn running_tickets(&self, agent_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.con.clone().smembers(self.running_set(agent_id)).await?)
    }

    /// Drops a ticket from an agent id's running set.
    async fn forget_running(&self, agent_id: &str, ticket_key: &str) -> Result<(), StoreError> {
        let _: () = self.con.clone().srem(self.running_set(agent_id), ticket_key).await?;
        Ok(())
    }

    /// Answers whether Redis is reachable now.
    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING").query_async(&mut self.con.clone()).await?;
        Ok(())
    }

    async fn receipt_head(&self, agent_id: &str) -> Result<Option<ChainHead>, StoreError> {
        let head: Option<String> = self.con.clone().get(self.receipt_keys(agent_id)[0].clone()).await?;
        Ok(head.as_deref().and_then(ChainHead::parse))
    }

    async fn append_receipt(
        &self,
        agent_id: &str,
        previous: Option<&ChainHead>,
        head: &ChainHead,
        receipt: &str,
    ) -> Result<bool, StoreError> {
        let [head_key, pending_key] = self.receipt_keys(agent_id);
        let appended: i64 = APPEND_RECEIPT_SCRIPT
            .key(head_key)
            .key(pending_key)
            .arg(previous.map(ChainHead::to_text).unwrap_or_default())
            .arg(head.to_text())
            .arg(head.sequence)
            .arg(receipt)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(appended == 1)
    }

    async fn pending_receipts(&self, agent_id: &str, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let [_, pending_key] = self.receipt_keys(agent_id);
        let stop = limit.max(1) as isize - 1;
        let pending: Vec<(String, f64)> = self.con.clone().zrange_withscores(pending_key, 0, stop).await?;
        Ok(pending.into_iter().map(|(receipt, sequence)| (sequence as u64, receipt)).collect())
    }

    async fn receipts_published(&self, agent_id: &str, through: u64) -> Result<(), StoreError> {
        let [_, pending_key] = self.receipt_keys(agent_id);
        let _: () = self.con.clone().zrembyscore(pending_key, "-inf", through).await?;
        Ok(())
    }
}

/// The agent's ticket store: Redis (shared by a pool) or the embedded database on the agent's own
/// disk, each operation recorded by [`crate::observed::Observed`].
pub type AgentStore = Arc<dyn TicketStore<Error = StoreError>>;
