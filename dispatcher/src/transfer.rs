//! File transfer with an agent (the protocol is in [`contracts::wire::transfer`]): up to [`WINDOW`]
//! chunks of at most 1 MiB in flight ([`Window`]), every request through the retry executor
//! under the machine policy (so each is repeated until the policy's deadline, or not at all with
//! `--no-retries`), resumed from what the other side holds, and checked end to end with SHA-256.
//!
//! An upload asks the agent how far an upload of the same content got (a new run resumes it);
//! a download writes into a partial file named after the content's digest beside the local
//! destination, renamed into place only once whole and verified.

use crate::error::RpcError;
use crate::orchestrator::{EventSink, Orchestrator};
use crate::retry::GaveUp;
use crate::route::Route;
use contracts::submission::outcome::{exit, Outcome};
use contracts::submission::retry::RetryPolicy;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::ErrorKind;
use contracts::wire::messages::SERVICE_RUN_AS;
use contracts::wire::transfer::{
    partial_name, DownloadChunk, FileChunk, TransferStatus, UploadChunk, MAX_CHUNK_BYTES, WINDOW,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sending again from what the agent confirmed without it confirming more this many times in a
/// row ends an upload (the agent keeps failing to hold what it was sent).
const MAX_STALLS: u32 = 8;

/// Which chunks to ask for next: up to `WINDOW` in flight, none starting `WINDOW` chunks or more
/// past the confirmed prefix (so the other side never keeps more than that ahead of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    size: u64,
    chunk: u64,
    /// Bytes from the start that are where they belong.
    confirmed: u64,
    /// Where the next chunk starts.
    next: u64,
    in_flight: usize,
    /// Times in a row [`Window::send_again`] found nothing more confirmed.
    stalls: u32,
    confirmed_at_last_resend: u64,
}

impl Window {
    /// A transfer of `size` bytes in chunks of `chunk`, of which `confirmed` are done.
    pub fn new(size: u64, chunk: u64, confirmed: u64) -> Self {
        Window { size, chunk, confirmed, next: confirmed, in_flight: 0, stalls: 0, confirmed_at_last_resend: confirmed }
    }

    /// The next chunk to send (offset and length), if the window has room for one.
    pub fn next_chunk(&mut self) -> Option<(u64, u64)> {
        let limit = self.confirmed.saturating_add(self.chunk * WINDOW as u64).min(self.size);
        if self.in_flight >= WINDOW || self.next >= limit {
            return None;
        }
        let length = self.chunk.min(self.size - self.next);
        let offset = self.next;
        self.next += length;
        self.in_flight += 1;
        Some((offset, length))
    }

    /// A chunk was answered; the other side has `confirmed` bytes in place.
    pub fn answered(&mut self, confirmed: u64) {
        self.in_flight -= 1;
        self.confirmed = self.confirmed.max(confirmed).min(self.size);
    }

    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Nothing is in flight and no chunk may be sent, yet the other side has not confirmed
    /// everything: it lost chunks it kept ahead (it restarted), or never kept them. Goes on from
    /// what it confirmed; `false` once that happened [`MAX_STALLS`] times without progress.
    pub fn send_again(&mut self) -> bool {
        if self.confirmed > self.confirmed_at_last_resend {
            self.stalls = 0;
        }
        self.stalls += 1;
        self.confirmed_at_last_resend = self.confirmed;
        self.next = self.confirmed;
        self.stalls < MAX_STALLS
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A local file could not be read or written.
    #[error("cannot {what} {}: {source}", path.display())]
    Local { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error("{} names no file", .0.display())]
    NoFileName(std::path::PathBuf),
    /// The task reading a local file failed.
    #[error("{0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("{route} is too old for file transfer (it answers Unsupported): upgrade the agent")]
    TooOld { route: String },
    #[error("{route} is too old to transfer files as another user (it does not list {SERVICE_RUN_AS}) and would act as itself: upgrade it, or transfer without --run-as; nothing was sent")]
    NoRunAs { route: String },
    #[error("{0}")]
    Request(GaveUp),
    #[error("{0}")]
    Verification(String),
}

impl TransferError {
    /// The process exit code: as `submit` for communication, 2 for a local file, 109 for a
    /// transfer that cannot complete. A link to the broker lost for good (under `--no-retries`,
    /// or lost again at the deadline) is 105, contact lost for good, as for a script whose link
    /// is lost: what the requests in flight did is unknown (the last chunks of an upload may
    /// have completed it), not "no answer before the deadline" (110).
    pub fn exit_code(&self, route: &Route) -> u8 {
        match self {
            TransferError::Local { .. } | TransferError::NoFileName(_) | TransferError::Task(_) => exit::USAGE,
            TransferError::TooOld { .. } | TransferError::NoRunAs { .. } => exit::REJECTED,
            TransferError::Request(gave_up) => {
                let contact_lost = matches!(gave_up.error, RpcError::ConnectionLost(_));
                Outcome::from_error(None, route.name(), &gave_up.error, String::new(), contact_lost).process_exit
            }
            TransferError::Verification(_) => exit::AGENT_FAILED,
        }
    }

    /// Whether running the same transfer again may get further: it failed for want of an
    /// answer (a lost link, no reply, no broker), and resumes from what the other side holds.
    pub fn resumable(&self) -> bool {
        matches!(self, TransferError::Request(gave_up) if gave_up.error.is_transient())
    }
}

/// A finished transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transferred {
    /// Who it was with: the agent, or the pool's worker that served it.
    pub route: Route,
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

fn local(what: &'static str, path: &Path, source: std::io::Error) -> TransferError {
    TransferError::Local { what, path: path.to_owned(), source }
}

/// The agent (or pool) a transfer is with, and how to talk to it.
pub struct Peer<'a> {
    pub orchestrator: &'a Orchestrator,
    pub route: &'a Route,
    pub policy: RetryPolicy,
    /// Retry notices.
    pub events: EventSink<'a>,
    pub progress: ProgressSink<'a>,
    /// The user the agent reads or writes the file as (`--run-as`), when not its choice.
    pub run_as: Option<&'a str>,
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

/// The route a transfer goes on: for a pool, the worker that answers first, so that every chunk
/// reaches the same one (which holds what it confirmed, and serves one file consistently).
async fn pinned(peer: &Peer<'_>) -> Result<Route, TransferError> {
    let route =
        peer.orchestrator.one_worker(peer.route, peer.policy, peer.events).await.map_err(TransferError::Request)?;
    // An agent that does not list run-as/v1 would ignore the user and act as itself.
    if peer.run_as.is_some() {
        let kind =
            peer.orchestrator.agent_kind(&route, peer.policy, peer.events).await.map_err(TransferError::Request)?;
        if !kind.runs_as_named_user() {
            return Err(TransferError::NoRunAs { route: route.to_string() });
        }
    }
    Ok(route)
}

/// Uploads `local` to `remote` on `route` (on a pool, one worker), resuming an earlier upload of
/// the same content.
pub async fn upload(peer: &Peer<'_>, local_path: &Path, remote: &str) -> Result<Transferred, TransferError> {
    let route = pinned(peer).await?;
    let peer = &Peer { route: &route, ..*peer };
    let progress = peer.progress;
    let started = Instant::now();
    let path = local_path.to_path_buf();
    let (size, sha256) = tokio::task::spawn_blocking(move || digest_file(&path))
        .await
        .map_err(TransferError::Task)?
        .map_err(|e| local("read", local_path, e))?;
    let file = std::fs::File::open(local_path).map_err(|e| local("read", local_path, e))?;
    let chunk = |offset: u64, data: Vec<u8>| UploadChunk {
        path: remote.to_owned(),
        size,
        sha256: sha256.clone(),
        offset,
        data,
        run_as: peer.run_as.map(str::to_owned),
    };
    let send = |offset: u64, length: u64| {
        let mut data = vec![0u8; length as usize];
        let read = file.read_exact_at(&mut data, offset).map_err(|e| local("read", local_path, e));
        let request = read.map(|()| Request::UploadChunk(chunk(offset, data)));
        async move {
            match request {
                Ok(request) => (offset, call(peer, request, transfer_status).await),
                Err(error) => (offset, Err(error)),
            }
        }
    };
    let first = call(peer, Request::UploadChunk(chunk(0, Vec::new())), transfer_status).await?;
    let resumed_at = if first.complete { 0 } else { first.confirmed };
    let mut window = Window::new(size, MAX_CHUNK_BYTES as u64, first.confirmed);
    let mut complete = first.complete;
    let mut in_flight = FuturesUnordered::new();
    while !complete {
        progress(window.confirmed(), size);
        while let Some((offset, length)) = window.next_chunk() {
            in_flight.push(send(offset, length));
        }
        match in_flight.next().await {
            Some((offset, status)) => {
                let status = status?;
                tracing::debug!(%route, offset, confirmed = status.confirmed, "chunk answered");
                window.answered(status.confirmed);
                complete = status.complete;
            }
            None if window.send_again() => {}
            None => {
                return Err(TransferError::Verification(format!(
                "{route} keeps answering that it holds {} of {size} bytes after the chunks after them were sent again",
                window.confirmed()
            )))
            }
        }
    }
    progress(size, size);
    Ok(Transferred { route: route.clone(), size, sha256, resumed_at, elapsed: started.elapsed() })
}

/// The partial file a download of this content writes beside `local`.
fn partial_for(local: &Path, size: u64, sha256: &str) -> Result<PathBuf, TransferError> {
    let name = local.file_name().ok_or_else(|| TransferError::NoFileName(local.to_owned()))?;
    Ok(local.with_file_name(partial_name(&name.to_string_lossy(), size, sha256)))
}

/// Downloads `remote` from `route` (from a pool, one worker) to `local`, resuming an earlier
/// download of the same content.
pub async fn download(peer: &Peer<'_>, remote: &str, local_path: &Path) -> Result<Transferred, TransferError> {
    let route = pinned(peer).await?;
    let peer = &Peer { route: &route, ..*peer };
    let progress = peer.progress;
    let started = Instant::now();
    let ask = |offset: u64, length: u64, digest: bool| {
        Request::DownloadChunk(DownloadChunk {
            path: remote.to_owned(),
            offset,
            length,
            digest,
            run_as: peer.run_as.map(str::to_owned),
        })
    };
    let first = call(peer, ask(0, 0, true), file_chunk).await?;
    let (size, sha256) = (first.size, first.sha256.ok_or_else(|| unexpected_digest(&route))?);
    let partial = partial_for(local_path, size, &sha256)?;
    let file = std::fs::OpenOptions::new()
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
    let mut window = Window::new(size, MAX_CHUNK_BYTES as u64, offset);
    // Chunks that arrived before one in front of them, written once it is: the partial file
    // always holds a prefix of the content, so its length is where a new run resumes.
    let mut ahead = BTreeMap::new();
    let mut in_flight = FuturesUnordered::new();
    while window.confirmed() < size {
        progress(window.confirmed(), size);
        while let Some((offset, length)) = window.next_chunk() {
            in_flight.push(async move { (offset, length, call(peer, ask(offset, length, false), file_chunk).await) });
        }
        let Some((at, length, chunk)) = in_flight.next().await else { break };
        let chunk = chunk?;
        if chunk.size != size || chunk.data.len() as u64 != length || chunk.offset != at {
            return Err(TransferError::Verification(format!("{remote} changed on {route} during the download")));
        }
        tracing::debug!(%route, offset = at, "chunk answered");
        ahead.insert(at, chunk.data);
        let mut written = window.confirmed();
        while let Some(data) = ahead.remove(&written) {
            file.write_all_at(&data, written).map_err(|e| local("write", &partial, e))?;
            written += data.len() as u64;
        }
        window.answered(written);
    }
    file.sync_all().map_err(|e| local("write", &partial, e))?;
    drop(file);
    let check = partial.clone();
    let (_, got) = tokio::task::spawn_blocking(move || digest_file(&check))
        .await
        .map_err(TransferError::Task)?
        .map_err(|e| local("read", &partial, e))?;
    if got != sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(TransferError::Verification(format!(
            "{remote} arrived with SHA-256 {got}, not {sha256} as the agent read it; the partial file was removed"
        )));
    }
    std::fs::rename(&partial, local_path).map_err(|e| local("rename into", local_path, e))?;
    progress(size, size);
    Ok(Transferred { route: route.clone(), size, sha256, resumed_at, elapsed: started.elapsed() })
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

    #[test]
    fn the_window_keeps_chunks_in_flight_within_reach_of_what_is_confirmed() {
        let mut window = Window::new(100 * 10, 10, 0);
        let sent: Vec<_> = std::iter::from_fn(|| window.next_chunk()).collect();
        assert_eq!(sent.len(), WINDOW);
        assert_eq!(sent[1], (10, 10));
        window.answered(0);
        assert_eq!(window.next_chunk(), None, "nothing starts a window or more past the confirmed prefix");
        window.answered(20);
        assert_eq!(window.next_chunk(), Some((80, 10)));
        assert_eq!(window.next_chunk(), Some((90, 10)));
        assert_eq!(window.next_chunk(), None);
        assert_eq!(window.in_flight(), WINDOW);
    }

    #[test]
    fn the_last_chunk_is_short_and_nothing_goes_past_the_end() {
        let mut window = Window::new(25, 10, 0);
        let sent: Vec<_> = std::iter::from_fn(|| window.next_chunk()).collect();
        assert_eq!(sent, vec![(0, 10), (10, 10), (20, 5)]);
        let mut resumed = Window::new(25, 10, 25);
        assert_eq!(resumed.next_chunk(), None);
    }

    #[test]
    fn a_lost_link_exits_as_contact_lost_and_an_unanswered_request_as_no_answer() {
        let route = Route::agent("a1").unwrap();
        let failed = |error| TransferError::Request(GaveUp { error, elapsed: Duration::ZERO, attempts: 1 });
        let lost = failed(crate::error::lost_link("connection reset"));
        assert_eq!((lost.exit_code(&route), lost.resumable()), (exit::OUTCOME_UNKNOWN, true));
        let unanswered = failed(RpcError::NoReply { target: "agent a1".into(), after: Duration::from_secs(10) });
        assert_eq!((unanswered.exit_code(&route), unanswered.resumable()), (exit::NO_ANSWER, true));
        let unreachable = failed(crate::error::unreachable());
        assert_eq!((unreachable.exit_code(&route), unreachable.resumable()), (exit::BROKER_UNREACHABLE, true));
        let refused = failed(RpcError::Unroutable { target: "agent a1".into() });
        assert_eq!((refused.exit_code(&route), refused.resumable()), (exit::NO_SUCH_AGENT, false));
    }

    #[test]
    fn chunks_the_other_side_lost_are_sent_again_until_it_stalls() {
        let mut window = Window::new(1000, 10, 0);
        while window.next_chunk().is_some() {}
        while window.in_flight() > 0 {
            window.answered(30);
        }
        assert!(window.send_again());
        assert_eq!(window.next_chunk(), Some((30, 10)), "from what it confirmed");
        window.answered(40);
        for _ in 1..MAX_STALLS {
            assert!(window.send_again());
        }
        assert!(!window.send_again(), "no progress {MAX_STALLS} times in a row");
    }
}
