//! Scripts run as the user their command names (`submit --run-as`), through the binaries: the
//! agent allows only the users it lists (`--allow-run-as`, `CUTTLE_ALLOW_RUN_AS`), runs commands
//! naming none as `--default-run-as`, refuses the rest before the claim (nothing runs, nothing is
//! stored), and a dispatcher never sends a user to an agent that would ignore it. The tampered
//! field is refused by the signature: `trust::attack_table`.

use std::time::Duration;
use tests::agent::{legacy_config, test_config};
use tests::*;

/// A test agent's configuration with a work dir of its own directly in the temporary directory,
/// whose every parent other users may search (the default under `cuttle-tests` may have been
/// made 0700 by an agent of another test).
fn config(what: &str) -> worker_agent::config::AgentConfig {
    let mut config = test_config(what);
    config.work_dir = std::env::temp_dir().join(format!("cuttle-wd-{}", config.agent_id));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_runs_as_the_user_it_names_in_a_workspace_it_owns_and_reaches_nothing_of_the_agents() {
    let config = config("run-as");
    let agent = AgentProcess::start_with(config.clone(), &["--allow-run-as", "nobody"], &[]).await;
    let key = tests::trust::keys().agent_key.display().to_string();
    let work_dir = config.work_dir.display().to_string();
    let script = format!(
        "id -un; echo \"HOME=$HOME USER=$USER LOGNAME=$LOGNAME\"; test -O . && echo owns-its-workspace; \
         cat {key} >/dev/null 2>&1 && echo READ-THE-KEY || echo no-key; \
         touch {work_dir}/planted 2>/dev/null && echo WROTE-THE-WORK-DIR || echo no-work-dir; \
         ls {work_dir} >/dev/null 2>&1 && echo LISTED-THE-WORK-DIR || echo no-listing"
    );
    let out = run_dispatcher(&["submit", "--target", &config.agent_id, "--run-as", "nobody", "--", &script]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let home = nix::unistd::User::from_name("nobody").unwrap().unwrap().dir;
    let expected = format!(
        "nobody\nHOME={} USER=nobody LOGNAME=nobody\nowns-its-workspace\nno-key\nno-work-dir\nno-listing\n",
        home.display()
    );
    assert_eq!(text(&out.stdout), expected);
    assert!(!config.work_dir.join("planted").exists());

    // A command naming no user runs as the agent's own (root here).
    let out = run_dispatcher(&["submit", "--target", &config.agent_id, "--", "id -un"]).await;
    assert_eq!(text(&out.stdout), format!("{}\n", whoami()), "{}", text(&out.stderr));
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&config.work_dir);
}

/// The user this test runs as.
fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_not_allowed_root_included_is_refused_before_the_claim_and_nothing_runs_or_is_stored() {
    let config = config("run-as-refused");
    let agent = AgentProcess::start_with(config.clone(), &["--allow-run-as", "nobody"], &[]).await;
    let markers = Markers::new();
    for user in ["daemon", "root"] {
        let script = markers.record(user);
        let out =
            run_dispatcher(&["submit", "--json", "--target", &config.agent_id, "--run-as", user, "--", &script]).await;
        assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
        // The reason, in the result event.
        let said = text(&out.stdout);
        assert!(said.contains(&format!("this agent may not act as {user} (it allows nobody")), "{said}");
        assert!(said.contains("nothing ran") && said.contains("\"event\":\"result\""), "{said}");
        assert_eq!(markers.count(user), 0, "{user}: nothing ran");
    }
    // Nothing stored: no ticket, no claim, no output; only the store's epoch.
    let mut con = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}*", config.key_prefix)).query_async(&mut con).await.unwrap();
    assert_eq!(keys, [format!("{}epoch", config.key_prefix)]);
    // Whereas a start the agent allows leaves its ticket's tombstone.
    let out = run_dispatcher(&["submit", "--target", &config.agent_id, "--run-as", "nobody", "--", "true"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}*", config.key_prefix)).query_async(&mut con).await.unwrap();
    assert!(keys.len() > 1, "{keys:?}");
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&config.work_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_user_from_the_environment_runs_commands_that_name_none() {
    let config = config("run-as-default");
    let env = [("CUTTLE_ALLOW_RUN_AS", "nobody,daemon"), ("CUTTLE_DEFAULT_RUN_AS", "nobody")];
    let agent = AgentProcess::start_with(config.clone(), &[], &env).await;
    let out = run_dispatcher(&["submit", "--target", &config.agent_id, "--", "id -un"]).await;
    assert_eq!(text(&out.stdout), "nobody\n", "{}", text(&out.stderr));
    let out = run_dispatcher(&["submit", "--target", &config.agent_id, "--run-as", "daemon", "--", "id -un"]).await;
    assert_eq!(text(&out.stdout), "daemon\n", "{}", text(&out.stderr));
    assert!(agent.log_text().contains("scripts may run as these users"), "{}", agent.log_text());
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&config.work_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_long_scripts_are_the_users_own() {
    let config = config("run-as-files");
    let agent = AgentProcess::start_with(config.clone(), &["--allow-run-as", "nobody"], &[]).await;
    let local = std::env::temp_dir().join(format!("{}-input.txt", config.agent_id));
    std::fs::write(&local, "from the operator\n").unwrap();
    // Longer than what runs inline, so it is read from a file in the workspace.
    let script = format!("cat input.txt; stat -c %U input.txt script.sh; : {}", "x".repeat(70 * 1024));
    let file = format!("{}:input.txt", local.display());
    let args = ["submit", "--target", &config.agent_id, "--run-as", "nobody", "--file", &file, "--", &script];
    let out = run_dispatcher(&args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from the operator\nnobody\nnobody\n");
    agent.stop().await;
    let _ = std::fs::remove_file(&local);
    let _ = std::fs::remove_dir_all(&config.work_dir);
}

/// An older agent would run the script as itself, unbounded: what it does not list it is never
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_never_sends_a_user_or_limits_to_an_agent_that_would_ignore_them() {
    let agent = TestAgent::start_with(legacy_config("run-as-legacy")).await;
    let markers = Markers::new();
    for (name, flags, reason) in [
        ("user", ["--run-as", "nobody"], "too old to run a script as another user"),
        ("limits", ["--tasks-max", "10"], "too old to bound a script's resources"),
    ] {
        let script = markers.record(name);
        let mut args = vec!["submit", "--target", agent.id()];
        args.extend(flags);
        args.extend(["--", &script]);
        let out = run_dispatcher(&args).await;
        assert_eq!(out.status.code(), Some(103), "{name}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(reason) && stderr.contains("nothing was sent"), "{name}: {stderr}");
        // Sent, it would have run (as the agent itself) before submit ended.
        assert_eq!(markers.count(name), 0, "{name}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_settings_the_agent_cannot_honour_stop_it_at_start_with_the_reason() {
    let base = config("run-as-bad");
    // A parent others cannot search: no other user could reach a workspace below it.
    let closed = std::env::temp_dir().join(format!("cuttle-closed-{}", base.agent_id));
    std::fs::create_dir(&closed).unwrap();
    let mut below_closed = base.clone();
    below_closed.work_dir = closed.join("wd");
    std::fs::create_dir(&below_closed.work_dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cases: [(&worker_agent::config::AgentConfig, &[&str], &str); 4] = [
        (&base, &["--default-run-as", "nobody"], "--default-run-as nobody is not among the users --allow-run-as lists"),
        (&base, &["--allow-run-as", "no-such-user-cuttle"], "user no-such-user-cuttle does not exist"),
        (&base, &["--allow-run-as", "a b"], "\"a b\" is not a user name"),
        (&below_closed, &["--allow-run-as", "nobody"], "is not searchable by other users (mode 700)"),
    ];
    for (config, flags, reason) in cases {
        let mut command = AgentProcess::command(config);
        command.args(flags);
        let out = tokio::time::timeout(Duration::from_secs(20), command.output()).await.unwrap().unwrap();
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(reason), "{flags:?}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("consuming commands"), "{flags:?}");
    }
    let _ = std::fs::remove_dir_all(&closed);
    let _ = std::fs::remove_dir_all(&base.work_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_api_runs_a_script_as_the_user_its_run_as_names() {
    use tests::service::{http, journal_prefix, remove_journal};
    let config = config("run-as-api");
    let agent = AgentProcess::start_with(config.clone(), &["--allow-run-as", "nobody"], &[]).await;
    let prefix = journal_prefix("run-as-api");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let body = serde_json::json!({"target": config.agent_id, "script": "id -un", "run_as": "nobody"});
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&body).send().await.expect("POST");
    let answer: serde_json::Value = response.json().await.expect("json");
    let ticket = answer["tickets"][0]["ticket"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned();
    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    let output: Vec<&str> = record["output"].as_array().unwrap().iter().filter_map(|l| l["text"].as_str()).collect();
    assert_eq!(output, ["nobody"], "{record}");
    // A name that is no user name is refused by the service itself, before anything is sent.
    let body = serde_json::json!({"target": config.agent_id, "script": "id -un", "run_as": "-rf /"});
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&body).send().await.expect("POST");
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("is not a user name"));
    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&config.work_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_uploaded_and_downloaded_with_the_permissions_of_the_user_named() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let config = config("run-as-files-xfer");
    let root = std::env::temp_dir().join(format!("cuttle-xfer-{}", config.agent_id));
    let (theirs, roots) = (root.join("theirs"), root.join("roots"));
    for dir in [&theirs, &roots] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    std::os::unix::fs::chown(&theirs, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    std::fs::write(roots.join("secret.txt"), "root's only").unwrap();
    std::fs::set_permissions(roots.join("secret.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(roots.join("public.txt"), "for everyone").unwrap();
    std::fs::set_permissions(roots.join("public.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let local = root.join("local.txt");
    std::fs::write(&local, "uploaded as nobody").unwrap();
    let transfer_root = root.display().to_string();
    let agent =
        AgentProcess::start_with(config.clone(), &["--allow-run-as", "nobody", "--transfer-root", &transfer_root], &[])
            .await;
    let id = config.agent_id.clone();
    let (local_arg, back) = (local.display().to_string(), root.join("back.txt"));
    let as_nobody = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--target".into(), id.clone(), "--run-as".into(), "nobody".into()]);
        all
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_dispatcher(&args).await
    };

    // Into the user's own directory: the file is the user's.
    let out = run(as_nobody(&["upload", &local_arg, "theirs/new.txt"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let made = std::fs::metadata(theirs.join("new.txt")).unwrap();
    assert_eq!(
        (made.uid(), std::fs::read_to_string(theirs.join("new.txt")).unwrap()),
        (nobody.uid.as_raw(), "uploaded as nobody".into())
    );

    // Into a directory only root may write: refused by the kernel, nothing left there.
    let out = run(as_nobody(&["upload", &local_arg, "roots/new.txt"])).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(&roots).unwrap().filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 2, "no file or partial file made: {left:?}");

    // A file only root may read is not read; one anyone may read is.
    let out = run(as_nobody(&["download", "roots/secret.txt", &back.display().to_string()])).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("Permission denied") && !back.exists(), "{}", text(&out.stderr));
    let out = run(as_nobody(&["download", "roots/public.txt", &back.display().to_string()])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "for everyone");

    // Through the service's API: `run_as` on PUT and GET /v1/files.
    let prefix = tests::service::journal_prefix("run-as-files");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let url = format!("{}/v1/files", service.url);
    let at = |path: &str| vec![("target", id.clone()), ("path", path.to_owned()), ("run_as", "nobody".to_owned())];
    let client = tests::service::http();
    let put = client.put(&url).query(&at("theirs/api.txt")).body("through the API").send().await.unwrap();
    assert_eq!(put.status().as_u16(), 200, "{}", put.text().await.unwrap());
    assert_eq!(std::fs::metadata(theirs.join("api.txt")).unwrap().uid(), nobody.uid.as_raw());
    let got = client.get(&url).query(&at("roots/secret.txt")).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 422, "root's file is not read as nobody");
    service.stop().await;
    tests::service::remove_journal(&prefix).await;

    // A user the agent does not allow: refused, nothing transferred.
    let out = run_dispatcher(&["upload", &local_arg, "theirs/daemon.txt", "--target", &id, "--run-as", "daemon"]).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("this agent may not act as daemon") && !theirs.join("daemon.txt").exists());
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&config.work_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_not_running_as_root_says_so_and_runs_scripts_only_as_itself() {
    use std::os::unix::fs::PermissionsExt;
    let mut config = config("run-as-unprivileged");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    // Its own files, as an operator gives an unprivileged agent.
    let home = std::env::temp_dir().join(format!("cuttle-home-{}", config.agent_id));
    std::fs::create_dir(&home).unwrap();
    let keys = tests::trust::keys();
    for (from, name) in [(&keys.agent_key, "agent.key"), (&keys.trusted_keys, "trusted_keys")] {
        std::fs::copy(from, home.join(name)).unwrap();
        std::os::unix::fs::chown(home.join(name), Some(uid), Some(gid)).unwrap();
    }
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    config.key_file = Some(home.join("agent.key"));
    config.trusted_keys_file = Some(home.join("trusted_keys"));
    config.work_dir = home.join("wd");
    let mut command = AgentProcess::command(&config);
    command.args(["--allow-run-as", "daemon"]).uid(uid).gid(gid);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let log = agent.log_text();
    assert!(
        log.contains("this agent does not run as root, so it runs scripts only as itself") && log.contains("daemon"),
        "{log}"
    );

    let out = run_dispatcher(&["submit", "--target", &config.agent_id, "--run-as", "daemon", "--", "id -un"]).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("this agent runs as nobody, not as root, so it runs scripts only as itself, not as daemon"),
        "{}",
        text(&out.stderr)
    );
    let out = run_dispatcher(&["submit", "--target", &config.agent_id, "--run-as", "nobody", "--", "id -un"]).await;
    assert_eq!(text(&out.stdout), "nobody\n", "naming itself is no change of user: {}", text(&out.stderr));
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_cannot_be_a_users_is_refused_before_anything_is_sent() {
    for args in [
        vec!["submit", "--target", "nobody-here", "--run-as=-rf", "--", "true"],
        vec!["submit", "--target", "nobody-here", "--run-as", "root;id", "--", "true"],
        vec!["upload", "/etc/hostname", "a", "--target", "nobody-here", "--run-as", "a/b"],
        vec!["download", "a", "/tmp/never-written", "--target", "nobody-here", "--run-as", ""],
    ] {
        let out = run_dispatcher(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("is not a user name"), "{args:?}: {}", text(&out.stderr));
    }
    let prefix = tests::service::journal_prefix("run-as-bad-name");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let url = format!("{}/v1/files", service.url);
    let query = [("target", "nobody-here"), ("path", "a"), ("run_as", "../root")];
    let got = tests::service::http().get(&url).query(&query).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 400);
    assert!(got.text().await.unwrap().contains("is not a user name"));
    service.stop().await;
    tests::service::remove_journal(&prefix).await;
}
