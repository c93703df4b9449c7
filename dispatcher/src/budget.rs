//! Rollout limits over many targets: how many run at once (`--max-parallel`) and how many may
//! fail before no new target is started (`--max-errors`), each as a count or a percentage of the
//! targets. The same types serve the CLI and the service's API.
//!
//! # Rounding
//! A percentage is of the number of targets, and rounds towards safety:
//! - parallelism rounds **up** (and is at least 1): `--max-parallel 30%` of 7 targets runs 3 at
//!   once (2.1 rounded up), so a small percentage of a small fleet still makes progress;
//! - the error budget rounds **down**: `--max-errors 30%` of 7 targets tolerates 2 failures (2.1
//!   rounded down), and the third failure stops the rollout. `--max-errors 10%` of 6 targets
//!   tolerates none.
//!
//! "Once more targets than that have failed, no new target is started": with `--max-errors 1`
//! the first failure is tolerated and the second stops the rollout (like SSM's `MaxErrors`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A number of targets: a count, or a whole percentage (0 to 100) of all the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ShareText", into = "String")]
pub enum Share {
    Count(usize),
    Percent(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("expected a count or a percentage such as 10 or 25%, got {0:?}")]
    Malformed(String),
    #[error("a percentage must be between 0% and 100%, got {0:?}")]
    PercentOutOfRange(String),
    #[error("{what} must be at least 1 (or 1%)")]
    Zero { what: &'static str },
}

impl Share {
    /// This share of `total` targets, rounded up.
    pub fn of_rounded_up(self, total: usize) -> usize {
        match self {
            Share::Count(n) => n,
            Share::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }

    /// This share of `total` targets, rounded down.
    pub fn of_rounded_down(self, total: usize) -> usize {
        match self {
            Share::Count(n) => n,
            Share::Percent(p) => total * p as usize / 100,
        }
    }
}

impl FromStr for Share {
    type Err = ShareError;

    fn from_str(raw: &str) -> Result<Share, ShareError> {
        let text = raw.trim();
        let malformed = || ShareError::Malformed(raw.to_owned());
        let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let Some(percent) = text.strip_suffix('%') {
            if !digits_only(percent) {
                return Err(malformed());
            }
            let value: u64 = percent.parse().map_err(|_| ShareError::PercentOutOfRange(raw.to_owned()))?;
            return u8::try_from(value)
                .ok()
                .filter(|p| *p <= 100)
                .map(Share::Percent)
                .ok_or_else(|| ShareError::PercentOutOfRange(raw.to_owned()));
        }
        if !digits_only(text) {
            return Err(malformed());
        }
        text.parse().map(Share::Count).map_err(|_| malformed())
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl From<Share> for String {
    fn from(share: Share) -> String {
        share.to_string()
    }
}

/// What an API client may send for a share: a number, or a string such as `"25%"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ShareText {
    Count(usize),
    Text(String),
}

impl TryFrom<ShareText> for Share {
    type Error = ShareError;

    fn try_from(raw: ShareText) -> Result<Share, ShareError> {
        match raw {
            ShareText::Count(n) => Ok(Share::Count(n)),
            ShareText::Text(text) => text.parse(),
        }
    }
}

/// How a rollout over many targets is paced and when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Limits {
    /// Targets running at once at most (rounded up, at least 1).
    pub max_parallel: Share,
    /// Failures tolerated (rounded down); one more stops the rollout. `None`: no budget.
    #[serde(default)]
    pub max_errors: Option<Share>,
    /// Once the budget is spent, cancel the targets still running instead of letting them finish.
    #[serde(default)]
    pub abort_on_error: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_parallel: Share::Count(DEFAULT_MAX_PARALLEL), max_errors: None, abort_on_error: false }
    }
}

/// Targets run at once when nothing else is asked.
pub(crate) const DEFAULT_MAX_PARALLEL: usize = 10;

impl Limits {
    /// Refuses limits that can never let a target start.
    pub(crate) fn validate(&self) -> Result<(), ShareError> {
        if matches!(self.max_parallel, Share::Count(0) | Share::Percent(0)) {
            return Err(ShareError::Zero { what: "--max-parallel" });
        }
        Ok(())
    }

    /// The limits for `total` targets, as counts.
    pub(crate) fn resolve(&self, total: usize) -> Resolved {
        Resolved {
            parallel: self.max_parallel.of_rounded_up(total).max(1),
            tolerated_failures: self.max_errors.map(|share| share.of_rounded_down(total)),
        }
    }
}

/// [`Limits`] resolved for a number of targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub parallel: usize,
    /// Failures tolerated; the next one stops the rollout. `None`: every target is started.
    pub tolerated_failures: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shares_parse_as_counts_or_percentages() {
        assert_eq!("3".parse(), Ok(Share::Count(3)));
        assert_eq!(" 25% ".parse(), Ok(Share::Percent(25)));
        assert_eq!("0%".parse(), Ok(Share::Percent(0)));
        assert_eq!("100%".parse(), Ok(Share::Percent(100)));
        assert!(matches!("101%".parse::<Share>(), Err(ShareError::PercentOutOfRange(_))));
        assert!(matches!("99999999999999999999%".parse::<Share>(), Err(ShareError::PercentOutOfRange(_))));
        for bad in ["", "%", "-1", "1.5", "1.5%", "ten", "+3", "3 %", "%3"] {
            assert!(matches!(bad.parse::<Share>(), Err(ShareError::Malformed(_))), "{bad:?} is refused");
        }
    }

    #[test]
    fn percentages_round_up_for_parallelism_and_down_for_errors() {
        let limits =
            Limits { max_parallel: Share::Percent(30), max_errors: Some(Share::Percent(30)), ..Default::default() };
        assert_eq!(limits.resolve(7), Resolved { parallel: 3, tolerated_failures: Some(2) });
        let limits =
            Limits { max_parallel: Share::Percent(1), max_errors: Some(Share::Percent(10)), ..Default::default() };
        assert_eq!(limits.resolve(6), Resolved { parallel: 1, tolerated_failures: Some(0) });
        assert_eq!(limits.resolve(0), Resolved { parallel: 1, tolerated_failures: Some(0) });
        assert!(Limits { max_parallel: Share::Percent(0), ..Default::default() }.validate().is_err());
        assert!(Limits { max_parallel: Share::Count(0), ..Default::default() }.validate().is_err());
    }

    #[test]
    fn api_clients_may_send_numbers_or_strings() {
        let limits: Limits = serde_json::from_str(r#"{"max_parallel": "20%", "max_errors": 2}"#).unwrap();
        assert_eq!((limits.max_parallel, limits.max_errors), (Share::Percent(20), Some(Share::Count(2))));
        assert!(serde_json::from_str::<Limits>(r#"{"max_parallel": "200%"}"#).is_err());
        assert_eq!(serde_json::to_string(&Share::Percent(5)).unwrap(), r#""5%""#);
    }

    proptest! {
        #[test]
        fn rounding_brackets_the_exact_share(total in 0usize..100_000, percent in 0u8..=100) {
            let share = Share::Percent(percent);
            let (up, down) = (share.of_rounded_up(total), share.of_rounded_down(total));
            let exact = total as f64 * percent as f64 / 100.0;
            prop_assert!(down as f64 <= exact && exact <= up as f64);
            prop_assert!(up - down <= 1);
            prop_assert!(up <= total && down <= total);
            prop_assert_eq!(up == down, (total * percent as usize).is_multiple_of(100));
        }

        #[test]
        fn displayed_shares_parse_back(share in prop_oneof![
            any::<usize>().prop_map(Share::Count), (0u8..=100).prop_map(Share::Percent)
        ]) {
            prop_assert_eq!(share.to_string().parse::<Share>(), Ok(share));
        }
    }
}
