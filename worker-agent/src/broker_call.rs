//! One broker call bounded in time, and what can go wrong with the broker: the words the
//! agent's edges to RabbitMQ ([`crate::broker`], [`crate::presence`]) share.

use contracts::time::short;
use edge::connect::broker::SILENT_BROKER;
use edge::connect::proxy::ProxyError;
use edge::connect::tls::TlsFailure;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker call {call} failed: {source}")]
    Call { call: &'static str, source: lapin::Error },
    #[error("broker call {call} timed out after {}", short(*after))]
    Timeout { call: &'static str, after: Duration },
    #[error("{what} does not exist: an enrolled agent declares nothing (run dispatcher setup-broker and enrol-agent, or enrol-pool for a pool worker with an id POOL.NAME, or start without --enrolled)")]
    NotEnrolled { what: String },
    #[error("the broker closed the consumer")]
    ConsumerClosed,
    /// A call whose error is a failed TLS handshake ([`TlsFailure::of`]). The call's error is
    /// kept, but not offered as `source()`: the message tells it already, and the binary prints
    /// an error with its chain of sources, which must not say it twice.
    #[error("TLS handshake with the broker failed: {cause} ({})", failure.hint())]
    Tls { failure: TlsFailure, cause: lapin::Error },
    #[error("{SILENT_BROKER} (no AMQP answer within {})", short(*after))]
    Silent { after: Duration },
    /// A call whose error is the HTTP proxy's ([`ProxyError::of`]): refused, failed, or not
    /// letting us through. The proxy's error is the message, kept in the call's error.
    #[error("{}", ProxyError::of(cause).map_or_else(|| cause.to_string(), ToString::to_string))]
    Proxy { cause: lapin::Error },
    /// Nothing answered through the proxy in time, not even the proxy's own tunnel.
    #[error("no answer through the proxy {proxy} within {}: is the proxy up, and does it answer CONNECT?", short(*after))]
    ProxySilent { proxy: String, after: Duration },
}

/// Runs one broker call with a timeout.
pub(crate) async fn call<T>(
    name: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(BrokerError::Call { call: name, source }),
        Err(_) => Err(BrokerError::Timeout { call: name, after: timeout }),
    }
}

impl BrokerError {
    /// Whether no retry can mend this: the broker's certificate is not trusted (the CA file, or
    /// the host name in the URL, is a setting to fix), or the proxy refuses us (its credentials,
    /// or a destination it forbids), unlike a broker or proxy that is down or restarting.
    pub fn is_setting(&self) -> bool {
        match self {
            BrokerError::Tls { failure, .. } => *failure == TlsFailure::UntrustedServer,
            BrokerError::Proxy { cause } => ProxyError::of(cause).is_some_and(ProxyError::is_setting),
            _ => false,
        }
    }
}
