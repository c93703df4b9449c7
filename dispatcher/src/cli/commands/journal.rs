//! Where the service's journal is, for the commands that read or write it (`serve`, `history`,
//! `status TICKET`, `submit --detach`, `schedule`).

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

/// Who the journal records as having asked, for what the CLI writes in it.
pub(crate) fn cli_user() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}
