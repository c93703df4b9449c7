//! The agent's side of file transfer (see [`contracts::transfer`]): files are read and written
//! only below the transfer roots (`--transfer-root`), never through a symbolic link out of them.
//!
//! A path is resolved by [`resolve`]: relative paths are taken from the first root; `..` is
//! refused; the directory that holds the file is canonicalized (every link in it resolved) and
//! must lie below a canonical root; the file itself is opened with `O_NOFOLLOW`, so a link there
//! is refused rather than followed. An upload goes to a hidden partial file beside its
//! destination ([`contracts::transfer::partial_name`]), is checked against its SHA-256 once
//! whole, and is renamed into place only then.

use contracts::transfer::{partial_name, DownloadChunk, FileChunk, TransferStatus, UploadChunk};
use contracts::{ErrorKind, ErrorReply};
use sha2::Digest;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Transfers below some roots, one request per file at a time.
pub struct Transfers {
    roots: Vec<PathBuf>,
    /// A lock per partial file, so a repeated chunk served at once with its original cannot
    /// interleave writes with it.
    busy: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

fn refused(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorKind::NotAuthorized, message)
}

fn failed(what: &str, path: &Path, error: std::io::Error) -> ErrorReply {
    if error.raw_os_error() == Some(nix::libc::ELOOP) {
        return refused(format!("{} is a symbolic link: not followed", path.display()));
    }
    let kind = match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => ErrorKind::Invalid,
        _ => ErrorKind::Internal,
    };
    ErrorReply::new(kind, format!("cannot {what} {}: {error}", path.display()))
}

/// Where `path` is, below one of `roots` (canonical): the canonical directory that holds it
/// joined with its file name. The file itself is not resolved (it may not exist yet, and is
/// opened without following a link).
pub fn resolve(roots: &[PathBuf], path: &str) -> Result<PathBuf, ErrorReply> {
    let Some(first) = roots.first() else {
        return Err(refused("this agent has no --transfer-root: file transfer is refused"));
    };
    contracts::transfer::check_path(path).map_err(refused)?;
    let given = Path::new(path);
    let full = if given.is_absolute() { given.to_path_buf() } else { first.join(given) };
    let name = full.file_name().ok_or_else(|| refused(format!("{path:?} names no file")))?;
    let parent = full.parent().unwrap_or(Path::new("/"));
    let parent = parent
        .canonicalize()
        .map_err(|e| ErrorReply::new(ErrorKind::Invalid, format!("directory of {path:?}: {e}")))?;
    if !roots.iter().any(|root| parent.starts_with(root)) {
        return Err(refused(format!("{path:?} is outside the transfer roots")));
    }
    Ok(parent.join(name))
}

/// Opens without following a link at the last component (the directories were canonicalized).
fn open(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    options.custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

fn sha256_of(file: &mut File) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1024 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

impl Transfers {
    /// Transfers below `roots` (canonicalized by the caller); none refuses every transfer.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Transfers { roots, busy: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        !self.roots.is_empty()
    }

    async fn lock(&self, path: &Path) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.busy.lock().expect("busy poisoned").entry(path.to_path_buf()).or_default().clone();
        lock.lock_owned().await
    }

    /// Writes a chunk (unless the bytes before it are missing) and says how far the upload is.
    pub async fn upload(&self, chunk: UploadChunk) -> Result<TransferStatus, ErrorReply> {
        let destination = resolve(&self.roots, &chunk.path)?;
        let name = destination.file_name().expect("resolved paths name a file").to_string_lossy();
        let partial = destination.with_file_name(partial_name(&name, chunk.size, &chunk.sha256));
        let _busy = self.lock(&partial).await;
        let result = tokio::task::spawn_blocking(move || write_chunk(&destination, &partial, &chunk)).await;
        result.unwrap_or_else(|e| Err(ErrorReply::new(ErrorKind::Internal, format!("upload task failed: {e}"))))
    }

    /// Reads a chunk (and the file's SHA-256 when asked).
    pub async fn download(&self, request: DownloadChunk) -> Result<FileChunk, ErrorReply> {
        let path = resolve(&self.roots, &request.path)?;
        let result = tokio::task::spawn_blocking(move || read_chunk(&path, &request)).await;
        result.unwrap_or_else(|e| Err(ErrorReply::new(ErrorKind::Internal, format!("download task failed: {e}"))))
    }
}

fn write_chunk(destination: &Path, partial: &Path, chunk: &UploadChunk) -> Result<TransferStatus, ErrorReply> {
    let done = TransferStatus { confirmed: chunk.size, complete: true };
    if !partial.exists() && already_in_place(destination, chunk) {
        return Ok(done);
    }
    let mut file = open(partial, OpenOptions::new().read(true).write(true).create(true).mode(0o600))
        .map_err(|e| failed("open", partial, e))?;
    let held = file.metadata().map_err(|e| failed("read", partial, e))?.len();
    if chunk.offset > held {
        // A chunk ahead of what is here (a late copy, or a lost one before it): go on from here.
        return Ok(TransferStatus { confirmed: held, complete: false });
    }
    if !chunk.data.is_empty() {
        file.seek(SeekFrom::Start(chunk.offset)).map_err(|e| failed("write", partial, e))?;
        file.write_all(&chunk.data).map_err(|e| failed("write", partial, e))?;
    }
    let confirmed = held.max(chunk.offset + chunk.data.len() as u64);
    if confirmed < chunk.size {
        return Ok(TransferStatus { confirmed, complete: false });
    }
    let digest = sha256_of(&mut file).map_err(|e| failed("read", partial, e))?;
    if digest != chunk.sha256 || confirmed != chunk.size {
        let _ = std::fs::remove_file(partial);
        return Err(ErrorReply::new(
            ErrorKind::Invalid,
            format!("{} does not match its SHA-256 once whole; the partial file was removed", destination.display()),
        ));
    }
    file.sync_all().map_err(|e| failed("sync", partial, e))?;
    std::fs::rename(partial, destination).map_err(|e| failed("rename into", destination, e))?;
    if let Some(parent) = destination.parent() {
        let _ = File::open(parent).and_then(|dir| dir.sync_all());
    }
    tracing::info!(path = %destination.display(), bytes = chunk.size, "upload complete");
    Ok(done)
}

/// Whether the destination already holds exactly this content (a repeat of the last chunk).
fn already_in_place(destination: &Path, chunk: &UploadChunk) -> bool {
    let Ok(mut file) = open(destination, OpenOptions::new().read(true)) else { return false };
    file.metadata().is_ok_and(|m| m.is_file() && m.len() == chunk.size)
        && sha256_of(&mut file).is_ok_and(|digest| digest == chunk.sha256)
}

fn read_chunk(path: &Path, request: &DownloadChunk) -> Result<FileChunk, ErrorReply> {
    let mut file = open(path, OpenOptions::new().read(true)).map_err(|e| failed("open", path, e))?;
    let metadata = file.metadata().map_err(|e| failed("read", path, e))?;
    if !metadata.is_file() {
        return Err(ErrorReply::new(ErrorKind::Invalid, format!("{} is not a file", path.display())));
    }
    let sha256 = match request.digest {
        true => Some(sha256_of(&mut file).map_err(|e| failed("read", path, e))?),
        false => None,
    };
    let length = request.length.min(metadata.len().saturating_sub(request.offset));
    let mut data = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(request.offset)).map_err(|e| failed("read", path, e))?;
    file.read_exact(&mut data).map_err(|e| failed("read", path, e))?;
    Ok(FileChunk { size: metadata.len(), sha256, offset: request.offset, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("cuttle-transfer-{}", uuid::Uuid::new_v4()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        (base.canonicalize().unwrap(), root.canonicalize().unwrap())
    }

    #[test]
    fn paths_resolve_below_the_roots_only() {
        let (base, root) = roots();
        let roots = vec![root.clone()];
        assert_eq!(resolve(&roots, "sub/a.txt").unwrap(), root.join("sub/a.txt"));
        assert_eq!(resolve(&roots, root.join("b").to_str().unwrap()).unwrap(), root.join("b"));
        let outside = base.join("outside/c");
        assert_eq!(resolve(&roots, outside.to_str().unwrap()).unwrap_err().kind, ErrorKind::NotAuthorized);
        assert_eq!(resolve(&roots, "sub/../../outside/c").unwrap_err().kind, ErrorKind::NotAuthorized);
        std::os::unix::fs::symlink(base.join("outside"), root.join("escape")).unwrap();
        assert_eq!(resolve(&roots, "escape/c").unwrap_err().kind, ErrorKind::NotAuthorized, "a linked directory");
        std::os::unix::fs::symlink(base.join("outside/c"), root.join("link")).unwrap();
        std::fs::write(base.join("outside/c"), "x").unwrap();
        let link = resolve(&roots, "link").unwrap();
        assert!(open(&link, OpenOptions::new().read(true)).is_err(), "a linked file is not followed");
        assert_eq!(resolve(&[], "a").unwrap_err().kind, ErrorKind::NotAuthorized);
        std::fs::remove_dir_all(base).unwrap();
    }
}
