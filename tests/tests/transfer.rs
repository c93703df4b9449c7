//! File transfer through the real binaries: `dispatcher upload` and `download` against agents with
//! transfer roots; 200 MiB each way byte-identical over broker links (the agent's and the
//! dispatcher's) reset every second; an upload interrupted by
//! Ctrl-C resumes; paths outside the roots (or through a link out of them) are refused, and so is
//! an upload onto a link; a legacy agent is reported too old.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use tests::proxy::FaultProxy;
use tests::*;

/// `dispatcher ARGS` to its end, through the broker at `amqp_url`.
async fn run(amqp_url: &str, args: &[&str], within: Duration) -> Output {
    let output = dispatcher_command().env("CUTTLE_AMQP_URL", amqp_url).args(args).output();
    tokio::time::timeout(within, output).await.expect("dispatcher finishes").expect("dispatcher runs")
}

/// An agent (in this process) with a transfer root of its own, and a local directory.
struct Setup {
    agent: TestAgent,
    root: PathBuf,
    local: Markers,
}

async fn setup(what: &str) -> Setup {
    let local = Markers::new();
    let root = local.dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let mut config = tests::agent::test_config(what);
    config.transfer_roots = vec![root.clone()];
    Setup { agent: TestAgent::start_with(config).await, root, local }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_both_ways_and_paths_outside_the_roots_are_refused() {
    let s = setup("xfer-basic").await;
    let id = s.agent.id().to_owned();
    let source = s.local.dir.join("app.bin");
    write_random(&source, 3 * 1024 * 1024 + 5, 7);
    let out = run(&amqp_url(), &["upload", "--target", &id, source.to_str().unwrap(), "app.bin"], secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(same_content(&source, &s.root.join("app.bin")));
    assert!(text(&out.stderr).contains("uploaded 3145733 bytes"), "{}", text(&out.stderr));
    let back = s.local.dir.join("back.bin");
    let remote = s.root.join("app.bin");
    let out =
        run(&amqp_url(), &["download", "--target", &id, remote.to_str().unwrap(), back.to_str().unwrap()], secs(60))
            .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(same_content(&source, &back));
    let leftovers: Vec<_> = std::fs::read_dir(&s.root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no partial file is left: {leftovers:?}");

    let outside = s.local.dir.join("outside.bin");
    let out =
        run(&amqp_url(), &["upload", "--target", &id, source.to_str().unwrap(), outside.to_str().unwrap()], secs(60))
            .await;
    assert_eq!(out.status.code(), Some(103));
    assert!(text(&out.stderr).contains("outside the transfer roots"), "{}", text(&out.stderr));
    assert!(!outside.exists());
    std::os::unix::fs::symlink(&s.local.dir, s.root.join("escape")).unwrap();
    let out =
        run(&amqp_url(), &["download", "--target", &id, "escape/app.bin", back.to_str().unwrap()], secs(60)).await;
    assert_eq!(out.status.code(), Some(103), "a link out of the root is not followed: {}", text(&out.stderr));
    std::os::unix::fs::symlink(&source, s.root.join("linked.bin")).unwrap();
    let out = run(&amqp_url(), &["download", "--target", &id, "linked.bin", back.to_str().unwrap()], secs(60)).await;
    assert_eq!(out.status.code(), Some(103), "a linked file is not followed: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("symbolic link"), "{}", text(&out.stderr));
    s.agent.stop().await;

    let rootless = TestAgent::start("xfer-rootless").await;
    let out =
        run(&amqp_url(), &["upload", "--target", rootless.id(), source.to_str().unwrap(), "/tmp/x"], secs(60)).await;
    assert_eq!(out.status.code(), Some(103));
    assert!(text(&out.stderr).contains("no --transfer-root"), "{}", text(&out.stderr));
    rootless.stop().await;
}

/// An upload whose remote path is a symbolic link (here, to a file outside the root) is refused
/// (exit 103, saying so): the link and the file it names are left as they were, and no partial
/// file is left behind. (Before, the upload was renamed over the link, replacing it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_onto_a_link_is_refused_and_changes_neither_the_link_nor_its_target() {
    let s = setup("xfer-onto-link").await;
    let outside = s.local.dir.join("outside.txt");
    std::fs::write(&outside, "not for uploads").unwrap();
    let link = s.root.join("linked.txt");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let source = s.local.dir.join("new.txt");
    std::fs::write(&source, "uploaded").unwrap();
    for remote in ["linked.txt", link.to_str().unwrap()] {
        let out =
            run(&amqp_url(), &["upload", "--target", s.agent.id(), source.to_str().unwrap(), remote], secs(60)).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(103), "{stderr}");
        assert!(stderr.contains("is a symbolic link: an upload neither follows nor replaces one"), "{stderr}");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is still a link");
        assert_eq!(std::fs::read_link(&link).unwrap(), outside, "naming the same file");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "not for uploads", "which is unchanged");
        assert!(partial_in(&s.root).is_none(), "no partial file left");
    }
    s.agent.stop().await;
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_agent_is_reported_too_old() {
    let agent = TestAgent::start_with(tests::agent::legacy_config("xfer-legacy")).await;
    let local = Markers::new();
    let source = local.dir.join("a");
    std::fs::write(&source, "a").unwrap();
    let out = run(&amqp_url(), &["upload", "--target", agent.id(), source.to_str().unwrap(), "a"], secs(60)).await;
    assert_eq!(out.status.code(), Some(103));
    assert!(text(&out.stderr).contains("too old for file transfer"), "{}", text(&out.stderr));
    let out = run(&amqp_url(), &["download", "--target", agent.id(), "a", source.to_str().unwrap()], secs(60)).await;
    assert!(text(&out.stderr).contains("too old for file transfer"), "{}", text(&out.stderr));
    agent.stop().await;
}

/// The partial file an upload is writing in `root`, and its length.
fn partial_in(root: &Path) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(root).ok()?.filter_map(Result::ok).find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.ends_with(".cuttle-part").then(|| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_interrupted_by_ctrl_c_resumes_where_it_stopped() {
    let s = setup("xfer-resume").await;
    let source = s.local.dir.join("big.bin");
    write_random(&source, 48 * 1024 * 1024, 11);
    let args = ["upload", "--target", s.agent.id(), source.to_str().unwrap(), "big.bin"];
    let first = dispatcher_command().args(args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let held = eventually("part of the upload on the agent", secs(60), || async {
        partial_in(&s.root).filter(|(_, len)| *len >= 4 * 1024 * 1024).map(|(_, len)| len)
    })
    .await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.id().unwrap() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let out = tokio::time::timeout(secs(30), first.wait_with_output()).await.unwrap().unwrap();
    assert!(!out.status.success(), "interrupted: {}", text(&out.stderr));
    assert!(!s.root.join("big.bin").exists());
    let (_, kept) = partial_in(&s.root).expect("the partial file stays for a new run");
    assert!(kept >= held);
    let out = run(&amqp_url(), &args, secs(120)).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let resumed: u64 = stderr.split("resumed at byte ").nth(1).expect("resumed").trim().parse().unwrap();
    assert!(resumed >= kept, "resumed at {resumed}, {kept} were held");
    assert!(same_content(&source, &s.root.join("big.bin")));
    assert!(partial_in(&s.root).is_none());
    s.agent.stop().await;
}

/// The dispatcher's link is lost during an upload under `--no-retries`: the upload ends with
/// 105 (contact lost for good, as a script's lost link ends), not 110 (no answer before the
/// retry deadline), says the link was lost and to run it again, and a new run resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_link_is_lost_under_no_retries_exits_with_contact_lost() {
    let s = setup("xfer-lost").await;
    let link = FaultProxy::start(tests::proxy::broker_addr()).await;
    let source = s.local.dir.join("big.bin");
    write_random(&source, 32 * 1024 * 1024, 17);
    let args = ["upload", "--no-retries", "--target", s.agent.id(), source.to_str().unwrap(), "big.bin"];
    let upload = dispatcher_command()
        .env("CUTTLE_AMQP_URL", link.amqp_url())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("part of the upload on the agent", secs(60), || async {
        partial_in(&s.root).filter(|(_, len)| *len >= 2 * 1024 * 1024)
    })
    .await;
    link.reset_all();
    let (code, stderr) = ended(upload, secs(30)).await;
    assert_eq!(code, Some(105), "{stderr}");
    assert!(stderr.contains("upload failed: lost the broker connection"), "{stderr}");
    assert!(stderr.contains("run the same command again to resume"), "{stderr}");
    assert!(!s.root.join("big.bin").exists(), "not whole: {stderr}");
    let out = run(&amqp_url(), &args, secs(120)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("resumed at byte "), "{}", text(&out.stderr));
    assert!(same_content(&source, &s.root.join("big.bin")));
    s.agent.stop().await;
}

/// Size of the transfers over links reset every second: 200 MiB; `CUTTLE_TRANSFER_TEST_MIB`
/// sets another.
fn reset_test_bytes() -> usize {
    let mib = std::env::var("CUTTLE_TRANSFER_TEST_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    mib * 1024 * 1024
}

/// An upload (`up`) or a download of [`reset_test_bytes`] between the binaries, the agent's and
/// the dispatcher's broker links both through a proxy that resets every connection each second:
/// the file arrives byte-identical, and links were reset while it travelled.
async fn through_links_reset_every_second(up: bool) {
    let proxy = FaultProxy::start(tests::proxy::broker_addr()).await;
    let local = Markers::new();
    let root = local.dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let mut config = tests::agent::test_config("xfer-resets");
    config.amqp_url = proxy.amqp_url();
    config.transfer_roots = vec![root.clone()];
    let agent = AgentProcess::start(config).await;
    let id = agent.config.agent_id.clone();
    let (local_file, remote_file) = (local.dir.join("large.bin"), root.join("large.bin"));
    write_random(if up { &local_file } else { &remote_file }, reset_test_bytes(), 13);
    let (local_arg, remote_arg) = (local_file.to_str().unwrap(), remote_file.to_str().unwrap());
    let args = match up {
        true => ["upload", "--target", &id, local_arg, remote_arg],
        false => ["download", "--target", &id, remote_arg, local_arg],
    };
    let connected = proxy.accepted();
    let url = proxy.amqp_url();
    let transfer = run(&url, &args, secs(600));
    tokio::pin!(transfer);
    let started = Instant::now();
    let out = loop {
        tokio::select! {
            out = &mut transfer => break out,
            _ = tokio::time::sleep(secs(1)) => proxy.reset_all(),
        }
    };
    let took = started.elapsed();
    let what = if up { "upload" } else { "download" };
    // The dispatcher's first connection aside, every connection made meanwhile replaced one cut.
    let reconnections = proxy.accepted() - connected - 1;
    let mib = reset_test_bytes() >> 20;
    eprintln!("{mib} MiB {what}, links reset every second: {took:?}, {reconnections} reconnections");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(proxy.resets() > 0 && reconnections > 0, "links were cut during the {what}");
    assert!(same_content(&local_file, &remote_file), "{what} byte-identical");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_arrives_byte_identical_over_links_reset_every_second() {
    through_links_reset_every_second(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_arrives_byte_identical_over_links_reset_every_second() {
    through_links_reset_every_second(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retries_means_one_attempt() {
    let s = setup("xfer-once").await;
    s.agent.stop_consuming().await;
    let source = s.local.dir.join("a");
    std::fs::write(&source, "a").unwrap();
    let started = Instant::now();
    let out = run(
        &amqp_url(),
        &["upload", "--no-retries", "--target", s.agent.id(), source.to_str().unwrap(), "a"],
        secs(60),
    )
    .await;
    assert_eq!(out.status.code(), Some(110), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("1 attempt"), "{}", text(&out.stderr));
    assert!(started.elapsed() < secs(30));
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_takes_its_roots_from_the_environment_and_refuses_a_missing_one() {
    let local = Markers::new();
    let root = local.dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let config = tests::agent::test_config("xfer-env");
    let mut command = AgentProcess::command(&config);
    command.env("CUTTLE_TRANSFER_ROOTS", format!("{},{}", root.display(), local.dir.display()));
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let source = local.dir.join("a.txt");
    std::fs::write(&source, "via env").unwrap();
    let out =
        run(&amqp_url(), &["upload", "--target", &config.agent_id, source.to_str().unwrap(), "b.txt"], secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(root.join("b.txt")).unwrap(), "via env", "relative to the first root");
    agent.stop().await;
    let missing = local.dir.join("missing");
    let out = agent_command()
        .args(["run", "--agent-id", &unique("xfer-missing"), "--transfer-root", missing.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--transfer-root"), "{}", text(&out.stderr));
}

/// `PUT` and `GET /v1/files` on the real `dispatcher serve`: the same bearer token as every
/// route, the CLI's chunked and verified transfer, and its errors as HTTP statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_both_ways_through_the_service() {
    let s = setup("xfer-svc").await;
    let id = s.agent.id().to_owned();
    let token = "0123456789abcdef0123456789abcdef";
    let tokens = s.local.dir.join("tokens");
    std::fs::write(&tokens, format!("deployer {token}\n")).unwrap();
    let prefix = tests::service::journal_prefix("xfer-svc");
    let service = ServiceProcess::start(&prefix, &["--api-tokens", tokens.to_str().unwrap()]).await;
    let source = s.local.dir.join("svc.bin");
    write_random(&source, 3 * 1024 * 1024 + 7, 17);
    let content = std::fs::read(&source).unwrap();
    let url = format!("{}/v1/files", service.url);
    let client = tests::service::http();
    let at = |path: &str| vec![("target", id.clone()), ("path", path.to_owned())];

    // (Refused before its body is read: an empty one, so the connection stays usable.)
    let anonymous = client.put(&url).query(&at("svc.bin")).body("").send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let put = client.put(&url).bearer_auth(token).query(&at("svc.bin")).body(content.clone()).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let put: serde_json::Value = put.json().await.unwrap();
    let (size, sha256) = dispatcher::transfer::digest_file(&source).unwrap();
    assert_eq!((put["size"].as_u64(), put["sha256"].as_str()), (Some(size), Some(sha256.as_str())), "{put}");
    assert!(same_content(&source, &s.root.join("svc.bin")), "uploaded byte-identical");

    let anonymous = client.get(&url).query(&at("svc.bin")).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let got = client.get(&url).bearer_auth(token).query(&at("svc.bin")).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.headers()["x-cuttle-sha256"], sha256.as_str());
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice(), "downloaded byte-identical");

    let outside = s.local.dir.join("outside.bin");
    let refused =
        client.put(&url).bearer_auth(token).query(&at(outside.to_str().unwrap())).body("x").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let message: serde_json::Value = refused.json().await.unwrap();
    assert!(message["error"].as_str().unwrap().contains("outside the transfer roots"), "{message}");
    assert!(!outside.exists());
    let missing = client.get(&url).bearer_auth(token).query(&at("missing.bin")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 422, "as the CLI's 103");
    let nobody = vec![("target", unique("xfer-nobody")), ("path", "a".to_owned())];
    let unknown = client.get(&url).bearer_auth(token).query(&nobody).send().await.unwrap();
    assert_eq!(unknown.status().as_u16(), 404, "no such agent, as the CLI's 102");
    let neither = client.get(&url).bearer_auth(token).query(&[("path", "a")]).send().await.unwrap();
    assert_eq!(neither.status().as_u16(), 400);

    service.stop().await;
    tests::service::remove_journal(&prefix).await;
    s.agent.stop().await;
}

/// `--pool`: a transfer stays with the worker that answered it first. Each worker holds a
/// different file at the same path: every download is one of them whole, never a mix; an upload
/// lands whole on one worker, and nothing of it on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_transfer_stays_with_one_worker() {
    let pool = unique("xfer-pool");
    let local = Markers::new();
    let (mut workers, mut roots) = (Vec::new(), Vec::new());
    for i in 0..2 {
        let root = local.dir.join(format!("root{i}"));
        std::fs::create_dir_all(&root).unwrap();
        let root = root.canonicalize().unwrap();
        write_random(&root.join("same.bin"), 4 * 1024 * 1024 + 3, 100 + 2 * i);
        let mut config = tests::agent::test_config("xfer-pool-worker");
        config.pool = Some(pool.clone());
        config.transfer_roots = vec![root.clone()];
        workers.push(TestAgent::start_with(config).await);
        roots.push(root);
    }
    for round in 0..3 {
        let back = local.dir.join(format!("back{round}.bin"));
        let out = run(&amqp_url(), &["download", "--pool", &pool, "same.bin", back.to_str().unwrap()], secs(60)).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(&format!("of pool {pool}")), "names the worker: {}", text(&out.stderr));
        let whole = roots.iter().filter(|root| same_content(&back, &root.join("same.bin"))).count();
        assert_eq!(whole, 1, "one worker's file, whole");
    }
    let source = local.dir.join("up.bin");
    write_random(&source, 5 * 1024 * 1024 + 1, 7);
    let out = run(&amqp_url(), &["upload", "--pool", &pool, source.to_str().unwrap(), "up.bin"], secs(60)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let holders: Vec<_> = roots.iter().filter(|root| root.join("up.bin").exists()).collect();
    assert_eq!(holders.len(), 1, "on one worker");
    assert!(same_content(&source, &holders[0].join("up.bin")));
    assert!(roots.iter().all(|root| partial_in(root).is_none()), "no part of it anywhere else");
    for worker in workers {
        worker.stop().await;
    }
    tests::raw::delete_queue(&contracts::wire::topology::pool_queue(&pool)).await;
    tests::raw::delete_queue(&contracts::wire::topology::pool_service_queue(&pool)).await;
}
