//! The agent's side of file transfer (see [`contracts::wire::transfer`]): which process serves
//! each chunk, and one chunk of an upload at a time. A transfer acts as the agent itself, in its
//! own process ([`files`]), or as the user it names (`--run-as`, as the agent allows), through a
//! helper that takes that user's identity first ([`as_user`]).

pub mod as_user;
mod files;

use contracts::agent::run_as::{RunAs, RunAsPolicy};
use contracts::wire::error::{ErrorKind, ErrorReply};
use contracts::wire::transfer::{DownloadChunk, FileChunk, TransferStatus, UploadChunk};
use files::{read_chunk, refused, resolve, upload_paths, write_chunk, Ahead};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An upload kept in memory this long without a chunk is dropped with the chunks it kept
/// ahead (its partial file stays, and a new run resumes from it).
const IDLE_UPLOAD: Duration = Duration::from_secs(600);

/// Transfers below some roots, one request per file at a time.
pub(crate) struct Transfers {
    roots: Vec<PathBuf>,
    /// Whom a transfer may act as (`--allow-run-as`): another user's go through
    /// [`as_user`].
    run_as: RunAsPolicy,
    /// Uploads in progress by partial file: a lock, so a repeated chunk served at once with its
    /// original cannot interleave writes with it, and the chunks that arrived ahead.
    uploads: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Ahead>>>>,
}

impl Transfers {
    /// Transfers below `roots` (canonicalized by the caller); none refuses every transfer.
    pub(crate) fn new(roots: Vec<PathBuf>, run_as: RunAsPolicy) -> Self {
        Transfers { roots, run_as, uploads: Mutex::default() }
    }

    /// The user a transfer naming `requested` acts as (`None`: the agent itself), or why not.
    fn user_for(&self, requested: Option<&str>) -> Result<Option<String>, ErrorReply> {
        match self.run_as.resolve(requested) {
            Ok(RunAs::Itself) => Ok(None),
            Ok(RunAs::User(user)) => Ok(Some(user)),
            Err(refusal) => Err(refused(format!("{refusal}; nothing was transferred"))),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.roots.is_empty()
    }

    /// The upload writing `partial`, locked; uploads left idle are forgotten on the way.
    async fn lock(&self, partial: &Path) -> tokio::sync::OwnedMutexGuard<Ahead> {
        let upload = {
            let mut uploads = self.uploads.lock().expect("uploads poisoned");
            uploads.retain(|_, upload| {
                Arc::strong_count(upload) > 1 || upload.try_lock().map_or(true, |a| a.touched.elapsed() < IDLE_UPLOAD)
            });
            uploads.entry(partial.to_path_buf()).or_default().clone()
        };
        upload.lock_owned().await
    }

    /// Forgets an upload that keeps nothing ahead and is not complete (so the map holds only
    /// uploads with chunks ahead, and completed ones until they are idle).
    fn release(&self, partial: &Path, ahead: tokio::sync::OwnedMutexGuard<Ahead>) {
        let idle = ahead.chunks.is_empty() && ahead.in_place.is_none();
        drop(ahead);
        let mut uploads = self.uploads.lock().expect("uploads poisoned");
        if idle && uploads.get(partial).is_some_and(|upload| Arc::strong_count(upload) == 1) {
            uploads.remove(partial);
        }
    }

    /// Writes a chunk (or keeps it until the bytes before it are there) and says how far the
    /// upload is.
    pub(crate) async fn upload(&self, chunk: UploadChunk) -> Result<TransferStatus, ErrorReply> {
        let Some(user) = self.user_for(chunk.run_as.as_deref())? else {
            let (destination, partial) = upload_paths(&self.roots, &chunk)?;
            let mut ahead = self.lock(&partial).await;
            let at = partial.clone();
            let result = tokio::task::spawn_blocking(move || {
                ahead.touched = Instant::now();
                let status = write_chunk(&destination, &at, chunk, &mut ahead);
                (status, ahead)
            })
            .await;
            return match result {
                Ok((status, ahead)) => {
                    self.release(&partial, ahead);
                    status
                }
                Err(e) => Err(ErrorReply::new(ErrorKind::Internal, format!("upload task failed: {e}"))),
            };
        };
        // Resolved by the user's own process: the key only keeps one chunk of an upload at a time.
        let key = PathBuf::from(format!("{user}\0{}\0{}\0{}", chunk.path, chunk.size, chunk.sha256));
        let mut ahead = self.lock(&key).await;
        ahead.touched = Instant::now();
        let status = as_user::upload(&user, self.roots.clone(), chunk, &mut ahead).await;
        self.release(&key, ahead);
        status
    }

    /// Reads a chunk (and the file's SHA-256 when asked).
    pub(crate) async fn download(&self, request: DownloadChunk) -> Result<FileChunk, ErrorReply> {
        if let Some(user) = self.user_for(request.run_as.as_deref())? {
            return as_user::download(&user, self.roots.clone(), request).await;
        }
        let path = resolve(&self.roots, &request.path)?;
        let result = tokio::task::spawn_blocking(move || read_chunk(&path, &request)).await;
        result.unwrap_or_else(|e| Err(ErrorReply::new(ErrorKind::Internal, format!("download task failed: {e}"))))
    }
}
