//! The broker's own floor under a script's latency: one request and its answer as a start and
//! its status travel, and nothing else. The request is published persistent into a quorum queue
//! of its own and its confirm awaited (as the dispatcher does), a consumer takes it, answers
//! through direct reply-to and acknowledges it (as the agent does), and the answer is awaited;
//! one at a time. `bench/compare-celery.sh` runs it on its private node beside both systems.
//!
//! `CUTTLE_AMQP_URL=amqp://... cargo run --release -p tests --example round_trip -- [count]`
//! prints one JSON line: `{"count", "p50_ms", "p90_ms", "p99_ms"}`.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::{Duration, Instant};

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(500);
    let url = tests::amqp_url();
    let queue = format!("cuttle.round-trip.{}", uuid::Uuid::new_v4().simple());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await.expect("broker");
    let (client, server) =
        (connection.create_channel().await.expect("channel"), connection.create_channel().await.expect("channel"));
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    server.queue_declare(queue.as_str().into(), durable, arguments).await.expect("quorum queue");
    client.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let mut answers = client
        .basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("direct reply-to");
    let mut requests = server
        .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let answering = tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let reply_to = request.properties.reply_to().clone().expect("reply-to").to_string();
            let properties = BasicProperties::default()
                .with_correlation_id(request.properties.correlation_id().clone().expect("correlation id"));
            let answer = server.basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                b"answer",
                properties,
            );
            answer.await.expect("answer");
            request.ack(BasicAckOptions::default()).await.expect("ack");
        }
    });
    let mut took = Vec::with_capacity(count);
    for n in 0..count + count / 10 {
        let began = Instant::now();
        let properties = BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(n.to_string().into())
            .with_delivery_mode(2);
        let confirm = client
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), b"request", properties)
            .await
            .expect("publish");
        confirm.await.expect("confirmed");
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.next()).await.expect("an answer in time");
        answer.expect("reply stream open").expect("answer");
        // The first tenth warms the node up and is not counted.
        if n >= count / 10 {
            took.push(began.elapsed().as_secs_f64() * 1e3);
        }
    }
    answering.abort();
    client.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.expect("queue deleted");
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((q * took.len() as f64).ceil() as usize).clamp(1, took.len()) - 1];
    println!("{}", serde_json::json!({"count": took.len(), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99)}));
}
