//! File transfer as another user (`upload`/`download --run-as`): each chunk is served by a
//! helper process of the agent's own binary (`worker-agent transfer-as`) that takes the user's
//! groups, gid and uid before it touches the file system, so the kernel checks every path and
//! file with that user's permissions, and an upload's file is that user's. The agent keeps what
//! the helper cannot: the one-chunk-at-a-time lock of an upload and the chunks that arrived
//! ahead, handed to the helper with each chunk and back with its answer.

use super::files::{serve_download, serve_upload, Ahead};
use contracts::wire::error::{ErrorKind, ErrorReply};
use contracts::wire::transfer::{DownloadChunk, FileChunk, TransferStatus, UploadChunk};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

/// A chunk kept ahead of the bytes before it.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The chunks kept ahead, as the helper is handed them and hands them back.
fn kept(chunks: BTreeMap<u64, Vec<u8>>) -> Vec<Kept> {
    chunks.into_iter().map(|(offset, data)| Kept { offset, data }).collect()
}

fn chunks(kept: Vec<Kept>) -> BTreeMap<u64, Vec<u8>> {
    kept.into_iter().map(|kept| (kept.offset, kept.data)).collect()
}

/// What the helper is asked, on its standard input.
#[derive(Debug, Serialize, Deserialize)]
enum Asked {
    Upload { roots: Vec<PathBuf>, chunk: UploadChunk, ahead: Vec<Kept> },
    Download { roots: Vec<PathBuf>, request: DownloadChunk },
}

/// What the helper answers, on its standard output.
#[derive(Debug, Serialize, Deserialize)]
enum Answered {
    Upload { status: Result<TransferStatus, ErrorReply>, ahead: Vec<Kept> },
    Download(Result<FileChunk, ErrorReply>),
}

/// Serves an upload chunk as `user`, with the chunks `ahead` kept by the agent.
pub(crate) async fn upload(
    user: &str,
    roots: Vec<PathBuf>,
    chunk: UploadChunk,
    ahead: &mut Ahead,
) -> Result<TransferStatus, ErrorReply> {
    match helper(user, &Asked::Upload { roots, chunk, ahead: kept(std::mem::take(&mut ahead.chunks)) }).await? {
        Answered::Upload { status, ahead: still } => {
            ahead.chunks = chunks(still);
            status
        }
        Answered::Download(_) => Err(internal("the helper answered an upload with a download")),
    }
}

/// Serves a download chunk as `user`.
pub(crate) async fn download(user: &str, roots: Vec<PathBuf>, request: DownloadChunk) -> Result<FileChunk, ErrorReply> {
    match helper(user, &Asked::Download { roots, request }).await? {
        Answered::Download(chunk) => chunk,
        Answered::Upload { .. } => Err(internal("the helper answered a download with an upload")),
    }
}

fn internal(message: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorKind::Internal, format!("file transfer as another user: {message}"))
}

/// Runs the helper as `user` on `asked`.
async fn helper(user: &str, asked: &Asked) -> Result<Answered, ErrorReply> {
    use tokio::io::AsyncWriteExt;
    let input = rmp_serde::to_vec_named(asked).map_err(internal)?;
    // The agent's own binary, even once replaced on disk by an upgrade.
    let mut child = tokio::process::Command::new("/proc/self/exe")
        .args(["transfer-as", "--user", user])
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(internal)?;
    let mut stdin = child.stdin.take().expect("piped");
    let writing = async move {
        let written = stdin.write_all(&input).await;
        drop(stdin);
        written
    };
    let (written, output) = tokio::join!(writing, child.wait_with_output());
    let output = output.map_err(internal)?;
    if !output.status.success() || written.is_err() {
        return Err(internal(String::from_utf8_lossy(&output.stderr).trim()));
    }
    rmp_serde::from_slice(&output.stdout).map_err(internal)
}

/// `worker-agent transfer-as`: run by the agent for a transfer as another user.
#[derive(clap::Args, Debug)]
pub struct TransferAsArgs {
    /// The user to act as.
    #[arg(long)]
    pub user: String,
}

/// Why the helper could not serve.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(transparent)]
    Account(#[from] crate::run_as::RunAsError),
    #[error("cannot take the user's identity: {0}")]
    Identity(#[source] nix::Error),
    #[error("the request: {0}")]
    Io(#[from] std::io::Error),
    #[error("the request: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("the answer: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Takes `user`'s groups, gid and uid, then serves the request on standard input. Runs in a
/// fresh single-threaded process, before any runtime.
pub fn serve(args: TransferAsArgs) -> Result<(), HelperError> {
    use nix::unistd::{initgroups, setgid, setuid, Gid, Uid};
    let account = crate::run_as::account(&args.user)?;
    let name = std::ffi::CString::new(account.name.clone()).map_err(|_| HelperError::Identity(nix::Error::EINVAL))?;
    initgroups(&name, Gid::from_raw(account.gid)).map_err(HelperError::Identity)?;
    setgid(Gid::from_raw(account.gid)).map_err(HelperError::Identity)?;
    setuid(Uid::from_raw(account.uid)).map_err(HelperError::Identity)?;
    if nix::unistd::geteuid().as_raw() != account.uid {
        return Err(HelperError::Identity(nix::Error::EPERM));
    }
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let answered = match rmp_serde::from_slice(&input)? {
        Asked::Upload { roots, chunk, ahead: handed } => {
            let mut ahead = Ahead { chunks: chunks(handed), ..Ahead::default() };
            let status = serve_upload(&roots, chunk, &mut ahead);
            Answered::Upload { status, ahead: kept(ahead.chunks) }
        }
        Asked::Download { roots, request } => Answered::Download(serve_download(&roots, &request)),
    };
    std::io::stdout().write_all(&rmp_serde::to_vec_named(&answered)?)?;
    Ok(())
}
