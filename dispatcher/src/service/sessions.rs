//! Browser logins to the web view. The login form takes an API token once and answers with a
//! session: 32 random bytes in a cookie, never the token, so a cookie that leaks (a proxy's
//! log, a shared profile, a backup) is not a credential for the API and dies with the session.
//! The journal keeps, under the SHA-256 of the id, the digest of the token it logged in with, for
//! [`LIFETIME`]: every replica knows the session, logging out ends it everywhere, and a token
//! withdrawn from the tokens file ends its sessions when the service restarts with the new file.
//!
//! The cookie is `HttpOnly` (no script on the page can read it), `SameSite=Strict` (no other
//! site's page makes the browser send it) and, when `--public-url` says the service is reached
//! over https, `Secure` (never sent over plain HTTP). It counts for reading only: a request
//! that changes something needs `Authorization: Bearer`.

use super::journal::{Journal, JournalError, JournalResult};
use super::tokens::ApiTokens;
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The login cookie's name.
pub(super) const COOKIE: &str = "cuttle_session";

/// How long a login lasts; the browser is sent to the login form after it.
pub(super) const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("the system's random source failed: {0}")]
    Random(#[source] contracts::entropy::EntropyError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A session's id: 32 random bytes from the system's source, in hex. Only the browser holds it.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct SessionId(String);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(..)")
    }
}

impl SessionId {
    fn generate() -> Result<SessionId, SessionError> {
        use contracts::entropy::Entropy;
        let mut bytes = [0u8; 32];
        edge::entropy::OsEntropy.fill(&mut bytes).map_err(SessionError::Random)?;
        Ok(SessionId(hex::encode(bytes)))
    }

    /// The id in a request's login cookie, if it has the form of one.
    pub(super) fn from_cookie(headers: &HeaderMap) -> Option<SessionId> {
        let value = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
        let well_formed = value.len() == 64 && value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then(|| SessionId(value.to_owned()))
    }

    /// What the journal keys the session by: the SHA-256 of the id, so that reading the journal
    /// gives no session to use.
    fn key(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// The `Set-Cookie` value that holds a new session.
pub(super) fn login_cookie(id: &SessionId, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}", id.0, LIFETIME.as_secs())
}

/// The `Set-Cookie` value that makes the browser forget its session.
pub(super) fn logout_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// Opens a session for `token`: its id, or `None` if the token is not one of ours.
pub(super) async fn open(
    journal: &Journal,
    tokens: &ApiTokens,
    token: &str,
) -> Result<Option<SessionId>, SessionError> {
    let Some(token_digest) = tokens.known_digest(token) else { return Ok(None) };
    let id = SessionId::generate()?;
    journal.open_session(&id.key(), &token_digest, LIFETIME).await?;
    Ok(Some(id))
}

/// The name of the token whose session the request's cookie holds, if the session is open and
/// the token still one of ours.
pub(super) async fn who(journal: &Journal, tokens: &ApiTokens, headers: &HeaderMap) -> JournalResult<Option<String>> {
    let Some(id) = SessionId::from_cookie(headers) else { return Ok(None) };
    let Some(token_digest) = journal.session(&id.key()).await? else { return Ok(None) };
    Ok(tokens.name_of_digest(&token_digest).map(str::to_owned))
}

/// Ends the session of the request's cookie, if any.
pub(super) async fn close(journal: &Journal, headers: &HeaderMap) -> JournalResult<()> {
    match SessionId::from_cookie(headers) {
        Some(id) => journal.close_session(&id.key()).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, cookie.parse().unwrap());
        headers
    }

    #[test]
    fn a_session_is_random_and_its_cookie_holds_nothing_else() {
        let (a, b) = (SessionId::generate().unwrap(), SessionId::generate().unwrap());
        assert_ne!(a, b);
        assert_ne!(a.key(), a.0, "the journal keys a digest, not the id");
        let set = login_cookie(&a, false);
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(set.contains(attribute), "{set}");
        }
        assert!(!set.contains("Secure"), "{set}");
        assert!(login_cookie(&a, true).ends_with("; Secure"));
        let value = set.split(';').next().unwrap();
        assert_eq!(SessionId::from_cookie(&headers(&format!("other=1; {value}; x=y"))), Some(a));
        assert!(logout_cookie(true).contains("Max-Age=0") && logout_cookie(true).contains("Secure"));
    }

    #[test]
    fn only_a_well_formed_id_reads_as_one() {
        let hex = "0".repeat(64);
        assert!(SessionId::from_cookie(&headers(&format!("cuttle_session={hex}"))).is_some());
        for bad in [
            format!("cuttle_session={}", "0".repeat(63)),
            format!("cuttle_session={}", "A".repeat(64)),
            format!("cuttle_sessionx={hex}"),
            "cuttle_token=0123456789abcdef0123456789abcdef".to_owned(),
            "cuttle_session=".to_owned(),
        ] {
            assert_eq!(SessionId::from_cookie(&headers(&bad)), None, "{bad}");
        }
    }
}
