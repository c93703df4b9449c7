//! The limits a script runs within. A command may name limits (`submit --memory-max` and so on,
//! signed with the script); the agent sets caps (`--max-memory-per-script` and so on) that win:
//! a script gets what it asked for when that is within the cap, the cap when it asked for
//! nothing, and a request above a cap is refused, as is one for a limit the agent cannot enforce.
//! Decided before the claim, so a refused start leaves nothing behind.
//!
//! Task and CPU limits need their cgroup controller: nothing else bounds a script's processes
//! (`RLIMIT_NPROC` counts per user, and root ignores it) or its share of the CPU. Memory and file
//! size fall back to resource limits of each process where no controller is at hand.

use crate::wire::messages::{Enforcement, LimitsInForce, ScriptLimits};

/// Why a start is refused for the limits it names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitRefusal {
    #[error("the {limit} limit asked for ({asked}) is above this agent's cap ({cap}, its {flag})")]
    AboveCap { limit: &'static str, asked: String, cap: String, flag: &'static str },
    #[error("this agent cannot enforce a {limit} limit (no {controller} cgroup controller it may use)")]
    Unenforceable { limit: &'static str, controller: &'static str },
}

/// What is wrong with an agent's caps, found at start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitConfigError {
    #[error("{flag} needs the {controller} cgroup controller, which this agent cannot use here: give the agent a cgroup it may write to (a delegated subtree), or drop {flag}")]
    Unenforceable { flag: &'static str, controller: &'static str },
}

/// One kind of limit: its name in messages, the agent's flag for its cap, the controller it
/// needs and how a value reads.
struct Kind {
    name: &'static str,
    flag: &'static str,
    controller: &'static str,
    show: fn(u64) -> String,
}

const MEMORY: Kind = Kind { name: "memory", flag: "--max-memory-per-script", controller: "memory", show: bytes };
const CPU: Kind = Kind { name: "cpu", flag: "--max-cpu-per-script", controller: "cpu", show: cores };
const TASKS: Kind = Kind { name: "tasks", flag: "--max-tasks-per-script", controller: "pids", show: count };
const FILE_SIZE: Kind = Kind { name: "file size", flag: "--max-file-size-per-script", controller: "none", show: bytes };

/// Why a limit's value cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitValueError {
    #[error("{0:?} is not a size such as 512MiB (units B, KiB, MiB, GiB)")]
    Size(String),
    #[error("{0:?} is not a number of cores such as 0.5 or 2 (at most 3 decimals, more than 0, at most 1024)")]
    Cores(String),
}

/// A size such as `512MiB`, `2GiB`, `65536` (bytes), more than 0.
pub fn parse_size(raw: &str) -> Result<u64, LimitValueError> {
    let digits = raw.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &raw[digits.len()..] {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(LimitValueError::Size(raw.to_owned())),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(unit))
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| LimitValueError::Size(raw.to_owned()))
}

/// A number of cores such as `0.5` or `2`, in thousandths of a core.
pub fn parse_cores(raw: &str) -> Result<u32, LimitValueError> {
    let bad = || LimitValueError::Cores(raw.to_owned());
    let (whole, part) = raw.split_once('.').unwrap_or((raw, ""));
    if part.len() > 3
        || (whole.is_empty() && part.is_empty())
        || !(whole.chars().chain(part.chars()).all(|c| c.is_ascii_digit()))
    {
        return Err(bad());
    }
    let whole: u32 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let part: u32 = if part.is_empty() { 0 } else { format!("{part:0<3}").parse().map_err(|_| bad())? };
    let millis = whole.checked_mul(1000).and_then(|w| w.checked_add(part)).ok_or_else(bad)?;
    if millis == 0 || millis > 1024 * 1000 {
        return Err(bad());
    }
    Ok(millis)
}

/// How a byte count reads: in the largest binary unit that divides it, else in bytes.
pub fn bytes(value: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if value >= size && value.is_multiple_of(size) {
            return format!("{}{unit}", value / size);
        }
    }
    format!("{value}B")
}

/// How thousandths of a core read: `0.5 cores`.
pub fn cores(millis: u64) -> String {
    let whole = millis / 1000;
    match millis % 1000 {
        0 => format!("{whole} cores"),
        part => format!("{}.{} cores", whole, format!("{part:03}").trim_end_matches('0')),
    }
}

fn count(value: u64) -> String {
    value.to_string()
}

/// The agent's caps and how it enforces each limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitPolicy {
    in_force: LimitsInForce,
}

impl LimitPolicy {
    /// The policy of an agent with `caps` that enforces limits as `enforcement` says (its caps
    /// ignored). A cap on tasks or CPU without its controller is refused.
    pub fn new(caps: ScriptLimits, enforcement: LimitsInForce) -> Result<Self, LimitConfigError> {
        for (kind, capped, how) in
            [(&TASKS, caps.tasks_max.is_some(), enforcement.tasks), (&CPU, caps.cpu_max.is_some(), enforcement.cpu)]
        {
            if capped && how == Enforcement::None {
                return Err(LimitConfigError::Unenforceable { flag: kind.flag, controller: kind.controller });
            }
        }
        Ok(LimitPolicy { in_force: LimitsInForce { caps, ..enforcement } })
    }

    /// What the capabilities reply reports.
    pub fn in_force(&self) -> LimitsInForce {
        self.in_force
    }

    /// The limits a script that asked for `asked` runs within.
    pub fn resolve(&self, asked: &ScriptLimits) -> Result<ScriptLimits, LimitRefusal> {
        let (caps, how) = (self.in_force.caps, self.in_force);
        Ok(ScriptLimits {
            memory_max: within(&MEMORY, asked.memory_max, caps.memory_max, how.memory)?,
            cpu_max: within(&CPU, asked.cpu_max.map(u64::from), caps.cpu_max.map(u64::from), how.cpu)?
                .map(|v| v as u32),
            tasks_max: within(&TASKS, asked.tasks_max.map(u64::from), caps.tasks_max.map(u64::from), how.tasks)?
                .map(|v| v as u32),
            file_size_max: within(&FILE_SIZE, asked.file_size_max, caps.file_size_max, how.file_size)?,
        })
    }
}

/// One limit: what was asked for if within the cap, else the cap.
fn within(kind: &Kind, asked: Option<u64>, cap: Option<u64>, how: Enforcement) -> Result<Option<u64>, LimitRefusal> {
    match (asked, cap) {
        (Some(_), _) if how == Enforcement::None => {
            Err(LimitRefusal::Unenforceable { limit: kind.name, controller: kind.controller })
        }
        (Some(asked), Some(cap)) if asked > cap => Err(LimitRefusal::AboveCap {
            limit: kind.name,
            asked: (kind.show)(asked),
            cap: (kind.show)(cap),
            flag: kind.flag,
        }),
        (asked, cap) => Ok(asked.or(cap)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroups_v1() -> LimitsInForce {
        LimitsInForce {
            memory: Enforcement::CgroupV1,
            cpu: Enforcement::CgroupV1,
            tasks: Enforcement::CgroupV1,
            file_size: Enforcement::Rlimit,
            caps: ScriptLimits::default(),
        }
    }

    #[test]
    fn a_script_gets_what_it_asks_within_the_cap_the_cap_when_it_asks_nothing_and_is_refused_above() {
        let caps = ScriptLimits { memory_max: Some(1 << 30), tasks_max: Some(100), ..Default::default() };
        let policy = LimitPolicy::new(caps, cgroups_v1()).unwrap();
        let asked = ScriptLimits { memory_max: Some(256 << 20), cpu_max: Some(500), ..Default::default() };
        let got = policy.resolve(&asked).unwrap();
        assert_eq!(
            got,
            ScriptLimits { memory_max: Some(256 << 20), cpu_max: Some(500), tasks_max: Some(100), file_size_max: None }
        );
        assert_eq!(policy.resolve(&ScriptLimits::default()).unwrap(), caps);
        let above = ScriptLimits { memory_max: Some(2 << 30), ..Default::default() };
        let refusal = policy.resolve(&above).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "the memory limit asked for (2GiB) is above this agent's cap (1GiB, its --max-memory-per-script)"
        );
        assert_eq!(policy.in_force().caps, caps);
    }

    #[test]
    fn a_limit_the_agent_cannot_enforce_is_refused_and_so_is_a_cap_on_tasks_or_cpu_without_its_controller() {
        let rlimits_only =
            LimitsInForce { memory: Enforcement::Rlimit, file_size: Enforcement::Rlimit, ..Default::default() };
        let policy =
            LimitPolicy::new(ScriptLimits { memory_max: Some(1 << 20), ..Default::default() }, rlimits_only).unwrap();
        let tasks = ScriptLimits { tasks_max: Some(10), ..Default::default() };
        assert!(matches!(
            policy.resolve(&tasks),
            Err(LimitRefusal::Unenforceable { limit: "tasks", controller: "pids" })
        ));
        let capped = ScriptLimits { cpu_max: Some(500), ..Default::default() };
        assert_eq!(
            LimitPolicy::new(capped, rlimits_only),
            Err(LimitConfigError::Unenforceable { flag: "--max-cpu-per-script", controller: "cpu" })
        );
    }

    #[test]
    fn sizes_and_cores_are_read_and_bad_ones_refused() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "0", "1TB", "x", "-1MiB", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!((parse_cores("0.5"), parse_cores("2"), parse_cores(".25")), (Ok(500), Ok(2000), Ok(250)));
        for bad in ["0", "0.0001", "1.2.3", "", ".", "a", "2000", "-1"] {
            assert!(parse_cores(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_read_in_their_units() {
        assert_eq!((bytes(1 << 30), bytes(3 << 20), bytes(1000)), ("1GiB".into(), "3MiB".into(), "1000B".into()));
        assert_eq!((cores(500), cores(2000), cores(1250)), ("0.5 cores".into(), "2 cores".into(), "1.25 cores".into()));
    }
}
