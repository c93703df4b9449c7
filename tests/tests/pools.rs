//! Worker pools: competing consumers on a shared queue and a shared ticket store, bounded
//! workers, and draining on SIGTERM. Against the real RabbitMQ and Redis.

use dispatcher::orchestrator::Orchestrator;
use dispatcher::route::Route;
use std::collections::HashMap;
use std::time::Duration;
use tests::*;
use worker_agent::config::AgentConfig;

/// Configurations for `n` workers of one fresh pool, sharing a key prefix.
fn pool_configs(what: &str, n: usize, max_scripts: Option<usize>) -> (String, Vec<AgentConfig>) {
    let pool = unique(what);
    let configs = (0..n)
        .map(|_| {
            let mut config = tests::agent::test_config(what);
            config.pool = Some(pool.clone());
            config.key_prefix = format!("{pool}:");
            config.max_scripts = max_scripts;
            config
        })
        .collect();
    (pool, configs)
}

/// A script that records its run under `name` and which worker ran it.
fn recorded(markers: &Markers, name: &str, rest: &str) -> String {
    let who = markers.dir.join(format!("{name}.who"));
    format!("{}; echo \"$CUTTLE_AGENT_ID\" >> '{}'; {rest}", markers.record(name), who.display())
}

fn who(markers: &Markers, name: &str) -> Vec<String> {
    std::fs::read_to_string(markers.dir.join(format!("{name}.who")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Submits `script` on its own task.
fn submit_in_background(
    orchestrator: &Orchestrator,
    route: &Route,
    script: String,
) -> tokio::task::JoinHandle<(contracts::submission::outcome::Outcome, Vec<contracts::wire::status::LogLine>)> {
    let (orchestrator, route) = (orchestrator.clone(), route.clone());
    tokio::spawn(async move { submit(&orchestrator, &route, sh(script)).await })
}

async fn cleanup_pool(pool: &str) {
    tests::raw::delete_queue(&contracts::wire::topology::pool_queue(pool)).await;
    tests::raw::delete_queue(&contracts::wire::topology::pool_service_queue(pool)).await;
}

async fn submit_all(
    orchestrator: &Orchestrator,
    route: &Route,
    scripts: Vec<String>,
    in_flight: usize,
) -> Vec<contracts::submission::outcome::Outcome> {
    let queue = std::sync::Arc::new(std::sync::Mutex::new(scripts.into_iter().enumerate().collect::<Vec<_>>()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (orchestrator, route, queue) = (orchestrator.clone(), route.clone(), queue.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let Some((i, script)) = queue.lock().unwrap().pop() else { return done };
                let (outcome, _) = submit(&orchestrator, &route, sh(script)).await;
                done.push((i, outcome));
            }
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = workers.join_next().await {
        outcomes.extend(done.unwrap());
    }
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_three_runs_a_hundred_scripts_each_once_spread_over_every_worker() {
    let (pool, configs) = pool_configs("pool3", 3, None);
    let mut workers = Vec::new();
    for config in configs {
        workers.push(TestAgent::start_with(config).await);
    }
    let orchestrator = orchestrator().await;
    let route = Route::pool(&pool).unwrap();
    let markers = Markers::new();
    let scripts = (0..100).map(|i| recorded(&markers, &format!("s{i}"), "sleep 0.05; echo done")).collect();
    let outcomes = submit_all(&orchestrator, &route, scripts, 10).await;
    assert!(outcomes.iter().all(|o| o.exit_code == Some(0)), "every script completed");
    let mut runs_per_worker: HashMap<String, usize> = HashMap::new();
    for i in 0..100 {
        assert_eq!(markers.count(&format!("s{i}")), 1, "script {i} ran exactly once");
        for id in who(&markers, &format!("s{i}")) {
            *runs_per_worker.entry(id).or_default() += 1;
        }
    }
    println!("runs per worker: {runs_per_worker:?}");
    for worker in &workers {
        assert!(runs_per_worker.get(worker.id()).copied().unwrap_or(0) > 0, "worker {} ran some", worker.id());
    }
    for worker in workers {
        worker.stop().await;
    }
    cleanup_pool(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_takes_no_more_pool_work() {
    let (pool, configs) = pool_configs("full", 2, Some(1));
    let mut workers = Vec::new();
    for config in configs {
        workers.push(TestAgent::start_with(config).await);
    }
    let orchestrator = orchestrator().await;
    let route = Route::pool(&pool).unwrap();
    let markers = Markers::new();
    // Each waits for the other to have started: both succeed only if they run at once, which
    // with one script per worker means on different workers.
    let (a, b) = (markers.dir.join("a.started"), markers.dir.join("b.started"));
    let meet = |me: &std::path::Path, other: &std::path::Path| {
        format!(
            "touch '{}'; for i in $(seq 100); do [ -f '{}' ] && exit 0; sleep 0.05; done; exit 1",
            me.display(),
            other.display()
        )
    };
    let scripts = vec![recorded(&markers, "a", &meet(&a, &b)), recorded(&markers, "b", &meet(&b, &a))];
    let outcomes = submit_all(&orchestrator, &route, scripts, 2).await;
    assert_eq!(outcomes.iter().map(|o| o.exit_code).collect::<Vec<_>>(), vec![Some(0), Some(0)]);
    assert_ne!(who(&markers, "a"), who(&markers, "b"), "the two ran on different workers");
    for worker in workers {
        worker.stop().await;
    }
    cleanup_pool(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_scripts_finish_and_hands_waiting_work_to_the_pool() {
    let (pool, mut configs) = pool_configs("drain", 2, Some(1));
    let mut draining = AgentProcess::start(configs.remove(0)).await;
    let orchestrator = orchestrator().await;
    let route = Route::pool(&pool).unwrap();
    let markers = Markers::new();
    let first = submit_in_background(&orchestrator, &route, recorded(&markers, "first", "sleep 2; echo finished"));
    eventually("the first script to run", Duration::from_secs(10), || async {
        (markers.count("first") == 1).then_some(())
    })
    .await;
    // The worker is full: this one waits for it, or in the queue.
    let second = submit_in_background(&orchestrator, &route, recorded(&markers, "second", "echo second"));
    draining.signal(nix::sys::signal::Signal::SIGTERM);
    let taker = TestAgent::start_with(configs.remove(0)).await;
    let exit =
        tokio::time::timeout(Duration::from_secs(20), draining.wait()).await.expect("the worker exits after draining");
    assert!(exit.success(), "{exit:?}");
    let (first, lines) = first.await.unwrap();
    assert_eq!(first.exit_code, Some(0), "the running script finished inside the grace period: {first:?}");
    assert_eq!(texts(&lines, contracts::wire::status::LogStream::Stdout), vec!["finished".to_string()]);
    let (second, _) = second.await.unwrap();
    assert_eq!(second.exit_code, Some(0), "{second:?}");
    assert_eq!(who(&markers, "second"), vec![taker.id().to_string()], "waiting work went to the rest of the pool");
    assert_eq!((markers.count("first"), markers.count("second")), (1, 1));
    taker.stop().await;
    draining.stop().await;
    cleanup_pool(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_leaves_unknown_results_and_its_unclaimed_work_runs_elsewhere_once() {
    tests::skip_unless!(tests::needs::shared_rabbitmqctl());
    let (pool, mut configs) = pool_configs("sigkill", 2, Some(1));
    let mut killed = AgentProcess::start(configs.remove(0)).await;
    let orchestrator = orchestrator().await;
    let route = Route::pool(&pool).unwrap();
    let markers = Markers::new();
    let running = submit_in_background(&orchestrator, &route, recorded(&markers, "running", "sleep 20"));
    eventually("the first script to run", Duration::from_secs(10), || async {
        (markers.count("running") == 1).then_some(())
    })
    .await;
    // The worker is full: it holds this delivery, unclaimed, waiting for a place.
    let held = submit_in_background(&orchestrator, &route, recorded(&markers, "held", "echo held"));
    let queue = contracts::wire::topology::pool_queue(&pool);
    eventually("the worker to hold the second start", Duration::from_secs(20), || {
        let queue = queue.clone();
        async move { (tests::raw::ready_and_unacked(&queue).await? == (0, 1)).then_some(()) }
    })
    .await;
    killed.kill().await;
    eprintln!("{:?} killed", std::time::SystemTime::now());
    let other = TestAgent::start_with(configs.remove(0)).await;
    let (outcome, _) = running.await.unwrap();
    assert_eq!(outcome.exit_code, Some(contracts::wire::exit_code::UNKNOWN_RESULT), "{outcome:?}");
    assert_eq!(outcome.outcome, contracts::submission::outcome::OutcomeKind::Unknown);
    let (outcome, lines) = held.await.unwrap();
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(texts(&lines, contracts::wire::status::LogStream::Stdout), vec!["held".to_string()]);
    assert_eq!(who(&markers, "held"), vec![other.id().to_string()]);
    assert_eq!((markers.count("running"), markers.count("held")), (1, 1), "nothing ran twice");
    other.stop().await;
    killed.stop().await;
    cleanup_pool(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_taken_by_another_worker_stops_the_script_at_once_not_at_the_next_lease_renewal() {
    use tokio::io::AsyncBufReadExt;
    // Leases renewed every 10 s: a cancel that waited for the renewal would take that long.
    let (pool, mut configs) = pool_configs("cancel-lag", 2, None);
    for config in &mut configs {
        config.lease_ttl = Duration::from_secs(30);
    }
    let workers = [TestAgent::start_with(configs[0].clone()).await, TestAgent::start_with(configs[1].clone()).await];
    let markers = Markers::new();
    let (pid_file, done) = (markers.dir.join("pid"), markers.dir.join("done"));
    let script = format!("echo $$ > '{}'; sleep 60; touch '{}'", pid_file.display(), done.display());
    let mut submit = dispatcher_command()
        .args(["submit", "--json", "--pool", &pool, "--", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(submit.stdout.take().unwrap()).lines();
    let first = stdout.next_line().await.unwrap().expect("the ticket event");
    let ticket: serde_json::Value = serde_json::from_str(&first).unwrap();
    let ticket = contracts::wire::ticket::Ticket::parse(ticket["ticket"].as_str().unwrap()).unwrap();
    let pid = script_pid(&pid_file).await;
    let runner = workers.iter().position(|w| w.agent.running() == 1).expect("a worker runs the script");
    // The worker running it takes no more requests (its script and lease go on): the cancel can
    // only be taken by the other one.
    workers[runner].stop_consuming().await;
    let service_queue = contracts::wire::topology::pool_service_queue(&pool);
    eventually("only the other worker to consume the pool", Duration::from_secs(20), || async {
        (tests::raw::consumer_count(&service_queue).await == 1).then_some(())
    })
    .await;
    let route = Route::pool(&pool).unwrap();
    let cancel = contracts::wire::envelope::Request::CancelScriptV2(contracts::wire::messages::CancelScriptV2 {
        ticket,
        last_log_sequence: 0,
        first_issued_at: None,
    });
    let timing = dispatcher::rpc::CallTiming {
        reply_timeout: Duration::from_secs(10),
        not_after: std::time::SystemTime::now() + Duration::from_secs(30),
    };
    let orchestrator = orchestrator().await;
    let sent = std::time::Instant::now();
    let reply = orchestrator.rpc().call(&route, &cancel, timing).await;
    assert!(
        matches!(reply, Ok(contracts::wire::envelope::Reply::ScriptStatus(_))),
        "the other worker answered: {reply:?}"
    );
    eventually("the script's process to be gone", Duration::from_secs(1), || async { process_gone(pid).then_some(()) })
        .await;
    let lag = sent.elapsed();
    println!("cancel through another worker: script process gone {lag:?} after the cancel was sent");
    assert!(lag < Duration::from_secs(1), "{lag:?}");
    let out = tokio::time::timeout(Duration::from_secs(40), submit.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(106), "{}", text(&out.stderr));
    assert!(!done.exists(), "the script never reached its end");
    for worker in workers {
        worker.stop().await;
    }
    cleanup_pool(&pool).await;
}
