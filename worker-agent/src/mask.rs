//! Secret masking: every occurrence of a secret value in a script's output is replaced by
//! [`SECRET_MASK`] before the output is cut into lines, so a value written in several pieces,
//! or spanning lines, is masked too.
//!
//! [`StreamMasker`] works on the raw byte stream of one pipe. At each position it waits while
//! the bytes seen so far could still be the start of a secret (so it holds back at most the
//! longest secret less one byte), masks the longest secret that matches there, and otherwise
//! lets one byte through. Its decisions depend only on the bytes, never on how they were split
//! into reads: the output is the same as masking the whole stream at once ([`Masker::mask`]),
//! and no secret survives in it (the proptests below).
//!
//! A value of several lines is masked whole, and each of its lines on its own too, so that a
//! script printing one line of a key does not show that line.

use contracts::wire::messages::SECRET_MASK;
use std::sync::Arc;

/// The values to mask, longest first.
#[derive(Clone, Default)]
pub struct Masker {
    patterns: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.patterns.len())
    }
}

impl Masker {
    /// A masker for these secret values (empty values and empty lines are ignored).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for value in values {
            patterns.push(value.as_bytes().to_vec());
            if value.contains('\n') {
                patterns.extend(value.lines().map(|line| line.as_bytes().to_vec()));
            }
        }
        patterns.retain(|p| !p.is_empty());
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        Masker { patterns: Arc::new(patterns) }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// A masker for one stream of output.
    pub fn stream(&self) -> StreamMasker {
        StreamMasker { masker: self.clone(), held: Vec::new() }
    }

    /// `text` with every secret masked (a whole text, nothing held back).
    pub fn mask(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_owned();
        }
        let mut stream = self.stream();
        let mut out = stream.push(text.as_bytes());
        out.extend(stream.finish());
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// What to do at the start of `bytes`; `at_end` says no more bytes will follow.
    fn step(&self, bytes: &[u8], at_end: bool) -> Step {
        if !at_end && self.patterns.iter().any(|p| p.len() > bytes.len() && p.starts_with(bytes)) {
            return Step::Wait;
        }
        match self.patterns.iter().find(|p| bytes.starts_with(p)) {
            Some(p) => Step::Mask(p.len()),
            None => Step::Pass,
        }
    }
}

enum Step {
    /// The bytes may be the start of a secret: wait for more.
    Wait,
    /// A secret of this length starts here.
    Mask(usize),
    /// No secret starts here: let one byte through.
    Pass,
}

/// Masks one stream given in pieces; see the module's docs.
pub struct StreamMasker {
    masker: Masker,
    held: Vec<u8>,
}

impl StreamMasker {
    /// Takes the next piece of the stream and gives what can be let through now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.masker.is_empty() {
            return bytes.to_vec();
        }
        self.held.extend_from_slice(bytes);
        self.drain(false)
    }

    /// The end of the stream: gives everything still held, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, at_end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.held.len());
        let mut at = 0;
        while at < self.held.len() {
            match self.masker.step(&self.held[at..], at_end) {
                Step::Wait => break,
                Step::Mask(len) => {
                    out.extend_from_slice(SECRET_MASK.as_bytes());
                    at += len;
                }
                Step::Pass => {
                    out.push(self.held[at]);
                    at += 1;
                }
            }
        }
        self.held.drain(..at);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn masked_in_pieces(masker: &Masker, text: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut stream = masker.stream();
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            let cut = cut.clamp(from, text.len());
            out.extend(stream.push(&text[from..cut]));
            from = cut;
        }
        out.extend(stream.push(&text[from..]));
        out.extend(stream.finish());
        out
    }

    #[test]
    fn a_secret_is_masked_wherever_it_is() {
        let masker = Masker::new(["s3cret"]);
        assert_eq!(masker.mask("token=s3cret; again s3cret."), "token=********; again ********.");
        assert_eq!(masker.mask("s3cre t"), "s3cre t");
    }

    #[test]
    fn a_secret_written_in_two_pieces_is_masked() {
        let masker = Masker::new(["s3cret"]);
        let mut stream = masker.stream();
        let first = stream.push(b"value: s3c");
        assert_eq!(first, b"value: ", "the start of a possible secret is held back");
        let mut out = first;
        out.extend(stream.push(b"ret\n"));
        out.extend(stream.finish());
        assert_eq!(out, b"value: ********\n");
    }

    #[test]
    fn the_longest_secret_wins_and_lines_of_a_multi_line_secret_are_masked_alone() {
        let masker = Masker::new(["abc", "abcdef", "line one\nline two"]);
        assert_eq!(masker.mask("abcdefg abcx"), "********g ********x");
        assert_eq!(masker.mask("line one\nline two"), "********");
        assert_eq!(masker.mask("> line two <"), "> ******** <");
    }

    #[test]
    fn nothing_is_held_without_secrets_and_debug_shows_no_value() {
        let masker = Masker::new([]);
        assert_eq!(masker.stream().push(b"abc"), b"abc");
        assert!(!format!("{:?}", Masker::new(["hunter2"])).contains("hunter2"));
    }

    fn secret() -> impl Strategy<Value = String> {
        // No `*`, so a masked output cannot spell a secret with the mask's own characters.
        proptest::string::string_regex("[ab\\n]{1,6}").unwrap()
    }

    proptest! {
        #[test]
        fn pieces_give_the_same_output_as_the_whole(
            secrets in proptest::collection::vec(secret(), 1..4),
            text in proptest::string::string_regex("[abc\\n]{0,60}").unwrap(),
            cuts in proptest::collection::vec(0usize..60, 0..8),
        ) {
            let masker = Masker::new(secrets.iter().map(String::as_str));
            let mut cuts = cuts;
            cuts.sort();
            let whole = masker.mask(&text);
            prop_assert_eq!(String::from_utf8(masked_in_pieces(&masker, text.as_bytes(), &cuts)).unwrap(), whole);
        }

        #[test]
        fn no_secret_survives(
            secrets in proptest::collection::vec(secret(), 1..4),
            text in proptest::string::string_regex("[abc\\n]{0,60}").unwrap(),
        ) {
            let masker = Masker::new(secrets.iter().map(String::as_str));
            let masked = masker.mask(&text);
            for secret in &secrets {
                prop_assert!(!masked.contains(secret.as_str()), "{secret:?} in {masked:?}");
            }
        }
    }
}
