//! Flags both binaries take alike, defined once so that they read and behave the same: how the
//! broker is reached through an HTTP proxy ([`ProxyArgs`]).

use crate::connect::proxy::{ProxyConfigError, ProxySettings, ProxySources};
use std::path::PathBuf;

/// `--proxy` and `--proxy-credentials`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ProxyArgs {
    /// HTTP proxy the broker is reached through, `http://HOST:PORT`: a CONNECT tunnel, inside
    /// which TLS runs end to end. Applies to every broker host NO_PROXY does not name, loopback
    /// included. Unset: ALL_PROXY (and HTTPS_PROXY for a wss:// URL), if set. A password is
    /// refused here, as the command line is readable by every user of the machine: give it
    /// with --proxy-credentials, or in the URL of CUTTLE_PROXY.
    #[arg(long, global = true, env = "CUTTLE_PROXY", hide_env_values = true, value_name = "URL")]
    pub proxy: Option<String>,
    /// File whose first line is `USER:PASSWORD`, for a proxy that asks for Basic
    /// authentication (407).
    #[arg(long, global = true, env = "CUTTLE_PROXY_CREDENTIALS", value_name = "FILE")]
    pub proxy_credentials: Option<PathBuf>,
}

impl ProxyArgs {
    /// The proxy settings these flags and the process's environment give.
    pub fn settings(&self) -> Result<ProxySettings, ProxyConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        ProxySettings::resolve(&ProxySources {
            flag: self.proxy.as_deref(),
            credentials_file: self.proxy_credentials.as_deref(),
            env: &env,
        })
    }
}
