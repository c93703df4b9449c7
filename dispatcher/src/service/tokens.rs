//! API tokens: a file of `NAME TOKEN` lines (`#` comments). The name is who the journal says
//! submitted a script; only SHA-256 digests of the tokens are kept in memory. A browser logs in
//! with a token once and then holds a session ([`super::sessions`]), never the token.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Shortest token accepted: long enough that guessing it is hopeless.
pub(crate) const MIN_TOKEN_LEN: usize = 24;

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
            contracts::wire::topology::validate_name("token name", name).map_err(|e| format!("line {number}: {e}"))?;
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

    /// The digest (hex SHA-256) of a presented token if it is one of ours: what a browser's
    /// session keeps, so that withdrawing the token ends its sessions.
    pub fn known_digest(&self, token: &str) -> Option<String> {
        let digest = digest(token);
        self.by_digest.contains_key(&digest).then(|| hex::encode(digest))
    }

    /// The name of the token whose digest a session keeps, if it is still one of ours.
    pub fn name_of_digest(&self, hex_digest: &str) -> Option<&str> {
        let digest: [u8; 32] = hex::decode(hex_digest).ok()?.try_into().ok()?;
        self.by_digest.get(&digest).map(String::as_str)
    }
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
    fn a_tokens_digest_names_it_while_it_is_one_of_ours() {
        let tokens = ApiTokens::parse("ci 0123456789abcdef0123456789").unwrap();
        let digest = tokens.known_digest("0123456789abcdef0123456789").unwrap();
        assert!(!digest.contains("0123456789abcdef0123456789"));
        assert_eq!(tokens.name_of_digest(&digest), Some("ci"));
        assert_eq!(tokens.known_digest("0123456789abcdef012345678X"), None);
        let rotated = ApiTokens::parse("ci abcdefabcdefabcdefabcdefab").unwrap();
        assert_eq!(rotated.name_of_digest(&digest), None, "a withdrawn token's sessions name nobody");
        assert_eq!(tokens.name_of_digest("not hex"), None);
        assert_eq!(tokens.name_of_digest("abcd"), None);
    }
}
