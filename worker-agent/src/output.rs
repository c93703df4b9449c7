//! A script's output: lines read from its pipes (long lines split at a character boundary,
//! never dropped), numbered in arrival order, and written to the store in batches by one writer.
//! Secrets are masked ([`crate::mask`]) in the byte stream of each pipe, before it is cut into
//! lines, and in every line sent, so no line holding one reaches the store.
//!
//! Memory is bounded with backpressure: the readers hand lines to the writer through a bounded
//! channel, so while the store is slow or unreachable (the writer keeps its batch and retries)
//! the readers stop reading, the pipes fill, and the script waits on its writes; no line is lost.
//! A per-script cap (`--max-output`) bounds what the store holds: each line counts its text and
//! [`STORED_LINE_OVERHEAD`] (see [`stored_cost`]), and output past the cap is read and discarded
//! (so the script is not held up), and the log says so, first when it starts and at the end with
//! what was discarded, in agent lines beginning with [`contracts::wire::status::OUTPUT_TRUNCATED`].

use crate::mask::Masker;
use crate::store::AgentStore;
use contracts::backoff::Backoff;
use contracts::receipt::OutputDigest;
use contracts::store::TicketKeys;
use contracts::time::unix_millis;
use contracts::wire::status::{LogLine, LogStream, OUTPUT_TRUNCATED};
use contracts::wire::topology::MAX_LOG_LINE_BYTES;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Lines or bytes written to the store in one batch at most.
const BATCH_LINES: usize = 1_000;
const BATCH_BYTES: usize = 1024 * 1024;
/// Lines waiting for the writer at most (each at most [`MAX_LOG_LINE_BYTES`]): beyond this the
/// readers wait, and so does the script.
const QUEUED_LINES: usize = 256;
/// How long a batch waits for more lines before it is stored ([`spawn_writer`]).
const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// What the store holds for one line beside its text, counted against `--max-output` with it:
/// its sequence number, stream and time (msgpack, 38 to 48 bytes with the text's length) and its
/// list entry. Measured in Redis 7.0 (`MEMORY USAGE` of a ticket's log): 42 bytes a line for
/// empty lines, 47 for 100-byte ones. Without it, a script printing empty lines stored them
/// without bound (each counted 0 bytes): 45 bytes of Redis for each byte of output.
pub const STORED_LINE_OVERHEAD: u64 = 64;

/// What one line of `text_len` bytes counts against `--max-output`: its text and
/// [`STORED_LINE_OVERHEAD`], so the cap bounds what the store holds however the output is cut
/// into lines.
pub fn stored_cost(text_len: usize) -> u64 {
    text_len as u64 + STORED_LINE_OVERHEAD
}

/// What a run's writer leaves when its output ends: the next sequence number, the lines not
/// stored yet (its last batch), and the digest of every line it numbered, for the receipt.
pub struct Written {
    pub next_seq: u64,
    pub last_lines: Vec<LogLine>,
    pub digest: OutputDigest,
}

impl Default for Written {
    fn default() -> Self {
        Written { next_seq: 1, last_lines: Vec::new(), digest: OutputDigest::default() }
    }
}

/// How far a run has got, for status requests waiting on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The sequence number the next stored line will get.
    pub next_log_sequence: u64,
    pub complete: bool,
}

/// Where a run's log lines go; cheap to clone, one per pipe. Every line is masked on its way.
#[derive(Clone)]
pub struct LogSender {
    lines: mpsc::Sender<(LogStream, String)>,
    masker: Masker,
    budget: Arc<OutputBudget>,
}

/// What the store may still take of the script's output ([`stored_cost`] of each line), and the
/// lines (and their bytes) discarded past the cap.
struct OutputBudget {
    cap: u64,
    left: AtomicU64,
    discarded_lines: AtomicU64,
    discarded_bytes: AtomicU64,
}

impl LogSender {
    /// One of the agent's own notes in the script's log (not counted against the cap).
    pub async fn note(&self, text: impl Into<String>) {
        self.send(LogStream::Agent, text.into()).await;
    }

    /// One line of the script's output: stored while within the cap, discarded (and counted)
    /// past it. Waits while the writer is behind.
    pub async fn output(&self, stream: LogStream, text: String) {
        let cost = stored_cost(text.len());
        let kept = self.budget.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(cost));
        if kept.is_ok() {
            self.send(stream, text).await;
            return;
        }
        self.budget.left.store(0, Ordering::SeqCst);
        self.budget.discarded_bytes.fetch_add(text.len() as u64, Ordering::SeqCst);
        if self.budget.discarded_lines.fetch_add(1, Ordering::SeqCst) == 0 {
            self.note(format!(
                "{OUTPUT_TRUNCATED}: the script's output reached --max-output ({}); what it writes from here on is discarded",
                bytes_text(self.budget.cap)
            ))
            .await;
        }
    }

    /// At the end of the run: a note of what was discarded past the cap, if anything was.
    pub async fn finish(&self) {
        let lines = self.budget.discarded_lines.load(Ordering::SeqCst);
        if lines > 0 {
            let bytes = self.budget.discarded_bytes.load(Ordering::SeqCst);
            self.note(format!(
                "{OUTPUT_TRUNCATED}: {lines} lines of output past --max-output ({}) were discarded ({bytes} bytes, not counting newlines)",
                bytes_text(self.budget.cap)
            ))
            .await;
        }
    }

    async fn send(&self, stream: LogStream, text: String) {
        let text = if self.masker.is_empty() { text } else { self.masker.mask(&text) };
        // The writer outlives every sender; a failed send means the run is being torn down.
        let _ = self.lines.send((stream, text)).await;
    }
}

fn bytes_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Starts the writer of one ticket's log, masking what `masker` names and storing the script's
/// output while its lines' [`stored_cost`] stays within `max_output`. It ends once every
/// [`LogSender`] is dropped, returning what it [`Written`]: the next sequence number, the lines not stored yet
/// (its last batch, for the run's end to store with the record: [`TicketStore::end_run`]).
///
/// A batch is stored when it is full, or [`FLUSH_DELAY`] after its first line: a script that
/// ends within that has all its output stored with its end, in one request to the store, and a
/// longer one streams its lines that much later.
///
/// [`TicketStore::end_run`]: contracts::store::TicketStore::end_run
pub fn spawn_writer(
    masker: Masker,
    store: AgentStore,
    keys: TicketKeys,
    ttl: Duration,
    max_output: u64,
    progress: watch::Sender<Progress>,
) -> (LogSender, tokio::task::JoinHandle<Written>) {
    let (tx, mut rx) = mpsc::channel::<(LogStream, String)>(QUEUED_LINES);
    let task = tokio::spawn(async move {
        let mut next_seq = 1u64;
        let mut batch: Vec<LogLine> = Vec::new();
        let mut digest = OutputDigest::default();
        while let Some(first) = rx.recv().await {
            let flush_at = tokio::time::Instant::now() + FLUSH_DELAY;
            let mut bytes = 0;
            let mut item = Some(first);
            loop {
                while let Some((stream, text)) = item.take() {
                    bytes += text.len();
                    let line = LogLine { seq: next_seq, stream, text, at: unix_millis(SystemTime::now()) };
                    digest.add(&line);
                    batch.push(line);
                    next_seq += 1;
                    if batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
                        item = rx.try_recv().ok();
                    }
                }
                if batch.len() >= BATCH_LINES || bytes >= BATCH_BYTES {
                    break;
                }
                match tokio::time::timeout_at(flush_at, rx.recv()).await {
                    Ok(Some(next)) => item = Some(next),
                    // Every sender is gone: the run ended, and its end stores the rest.
                    Ok(None) => return Written { next_seq, last_lines: batch, digest },
                    Err(_) => break,
                }
            }
            store_batch(&store, &keys, &batch, ttl).await;
            batch.clear();
            progress.send_modify(|p| p.next_log_sequence = next_seq);
        }
        Written { next_seq, last_lines: batch, digest }
    });
    (LogSender { lines: tx, masker, budget: OutputBudget::new(max_output) }, task)
}

impl OutputBudget {
    fn new(cap: u64) -> Arc<Self> {
        Arc::new(OutputBudget {
            cap,
            left: AtomicU64::new(cap),
            discarded_lines: AtomicU64::new(0),
            discarded_bytes: AtomicU64::new(0),
        })
    }
}

async fn store_batch(store: &AgentStore, keys: &TicketKeys, batch: &[LogLine], ttl: Duration) {
    // 100 ms after a blip, at most every 2 s while the store stays away.
    let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match store.append_logs(keys, batch, ttl).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(ticket = %keys.ticket, %error, lines = batch.len(), "could not store output; keeping it and retrying");
                tokio::time::sleep(backoff.next_pause()).await;
            }
        }
    }
}

/// Reads a pipe to its end, or until `stop` (then what was read is still sent), masking secrets
/// in its bytes, and sends each line (without its newline) to `sink`.
pub async fn read_lines(mut pipe: impl AsyncRead + Unpin, stream: LogStream, sink: LogSender, stop: CancellationToken) {
    let mut masking = sink.masker.stream();
    let mut lines = LineCutter { pending: Vec::with_capacity(8 * 1024), scanned: 0 };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = pipe.read(&mut chunk) => read,
            _ = stop.cancelled() => break,
        };
        let read = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in lines.push(&masking.push(&chunk[..read])) {
            sink.output(stream, line).await;
        }
    }
    for line in lines.push(&masking.finish()) {
        sink.output(stream, line).await;
    }
    if !lines.pending.is_empty() {
        sink.output(stream, String::from_utf8_lossy(&lines.pending).into_owned()).await;
    }
}

/// Cuts a byte stream into lines: at newlines, and at [`MAX_LOG_LINE_BYTES`].
struct LineCutter {
    pending: Vec<u8>,
    /// How much of `pending` holds no newline.
    scanned: usize,
}

impl LineCutter {
    /// Takes more bytes; gives the lines they complete.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let pending = &mut self.pending;
        let mut lines = Vec::new();
        loop {
            if let Some(pos) = pending[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + pos;
                let line_end = if end > 0 && pending[end - 1] == b'\r' { end - 1 } else { end };
                lines.push(String::from_utf8_lossy(&pending[..line_end]).into_owned());
                pending.drain(..=end);
                self.scanned = 0;
            } else if pending.len() >= MAX_LOG_LINE_BYTES {
                let cut = char_boundary(&pending[..MAX_LOG_LINE_BYTES]);
                lines.push(String::from_utf8_lossy(&pending[..cut]).into_owned());
                pending.drain(..cut);
                self.scanned = 0;
            } else {
                self.scanned = pending.len();
                return lines;
            }
        }
    }
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 character.
fn char_boundary(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        // An incomplete character at the end: cut before it. Invalid bytes elsewhere are
        // replaced by from_utf8_lossy, so cut at the full length.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: Vec<u8>, cap: u64) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(100_000);
        let sink = LogSender { lines: tx, masker: Masker::default(), budget: OutputBudget::new(cap) };
        read_lines(&input[..], LogStream::Stdout, sink.clone(), CancellationToken::new()).await;
        sink.finish().await;
        let mut out = Vec::new();
        while let Ok((_, line)) = rx.try_recv() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn splits_on_newlines_and_keeps_a_last_partial_line() {
        assert_eq!(lines_of(b"a\r\nb\n\nc".to_vec(), u64::MAX).await, vec!["a", "b", "", "c"]);
    }

    #[tokio::test]
    async fn long_lines_are_split_without_losing_bytes_or_breaking_characters() {
        let mut input = "é".repeat(MAX_LOG_LINE_BYTES).into_bytes();
        input.push(b'\n');
        let lines = lines_of(input, u64::MAX).await;
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.len() <= MAX_LOG_LINE_BYTES && !l.contains('\u{fffd}')));
        assert_eq!(lines.concat(), "é".repeat(MAX_LOG_LINE_BYTES));
    }

    #[tokio::test]
    async fn output_past_the_cap_is_discarded_with_a_notice_when_it_starts_and_at_the_end() {
        let cap = stored_cost(5) + stored_cost(3);
        let lines = lines_of(b"12345\n123\n1\n12\n".to_vec(), cap).await;
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[..2], ["12345", "123"]);
        assert!(lines[2].starts_with(OUTPUT_TRUNCATED) && lines[2].contains(&format!("({cap} bytes)")), "{lines:?}");
        assert!(
            lines[3].starts_with(OUTPUT_TRUNCATED)
                && lines[3].contains(": 2 lines of output past")
                && lines[3].ends_with("(3 bytes, not counting newlines)"),
            "{lines:?}"
        );
    }

    #[test]
    fn every_line_counts_its_text_and_what_the_store_keeps_beside_it() {
        assert_eq!(stored_cost(0), STORED_LINE_OVERHEAD);
        assert_eq!(stored_cost(8_000), 8_000 + STORED_LINE_OVERHEAD);
        // What a line takes beside its text, as stored: its encoding (with a sequence number and
        // a text as long as they get) and a Redis list entry's header and back-length (8 bytes
        // at most for these sizes).
        for text in [String::new(), "x".repeat(MAX_LOG_LINE_BYTES)] {
            let line = LogLine { seq: u64::from(u32::MAX) + 1, stream: LogStream::Stderr, text, at: u64::MAX };
            let encoded = rmp_serde::to_vec_named(&line).unwrap().len() - line.text.len();
            assert!(encoded as u64 + 8 <= STORED_LINE_OVERHEAD, "{encoded} bytes beside the text");
        }
    }

    /// Empty lines used to count nothing: a script printing them was never truncated, and each
    /// took 42 bytes of Redis.
    #[tokio::test]
    async fn empty_lines_use_up_the_cap_too() {
        let cap = 16 * 1024;
        let lines = lines_of(b"\n".repeat(100_000), cap).await;
        let kept = lines.iter().filter(|l| l.is_empty()).count() as u64;
        assert_eq!(kept, cap / STORED_LINE_OVERHEAD, "{} lines kept", kept);
        let notices: Vec<_> = lines.iter().filter(|l| l.starts_with(OUTPUT_TRUNCATED)).collect();
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(notices[0].contains("(16 KiB)"), "{notices:?}");
        assert!(notices[1].contains(&format!(": {} lines of output past", 100_000 - kept)), "{notices:?}");
    }
}
