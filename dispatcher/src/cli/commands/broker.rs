//! `dispatcher setup-broker` and `dispatcher enrol-agent`: the operator's steps that let agents
//! and dispatchers run with least privilege (docs/security.md, "Least privilege on the broker").

use crate::cli::args::{EnrolAgentArgs, EnrolPoolArgs, SetupBrokerArgs};
use crate::rpc::RpcConfig;
use crate::setup::{self, DeadLimits, DeadQueue, ReceiptsRetention};
use contracts::submission::outcome::exit;
use contracts::wire::topology::{Permissions, DEAD_QUEUE, RECEIPTS_STREAM};
use std::process::ExitCode;

fn broker_error(error: crate::error::RpcError) -> ExitCode {
    eprintln!("cuttle: {error}");
    ExitCode::from(exit::BROKER_UNREACHABLE)
}

/// Declares the shared topology and prints the permissions of the dispatcher and KEDA roles.
pub(crate) async fn setup_broker(config: &RpcConfig, args: &SetupBrokerArgs) -> ExitCode {
    let limits = DeadLimits { max_length: args.dead_max_length, ttl: args.dead_ttl };
    let retention = ReceiptsRetention { max_age: args.receipts_max_age.clone(), max_bytes: args.receipts_max_bytes };
    let (found, receipts_existed) = match setup::setup_broker(config, limits, &retention).await {
        Ok(found) => found,
        Err(error) => return broker_error(error),
    };
    let vhost = setup::vhost_of(&config.amqp_url);
    let ttl_ms = args.dead_ttl.as_millis();
    match found {
        DeadQueue::Bounded => println!(
            "declared the exchanges, the presence stream and {DEAD_QUEUE} (at most {} messages, each for {}) in vhost {vhost}",
            args.dead_max_length,
            contracts::time::short(args.dead_ttl)
        ),
        DeadQueue::Existing => {
            println!("declared the exchanges and the presence stream in vhost {vhost}; {DEAD_QUEUE} existed already");
            println!(
                "bound it with a policy (a queue's arguments cannot change): rabbitmqctl set_policy -p '{vhost}' cuttle-dead '^cuttle\\.dead$' '{{\"max-length\":{},\"overflow\":\"drop-head\",\"message-ttl\":{ttl_ms}}}' --apply-to queues",
                args.dead_max_length
            );
        }
    }
    if receipts_existed {
        println!(
            "{RECEIPTS_STREAM} existed already: its retention stays (a stream's arguments cannot change; a policy can: rabbitmqctl set_policy -p '{vhost}' cuttle-receipts '^cuttle\\.receipts$' '{{\"max-age\":\"{}\",\"max-length-bytes\":{}}}' --apply-to queues)",
            retention.max_age, retention.max_bytes
        );
    } else {
        println!(
            "declared {RECEIPTS_STREAM}, keeping receipts {} and at most {} bytes",
            retention.max_age, retention.max_bytes
        );
    }
    println!("dispatcher: {}", Permissions::dispatcher().rabbitmqctl(&vhost, "DISPATCHER_USER"));
    println!("queue length reader (KEDA): {}", Permissions::queue_length_reader().rabbitmqctl(&vhost, "KEDA_USER"));
    println!("each agent: dispatcher enrol-agent ID; each pool: dispatcher enrol-pool POOL");
    ExitCode::SUCCESS
}

/// Declares one agent's queues and bindings and prints the permissions its user needs.
pub(crate) async fn enrol_agent(config: &RpcConfig, args: &EnrolAgentArgs) -> ExitCode {
    for (what, name) in [("agent id", Some(&args.agent_id)), ("pool name", args.pool.as_ref())] {
        if let Some(Err(error)) = name.map(|name| contracts::wire::topology::validate_name(what, name)) {
            eprintln!("cuttle: {error}");
            return ExitCode::from(exit::USAGE);
        }
    }
    if let Err(error) = setup::enrol(config, Some(&args.agent_id), args.pool.as_deref()).await {
        return broker_error(error);
    }
    let vhost = setup::vhost_of(&config.amqp_url);
    let user = args.user.as_deref().unwrap_or(&args.agent_id);
    println!(
        "enrolled {}: its queue is declared and bound; start it with --enrolled (CUTTLE_ENROLLED=true)",
        args.agent_id
    );
    println!("{}", Permissions::agent(&args.agent_id, args.pool.as_deref()).rabbitmqctl(&vhost, user));
    ExitCode::SUCCESS
}

/// Declares a pool's queues and bindings and prints the permissions its workers' user needs:
/// each worker, with an id `POOL.NAME`, declares and binds its own queue.
pub(crate) async fn enrol_pool(config: &RpcConfig, args: &EnrolPoolArgs) -> ExitCode {
    if let Err(error) = contracts::wire::topology::validate_name("pool name", &args.pool) {
        eprintln!("cuttle: {error}");
        return ExitCode::from(exit::USAGE);
    }
    if let Err(error) = setup::enrol(config, None, Some(&args.pool)).await {
        return broker_error(error);
    }
    let vhost = setup::vhost_of(&config.amqp_url);
    let user = args.user.clone().unwrap_or_else(|| format!("cuttle-pool-{}", args.pool));
    println!(
        "enrolled pool {pool}: its queues are declared and bound; start each worker with --enrolled --pool {pool} --agent-id {pool}.NAME (NAME without dots, such as its pod name): it declares and binds only its own queue, cuttle.agent.{pool}.NAME",
        pool = args.pool
    );
    println!("{}", Permissions::pool_worker(&args.pool).rabbitmqctl(&vhost, &user));
    ExitCode::SUCCESS
}
