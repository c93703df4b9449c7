//! `dispatcher approve TICKET`: shows a command waiting for approvals in the journal, with the
//! digest an approval signs, and adds the approver's approval to it.

use super::journal::JournalOptions;
use crate::cli::args::ApproveArgs;
use crate::cli::output::printer::usage_error;
use crate::route::Route;
use crate::service::approvals::{approved_command, Added};
use crate::service::journal::TicketRecord;
use contracts::submission::outcome::exit;
use contracts::time::{short, unix_millis};
use contracts::trust::approval::{approve, command_digest, MAX_APPROVAL_TTL};
use contracts::wire::messages::ScriptSpec;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// What `approve` exits with when nothing was approved: the ticket waits no more, or the user
/// declined.
const NOT_APPROVED: u8 = 1;

pub(crate) async fn run(journal: &JournalOptions, args: ApproveArgs) -> ExitCode {
    if args.approval_ttl > MAX_APPROVAL_TTL || args.approval_ttl.is_zero() {
        return usage_error(format!("--approval-ttl must be more than 0 and at most {}", short(MAX_APPROVAL_TTL)));
    }
    let key = match edge::keys::load_secret(&args.key) {
        Ok(key) => key,
        Err(error) => return usage_error(format!("approval key: {error}")),
    };
    if !args.yes && !std::io::stdin().is_terminal() {
        return usage_error("approve shows the command and asks before approving it: run it from a terminal, or give --yes to approve without asking");
    }
    let journal = match journal.open(Duration::ZERO) {
        Ok(journal) => journal,
        Err(e) => return usage_error(format!("approve reads the journal: {e}")),
    };
    let ticket = &args.ticket;
    let record = match journal.ticket(ticket).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            eprintln!("cuttle: no ticket {ticket} in the journal");
            return ExitCode::from(exit::UNKNOWN_TICKET);
        }
        Err(e) => {
            eprintln!("cuttle: {e}");
            return ExitCode::from(exit::BROKER_UNREACHABLE);
        }
    };
    if record.state != crate::service::approvals::AWAITING_APPROVAL && record.state != "queued" {
        eprintln!("cuttle: ticket {ticket} is {}: it no longer waits for approvals", record.state);
        return ExitCode::from(NOT_APPROVED);
    }
    let route = match record.submission.route() {
        Ok(route) => route,
        Err(e) => return usage_error(format!("ticket {ticket}: {e}")),
    };
    // The digest the agent will check, of the command the service will send to this target.
    let digest = command_digest(&approved_command(&record), &route.target());
    outln!("{}", describe(&record, &route, &digest));
    if !args.yes && !confirmed(&format!("approve this command as key {}?", key.id())) {
        eprintln!("cuttle: not approved");
        return ExitCode::from(NOT_APPROVED);
    }
    let expires_at = unix_millis(SystemTime::now() + args.approval_ttl);
    let approval = approve(&key, &digest, expires_at);
    match journal.add_approval(ticket, &approval).await {
        Ok(Added::Added) => {
            let others = record.approvals.iter().filter(|a| a.key != approval.key).count();
            eprintln!(
                "cuttle: approved ticket {ticket} as key {} for {}; it has {} approval(s) now: the service sends it once its target's rules are met",
                key.id(),
                short(args.approval_ttl),
                others + 1
            );
            ExitCode::SUCCESS
        }
        Ok(Added::NotWaiting) => {
            eprintln!("cuttle: ticket {ticket} no longer waits for approvals (sent or finished meanwhile)");
            ExitCode::from(NOT_APPROVED)
        }
        Err(e) => {
            eprintln!("cuttle: {e}");
            ExitCode::from(exit::BROKER_UNREACHABLE)
        }
    }
}

/// The command as an approver must see it before approving: everything the digest covers,
/// every text escaped ([`shown`]), text files whole.
fn describe(record: &TicketRecord, route: &Route, digest: &str) -> String {
    let submission = &record.submission;
    let spec: &ScriptSpec = &submission.spec;
    let mut lines = vec![
        format!("ticket:     {}", submission.ticket),
        format!("target:     {route}"),
        format!("purpose:    {}", spec.purpose.as_deref().unwrap_or("-")),
        format!("submitter:  {}", shown(spec.submitter.as_deref().unwrap_or("-"))),
        format!("run as:     {}", spec.run_as.as_deref().unwrap_or("the agent's default")),
        format!("limits:     {:?}", spec.limits),
        format!("shell:      {:?}, isolation {:?}", spec.shell, spec.isolation),
    ];
    let millis = |ms: Option<u64>| ms.map_or("none".to_owned(), |ms| short(Duration::from_millis(ms)));
    if let Some(mutex) = &spec.mutex_name {
        lines.push(format!("mutex:      {} (wait {})", shown(mutex), millis(spec.mutex_timeout)));
    }
    lines.push(format!("timeout:    {}", millis(spec.execution_timeout)));
    for (name, value) in &spec.env {
        lines.push(format!("env:        {}={}", shown(name), shown(value)));
    }
    for name in &submission.secret_names {
        lines.push(format!("secret:     {} (value not shown, not approved)", shown(name)));
    }
    for arg in &spec.args {
        lines.push(format!("arg:        {}", shown(arg)));
    }
    lines.push(format!("approvals:  {} so far", record.approvals.len()));
    lines.push(format!("digest:     {digest}"));
    lines.push("script:".into());
    lines.extend(text_lines(&spec.script));
    for file in &spec.files {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(&file.content));
        lines.push(format!("file {} ({} bytes, sha256 {sha}):", shown(&file.name), file.content.len()));
        match std::str::from_utf8(&file.content) {
            Ok(text) => lines.extend(text_lines(text)),
            Err(_) => lines.push("  (binary: check it against its sha256)".into()),
        }
    }
    lines.join("\n")
}

/// A script's or a file's lines, each shown; split at `\n` alone, so a carriage return before it
/// is shown too (the shell would read it).
fn text_lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.strip_suffix('\n').unwrap_or(text).split('\n').map(|line| format!("  | {}", shown(line)))
}

/// A text as a terminal shows it faithfully: printable ASCII as is, everything else escaped
/// (`\u{1b}`), so that nothing in a command (an escape sequence, a carriage return, a
/// right-to-left or invisible character) can hide or reorder what its approver reads.
fn shown(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            ' '..='~' | '\t' => vec![c],
            _ => c.escape_unicode().collect(),
        })
        .collect()
}

/// Asks `question` on the terminal; true for `y` or `yes`.
fn confirmed(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let read = std::io::stdin().lock().read_line(&mut answer);
    read.is_ok() && matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
