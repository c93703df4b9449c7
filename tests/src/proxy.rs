//! A fault-injecting TCP proxy for end-to-end chaos tests.
//!
//! Put a [`FaultProxy`] between a client and RabbitMQ or Redis, point the client at
//! [`FaultProxy::addr`], and break the link on purpose: reset every connection, lose the next
//! request or reply, cut a stream after some bytes, hold all traffic, add latency, or refuse new
//! connections the way a service that is down does.
//!
//! [`FaultProxy::accepted_at`] and [`FaultProxy::resets_at`] keep a timeline: when each
//! connection came and when each reset happened. Count from a reset, not from when a one-shot
//! fault was armed: [`FaultProxy::drop_next_and_reset`] and [`FaultProxy::reset_after`] fire only
//! when the next chunk crosses the proxy, which on an idle AMQP link is a heartbeat (the
//! client's 2.5 s after its last write with a 5 s heartbeat, the broker's 2.5 to 5 s after its
//! last).
//!
//! Each accepted connection gets its own upstream connection and two pump tasks, one per
//! [`Direction`], each reading chunks of up to 64 KiB and writing them to the other side. Faults
//! are checked per chunk. A reset closes both sockets with `SO_LINGER` 0, so both peers see a TCP
//! RST, not an orderly FIN: that is what a crashed broker or a dropped network path looks like.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most a pump reads (and so forwards, or drops) at once.
const CHUNK: usize = 64 * 1024;

/// Which way bytes travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the server (requests).
    Upstream,
    /// From the server to the client (replies).
    Downstream,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Upstream => 0,
            Direction::Downstream => 1,
        }
    }
}

/// host:port of the test broker.
pub fn broker_addr() -> std::net::SocketAddr {
    let url = crate::amqp_url();
    let authority = url.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("127.0.0.1:5672");
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5672") };
    std::net::ToSocketAddrs::to_socket_addrs(&host_port).expect("broker address").next().expect("resolved")
}

/// A TCP proxy on `127.0.0.1` that forwards to one upstream address and injects faults on demand.
///
/// Every method is synchronous and takes effect at once for chunks not yet forwarded. Must be
/// started (and [`FaultProxy::blackhole_for`] called) inside a tokio runtime. Dropping it stops
/// the listener and resets every connection.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    listener: JoinHandle<()>,
}

/// State shared by the handle, the listener and every pump.
struct Shared {
    upstream: SocketAddr,
    /// Cancelled when the proxy is dropped; the parent of every connection's token.
    shutdown: CancellationToken,
    /// Open connections by id; cancelling a token resets that connection.
    connections: Mutex<HashMap<u64, CancellationToken>>,
    next_id: AtomicU64,
    faults: Mutex<Faults>,
    hold: watch::Sender<Hold>,
    latency: Mutex<Duration>,
    refuse: AtomicBool,
    resets: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// When each connection was accepted for forwarding, and when each reset happened.
    accepted_at: Mutex<Vec<std::time::Instant>>,
    resets_at: Mutex<Vec<std::time::Instant>>,
}

/// Whether traffic is held; `epoch` changes on every hold or release so that the timer of a
/// [`FaultProxy::blackhole_for`] does not release a hold someone else set after it.
#[derive(Clone, Copy, Default)]
struct Hold {
    held: bool,
    epoch: u64,
}

/// One-shot faults, indexed by [`Direction::index`].
#[derive(Default)]
struct Faults {
    drop_next: [bool; 2],
    /// Bytes still allowed through before a reset.
    reset_after: [Option<u64>; 2],
}

/// What to do with a chunk: forward its first `forward` bytes, then reset everything if `reset`.
#[derive(Debug, PartialEq, Eq)]
struct Admit {
    forward: usize,
    reset: bool,
}

impl Faults {
    /// Decides the fate of a chunk of `len` bytes and disarms the fault it fires.
    fn admit(&mut self, direction: Direction, len: usize) -> Admit {
        let i = direction.index();
        if std::mem::take(&mut self.drop_next[i]) {
            return Admit { forward: 0, reset: true };
        }
        match self.reset_after[i] {
            None => Admit { forward: len, reset: false },
            Some(left) if (len as u64) < left => {
                self.reset_after[i] = Some(left - len as u64);
                Admit { forward: len, reset: false }
            }
            Some(left) => {
                self.reset_after[i] = None;
                // `left < len` here, so it fits in usize.
                Admit { forward: left as usize, reset: true }
            }
        }
    }
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to `upstream`.
    ///
    /// The upstream connection is made per client connection, when it is accepted; if it fails the
    /// client is reset. Panics if it cannot bind, as test support has nothing better to do.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("fault proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault proxy: local address");
        let shared = Arc::new(Shared {
            upstream,
            shutdown: CancellationToken::new(),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            faults: Mutex::new(Faults::default()),
            hold: watch::Sender::new(Hold::default()),
            latency: Mutex::new(Duration::ZERO),
            refuse: AtomicBool::new(false),
            resets: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            accepted_at: Mutex::new(Vec::new()),
            resets_at: Mutex::new(Vec::new()),
        });
        let listener = tokio::spawn(accept_loop(shared.clone(), listener));
        FaultProxy { shared, addr, listener }
    }

    /// The test broker's URL with this proxy in its place (same credentials and vhost), when the
    /// proxy forwards to the test broker.
    pub fn amqp_url(&self) -> String {
        let url = crate::amqp_url();
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, "%2f"));
        let credentials = authority.rsplit_once('@').map(|(c, _)| format!("{c}@")).unwrap_or_default();
        format!("{scheme}://{credentials}127.0.0.1:{}/{path}", self.addr().port())
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets (TCP RST) every open connection, on both sides, even those idle in a read.
    pub fn reset_all(&self) {
        self.shared.reset_all();
    }

    /// Arms a one-shot fault: the next chunk travelling in `direction`, on any connection, is
    /// dropped, and then every open connection is reset.
    ///
    /// Loses "the next request" ([`Direction::Upstream`]) or "the next reply"
    /// ([`Direction::Downstream`]). It fires when that chunk comes, which on an idle link may be a
    /// heartbeat seconds later: [`FaultProxy::resets_at`] says when it did.
    pub fn drop_next_and_reset(&self, direction: Direction) {
        lock(&self.shared.faults).drop_next[direction.index()] = true;
    }

    /// Arms a one-shot fault: once `bytes` more bytes have been forwarded in `direction` (counted
    /// across connections), every connection is reset.
    ///
    /// The chunk that reaches the limit is cut there: the bytes beyond it are not forwarded. With
    /// `bytes` 0 the next chunk is dropped whole, as with [`FaultProxy::drop_next_and_reset`].
    pub fn reset_after(&self, direction: Direction, bytes: u64) {
        lock(&self.shared.faults).reset_after[direction.index()] = Some(bytes);
    }

    /// Holds all traffic for `duration`, then forwards again; see [`FaultProxy::hold`].
    ///
    /// A [`FaultProxy::hold`] or [`FaultProxy::release`] in the meantime takes over: the timer
    /// then leaves the hold alone.
    pub fn blackhole_for(&self, duration: Duration) {
        let epoch = self.shared.set_held(true);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shared.shutdown.cancelled() => {}
                _ = tokio::time::sleep(duration) => {
                    shared.hold.send_if_modified(|hold| release_if_still(hold, epoch));
                }
            }
        });
    }

    /// Holds all traffic until [`FaultProxy::release`]: nothing is forwarded either way, not even
    /// a close, but connections stay open and no byte is lost (the rest waits in the kernel).
    pub fn hold(&self) {
        self.shared.set_held(true);
    }

    /// Ends a hold: everything held is forwarded, in order.
    pub fn release(&self) {
        self.shared.set_held(false);
    }

    /// Delays every chunk by at least `latency` (both directions), keeping the order.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.shared.latency) = latency;
    }

    /// While `refuse` is true, new connections are accepted and reset at once, which is how a
    /// service that is down looks to a client. Existing connections are untouched.
    pub fn refuse_new(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// A full outage: refuses new connections and resets every open one.
    pub fn outage(&self) {
        // Refuse first, so a client reconnecting right after the reset is refused too.
        self.refuse_new(true);
        self.reset_all();
    }

    /// Ends an outage: accepts new connections again.
    pub fn restore(&self) {
        self.refuse_new(false);
    }

    /// How many times [`FaultProxy::reset_all`] was called or an armed fault fired.
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed, including those still connecting upstream.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.connections).len()
    }

    /// Connections accepted for forwarding (refused ones are not counted here).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections reset on arrival because of [`FaultProxy::refuse_new`].
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// When each connection was accepted for forwarding, in order (refused ones are not here).
    pub fn accepted_at(&self) -> Vec<std::time::Instant> {
        lock(&self.shared.accepted_at).clone()
    }

    /// When each reset happened ([`FaultProxy::reset_all`], or an armed fault firing), in order.
    pub fn resets_at(&self) -> Vec<std::time::Instant> {
        lock(&self.shared.resets_at).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Every connection token is a child of `shutdown`, so this resets them all.
        self.shared.shutdown.cancel();
        self.listener.abort();
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("open_connections", &self.open_connections())
            .field("resets", &self.resets())
            .finish()
    }
}

/// Clears a hold set by the blackhole of `epoch`, unless a later hold or release replaced it.
fn release_if_still(hold: &mut Hold, epoch: u64) -> bool {
    if hold.epoch != epoch {
        return false;
    }
    hold.held = false;
    true
}

/// A poisoned lock only means a test panicked while holding it; the state is still usable, and the
/// proxy must keep working for the tests that did not panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Counts a reset and resets every open connection.
    fn reset_all(&self) {
        // Count first, so whoever sees a connection die also sees the count.
        lock(&self.resets_at).push(std::time::Instant::now());
        self.resets.fetch_add(1, Ordering::SeqCst);
        for token in lock(&self.connections).values() {
            token.cancel();
        }
    }

    /// Sets the hold flag and returns the new epoch.
    fn set_held(&self, held: bool) -> u64 {
        let mut epoch = 0;
        self.hold.send_modify(|hold| {
            hold.held = held;
            hold.epoch += 1;
            epoch = hold.epoch;
        });
        epoch
    }

    fn latency(&self) -> Duration {
        *lock(&self.latency)
    }

    /// Takes in a new client: refuses it, or registers it and starts forwarding.
    fn on_accept(self: &Arc<Self>, client: TcpStream) {
        if self.refuse.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            abort_stream(client);
            return;
        }
        lock(&self.accepted_at).push(std::time::Instant::now());
        self.accepted.fetch_add(1, Ordering::SeqCst);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        // A child token is born cancelled if the proxy is already shutting down.
        let cancel = self.shutdown.child_token();
        // Registered before the upstream connect, so a reset meanwhile reaches it too.
        lock(&self.connections).insert(id, cancel.clone());
        let registration = Registration { shared: self.clone(), id };
        tokio::spawn(serve(registration, client, cancel));
    }
}

/// Removes a connection from the open set when its task ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.connections).remove(&self.id);
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, _)) => shared.on_accept(client),
            // Accept errors are transient (a client gone before accept, out of descriptors);
            // pausing keeps a persistent one from spinning the test runtime.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Connects upstream for one client and runs the two pumps until both end.
async fn serve(registration: Registration, client: TcpStream, cancel: CancellationToken) {
    let shared = registration.shared.clone();
    let connected = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        connected = TcpStream::connect(shared.upstream) => connected.ok(),
    };
    let Some(server) = connected else {
        abort_stream(client);
        return;
    };
    // Small messages (one AMQP frame, one Redis command) must not wait for Nagle's algorithm,
    // or the proxy adds latency nobody asked for.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = Pump::new(&shared, Direction::Upstream, &cancel);
    let down = Pump::new(&shared, Direction::Downstream, &cancel);
    let up = tokio::spawn(up.run(client_read, server_write));
    let down = tokio::spawn(down.run(server_read, client_write));
    let _ = tokio::join!(up, down);
    drop(registration);
}

/// How a pump's forwarding ended.
enum End {
    /// The source closed its side in order: pass the close on.
    Eof,
    /// The connection was reset by a fault, `reset_all` or the proxy's drop.
    Reset,
    /// A socket failed (usually the peer reset it): reset the whole connection.
    Broken,
}

/// Forwards one direction of one connection.
struct Pump {
    shared: Arc<Shared>,
    direction: Direction,
    cancel: CancellationToken,
    hold: watch::Receiver<Hold>,
}

impl Pump {
    fn new(shared: &Arc<Shared>, direction: Direction, cancel: &CancellationToken) -> Pump {
        Pump { shared: shared.clone(), direction, cancel: cancel.clone(), hold: shared.hold.subscribe() }
    }

    async fn run(mut self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        match self.forward(&mut from, &mut to).await {
            End::Eof => {
                // A half-close: the other direction may still have bytes to carry.
                let _ = to.shutdown().await;
            }
            End::Reset => abort_halves(from, to),
            End::Broken => {
                // The other pump shares this connection; a dead socket on one side must look dead
                // on the other side too.
                self.cancel.cancel();
                abort_halves(from, to);
            }
        }
    }

    async fn forward(&mut self, from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf) -> End {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let read = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return End::Reset,
                read = from.read(&mut buf) => read,
            };
            let Ok(len) = read else { return End::Broken };
            if !self.until_due(Instant::now()).await {
                return End::Reset;
            }
            if len == 0 {
                return End::Eof;
            }
            let admit = lock(&self.shared.faults).admit(self.direction, len);
            if admit.forward > 0 {
                let written = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return End::Reset,
                    written = to.write_all(&buf[..admit.forward]) => written,
                };
                if written.is_err() {
                    return End::Broken;
                }
            }
            if admit.reset {
                self.shared.reset_all();
                return End::Reset;
            }
        }
    }

    /// Waits until a chunk read at `read_at` may be forwarded: no hold, and the latency passed.
    /// Returns false if the connection was reset meanwhile.
    async fn until_due(&mut self, read_at: Instant) -> bool {
        let cancel = self.cancel.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => false,
            _ = self.wait_due(read_at) => true,
        }
    }

    async fn wait_due(&mut self, read_at: Instant) {
        loop {
            // The sender lives in `shared`, which this pump keeps alive: waiting cannot fail.
            let _ = self.hold.wait_for(|hold| !hold.held).await;
            tokio::time::sleep_until(read_at + self.shared.latency()).await;
            // A hold that began during the latency still applies to this chunk.
            if !self.hold.borrow().held {
                return;
            }
        }
    }
}

/// Closes a stream with a TCP RST.
fn abort_stream(stream: TcpStream) {
    // Linger 0 makes close send RST instead of FIN (and does not block).
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Closes both sockets a pump touches with a TCP RST.
fn abort_halves(from: OwnedReadHalf, to: OwnedWriteHalf) {
    // Both sockets get linger 0 here, because whichever pump drops its half last closes a socket,
    // and that pump may already be gone.
    let _ = from.as_ref().set_zero_linger();
    let _ = to.as_ref().set_zero_linger();
    // Dropping a write half would shut it down first, sending a FIN before the RST and letting the
    // peer see a clean end of stream; forgetting it leaves the close to the read half's drop.
    to.forget();
    drop(from);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventually;
    use std::io::ErrorKind;

    /// Upper bound for anything that should happen "at once"; never waited for in a passing run.
    const DEADLINE: Duration = Duration::from_secs(5);

    /// What an echo server saw: every byte received, and how each connection ended
    /// (`None` for an orderly close, the error kind otherwise).
    #[derive(Default)]
    struct EchoLog {
        received: Mutex<Vec<u8>>,
        ends: Mutex<Vec<Option<ErrorKind>>>,
    }

    struct Echo {
        addr: SocketAddr,
        log: Arc<EchoLog>,
        task: JoinHandle<()>,
    }

    impl Echo {
        fn received(&self) -> Vec<u8> {
            lock(&self.log.received).clone()
        }

        fn ends(&self) -> Vec<Option<ErrorKind>> {
            lock(&self.log.ends).clone()
        }

        /// Waits until `count` server-side connections have ended, and returns how.
        async fn ended(&self, count: usize) -> Vec<Option<ErrorKind>> {
            eventually("server connections to end", DEADLINE, || async {
                let ends = self.ends();
                (ends.len() >= count).then_some(ends)
            })
            .await
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn echo_server() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo server");
        let addr = listener.local_addr().expect("echo address");
        let log = Arc::new(EchoLog::default());
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo_connection(stream, task_log.clone()));
            }
        });
        Echo { addr, log, task }
    }

    async fn echo_connection(mut stream: TcpStream, log: Arc<EchoLog>) {
        let mut buf = vec![0u8; 4096];
        let end = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break None,
                Ok(len) => {
                    lock(&log.received).extend_from_slice(&buf[..len]);
                    if let Err(e) = stream.write_all(&buf[..len]).await {
                        break Some(e.kind());
                    }
                }
                Err(e) => break Some(e.kind()),
            }
        };
        lock(&log.ends).push(end);
    }

    /// An echo server with a proxy in front of it.
    async fn setup() -> (Echo, FaultProxy) {
        let echo = echo_server().await;
        let proxy = FaultProxy::start(echo.addr).await;
        (echo, proxy)
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).await.expect("connect to proxy");
        stream.set_nodelay(true).expect("nodelay");
        stream
    }

    async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf)).await.expect("timed out reading").expect("read");
        buf
    }

    /// Writes `data` and expects it echoed back whole.
    async fn round_trip(stream: &mut TcpStream, data: &[u8]) {
        stream.write_all(data).await.expect("write");
        assert_eq!(read_exactly(stream, data.len()).await, data);
    }

    /// Reads until the stream ends; returns the bytes and the error that ended it, if any.
    async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
        let mut data = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await.expect("stream stayed open");
            match read {
                Ok(0) => return (data, None),
                Ok(len) => data.extend_from_slice(&buf[..len]),
                Err(e) => return (data, Some(e.kind())),
            }
        }
    }

    async fn no_open_connections(proxy: &FaultProxy) {
        eventually("no open connections", DEADLINE, || async { (proxy.open_connections() == 0).then_some(()) }).await;
    }

    /// Asserts nothing arrives on `stream` for `quiet`: the one bounded wait for a negative.
    async fn assert_silent(stream: &mut TcpStream, quiet: Duration) {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(quiet, stream.read(&mut buf)).await;
        assert!(read.is_err(), "expected nothing within {quiet:?}, got {read:?}");
    }

    #[test]
    fn faults_admit_cuts_at_the_limit() {
        let mut faults = Faults::default();
        faults.reset_after[Direction::Downstream.index()] = Some(10);
        assert_eq!(faults.admit(Direction::Upstream, 100), Admit { forward: 100, reset: false });
        assert_eq!(faults.admit(Direction::Downstream, 4), Admit { forward: 4, reset: false });
        assert_eq!(faults.admit(Direction::Downstream, 100), Admit { forward: 6, reset: true });
        assert_eq!(faults.admit(Direction::Downstream, 100), Admit { forward: 100, reset: false });

        faults.reset_after[Direction::Upstream.index()] = Some(5);
        assert_eq!(faults.admit(Direction::Upstream, 5), Admit { forward: 5, reset: true });

        faults.drop_next[Direction::Upstream.index()] = true;
        assert_eq!(faults.admit(Direction::Downstream, 3), Admit { forward: 3, reset: false });
        assert_eq!(faults.admit(Direction::Upstream, 3), Admit { forward: 0, reset: true });
        assert_eq!(faults.admit(Direction::Upstream, 3), Admit { forward: 3, reset: false });
    }

    #[tokio::test]
    async fn forwards_both_ways_and_passes_the_close_on() {
        let (echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;
        round_trip(&mut client, b"ping").await;

        // Larger than several chunks, written while reading, so both pumps work at once.
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut reader, mut writer) = client.split();
        let mut echoed = vec![0u8; big.len()];
        let (written, read) = tokio::time::timeout(DEADLINE, async {
            tokio::join!(writer.write_all(&big), reader.read_exact(&mut echoed))
        })
        .await
        .expect("timed out echoing");
        written.expect("write");
        read.expect("read");
        assert!(echoed == big, "echoed bytes differ");
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.open_connections(), 1);

        client.shutdown().await.expect("shutdown");
        assert_eq!(read_to_close(&mut client).await, (Vec::new(), None));
        assert_eq!(echo.ended(1).await, vec![None]);
        no_open_connections(&proxy).await;
        assert_eq!(proxy.resets(), 0);
    }

    #[tokio::test]
    async fn reset_all_resets_both_sides() {
        let (echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;
        round_trip(&mut client, b"ping").await;

        // Both pumps are idle in a read here: the reset must not wait for traffic.
        proxy.reset_all();
        assert_eq!(read_to_close(&mut client).await, (Vec::new(), Some(ErrorKind::ConnectionReset)));
        assert_eq!(echo.ended(1).await, vec![Some(ErrorKind::ConnectionReset)]);
        assert_eq!(proxy.resets(), 1);
        no_open_connections(&proxy).await;

        let mut again = connect(&proxy).await;
        round_trip(&mut again, b"after").await;
        let (accepted, resets) = (proxy.accepted_at(), proxy.resets_at());
        assert_eq!((accepted.len(), resets.len()), (2, 1));
        assert!(accepted[0] <= resets[0] && resets[0] <= accepted[1], "the timeline is in order");
    }

    #[tokio::test]
    async fn drop_next_upstream_loses_the_request_and_resets() {
        let (echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;
        round_trip(&mut client, b"ping").await;

        proxy.drop_next_and_reset(Direction::Upstream);
        client.write_all(b"lost").await.expect("write");
        let (data, _) = read_to_close(&mut client).await;
        assert!(data.is_empty(), "got {data:?}");
        echo.ended(1).await;
        assert_eq!(echo.received(), b"ping");
        assert_eq!(proxy.resets(), 1);

        // One-shot: the next connection forwards normally.
        let mut again = connect(&proxy).await;
        round_trip(&mut again, b"after").await;
        assert_eq!(proxy.resets(), 1);
    }

    #[tokio::test]
    async fn drop_next_downstream_loses_the_reply_and_resets() {
        let (echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;

        proxy.drop_next_and_reset(Direction::Downstream);
        assert!(proxy.resets_at().is_empty(), "an armed fault fires only when a chunk comes");
        let sent = std::time::Instant::now();
        client.write_all(b"request").await.expect("write");
        let (data, _) = read_to_close(&mut client).await;
        assert!(data.is_empty(), "got {data:?}");
        echo.ended(1).await;
        // The request did arrive; only its reply was lost.
        assert_eq!(echo.received(), b"request");
        assert_eq!(proxy.resets(), 1);
        assert!(proxy.resets_at()[0] >= sent, "fired by the reply, after the request");
    }

    #[tokio::test]
    async fn reset_after_downstream_forwards_exactly_n_bytes() {
        let (_echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;
        let data: Vec<u8> = (0..100u8).collect();

        proxy.reset_after(Direction::Downstream, 10);
        client.write_all(&data).await.expect("write");
        let (got, _) = read_to_close(&mut client).await;
        assert_eq!(got, &data[..10]);
        assert_eq!(proxy.resets(), 1);
    }

    #[tokio::test]
    async fn reset_after_upstream_counts_across_writes() {
        let (echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;

        proxy.reset_after(Direction::Upstream, 6);
        round_trip(&mut client, b"0123").await;
        client.write_all(b"456789").await.expect("write");
        let (got, _) = read_to_close(&mut client).await;
        // "45" may or may not be echoed before the reset lands; nothing past the limit is.
        assert!(b"45".starts_with(&got), "got {got:?}");
        echo.ended(1).await;
        assert_eq!(echo.received(), b"012345");
        assert_eq!(proxy.resets(), 1);
    }

    #[tokio::test]
    async fn hold_delays_without_losing_bytes() {
        let (echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;
        round_trip(&mut client, b"ping").await;

        proxy.hold();
        for part in [b"a", b"b", b"c"] {
            client.write_all(part).await.expect("write");
        }
        assert_silent(&mut client, Duration::from_millis(150)).await;
        assert_eq!(echo.received(), b"ping");

        proxy.release();
        assert_eq!(read_exactly(&mut client, 3).await, b"abc");
        assert_eq!(proxy.open_connections(), 1);
        assert_eq!(proxy.resets(), 0);
    }

    #[tokio::test]
    async fn hold_holds_the_close_too() {
        let (echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;
        round_trip(&mut client, b"ping").await;

        proxy.hold();
        client.write_all(b"last").await.expect("write");
        client.shutdown().await.expect("shutdown");
        assert_silent(&mut client, Duration::from_millis(100)).await;
        assert!(echo.ends().is_empty(), "the close went through a hold");

        proxy.release();
        assert_eq!(read_to_close(&mut client).await, (b"last".to_vec(), None));
        assert_eq!(echo.ended(1).await, vec![None]);
    }

    #[tokio::test]
    async fn blackhole_for_resumes_by_itself() {
        let (_echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;
        round_trip(&mut client, b"ping").await;

        let start = Instant::now();
        proxy.blackhole_for(Duration::from_millis(200));
        round_trip(&mut client, b"through").await;
        assert!(start.elapsed() >= Duration::from_millis(200), "took only {:?}", start.elapsed());
        assert_eq!(proxy.resets(), 0);
    }

    #[tokio::test]
    async fn release_takes_over_from_a_blackhole() {
        let (_echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;

        let start = Instant::now();
        proxy.blackhole_for(Duration::from_secs(60));
        proxy.release();
        round_trip(&mut client, b"ping").await;
        assert!(start.elapsed() < DEADLINE);

        // The blackhole's timer must not end a later hold either.
        proxy.blackhole_for(Duration::from_millis(50));
        proxy.hold();
        client.write_all(b"x").await.expect("write");
        assert_silent(&mut client, Duration::from_millis(200)).await;
        proxy.release();
        assert_eq!(read_exactly(&mut client, 1).await, b"x");
    }

    #[tokio::test]
    async fn refuse_new_resets_new_connections_until_restored() {
        let (_echo, proxy) = setup().await;
        let mut existing = connect(&proxy).await;
        round_trip(&mut existing, b"ping").await;

        proxy.refuse_new(true);
        // The kernel completes the handshake before the proxy sees the connection, so connecting
        // may succeed; the first read then fails.
        if let Ok(mut refused) = TcpStream::connect(proxy.addr()).await {
            let (data, _) = read_to_close(&mut refused).await;
            assert!(data.is_empty(), "got {data:?}");
        }
        eventually("a refused connection", DEADLINE, || async { (proxy.refused() == 1).then_some(()) }).await;
        round_trip(&mut existing, b"still up").await;

        proxy.restore();
        let mut fresh = connect(&proxy).await;
        round_trip(&mut fresh, b"back").await;
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(proxy.resets(), 0);
    }

    #[tokio::test]
    async fn outage_resets_existing_and_refuses_new() {
        let (_echo, proxy) = setup().await;
        let mut existing = connect(&proxy).await;
        round_trip(&mut existing, b"ping").await;

        proxy.outage();
        let (data, _) = read_to_close(&mut existing).await;
        assert!(data.is_empty(), "got {data:?}");
        if let Ok(mut refused) = TcpStream::connect(proxy.addr()).await {
            let (data, _) = read_to_close(&mut refused).await;
            assert!(data.is_empty(), "got {data:?}");
        }
        assert_eq!(proxy.resets(), 1);

        proxy.restore();
        let mut fresh = connect(&proxy).await;
        round_trip(&mut fresh, b"back").await;
    }

    #[tokio::test]
    async fn latency_delays_each_direction_in_order() {
        let (_echo, proxy) = setup().await;
        let mut client = connect(&proxy).await;
        round_trip(&mut client, b"warm").await;

        proxy.set_latency(Duration::from_millis(100));
        let start = Instant::now();
        for part in [b"1", b"2", b"3"] {
            client.write_all(part).await.expect("write");
        }
        assert_eq!(read_exactly(&mut client, 3).await, b"123");
        // Once up, once down.
        assert!(start.elapsed() >= Duration::from_millis(200), "took only {:?}", start.elapsed());

        proxy.set_latency(Duration::ZERO);
        round_trip(&mut client, b"fast").await;
    }

    #[tokio::test]
    async fn upstream_down_resets_the_client() {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = closed.local_addr().expect("address");
        drop(closed);
        let proxy = FaultProxy::start(upstream).await;

        let mut client = connect(&proxy).await;
        let (data, _) = read_to_close(&mut client).await;
        assert!(data.is_empty(), "got {data:?}");
        no_open_connections(&proxy).await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_resets_everything_and_stops_listening() {
        let (echo, proxy) = setup().await;
        let addr = proxy.addr();
        let mut client = connect(&proxy).await;
        round_trip(&mut client, b"ping").await;

        drop(proxy);
        let (data, _) = read_to_close(&mut client).await;
        assert!(data.is_empty(), "got {data:?}");
        assert_eq!(echo.ended(1).await, vec![Some(ErrorKind::ConnectionReset)]);
        eventually("the listener to close", DEADLINE, || async {
            TcpStream::connect(addr).await.is_err().then_some(())
        })
        .await;
    }
}
