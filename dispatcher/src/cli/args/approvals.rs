//! The flags of `dispatcher approve`.

use clap::Args;
use contracts::wire::ticket::Ticket;
use std::path::PathBuf;
use std::time::Duration;

pub(in crate::cli) const APPROVE_HELP: &str = "\
The command is read from the journal (--journal) and shown with its digest, which the approval
signs with its expiry: a changed script, argument, variable, target, --run-as or purpose is
another command, which this approval does not approve. The agent checks every approval against
its trusted-keys file; the service sends the start once the approvals its rules require are in.
Exit codes:
  0    approved
  1    the ticket no longer waits for approvals (sent, finished), or you declined
  2    bad usage (a key that cannot be read, --approval-ttl over 7d, no terminal without --yes)
  101  cannot reach the journal
  104  no such ticket in the journal";

#[derive(Args, Debug)]
pub(in crate::cli) struct ApproveArgs {
    /// The ticket waiting for approvals, as `dispatcher submit --detach` printed it.
    pub ticket: Ticket,
    /// Your approval key (a secret key file from `dispatcher keygen`, whose public key the
    /// agents' trusted-keys files name). Not the dispatcher's key: an approval is yours.
    #[arg(long = "approval-key", env = "CUTTLE_APPROVAL_KEY", value_name = "FILE")]
    pub key: PathBuf,
    /// How long the approval stays valid, at most 7d: past it, it counts no more.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub approval_ttl: Duration,
    /// Approve without showing the command and asking first (for a pipeline). Without it, a
    /// command not run from a terminal is refused (exit 2).
    #[arg(long)]
    pub yes: bool,
}
