//! What `deploy/local/quickstart.sh` and `test.sh` do on a fresh machine, run by bash with a
//! PATH holding only a few real tools and stubs that record their calls (`<dir>/calls`): the
//! toolchain check first (`check_toolchain` in `services.sh`), RabbitMQ and Redis started where
//! their ports are closed (free ports of the test's own, never the shared services') and named
//! as started, RabbitMQ's own words when it does not come up, cargo-nextest installed when it is
//! missing; and tests that need what a machine lacks (servers of their own, root) skipping with
//! the reason, which `test.sh` lists after the run.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tests::services::free_port;
use tests::{repo, rust_version};

/// The real tools the scripts use besides the programs stubbed.
const TOOLS: [&str; 17] = [
    "sed", "head", "sort", "cat", "tail", "rm", "mktemp", "sleep", "id", "env", "dirname", "od", "tr", "wc", "awk",
    "grep", "bash",
];

/// A directory for PATH with the real [`TOOLS`] and stubs `programs` (name, the stub's shell
/// body), each recording its call (`name args`) in `<dir>/calls` first.
fn path_with(programs: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(tests::unique("path"));
    std::fs::create_dir_all(&dir).unwrap();
    for tool in TOOLS {
        let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} on PATH"));
        std::os::unix::fs::symlink(real, dir.join(tool)).unwrap();
    }
    for (name, body) in programs {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho \"${{0##*/}} $*\" >>\"${{0%/*}}/calls\"\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// The stubs' calls so far, one `name args` a line.
fn calls(path: &Path) -> String {
    std::fs::read_to_string(path.join("calls")).unwrap_or_default()
}

/// Runs `script` (bash, in the repository) with only `path` on PATH and `env`: its exit code and
/// what it said on stderr.
fn run(script: &str, path: &Path, env: &[(&str, String)]) -> (Option<i32>, String) {
    let out = Command::new("/bin/bash")
        .args(["-c", script])
        .current_dir(repo())
        .env_clear()
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs the check with only `path` on PATH: its exit code and what it said.
fn check_toolchain(path: &Path) -> (Option<i32>, String) {
    let said = run("source deploy/local/services.sh && check_toolchain", path, &[]);
    let _ = std::fs::remove_dir_all(path);
    said
}

/// Stubs for a toolchain that passes the check.
const TOOLCHAIN: [(&str, &str); 2] = [("rustc", "echo 'rustc 9.0.0 (aaaa 2030-01-01)'"), ("cc", "true")];

/// A port nothing listens on (until a test opens it).
fn closed_port() -> u16 {
    free_port()
}

/// A port that answers, as a running service's does, while the listener is kept.
fn answering() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// Opens `port`, as the real server would, once the stub `program` in `path` has been called
/// (within 30 s); the listener is held by the thread's result until joined.
fn comes_up_when_started(
    path: &Path,
    program: &'static str,
    port: u16,
) -> std::thread::JoinHandle<Option<TcpListener>> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if calls(&path).lines().any(|l| l.starts_with(&format!("{program} "))) {
                return Some(TcpListener::bind(("127.0.0.1", port)).unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
}

/// The environment pointing the scripts at the test's own ports.
fn ports(rabbitmq: u16, redis: u16) -> Vec<(&'static str, String)> {
    vec![("CUTTLE_RABBITMQ_PORT", rabbitmq.to_string()), ("CUTTLE_REDIS_PORT", redis.to_string())]
}

#[test]
fn a_missing_rust_is_named_with_its_version_and_how_to_install_it() {
    let (code, said) = check_toolchain(&path_with(&[]));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("Rust is missing") && said.contains(&rust_version()), "{said}");
    assert!(said.contains("https://sh.rustup.rs"), "{said}");
}

#[test]
fn a_rust_older_than_the_workspace_asks_for_an_update() {
    let (code, said) = check_toolchain(&path_with(&[
        ("cargo", "echo 'cargo 1.70.0'"),
        ("rustc", "echo 'rustc 1.70.0 (aaaa 2023-06-01)'"),
    ]));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("rustc 1.70.0 is older than this workspace's rust-version {}", rust_version())),
        "{said}"
    );
    assert!(said.contains("rustup update stable"), "{said}");
}

#[test]
fn a_missing_c_compiler_is_named_with_the_package_to_install() {
    let rust = [("cargo", "echo 'cargo 9.0.0'"), TOOLCHAIN[0]];
    let (code, said) = check_toolchain(&path_with(&rust));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("no C compiler") && said.contains("build-essential"), "{said}");
    let (code, said) = check_toolchain(&path_with(&[rust[0], rust[1], TOOLCHAIN[1]]));
    assert_eq!((code, said.as_str()), (Some(0), ""), "a good toolchain passes quietly");
}

/// Stubs of the servers and their tools: each does nothing but record its call (RabbitMQ's
/// with the port and the extra Erlang arguments it was given).
const SERVERS: [(&str, &str); 4] = [
    ("redis-server", "true"),
    (
        "rabbitmq-server",
        "echo \"  on port $RABBITMQ_NODE_PORT with$RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS\" >>\"${0%/*}/calls\"",
    ),
    ("rabbitmqctl", "true"),
    ("sudo", "exec \"$@\""),
];

#[test]
fn the_services_started_are_named_and_those_answering_are_left_alone() {
    // Both answering: nothing is started, and it says so.
    let path = path_with(&SERVERS);
    let ((_rabbitmq, rabbitmq_port), (_redis, redis_port)) = (answering(), answering());
    let (code, said) = run("deploy/local/services.sh", &path, &ports(rabbitmq_port, redis_port));
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("RabbitMQ and Redis were already answering; nothing started"), "{said}");
    assert!(!said.contains("starting") && !said.contains("started for this run"), "{said}");
    assert_eq!(calls(&path), "", "no server started");
    std::fs::remove_dir_all(&path).unwrap();

    // Redis down, RabbitMQ answering: Redis is started on its port and named, RabbitMQ is not.
    let path = path_with(&SERVERS);
    let ((_rabbitmq, rabbitmq_port), redis_port) = (answering(), closed_port());
    let redis = comes_up_when_started(&path, "redis-server", redis_port);
    let (code, said) = run("deploy/local/services.sh", &path, &ports(rabbitmq_port, redis_port));
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&format!("starting Redis on 127.0.0.1:{redis_port}")), "{said}");
    assert!(said.contains("started for this run, still running afterwards:"), "{said}");
    assert!(said.contains(&format!("  Redis (stop it: redis-cli -p {redis_port} shutdown nosave)")), "{said}");
    assert!(!said.contains("RabbitMQ ("), "RabbitMQ answered, so it is not named as started: {said}");
    assert!(!said.contains("already answering"), "{said}");
    let called = calls(&path);
    assert!(
        called.contains(&format!("redis-server --daemonize yes --bind 127.0.0.1 --port {redis_port} ")),
        "{called}"
    );
    assert!(!called.contains("rabbitmq-server"), "{called}");
    assert!(redis.join().unwrap().is_some());
    std::fs::remove_dir_all(&path).unwrap();

    // Both down: both started, on their ports, and both named.
    let path = path_with(&SERVERS);
    let (rabbitmq_port, redis_port) = (closed_port(), closed_port());
    let redis = comes_up_when_started(&path, "redis-server", redis_port);
    let rabbitmq = comes_up_when_started(&path, "rabbitmq-server", rabbitmq_port);
    let (code, said) = run("deploy/local/services.sh", &path, &ports(rabbitmq_port, redis_port));
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&format!("starting RabbitMQ on 127.0.0.1:{rabbitmq_port}")), "{said}");
    assert!(said.contains("  Redis (stop it:") && said.contains("  RabbitMQ (stop it: rabbitmqctl stop)"), "{said}");
    let called = calls(&path);
    // With Cuttle's message limit (deploy/rabbitmq/rabbitmq.conf), which bounds an agent's memory.
    let limit = contracts::wire::topology::MAX_MESSAGE_BYTES;
    assert!(
        called.contains(&format!(
            "rabbitmq-server -detached\n  on port {rabbitmq_port} with -rabbit max_message_size {limit}\n"
        )),
        "{called}"
    );
    assert!(redis.join().unwrap().is_some() && rabbitmq.join().unwrap().is_some());
    std::fs::remove_dir_all(&path).unwrap();
}

#[test]
fn quickstart_shows_rabbitmqs_own_words_when_it_does_not_come_up() {
    // RabbitMQ says why on stderr and in its log, and its port stays closed.
    let logs = std::env::temp_dir().join(tests::unique("rabbitmq-logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("rabbit@box.log");
    let lines: String = (1..=30).map(|i| format!("log line {i}\n")).collect();
    std::fs::write(&log, format!("{lines}BOOT FAILED: eaddrinuse\n")).unwrap();
    let mut stubs = SERVERS.to_vec();
    stubs[1] = ("rabbitmq-server", "echo 'ERROR: epmd error for host box: timeout' >&2; echo 'starting...'");
    stubs.extend([("cargo", "true"), TOOLCHAIN[0], TOOLCHAIN[1]]);
    let path = path_with(&stubs);
    let ((_redis, redis_port), rabbitmq_port) = (answering(), closed_port());
    let mut env = ports(rabbitmq_port, redis_port);
    env.extend([("CUTTLE_RABBITMQ_WAIT", "1".into()), ("RABBITMQ_LOG_BASE", logs.display().to_string())]);
    let (code, said) = run("deploy/local/quickstart.sh", &path, &env);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&format!("RabbitMQ did not come up on 127.0.0.1:{rabbitmq_port} within 1s")), "{said}");
    let own = said.split_once("RabbitMQ's own words:\n").map(|(_, after)| after).unwrap_or_else(|| panic!("{said}"));
    assert!(own.contains("ERROR: epmd error for host box: timeout\nstarting...\n"), "its stderr and stdout: {said}");
    let tail = format!("the end of {}:\n", log.display());
    let tail = own.split_once(&tail).map(|(_, after)| after).unwrap_or_else(|| panic!("the log named: {said}"));
    let shown: String = (12..=30).map(|i| format!("log line {i}\n")).collect();
    assert!(tail.starts_with(&format!("{shown}BOOT FAILED: eaddrinuse\n")), "its last 20 lines: {said}");
    assert!(!said.contains("log line 11\n"), "{said}");
    assert!(!calls(&path).contains("cargo build"), "nothing built once the services failed: {}", calls(&path));
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::remove_dir_all(&logs).unwrap();
}

/// Runs `test.sh` with stub services answering and a stub cargo whose nextest is there once
/// `<dir>/nextest` exists (`cargo install` makes it, or fails when `install_fails`): its exit
/// code, what it said, and cargo's calls.
fn test_sh(nextest_installed: bool, install_fails: bool) -> (Option<i32>, String, Vec<String>) {
    let install = if install_fails { "exit 101" } else { ": >\"${0%/*}/nextest\"" };
    let cargo = format!(
        "case \"$1 $2\" in\n  'nextest --version') [ -e \"${{0%/*}}/nextest\" ] ;;\n  install*) {install} ;;\nesac"
    );
    let mut stubs = SERVERS.to_vec();
    stubs.extend([("cargo", cargo.as_str()), ("redis-cli", "true"), TOOLCHAIN[0], TOOLCHAIN[1]]);
    let path = path_with(&stubs);
    if nextest_installed {
        std::fs::write(path.join("nextest"), "").unwrap();
    }
    let ((_rabbitmq, rabbitmq_port), (_redis, redis_port)) = (answering(), answering());
    let (code, said) = run("deploy/local/test.sh -E 'test(cancel)'", &path, &ports(rabbitmq_port, redis_port));
    let cargo_calls = calls(&path).lines().filter(|l| l.starts_with("cargo ")).map(str::to_owned).collect();
    std::fs::remove_dir_all(&path).unwrap();
    (code, said, cargo_calls)
}

#[test]
fn test_sh_installs_cargo_nextest_when_it_is_missing_then_runs_the_tests_with_it() {
    let run_tests = "cargo nextest run --locked --workspace --no-fail-fast -E test(cancel)";
    let (code, said, cargo) = test_sh(false, false);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("cargo-nextest not found; installing it (cargo install --locked cargo-nextest)"), "{said}");
    let install = cargo.iter().position(|c| c == "cargo install --locked cargo-nextest");
    let tests = cargo.iter().position(|c| c == run_tests);
    assert!(install.is_some() && tests.is_some() && install < tests, "installed, then run: {cargo:?}");

    let (code, said, cargo) = test_sh(true, false);
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("cargo-nextest not found"), "{said}");
    assert!(!cargo.iter().any(|c| c.starts_with("cargo install")) && cargo.iter().any(|c| c == run_tests), "{cargo:?}");

    let (code, said, cargo) = test_sh(false, true);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("could not install cargo-nextest: install it by hand"), "{said}");
    assert!(!cargo.iter().any(|c| c.starts_with("cargo nextest run")), "no run without nextest: {cargo:?}");
}

/// Runs `test.sh` with stub services answering and a stub `cargo nextest run` that reports
/// `run` tests with `failed` failures (in the JUnit file nextest writes) and logs `skipped` of
/// them as skipped (as `tests::needs` does), with `CI` set to `ci`: its exit code, its stdout
/// and its stderr.
fn test_sh_reporting(run: u32, failed: u32, skipped: &[&str], ci: Option<&str>) -> (Option<i32>, String, String) {
    let target = std::env::temp_dir().join(tests::unique("target"));
    let report = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="nextest-run" tests="{run}" failures="{failed}" errors="0" uuid="x" timestamp="t" time="1">\n</testsuites>\n"#
    );
    let skips: String = skipped.iter().map(|line| format!("echo '{line}' >>\"$CUTTLE_SKIPPED_LOG\"\n")).collect();
    let outcome = if failed > 0 { "exit 100" } else { "true" };
    let cargo = format!(
        "case \"$1 $2\" in\n  'nextest --version') true ;;\n  'nextest run') mkdir -p \"$CARGO_TARGET_DIR/nextest/default\"; printf '{report}' >\"$CARGO_TARGET_DIR/nextest/default/junit.xml\"\n{skips}{outcome} ;;\nesac"
    );
    let mut stubs = SERVERS.to_vec();
    stubs.extend([
        ("cargo", cargo.as_str()),
        ("redis-cli", "true"),
        ("mkdir", "/bin/mkdir \"$@\""),
        TOOLCHAIN[0],
        TOOLCHAIN[1],
    ]);
    let path = path_with(&stubs);
    let ((_rabbitmq, rabbitmq_port), (_redis, redis_port)) = (answering(), answering());
    let mut env = ports(rabbitmq_port, redis_port);
    env.push(("CARGO_TARGET_DIR", target.display().to_string()));
    if let Some(ci) = ci {
        env.push(("CI", ci.to_owned()));
    }
    let out = Command::new("/bin/bash")
        .args(["-c", "deploy/local/test.sh"])
        .current_dir(repo())
        .env_clear()
        .env("PATH", &path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    let _ = std::fs::remove_dir_all(&target);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn test_sh_ends_with_its_counts_and_under_ci_a_skipped_test_fails_the_run() {
    let browser = "the_web_view_lists_tickets: chromium not installed (apt-get install -y chromium)";
    let (code, stdout, stderr) = test_sh_reporting(12, 0, &[browser], None);
    assert_eq!(code, Some(0), "outside CI a skip is allowed, and listed: {stderr}");
    assert!(stderr.contains(&format!("skipped: {browser}")), "{stderr}");
    assert_eq!(stdout.lines().last(), Some("11 passed, 0 failed, 1 skipped"), "{stdout}");

    let (code, stdout, stderr) = test_sh_reporting(12, 0, &[browser], Some("true"));
    assert_eq!(code, Some(1), "under CI a skipped test fails the run: {stderr}");
    assert!(
        stderr.contains(&format!("skipped: {browser}")) && stderr.contains("CI=true: a skipped test fails the run"),
        "{stderr}"
    );
    assert_eq!(stdout.lines().last(), Some("11 passed, 0 failed, 1 skipped"), "{stdout}");

    let (code, stdout, stderr) = test_sh_reporting(12, 2, &[], Some("true"));
    assert_eq!(code, Some(100), "the run's own failure: {stderr}");
    assert_eq!(stdout.lines().last(), Some("10 passed, 2 failed, 0 skipped"), "{stdout}");

    let (code, stdout, _) = test_sh_reporting(12, 0, &[], Some("true"));
    assert_eq!((code, stdout.lines().last()), (Some(0), Some("12 passed, 0 failed, 0 skipped")));
}

/// The newest built test binary of `name` (`deps/<name>-<hash>`), beside this test's own.
fn test_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let prefix = format!("{name}-");
    std::fs::read_dir(&deps)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.file_name().to_string_lossy().strip_prefix(&prefix).is_some_and(|hash| !hash.contains('.')))
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("the {name} test binary is not built (cargo test -p tests --no-run)"))
        .path()
}

/// Runs one test of a test binary as `test.sh` would (skips logged to `CUTTLE_SKIPPED_LOG`),
/// changed by `adjust`: whether it passed, what it said, and what it logged as skipped.
fn run_test(binary: &str, test: &str, adjust: impl FnOnce(&mut Command)) -> (bool, String, String) {
    let log = std::env::temp_dir().join(tests::unique("skipped"));
    let mut command = Command::new(test_binary(binary));
    command.args(["--exact", test, "--nocapture"]).env("CUTTLE_SKIPPED_LOG", &log);
    adjust(&mut command);
    let out = command.output().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), logged)
}

#[test]
fn tests_that_need_servers_of_their_own_skip_saying_why_where_they_cannot_run() {
    // No redis-server on the PATH: the failover tests cannot start Redis with a replica.
    let test = "a_repeated_start_confirms_the_earlier_claim_then_runs_it_once";
    let (passed, said, logged) = run_test("failover", test, |c| {
        c.env("PATH", "/nonexistent");
    });
    let reason = format!("skipped: {test}: redis-server and redis-cli not installed");
    assert!(passed && said.contains(&reason), "{said}");
    assert!(logged.contains(&format!("{test}: redis-server and redis-cli not installed")), "{logged}");

    // Not root: no RabbitMQ node of its own for the cluster tests (run as `nobody` when root).
    let test = "the_node_in_use_stopped_mid_batch_loses_no_script_and_runs_none_twice";
    let root = nix::unistd::geteuid().is_root();
    let (passed, said, logged) = run_test("cluster", test, |c| {
        if root {
            std::os::unix::process::CommandExt::uid(c, 65534);
            c.env("HOME", "/nonexistent").current_dir("/");
        }
    });
    assert!(passed && said.contains(&format!("skipped: {test}: ")), "{said}");
    assert!(said.contains("needs root") || said.contains("not installed"), "{said}");
    assert!(logged.contains(test), "{logged}");
}

/// Today only `deploy/rabbitmq/rabbitmq.conf` sets a message limit: the production-ha cluster,
/// the dev overlay's broker and the tests' own nodes take RabbitMQ's default (128 MiB in
/// RabbitMQ 3), and an agent may hold its prefetch times that.
#[test]
fn every_broker_config_cuttle_ships_refuses_messages_over_the_agents_limit() {
    let setting = format!("max_message_size = {}", contracts::wire::topology::MAX_MESSAGE_BYTES);
    for file in [
        "deploy/rabbitmq/rabbitmq.conf",
        "deploy/kubernetes/overlays/production-ha/rabbitmq-cluster.yaml",
        "deploy/kubernetes/overlays/dev/rabbitmq.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(text.lines().any(|line| line.trim() == setting), "{file} has no `{setting}`");
    }
    assert!(tests::services::shipped_broker_settings().contains(&setting), "the tests' own brokers take it");
}

/// `install.sh` puts the binaries, the generated man pages and the binaries' own completion
/// scripts where a Debian-like system looks for them (staged under DESTDIR here).
#[test]
fn install_sh_puts_binaries_man_pages_and_completions_in_place() {
    let dest = std::env::temp_dir().join(tests::unique("install"));
    let bin_dir = tests::binary("dispatcher").parent().unwrap().to_path_buf();
    let out = Command::new("deploy/local/install.sh")
        .current_dir(repo())
        .env("DESTDIR", &dest)
        .env("PREFIX", "/usr")
        .env("BIN_DIR", &bin_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = dest.join("usr");
    for binary in ["dispatcher", "worker-agent"] {
        let installed = root.join("bin").join(binary);
        assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755, "{binary}");
        for (shell, path) in [
            ("bash", format!("share/bash-completion/completions/{binary}")),
            ("zsh", format!("share/zsh/vendor-completions/_{binary}")),
            ("fish", format!("share/fish/vendor_completions.d/{binary}.fish")),
        ] {
            let own = Command::new(&installed).args(["completions", shell]).output().unwrap().stdout;
            assert_eq!(std::fs::read(root.join(&path)).unwrap(), own, "{path}: the binary's own script");
        }
    }
    let man = repo().join("docs/reference/man");
    let pages: Vec<_> = std::fs::read_dir(&man).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(pages.len() > 10, "{pages:?}");
    for page in pages {
        let installed = root.join("share/man/man1").join(&page);
        assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(man.join(&page)).unwrap(), "{page:?}");
    }
    std::fs::remove_dir_all(&dest).unwrap();
}
