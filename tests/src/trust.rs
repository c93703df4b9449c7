//! Keys for tests, so every agent and dispatcher a test starts signs and checks as in
//! production (ARCHITECTURE.md, Trust). Each test process makes, once, a dispatcher key and an agent key
//! in a directory of its own, a trusted-keys file holding the dispatcher's public key, and a
//! known-agents file pinning every name [`crate::unique`] hands out (as an agent id and as a
//! pool) to the agent key. [`crate::agent::test_config`], [`crate::agent_command`],
//! [`crate::dispatcher_command`] and [`crate::orchestrator`] wire them in; tests about trust
//! itself make keys of their own with [`keypair`].

use contracts::trust::files::KnownAgents;
use contracts::trust::keys::SecretKey;
use dispatcher::trust::{DispatcherTrust, TrustFiles};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// This process's test keys and the files that name them.
pub struct TestKeys {
    pub dir: PathBuf,
    pub dispatcher_key: PathBuf,
    pub agent_key: PathBuf,
    /// The agent's `--trusted-keys`: the dispatcher's public key.
    pub trusted_keys: PathBuf,
    /// The dispatcher's `--known-agents`: every unique name pinned to the agent key.
    pub known_agents: PathBuf,
    pub dispatcher: SecretKey,
    pub agent: SecretKey,
    /// Serialises writes to the known-agents file.
    writing: Mutex<()>,
}

/// The keys of this test process, made on first use.
pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join("cuttle-test-trust").join(format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let (dispatcher_key, agent_key) = (dir.join("dispatcher.key"), dir.join("agent.key"));
        let dispatcher = edge::keys::create_secret(&dispatcher_key).expect("test dispatcher key");
        let agent = edge::keys::create_secret(&agent_key).expect("test agent key");
        let trusted_keys = dir.join("trusted_keys");
        std::fs::write(&trusted_keys, format!("{} test dispatcher\n", dispatcher.public())).expect("trusted keys");
        let known_agents = dir.join("known_agents");
        std::fs::write(&known_agents, "# test agents, pinned as tests name them\n").expect("known agents");
        TestKeys {
            dir,
            dispatcher_key,
            agent_key,
            trusted_keys,
            known_agents,
            dispatcher,
            agent,
            writing: Mutex::new(()),
        }
    })
}

impl TestKeys {
    /// Pins `name` (an agent id, and a pool of that name) to the test agent key.
    pub fn pin(&self, name: &str) {
        if contracts::wire::topology::validate_name("name", name).is_err() {
            return;
        }
        let key = self.agent.public();
        self.append(&format!("{name} {key}\npool:{name} {key}\n"));
    }

    /// Pins `agent_id` as a legacy agent, whose answers are believed unsigned.
    pub fn pin_legacy(&self, agent_id: &str) {
        self.replace_pin(agent_id, &format!("{agent_id} legacy\n"));
    }

    /// Takes away the pin of `agent_id` (the pool of its name keeps its own).
    pub fn unpin(&self, agent_id: &str) {
        self.replace_pin(agent_id, "");
    }

    /// Replaces the lines pinning `agent_id` with `lines`.
    fn replace_pin(&self, agent_id: &str, lines: &str) {
        let _writing = self.writing.lock().expect("known agents");
        let text = std::fs::read_to_string(&self.known_agents).expect("known agents");
        let prefix = format!("{agent_id} ");
        let kept: String = text.lines().filter(|l| !l.starts_with(&prefix)).map(|l| format!("{l}\n")).collect();
        write_atomically(&self.known_agents, &format!("{kept}{lines}"));
    }

    /// Adds lines, replacing the file whole: a dispatcher reading it meanwhile never sees half a line.
    fn append(&self, lines: &str) {
        let _writing = self.writing.lock().expect("known agents");
        let text = std::fs::read_to_string(&self.known_agents).expect("known agents");
        write_atomically(&self.known_agents, &format!("{text}{lines}"));
    }

    /// The dispatcher's trust as the binaries load it (`--key`, `--known-agents`).
    pub fn dispatcher_trust(&self) -> Arc<DispatcherTrust> {
        let files =
            TrustFiles { key: self.dispatcher_key.clone(), create_key: false, known_agents: self.known_agents.clone() };
        Arc::new(DispatcherTrust::load(&files).expect("test dispatcher trust"))
    }

    /// The known agents as they are now.
    pub fn known(&self) -> KnownAgents {
        edge::keys::load_known_agents(&self.known_agents).expect("known agents parse")
    }
}

/// Replaces a file's content so that a reader never sees it half written.
pub fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&temporary, text).expect("write file");
    std::fs::rename(&temporary, path).expect("replace file");
}

/// A fresh key written to a file in this process's key directory: (secret key, its file).
pub fn keypair(what: &str) -> (SecretKey, PathBuf) {
    let path = keys().dir.join(format!("{what}-{}.key", uuid::Uuid::new_v4().simple()));
    (edge::keys::create_secret(&path).expect("test key"), path)
}

/// How an [`Impostor`] signs its answers.
#[derive(Clone)]
pub enum Answerer {
    /// Not at all.
    Unsigned,
    /// With a key of its own.
    Key(Box<SecretKey>),
    /// With the genuine test agent key, but over another request: an old genuine answer replayed.
    Replayed,
    /// With the genuine test agent key over this request, naming no request in its envelope: an
    /// agent of the release before answer binding.
    PreBinding,
}

/// Someone with broker credentials reading an agent's commands: a queue of its own bound to the
/// agent's routing key gets a copy of each (the agent still gets them too).
pub struct CommandCopies {
    pub connection: lapin::Connection,
    pub channel: lapin::Channel,
    /// The copies, as they come.
    pub requests: lapin::Consumer,
}

impl CommandCopies {
    pub async fn of(agent_id: &str) -> CommandCopies {
        use contracts::wire::topology::COMMANDS_EXCHANGE;
        use lapin::options::*;
        use lapin::types::FieldTable;
        let connection = lapin::Connection::connect(&crate::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connects to the broker");
        let channel = connection.create_channel().await.expect("channel");
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let direct = lapin::ExchangeKind::Direct;
        channel.exchange_declare(COMMANDS_EXCHANGE.into(), direct, durable, FieldTable::default()).await.unwrap();
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel.queue_declare("".into(), exclusive, FieldTable::default()).await.expect("queue");
        let bind = QueueBindOptions::default();
        let (name, key) = (queue.name().clone(), agent_id.into());
        channel.queue_bind(name.clone(), COMMANDS_EXCHANGE.into(), key, bind, FieldTable::default()).await.unwrap();
        let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let requests = channel.basic_consume(name, "".into(), no_ack, FieldTable::default()).await.unwrap();
        CommandCopies { connection, channel, requests }
    }
}

/// A message as it came from the broker: its body and properties (headers, ids, reply-to).
#[derive(Clone, Debug)]
pub struct Taken {
    pub data: Vec<u8>,
    pub properties: lapin::BasicProperties,
}

impl Taken {
    pub fn kind(&self) -> Option<&str> {
        self.properties.kind().as_ref().map(|kind| kind.as_str())
    }
}

/// Someone with broker credentials taking an agent's start before the agent sees it: a consumer
/// of the agent's own queue with a higher priority (quorum queues do not enforce an exclusive
/// consumer) and room for one unacked message. It passes every other request on to the agent (a
/// copy published while it still holds the original, which it then acks), and keeps the first
/// start it gets, unacked: while it holds it, whatever comes next goes to the agent.
pub struct Thief {
    connection: lapin::Connection,
    task: tokio::task::JoinHandle<()>,
    stolen: tokio::sync::mpsc::UnboundedReceiver<Taken>,
}

impl Thief {
    pub async fn on(agent_id: &str) -> Thief {
        Thief::start(agent_id, false).await
    }

    /// A thief there before the agent: it declares the agent's queue as the agent does first.
    pub async fn on_declared(agent_id: &str) -> Thief {
        Thief::start(agent_id, true).await
    }

    async fn start(agent_id: &str, declare: bool) -> Thief {
        use futures_util::StreamExt;
        use lapin::options::*;
        use lapin::types::{AMQPValue, FieldTable};
        let connection = lapin::Connection::connect(&crate::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connects to the broker");
        let channel = connection.create_channel().await.expect("channel");
        if declare {
            let arguments = contracts::wire::topology::amqp::command_queue_arguments(None);
            let durable = QueueDeclareOptions { durable: true, ..Default::default() };
            let queue = contracts::wire::topology::agent_queue(agent_id);
            channel.queue_declare(queue.as_str().into(), durable, arguments).await.expect("declare the agent's queue");
        }
        channel.basic_qos(1, BasicQosOptions::default()).await.expect("qos");
        let mut arguments = FieldTable::default();
        arguments.insert("x-priority".into(), AMQPValue::LongInt(10));
        let queue = contracts::wire::topology::agent_queue(agent_id);
        let mut deliveries = channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), arguments)
            .await
            .expect("consume the agent's queue");
        let (tx, stolen) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut holding = Vec::new();
            while let Some(Ok(delivery)) = deliveries.next().await {
                let taken = Taken { data: delivery.data.clone(), properties: delivery.properties.clone() };
                if taken.kind() == Some("StartScriptV2") && holding.is_empty() {
                    holding.push(delivery);
                    let _ = tx.send(taken);
                    continue;
                }
                let publish = channel.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &taken.data,
                    taken.properties.clone(),
                );
                let _ = publish.await;
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
        Thief { connection, task, stolen }
    }

    /// The start it took, once it has one.
    pub async fn stolen(&mut self, within: std::time::Duration) -> Taken {
        tokio::time::timeout(within, self.stolen.recv())
            .await
            .expect("a start to steal in time")
            .expect("the thief runs")
    }

    /// Stops stealing: the start it held goes back to the queue.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.connection.close(200, "thief done".into()).await;
    }
}

/// Publishes `data` to the agent's own queue as a message of `kind`, with `properties` (the
/// headers that seal it, a correlation id and reply-to of someone else's request).
pub async fn publish_to_agent(agent_id: &str, data: &[u8], properties: lapin::BasicProperties) {
    use lapin::options::*;
    let connection = lapin::Connection::connect(&crate::amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("connects to the broker");
    let channel = connection.create_channel().await.expect("channel");
    let queue = contracts::wire::topology::agent_queue(agent_id);
    channel
        .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), data, properties)
        .await
        .expect("publish")
        .await
        .expect("published");
    let _ = connection.close(200, "done".into()).await;
}

/// Someone with broker credentials answering in an agent's name: its own queue bound to the
/// agent's routing key gets a copy of every request, answered at once with a complete, exit 0
/// status carrying [`Impostor::OUTPUT`].
pub struct Impostor {
    connection: lapin::Connection,
    task: tokio::task::JoinHandle<()>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
}

impl Impostor {
    pub const OUTPUT: &'static str = "impostor output";

    pub async fn start(agent_id: &str, answerer: Answerer) -> Impostor {
        use futures_util::StreamExt;
        use lapin::options::*;
        let CommandCopies { connection, channel, mut requests } = CommandCopies::of(agent_id).await;
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = answered.clone();
        let agent_id = agent_id.to_owned();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = requests.next().await {
                let properties = &delivery.properties;
                let (Some(reply_to), Some(correlation_id)) = (properties.reply_to(), properties.correlation_id())
                else {
                    continue;
                };
                let Some(reply) = forged_reply(&delivery.data) else { continue };
                let body = reply
                    .encode(
                        &agent_id,
                        contracts::time::unix_millis(std::time::SystemTime::now()),
                        &mut edge::entropy::OsEntropy,
                    )
                    .unwrap();
                let mut answer = lapin::BasicProperties::default()
                    .with_correlation_id(correlation_id.clone())
                    .with_type(reply.kind().as_str().into());
                let seal = match &answerer {
                    Answerer::Unsigned => None,
                    Answerer::Key(key) => Some(key.seal_answer(correlation_id.as_str(), &body)),
                    Answerer::Replayed => Some(keys().agent.seal_answer("an-earlier-request", &body)),
                    Answerer::PreBinding => Some(keys().agent.seal_answer(correlation_id.as_str(), &body)),
                };
                if let Some(seal) = seal {
                    answer = contracts::trust::amqp::with_seal(answer, &seal);
                }
                let publish = BasicPublishOptions::default();
                let _ = channel.basic_publish("".into(), reply_to.as_str().into(), publish, &body, answer).await;
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Impostor { connection, task, answered }
    }

    /// Answers sent so far.
    pub fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.connection.close(200, "impostor done".into()).await;
    }
}

/// What an impostor answers: every script finished at once, successfully, with its output.
fn forged_reply(request: &[u8]) -> Option<contracts::wire::envelope::Reply> {
    use contracts::wire::envelope::{Reply, Request};
    use contracts::wire::messages::{Capabilities, SERVICE_CAPABILITIES, SERVICE_SCRIPT_V1, SERVICE_SCRIPT_V2};
    use contracts::wire::status::{LogLine, LogStream, ScriptState, ScriptStatus};
    let (_, request) = Request::decode(request).ok()?;
    if let Request::GetCapabilities(_) = request {
        let services = vec![SERVICE_CAPABILITIES.into(), SERVICE_SCRIPT_V1.into(), SERVICE_SCRIPT_V2.into()];
        return Some(Reply::Capabilities(Capabilities {
            services,
            agent_version: "impostor".into(),
            limits: None,
            approvals: None,
        }));
    }
    let line = LogLine { seq: 1, stream: LogStream::Stdout, text: Impostor::OUTPUT.into(), at: 0 };
    Some(Reply::ScriptStatus(ScriptStatus {
        ticket: request.ticket()?.clone(),
        state: ScriptState::Complete,
        exit_code: Some(0),
        logs: vec![line],
        next_log_sequence: 2,
        lines_written: None,
    }))
}
