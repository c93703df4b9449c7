//! Request and reply bodies. Every field added after the first version is `Option` or
//! `#[serde(default)]`; no field is ever renamed or reused. Durations are milliseconds.

use crate::wire::approvals::{check_name, check_submitter, Approval, NameError, RequiredApprovals};
use crate::wire::ticket::Ticket;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Service names an agent lists in [`Capabilities`].
pub const SERVICE_CAPABILITIES: &str = "capabilities/v1";
pub const SERVICE_SCRIPT_V1: &str = "script/v1";
pub const SERVICE_SCRIPT_V2: &str = "script/v2";
/// The agent replaces the values of a start's `secret_env` by [`SECRET_MASK`] in every output line
/// before the line leaves it. A dispatcher sends secrets only to an agent that lists this.
pub const SERVICE_SECRET_MASKING: &str = "secret-masking/v1";
/// Capability of agents that open [`SealedSecrets`] ([`crate::trust::sealed`]).
pub const SERVICE_SEALED_SECRETS: &str = "sealed-secrets/v1";
/// Capability of agents whose every answer names the request it answers
/// ([`crate::wire::envelope::InReplyTo`]) inside what it signs: their answers are believed only for
/// the very message the dispatcher sent.
pub const SERVICE_ANSWER_BINDING: &str = "answer-binding/v1";
/// Capability of agents that run a start's script as the user it names ([`ScriptSpec::run_as`])
/// or refuse it. An agent without it would ignore the field and run the script as itself, so a
/// dispatcher never sends it one.
pub const SERVICE_RUN_AS: &str = "run-as/v1";
/// Capability of agents that run a start's script within the limits it names
/// ([`ScriptSpec::limits`]) or refuse it; their capabilities reply says how each limit is enforced
/// ([`Capabilities::limits`]). An agent without it would run the script unbounded.
pub const SERVICE_LIMITS: &str = "limits/v1";
/// Capability of agents that complete every ticket a [`CompleteScriptV2`] lists
/// ([`CompleteScriptV2::more`]): a dispatcher sends them the completes of many scripts in one
/// message, which spares the broker a durable message per script.
pub const SERVICE_COMPLETE_BATCH: &str = "complete-batch/v1";
/// Capability of agents that read a start's purpose, submitter and approvals
/// ([`ScriptSpec::purpose`]) and refuse a command their approval rules do not let run; their
/// capabilities reply reports the rules ([`Capabilities::approvals`]). An agent without it would
/// ignore all three, its rules with them: a dispatcher sends them to no other.
pub const SERVICE_APPROVALS: &str = "approvals/v1";

/// What a secret value is replaced with in a script's output.
pub const SECRET_MASK: &str = "********";
/// Longest secret value; longer ones are refused (the agent holds back this much output while a
/// secret may be starting).
pub const MAX_SECRET_BYTES: usize = 16 * 1024;
/// Largest start a dispatcher sends: script, arguments, environment and files together, encoded.
/// The rest of the 16 MiB message limit is room for the envelope; larger files go with
/// `dispatcher upload` first.
pub const MAX_SCRIPT_SPEC_BYTES: usize = 15 * 1024 * 1024;

/// The wire name of every message kind (the envelope's `kind` and the AMQP `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    GetCapabilities,
    Capabilities,
    StartScriptV2,
    GetStatusV2,
    CancelScriptV2,
    CompleteScriptV2,
    StartScriptV1,
    GetStatusV1,
    CancelScriptV1,
    CompleteScriptV1,
    ScriptStatus,
    Error,
    UploadChunk,
    TransferStatus,
    DownloadChunk,
    FileChunk,
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::GetCapabilities,
        Kind::Capabilities,
        Kind::StartScriptV2,
        Kind::GetStatusV2,
        Kind::CancelScriptV2,
        Kind::CompleteScriptV2,
        Kind::StartScriptV1,
        Kind::GetStatusV1,
        Kind::CancelScriptV1,
        Kind::CompleteScriptV1,
        Kind::ScriptStatus,
        Kind::Error,
        Kind::UploadChunk,
        Kind::TransferStatus,
        Kind::DownloadChunk,
        Kind::FileChunk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GetCapabilities => "GetCapabilities",
            Kind::Capabilities => "Capabilities",
            Kind::StartScriptV2 => "StartScriptV2",
            Kind::GetStatusV2 => "GetStatusV2",
            Kind::CancelScriptV2 => "CancelScriptV2",
            Kind::CompleteScriptV2 => "CompleteScriptV2",
            Kind::StartScriptV1 => "StartScriptV1",
            Kind::GetStatusV1 => "GetStatusV1",
            Kind::CancelScriptV1 => "CancelScriptV1",
            Kind::CompleteScriptV1 => "CompleteScriptV1",
            Kind::ScriptStatus => "ScriptStatus",
            Kind::Error => "Error",
            Kind::UploadChunk => "UploadChunk",
            Kind::TransferStatus => "TransferStatus",
            Kind::DownloadChunk => "DownloadChunk",
            Kind::FileChunk => "FileChunk",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shell a script runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shell {
    #[default]
    Sh,
    Bash,
    #[serde(other)]
    Unknown,
}

impl Shell {
    pub fn program(self) -> Option<&'static str> {
        match self {
            Shell::Sh => Some("sh"),
            Shell::Bash => Some("bash"),
            Shell::Unknown => None,
        }
    }
}

/// Whether a script must run alone among the scripts sharing its mutex.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Isolation {
    /// Runs beside others; holds its mutex (if named) as a reader.
    #[default]
    None,
    /// Runs alone: holds its mutex (default [`DEFAULT_MUTEX`]) as the only writer.
    Full,
    #[serde(other)]
    Unknown,
}

/// Mutex a full-isolation script takes when it names none.
pub const DEFAULT_MUTEX: &str = "RunningScript";

/// A file written into the script's workspace before it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptFile {
    pub name: String,
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
}

/// Environment variables whose values must never be seen: in the script's environment, masked in
/// its output, never logged. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(BTreeMap<String, String>);

impl Secrets {
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Secrets(values)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Name and value of each secret, for the script's environment and the masker.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        self.0.insert(name, value)
    }

    /// Checks what decoding cannot: names usable as variables, values neither empty nor longer
    /// than [`MAX_SECRET_BYTES`]. Messages name the variable, never its value.
    pub fn validate(&self) -> Result<(), SpecError> {
        for (name, value) in &self.0 {
            let plain = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                return Err(SpecError::SecretName(name.clone()));
            }
            if value.is_empty() {
                return Err(SpecError::EmptySecret(name.clone()));
            }
            if value.len() > MAX_SECRET_BYTES {
                return Err(SpecError::LongSecret(name.clone()));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, SECRET_MASK))).finish()
    }
}

/// What makes a script's start one no agent runs. Messages name a secret's variable, never
/// its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("secret variable name {0:?} must be [A-Za-z_][A-Za-z0-9_]*")]
    SecretName(String),
    #[error("secret {0} is empty")]
    EmptySecret(String),
    #[error("secret {0} is longer than {MAX_SECRET_BYTES} bytes")]
    LongSecret(String),
    #[error("the script with its files, arguments and environment is {size} bytes, over the {MAX_SCRIPT_SPEC_BYTES} bytes one command can carry; send large files with `dispatcher upload` first")]
    TooLarge { size: usize },
    #[error("unknown shell")]
    UnknownShell,
    #[error("unknown isolation")]
    UnknownIsolation,
    #[error("secrets come sealed or in clear, not both")]
    SealedAndClear,
    #[error("secrets are sealed to at most {MAX_SEALED_COPIES} keys")]
    SealedCopies,
    #[error("{0} is both a variable and a secret")]
    SecretAndVariable(String),
    #[error("file name {0:?} is given twice")]
    FileTwice(String),
    #[error("file name {0:?} must be a plain name")]
    FileName(String),
    #[error(transparent)]
    RunAs(#[from] BadUserName),
    #[error("the {0} limit must be more than 0")]
    ZeroLimit(&'static str),
    #[error(transparent)]
    Name(#[from] NameError),
}

/// The most keys one start's secrets are sealed to (a pool pinned under keys being rotated).
pub const MAX_SEALED_COPIES: usize = 16;

/// The secrets of one start, sealed to one key ([`crate::trust::sealed`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecrets {
    /// The id of the key they are sealed to, in hex ([`crate::trust::keys::KeyId`]).
    pub key: String,
    /// The sealer's X25519 share, fresh for each copy.
    #[serde(with = "serde_bytes")]
    pub share: Vec<u8>,
    /// ChaCha20-Poly1305 of the msgpack of the secrets, its tag included.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedSecrets(to {}, {} bytes)", self.key, self.sealed.len())
    }
}

/// What to run; shared by script v1 and v2 starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptSpec {
    pub script: String,
    #[serde(default)]
    pub shell: Shell,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<ScriptFile>,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default)]
    pub mutex_name: Option<String>,
    /// Longest wait for the isolation mutex, in ms; `None` waits as long as it takes.
    #[serde(default)]
    pub mutex_timeout: Option<u64>,
    /// Longest run time, in ms; `None` runs until the script ends or is cancelled.
    #[serde(default)]
    pub execution_timeout: Option<u64>,
    /// Variables set like `env` whose values the agent masks in the output. Sent only to agents
    /// that list [`SERVICE_SECRET_MASKING`], sealed ([`ScriptSpec::sealed_secret_env`]) by a
    /// dispatcher that pins the agent's key; not part of [`ScriptSpec::digest`].
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secret_env: Secrets,
    /// [`ScriptSpec::secret_env`] sealed to the target's keys ([`crate::trust::sealed`]), sent in its
    /// place to agents that list [`SERVICE_SEALED_SECRETS`]; not part of
    /// [`ScriptSpec::digest`] (each sealing differs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed_secret_env: Vec<SealedSecrets>,
    /// The user the script runs as, when not the one the agent chooses (its `--default-run-as`,
    /// else its own). Sent only to agents that list [`SERVICE_RUN_AS`]; part of the digest, so a
    /// start repeated under another user is a different command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Bounds on the script's resources, within the agent's caps. Sent only to agents that list
    /// [`SERVICE_LIMITS`]; part of the digest.
    #[serde(default, skip_serializing_if = "ScriptLimits::is_empty")]
    pub limits: ScriptLimits,
    /// What the command is for (`deployment`, `runbook`): the agent's approval rules select
    /// commands by it. Sent only to agents that list [`SERVICE_APPROVALS`]; part of the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Who asked for the command, as the dispatcher knows them; in the run's receipt. Sent only
    /// to agents that list [`SERVICE_APPROVALS`]; part of the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// Approvals of the command by keys the agent's rules name (`crate::trust::approval`). Sent
    /// only to agents that list [`SERVICE_APPROVALS`]; not part of the digest, which they sign.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
}

/// Bounds on one script's resources; `None` leaves one to the agent's cap, if it has one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptLimits {
    /// Memory of the script and every process it starts, in bytes; past it they are killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// CPU time, in thousandths of one core (500: half a core), across its processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<u32>,
    /// Processes and threads at once; a fork past it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_max: Option<u32>,
    /// Largest file a process of the script may write, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_max: Option<u64>,
}

impl ScriptLimits {
    pub fn is_empty(&self) -> bool {
        *self == ScriptLimits::default()
    }

    fn validate(&self) -> Result<(), SpecError> {
        let zero = [
            ("memory", self.memory_max == Some(0)),
            ("cpu", self.cpu_max == Some(0)),
            ("tasks", self.tasks_max == Some(0)),
            ("file size", self.file_size_max == Some(0)),
        ];
        match zero.into_iter().find(|(_, zero)| *zero) {
            Some((limit, _)) => Err(SpecError::ZeroLimit(limit)),
            None => Ok(()),
        }
    }
}

/// How an agent enforces one kind of limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// It cannot: a start naming this limit is refused.
    #[default]
    None,
    /// By a cgroup v1 controller.
    CgroupV1,
    /// By a cgroup v2 controller.
    CgroupV2,
    /// By a resource limit (setrlimit) on each process.
    Rlimit,
    /// A value from a newer agent.
    #[serde(other)]
    Unknown,
}

impl Enforcement {
    pub fn name(self) -> &'static str {
        match self {
            Enforcement::None => "none",
            Enforcement::CgroupV1 => "cgroup-v1",
            Enforcement::CgroupV2 => "cgroup-v2",
            Enforcement::Rlimit => "rlimit",
            Enforcement::Unknown => "unknown",
        }
    }
}

/// The limits an agent enforces, and how, with its caps: what its capabilities reply reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsInForce {
    pub memory: Enforcement,
    pub cpu: Enforcement,
    pub tasks: Enforcement,
    pub file_size: Enforcement,
    /// The most a script may ask for, and what it gets when it asks for nothing.
    pub caps: ScriptLimits,
}

impl ScriptSpec {
    /// The mutex this script takes, if any, and whether it takes it alone.
    pub fn mutex(&self) -> Option<(&str, bool)> {
        match (self.isolation, self.mutex_name.as_deref()) {
            (Isolation::Full, name) => Some((name.unwrap_or(DEFAULT_MUTEX), true)),
            (_, Some(name)) => Some((name, false)),
            (_, None) => None,
        }
    }

    /// A digest of what the script does, to tell a repeated start from a different command that
    /// reuses a ticket. Hex SHA-256 of the named msgpack encoding (env is a sorted map), without
    /// the secrets: a digest kept in a store must not let anyone test guesses of a secret.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let public = ScriptSpec {
            secret_env: Secrets::default(),
            sealed_secret_env: Vec::new(),
            approvals: Vec::new(),
            ..self.clone()
        };
        let bytes = rmp_serde::to_vec_named(&public).expect("a script spec always encodes");
        hex::encode(sha2::Sha256::digest(bytes))
    }

    /// Whether the start fits in one command message ([`MAX_SCRIPT_SPEC_BYTES`]).
    pub fn check_size(&self) -> Result<(), SpecError> {
        let size = rmp_serde::to_vec_named(self).map(|b| b.len()).unwrap_or(usize::MAX);
        if size > MAX_SCRIPT_SPEC_BYTES {
            return Err(SpecError::TooLarge { size });
        }
        Ok(())
    }

    /// Checks what decoding cannot.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.shell == Shell::Unknown {
            return Err(SpecError::UnknownShell);
        }
        if self.isolation == Isolation::Unknown {
            return Err(SpecError::UnknownIsolation);
        }
        self.secret_env.validate()?;
        if !self.sealed_secret_env.is_empty() && !self.secret_env.is_empty() {
            return Err(SpecError::SealedAndClear);
        }
        if self.sealed_secret_env.len() > MAX_SEALED_COPIES {
            return Err(SpecError::SealedCopies);
        }
        if let Some(user) = &self.run_as {
            check_user_name(user)?;
        }
        self.limits.validate()?;
        if let Some(purpose) = &self.purpose {
            check_name("purpose", purpose)?;
        }
        if let Some(submitter) = &self.submitter {
            check_submitter(submitter)?;
        }
        if let Some(name) = self.secret_env.names().find(|name| self.env.contains_key(*name)) {
            return Err(SpecError::SecretAndVariable(name.to_owned()));
        }
        let mut names = std::collections::BTreeSet::new();
        for file in &self.files {
            if !names.insert(file.name.as_str()) {
                return Err(SpecError::FileTwice(file.name.clone()));
            }
            let name = std::path::Path::new(&file.name);
            let plain = name.components().count() == 1
                && matches!(name.components().next(), Some(std::path::Component::Normal(_)));
            if !plain {
                return Err(SpecError::FileName(file.name.clone()));
            }
        }
        Ok(())
    }
}

/// A name that cannot be a user's, wherever one is given (a command's `run_as`, a transfer's, the
/// agent's `--allow-run-as`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a user name (letters, digits, '_', '-', '.', at most 32, not starting with '-')")]
pub struct BadUserName(pub String);

/// A user name as POSIX systems accept one: portable characters, not starting with `-`, at most
/// 32 bytes (a trailing `$` for machine accounts allowed).
pub fn check_user_name(name: &str) -> Result<(), BadUserName> {
    let body = name.strip_suffix('$').unwrap_or(name);
    let good = !body.is_empty()
        && name.len() <= 32
        && !body.starts_with('-')
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if good {
        Ok(())
    } else {
        Err(BadUserName(name.to_owned()))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetCapabilities {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub services: Vec<String>,
    pub agent_version: String,
    /// The limits the agent enforces, and how (agents that list [`SERVICE_LIMITS`]). Boxed: every
    /// reply is as large as its largest kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Box<LimitsInForce>>,
    /// The approval rules in force on the agent (agents that list [`SERVICE_APPROVALS`]): those
    /// of its trusted-keys file that select it by its id, pool or labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Vec<RequiredApprovals>>,
}

impl Capabilities {
    pub fn supports(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

/// Starts a script under a ticket the dispatcher chose. Idempotent: the same ticket never runs
/// twice, and every copy is answered with the ticket's current status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartScriptV2 {
    pub ticket: Ticket,
    #[serde(flatten)]
    pub spec: ScriptSpec,
    /// How long, in ms, the agent may hold the reply for first output or completion.
    #[serde(default)]
    pub wait_for_output: Option<u64>,
    /// Unix ms when the dispatcher first sent this start (every repeat carries the same), so an
    /// agent whose ticket store lost its data since can refuse it.
    #[serde(default)]
    pub first_issued_at: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetStatusV2 {
    pub ticket: Ticket,
    #[serde(default)]
    pub last_log_sequence: u64,
    /// How long, in ms, the agent may hold the reply for new output or completion.
    #[serde(default)]
    pub wait: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelScriptV2 {
    pub ticket: Ticket,
    #[serde(default)]
    pub last_log_sequence: u64,
    /// Unix ms when the dispatcher first sent the start this cancel stops, when that start has
    /// not been answered: an agent whose ticket store lost its data since cannot tell whether it
    /// ran, and says so rather than "unknown ticket" (which reads as "nothing ran").
    #[serde(default)]
    pub first_issued_at: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteScriptV2 {
    pub ticket: Ticket,
    /// More tickets completed by the same message, sent only to agents that list
    /// [`SERVICE_COMPLETE_BATCH`] (an older agent would complete `ticket` alone), at most
    /// [`MAX_COMPLETE_BATCH`] in all. The answer is `ticket`'s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Ticket>,
}

impl CompleteScriptV2 {
    /// A complete of `ticket` alone.
    pub fn new(ticket: Ticket) -> Self {
        CompleteScriptV2 { ticket, more: Vec::new() }
    }

    /// Every ticket it completes, `ticket` first, [`MAX_COMPLETE_BATCH`] at most (any past it are
    /// left: the agent cleans them up when they expire).
    pub fn tickets(&self) -> impl Iterator<Item = &Ticket> {
        std::iter::once(&self.ticket).chain(&self.more).take(MAX_COMPLETE_BATCH)
    }
}

/// Tickets one [`CompleteScriptV2`] completes at most.
pub const MAX_COMPLETE_BATCH: usize = 256;

/// Legacy start: the agent makes the ticket, so a repeat runs the script again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartScriptV1 {
    #[serde(flatten)]
    pub spec: ScriptSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetStatusV1 {
    pub ticket: Ticket,
    #[serde(default)]
    pub last_log_sequence: u64,
}

/// Legacy cancel (Tentacle's v1 script service has one): stops the script the agent runs under
/// its own ticket. Idempotent, so repeated until the agent answers, as on v2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelScriptV1 {
    pub ticket: Ticket,
    #[serde(default)]
    pub last_log_sequence: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteScriptV1 {
    pub ticket: Ticket,
}
