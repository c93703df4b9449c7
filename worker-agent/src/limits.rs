//! Limits on a script's resources (`submit --memory-max` and so on, within the agent's
//! `--max-…-per-script` caps; which a start may ask for is decided by `contracts::agent::limits`
//! before the claim), enforced through the cgroup the agent was given.
//!
//! At start the agent finds its own cgroup (`/proc/self/cgroup`); below it, it makes a subtree
//! of its own, `cuttle.<agent id>`, with its first limited script: on cgroup v1 one per controller (`memory`, `cpu`, `pids`), on
//! cgroup v2 one in its delegated cgroup, after moving itself into a leaf (`agent`), since a v2
//! cgroup that hands controllers to its children holds no process itself. Each limited script
//! gets a cgroup of its own there, named after its ticket, removed when it ends (with whatever
//! it left running). File size is bounded by `RLIMIT_FSIZE`, and memory by `RLIMIT_AS` where no
//! memory controller is at hand.
//!
//! A script enters its cgroup before its shell starts: it is started through this very binary
//! (`/proc/self/exe limited-exec`, which stays right through an upgrade of the file), which
//! joins the cgroups, sets the resource limits and execs the rest of the command. A script
//! without limits keeps the plain spawn.

use contracts::agent::limits::{LimitConfigError, LimitPolicy};
use contracts::wire::messages::{Enforcement, LimitsInForce, ScriptLimits};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The CFS period a CPU limit's quota is a share of, in µs.
const CPU_PERIOD_US: u64 = 100_000;

/// Which cgroup hierarchy a controller is used through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The cgroup subtrees the agent makes scripts' cgroups in, per controller; none where the
/// controller cannot be used.
#[derive(Clone, Debug, Default)]
pub struct Cgroups {
    memory: Option<(Version, PathBuf)>,
    cpu: Option<(Version, PathBuf)>,
    pids: Option<(Version, PathBuf)>,
    /// Whether scripts can be started through `limited-exec` (the agent runs as its binary).
    wrapper: bool,
}

impl Cgroups {
    /// How each limit is enforced.
    pub fn enforcement(&self) -> LimitsInForce {
        let how = |controller: &Option<(Version, PathBuf)>| match controller {
            Some((Version::V1, _)) => Enforcement::CgroupV1,
            Some((Version::V2, _)) => Enforcement::CgroupV2,
            None => Enforcement::None,
        };
        if !self.wrapper {
            return LimitsInForce::default();
        }
        LimitsInForce {
            memory: match how(&self.memory) {
                Enforcement::None => Enforcement::Rlimit,
                cgroup => cgroup,
            },
            cpu: how(&self.cpu),
            tasks: how(&self.pids),
            file_size: Enforcement::Rlimit,
            caps: ScriptLimits::default(),
        }
    }

    /// The subtrees of an agent whose cgroups `proc_self_cgroup` (the text of
    /// `/proc/self/cgroup`) names, below `root`; each controller the agent cannot write to is
    /// left out, with the reason logged.
    pub fn detect(root: &Path, proc_self_cgroup: &str, agent_id: &str) -> Cgroups {
        let mut cgroups = Cgroups { wrapper: true, ..Cgroups::default() };
        let subtree = format!("cuttle.{agent_id}");
        let mut unified = None;
        for line in proc_self_cgroup.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let own = path.trim_start_matches('/');
            if controllers.is_empty() {
                unified = Some(own.to_owned());
                continue;
            }
            for controller in controllers.split(',') {
                let slot = match controller {
                    "memory" => &mut cgroups.memory,
                    "cpu" => &mut cgroups.cpu,
                    "pids" => &mut cgroups.pids,
                    _ => continue,
                };
                let mount = [root.join(controller), root.join(controllers)].into_iter().find(|dir| dir.is_dir());
                let Some(mount) = mount else { continue };
                // The subtree itself is made with the first limited script: an agent that never
                // runs one leaves nothing behind.
                let own = mount.join(own);
                match nix::unistd::access(&own, nix::unistd::AccessFlags::W_OK) {
                    Ok(()) => *slot = Some((Version::V1, own.join(&subtree))),
                    Err(error) => {
                        tracing::info!(agent = %agent_id, controller, path = %own.display(), %error, "cannot use this cgroup controller for script limits")
                    }
                }
            }
        }
        let all_v1 = cgroups.memory.is_some() && cgroups.cpu.is_some() && cgroups.pids.is_some();
        if let (false, Some(own)) = (all_v1, unified) {
            if let Err(error) = cgroups.delegate_v2(&root.join(own), &subtree) {
                tracing::info!(agent = %agent_id, %error, "cannot use the cgroup v2 controllers for script limits");
            }
        }
        cgroups
    }

    /// Takes the v2 controllers of the agent's own cgroup `own` that v1 did not give: moves the
    /// agent into a leaf, hands them to its children and makes `own/subtree` for the scripts.
    fn delegate_v2(&mut self, own: &Path, subtree: &str) -> io::Result<()> {
        let available = std::fs::read_to_string(own.join("cgroup.controllers"))?;
        let wanted: Vec<&str> = available
            .split_whitespace()
            .filter(|c| match *c {
                "memory" => self.memory.is_none(),
                "cpu" => self.cpu.is_none(),
                "pids" => self.pids.is_none(),
                _ => false,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let leaf = own.join("agent");
        std::fs::create_dir_all(&leaf)?;
        write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        let enable: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        write(&own.join("cgroup.subtree_control"), &enable.join(" "))?;
        let base = own.join(subtree);
        std::fs::create_dir_all(&base)?;
        write(&base.join("cgroup.subtree_control"), &enable.join(" "))?;
        for controller in wanted {
            let slot = match controller {
                "memory" => &mut self.memory,
                "cpu" => &mut self.cpu,
                _ => &mut self.pids,
            };
            *slot = Some((Version::V2, base.clone()));
        }
        Ok(())
    }

    /// A cgroup for the script of `ticket` with `limits` written, in each subtree a limit needs;
    /// `None` when no limit needs one.
    pub(crate) fn create(&self, ticket: &str, limits: &ScriptLimits) -> io::Result<Option<ScriptCgroup>> {
        let mut dirs: Vec<(Version, PathBuf)> = Vec::new();
        let mut dir_for = |controller: &Option<(Version, PathBuf)>| -> io::Result<Option<(Version, PathBuf)>> {
            let Some((version, base)) = controller else { return Ok(None) };
            let dir = base.join(ticket);
            if !dirs.iter().any(|(_, d)| *d == dir) {
                std::fs::create_dir_all(base)?;
                std::fs::create_dir(&dir)?;
                dirs.push((*version, dir.clone()));
            }
            Ok(Some((*version, dir)))
        };
        let mut made = ScriptCgroup { dirs: Vec::new(), memory: None, pids: None };
        if let Some(bytes) = limits.memory_max {
            if let Some((version, dir)) = dir_for(&self.memory)? {
                match version {
                    Version::V1 => {
                        write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                        // With swap, memory and swap together; absent without swap accounting.
                        let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
                    }
                    Version::V2 => {
                        write(&dir.join("memory.max"), &bytes.to_string())?;
                        let _ = write(&dir.join("memory.swap.max"), "0");
                    }
                }
                made.memory = Some((version, dir));
            }
        }
        if let Some(millis) = limits.cpu_max {
            if let Some((version, dir)) = dir_for(&self.cpu)? {
                let quota = u64::from(millis) * CPU_PERIOD_US / 1000;
                match version {
                    Version::V1 => {
                        write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                    Version::V2 => write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?,
                }
            }
        }
        if let Some(tasks) = limits.tasks_max {
            if let Some((version, dir)) = dir_for(&self.pids)? {
                write(&dir.join("pids.max"), &tasks.to_string())?;
                made.pids = Some((version, dir));
            }
        }
        made.dirs = dirs;
        Ok((!made.dirs.is_empty()).then_some(made))
    }
}

/// Finds the cgroups scripts' limits go through and makes the agent's limit policy from its
/// `caps` and what it can enforce, saying so; a cap it cannot enforce stops it.
pub(crate) fn prepare(
    agent_id: &str,
    caps: ScriptLimits,
) -> Result<(std::sync::Arc<Cgroups>, LimitPolicy), LimitConfigError> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let cgroups = Cgroups::detect(Path::new(CGROUP_ROOT), &own, agent_id);
    let policy = LimitPolicy::new(caps, cgroups.enforcement())?;
    let how = policy.in_force();
    tracing::info!(
        agent = %agent_id,
        memory = how.memory.name(),
        cpu = how.cpu.name(),
        tasks = how.tasks.name(),
        file_size = how.file_size.name(),
        caps = ?how.caps,
        "script limits: how each is enforced"
    );
    Ok((std::sync::Arc::new(cgroups), policy))
}

impl Cgroups {
    /// Removes the agent's subtrees once it stops (each is empty by then, or stays).
    pub(crate) fn remove_subtrees(&self) {
        for (_, base) in [&self.memory, &self.cpu, &self.pids].into_iter().flatten() {
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// Writes `value` to a cgroup interface file (made in a tree that only looks like cgroupfs).
fn write(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    file.write_all(value.as_bytes())
}

/// The cgroup of one script.
#[derive(Debug)]
pub(crate) struct ScriptCgroup {
    dirs: Vec<(Version, PathBuf)>,
    memory: Option<(Version, PathBuf)>,
    pids: Option<(Version, PathBuf)>,
}

impl ScriptCgroup {
    /// The files a process writes its pid to to join this cgroup.
    pub(crate) fn procs_files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.dirs.iter().map(|(_, dir)| dir.join("cgroup.procs"))
    }

    /// Whether the kernel killed a process of the script for its memory limit.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some((version, dir)) = &self.memory else { return false };
        let file = match version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        counter(&dir.join(file), "oom_kill") > 0
    }

    /// How many forks the task limit refused.
    pub(crate) fn forks_refused(&self) -> u64 {
        self.pids.as_ref().map_or(0, |(_, dir)| counter(&dir.join("pids.events"), "max"))
    }

    /// Kills what the script left running in its cgroup, then removes the cgroup.
    pub(crate) async fn remove(self) {
        for (_, dir) in &self.dirs {
            let procs = dir.join("cgroup.procs");
            for _ in 0..100 {
                let pids = std::fs::read_to_string(&procs).unwrap_or_default();
                let pids: Vec<i32> = pids.lines().filter_map(|pid| pid.trim().parse().ok()).collect();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if let Err(error) = std::fs::remove_dir(dir) {
                tracing::warn!(path = %dir.display(), %error, "could not remove a script's cgroup");
            }
        }
    }
}

/// The value of `name` in a cgroup file of `name value` lines; 0 if absent.
fn counter(path: &Path, name: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// The start of the command that runs a script within `limits`: `limited-exec`, with the
/// cgroup to join and the resource limits to set, before the rest of the command.
pub(crate) fn argv(cgroup: Option<&ScriptCgroup>, limits: &ScriptLimits, memory_by_rlimit: bool) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["/proc/self/exe".into(), "limited-exec".into()];
    for procs in cgroup.into_iter().flat_map(ScriptCgroup::procs_files) {
        argv.push("--join".into());
        argv.push(procs.into_os_string());
    }
    if let Some(bytes) = limits.file_size_max {
        argv.push(format!("--file-size-max={bytes}").into());
    }
    if let (Some(bytes), true) = (limits.memory_max, memory_by_rlimit) {
        argv.push(format!("--address-space-max={bytes}").into());
    }
    argv.push("--".into());
    argv
}

/// `worker-agent limited-exec`: the start of a limited script, run before its shell.
#[derive(clap::Args, Debug)]
pub struct LimitedExecArgs {
    /// A cgroup's `cgroup.procs` to join (repeatable).
    #[arg(long = "join")]
    pub join: Vec<PathBuf>,
    /// RLIMIT_FSIZE, in bytes.
    #[arg(long)]
    pub file_size_max: Option<u64>,
    /// RLIMIT_AS, in bytes.
    #[arg(long)]
    pub address_space_max: Option<u64>,
    /// The command to exec.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// Joins the cgroups, sets the limits, and execs the command; returns only on failure.
pub fn limited_exec(args: LimitedExecArgs) -> io::Error {
    use nix::sys::resource::{setrlimit, Resource};
    use std::os::unix::process::CommandExt;
    let me = std::process::id().to_string();
    for procs in &args.join {
        if let Err(error) = write(procs, &me) {
            return io::Error::new(
                error.kind(),
                format!("cannot join the script's cgroup {}: {error}", procs.display()),
            );
        }
    }
    let limits = [(Resource::RLIMIT_FSIZE, args.file_size_max), (Resource::RLIMIT_AS, args.address_space_max)];
    for (resource, limit) in limits {
        if let Some(limit) = limit {
            if let Err(error) = setrlimit(resource, limit, limit) {
                return io::Error::other(format!("cannot set {resource:?}: {error}"));
            }
        }
    }
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    std::process::Command::new(program).args(rest).exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cuttle-cgroupfs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn on_cgroup_v1_each_controller_gets_a_subtree_below_the_agents_own_cgroup() {
        let root = tree();
        for controller in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(root.join(controller).join("svc")).unwrap();
        }
        let cgroups = Cgroups::detect(&root, "9:pids:/svc\n4:memory:/svc\n1:cpu:/svc\n0::/\n", "web-01");
        let how = cgroups.enforcement();
        assert_eq!(
            (how.memory, how.cpu, how.tasks, how.file_size),
            (Enforcement::CgroupV1, Enforcement::CgroupV1, Enforcement::CgroupV1, Enforcement::Rlimit)
        );
        let limits =
            ScriptLimits { memory_max: Some(64 << 20), cpu_max: Some(250), tasks_max: Some(32), file_size_max: None };
        let script = cgroups.create("t-1", &limits).unwrap().unwrap();
        let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
        assert_eq!(read("memory/svc/cuttle.web-01/t-1/memory.limit_in_bytes"), (64u64 << 20).to_string());
        assert_eq!(read("cpu/svc/cuttle.web-01/t-1/cpu.cfs_quota_us"), "25000");
        assert_eq!(read("pids/svc/cuttle.web-01/t-1/pids.max"), "32");
        assert_eq!(script.procs_files().count(), 3);
        std::fs::write(
            root.join("memory/svc/cuttle.web-01/t-1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(root.join("pids/svc/cuttle.web-01/t-1/pids.events"), "max 7\n").unwrap();
        assert!(script.oom_killed());
        assert_eq!(script.forks_refused(), 7);
        let argv = argv(Some(&script), &ScriptLimits { file_size_max: Some(1024), ..limits }, false);
        let argv: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(&argv[..2], ["/proc/self/exe", "limited-exec"]);
        assert!(argv.contains(&"--file-size-max=1024".to_owned()) && argv.last().unwrap() == "--");
        assert!(!argv.iter().any(|a| a.starts_with("--address-space-max")), "memory is the cgroup's");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn on_cgroup_v2_the_agent_moves_into_a_leaf_and_hands_the_controllers_to_the_scripts_subtree() {
        let root = tree();
        let own = root.join("system.slice/cuttle-agent.service");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let cgroups = Cgroups::detect(&root, "0::/system.slice/cuttle-agent.service\n", "web-01");
        let how = cgroups.enforcement();
        assert_eq!(
            (how.memory, how.cpu, how.tasks),
            (Enforcement::CgroupV2, Enforcement::CgroupV2, Enforcement::CgroupV2)
        );
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        assert_eq!(read(&own.join("agent/cgroup.procs")), std::process::id().to_string());
        assert_eq!(read(&own.join("cgroup.subtree_control")), "+cpu +memory +pids");
        assert_eq!(read(&own.join("cuttle.web-01/cgroup.subtree_control")), "+cpu +memory +pids");
        let limits =
            ScriptLimits { memory_max: Some(1 << 30), cpu_max: Some(1500), tasks_max: Some(100), file_size_max: None };
        let script = cgroups.create("t-2", &limits).unwrap().unwrap();
        let dir = own.join("cuttle.web-01/t-2");
        assert_eq!(read(&dir.join("memory.max")), (1u64 << 30).to_string());
        assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
        assert_eq!(read(&dir.join("pids.max")), "100");
        assert_eq!(script.procs_files().collect::<Vec<_>>(), [dir.join("cgroup.procs")], "one cgroup for all three");
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(script.oom_killed());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn without_a_cgroup_it_may_write_memory_and_file_size_fall_back_to_rlimits_and_the_rest_is_unenforced() {
        let root = tree();
        let cgroups = Cgroups::detect(&root, "4:memory:/elsewhere\n0::/\n", "web-01");
        let how = cgroups.enforcement();
        assert_eq!(
            (how.memory, how.cpu, how.tasks, how.file_size),
            (Enforcement::Rlimit, Enforcement::None, Enforcement::None, Enforcement::Rlimit)
        );
        assert!(cgroups
            .create("t-3", &ScriptLimits { memory_max: Some(1 << 20), ..Default::default() })
            .unwrap()
            .is_none());
        assert_eq!(
            Cgroups::default().enforcement(),
            LimitsInForce::default(),
            "an agent not started as its binary enforces nothing"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
