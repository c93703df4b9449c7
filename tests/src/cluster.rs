//! Replicated services of the test's own: a three-node RabbitMQ cluster, and Redis with a replica
//! and Sentinels. All on private ports beside the machine's shared services, which they never
//! touch.

use crate::eventually;
use crate::services::PrivateRabbit;
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
