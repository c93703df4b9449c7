//! Web view load time with N finished tickets in the history (default 10,000): fills a journal
//! of its own (three output lines each, a retry on every tenth, one target in a hundred failed),
//! starts `dispatcher serve` on it, and times each page over 20 requests (median and slowest):
//! the index (the 50 newest), the index filtered to an outcome that only one ticket in a hundred
//! has, a ticket's page, and the JSON history of 1,000 tickets. Needs no broker.
//!
//! `cargo build --release --bins && cargo run --release -p tests --example webload -- [tickets]`

use contracts::submission::outcome::{Outcome, OutcomeKind};
use contracts::submission::requests::PlannedStart;
use contracts::submission::retry::Policies;
use contracts::submission::retry::RetryPolicy;
use contracts::wire::status::{LogLine, LogStream};
use contracts::wire::ticket::Ticket;
use dispatcher::error::RpcError;
use dispatcher::orchestrator::Event;
use dispatcher::retry::RetryNotice;
use dispatcher::route::Route;
use dispatcher::service::journal::Journal;
use dispatcher::service::submission::Submission;
use futures_util::StreamExt;
use std::time::{Duration, Instant, SystemTime};

async fn fill(journal: &Journal, index: usize) -> Ticket {
    let ticket = edge::entropy::ticket();
    let route = Route::agent(&format!("web-{:03}", index % 100)).unwrap();
    let policies = Policies::from(RetryPolicy::new(Duration::from_secs(150)));
    let spec = tests::sh(format!("echo {index}"));
    let submission = Submission::new(ticket.clone(), &route, spec, "default", policies, "load");
    journal.submit(&submission).await.unwrap();
    let now = SystemTime::now();
    let plan = PlannedStart { ticket: ticket.clone(), issued_at: now, not_after: now + Duration::from_secs(150) };
    journal.start(&plan).await.unwrap();
    if index.is_multiple_of(10) {
        let error = RpcError::NoReply { target: route.name().to_owned(), after: Duration::from_secs(15) };
        let notice =
            RetryNotice { attempt: 1, delay: Duration::from_millis(80), time_left: Duration::from_secs(135), error };
        journal
            .event(&ticket, &Event::Retry { request: contracts::wire::messages::Kind::GetStatusV2, notice })
            .await
            .unwrap();
    }
    for seq in 1..=3 {
        let line = LogLine { seq, stream: LogStream::Stdout, text: format!("line {seq} of ticket {index}"), at: 0 };
        journal.log(&ticket, &line).await.unwrap();
    }
    let failed = index.is_multiple_of(100);
    let outcome = Outcome {
        ticket: Some(ticket.clone()),
        target: route.name().to_owned(),
        outcome: if failed { OutcomeKind::Failed } else { OutcomeKind::Completed },
        exit_code: Some(0),
        error: None,
        process_exit: 0,
    };
    journal.finish(&outcome).await.unwrap();
    ticket
}

/// Median and slowest time of 20 GETs of `path`, in ms, and the body size.
async fn time(http: &reqwest::Client, base: &str, path: &str) -> (f64, f64, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        size = response.bytes().await.unwrap().len();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() - 1], size)
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let prefix = tests::service::journal_prefix("webload");
    let journal = Journal::open(&tests::redis_url(), &prefix, Duration::from_secs(3600)).unwrap();
    let filling = Instant::now();
    let tickets: Vec<Ticket> =
        futures_util::stream::iter(0..count).map(|i| fill(&journal, i)).buffer_unordered(32).collect().await;
    println!("journal: {count} finished tickets written in {:.1} s", filling.elapsed().as_secs_f64());

    let service = tests::ServiceProcess::start(&prefix, &[]).await;
    let http = tests::service::http();
    let ticket = &tickets[tickets.len() / 2];
    for (what, path) in [
        ("index, 50 newest", "/".to_owned()),
        ("index, outcome=failed", "/?outcome=failed".to_owned()),
        ("ticket page", format!("/tickets/{ticket}")),
        ("GET /v1/tickets?limit=1000", "/v1/tickets?limit=1000".to_owned()),
    ] {
        let (median, slowest, size) = time(&http, &service.url, &path).await;
        println!("{what}: median {median:.1} ms, slowest {slowest:.1} ms, {} KiB", size / 1024);
    }
    service.stop().await;
    tests::service::remove_journal(&prefix).await;
}
