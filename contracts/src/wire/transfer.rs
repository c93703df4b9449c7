//! File transfer between a dispatcher and an agent, in chunks of at most [`MAX_CHUNK_BYTES`].
//!
//! Every request is idempotent, so the dispatcher repeats whatever got no answer:
//! - **Upload**: [`UploadChunk`]s, each with the whole file's size and SHA-256 (which name the
//!   transfer: the agent writes into a temporary file named after them, beside the destination).
//!   The agent writes the bytes at their offset unless it lacks what comes before, and always
//!   answers [`TransferStatus`] with how many bytes it holds: the dispatcher goes on from there,
//!   so a repeated, late or lost chunk costs a resend at most, and a new run of the same upload
//!   resumes where the last one stopped. The chunk that makes the file whole has the agent check
//!   its SHA-256 and rename it into place; a repeat of it finds the file in place and answers
//!   complete.
//! - **Pipelining**: a dispatcher keeps up to [`WINDOW`] chunks in flight, none starting more than
//!   [`WINDOW`] chunks past what the agent confirmed, so they may arrive in any order. The agent
//!   keeps a chunk that arrives before the bytes ahead of it in memory (at most [`WINDOW`] chunks
//!   per upload) and writes it once they are there, so its partial file always holds a prefix of
//!   the content and its length stays what a new run resumes from. A chunk kept in memory is
//!   lost if the agent stops: the dispatcher sends again from what is confirmed once nothing it
//!   sent is left unanswered.
//! - **Download**: [`DownloadChunk`]s by offset; the first (with `digest`) also brings the file's
//!   SHA-256, which the dispatcher checks once it has every byte (the file changed meanwhile: the
//!   check fails). The dispatcher writes into a temporary file named after that digest, so a new
//!   run resumes a download of the same content.

use serde::{Deserialize, Serialize};

/// The agent's service name in its capabilities (listed only when it has transfer roots).
pub const SERVICE_FILE_TRANSFER: &str = "file-transfer/v1";

/// Largest chunk of file data in one message.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Chunks a dispatcher keeps in flight per transfer, and an agent keeps in memory per upload
/// while an earlier one is missing.
pub const WINDOW: usize = 8;

/// Uploads part of a file to `path` on the agent (below one of its transfer roots).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChunk {
    pub path: String,
    /// The whole file's size and hex SHA-256: together they name the transfer.
    pub size: u64,
    pub sha256: String,
    pub offset: u64,
    /// At most [`MAX_CHUNK_BYTES`]; empty asks only how far the upload has got.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The user the agent writes the file as, when not the one it chooses (as a script's
    /// `run_as`); sent only to agents that list `run-as/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
}

/// How far an upload has got on the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatus {
    /// Bytes the agent holds from the start of the file; the next chunk starts here.
    pub confirmed: u64,
    /// The file is whole, verified, and in place.
    pub complete: bool,
}

/// Asks for part of a file on the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadChunk {
    pub path: String,
    pub offset: u64,
    /// At most [`MAX_CHUNK_BYTES`].
    pub length: u64,
    /// Also compute the whole file's SHA-256 (reads the whole file on the agent: ask once).
    #[serde(default)]
    pub digest: bool,
    /// The user the agent reads the file as, when not the one it chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
}

/// Part of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk {
    /// The file's size when the chunk was read.
    pub size: u64,
    /// The whole file's hex SHA-256, when asked for.
    #[serde(default)]
    pub sha256: Option<String>,
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl UploadChunk {
    /// Checks what decoding cannot.
    pub fn validate(&self) -> Result<(), ChunkError> {
        check_path(&self.path)?;
        check_digest(&self.sha256)?;
        if self.data.len() > MAX_CHUNK_BYTES {
            return Err(ChunkError::TooLarge);
        }
        let end = self.offset.checked_add(self.data.len() as u64).ok_or(ChunkError::Offset)?;
        if end > self.size {
            return Err(ChunkError::PastTheEnd { end, size: self.size });
        }
        check_user(self.run_as.as_deref())
    }
}

fn check_user(user: Option<&str>) -> Result<(), ChunkError> {
    Ok(user.map(crate::wire::messages::check_user_name).transpose().map(drop)?)
}

impl DownloadChunk {
    pub fn validate(&self) -> Result<(), ChunkError> {
        check_path(&self.path)?;
        if self.length > MAX_CHUNK_BYTES as u64 {
            return Err(ChunkError::TooLarge);
        }
        check_user(self.run_as.as_deref())
    }
}

/// Why a transfer's chunk request cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("sha256 must be 64 lowercase hex digits")]
    Digest,
    #[error("a chunk holds at most {MAX_CHUNK_BYTES} bytes")]
    TooLarge,
    #[error("offset out of range")]
    Offset,
    #[error("chunk ends at {end}, past the file's size of {size}")]
    PastTheEnd { end: u64, size: u64 },
    #[error(transparent)]
    RunAs(#[from] crate::wire::messages::BadUserName),
}

/// Why a path cannot name a file on the agent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty or holds a NUL")]
    Empty,
    #[error("{0:?} has a `..` component")]
    Parent(String),
}

/// A path on the agent: not empty, no NUL, no `..` component (roots are checked by the agent).
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() || path.contains('\0') {
        return Err(PathError::Empty);
    }
    if std::path::Path::new(path).components().any(|c| c == std::path::Component::ParentDir) {
        return Err(PathError::Parent(path.to_owned()));
    }
    Ok(())
}

fn check_digest(sha256: &str) -> Result<(), ChunkError> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(ChunkError::Digest);
    }
    Ok(())
}

/// The temporary name a transfer writes to, beside its destination `file_name`: hidden, and
/// named after the content, so a new run of the same transfer finds it.
pub fn partial_name(file_name: &str, size: u64, sha256: &str) -> String {
    format!(".{file_name}.{}-{size}.cuttle-part", &sha256[..16.min(sha256.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, data: &[u8], size: u64) -> UploadChunk {
        UploadChunk { path: "/srv/a".into(), size, sha256: "a".repeat(64), offset, data: data.to_vec(), run_as: None }
    }

    #[test]
    fn chunks_are_checked() {
        assert!(chunk(0, b"abc", 3).validate().is_ok());
        assert!(chunk(1, b"abc", 3).validate().is_err(), "past the size");
        assert!(chunk(u64::MAX, b"abc", 3).validate().is_err());
        assert!(UploadChunk { sha256: "A".repeat(64), ..chunk(0, b"", 0) }.validate().is_err());
        assert!(UploadChunk { path: "/srv/../etc/passwd".into(), ..chunk(0, b"", 0) }.validate().is_err());
        let big = DownloadChunk {
            path: "a".into(),
            offset: 0,
            length: MAX_CHUNK_BYTES as u64 + 1,
            digest: false,
            run_as: None,
        };
        assert!(big.validate().is_err());
    }

    #[test]
    fn the_partial_name_depends_on_the_content() {
        let a = partial_name("app.tar", 10, &"ab".repeat(32));
        assert!(a.starts_with(".app.tar.") && a.ends_with(".cuttle-part"));
        assert_ne!(a, partial_name("app.tar", 11, &"ab".repeat(32)));
    }
}
