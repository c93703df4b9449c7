//! Least privilege on the broker: an operator sets a vhost up (`dispatcher setup-broker`,
//! `dispatcher enrol-agent`, `dispatcher enrol-pool`), each role gets a user with exactly the permissions printed, a
//! script runs end to end through the real binaries, and RabbitMQ refuses every action outside a
//! role (ACCESS_REFUSED).

use contracts::wire::topology::{agent_queue, pool_queue, pool_service_queue, COMMANDS_EXCHANGE};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use std::process::Command;
use std::time::Duration;
use tests::agent::test_config;
use tests::{dispatcher_command, eventually, text, unique, AgentProcess};

/// A vhost of the test's own and its users, deleted when dropped.
struct Vhost {
    name: String,
    users: Vec<String>,
}

fn ctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl").arg("-q").args(args).output().expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

impl Vhost {
    fn new() -> Vhost {
        let name = unique("vhost");
        ctl(&["add_vhost", &name]);
        // The operator: the machine's administrator, guest.
        ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name, users: Vec::new() }
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:5672/{}", self.name)
    }

    /// A user with the permissions of the `rabbitmqctl set_permissions` line in `printed`.
    fn add_user(&mut self, user: &str, printed: &str) {
        let line = printed.lines().find(|l| l.contains("set_permissions")).expect("a set_permissions line");
        let quoted: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
        let [vhost, _, configure, write, read] = quoted[..] else { panic!("unexpected line {line}") };
        assert_eq!(vhost, self.name);
        ctl(&["add_user", user, "pw"]);
        self.users.push(user.to_owned());
        ctl(&["set_permissions", "-p", &self.name, user, configure, write, read]);
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["-q", "delete_vhost", &self.name]).status();
        for user in &self.users {
            let _ = Command::new("rabbitmqctl").args(["-q", "delete_user", user]).status();
        }
    }
}

async fn operator(vhost: &Vhost, args: &[&str]) -> String {
    let out =
        dispatcher_command().env("CUTTLE_AMQP_URL", vhost.url("guest", "guest")).args(args).output().await.unwrap();
    assert!(out.status.success(), "{args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Runs `what` on a new channel of `connection` and returns the broker's refusal.
async fn refused<T: std::fmt::Debug>(what: &str, result: lapin::Result<T>) -> String {
    let error = result.expect_err(&format!("{what} must be refused")).to_string();
    assert!(error.contains("ACCESS_REFUSED"), "{what}: {error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_runs_with_its_printed_permissions_and_nothing_more() {
    let mut vhost = Vhost::new();
    let setup = operator(
        &vhost,
        &["setup-broker", "--dead-max-length", "1000", "--dead-ttl", "1h", "--receipts-max-age", "7D"],
    )
    .await;
    assert!(setup.contains("at most 1000 messages"), "{setup}");
    assert!(setup.contains("declared cuttle.receipts, keeping receipts 7D"), "{setup}");
    let declared = ctl(&["list_queues", "-p", &vhost.name, "name", "arguments"]);
    assert!(declared.contains("x-max-length") && declared.contains("x-message-ttl"), "{declared}");
    let receipts = declared.lines().find(|l| l.starts_with("cuttle.receipts")).expect("the receipts stream");
    assert!(receipts.contains("7D") && receipts.contains("x-max-length-bytes"), "{receipts}");
    let again = operator(&vhost, &["setup-broker", "--receipts-max-age", "1D"]).await;
    assert!(again.contains("cuttle.receipts existed already: its retention stays"), "{again}");

    let mut a = test_config("least-a");
    let b = test_config("least-b");
    let (user_a, user_b) = (unique("user-a"), unique("user-b"));
    let enrolled_a = operator(&vhost, &["enrol-agent", &a.agent_id, "--user", &user_a]).await;
    let pool = unique("least-pool");
    let enrolled_b = operator(&vhost, &["enrol-agent", &b.agent_id, "--user", &user_b, "--pool", &pool]).await;
    let queues = ctl(&["list_queues", "-p", &vhost.name, "name"]);
    for queue in [agent_queue(&b.agent_id), pool_queue(&pool), pool_service_queue(&pool)] {
        assert!(queues.lines().any(|q| q == queue), "{queue} declared by enrol-agent: {queues}");
        assert!(enrolled_b.contains(&queue.replace('.', "\\.")), "{queue} readable by B: {enrolled_b}");
    }
    vhost.add_user(&user_a, &enrolled_a);
    vhost.add_user(&user_b, &enrolled_b);
    let dispatcher_user = unique("dispatcher");
    let dispatcher_line = setup.lines().find(|l| l.starts_with("dispatcher:")).expect("dispatcher permissions");
    vhost.add_user(&dispatcher_user, dispatcher_line);
    let keda_user = unique("keda");
    let keda_line = setup.lines().find(|l| l.contains("KEDA")).expect("KEDA permissions");
    vhost.add_user(&keda_user, keda_line);

    // Agent A runs with its own user, declaring nothing, and a script runs end to end.
    a.amqp_url = vhost.url(&user_a, "pw");
    let mut command = AgentProcess::command(&a);
    command.arg("--enrolled");
    let agent = AgentProcess::spawn_command(a.clone(), command);
    agent.wait_ready().await;
    let out = dispatcher_command()
        .env("CUTTLE_AMQP_URL", vhost.url(&dispatcher_user, "pw"))
        .args(["submit", "--target", &a.agent_id, "--", "echo least-privilege"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("least-privilege"));
    // The live fleet, read by the dispatcher's user from the presence stream.
    let out = dispatcher_command()
        .env("CUTTLE_AMQP_URL", vhost.url(&dispatcher_user, "pw"))
        .args(["agents", "--json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The script's receipt, published by the agent's user, read by the dispatcher's.
    let receipts = eventually("the script's receipt", Duration::from_secs(20), || async {
        let out = dispatcher_command()
            .env("CUTTLE_AMQP_URL", vhost.url(&dispatcher_user, "pw"))
            .args(["receipts", "--target", &a.agent_id, "--json"])
            .output()
            .await
            .unwrap();
        assert!(matches!(out.status.code(), Some(0)), "{}", text(&out.stderr));
        (!out.stdout.is_empty()).then(|| text(&out.stdout))
    })
    .await;
    assert_eq!(receipts.lines().count(), 1, "{receipts}");

    // What agent A's user may not do.
    let props = ConnectionProperties::default;
    let as_a = Connection::connect(&vhost.url(&user_a, "pw"), props()).await.expect("agent A's user connects");
    let queue_b = agent_queue(&b.agent_id);
    let channel = as_a.create_channel().await.unwrap();
    let consume = channel.basic_consume(queue_b.as_str().into(), "".into(), Default::default(), FieldTable::default());
    refused("reading agent B's queue", consume.await).await;
    let channel = as_a.create_channel().await.unwrap();
    let bind = channel.queue_bind(
        agent_queue(&a.agent_id).as_str().into(),
        COMMANDS_EXCHANGE.into(),
        b.agent_id.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    );
    refused("binding to agent B's routing key", bind.await).await;
    let channel = as_a.create_channel().await.unwrap();
    refused("deleting a shared exchange", channel.exchange_delete(COMMANDS_EXCHANGE.into(), Default::default()).await)
        .await;
    let channel = as_a.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let publish = async {
        channel
            .basic_publish(
                COMMANDS_EXCHANGE.into(),
                b.agent_id.as_str().into(),
                BasicPublishOptions::default(),
                b"forged",
                BasicProperties::default(),
            )
            .await?
            .await
    };
    refused("publishing a command to the agent exchange", publish.await).await;

    // Agent B's user may read its own queue (the permissions are not simply nothing).
    let as_b = Connection::connect(&vhost.url(&user_b, "pw"), props()).await.expect("agent B's user connects");
    let channel = as_b.create_channel().await.unwrap();
    channel
        .basic_consume(queue_b.as_str().into(), "".into(), Default::default(), FieldTable::default())
        .await
        .expect("agent B reads its own queue");

    // KEDA reads a queue's length, and nothing else.
    let as_keda = Connection::connect(&vhost.url(&keda_user, "pw"), props()).await.expect("KEDA's user connects");
    let channel = as_keda.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let length = channel.queue_declare(queue_b.as_str().into(), passive, FieldTable::default()).await;
    assert_eq!(length.expect("KEDA reads the queue length").message_count(), 0);
    let channel = as_keda.create_channel().await.unwrap();
    refused("KEDA taking a message", channel.basic_get(queue_b.as_str().into(), BasicGetOptions::default()).await)
        .await;

    for connection in [as_a, as_b, as_keda] {
        let _ = connection.close(200, "done".into()).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_worker_with_a_fresh_id_declares_only_its_own_queue_and_reads_nothing_of_others() {
    let mut vhost = Vhost::new();
    let setup = operator(&vhost, &["setup-broker"]).await;
    let (pool, other_pool, agent_b) = (unique("least-pool"), unique("other-pool"), unique("least-b"));
    let worker_user = unique("pool-user");
    let enrolled = operator(&vhost, &["enrol-pool", &pool, "--user", &worker_user]).await;
    assert!(enrolled.contains(&format!("--agent-id {pool}.NAME")), "{enrolled}");
    operator(&vhost, &["enrol-pool", &other_pool]).await;
    operator(&vhost, &["enrol-agent", &agent_b]).await;
    vhost.add_user(&worker_user, &enrolled);
    let dispatcher_user = unique("dispatcher");
    vhost.add_user(&dispatcher_user, setup.lines().find(|l| l.starts_with("dispatcher:")).expect("dispatcher line"));

    // A worker named as Kubernetes names a pod: nobody could enrol this id before it started.
    let mut worker = test_config("least-worker");
    worker.agent_id = format!("{pool}.cuttle-worker-7d9c8b6f5-{}", &unique("pod")[11..16]);
    tests::trust::keys().pin(&worker.agent_id);
    worker.pool = Some(pool.clone());
    worker.amqp_url = vhost.url(&worker_user, "pw");
    let mut command = AgentProcess::command(&worker);
    command.arg("--enrolled");
    let agent = AgentProcess::spawn_command(worker.clone(), command);
    agent.wait_ready().await;
    let own = agent_queue(&worker.agent_id);
    let queues = ctl(&["list_queues", "-p", &vhost.name, "name", "arguments"]);
    assert!(queues.lines().any(|l| l.starts_with(&own) && l.contains("x-expires")), "{own} declared: {queues}");
    // Its own queue, bound by itself, and its pool's, each run a script end to end.
    for target in [["--target", worker.agent_id.as_str()], ["--pool", pool.as_str()]] {
        let out = dispatcher_command()
            .env("CUTTLE_AMQP_URL", vhost.url(&dispatcher_user, "pw"))
            .arg("submit")
            .args(target)
            .args(["--", "echo pool-least-privilege"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{target:?}: {}{}{}", text(&out.stdout), text(&out.stderr), agent.log_text());
        assert!(text(&out.stdout).contains("pool-least-privilege"), "{target:?}");
    }

    // What the pool's user may not do.
    let as_worker =
        Connection::connect(&vhost.url(&worker_user, "pw"), ConnectionProperties::default()).await.expect("connects");
    for (what, queue) in [
        ("reading another pool's queue", pool_queue(&other_pool)),
        ("reading another pool's service queue", pool_service_queue(&other_pool)),
        ("reading another agent's queue", agent_queue(&agent_b)),
    ] {
        let channel = as_worker.create_channel().await.unwrap();
        let consume =
            channel.basic_consume(queue.as_str().into(), "".into(), Default::default(), FieldTable::default());
        refused(what, consume.await).await;
    }
    let channel = as_worker.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let declare =
        channel.exchange_declare(COMMANDS_EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default());
    refused("declaring a shared exchange", declare.await).await;
    let channel = as_worker.create_channel().await.unwrap();
    let other_worker = agent_queue(&format!("{other_pool}.cuttle-worker-1"));
    let declare = channel.queue_declare(other_worker.as_str().into(), Default::default(), FieldTable::default());
    refused("declaring another pool's worker queue", declare.await).await;
    let channel = as_worker.create_channel().await.unwrap();
    let delete = channel.queue_delete(pool_queue(&pool).as_str().into(), Default::default());
    refused("deleting its pool's shared queue", delete.await).await;

    let _ = as_worker.close(200, "done".into()).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuttle_enrolled_from_the_environment_makes_the_agent_declare_nothing() {
    let config = test_config("enrolled-env");
    let mut command = AgentProcess::command(&config);
    command.env("CUTTLE_ENROLLED", "true");
    let agent = AgentProcess::spawn_command(config.clone(), command);
    eventually("the agent to find its queue missing", Duration::from_secs(20), || async {
        agent.log_text().contains("an enrolled agent declares nothing").then_some(())
    })
    .await;
    assert!(!agent.log_text().contains("consuming commands"), "{}", agent.log_text());
    let connection = Connection::connect(&tests::amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let queue = agent_queue(&config.agent_id);
    let declared = channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await;
    assert!(declared.is_err(), "{queue} was declared by an enrolled agent");
    let _ = connection.close(200, "done".into()).await;
    agent.stop().await;

    // CUTTLE_ENROLLED=false: it declares its queue itself, as without the variable.
    let mut command = AgentProcess::command(&config);
    command.env("CUTTLE_ENROLLED", "false");
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    agent.stop().await;
}
