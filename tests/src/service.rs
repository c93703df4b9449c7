//! The real `dispatcher serve` binary for tests: its own journal key prefix (removed when
//! stopped), its address read from its log, and an HTTP client for its API.

use crate::{dispatcher_command, eventually, redis_url, unique};
use std::path::PathBuf;
use std::time::Duration;

/// A journal key prefix of its own; its keys are removed by [`remove_journal`].
pub fn journal_prefix(what: &str) -> String {
    format!("{}:journal:", unique(what))
}

/// Removes every key under a journal prefix.
pub async fn remove_journal(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else { return };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else { return };
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut con).await.unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut con).await;
    }
}

/// A running `dispatcher serve`.
pub struct ServiceProcess {
    pub prefix: String,
    /// Extra arguments after `serve` (kept for restarts).
    pub args: Vec<String>,
    child: Option<tokio::process::Child>,
    pub log: PathBuf,
    pub url: String,
}

impl ServiceProcess {
    /// Starts `dispatcher serve` on a free loopback port with the journal under `prefix`.
    pub async fn start(prefix: &str, args: &[&str]) -> ServiceProcess {
        let log = std::env::temp_dir().join(format!("{}.log", unique("serve")));
        let mut process = ServiceProcess {
            prefix: prefix.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            log,
            url: String::new(),
        };
        process.spawn().await;
        process
    }

    async fn spawn(&mut self) {
        std::fs::write(&self.log, "").expect("service log");
        let log = std::fs::OpenOptions::new().append(true).open(&self.log).expect("service log");
        let mut command = dispatcher_command();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--journal", &redis_url(), "--journal-prefix", &self.prefix])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(command.spawn().expect("start dispatcher serve"));
        let path = self.log.clone();
        self.url = eventually("the service to listen", Duration::from_secs(20), || {
            let path = path.clone();
            async move {
                let log = std::fs::read_to_string(&path).ok()?;
                let at = log.find("listening on http://")?;
                let rest = &log[at + "listening on ".len()..];
                Some(rest[..rest.find('\n')?].to_owned())
            }
        })
        .await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the service with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts the service again on the same journal (after a kill), on a new port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the service before restarting it");
        self.spawn().await;
    }

    /// Submits `script` to agent `target` over the API (`POST /v1/scripts`): its ticket.
    pub async fn submit(&self, target: &str, script: &str) -> String {
        let body = serde_json::json!({"target": target, "script": script});
        let response = http().post(format!("{}/v1/scripts", self.url)).json(&body).send().await.expect("POST");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("json body");
        assert_eq!(status, 202, "{body}");
        body["tickets"][0]["ticket"].as_str().expect("ticket").to_owned()
    }

    /// Waits until the ticket has finished (through whichever service answers) and gives its
    /// record.
    pub async fn finished(&self, ticket: &str, within: Duration) -> serde_json::Value {
        let (http, url) = (http(), format!("{}/v1/tickets/{ticket}", self.url));
        eventually(&format!("ticket {ticket} to finish"), within, || {
            let request = http.get(&url).send();
            async move {
                let body: serde_json::Value = request.await.ok()?.json().await.ok()?;
                (body["state"] == "finished").then_some(body)
            }
        })
        .await
    }

    /// Stops the process; the journal stays (shared by replicas): see [`remove_journal`].
    pub async fn stop(mut self) {
        self.kill().await;
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An HTTP client for the service's API, optionally with a bearer token.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client")
}
