//! What some tests need beyond the shared RabbitMQ and Redis: root, RabbitMQ nodes or Redis
//! servers of their own, `rabbitmqctl` access to the shared broker, a browser. Each check gives
//! the reason a test cannot run here, or `None`; [`skip_unless!`](crate::skip_unless) ends the
//! test with that reason, visibly: `skipped: <test>: <reason>` on stderr, and a line in the file
//! `CUTTLE_SKIPPED_LOG` names, which `deploy/local/test.sh` lists after the run.

use std::io::Write;
use std::sync::OnceLock;

/// Whether an executable `name` is on the PATH.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// The first of `programs` not on the PATH, as a reason.
fn installed(programs: &[&str], package: &str) -> Option<String> {
    let absent: Vec<&str> = programs.iter().copied().filter(|name| !on_path(name)).collect();
    (!absent.is_empty()).then(|| format!("{} not installed (apt-get install -y {package})", absent.join(" and ")))
}

/// Root: to give files to other users, and to start RabbitMQ nodes (the server runs only as root,
/// dropping to the `rabbitmq` user, or as that user).
pub fn root() -> Option<String> {
    (!nix::unistd::geteuid().is_root()).then(|| "needs root".to_owned())
}

/// RabbitMQ nodes of the test's own ([`crate::services::PrivateRabbit`], [`crate::cluster::RabbitCluster`]).
pub fn private_rabbit() -> Option<String> {
    installed(&["rabbitmq-server", "rabbitmqctl"], "rabbitmq-server")
        .or_else(|| root().map(|_| "needs root to start RabbitMQ nodes of its own".to_owned()))
}

/// Redis servers of the test's own ([`crate::services::PrivateRedis`], [`crate::cluster::ReplicatedRedis`]).
pub fn private_redis() -> Option<String> {
    installed(&["redis-server", "redis-cli"], "redis-server")
}

/// `rabbitmqctl` answering for the shared broker (it needs the broker's Erlang cookie: root, or
/// the `rabbitmq` user). Asked once per test process.
pub fn shared_rabbitmqctl() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            installed(&["rabbitmqctl"], "rabbitmq-server").or_else(|| {
                let status = std::process::Command::new("rabbitmqctl")
                    .args(["-q", "status"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                match status {
                    Ok(status) if status.success() => None,
                    _ => {
                        Some("rabbitmqctl cannot reach the shared broker (needs root or the rabbitmq user)".to_owned())
                    }
                }
            })
        })
        .clone()
}

/// A real HTTP proxy, WebSocket relay and TLS router ([`crate::relays`]).
pub fn relays() -> Option<String> {
    installed(&["tinyproxy"], "tinyproxy")
        .or_else(|| installed(&["websockify"], "websockify"))
        .or_else(|| installed(&["haproxy"], "haproxy"))
}

/// Network namespaces of the test's own ([`crate::relays::Namespace`]): root and `ip`.
pub fn namespaces() -> Option<String> {
    installed(&["ip"], "iproute2").or_else(|| root().map(|_| "needs root to create network namespaces".to_owned()))
}

/// Chromium and chromedriver, for the web view's browser tests.
pub fn browser() -> Option<String> {
    installed(&["chromium", "chromedriver"], "chromium chromium-driver")
}

/// Says that the running test is skipped and why: on stderr, and in `CUTTLE_SKIPPED_LOG`.
pub fn skipped(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    eprintln!("skipped: {test}: {reason}");
    if let Some(log) = std::env::var_os("CUTTLE_SKIPPED_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(file, "{test}: {reason}");
        }
    }
}

/// Ends the test (returns from the function) when one of the needs is not met, saying why
/// ([`skipped`]). Each argument is an `Option<String>` reason, as the checks here give.
#[macro_export]
macro_rules! skip_unless {
    ($($need:expr),+ $(,)?) => {
        $(
            if let Some(reason) = $need {
                $crate::needs::skipped(&reason);
                return;
            }
        )+
    };
}
