//! Lines the agent's ticket store lost (a Redis failover to a replica without the latest writes,
//! a restart without persistence) are named to the user, through the real binaries: here the
//! tail of a script's output, with nothing stored after it, is removed from Redis under the
//! test agent's own key prefix before the dispatcher reads it.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;
use tests::agent::{test_config, AgentProcess};
use tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// The one key under `prefix` matching `pattern`, once it exists.
async fn key_of(con: &mut redis::aio::MultiplexedConnection, prefix: &str, pattern: &str) -> String {
    let pattern = format!("{prefix}{pattern}");
    eventually(&format!("a key {pattern}"), Duration::from_secs(20), || {
        let (mut con, pattern) = (con.clone(), pattern.clone());
        async move {
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut con).await.ok()?;
            keys.into_iter().next()
        }
    })
    .await
}

/// A script prints three lines, then (once the dispatcher following it is stopped) three more
/// and exits 3. Its last three lines are removed from its stored log before the dispatcher goes
/// on: `dispatcher submit` shows the first three, names lines 4 to 6 as lost by the agent's
/// ticket store, and exits with the script's own code, as after any completed script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tail_of_output_is_named_to_the_user() {
    let config = test_config("lost-tail");
    let prefix = config.key_prefix.clone();
    std::fs::create_dir_all(&config.work_dir).unwrap();
    let go = config.work_dir.join("go");
    let agent = AgentProcess::start(config.clone()).await;
    let script = format!(
        "echo one; echo two; echo three; while [ ! -e {go} ]; do sleep 0.05; done; echo four; echo five; echo six; exit 3",
        go = go.display()
    );
    let mut dispatcher = dispatcher_command()
        .args(["submit", "--target", &config.agent_id, "--", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dispatcher runs");
    let mut stdout = tokio::io::BufReader::new(dispatcher.stdout.take().expect("piped"));
    let mut shown = Vec::new();
    while shown.last().map(String::as_str) != Some("three") {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line)).await;
        assert!(read.expect("the first lines within 30s").expect("stdout") > 0, "ended early: {shown:?}");
        shown.push(line.trim_end().to_owned());
    }
    // Stopped, the dispatcher asks nothing more; the status request it holds at the agent is
    // answered (nothing new) within the wait it asked for, before the script goes on.
    let pid = Pid::from_raw(dispatcher.id().expect("running") as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    std::fs::write(&go, "").unwrap();

    let mut con = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let record = key_of(&mut con, &prefix, "ticket:*").await;
    let log = key_of(&mut con, &prefix, "log:*").await;
    eventually("the run to be recorded as ended", Duration::from_secs(20), || {
        let (mut con, record) = (con.clone(), record.clone());
        async move {
            let raw: Option<String> = redis::cmd("GET").arg(&record).query_async(&mut con).await.ok()?;
            raw.filter(|raw| raw.starts_with("2|d|3|")).map(|_| ())
        }
    })
    .await;
    let stored: usize = redis::cmd("LLEN").arg(&log).query_async(&mut con).await.unwrap();
    assert_eq!(stored, 6, "every line stored before the loss");
    // The store loses the tail: nothing is stored after it.
    let _: () = redis::cmd("LTRIM").arg(&log).arg(0).arg(2).query_async(&mut con).await.unwrap();
    kill(pid, Signal::SIGCONT).unwrap();

    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    let mut stderr = String::new();
    dispatcher.stderr.take().expect("piped").read_to_string(&mut stderr).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), dispatcher.wait()).await.expect("ends").unwrap();
    shown.extend(rest.lines().map(str::to_owned));
    assert_eq!(shown, ["one", "two", "three"], "{stderr}");
    let ticket = record.rsplit(':').next().unwrap();
    let notice =
        format!("lines 4 to 6 of ticket {ticket} were lost by the agent's ticket store (it lost recent writes)");
    assert!(stderr.to_lowercase().contains(&notice.to_lowercase()), "{stderr}");
    assert_eq!(status.code(), Some(3), "the script's own exit code: {stderr}");
    agent.stop().await;
}
