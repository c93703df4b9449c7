//! Where the service's journal is, for the commands that read or write it (`serve`, `history`,
//! `status TICKET`, `submit --detach`).

use crate::service::journal::Journal;
use std::time::Duration;

/// Where the journal is (global flags).
#[derive(Clone, Debug)]
pub(crate) struct JournalOptions {
    pub url: Option<String>,
    pub prefix: String,
}

impl JournalOptions {
    /// The journal, or why there is none.
    pub(crate) fn open(&self, retention: Duration) -> Result<Journal, String> {
        let url = self.url.as_deref().ok_or(
            "no journal configured: give --journal redis://HOST:PORT (or CUTTLE_JOURNAL_URL), the one `dispatcher serve` uses",
        )?;
        Journal::open(url, &self.prefix, retention).map_err(|e| e.to_string())
    }
}
