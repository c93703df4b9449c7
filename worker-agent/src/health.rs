//! Probes for orchestrators: a tiny HTTP endpoint. `GET /livez` answers 200 while the process
//! serves requests at all; `GET /readyz` answers 200 only while the agent consumes its queue and
//! the ticket store answers, 503 otherwise.

use crate::service::Agent;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves probes on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let agent = agent.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &agent)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, agent: &Agent) -> std::io::Result<()> {
    let mut request = [0u8; 1024];
    let read = stream.read(&mut request).await?;
    let line = String::from_utf8_lossy(&request[..read]);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/livez" => ("200 OK", "alive"),
        "/readyz" if ready(agent).await => ("200 OK", "ready"),
        "/readyz" => ("503 Service Unavailable", "not ready: not consuming, or the ticket store does not answer"),
        _ => ("404 Not Found", "try /livez or /readyz"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}\n",
        body.len() + 1
    );
    stream.write_all(response.as_bytes()).await
}

/// Ready: consuming commands, and the ticket store answers a ping within a second.
pub async fn ready(agent: &Agent) -> bool {
    *agent.readiness().borrow()
        && matches!(tokio::time::timeout(Duration::from_secs(1), agent.store().ping()).await, Ok(Ok(())))
}
