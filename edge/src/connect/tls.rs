//! TLS settings of a connection to the broker or the ticket store: a CA file (PEM) trusted
//! besides the system's roots, and a client certificate with its key (PEM) to present, read
//! once at start ([`TlsFiles::load`]). With a client certificate and no `auth_mechanism` in the
//! broker URL, the broker is asked for EXTERNAL authentication (the user is the certificate's
//! name, no password travels).

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use std::path::{Path, PathBuf};

/// The files one connection's TLS is configured from; all optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) to trust besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) to present.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

/// Why TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// The contents of [`TlsFiles`], read once at start.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca: Option<Vec<u8>>,
    /// Certificate and key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsMaterial").field("ca", &self.ca.is_some()).field("client", &self.client.is_some()).finish()
    }
}

impl TlsFiles {
    /// Reads the files.
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
        };
        let ca = self.ca_file.as_deref().map(|path| read("CA file", path)).transpose()?;
        let client = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((read("client certificate", cert)?, read("client key", key)?)),
            _ => None,
        };
        Ok(TlsMaterial { ca, client })
    }
}

/// The broker URL with `auth_mechanism=external` added when a client certificate is presented
/// and the URL names no mechanism: the certificate then is the credential.
pub fn amqp_url_with_auth(url: &str, client_cert: bool) -> String {
    let query = url.split_once('?').map(|(_, q)| q);
    let named = query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("auth_mechanism=")));
    if !client_cert || named {
        return url.to_owned();
    }
    let separator = if query.is_some() { '&' } else { '?' };
    format!("{url}{separator}auth_mechanism=external")
}

/// Whether a TLS failure says the server's certificate is not trusted: a setting to fix (the CA
/// file, or the host name in the URL), which no retry mends.
pub fn untrusted_server(message: &str) -> bool {
    message.contains("invalid peer certificate")
}

/// What to check when a TLS handshake fails: the peer's certificate is not trusted, or ours
/// was refused. `message` is the handshake error's text.
pub fn tls_hint(message: &str) -> Option<&'static str> {
    if untrusted_server(message) {
        Some("the server's certificate is not trusted: check the CA file and the host name in the URL")
    } else if message.contains("certificate") || message.contains("alert") {
        Some("the server refused the TLS handshake: check the client certificate and key")
    } else {
        None
    }
}

impl TlsMaterial {
    /// lapin's TLS settings (used only by `amqps://` URLs).
    pub fn amqp_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: self
                .client
                .as_ref()
                .map(|(pem, key)| OwnedIdentity::PKCS8 { pem: pem.clone(), key: key.clone() }),
            cert_chain: self.ca.as_ref().map(|ca| String::from_utf8_lossy(ca).into_owned()),
        }
    }

    /// redis-rs' form of the CA and client certificate (the CA replaces the system's roots).
    pub fn redis_certificates(&self) -> redis::TlsCertificates {
        let client_tls = self
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() });
        redis::TlsCertificates { client_tls, root_cert: self.ca.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_asks_for_external_auth_unless_the_url_names_a_mechanism() {
        assert_eq!(amqp_url_with_auth("amqps://h/%2f", true), "amqps://h/%2f?auth_mechanism=external");
        assert_eq!(
            amqp_url_with_auth("amqps://h/%2f?heartbeat=5", true),
            "amqps://h/%2f?heartbeat=5&auth_mechanism=external"
        );
        assert_eq!(
            amqp_url_with_auth("amqps://h/%2f?auth_mechanism=plain", true),
            "amqps://h/%2f?auth_mechanism=plain"
        );
        assert_eq!(amqp_url_with_auth("amqps://h/%2f", false), "amqps://h/%2f");
    }

    #[test]
    fn handshake_errors_get_a_hint() {
        assert!(tls_hint("invalid peer certificate: UnknownIssuer").unwrap().contains("CA file"));
        assert!(tls_hint("received fatal alert: CertificateRequired").unwrap().contains("client certificate"));
        assert_eq!(tls_hint("connection refused"), None);
        assert!(untrusted_server("invalid peer certificate: NotValidForName"));
        assert!(!untrusted_server("received fatal alert: CertificateRequired"));
    }
}
