//! `dispatcher receipts` and `dispatcher verify`: the receipts agents signed as their runs
//! ended, read from the receipts stream or from a saved file, each checked against the agent's
//! pinned key and its chain ([`contracts::receipt::verify`]).

use crate::cli::args::{ReceiptsArgs, VerifyArgs, NOT_VERIFIED};
use crate::cli::output::printer::usage_error;
use crate::cli::output::terminal;
use crate::receipts::{self, Whose};
use crate::rpc::RpcConfig;
use contracts::receipt::verify::{verify as check, Finding, Report};
use contracts::receipt::{Receipt, SignedReceipt};
use contracts::submission::outcome::exit;
use contracts::wire::topology::validate_name;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// `dispatcher receipts`: `--target`'s or `--pool`'s receipts from `--since` ago, each checked.
pub(crate) async fn list(
    rpc: &RpcConfig,
    key: Option<PathBuf>,
    known_agents_file: Option<PathBuf>,
    args: ReceiptsArgs,
) -> ExitCode {
    let known = match super::known_agents(key, known_agents_file) {
        Ok((known, _)) => known,
        Err(code) => return code,
    };
    let whose = match (args.target, args.pool) {
        (Some(agent), _) => validate_name("agent id", &agent).map(|_| Whose::Agent(agent)),
        (None, Some(pool)) => validate_name("pool name", &pool).map(|_| Whose::Pool(pool)),
        (None, None) => unreachable!("clap requires --target or --pool"),
    };
    let whose = match whose {
        Ok(whose) => whose,
        Err(error) => return usage_error(error),
    };
    let spinner = crate::cli::output::progress::reading(contracts::wire::topology::RECEIPTS_STREAM);
    let shown = |messages: u64, kept: usize| spinner.set_message(format!("{messages} messages, {kept} kept"));
    let read = receipts::read(rpc, &whose, args.since, &shown).await;
    spinner.finish_and_clear();
    let read = match read {
        Ok(read) => read,
        Err(error) => {
            eprintln!("cuttle: cannot read the receipts: {error}");
            return ExitCode::from(exit::BROKER_UNREACHABLE);
        }
    };
    if read.not_receipts > 0 {
        eprintln!(
            "cuttle: warning: ignored {} message(s) on the receipts stream that are not signed receipts",
            read.not_receipts
        );
    }
    let numbered: Vec<(usize, SignedReceipt)> =
        read.receipts.into_iter().enumerate().map(|(i, r)| (i + 1, r)).collect();
    let report = check(&numbered, &known, Vec::new());
    let refused: BTreeSet<usize> = report.findings.iter().filter_map(line_of).collect();
    for (line, signed) in &numbered {
        let Ok(receipt) = signed.receipt() else { continue };
        if args.json {
            outln!("{}", receipts::to_json(signed, &receipt));
        } else {
            outln!("{}", terminal::out(&describe(&receipt, !refused.contains(line))));
        }
    }
    if numbered.is_empty() {
        eprintln!("cuttle: no receipts in the last {}", contracts::time::short(args.since));
    }
    conclude(&report)
}

/// `dispatcher verify FILE|-`: saved receipts checked offline.
pub(crate) fn verify(key: Option<PathBuf>, known_agents_file: Option<PathBuf>, args: VerifyArgs) -> ExitCode {
    let known = match super::known_agents(key, known_agents_file) {
        Ok((known, _)) => known,
        Err(code) => return code,
    };
    let mut text = String::new();
    let read = if args.file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(&args.file).and_then(|mut file| file.read_to_string(&mut text))
    };
    if let Err(error) = read {
        return usage_error(format!("cannot read {}: {error}", args.file.display()));
    }
    let (receipts, findings) = receipts::parse_lines(&text);
    let report = check(&receipts, &known, findings);
    for (agent, chain) in &report.chains {
        eprintln!("{agent}: receipts {} to {} ({} read)", chain.first, chain.last, chain.receipts);
    }
    conclude(&report)
}

/// The line a finding is about, for one about a single receipt.
fn line_of(finding: &Finding) -> Option<usize> {
    match finding {
        Finding::Unreadable { line, .. }
        | Finding::Edited { line, .. }
        | Finding::Unpinned { line, .. }
        | Finding::Foreign { line, .. }
        | Finding::Forged { line, .. } => Some(*line),
        _ => None,
    }
}

/// One receipt for people: when it ended, whose, which ticket, how, and whether it verified.
fn describe(receipt: &Receipt, verified: bool) -> String {
    let ended = chrono::DateTime::from_timestamp_millis(receipt.ended_at as i64)
        .map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| receipt.ended_at.to_string());
    let output = match (&receipt.output_sha256, receipt.lines) {
        (Some(sha), Some(lines)) => format!("{lines} line(s), output sha256 {}", &sha[..16]),
        _ => "output unknown (run lost)".to_owned(),
    };
    let mark = if verified { "verified" } else { "NOT VERIFIED" };
    format!(
        "{ended}  {} #{}  {}  exit {}  {output}  {mark}",
        receipt.agent_id, receipt.sequence, receipt.ticket, receipt.exit_code
    )
}

/// Tells each finding on stderr, and the exit code: 0 when there is none.
fn conclude(report: &Report) -> ExitCode {
    for finding in &report.findings {
        eprintln!("cuttle: {}", terminal::err(&finding.to_string()));
    }
    let copies = match report.duplicates {
        0 => String::new(),
        n => format!(" ({n} exact copies skipped)"),
    };
    if report.is_clean() {
        eprintln!("cuttle: {} receipt(s) verified{copies}", report.verified);
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "cuttle: {} receipt(s) verified, {} problem(s) found{copies}",
            report.verified,
            report.findings.len()
        );
        ExitCode::from(NOT_VERIFIED)
    }
}
