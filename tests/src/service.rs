//! The real `dispatcher serve` binary for tests: its own journal key prefix (removed when
//! stopped), its address read from its log, and an HTTP client for its API.

use crate::{dispatcher_command, eventually, redis_url, unique};
use std::path::PathBuf;
use std::time::Duration;

/// `dispatcher` on the journal under `prefix`, reading nothing from standard input.
pub fn journal_command(prefix: &str) -> tokio::process::Command {
    let mut command = dispatcher_command();
    command
        .env("CUTTLE_JOURNAL_URL", redis_url())
        .env("CUTTLE_JOURNAL_PREFIX", prefix)
        .stdin(std::process::Stdio::null());
    command
}

/// `dispatcher ARGS` on the journal under `prefix`, to its end (at most a minute).
pub async fn journal_cli(args: &[&str], prefix: &str) -> std::process::Output {
    let output = journal_command(prefix).args(args).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("dispatcher finishes").expect("runs")
}

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
    /// Extra environment variables (kept for restarts).
    pub env: Vec<(String, String)>,
    child: Option<tokio::process::Child>,
    pub log: PathBuf,
    pub url: String,
}

impl ServiceProcess {
    /// Starts `dispatcher serve` on a free loopback port with the journal under `prefix`.
    pub async fn start(prefix: &str, args: &[&str]) -> ServiceProcess {
        Self::start_with_env(prefix, args, &[]).await
    }

    /// [`ServiceProcess::start`], with environment variables too.
    pub async fn start_with_env(prefix: &str, args: &[&str], env: &[(&str, &str)]) -> ServiceProcess {
        let log = std::env::temp_dir().join(format!("{}.log", unique("serve")));
        let mut process = ServiceProcess {
            prefix: prefix.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    /// The `HOST:PORT` it listens on.
    pub fn addr(&self) -> &str {
        self.url.strip_prefix("http://").expect("an http URL")
    }

    /// Sends a request as it is given, header by header (`Host` too, which HTTP clients set
    /// themselves; the service's own address unless given), as a browser or an attacker would
    /// make it; gives the status and the body.
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
            request.push_str(&format!("Host: {}\r\n", self.addr()));
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr()).await.expect("connect to the service");
            stream.write_all(request.as_bytes()).await.expect("send the request");
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.expect("read the answer");
            String::from_utf8_lossy(&answer).into_owned()
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), exchange).await.expect("an answer within 30s");
        let status =
            answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {answer:?}"));
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
        (status, body)
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
