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

/// How a TLS handshake failed, as far as what to fix goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate is not trusted: a setting to fix (the CA file, or the host name
    /// in the URL), which no retry mends.
    UntrustedServer,
    /// The server refused the handshake (an alert, such as for a client certificate it wants
    /// and did not get), or sent no certificate.
    Refused,
}

impl TlsFailure {
    /// How the TLS handshake behind `error` failed, if a TLS handshake is what failed: asked of
    /// the `rustls::Error` found in its chain of sources (lapin and redis-rs carry it inside an
    /// `io::Error`).
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        match rustls_error(error)? {
            rustls::Error::InvalidCertificate(_) => Some(TlsFailure::UntrustedServer),
            rustls::Error::AlertReceived(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_) => Some(TlsFailure::Refused),
            _ => None,
        }
    }

    /// What to check.
    pub fn hint(self) -> &'static str {
        match self {
            TlsFailure::UntrustedServer => {
                "the server's certificate is not trusted: check the CA file and the host name in the URL"
            }
            TlsFailure::Refused => "the server refused the TLS handshake: check the client certificate and key",
        }
    }
}

/// The `rustls::Error` in `error`'s chain of sources. An `io::Error` and an `Arc` of an error
/// (redis-rs keeps its sources in one) answer `source()` with their content's source, skipping
/// the content itself: they are looked into.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let content: Option<&(dyn std::error::Error + 'static)> =
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                io.get_ref().map(|inner| inner as _)
            } else if let Some(shared) = error.downcast_ref::<Shared>() {
                Some(&**shared)
            } else {
                None
            };
        next = content.or_else(|| error.source());
    }
    None
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

    /// A rustls client configuration (the `wss://` transport's): the system's roots and the CA
    /// trusted, the client certificate presented.
    pub fn rustls_client_config(&self) -> std::io::Result<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        // A root the system holds that rustls cannot read is skipped, as lapin's TLS does.
        let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        for cert in CertificateDer::pem_slice_iter(self.ca.as_deref().unwrap_or_default()) {
            roots.add(cert.map_err(|e| invalid(&e))?).map_err(|e| invalid(&e))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&e))?
            .with_root_certificates(roots);
        match &self.client {
            Some((cert, key)) => {
                let chain =
                    CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(&e))?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid(&e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| invalid(&e))
            }
            None => Ok(builder.with_no_client_auth()),
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

    /// A handshake error as the TLS stream reports it: rustls' error inside an `io::Error`.
    fn handshake(error: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }

    fn untrusted() -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    }

    fn refused() -> rustls::Error {
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
    }

    #[test]
    fn handshake_failures_are_told_by_rustls_error_in_the_chain() {
        assert_eq!(TlsFailure::of(&handshake(untrusted())), Some(TlsFailure::UntrustedServer));
        assert_eq!(TlsFailure::of(&handshake(refused())), Some(TlsFailure::Refused));
        let wrong_name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert_eq!(TlsFailure::of(&handshake(wrong_name)), Some(TlsFailure::UntrustedServer));
        assert_eq!(TlsFailure::of(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)), None);
        assert_eq!(TlsFailure::of(&handshake(rustls::Error::DecryptError)), None);
        // The words are not asked: an error that only says them is no handshake failure.
        let words = std::io::Error::other("invalid peer certificate: received fatal alert");
        assert_eq!(TlsFailure::of(&words), None);
    }

    #[test]
    fn the_broker_and_the_store_clients_carry_the_handshake_failure() {
        let broker = lapin::Error::from(handshake(untrusted()));
        assert_eq!(TlsFailure::of(&broker), Some(TlsFailure::UntrustedServer));
        let store = redis::RedisError::from(handshake(refused()));
        assert_eq!(TlsFailure::of(&store), Some(TlsFailure::Refused));
        let plain = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(TlsFailure::of(&plain), None);
    }

    #[test]
    fn each_failure_says_what_to_check() {
        assert!(TlsFailure::UntrustedServer.hint().contains("CA file"));
        assert!(TlsFailure::Refused.hint().contains("client certificate"));
    }
}
