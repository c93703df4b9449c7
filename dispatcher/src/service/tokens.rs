//! API tokens: a file of `NAME TOKEN` lines (`#` comments). The name is who the journal says
//! submitted a script; only SHA-256 digests of the tokens are kept in memory. A browser presents
//! its token in a cookie set by the web view's login form ([`login_cookie`]).

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Shortest token accepted: long enough that guessing it is hopeless.
pub const MIN_TOKEN_LEN: usize = 24;

#[derive(Clone, Debug)]
pub struct ApiTokens {
    by_digest: HashMap<[u8; 32], String>,
}

impl ApiTokens {
    pub fn load(path: &Path) -> Result<ApiTokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read API tokens file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ApiTokens, String> {
        let mut by_digest = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let (name, token) = line
                .split_once(char::is_whitespace)
                .map(|(n, t)| (n, t.trim()))
                .ok_or_else(|| format!("line {number}: expected `NAME TOKEN`"))?;
            contracts::topology::validate_name("token name", name).map_err(|e| format!("line {number}: {e}"))?;
            if token.len() < MIN_TOKEN_LEN || token.contains(char::is_whitespace) {
                return Err(format!(
                    "line {number}: the token for {name} must be at least {MIN_TOKEN_LEN} characters without spaces (e.g. `openssl rand -hex 32`)"
                ));
            }
            if by_digest.insert(digest(token), name.to_owned()).is_some() {
                return Err(format!("line {number}: the token for {name} is given twice"));
            }
        }
        if by_digest.is_empty() {
            return Err("no tokens in the file".into());
        }
        Ok(ApiTokens { by_digest })
    }

    /// The name of a presented token, if it is one of ours. Looked up by digest, so the time
    /// taken says nothing about how close a guess came.
    pub fn name_of(&self, token: &str) -> Option<&str> {
        self.by_digest.get(&digest(token)).map(String::as_str)
    }
}

/// The cookie the web view's login sets: the token, hex-encoded (a cookie value cannot hold
/// every character a token may), `HttpOnly` so no script on the page can read it, and
/// `SameSite=Strict` so no other site's page can send it.
pub const COOKIE: &str = "cuttle_token";

/// The `Set-Cookie` value that logs a browser in with `token`.
pub fn login_cookie(token: &str) -> String {
    format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", hex::encode(token))
}

/// The `Set-Cookie` value that logs a browser out.
pub fn logout_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The token in a request's login cookie, if any.
pub fn from_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    let cookies = headers.get_all(axum::http::header::COOKIE);
    let value = cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
    String::from_utf8(hex::decode(value).ok()?).ok()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_named_long_and_unique() {
        let good = "ci 0123456789abcdef0123456789\n# comment\n\nbot   abcdefabcdefabcdefabcdefab\n";
        let tokens = ApiTokens::parse(good).unwrap();
        assert_eq!(tokens.name_of("0123456789abcdef0123456789"), Some("ci"));
        assert_eq!(tokens.name_of("abcdefabcdefabcdefabcdefab"), Some("bot"));
        assert_eq!(tokens.name_of("0123456789abcdef012345678"), None);
        assert!(ApiTokens::parse("ci short").unwrap_err().contains("at least"));
        assert!(ApiTokens::parse("lonely").unwrap_err().contains("NAME TOKEN"));
        assert!(ApiTokens::parse("").unwrap_err().contains("no tokens"));
        let twice = "a 0123456789abcdef0123456789\nb 0123456789abcdef0123456789";
        assert!(ApiTokens::parse(twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn the_login_cookie_carries_any_token_and_nothing_else_reads_as_one() {
        let token = "a;b=c d\"0123456789abcdef0123";
        let set = login_cookie(token);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        let value = set.split(';').next().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::COOKIE, format!("other=1; {value}; x=y").parse().unwrap());
        assert_eq!(from_cookie(&headers).as_deref(), Some(token));
        headers.insert(axum::http::header::COOKIE, "cuttle_token=zz; cuttle_tokenx=00".parse().unwrap());
        assert_eq!(from_cookie(&headers), None);
        assert!(logout_cookie().contains("Max-Age=0"));
    }
}
