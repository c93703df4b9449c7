//! A real headless browser for tests of the web view: Debian's `chromium`, driven through
//! `chromedriver` (WebDriver) with fantoccini. Tests skip, saying why, where they are missing
//! ([`crate::needs::browser`]). And [`OtherSite`]: a page of another origin for the browser to
//! open, as any web site would be.

use crate::eventually;
use crate::services::free_port;
use fantoccini::{Client, ClientBuilder};
use std::path::PathBuf;
use std::time::Duration;

/// A headless chromium session, with the chromedriver it runs under (stopped on drop).
pub struct Browser {
    pub client: Client,
    _driver: tokio::process::Child,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless chromium session in it.
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let capabilities: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "goog:chromeOptions": {
                // No sandbox: tests may run as root, where chromium refuses to start with it.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--hide-scrollbars", "--force-device-scale-factor=1"]
            }
        }))
        .expect("capabilities");
        let client = eventually("chromedriver to start a session", Duration::from_secs(30), || {
            let (url, capabilities) = (url.clone(), capabilities.clone());
            async move {
                // chromedriver listens on loopback over plain HTTP: no TLS.
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector).capabilities(capabilities).connect(&url).await.ok()
            }
        })
        .await;
        Browser { client, _driver: driver }
    }

    /// Runs `script` in the page and gives its result.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, Vec::new()).await.expect("script runs in the page")
    }

    /// Sets the viewport (the page's inner size) to `width` x `height` CSS pixels.
    pub async fn viewport(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.expect("resize");
        // The window's frame (if any) takes some of it: grow the window by the difference.
        let inner = self.eval("return [window.innerWidth, window.innerHeight]").await;
        let (w, h) = (inner[0].as_u64().unwrap_or(0) as u32, inner[1].as_u64().unwrap_or(0) as u32);
        if (w, h) != (width, height) {
            let (dw, dh) = (width.saturating_sub(w), height.saturating_sub(h));
            self.client.set_window_size(width + dw, height + dh).await.expect("resize");
        }
    }

    /// Saves a screenshot of the viewport as PNG under `target/screenshots/` and gives its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir =
            crate::binary("dispatcher").parent().and_then(|d| d.parent()).expect("target dir").join("screenshots");
        std::fs::create_dir_all(&dir).expect("screenshots dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Another web site: one HTML page, served at every path on a free loopback port (another origin
/// than a service's), until dropped.
pub struct OtherSite {
    pub port: u16,
    serving: tokio::task::JoinHandle<()>,
}

impl OtherSite {
    pub async fn serve(page: String) -> OtherSite {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the other site");
        let port = listener.local_addr().expect("bound").port();
        let page = std::sync::Arc::new(page);
        let serving = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let page = page.clone();
                tokio::spawn(async move {
                    // The request's head (whatever it asks), then the page, and the connection closes.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        OtherSite { port, serving }
    }

    /// Its origin, as the browser sends it in `Origin`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for OtherSite {
    fn drop(&mut self) {
        self.serving.abort();
    }
}
