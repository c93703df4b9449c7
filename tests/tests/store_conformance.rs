//! The ticket store's atomicity contract (`contracts::store`), checked by its one conformance
//! suite against every store the agent has: Redis and the embedded redb file. (The in-memory
//! store runs it in contracts' unit tests.)

use contracts::store::conformance;
use contracts::time::unix_millis;
use edge::connect::store::RedisTarget;
use std::time::{Duration, SystemTime};
use worker_agent::local_store::LocalStore;
use worker_agent::store::RedisStore;

#[tokio::test]
async fn redis_keeps_the_ticket_store_contract() {
    let prefix = format!("{}:", tests::unique("store-contract"));
    let target = RedisTarget::Url { url: tests::redis_url(), tls: Default::default() };
    let store = RedisStore::connect(&target, &prefix, Duration::from_secs(5)).await.expect("the test redis");
    conformance::check_all(&store, "t", "agent-1/0", "agent-1", unix_millis(SystemTime::now())).await;
    let mut con = redis::Client::open(tests::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut con).await.unwrap();
    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut con).await.unwrap();
}

#[tokio::test]
async fn the_local_store_keeps_the_ticket_store_contract() {
    let dir = std::env::temp_dir().join(tests::unique("store-contract"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = LocalStore::open(&dir.join("tickets.redb"), "agent-1/0", std::time::Duration::from_secs(600))
        .expect("local store");
    conformance::check_all(&store, "t", "agent-1/0", "agent-1", unix_millis(SystemTime::now())).await;
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}
