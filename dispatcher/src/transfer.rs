//! File transfer with an agent (the protocol is in [`contracts::transfer`]): one chunk of at
//! most 1 MiB in flight, every request through the retry executor under the machine policy (so
//! each is repeated until the policy's deadline, or not at all with `--no-retries`), resumed
//! from what the other side holds, and checked end to end with SHA-256.
//!
//! An upload asks the agent how far an upload of the same content got (a new run resumes it);
//! a download writes into a partial file named after the content's digest beside the local
//! destination, renamed into place only once whole and verified.

use crate::orchestrator::{EventSink, Orchestrator};
use crate::outcome::{exit, Outcome};
use crate::retry::{GaveUp, RetryPolicy};
use crate::route::Route;
use contracts::transfer::{partial_name, DownloadChunk, FileChunk, TransferStatus, UploadChunk, MAX_CHUNK_BYTES};
use contracts::{ErrorKind, Reply, Request};
use sha2::Digest;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A chunk answered without progress this many times in a row ends the transfer (a pool whose
/// workers do not share the transfer root answers from another worker's disk each time).
const MAX_STALLS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Local(String),
    #[error("{route} is too old for file transfer (it answers Unsupported): upgrade the agent")]
    TooOld { route: String },
    #[error("{0}")]
    Request(GaveUp),
    #[error("{0}")]
    Verification(String),
}

impl TransferError {
    /// The process exit code: as `submit` for communication, 2 for a local file, 109 for a
    /// transfer that cannot complete.
    pub fn exit_code(&self, route: &Route) -> u8 {
        match self {
            TransferError::Local(_) => exit::USAGE,
            TransferError::TooOld { .. } => exit::REJECTED,
            TransferError::Request(gave_up) => {
                Outcome::from_error(None, route.name(), &gave_up.error, String::new(), false).process_exit
            }
            TransferError::Verification(_) => exit::AGENT_FAILED,
        }
    }
}

/// A finished transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transferred {
    pub size: u64,
    pub sha256: String,
    /// Where it went on from (0: from the start).
    pub resumed_at: u64,
    pub elapsed: Duration,
}

/// Bytes done and the total, after each chunk.
pub type ProgressSink<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// The file's size and hex SHA-256.
pub fn digest_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; MAX_CHUNK_BYTES];
    let mut size = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
    }
}

fn local(what: &str, path: &Path, error: std::io::Error) -> TransferError {
    TransferError::Local(format!("cannot {what} {}: {error}", path.display()))
}

/// The agent (or pool) a transfer is with, and how to talk to it.
pub struct Peer<'a> {
    pub orchestrator: &'a Orchestrator,
    pub route: &'a Route,
    pub policy: RetryPolicy,
    /// Retry notices.
    pub events: EventSink<'a>,
    pub progress: ProgressSink<'a>,
}

/// One request through the retry executor; `expect` takes the answer it is for out of the reply.
async fn call<T>(peer: &Peer<'_>, request: Request, expect: fn(Reply) -> Result<T, Reply>) -> Result<T, TransferError> {
    let (route, events) = (peer.route, peer.events);
    match peer.orchestrator.request(route, &request, peer.policy, Duration::ZERO, None, events).await {
        Ok(reply) => {
            expect(reply).map_err(|other| TransferError::Verification(format!("unexpected answer {}", other.kind())))
        }
        Err(gave_up) if gave_up.error.agent_error() == Some(ErrorKind::Unsupported) => {
            Err(TransferError::TooOld { route: route.to_string() })
        }
        Err(gave_up) => Err(TransferError::Request(gave_up)),
    }
}

fn transfer_status(reply: Reply) -> Result<TransferStatus, Reply> {
    match reply {
        Reply::TransferStatus(status) => Ok(status),
        other => Err(other),
    }
}

fn file_chunk(reply: Reply) -> Result<FileChunk, Reply> {
    match reply {
        Reply::FileChunk(chunk) => Ok(chunk),
        other => Err(other),
    }
}

/// Uploads `local` to `remote` on `route`, resuming an earlier upload of the same content.
pub async fn upload(peer: &Peer<'_>, local_path: &Path, remote: &str) -> Result<Transferred, TransferError> {
    let (route, progress) = (peer.route, peer.progress);
    let started = Instant::now();
    let path = local_path.to_path_buf();
    let (size, sha256) = tokio::task::spawn_blocking(move || digest_file(&path))
        .await
        .map_err(|e| TransferError::Local(e.to_string()))?
        .map_err(|e| local("read", local_path, e))?;
    let mut file = std::fs::File::open(local_path).map_err(|e| local("read", local_path, e))?;
    let chunk = |offset: u64, data: Vec<u8>| UploadChunk {
        path: remote.to_owned(),
        size,
        sha256: sha256.clone(),
        offset,
        data,
    };
    let mut status = call(peer, Request::UploadChunk(chunk(0, Vec::new())), transfer_status).await?;
    let resumed_at = if status.complete { 0 } else { status.confirmed };
    let mut stalls = 0;
    while !status.complete {
        progress(status.confirmed, size);
        let offset = status.confirmed;
        let mut data = vec![0u8; (size - offset).min(MAX_CHUNK_BYTES as u64) as usize];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut data))
            .map_err(|e| local("read", local_path, e))?;
        let next = call(peer, Request::UploadChunk(chunk(offset, data)), transfer_status).await?;
        stalls = if next.complete || next.confirmed > offset { 0 } else { stalls + 1 };
        if stalls >= MAX_STALLS {
            return Err(TransferError::Verification(format!(
                "{route} keeps answering that it holds {} of {size} bytes: a pool's workers must share the transfer root",
                next.confirmed
            )));
        }
        status = next;
    }
    progress(size, size);
    Ok(Transferred { size, sha256, resumed_at, elapsed: started.elapsed() })
}

/// The partial file a download of this content writes beside `local`.
fn partial_for(local: &Path, size: u64, sha256: &str) -> Result<PathBuf, TransferError> {
    let name = local.file_name().ok_or_else(|| TransferError::Local(format!("{} names no file", local.display())))?;
    Ok(local.with_file_name(partial_name(&name.to_string_lossy(), size, sha256)))
}

/// Downloads `remote` from `route` to `local`, resuming an earlier download of the same content.
pub async fn download(peer: &Peer<'_>, remote: &str, local_path: &Path) -> Result<Transferred, TransferError> {
    let (route, progress) = (peer.route, peer.progress);
    let started = Instant::now();
    let ask = |offset: u64, length: u64, digest: bool| {
        Request::DownloadChunk(DownloadChunk { path: remote.to_owned(), offset, length, digest })
    };
    let first = call(peer, ask(0, 0, true), file_chunk).await?;
    let (size, sha256) = (first.size, first.sha256.ok_or_else(|| unexpected_digest(route))?);
    let partial = partial_for(local_path, size, &sha256)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .map_err(|e| local("write", &partial, e))?;
    let mut offset = file.metadata().map_err(|e| local("read", &partial, e))?.len();
    if offset > size {
        file.set_len(0).map_err(|e| local("write", &partial, e))?;
        offset = 0;
    }
    let resumed_at = offset;
    while offset < size {
        progress(offset, size);
        let chunk = call(peer, ask(offset, MAX_CHUNK_BYTES as u64, false), file_chunk).await?;
        if chunk.size != size || chunk.data.is_empty() || chunk.offset != offset {
            return Err(TransferError::Verification(format!("{remote} changed on {route} during the download")));
        }
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(&chunk.data))
            .map_err(|e| local("write", &partial, e))?;
        offset += chunk.data.len() as u64;
    }
    file.sync_all().map_err(|e| local("write", &partial, e))?;
    drop(file);
    let check = partial.clone();
    let (_, got) = tokio::task::spawn_blocking(move || digest_file(&check))
        .await
        .map_err(|e| TransferError::Local(e.to_string()))?
        .map_err(|e| local("read", &partial, e))?;
    if got != sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(TransferError::Verification(format!(
            "{remote} arrived with SHA-256 {got}, not {sha256} as the agent read it; the partial file was removed"
        )));
    }
    std::fs::rename(&partial, local_path).map_err(|e| local("rename into", local_path, e))?;
    progress(size, size);
    Ok(Transferred { size, sha256, resumed_at, elapsed: started.elapsed() })
}

fn unexpected_digest(route: &Route) -> TransferError {
    TransferError::Verification(format!("{route} sent no SHA-256 for the file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_download_is_named_after_its_content() {
        let a = partial_for(Path::new("/tmp/out/app.tar"), 5, &"ab".repeat(32)).unwrap();
        assert_eq!(a.parent(), Some(Path::new("/tmp/out")));
        assert_ne!(a, partial_for(Path::new("/tmp/out/app.tar"), 5, &"cd".repeat(32)).unwrap());
        assert!(partial_for(Path::new("/"), 5, "x").is_err());
    }

    #[test]
    fn files_are_digested_whole() {
        let path = std::env::temp_dir().join(format!("cuttle-digest-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, b"abc").unwrap();
        let (size, sha) = digest_file(&path).unwrap();
        assert_eq!(size, 3);
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        std::fs::remove_file(path).unwrap();
    }
}
