//! Where the service's journal is, for the commands that read or write it (`serve`, `history`,
//! `status TICKET`, `submit --detach`, `schedule`).

use crate::service::journal::{Journal, JournalError};
use std::time::Duration;

/// Where the journal is (global flags).
#[derive(Clone, Debug)]
pub(crate) struct JournalOptions {
    pub url: Option<String>,
    pub prefix: String,
}

/// Why there is no journal to use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("no journal configured: give --journal redis://HOST:PORT (or CUTTLE_JOURNAL_URL), the one `dispatcher serve` uses")]
    NotConfigured,
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl JournalOptions {
    /// The journal, or why there is none.
    pub(crate) fn open(&self, retention: Duration) -> Result<Journal, OpenError> {
        let url = self.url.as_deref().ok_or(OpenError::NotConfigured)?;
        Ok(Journal::open(url, &self.prefix, retention)?)
    }
}

/// Who the journal records as having asked, for what the CLI writes in it.
pub(crate) fn cli_user() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}
