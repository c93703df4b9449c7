//! A transfer's file operations (see [`contracts::wire::transfer`]), done by whichever process
//! serves the chunk (the agent, or its helper running as another user): files are read and written
//! only below the transfer roots (`--transfer-root`), never through a symbolic link out of them.
//!
//! A path is resolved by [`resolve`]: relative paths are taken from the first root; `..` is
//! refused; the directory that holds the file is canonicalized (every link in it resolved) and
//! must lie below a canonical root; the file itself is opened with `O_NOFOLLOW`, so a link there
//! is refused rather than followed. An upload goes to a hidden partial file beside its
//! destination ([`contracts::wire::transfer::partial_name`]), is checked against its SHA-256 once
//! whole, and is renamed into place only then; a destination that is a link is refused (checked
//! at each chunk and again just before the rename, which replaces a name and never writes
//! through a link, so a link made in between is replaced, not followed).

use contracts::wire::error::{ErrorKind, ErrorReply};
use contracts::wire::transfer::{partial_name, DownloadChunk, FileChunk, TransferStatus, UploadChunk, WINDOW};
use sha2::Digest;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One upload as the agent keeps it in memory: the chunks that arrived before the bytes in front
/// of them, by offset (written once those are in the partial file, so it always holds a prefix of
/// the content), and once it is complete, the file it became.
#[derive(Debug)]
pub(crate) struct Ahead {
    pub(crate) chunks: BTreeMap<u64, Vec<u8>>,
    pub(super) touched: Instant,
    /// The destination as the completed upload left it: a repeat of the last chunk (its answer
    /// lost) that finds the file unchanged is answered without reading it all again.
    pub(super) in_place: Option<Fingerprint>,
}

impl Default for Ahead {
    fn default() -> Self {
        Ahead { chunks: BTreeMap::new(), touched: Instant::now(), in_place: None }
    }
}

/// Which file, of what length, last modified when: a file with the same fingerprint was not
/// changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
}

impl Fingerprint {
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
        }
    }
}

impl Ahead {
    /// Keeps a chunk that cannot be written yet, unless [`WINDOW`] chunks are kept already (the
    /// dispatcher sends no further ahead than that; it sends this one again).
    fn keep(&mut self, offset: u64, data: Vec<u8>) {
        if self.chunks.len() < WINDOW || self.chunks.contains_key(&offset) {
            self.chunks.insert(offset, data);
        }
    }

    /// The next kept chunk that starts at or before `held` (the bytes in the file).
    fn next_at(&mut self, held: u64) -> Option<(u64, Vec<u8>)> {
        let entry = self.chunks.first_entry().filter(|e| *e.key() <= held)?;
        Some(entry.remove_entry())
    }
}

pub(super) fn refused(message: impl Into<String>) -> ErrorReply {
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
pub(crate) fn resolve(roots: &[PathBuf], path: &str) -> Result<PathBuf, ErrorReply> {
    let Some(first) = roots.first() else {
        return Err(refused("this agent has no --transfer-root: file transfer is refused"));
    };
    contracts::wire::transfer::check_path(path).map_err(|e| refused(e.to_string()))?;
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

/// Refuses `destination` if it is a symbolic link: an upload neither writes through one nor
/// replaces it (renaming onto a link would replace the link, where the operator may have meant
/// its target).
fn refuse_link(destination: &Path) -> Result<(), ErrorReply> {
    match std::fs::symlink_metadata(destination) {
        Ok(metadata) if metadata.file_type().is_symlink() => Err(refused(format!(
            "{} is a symbolic link: an upload neither follows nor replaces one (upload to the file it names, or remove \
             the link first)",
            destination.display()
        ))),
        _ => Ok(()),
    }
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

/// Where an upload goes, and the partial file it is written into first.
pub(super) fn upload_paths(roots: &[PathBuf], chunk: &UploadChunk) -> Result<(PathBuf, PathBuf), ErrorReply> {
    let destination = resolve(roots, &chunk.path)?;
    let name = destination.file_name().expect("resolved paths name a file").to_string_lossy();
    let partial = destination.with_file_name(partial_name(&name, chunk.size, &chunk.sha256));
    Ok((destination, partial))
}

/// Serves an upload chunk in this process, as whoever it runs as (another user's helper).
pub(crate) fn serve_upload(
    roots: &[PathBuf],
    chunk: UploadChunk,
    ahead: &mut Ahead,
) -> Result<TransferStatus, ErrorReply> {
    let (destination, partial) = upload_paths(roots, &chunk)?;
    write_chunk(&destination, &partial, chunk, ahead)
}

/// Serves a download chunk in this process, as whoever it runs as.
pub(crate) fn serve_download(roots: &[PathBuf], request: &DownloadChunk) -> Result<FileChunk, ErrorReply> {
    read_chunk(&resolve(roots, &request.path)?, request)
}

/// Appends `data`, which starts at `offset`, to a file holding `held` bytes (the part not held
/// yet, if any): the new length.
fn append(file: &mut File, partial: &Path, held: u64, offset: u64, data: &[u8]) -> Result<u64, ErrorReply> {
    let end = offset + data.len() as u64;
    if end <= held {
        return Ok(held);
    }
    file.seek(SeekFrom::Start(held)).map_err(|e| failed("write", partial, e))?;
    file.write_all(&data[(held - offset) as usize..]).map_err(|e| failed("write", partial, e))?;
    Ok(end)
}

pub(super) fn write_chunk(
    destination: &Path,
    partial: &Path,
    chunk: UploadChunk,
    ahead: &mut Ahead,
) -> Result<TransferStatus, ErrorReply> {
    let done = TransferStatus { confirmed: chunk.size, complete: true };
    refuse_link(destination)?;
    if !partial.exists() && already_in_place(destination, &chunk, ahead.in_place) {
        ahead.chunks.clear();
        return Ok(done);
    }
    ahead.in_place = None;
    let mut file = open(partial, OpenOptions::new().read(true).write(true).create(true).mode(0o600))
        .map_err(|e| failed("open", partial, e))?;
    let mut held = file.metadata().map_err(|e| failed("read", partial, e))?.len();
    if chunk.offset > held {
        // Ahead of what is here (it overtook an earlier chunk, or one before it was lost): kept
        // until the bytes before it arrive.
        ahead.keep(chunk.offset, chunk.data);
        return Ok(TransferStatus { confirmed: held, complete: false });
    }
    held = append(&mut file, partial, held, chunk.offset, &chunk.data)?;
    while let Some((offset, data)) = ahead.next_at(held) {
        held = append(&mut file, partial, held, offset, &data)?;
    }
    if held < chunk.size {
        return Ok(TransferStatus { confirmed: held, complete: false });
    }
    ahead.chunks.clear();
    let digest = sha256_of(&mut file).map_err(|e| failed("read", partial, e))?;
    if digest != chunk.sha256 || held != chunk.size {
        let _ = std::fs::remove_file(partial);
        return Err(ErrorReply::new(
            ErrorKind::Invalid,
            format!("{} does not match its SHA-256 once whole; the partial file was removed", destination.display()),
        ));
    }
    file.sync_all().map_err(|e| failed("sync", partial, e))?;
    // Made a link since the first chunk: refused still (the whole file stays, partial, for a run
    // once the link is gone).
    refuse_link(destination)?;
    std::fs::rename(partial, destination).map_err(|e| failed("rename into", destination, e))?;
    if let Some(parent) = destination.parent() {
        let _ = File::open(parent).and_then(|dir| dir.sync_all());
    }
    ahead.in_place = file.metadata().ok().map(|metadata| Fingerprint::of(&metadata));
    tracing::info!(path = %destination.display(), bytes = chunk.size, "upload complete");
    Ok(done)
}

/// Whether the destination already holds exactly this content (a repeat of the last chunk):
/// unchanged since this agent completed the upload (`in_place`), or else read whole.
fn already_in_place(destination: &Path, chunk: &UploadChunk, in_place: Option<Fingerprint>) -> bool {
    let Ok(mut file) = open(destination, OpenOptions::new().read(true)) else { return false };
    let Ok(metadata) = file.metadata() else { return false };
    if in_place == Some(Fingerprint::of(&metadata)) {
        return true;
    }
    metadata.is_file()
        && metadata.len() == chunk.size
        && sha256_of(&mut file).is_ok_and(|digest| digest == chunk.sha256)
}

pub(super) fn read_chunk(path: &Path, request: &DownloadChunk) -> Result<FileChunk, ErrorReply> {
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

    #[test]
    fn chunks_arriving_out_of_order_are_written_in_order() {
        let (base, root) = roots();
        let content: Vec<u8> = (0..10u32).flat_map(|i| [i as u8; 3]).collect();
        let sha256 = hex::encode(sha2::Sha256::digest(&content));
        let destination = root.join("f");
        let partial = root.join(partial_name("f", content.len() as u64, &sha256));
        let chunk = |offset: usize, len: usize| UploadChunk {
            path: "f".into(),
            size: content.len() as u64,
            sha256: sha256.clone(),
            offset: offset as u64,
            data: content[offset..offset + len].to_vec(),
            run_as: None,
        };
        let mut ahead = Ahead::default();
        let mut send = |offset, len| write_chunk(&destination, &partial, chunk(offset, len), &mut ahead).unwrap();
        assert_eq!(send(9, 9), TransferStatus { confirmed: 0, complete: false }, "kept ahead");
        assert_eq!(send(18, 12), TransferStatus { confirmed: 0, complete: false });
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), 0, "the partial file holds a prefix only");
        assert_eq!(send(0, 5), TransferStatus { confirmed: 5, complete: false });
        assert_eq!(send(3, 9), TransferStatus { confirmed: 30, complete: true }, "an overlap, then what was kept");
        assert_eq!(std::fs::read(&destination).unwrap(), content);
        assert!(!partial.exists());
        assert_eq!(send(18, 12), TransferStatus { confirmed: 30, complete: true }, "a late repeat");
        assert!(ahead.in_place.is_some(), "answered from what the completed upload left");
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn an_upload_onto_a_link_is_refused_and_leaves_the_link_and_its_target_alone() {
        let (base, root) = roots();
        let target = base.join("outside/target");
        std::fs::write(&target, "theirs").unwrap();
        let link = root.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let content = b"ours".to_vec();
        let sha256 = hex::encode(sha2::Sha256::digest(&content));
        let partial = root.join(partial_name("link", content.len() as u64, &sha256));
        let chunk = UploadChunk { path: "link".into(), size: 4, sha256, offset: 0, data: content, run_as: None };
        let error = write_chunk(&link, &partial, chunk, &mut Ahead::default()).unwrap_err();
        assert_eq!(error.kind, ErrorKind::NotAuthorized, "{error}");
        assert!(error.message.contains("is a symbolic link"), "{error}");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays");
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs");
        assert!(!partial.exists());
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn at_most_a_window_of_chunks_is_kept_ahead() {
        let mut ahead = Ahead::default();
        for i in 0..WINDOW as u64 + 3 {
            ahead.keep(10 + i, vec![1]);
        }
        assert_eq!(ahead.chunks.len(), WINDOW);
        assert_eq!(ahead.next_at(9), None);
        assert_eq!(ahead.next_at(10), Some((10, vec![1])));
    }
}
