//! API tokens: a file of `NAME TOKEN` lines (`#` comments). The name is who the journal says
//! submitted a script; only SHA-256 digests of the tokens are kept in memory. A browser logs in
//! with a token once and then holds a session ([`super::sessions`]), never the token.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Shortest token accepted: long enough that guessing it is hopeless.
pub(crate) const MIN_TOKEN_LEN: usize = 24;

#[derive(Clone, Debug)]
pub struct ApiTokens {
    by_digest: HashMap<[u8; 32], String>,
}

/// Why an API tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("cannot read API tokens file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Content { path: PathBuf, source: TokensError },
}

/// What in the text of an API tokens file is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("line {line}: expected `NAME TOKEN`")]
    Shape { line: usize },
    #[error("line {line}: {source}")]
    Name { line: usize, source: contracts::wire::topology::NameError },
    #[error("line {line}: the token for {name} must be at least {MIN_TOKEN_LEN} characters without spaces (e.g. `openssl rand -hex 32`)")]
    Short { line: usize, name: String },
    #[error("line {line}: the token for {name} is given twice")]
    Twice { line: usize, name: String },
    #[error("no tokens in the file")]
    Empty,
}

impl ApiTokens {
    pub fn load(path: &Path) -> Result<ApiTokens, TokensFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokensFileError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|source| TokensFileError::Content { path: path.to_owned(), source })
    }

    pub fn parse(text: &str) -> Result<ApiTokens, TokensError> {
        let mut by_digest = HashMap::new();
        for (index, text_line) in text.lines().enumerate() {
            let text_line = text_line.trim();
            if text_line.is_empty() || text_line.starts_with('#') {
                continue;
            }
            let line = index + 1;
            let (name, token) = text_line
                .split_once(char::is_whitespace)
                .map(|(n, t)| (n, t.trim()))
                .ok_or(TokensError::Shape { line })?;
            contracts::wire::topology::validate_name("token name", name)
                .map_err(|source| TokensError::Name { line, source })?;
            if token.len() < MIN_TOKEN_LEN || token.contains(char::is_whitespace) {
                return Err(TokensError::Short { line, name: name.to_owned() });
            }
            if by_digest.insert(digest(token), name.to_owned()).is_some() {
                return Err(TokensError::Twice { line, name: name.to_owned() });
            }
        }
        if by_digest.is_empty() {
            return Err(TokensError::Empty);
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
        assert!(ApiTokens::parse("ci short").unwrap_err().to_string().contains("at least"));
        assert!(ApiTokens::parse("lonely").unwrap_err().to_string().contains("NAME TOKEN"));
        assert!(ApiTokens::parse("").unwrap_err().to_string().contains("no tokens"));
        let twice = "a 0123456789abcdef0123456789\nb 0123456789abcdef0123456789";
        assert!(ApiTokens::parse(twice).unwrap_err().to_string().contains("twice"));
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
