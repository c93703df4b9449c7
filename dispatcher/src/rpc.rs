//! Request and reply over RabbitMQ: publish to `cuttle.commands` with publisher confirms and
//! `mandatory`, and take the reply from direct reply-to by correlation id. One connection and
//! channel carry every call in flight; a lost link is rebuilt on the next call.
//!
//! Every request is signed with the dispatcher's key, and a reply counts only if it is signed by
//! the key pinned for the target asked, over this request's correlation id (ARCHITECTURE.md, Trust); or,
//! once a request to an agent agreed a session with it, both are MAC'd in that session instead
//! ([`contracts::trust::session`]; a request the agent refuses for a session it no longer holds goes
//! again, signed). Any other reply is a forged answer: reported (a warning, and in the error if
//! no genuine answer comes in time) and ignored, while the call goes on waiting for the genuine
//! one.

use crate::error::{connect_error, LinkLost, RpcError, Unconfirmed, Unreachable};
use crate::metrics::Metrics;
use crate::route::Route;
use crate::trust::DispatcherTrust;
use contracts::time::unix_millis;
use contracts::trust::amqp::{seal_of, with_seal};
use contracts::trust::files::Pin;
use contracts::trust::seal::{Seal, SealHeaderError};
use contracts::trust::session::Offer;
use contracts::trust::sessions::Plan;
use contracts::trust::verify::{check_answer, check_binding, Believed, Binding};
use contracts::wire::endpoints::{AmqpEndpoints, EndpointsError};
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::ErrorKind;
use contracts::wire::messages::Kind;
use contracts::wire::topology::{COMMANDS_EXCHANGE, CONTENT_TYPE, REPLY_TO};
use edge::connect::broker::Silence;
use edge::entropy::OsEntropy;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Timeout around broker calls that are not the wait for a reply.
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A reply as it arrived, before anyone believes it: its seal (from the headers) and its body.
struct RawReply {
    seal: Result<Option<Seal>, SealHeaderError>,
    body: Vec<u8>,
}

/// The calls waiting for replies, by correlation id. Every reply with a call's correlation id
/// goes to it: the call decides whether to believe it.
type Pending = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<RawReply>>>>;

/// Where a call reports what the user should be warned of (forged answers, legacy agents).
pub type Warn<'a> = &'a (dyn Fn(String) + Send + Sync);

/// One live connection and its channel.
struct Link {
    connection: Connection,
    channel: Channel,
    pending: Pending,
    alive: Arc<AtomicBool>,
}

impl Link {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && self.connection.status().connected()
    }
}

/// Settings of the RPC client.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// One broker URL, or the nodes of one cluster separated by commas ([`AmqpEndpoints`]).
    pub amqp_url: String,
    pub connect_timeout: Duration,
    /// The dispatcher's key and pinned agents; without them no request can be sent (readers
    /// such as the inventory need none).
    pub trust: Option<Arc<DispatcherTrust>>,
    /// CA and client certificate for `amqps://` and `wss://` URLs.
    pub tls: edge::connect::tls::TlsMaterial,
    /// The HTTP proxy the broker is reached through, if any.
    pub proxy: edge::connect::proxy::ProxySettings,
}

/// The dispatcher's RPC client. Cheap to share behind an `Arc`; calls run concurrently.
pub struct RpcClient {
    config: RpcConfig,
    /// The broker nodes and the one in use; an unparsable list fails every connect.
    endpoints: std::sync::Mutex<Result<AmqpEndpoints, EndpointsError>>,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// The failed connect of a consumer count ([`RpcClient::consumers`]), and when: it stands
    /// for the next call's connect, made within a connect timeout of it, so that a broker (or
    /// proxy) that cannot be reached costs one connect timeout, not one per question asked.
    probe_failure: std::sync::Mutex<Option<(tokio::time::Instant, RpcError)>>,
    metrics: Metrics,
}

/// One request's timing: how long to wait for the reply, and when the agent must no longer act
/// on it (also its AMQP expiration, so a stale copy dies in the queue).
#[derive(Clone, Copy, Debug)]
pub struct CallTiming {
    pub reply_timeout: Duration,
    pub not_after: SystemTime,
}

impl RpcClient {
    /// A client that connects on first use.
    pub fn new(config: RpcConfig) -> Self {
        let endpoints = std::sync::Mutex::new(edge::connect::broker::endpoints(&config.amqp_url));
        RpcClient {
            config,
            endpoints,
            link: tokio::sync::Mutex::new(None),
            probe_failure: std::sync::Mutex::new(None),
            metrics: Metrics::default(),
        }
    }

    /// The same client counting its reconnections in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Its settings: the broker, and the dispatcher's key and pins (the service reads the live
    /// fleet with them for a schedule's `--select`).
    pub fn config(&self) -> &RpcConfig {
        &self.config
    }

    /// A client already connected, failing at once if the broker cannot be reached.
    pub async fn connect(config: RpcConfig) -> Result<Self, RpcError> {
        let client = RpcClient::new(config);
        client.current_link().await?;
        Ok(client)
    }

    async fn current_link(&self) -> Result<Arc<Link>, RpcError> {
        if let Some(error) = self.recent_probe_failure(true) {
            return Err(error);
        }
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| l.is_alive()) {
            return Ok(link.clone());
        }
        if let Some(old) = slot.take() {
            self.metrics.common.broker_reconnects.inc();
            // Lost this node: the next round of connects begins with the next one.
            if let Ok(endpoints) = self.endpoints.lock().expect("endpoints poisoned").as_mut() {
                endpoints.lost();
            }
            // Not waited for: a dead link's close only times out, and the next call is waiting.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), old.connection.close(200, "reconnecting".into()))
                    .await;
            });
        }
        let endpoints = self.endpoints.lock().expect("endpoints poisoned").clone().map_err(Unreachable::from);
        let endpoints = endpoints.map_err(RpcError::Connect)?;
        let (index, link) = open_any_link(&self.config, &endpoints).await?;
        if let Ok(endpoints) = self.endpoints.lock().expect("endpoints poisoned").as_mut() {
            endpoints.connected(index);
        }
        let link = Arc::new(link);
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Sends one request and waits for its reply. One attempt: the retry executor decides
    /// whether to call again.
    pub async fn call(&self, route: &Route, request: &Request, timing: CallTiming) -> Result<Reply, RpcError> {
        self.call_noting_publish(route, request, timing, &AtomicBool::new(false), &|_| {}).await
    }

    /// The dispatcher's key, and the pin of the target `route` asks.
    fn trust_for(&self, route: &Route) -> Result<(&DispatcherTrust, Pin), RpcError> {
        let trust = self.config.trust.as_deref().ok_or(RpcError::NoKey)?;
        let target = route.target();
        let pin = trust.pin(&target).ok_or_else(|| RpcError::NotPinned {
            target: target.clone(),
            file: trust.known_file().map_or_else(|| "the known agents".into(), |f| f.display().to_string()),
        })?;
        Ok((trust, pin))
    }

    /// [`RpcClient::call`], setting `published` once the request may have reached the broker,
    /// and telling `warn` of forged answers (ignored) and of unsigned answers from a legacy agent.
    pub async fn call_noting_publish(
        &self,
        route: &Route,
        request: &Request,
        timing: CallTiming,
        published: &AtomicBool,
        warn: Warn<'_>,
    ) -> Result<Reply, RpcError> {
        self.call_with_sender(route, request, timing, published, warn).await.map(|(_, reply)| reply)
    }

    /// [`RpcClient::call_noting_publish`], with the agent id the believed answer names as its
    /// sender (which of a pool's workers answered).
    pub async fn call_with_sender(
        &self,
        route: &Route,
        request: &Request,
        timing: CallTiming,
        published: &AtomicBool,
        warn: Warn<'_>,
    ) -> Result<(String, Reply), RpcError> {
        // The broker first: a broker that cannot be reached is the problem to report then.
        let link = self.current_link().await?;
        let (trust, pin) = self.trust_for(route)?;
        let target = route.target();
        let sealed = match &pin {
            Pin::Keys(keys) => contracts::trust::sealed::seal_start(request, keys, &mut OsEntropy)
                .map_err(|source| RpcError::Seal { target: target.clone(), source })?,
            Pin::Legacy => None,
        };
        let request = sealed.as_ref().unwrap_or(request);
        let mut signed_again = false;
        loop {
            let plan = trust.session_plan(&target, &pin);
            // No random bytes for an offer: the request goes signed only, as to an older agent.
            let offer = matches!(plan, Plan::Offer).then(|| Offer::new(&mut OsEntropy)).and_then(Result::ok);
            let sent = Sent { trust, pin: &pin, plan: &plan, offer: offer.as_ref() };
            let result = self.attempt(&link, route, request, timing, published, warn, sent).await;
            match &result {
                // Refused before anything ran, because the agent restarted or let the session go:
                // the same request again, signed (with a new offer).
                Err(RpcError::Agent { error, .. })
                    if error.kind == ErrorKind::UnknownSession && matches!(plan, Plan::Mac(_)) && !signed_again =>
                {
                    signed_again = true;
                    continue;
                }
                Ok(_) | Err(RpcError::Agent { .. }) => {}
                Err(_) if offer.is_some() => trust.offer_unanswered(&target),
                Err(_) => {}
            }
            return result;
        }
    }

    /// One request of [`RpcClient::call_with_sender`], sealed as `sent` says.
    #[allow(clippy::too_many_arguments, reason = "one attempt of call_with_sender, taking what that call holds")]
    async fn attempt(
        &self,
        link: &Link,
        route: &Route,
        request: &Request,
        timing: CallTiming,
        published: &AtomicBool,
        warn: Warn<'_>,
        sent: Sent<'_>,
    ) -> Result<(String, Reply), RpcError> {
        let Sent { trust, pin, plan, offer } = sent;
        let target = route.target();
        let now = SystemTime::now();
        let (header, bytes) = request.encode_offering(
            &target,
            unix_millis(now),
            Some(unix_millis(timing.not_after)),
            offer.map(Offer::share),
            &mut OsEntropy,
        )?;
        let expiration = timing.not_after.duration_since(now).unwrap_or_default().as_millis().max(1);
        // What the agent's answer must name: these very bytes.
        let digest = contracts::wire::envelope::request_digest(&bytes);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let correlation_id = header.message_id.clone();
        link.pending.lock().expect("pending poisoned").insert(correlation_id.clone(), tx);
        let _forget = ForgetOnDrop { pending: &link.pending, correlation_id: &correlation_id };
        let session = match plan {
            Plan::Mac(session) => Some(session),
            Plan::Offer | Plan::Sign => None,
        };
        let properties = with_seal(BasicProperties::default(), &trust.seal_command(session, &bytes))
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_type(request.kind().as_str().into())
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_expiration(expiration.to_string().into());
        published.store(true, Ordering::Release);
        let publish = link.channel.basic_publish(
            COMMANDS_EXCHANGE.into(),
            route.routing_key(request.kind()).into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            &bytes,
            properties,
        );
        let confirm = match tokio::time::timeout(BROKER_CALL_TIMEOUT, async { publish.await?.await }).await {
            Err(_) => return Err(self.broken(link, RpcError::NotConfirmed(Unconfirmed::NoConfirm))),
            Ok(Err(error)) => return Err(self.broken(link, RpcError::ConnectionLost(LinkLost::Broker(error)))),
            Ok(Ok(confirm)) => confirm,
        };
        match confirm {
            Confirmation::Ack(Some(_returned)) => return Err(RpcError::Unroutable { target: route.to_string() }),
            // A channel opened while a quorum queue's leader was on a node just lost can keep its
            // stale view of the queue and nack every later publish (seen with RabbitMQ 3.10): the
            // next attempt opens a new link instead of repeating on this one.
            Confirmation::Nack(_) => {
                return Err(self.broken(link, RpcError::NotConfirmed(Unconfirmed::Nacked)));
            }
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
        }
        let deadline = tokio::time::Instant::now() + timing.reply_timeout;
        let mut forged = None;
        loop {
            let raw = match tokio::time::timeout_at(deadline, rx.recv()).await {
                // The link may be dead without knowing it yet (heartbeats take seconds): the next
                // attempt uses a new one, which costs little.
                Err(_) => {
                    let target = route.to_string();
                    let after = timing.reply_timeout;
                    let error = match forged {
                        None => RpcError::NoReply { target, after },
                        Some(reason) => RpcError::Forged { target, after, reason },
                    };
                    return Err(self.broken(link, error));
                }
                Ok(None) => return Err(RpcError::ConnectionLost(LinkLost::RepliesClosed)),
                Ok(Some(raw)) => raw,
            };
            let checked = check_answer(pin, &correlation_id, raw.seal, &raw.body, session).and_then(|believed| {
                // Only what is believed is decoded; one that does not decode ends the call.
                let (header, reply) = match Reply::decode_with_header(&raw.body) {
                    Ok(decoded) => decoded,
                    Err(error) => return Ok(Err(error)),
                };
                let binding = check_binding(
                    header.in_reply_to.as_ref(),
                    &digest,
                    request.ticket(),
                    &reply,
                    believed,
                    trust.strict_answers(),
                )?;
                Ok(Ok((believed, binding, header, reply)))
            });
            match checked {
                Ok(decoded) => {
                    let (believed, binding, header, reply) = decoded?;
                    let warning = match (believed, binding) {
                        (Believed::Legacy, _) => trust.legacy_warning(&target),
                        (Believed::Key(_), Binding::Unbound) => trust.unbound_warning(&target),
                        (Believed::Key(_), Binding::Bound) => None,
                    };
                    if let Some(message) = warning {
                        tracing::debug!(target = %route, "{message}");
                        warn(message);
                    }
                    let refused = matches!(reply, Reply::Error(_));
                    if let (Some(offer), Believed::Key(agent_key)) = (offer, believed) {
                        let share = header.key_share.as_deref().map(|share| &share[..]);
                        trust.offer_answered(&target, offer, &correlation_id, share, agent_key, refused);
                    }
                    return match reply {
                        Reply::Error(error) => {
                            if let (Some(session), ErrorKind::UnknownSession) = (session, error.kind) {
                                trust.forget_session(&target, session.id());
                            }
                            Err(RpcError::Agent { target: route.to_string(), error })
                        }
                        reply => Ok((header.target, reply)),
                    };
                }
                Err(reason) => {
                    let message = format!("ignored a forged answer to {} from {route}: {reason}", request.kind());
                    tracing::debug!(target = %route, kind = %request.kind(), %reason, "ignored a forged answer");
                    self.metrics.forged_answers.inc();
                    warn(message);
                    forged = Some(reason);
                }
            }
        }
    }

    /// Publishes a request that needs no answer (best-effort CompleteScript). Its confirm is
    /// not awaited here but by [`RpcClient::close`], so it overlaps whatever comes next.
    pub async fn send(&self, route: &Route, request: &Request, not_after: SystemTime) -> Result<(), RpcError> {
        let link = self.current_link().await?;
        let (trust, pin) = self.trust_for(route)?;
        let now = SystemTime::now();
        let target = route.target();
        let (_, bytes) = request.encode(&target, unix_millis(now), Some(unix_millis(not_after)), &mut OsEntropy)?;
        let expiration = not_after.duration_since(now).unwrap_or_default().as_millis().max(1);
        let seal = trust.seal_command(trust.session(&target, &pin).as_ref(), &bytes);
        let properties = with_seal(BasicProperties::default(), &seal)
            .with_type(request.kind().as_str().into())
            .with_content_type(CONTENT_TYPE.into())
            .with_delivery_mode(2)
            .with_expiration(expiration.to_string().into());
        let publish = link.channel.basic_publish(
            COMMANDS_EXCHANGE.into(),
            route.routing_key(request.kind()).into(),
            BasicPublishOptions::default(),
            &bytes,
            properties,
        );
        match tokio::time::timeout(BROKER_CALL_TIMEOUT, publish).await {
            Err(_) => Err(self.broken(&link, RpcError::NotConfirmed(Unconfirmed::NotOut))),
            Ok(Err(error)) => Err(self.broken(&link, RpcError::ConnectionLost(LinkLost::Broker(error)))),
            Ok(Ok(_confirm)) => Ok(()),
        }
    }

    /// How many consumers the queue of `route` for requests of `kind` has now: `Some(0)` when
    /// no agent is consuming it (stopped, or not started yet). `None` when that cannot be told
    /// (no such queue, or the broker did not answer), which callers treat as "don't know".
    pub async fn consumers(&self, route: &Route, kind: Kind) -> Option<u32> {
        if self.recent_probe_failure(false).is_some() {
            return None;
        }
        let link = match self.current_link().await {
            Ok(link) => link,
            Err(error) => {
                *self.probe_failure.lock().expect("probe failure poisoned") =
                    Some((tokio::time::Instant::now(), error));
                return None;
            }
        };
        // A passive declare of a missing queue closes its channel: use one of its own.
        let channel = tokio::time::timeout(BROKER_CALL_TIMEOUT, link.connection.create_channel()).await.ok()?.ok()?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = tokio::time::timeout(
            BROKER_CALL_TIMEOUT,
            channel.queue_declare(route.queue(kind).as_str().into(), passive, FieldTable::default()),
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), channel.close(200, "done".into())).await;
        Some(declared.ok()?.ok()?.consumer_count())
    }

    /// The failed connect of a consumer count made within a connect timeout, if any; `take`n
    /// by the call it stands for.
    fn recent_probe_failure(&self, take: bool) -> Option<RpcError> {
        let mut slot = self.probe_failure.lock().expect("probe failure poisoned");
        let recent = slot.as_ref().filter(|(at, _)| at.elapsed() < self.config.connect_timeout).map(|(_, e)| e.clone());
        if take || recent.is_none() {
            *slot = None;
        }
        recent
    }

    fn broken(&self, link: &Link, error: RpcError) -> RpcError {
        link.alive.store(false, Ordering::Release);
        error
    }

    /// Waits (briefly) for outstanding confirms, then closes the connection politely.
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            if let Err(error) = tokio::time::timeout(Duration::from_secs(5), link.channel.wait_for_confirms()).await {
                tracing::warn!(%error, "some requests were not confirmed by the broker before exit");
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), link.connection.close(200, "dispatcher done".into()))
                .await;
        }
    }
}

/// How one request is sealed: the dispatcher's key and the target's pin, and whether in a
/// session, offering one, or signed only.
#[derive(Clone, Copy)]
struct Sent<'a> {
    trust: &'a DispatcherTrust,
    pin: &'a Pin,
    plan: &'a Plan,
    offer: Option<&'a Offer>,
}

/// Removes a call's reply slot however the call ends.
struct ForgetOnDrop<'a> {
    pending: &'a Pending,
    correlation_id: &'a str,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending poisoned").remove(self.correlation_id);
    }
}

/// Opens a connection of the dispatcher's to the first node of the list that answers (heartbeat
/// added, each node bounded by the connect timeout), for readers beside the RPC link such as the
/// inventory.
pub async fn connect(config: &RpcConfig, name: &str) -> Result<Connection, RpcError> {
    let endpoints = edge::connect::broker::endpoints(&config.amqp_url).map_err(|e| RpcError::Connect(e.into()))?;
    let mut last_error = None;
    for (_, url) in endpoints.round() {
        let connect = edge::connect::broker::connect(&url, name, &config.tls, &config.proxy);
        match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => last_error = Some(connect_error(error)),
            Err(_) => {
                let silence = Silence::unprobed(&url, &config.proxy);
                last_error = Some(RpcError::Connect(no_answer(silence, config.connect_timeout)));
            }
        }
    }
    Err(last_error.expect("a list has at least one URL"))
}

/// Nothing answered within `after`, for the reason `silence` gives.
fn no_answer(silence: Silence, after: Duration) -> Unreachable {
    match silence {
        Silence::Broker => Unreachable::Silent { after },
        Silence::Proxy(proxy) => Unreachable::NoAnswerThrough { proxy: proxy.to_string(), after },
        Silence::Unreachable => Unreachable::NoAnswer { after },
    }
}

/// Connects to the first node of one round that answers, with its index in the list; the
/// error of the last node tried when none does.
async fn open_any_link(config: &RpcConfig, endpoints: &AmqpEndpoints) -> Result<(usize, Link), RpcError> {
    let mut last_error = None;
    for (index, url) in endpoints.round() {
        match open_link(config, &url).await {
            Ok(link) => return Ok((index, link)),
            Err(error) => {
                if endpoints.urls().len() > 1 {
                    tracing::debug!(node = index + 1, %error, "broker node not reachable; trying the next");
                }
                last_error = Some(error);
            }
        }
    }
    Err(last_error.expect("a list has at least one URL"))
}

async fn open_link(config: &RpcConfig, amqp_url: &str) -> Result<Link, RpcError> {
    let connect = async {
        let connection =
            edge::connect::broker::connect(amqp_url, "cuttle-dispatcher", &config.tls, &config.proxy).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        // Direct reply-to: consume the pseudo queue, without acks, on the publishing channel.
        let consumer = channel
            .basic_consume(
                REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((connection, channel, consumer))
    };
    let (connection, channel, mut consumer) = match tokio::time::timeout(config.connect_timeout, connect).await {
        Err(_) => {
            let after = config.connect_timeout;
            let silence = edge::connect::broker::why_no_answer(amqp_url, &config.proxy, after).await;
            return Err(RpcError::Connect(no_answer(silence, after)));
        }
        Ok(Err(error)) => return Err(connect_error(error)),
        Ok(Ok(parts)) => parts,
    };
    let pending: Pending = Arc::default();
    let alive = Arc::new(AtomicBool::new(true));
    let (replies, link_alive) = (pending.clone(), alive.clone());
    tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { break };
            let Some(correlation_id) = delivery.properties.correlation_id().as_ref().map(|c| c.to_string()) else {
                continue;
            };
            let reply = RawReply { seal: seal_of(&delivery.properties), body: delivery.data };
            if let Some(waiter) = replies.lock().expect("pending poisoned").get(&correlation_id) {
                let _ = waiter.send(reply);
            }
        }
        // Fail the calls waiting on this link; they are repeated on a new one.
        link_alive.store(false, Ordering::Release);
        replies.lock().expect("pending poisoned").clear();
    });
    Ok(Link { connection, channel, pending, alive })
}
