//! `dispatcher serve`: the HTTP API service, until SIGINT or SIGTERM.

use super::journal::JournalOptions;
use crate::cli::args::ServeArgs;
use crate::cli::output::printer::usage_error;
use crate::orchestrator::Orchestrator;
use crate::plan;
use crate::service::tokens::ApiTokens;
use crate::service::{Service, ServiceConfig};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `dispatcher serve`.
pub(crate) async fn run(orchestrator: &Orchestrator, journal: &JournalOptions, args: ServeArgs) -> ExitCode {
    if args.lease_ttl < Duration::from_secs(1) {
        return usage_error("--lease-ttl must be at least 1s");
    }
    let journal = match journal.open(args.history_retention) {
        Ok(journal) => journal,
        Err(e) => return usage_error(e),
    };
    let tokens = match args.api_tokens.as_deref().map(ApiTokens::load).transpose() {
        Ok(tokens) => tokens,
        Err(e) => return usage_error(e),
    };
    let policies = match plan::load_policies(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let open = tokens.is_none();
    let declared_names = !args.allowed_hosts.is_empty() || args.public_url.is_some();
    let replica = args.replica_id.unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let config = ServiceConfig {
        listen: args.listen,
        tokens,
        journal,
        replica,
        lease_ttl: args.lease_ttl,
        approval_wait: args.approval_wait,
        policies,
        allowed_hosts: args.allowed_hosts,
        public_url: args.public_url,
    };
    let shutdown = CancellationToken::new();
    let service = match Service::bind(config, orchestrator.clone(), shutdown.clone()).await {
        Ok(service) => service,
        Err(e) => return usage_error(e),
    };
    let addr = service.local_addr();
    if open {
        eprintln!("cuttle: no --api-tokens: the API is open to anyone on this machine, so it listens on loopback only");
        if declared_names {
            eprintln!(
                "cuttle: warning: no --api-tokens, yet --allowed-host or --public-url names a way in: whoever reaches the service through it can run scripts; give --api-tokens FILE unless only you can"
            );
        }
    }
    eprintln!("cuttle: listening on http://{addr}");
    eprintln!(
        "cuttle: answers to {}; a request naming another host gets 421 (add names with --allowed-host)",
        service.answers_to()
    );
    tokio::spawn(async move {
        stop_signal().await;
        eprintln!("cuttle: stopping; unfinished tickets stay in the journal for the next replica");
        shutdown.cancel();
    });
    match service.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatcher: the service failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "dispatcher".into())
}
