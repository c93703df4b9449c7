//! The `dispatcher` command line, by concern:
//! - [`args`]: every flag (clap), and what they turn into (through [`crate::plan`]);
//! - [`commands`]: what each command does, one module per command;
//! - [`output`]: what the user sees: events and outcomes, progress bars, terminal safety;
//! - [`signals`]: Ctrl-C while waiting; [`log`]: the dispatcher's own log lines.
//!
//! This file only parses, sets up the broker client and the log, and hands the command over.

#[macro_use]
mod output;
mod args;
mod commands;
mod log;
mod signals;

use crate::orchestrator::Orchestrator;
use crate::rpc::{RpcClient, RpcConfig};
use crate::trust::{DispatcherTrust, TrustFiles};
use args::{Cli, Command};
use clap::Parser;
use commands::journal::JournalOptions;
use contracts::submission::retry::Timing;
use output::printer::usage_error;
use std::process::ExitCode;
use std::sync::Arc;

/// Runs one parsed command and gives the process exit code.
async fn run(cli: Cli) -> ExitCode {
    output::terminal::set_raw(cli.raw);
    let trust = match cli.command.sends_requests() {
        false => None,
        true => match TrustFiles::resolve(cli.key.clone(), cli.known_agents.clone())
            .and_then(|f| DispatcherTrust::load(&f))
        {
            Ok(trust) => Some(Arc::new(trust.with_strict_answers(cli.strict_answers))),
            Err(error) => return usage_error(error),
        },
    };
    let tls_files = edge::connect::tls::TlsFiles {
        ca_file: cli.amqp_ca_file.clone(),
        client_cert: cli.amqp_client_cert.clone(),
        client_key: cli.amqp_client_key.clone(),
    };
    let tls = match tls_files.load() {
        Ok(tls) => tls,
        Err(error) => return usage_error(error),
    };
    let proxy = match cli.proxy.settings() {
        Ok(proxy) => proxy,
        Err(error) => return usage_error(error),
    };
    let rpc_config =
        RpcConfig { amqp_url: cli.amqp_url.clone(), connect_timeout: cli.connect_timeout, trust, tls, proxy };
    let metrics = crate::metrics::Metrics::default();
    let rpc = Arc::new(RpcClient::new(rpc_config.clone()).with_metrics(metrics.clone()));
    let orchestrator =
        Orchestrator::new(rpc.clone(), Timing::default()).with_protocol(cli.protocol).with_metrics(metrics);
    let journal = JournalOptions { url: cli.journal, prefix: cli.journal_prefix };
    let code = match cli.command {
        Command::Submit(args) if args.detach => commands::detach::run(&journal, &args).await,
        Command::Submit(args) => commands::submit::run(&orchestrator, &rpc_config, *args).await,
        Command::Status(args) if args.reads_journal() => {
            commands::status::from_journal(&journal, &args.ticket.ticket, args.follow, args.ticket.json).await
        }
        Command::Status(args) => commands::status::on_agent(&orchestrator, args).await,
        Command::Cancel(args) => commands::cancel::run(&orchestrator, args).await,
        Command::Capabilities(args) => commands::health::capabilities(&orchestrator, args).await,
        Command::Health(args) => commands::health::health(&orchestrator, args).await,
        Command::Bench(args) => commands::bench::run(&orchestrator, args).await,
        Command::Serve(args) => commands::serve::run(&orchestrator, &journal, args).await,
        Command::History(args) => commands::history::run(&journal, args).await,
        Command::Approve(args) => commands::approve::run(&journal, args).await,
        Command::Schedule(command) => commands::schedule::run(&journal, rpc_config.trust.as_deref(), command).await,
        Command::Agents(args) => commands::fleet::run(&rpc_config, cli.key, cli.known_agents, args).await,
        Command::Receipts(args) => commands::receipts::list(&rpc_config, cli.key, cli.known_agents, args).await,
        Command::Verify(args) => commands::receipts::verify(cli.key, cli.known_agents, args),
        Command::Upload(args) => {
            commands::transfer::run(&orchestrator, &args.on, &args.local, &args.remote, true).await
        }
        Command::Download(args) => {
            commands::transfer::run(&orchestrator, &args.on, &args.local, &args.remote, false).await
        }
        Command::Keygen(args) => commands::keys::keygen(&args),
        Command::PublicKey => commands::keys::public_key(cli.key),
        Command::SetupBroker(args) => commands::broker::setup_broker(&rpc_config, &args).await,
        Command::EnrolAgent(args) => commands::broker::enrol_agent(&rpc_config, &args).await,
        Command::EnrolPool(args) => commands::broker::enrol_pool(&rpc_config, &args).await,
        Command::Completions(args) => commands::completions::print(args.shell, command(), "dispatcher"),
    };
    orchestrator.flush_completes().await;
    rpc.close().await;
    code
}

/// The command line as clap describes it: for completions, man pages and the generated reference.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    log::init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(run(cli));
    // Not dropped: the AMQP client's I/O threads (one per connection, connections still being
    // made or abandoned on Ctrl-C included) run their work as tasks of this runtime, and
    // dropping it cancels those tasks under them, which makes such a thread panic after the
    // command's last line ("Task did not complete: ... was cancelled"). Everything the command
    // says is written by now (stdout is flushed line by line, stderr is unbuffered), so the
    // process ends with the runtime still up, as `exit` ends every thread.
    std::mem::forget(runtime);
    code
}
