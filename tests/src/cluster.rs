//! Replicated services of the test's own: a three-node RabbitMQ cluster, and Redis with a replica
//! and Sentinels. All on private ports beside the machine's shared services, which they never
//! touch.

use crate::proxy::FaultProxy;
use crate::services::{free_port, tail, PrivateRabbit, PrivateRedis};
use crate::{eventually, eventually_explained, unique};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A RabbitMQ cluster of three private nodes on this machine.
pub struct RabbitCluster {
    pub nodes: Vec<PrivateRabbit>,
}

impl RabbitCluster {
    /// Starts three nodes side by side, then joins the second and third to the first.
    pub async fn start() -> RabbitCluster {
        let (a, b, c) = tokio::join!(PrivateRabbit::start(), PrivateRabbit::start(), PrivateRabbit::start());
        let cluster = RabbitCluster { nodes: vec![a, b, c] };
        let first = cluster.nodes[0].node.clone();
        for node in &cluster.nodes[1..] {
            node.ctl(&["-q", "stop_app"]);
            node.ctl(&["-q", "join_cluster", &first]);
            node.ctl(&["-q", "start_app"]);
        }
        let cluster_ref = &cluster;
        eventually("the three nodes to run as one cluster", Duration::from_secs(60), || async move {
            let status = cluster_ref.nodes[0].query(&["-q", "cluster_status", "--formatter", "json"]);
            let running = serde_json::from_str::<serde_json::Value>(&status).ok()?["running_nodes"].as_array()?.len();
            (running == 3).then_some(())
        })
        .await;
        cluster
    }

    /// Every node's URL, comma-separated, as `CUTTLE_AMQP_URL` takes them.
    pub fn amqp_urls(&self) -> String {
        self.nodes.iter().map(PrivateRabbit::amqp_url).collect::<Vec<_>>().join(",")
    }

    /// The node an AMQP connection named `connection_name` (a client property) is open on.
    pub fn node_of(&self, connection_name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| {
            node.query(&["-q", "--no-table-headers", "list_connections", "port", "client_properties"])
                .lines()
                .any(|line| line.contains(connection_name) && line.starts_with(&node.port.to_string()))
        })
    }

    /// The members (nodes holding a replica) of a quorum queue, as the first running node sees them.
    pub fn queue_members(&self, queue: &str) -> Vec<String> {
        for node in &self.nodes {
            let out = node.query(&["-q", "list_queues", "name", "members", "--formatter", "json"]);
            let Ok(queues) = serde_json::from_str::<serde_json::Value>(&out) else { continue };
            let Some(queues) = queues.as_array() else { continue };
            return queues
                .iter()
                .find(|q| q["name"] == queue)
                .and_then(|q| q["members"].as_array())
                .map(|members| members.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
        }
        Vec::new()
    }
}

/// Redis as a replicated store: a master, a replica that replicates through a [`FaultProxy`] (so
/// a test can hold replication back, as a slow link would), and three Sentinels watching them.
pub struct ReplicatedRedis {
    pub master: PrivateRedis,
    pub replica: PrivateRedis,
    /// Between the replica and the master: holding it keeps writes from reaching the replica.
    pub replication: FaultProxy,
    pub sentinel_ports: Vec<u16>,
    pub service: String,
    dir: PathBuf,
}

impl ReplicatedRedis {
    /// A master and a replica; with `sentinels`, three Sentinels that fail over one second after
    /// the master stops answering.
    pub async fn start(sentinels: bool) -> ReplicatedRedis {
        let master = PrivateRedis::start(false).await;
        let replication = FaultProxy::start(([127, 0, 0, 1], master.port).into()).await;
        let replica =
            PrivateRedis::start_with(false, &["--replicaof", "127.0.0.1", &replication.addr().port().to_string()])
                .await;
        let dir = std::env::temp_dir().join(unique("sentinels"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let service = unique("store");
        let mut redis = ReplicatedRedis { master, replica, replication, sentinel_ports: Vec::new(), service, dir };
        redis.wait_replica_in_sync().await;
        if sentinels {
            for _ in 0..3 {
                redis.start_sentinel();
            }
            redis.wait_sentinels_ready().await;
        }
        redis
    }

    fn start_sentinel(&mut self) {
        let port = free_port();
        let file = self.dir.join(format!("sentinel-{port}.conf"));
        // A long failover timeout: Sentinel would otherwise soon point the replica straight at
        // the master, around the proxy.
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize yes\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {svc} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {svc} 1000\n\
             sentinel failover-timeout {svc} 120000\n",
            dir = self.dir.display(),
            log = self.sentinel_log(port).display(),
            svc = self.service,
            master = self.master.port,
        );
        std::fs::write(&file, config).expect("sentinel config");
        let status = Command::new("redis-server").arg(&file).arg("--sentinel").status().expect("redis-server");
        assert!(status.success(), "sentinel failed to start");
        self.sentinel_ports.push(port);
    }

    /// The Sentinels' addresses, as `CUTTLE_REDIS_SENTINELS` takes them.
    pub fn sentinels(&self) -> String {
        self.sentinel_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    async fn wait_replica_in_sync(&self) {
        let master = self.master.port;
        eventually("the replica to sync with the master", Duration::from_secs(20), || async move {
            redis_cli(master, &["info", "replication"]).contains("state=online").then_some(())
        })
        .await;
    }

    async fn wait_sentinels_ready(&self) {
        let ports = self.sentinel_ports.clone();
        let service = self.service.clone();
        eventually("the sentinels to know each other and the replica", Duration::from_secs(30), || {
            let (ports, service) = (ports.clone(), service.clone());
            async move {
                ports
                    .iter()
                    .all(|&port| {
                        let others = redis_cli(port, &["sentinel", "sentinels", &service]);
                        let replicas = redis_cli(port, &["sentinel", "replicas", &service]);
                        others.matches("runid").count() >= 2 && replicas.contains("slave")
                    })
                    .then_some(())
            }
        })
        .await;
    }

    /// The port of the master the Sentinels name now.
    pub fn master_port_by_sentinels(&self) -> Option<u16> {
        let port = self.sentinel_ports.first()?;
        let reply = redis_cli(*port, &["sentinel", "get-master-addr-by-name", &self.service]);
        reply.lines().nth(1)?.trim().parse().ok()
    }

    /// Kills the master with SIGKILL (what was not yet replicated is lost with it), and cuts the
    /// replication link so nothing held in the proxy reaches the replica afterwards.
    pub async fn kill_master(&self) {
        self.master.kill().await;
        self.replication.outage();
    }

    /// After a failover: starts the old master again, empty, as a replica of the new one (on a
    /// port of its own: the Sentinels learn it from the new master).
    pub async fn restart_old_master_as_replica(&mut self) {
        let replicaof = ["--replicaof", "127.0.0.1", &self.replica.port.to_string()];
        self.master.start_again_elsewhere(&replicaof).await;
        let new_master = self.replica.port;
        let synced =
            || async move { redis_cli(new_master, &["info", "replication"]).contains("state=online").then_some(()) };
        let what = "the old master to sync as a replica";
        eventually_explained(what, Duration::from_secs(60), synced, || self.logs()).await;
    }

    /// The last lines of every server's log: what a failed wait shows.
    pub fn logs(&self) -> String {
        let mut logs = format!(
            "--- new master (port {}) ---\n{}\n--- old master (port {}) ---\n{}",
            self.replica.port,
            self.replica.log_tail(),
            self.master.port,
            self.master.log_tail()
        );
        for port in &self.sentinel_ports {
            logs += &format!("\n--- sentinel (port {port}) ---\n{}", tail(&self.sentinel_log(*port), 20));
        }
        logs
    }

    fn sentinel_log(&self, port: u16) -> PathBuf {
        self.dir.join(format!("sentinel-{port}.log"))
    }
}

impl Drop for ReplicatedRedis {
    fn drop(&mut self) {
        for port in &self.sentinel_ports {
            let _ = Command::new("redis-cli").args(["-p", &port.to_string(), "shutdown", "nosave"]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p PORT ARGS...` output (empty if it cannot connect).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}
