//! Every documented flag and environment variable of both binaries, given to the real binary,
//! with its effect observed from outside: a flag that is parsed and ignored fails here.

use contracts::wire::topology::{agent_queue, pool_queue, pool_service_queue};
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;
use tests::agent::test_config;
use tests::*;
use worker_agent::config::AgentConfig;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the dispatcher binary to its end.
async fn dispatcher(args: &[&str]) -> Output {
    let output = dispatcher_command().args(args).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("dispatcher finishes").expect("dispatcher runs")
}

/// The ticket `submit` printed on stderr (`cuttle: ticket T on A`).
fn ticket_in(stderr: &str) -> String {
    let after = stderr.split("ticket ").nth(1).unwrap_or_else(|| panic!("no ticket in {stderr}"));
    after.split_whitespace().next().expect("ticket").to_owned()
}

/// An address nothing listens on yet, for probes.
fn probe_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tests::services::free_port()))
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.expect("test redis")
}

/// Milliseconds before `key` expires (-2: no such key, -1: no expiry).
async fn pttl(key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(&mut redis().await).await.unwrap()
}

/// `worker-agent run` with only the environment of [`agent_command`].
fn bare_agent() -> tokio::process::Command {
    let mut command = agent_command();
    command.arg("run");
    command
}

/// Waits until a probe answers `status` on `path`.
async fn probe_answers(addr: SocketAddr, path: &str, status: u16) {
    eventually(&format!("{path} to answer {status}"), Duration::from_secs(20), || async move {
        http_get(addr, path).await.filter(|(s, _)| *s == status).map(|_| ())
    })
    .await;
}

/// Starts `submit` of `script` (which records its run as `running`) on the agent, and waits
/// until the script runs.
async fn submit_running(agent_id: &str, script: &str, markers: &Markers) -> tokio::process::Child {
    let submit = dispatcher_command()
        .args(["submit", "--target", agent_id, "--", script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the script to run", Duration::from_secs(20), || async {
        (markers.count("running") == 1).then_some(())
    })
    .await;
    submit
}

/// A script that records its run as `name`, then waits (at most 20 s) for `release` to exist.
fn held_until(markers: &Markers, name: &str, release: &std::path::Path) -> String {
    format!(
        "{}; i=0; while [ ! -e '{}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
        markers.record(name),
        release.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_id_key_prefix_and_work_dir_from_flags_and_from_the_environment() {
    for from_env in [false, true] {
        let config = test_config(if from_env { "env-ids" } else { "flag-ids" });
        let command = if from_env {
            let mut command = bare_agent();
            command
                .env("CUTTLE_AGENT_ID", &config.agent_id)
                .env("CUTTLE_KEY_PREFIX", &config.key_prefix)
                .env("CUTTLE_WORK_DIR", &config.work_dir);
            command
        } else {
            AgentProcess::command(&config)
        };
        let agent = AgentProcess::spawn_command(config.clone(), command);
        agent.wait_ready().await;
        let out = dispatcher(&["submit", "--target", &config.agent_id, "--", "pwd"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let ticket = ticket_in(&text(&out.stderr));
        let workspace = text(&out.stdout);
        assert!(
            workspace.trim().starts_with(config.work_dir.to_str().unwrap()),
            "the script runs in the work dir {}: {workspace}",
            config.work_dir.display()
        );
        let record = format!("{}ticket:{}", config.key_prefix, ticket.to_lowercase());
        assert_ne!(pttl(&record).await, -2, "the ticket is kept under the key prefix: {record}");
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_store_urls_from_the_environment_are_used_and_flags_beat_them() {
    let unreachable_broker = "amqp://guest:guest@127.0.0.1:1/%2f";
    let unreachable_store = "redis://127.0.0.1:1";

    // From the environment alone: the agent tries exactly those and says so.
    let config = test_config("env-urls");
    let mut command = AgentProcess::command(&config);
    command.env("CUTTLE_AMQP_URL", unreachable_broker);
    let broker_down = AgentProcess::spawn_command(config, command);
    let config = test_config("env-urls");
    let mut command = AgentProcess::command(&config);
    command.env("CUTTLE_REDIS_URL", unreachable_store);
    let store_down = AgentProcess::spawn_command(config, command);
    eventually("both agents to report what they cannot reach", Duration::from_secs(20), || async {
        (broker_down.log_text().contains("lost the broker")
            && store_down.log_text().contains("cannot reach the ticket store"))
        .then_some(())
    })
    .await;
    assert!(!broker_down.log_text().contains("consuming commands"));
    assert!(!store_down.log_text().contains("consuming commands"));
    broker_down.stop().await;
    store_down.stop().await;

    // Flags come before the environment.
    let config = test_config("flag-urls");
    let mut command = AgentProcess::command(&config);
    command.env("CUTTLE_AMQP_URL", unreachable_broker).env("CUTTLE_REDIS_URL", unreachable_store).args([
        "--amqp-url",
        &amqp_url(),
        "--redis-url",
        &redis_url(),
    ]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let out = dispatcher(&["submit", "--target", &config.agent_id, "--", "echo ok"]).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "ok\n".to_string()));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_addr_serves_probes_that_follow_the_agent_through_drain() {
    let config = test_config("probes");
    let addr = probe_addr();
    let mut command = AgentProcess::command(&config);
    command.args(["--health-addr", &addr.to_string(), "--drain-timeout", "20s"]);
    let mut agent = AgentProcess::spawn_command(config.clone(), command);
    probe_answers(addr, "/readyz", 200).await;
    assert_eq!(http_get(addr, "/livez").await.map(|r| r.0), Some(200));
    assert_eq!(http_get(addr, "/nope").await.map(|r| r.0), Some(404));

    // A running script holds the drain: not ready (no new work), still alive.
    let markers = Markers::new();
    let release = markers.dir.join("release");
    let submit = submit_running(&config.agent_id, &held_until(&markers, "running", &release), &markers).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    probe_answers(addr, "/readyz", 503).await;
    assert_eq!(http_get(addr, "/livez").await.map(|r| r.0), Some(200), "alive while draining");
    std::fs::write(&release, "").unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), agent.wait()).await.expect("the agent stops");
    assert_eq!(status.code(), Some(0));
    assert!(http_get(addr, "/livez").await.is_none(), "probes end with the process");
    drop(submit);
    agent.stop().await;

    // From the environment, served before the store answers: alive, not ready.
    let config = test_config("env-probes");
    let addr = probe_addr();
    let mut command = AgentProcess::command(&config);
    command.env("CUTTLE_HEALTH_ADDR", addr.to_string()).env("CUTTLE_REDIS_URL", "redis://127.0.0.1:1");
    let agent = AgentProcess::spawn_command(config, command);
    probe_answers(addr, "/livez", 200).await;
    assert_eq!(http_get(addr, "/readyz").await.map(|r| r.0), Some(503));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cancels_what_still_runs_and_the_dispatcher_reports_cancelled() {
    let config = test_config("drain");
    let mut command = AgentProcess::command(&config);
    command.args(["--drain-timeout", "1s"]);
    let mut agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let markers = Markers::new();
    let done = markers.dir.join("done");
    let script = format!("{}; sleep 30; touch '{}'", markers.record("running"), done.display());
    let submit = submit_running(&config.agent_id, &script, &markers).await;
    let stopping = std::time::Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(15), agent.wait()).await.expect("the agent stops");
    assert_eq!(status.code(), Some(0));
    assert!(stopping.elapsed() < Duration::from_secs(10), "stopped after the 1s drain: {:?}", stopping.elapsed());
    // The agent comes back; the dispatcher, still asking, hears that the script was cancelled.
    agent.restart().await;
    let out = tokio::time::timeout(Duration::from_secs(40), submit.wait_with_output())
        .await
        .expect("the dispatcher ends")
        .unwrap();
    assert_eq!(out.status.code(), Some(106), "{}", text(&out.stderr));
    assert!(!done.exists(), "the script was stopped");
    assert_eq!(markers.count("running"), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_agent_like_sigterm() {
    let config = test_config("sigint");
    let mut agent = AgentProcess::start(config).await;
    agent.signal(nix::sys::signal::Signal::SIGINT);
    let status = tokio::time::timeout(Duration::from_secs(15), agent.wait()).await.expect("the agent stops");
    assert_eq!(status.code(), Some(0));
    assert!(agent.log_text().contains("stopping: taking no more work"));
    agent.stop().await;
}

async fn cleanup_pool(pool: &str) {
    tests::raw::delete_queue(&pool_queue(pool)).await;
    tests::raw::delete_queue(&pool_service_queue(pool)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_from_the_flag_or_the_environment_joins_the_pool() {
    for from_env in [false, true] {
        let pool = unique("pool-flag");
        let mut config = test_config("pool-flag");
        let mut command = AgentProcess::command(&config);
        if from_env {
            command.env("CUTTLE_POOL", &pool);
        } else {
            command.args(["--pool", &pool]);
        }
        config.pool = Some(pool.clone());
        let agent = AgentProcess::spawn_command(config, command);
        agent.wait_ready().await;
        let out = dispatcher(&["submit", "--pool", &pool, "--", "echo \"$CUTTLE_AGENT_ID\""]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), agent.config.agent_id);
        agent.stop().await;
        cleanup_pool(&pool).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_scripts_from_the_flag_or_the_environment_bounds_running_scripts() {
    for from_env in [false, true] {
        let config = test_config("max-scripts");
        let mut command = AgentProcess::command(&config);
        if from_env {
            command.env("CUTTLE_MAX_SCRIPTS", "1");
        } else {
            command.args(["--max-scripts", "1"]);
        }
        let agent = AgentProcess::spawn_command(config.clone(), command);
        agent.wait_ready().await;
        let markers = Markers::new();
        let release = markers.dir.join("release");
        let first = held_until(&markers, "first", &release);
        let submit = |script: String| {
            let id = config.agent_id.clone();
            tokio::spawn(async move { dispatcher(&["submit", "--target", &id, "--", &script]).await })
        };
        let first = submit(first);
        eventually("the first script to run", Duration::from_secs(20), || async {
            (markers.count("first") == 1).then_some(())
        })
        .await;
        let second = submit(markers.record("second"));
        // The second start waits for the only place; give it time to (wrongly) start.
        let waited = tokio::time::timeout(Duration::from_millis(1500), async {
            while markers.count("second") == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(waited.is_err(), "a second script started while the only place was taken");
        std::fs::write(&release, "").unwrap();
        assert_eq!(first.await.unwrap().status.code(), Some(0));
        assert_eq!(second.await.unwrap().status.code(), Some(0));
        assert_eq!(markers.count("second"), 1);
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_local_keeps_tickets_in_the_work_dir_not_in_redis() {
    let mut config = test_config("store-flag");
    config.store = worker_agent::config::StoreKind::Local;
    let agent = AgentProcess::start(config.clone()).await;
    let out = dispatcher(&["submit", "--target", &config.agent_id, "--", "echo local"]).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "local\n".to_string()));
    let ticket = ticket_in(&text(&out.stderr));
    assert!(config.work_dir.join(worker_agent::LOCAL_STORE_FILE).exists());
    assert_eq!(pttl(&format!("{}ticket:{}", config.key_prefix, ticket.to_lowercase())).await, -2, "not in Redis");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_v1_makes_a_legacy_agent() {
    let config = tests::agent::legacy_config("protocol-flag");
    // An agent from before signed commands cannot check them: it must be told to run unsigned ones.
    let secure = AgentConfig { insecure_allow_unsigned: false, ..config.clone() };
    let refused = AgentProcess::command(&secure).stderr(Stdio::piped()).output().await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("--protocol v1") && text(&refused.stderr).contains("--insecure-allow-unsigned")
    );
    let agent = AgentProcess::start(config.clone()).await;
    let out = dispatcher(&["capabilities", &config.agent_id]).await;
    assert!(text(&out.stdout).contains("legacy agent"), "{}", text(&out.stdout));
    agent.stop().await;
}

/// The prefetch of the consumer on `queue`, from `rabbitmqctl`.
async fn consumer_prefetch(queue: &str) -> Option<u64> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_consumers", "-q", "--no-table-headers", "queue_name", "prefetch_count"])
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    let text = text(&out.stdout);
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(queue))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_sets_the_consumers_prefetch() {
    tests::skip_unless!(tests::needs::shared_rabbitmqctl());
    let config = test_config("prefetch");
    let mut command = AgentProcess::command(&config);
    command.args(["--prefetch", "7"]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let queue = agent_queue(&config.agent_id);
    let prefetch = eventually("the consumer to be listed", Duration::from_secs(20), || consumer_prefetch(&queue)).await;
    assert_eq!(prefetch, 7);
    agent.stop().await;
}

/// Starts `script` with `submit --json` on the agent and gives the ticket and the running child.
async fn submit_json(agent_id: &str, script: &str) -> (String, tokio::process::Child) {
    let mut child = dispatcher_command()
        .args(["submit", "--json", "--target", agent_id, "--", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first).await.unwrap();
    let event: serde_json::Value = serde_json::from_str(&first).unwrap();
    (event["ticket"].as_str().unwrap().to_owned(), child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ttl_sets_the_lease_of_a_running_ticket() {
    let mut config: AgentConfig = test_config("lease-flag");
    config.lease_ttl = Duration::from_millis(1500);
    let agent = AgentProcess::start(config.clone()).await;
    let (ticket, submit) = submit_json(&config.agent_id, "sleep 5").await;
    let lease = format!("{}lease:{}", config.key_prefix, ticket.to_lowercase());
    let left = eventually("the lease to be taken", Duration::from_secs(20), || async {
        let left = pttl(&lease).await;
        (left > 0).then_some(left)
    })
    .await;
    assert!(left <= 1500, "a lease of --lease-ttl 1500ms, not the default 15s: {left} ms left");
    drop(submit);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstone_ttl_sets_how_long_a_completed_ticket_without_a_deadline_is_remembered() {
    let config = test_config("tombstone-flag");
    let mut command = AgentProcess::command(&config);
    command.args(["--tombstone-ttl", "3h"]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    // Script v1 commands carry no deadline (other tombstones live until their command's deadline:
    // tests/tests/capacity.rs).
    let out = dispatcher(&["--protocol", "v1", "submit", "--target", &config.agent_id, "--", "true"]).await;
    assert_eq!(out.status.code(), Some(0));
    let record = format!("{}ticket:{}", config.key_prefix, ticket_in(&text(&out.stderr)).to_lowercase());
    let hour: i64 = 3600 * 1000;
    let left = eventually("the tombstone to be written", Duration::from_secs(20), || async {
        let left = pttl(&record).await;
        (left > 0 && left <= 3 * hour).then_some(left)
    })
    .await;
    assert!(left > 2 * hour, "kept 3h (the default is 1h): {left} ms");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_sets_what_the_agent_logs() {
    let config = test_config("rust-log");
    let addr = probe_addr();
    let mut command = AgentProcess::command(&config);
    command.env("RUST_LOG", "warn").args(["--health-addr", &addr.to_string()]);
    let quiet = AgentProcess::spawn_command(config, command);
    probe_answers(addr, "/readyz", 200).await;
    assert!(!quiet.log_text().contains("consuming commands"), "{}", quiet.log_text());
    quiet.stop().await;

    // Unset, the agent logs at info.
    let config = test_config("rust-log");
    let mut command = AgentProcess::command(&config);
    command.env_remove("RUST_LOG");
    let chatty = AgentProcess::spawn_command(config, command);
    chatty.wait_ready().await;
    chatty.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_env_from_the_flag_or_the_environment_is_all_scripts_get_of_the_agents_environment() {
    for from_env in [false, true] {
        let config = test_config(if from_env { "env-pass-env" } else { "flag-pass-env" });
        let mut command = AgentProcess::command(&config);
        command.env("AGENT_ONLY_SECRET", "s3cret").env("FOR_SCRIPTS", "shared").env("ALSO_FOR_SCRIPTS", "too");
        if from_env {
            command.env("CUTTLE_PASS_ENV", "FOR_SCRIPTS,ALSO_FOR_SCRIPTS");
        } else {
            command.args(["--pass-env", "FOR_SCRIPTS", "--pass-env", "ALSO_FOR_SCRIPTS"]);
        }
        let agent = AgentProcess::spawn_command(config.clone(), command);
        agent.wait_ready().await;
        let out = dispatcher(&["submit", "--target", &config.agent_id, "--env", "MINE=1", "--", "env"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let mut names: Vec<String> =
            text(&out.stdout).lines().filter_map(|l| l.split_once('=')).map(|(name, _)| name.to_owned()).collect();
        names.sort();
        // `sh` itself adds PWD (and dash nothing else); everything else comes from the agent.
        names.retain(|n| n != "PWD" && n != "OLDPWD" && n != "SHLVL" && n != "_");
        let mut expected: Vec<String> = ["PATH", "HOME", "USER", "LANG"]
            .into_iter()
            .filter(|n| std::env::var_os(n).is_some() || *n == "PATH")
            .chain(["FOR_SCRIPTS", "ALSO_FOR_SCRIPTS", "MINE", "CUTTLE_TICKET", "CUTTLE_AGENT_ID"])
            .map(String::from)
            .collect();
        expected.sort();
        assert_eq!(names, expected, "{}", text(&out.stdout));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("FOR_SCRIPTS=shared") && stdout.contains("ALSO_FOR_SCRIPTS=too"), "{stdout}");
        assert!(!stdout.contains("s3cret") && !stdout.contains("guest"), "no secret reaches the script: {stdout}");
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_dir_of_another_user_or_writable_by_others_is_refused_and_the_default_is_private() {
    tests::skip_unless!(tests::needs::root());
    use std::os::unix::fs::PermissionsExt;
    let open_to_all = test_config("wd-open");
    std::fs::create_dir_all(&open_to_all.work_dir).unwrap();
    std::fs::set_permissions(&open_to_all.work_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let foreign = test_config("wd-foreign");
    std::fs::create_dir_all(&foreign.work_dir).unwrap();
    std::fs::set_permissions(&foreign.work_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Give the dir to `nobody` (root may).
    std::os::unix::fs::chown(&foreign.work_dir, Some(65534), None).expect("root may give a dir away");
    for (config, refusal) in [(open_to_all, "writable by its group or others"), (foreign, "is owned by uid")] {
        let mut agent = AgentProcess::spawn_command(config.clone(), AgentProcess::command(&config));
        let status = tokio::time::timeout(Duration::from_secs(20), agent.wait()).await.expect("the agent exits");
        assert!(!status.success());
        assert!(agent.log_text().contains(refusal), "{}", agent.log_text());
        agent.stop().await;
    }

    // No --work-dir: private, out of /tmp.
    let config = test_config("wd-default");
    let default = worker_agent::workspace::default_work_dir(&config.agent_id);
    let mut command = bare_agent();
    command.args(["--agent-id", &config.agent_id, "--key-prefix", &config.key_prefix]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let out = dispatcher(&["submit", "--target", &config.agent_id, "--", "pwd"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).trim().starts_with(default.to_str().unwrap()),
        "{} in {}",
        text(&out.stdout),
        default.display()
    );
    assert!(!default.starts_with(std::env::temp_dir()));
    let mode = std::fs::metadata(&default).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    agent.stop().await;
    std::fs::remove_dir_all(&default).unwrap();
}

/// A work dir below a directory everyone may write that is not sticky (anyone could rename the
/// work dir away and put their own in its place) is refused at start, naming that directory, its
/// owner and its mode; once the directory is sticky, as /tmp is (where the tests' agents run), the
/// same work dir is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_dir_below_a_directory_writable_by_all_is_refused_unless_it_is_sticky() {
    use std::os::unix::fs::PermissionsExt;
    let mut config = test_config("wd-open-parent");
    let base = config.work_dir.clone();
    let open = base.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    config.work_dir = open.join("work");
    let mut agent = AgentProcess::spawn_command(config.clone(), AgentProcess::command(&config));
    let status = tokio::time::timeout(Duration::from_secs(20), agent.wait()).await.expect("the agent exits");
    let log = agent.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    let refusal =
        format!("{}, on the way to it, is writable by its group or others without the sticky bit", open.display());
    let uid = nix::unistd::geteuid().as_raw();
    assert!(log.contains(&refusal) && log.contains(&format!("(owner uid {uid}, mode 777)")), "{log}");
    assert!(!log.contains("consuming commands"), "{log}");
    agent.stop().await;

    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let agent = AgentProcess::start(config).await;
    agent.stop().await;
    std::fs::remove_dir_all(&base).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_on_a_terminal_shows_control_sequences_escaped_unless_raw() {
    let agent = TestAgent::start("terminal").await;
    let script = r"printf '\033]0;pwned\007\033[2Jdone\n'";
    let submit = |raw: bool| {
        let mut command = dispatcher_command();
        command.args(["submit", "--target", agent.id()]).args(raw.then_some("--raw")).args(["--", script]);
        command
    };
    let (status, shown) = output_on_terminal(submit(false)).await;
    assert!(status.success());
    let shown_text = text(&shown);
    assert!(shown_text.contains(r"\x1b]0;pwned\x07\x1b[2Jdone"), "{shown_text:?}");
    assert!(!shown.contains(&0x1b), "no escape reaches the terminal: {shown_text:?}");
    let (status, raw) = output_on_terminal(submit(true)).await;
    assert!(status.success());
    assert!(text(&raw).contains("\x1b]0;pwned\x07\x1b[2Jdone"), "{:?}", text(&raw));
    // Not a terminal: passed on as it is.
    let piped = dispatcher(&["submit", "--target", agent.id(), "--", script]).await;
    assert_eq!(text(&piped.stdout), "\x1b]0;pwned\x07\x1b[2Jdone\n");
    agent.stop().await;
}

/// Runs a command to its end (at most a minute).
async fn finish(command: &mut tokio::process::Command) -> Output {
    let output = command.stdout(Stdio::piped()).stderr(Stdio::piped()).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("finishes").expect("runs")
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_writes_a_private_key_once_and_public_key_prints_it_again() {
    let markers = Markers::new();
    let dispatcher_key = markers.dir.join("d.key");
    let agent_key = markers.dir.join("a.key");
    let out = dispatcher(&["keygen", "--out", dispatcher_key.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dispatcher_public = text(&out.stdout);
    assert!(dispatcher_public.starts_with("ed25519:") && dispatcher_public.lines().count() == 1);
    let out = finish(agent_command().args(["keygen", "--out", agent_key.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let agent_public = text(&out.stdout);
    assert!(agent_public.starts_with("ed25519:") && agent_public != dispatcher_public);
    assert_eq!((mode(&dispatcher_key), mode(&agent_key)), (0o600, 0o600));

    // Never over an existing key.
    let before = std::fs::read(&dispatcher_key).unwrap();
    let out = dispatcher(&["keygen", "--out", dispatcher_key.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
    let out = finish(agent_command().args(["keygen", "--out", dispatcher_key.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&dispatcher_key).unwrap(), before);

    // The public key again, from the flag or the environment.
    let out = dispatcher(&["--key", dispatcher_key.to_str().unwrap(), "public-key"]).await;
    assert_eq!(text(&out.stdout), dispatcher_public);
    let out = finish(dispatcher_command().env("CUTTLE_DISPATCHER_KEY", &dispatcher_key).arg("public-key")).await;
    assert_eq!(text(&out.stdout), dispatcher_public);
    let out = finish(agent_command().args(["public-key", "--key", agent_key.to_str().unwrap()])).await;
    assert_eq!(text(&out.stdout), agent_public);
    let out = finish(agent_command().env("CUTTLE_AGENT_KEY", &agent_key).arg("public-key")).await;
    assert_eq!(text(&out.stdout), agent_public);
}

/// A file with one line.
fn file_with(markers: &Markers, name: &str, line: &str) -> std::path::PathBuf {
    let path = markers.dir.join(name);
    std::fs::write(&path, format!("{line}\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_key_is_created_where_the_flag_the_environment_or_the_default_says() {
    let markers = Markers::new();
    // Default: <work-dir>/agent.key, created on first start, its known-agents line logged.
    let config = test_config("default-key");
    let mut command = bare_agent();
    command
        .env_remove("CUTTLE_AGENT_KEY")
        .args(["--agent-id", &config.agent_id, "--key-prefix", &config.key_prefix])
        .arg("--work-dir")
        .arg(&config.work_dir);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let default_key = config.work_dir.join("agent.key");
    let public = text(&finish(agent_command().args(["public-key", "--key"]).arg(&default_key)).await.stdout);
    let logged = format!("{} {}", config.agent_id, public.trim());
    assert!(agent.log_text().contains("created the agent key") && agent.log_text().contains(&logged));
    assert_eq!(mode(&default_key), 0o600);
    agent.stop().await;

    // The flag, then the environment: each names where the key is (created there).
    for from_env in [false, true] {
        let mut config = test_config("named-key");
        let key = markers.dir.join(format!("{}.key", config.agent_id));
        let command = if from_env {
            let mut bare = bare_agent();
            bare.env("CUTTLE_AGENT_KEY", &key)
                .args(["--agent-id", &config.agent_id, "--key-prefix", &config.key_prefix])
                .arg("--work-dir")
                .arg(&config.work_dir);
            bare
        } else {
            config.key_file = Some(key.clone());
            AgentProcess::command(&config)
        };
        let agent = AgentProcess::spawn_command(config.clone(), command);
        agent.wait_ready().await;
        assert!(key.exists(), "the key is created at {}", key.display());
        // Believed only under that key: pinned to it, the agent's answers count.
        let public = text(&finish(agent_command().args(["public-key", "--key"]).arg(&key)).await.stdout);
        let known = file_with(
            &markers,
            &format!("{}-known", config.agent_id),
            &format!("{} {}", config.agent_id, public.trim()),
        );
        let out = dispatcher(&[
            "--known-agents",
            known.to_str().unwrap(),
            "submit",
            "--target",
            &config.agent_id,
            "--",
            "echo ok",
        ])
        .await;
        assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "ok\n".to_string()), "{}", text(&out.stderr));
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_keys_are_required_and_insecure_allow_unsigned_runs_unsigned_commands_loudly() {
    // None given: the agent refuses to start and says how to fix it.
    let config = test_config("no-trusted-keys");
    let mut command = bare_agent();
    command.env_remove("CUTTLE_TRUSTED_KEYS").args(["--agent-id", &config.agent_id]);
    let out = finish(&mut command).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no trusted dispatcher keys") && stderr.contains("--trusted-keys"), "{stderr}");

    // A file that does not hold the test dispatcher's key: its commands are refused.
    let markers = Markers::new();
    let (stranger, _) = tests::trust::keypair("stranger");
    let mut config = test_config("other-trusted-keys");
    config.trusted_keys_file = Some(file_with(&markers, "trusted", &format!("{} someone else", stranger.public())));
    let agent = AgentProcess::start(config.clone()).await;
    let out = dispatcher(&["submit", "--target", &config.agent_id, "--", &markers.record("refused")]).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not trust"), "{}", text(&out.stderr));
    assert_eq!(markers.count("refused"), 0);
    agent.stop().await;

    // From the environment, the same.
    let config = test_config("env-trusted-keys");
    let mut command = bare_agent();
    command.env("CUTTLE_TRUSTED_KEYS", markers.dir.join("trusted")).args(["--agent-id", &config.agent_id]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let out = dispatcher(&["submit", "--target", &config.agent_id, "--", &markers.record("refused")]).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    agent.stop().await;

    // --insecure-allow-unsigned: starts without trusted keys, warns, and runs an unsigned command.
    let config = test_config("insecure");
    let mut command = bare_agent();
    command.env_remove("CUTTLE_TRUSTED_KEYS").args(["--agent-id", &config.agent_id, "--insecure-allow-unsigned"]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    assert!(agent.log_text().contains("UNSIGNED commands from anyone"), "{}", agent.log_text());
    let start = contracts::wire::envelope::Request::StartScriptV2(contracts::wire::messages::StartScriptV2 {
        ticket: edge::entropy::ticket(),
        spec: sh(markers.record("unsigned")),
        wait_for_output: None,
        first_issued_at: None,
    });
    let now = contracts::time::unix_millis(std::time::SystemTime::now());
    let (_, bytes) = start.encode(&config.agent_id, now, Some(now + 60_000), &mut edge::entropy::OsEntropy).unwrap();
    let raw = RawBroker::connect().await;
    raw.publish_to(&agent_queue(&config.agent_id), "StartScriptV2", &bytes, None).await;
    eventually("the unsigned command to run", Duration::from_secs(20), || async {
        (markers.count("unsigned") == 1).then_some(())
    })
    .await;
    assert!(agent.log_text().contains("accepting an UNSIGNED command"), "{}", agent.log_text());
    raw.close().await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_key_and_known_agents_from_flags_the_environment_and_the_config_dir() {
    let markers = Markers::new();
    let config_home = markers.dir.join("config");
    let cuttle_dir = config_home.join("cuttle");
    // The default key is created on first use, with the line to give agents.
    let mut command = dispatcher_command();
    command
        .env_remove("CUTTLE_DISPATCHER_KEY")
        .env_remove("CUTTLE_KNOWN_AGENTS")
        .env("XDG_CONFIG_HOME", &config_home)
        .args(["capabilities", "t-nobody-pinned"]);
    let out = finish(&mut command).await;
    assert!(text(&out.stderr).contains("created a dispatcher key at"), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "t-nobody-pinned is not in the empty known agents");
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains(&format!("is not pinned in {}", cuttle_dir.join("known_agents").display())), "{said}");
    let default_key = cuttle_dir.join("dispatcher.key");
    assert_eq!(mode(&default_key), 0o600);

    // An agent that trusts only that key, pinned in the default known-agents file.
    let public = text(&dispatcher(&["--key", default_key.to_str().unwrap(), "public-key"]).await.stdout);
    let mut config = test_config("default-dispatcher");
    config.trusted_keys_file = Some(file_with(&markers, "trusted", public.trim()));
    let agent = AgentProcess::start(config.clone()).await;
    let pin = format!("{} {}", config.agent_id, tests::trust::keys().agent.public());
    std::fs::write(cuttle_dir.join("known_agents"), format!("{pin}\n")).unwrap();
    let submit = |key: Option<&std::path::Path>, known: Option<&std::path::Path>, flags: bool| {
        let mut command = dispatcher_command();
        command
            .env_remove("CUTTLE_DISPATCHER_KEY")
            .env_remove("CUTTLE_KNOWN_AGENTS")
            .env("XDG_CONFIG_HOME", &config_home);
        match (key, flags) {
            (Some(key), true) => command.arg("--key").arg(key),
            (Some(key), false) => command.env("CUTTLE_DISPATCHER_KEY", key),
            (None, _) => &mut command,
        };
        match (known, flags) {
            (Some(known), true) => command.arg("--known-agents").arg(known),
            (Some(known), false) => command.env("CUTTLE_KNOWN_AGENTS", known),
            (None, _) => &mut command,
        };
        command.args(["submit", "--target", &config.agent_id, "--", "echo ok"]);
        command
    };
    let out = finish(&mut submit(None, None, false)).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "ok\n".to_string()), "{}", text(&out.stderr));

    // Another key, by flag or environment: the agent refuses what it signs.
    let test_key = &tests::trust::keys().dispatcher_key;
    for flags in [true, false] {
        let out = finish(&mut submit(Some(test_key), None, flags)).await;
        assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    }
    // Other known agents, by flag or environment: not pinned there, nothing is sent.
    let empty = file_with(&markers, "known-empty", "# nobody");
    for flags in [true, false] {
        let out = finish(&mut submit(None, Some(&empty), flags)).await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("is not pinned in"), "{}", text(&out.stderr));
    }
    agent.stop().await;
}
