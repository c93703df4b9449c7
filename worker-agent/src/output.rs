//! A script's output: lines read from its pipes (long lines split at a character boundary,
//! never dropped), numbered in arrival order, and written to the store in batches by one writer.
//! While the store is unreachable the writer keeps the lines and retries, so nothing is lost.
//! Secrets are masked ([`crate::mask`]) in the byte stream of each pipe, before it is cut into
//! lines, and in every line sent, so no line holding one reaches the store.

use crate::mask::Masker;
use crate::store::{TicketKeys, TicketStore};
use contracts::topology::MAX_LOG_LINE_BYTES;
use contracts::{unix_millis, LogLine, LogStream};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

/// Lines or bytes written to the store in one batch at most.
const BATCH_LINES: usize = 1_000;
const BATCH_BYTES: usize = 1024 * 1024;

/// How far a run has got, for status requests waiting on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The sequence number the next stored line will get.
    pub next_log_sequence: u64,
    pub complete: bool,
}

/// Where output lines go; cheap to clone, one per pipe. Every line is masked on its way.
#[derive(Clone)]
pub struct LogSender {
    lines: mpsc::UnboundedSender<(LogStream, String)>,
    masker: Masker,
}

impl LogSender {
    pub fn send(&self, stream: LogStream, text: impl Into<String>) {
        let text = text.into();
        let text = if self.masker.is_empty() { text } else { self.masker.mask(&text) };
        // The writer outlives every sender; a failed send means the run is being torn down.
        let _ = self.lines.send((stream, text));
    }
}

/// Starts the writer of one ticket's log, masking what `masker` names. It ends, returning the
/// next sequence number, once every [`LogSender`] is dropped and all lines are stored.
pub fn spawn_writer(
    masker: Masker,
    store: TicketStore,
    keys: TicketKeys,
    ttl: Duration,
    progress: watch::Sender<Progress>,
) -> (LogSender, tokio::task::JoinHandle<u64>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(LogStream, String)>();
    let task = tokio::spawn(async move {
        let mut next_seq = 1u64;
        let mut batch: Vec<LogLine> = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut bytes = 0;
            let mut item = Some(first);
            while let Some((stream, text)) = item.take() {
                bytes += text.len();
                batch.push(LogLine { seq: next_seq, stream, text, at: unix_millis(SystemTime::now()) });
                next_seq += 1;
                if batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
                    item = rx.try_recv().ok();
                }
            }
            store_batch(&store, &keys, &batch, ttl).await;
            batch.clear();
            progress.send_modify(|p| p.next_log_sequence = next_seq);
        }
        next_seq
    });
    (LogSender { lines: tx, masker }, task)
}

async fn store_batch(store: &TicketStore, keys: &TicketKeys, batch: &[LogLine], ttl: Duration) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.append_logs(keys, batch, ttl).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(ticket = %keys.ticket, %error, lines = batch.len(), "could not store output; keeping it and retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Reads a pipe to its end, masking secrets in its bytes, and sends each line (without its
/// newline) to `sink`.
pub async fn read_lines(mut pipe: impl AsyncRead + Unpin, stream: LogStream, sink: LogSender) {
    let mut masking = sink.masker.stream();
    let mut lines = LineCutter { pending: Vec::with_capacity(8 * 1024), scanned: 0, stream, sink };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        lines.push(&masking.push(&chunk[..read]));
    }
    lines.push(&masking.finish());
    if !lines.pending.is_empty() {
        lines.sink.send(stream, String::from_utf8_lossy(&lines.pending).into_owned());
    }
}

/// Cuts a byte stream into lines: at newlines, and at [`MAX_LOG_LINE_BYTES`].
struct LineCutter {
    pending: Vec<u8>,
    /// How much of `pending` holds no newline.
    scanned: usize,
    stream: LogStream,
    sink: LogSender,
}

impl LineCutter {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let pending = &mut self.pending;
        loop {
            if let Some(pos) = pending[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + pos;
                let line_end = if end > 0 && pending[end - 1] == b'\r' { end - 1 } else { end };
                self.sink.send(self.stream, String::from_utf8_lossy(&pending[..line_end]).into_owned());
                pending.drain(..=end);
                self.scanned = 0;
            } else if pending.len() >= MAX_LOG_LINE_BYTES {
                let cut = char_boundary(&pending[..MAX_LOG_LINE_BYTES]);
                self.sink.send(self.stream, String::from_utf8_lossy(&pending[..cut]).into_owned());
                pending.drain(..cut);
                self.scanned = 0;
            } else {
                self.scanned = pending.len();
                return;
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

    async fn lines_of(input: Vec<u8>) -> Vec<String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        read_lines(&input[..], LogStream::Stdout, LogSender { lines: tx, masker: Masker::default() }).await;
        let mut out = Vec::new();
        while let Ok((_, line)) = rx.try_recv() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn splits_on_newlines_and_keeps_a_last_partial_line() {
        assert_eq!(lines_of(b"a\r\nb\n\nc".to_vec()).await, vec!["a", "b", "", "c"]);
    }

    #[tokio::test]
    async fn long_lines_are_split_without_losing_bytes_or_breaking_characters() {
        let mut input = "é".repeat(MAX_LOG_LINE_BYTES).into_bytes();
        input.push(b'\n');
        let lines = lines_of(input).await;
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.len() <= MAX_LOG_LINE_BYTES && !l.contains('\u{fffd}')));
        assert_eq!(lines.concat(), "é".repeat(MAX_LOG_LINE_BYTES));
    }
}
