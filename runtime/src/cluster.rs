//! Forming a cluster of processes without a supervisor, and noticing when it breaks.
//!
//! Every process is started with the same peer list (`host:port` per process) and its
//! own index: by Kubernetes, systemd, a shell loop or `weir launch`.
//!
//! **Rendezvous.** A process first claims a generation in the checkpoint store: an
//! object `rendezvous/<generation>-p<index>` created if absent, so that exactly one
//! incarnation of each index takes part in a generation
//! (`weir_checkpoint::protocol::claim_target` picks which). Then each pair of processes
//! connects twice (a data link for timely and a heartbeat link) and exchanges a
//! [`Hello`]: job, peer list, index, claimed generation and the checkpoint it restores.
//! - A peer of an older generation is refused (logged, its connection dropped): it sees
//!   the newer generation in the refusal, claims it too and connects again.
//! - A peer of a newer generation makes this process drop every link, claim that
//!   generation and start the exchange again: a process that restarted while the others
//!   ran pulls them all to a new generation; nobody joins an old one half-way.
//! - Once every link carries the same generation, [`agree`] checks what else must match.
//!
//! Once the dataflow runs:
//! - a data link that ends without timely's clean-shutdown header (the peer was killed or
//!   the connection reset) fails the run naming the peer, instead of letting timely's
//!   network thread panic;
//! - every process sends a heartbeat on each heartbeat link four times per peer timeout;
//!   a peer whose heartbeats stop for the timeout (stopped, or its network cut) or whose
//!   link closes fails the run naming the peer;
//! - a peer that connects again (it restarted) fails the run, so that the whole cluster
//!   moves to a new generation instead of continuing without it.
//!
//! A failed run ends with a [`RuntimeError::Peer`], which is transient: the supervisor
//! restarts the process, and the restarted processes form the next generation.
//!
//! ## Design
//!
//! Invariants:
//! - processes form a cluster only with peers of the same job and the same peer list,
//!   each index exactly once; anything else is refused with an error naming the address;
//! - a generation is run by at most one incarnation of each index (the claim in the
//!   store), so a generation number names one set of processes, and a zombie of an old
//!   generation is fenced by the newer one's marker;
//! - every process of a cluster runs the same generation and restores the same
//!   checkpoint: [`agree`] is a pure function of the hellos, which every process sees
//!   in full;
//! - the end of a run is announced on the heartbeat links, so that a peer that finished
//!   is never taken for a lost one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weir_checkpoint::{Epoch, Generation};

use crate::error::{Result, RuntimeError};

/// What a process says about itself when it connects to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The job's name.
    pub job: String,
    /// Every process's `host:port`, in order.
    pub peers: Vec<String>,
    /// The sender's index in `peers`.
    pub index: usize,
    /// Which link this connection is.
    pub link: LinkKind,
    /// The generation the sender claimed.
    pub generation: Generation,
    /// The checkpoint the sender restores (`None` for a fresh start).
    pub restores: Option<Epoch>,
}

/// The two connections between a pair of processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    /// Timely's data and progress traffic.
    Data,
    /// Heartbeats and the end-of-run notice.
    Heartbeat,
}

/// Decides whether this process and its peers (one hello per peer, in any order, all
/// of the same generation once the exchange is done) form a cluster, and of which
/// generation.
///
/// It is an error, permanent, when a peer belongs to another job or has another peer
/// list; and transient when the processes would restore different checkpoints (one
/// completed while they restarted: the next attempt agrees) or, which the exchange
/// prevents, claimed different generations.
pub fn agree(own: &Hello, peers: &[Hello]) -> Result<Generation> {
    for hello in peers {
        check(own, hello)?;
        let peer_error = |reason: String| RuntimeError::Peer {
            process: hello.index,
            address: own.peers.get(hello.index).cloned().unwrap_or_default(),
            reason,
        };
        if hello.generation != own.generation {
            return Err(peer_error(format!(
                "claimed generation {}, this process claimed {}",
                hello.generation, own.generation
            )));
        }
        if hello.restores != own.restores {
            let shown = |r: Option<Epoch>| {
                r.map_or("nothing (a fresh start)".into(), |e| {
                    format!("checkpoint {e}")
                })
            };
            return Err(peer_error(format!(
                "restores {}, this process restores {}: a checkpoint completed while the cluster restarted; the next attempt agrees",
                shown(hello.restores),
                shown(own.restores)
            )));
        }
    }
    Ok(own.generation)
}

/// How this process's generation compares with a peer's during the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// Both claimed the same generation: the link is kept.
    Same,
    /// The peer is of an older generation: it is refused, and moves up when it reads
    /// this process's hello.
    Refuse,
    /// The peer is of a newer generation: this process claims it and starts again.
    MoveUp(Generation),
}

/// Compares this process's claimed generation with a peer's (see [`Compared`]).
///
/// ```
/// use weir_runtime::cluster::{compare, Compared};
/// use weir_checkpoint::Generation;
/// assert_eq!(compare(Generation(4), Generation(4)), Compared::Same);
/// assert_eq!(compare(Generation(4), Generation(3)), Compared::Refuse);
/// assert_eq!(compare(Generation(4), Generation(6)), Compared::MoveUp(Generation(6)));
/// ```
pub fn compare(own: Generation, peer: Generation) -> Compared {
    match peer.cmp(&own) {
        std::cmp::Ordering::Equal => Compared::Same,
        std::cmp::Ordering::Less => Compared::Refuse,
        std::cmp::Ordering::Greater => Compared::MoveUp(peer),
    }
}

/// Whether `hello` comes from a process of this cluster: the same job and peer list.
fn check(own: &Hello, hello: &Hello) -> Result<()> {
    let address = own.peers.get(hello.index).cloned().unwrap_or_default();
    if hello.job != own.job {
        return Err(RuntimeError::config(
            "peers",
            format!(
                "process {} at {address} runs job `{}`, this process runs `{}`: give each job its own ports",
                hello.index, hello.job, own.job
            ),
        ));
    }
    if hello.peers != own.peers {
        return Err(RuntimeError::config(
            "peers",
            format!(
                "process {} at {address} has the peer list {}, this process has {}: start every process with the same --peers",
                hello.index,
                hello.peers.join(","),
                own.peers.join(",")
            ),
        ));
    }
    Ok(())
}

/// The index in a host name that ends in `-N` (`wordcount-2` is 2), as a Kubernetes
/// StatefulSet names its pods.
///
/// ```
/// use weir_runtime::cluster::index_from_host_name;
/// assert_eq!(index_from_host_name("wordcount-2"), Some(2));
/// assert_eq!(index_from_host_name("my-job-10.cluster.local"), Some(10));
/// assert_eq!(index_from_host_name("wordcount"), None);
/// ```
pub fn index_from_host_name(host: &str) -> Option<usize> {
    let name = host.split('.').next()?;
    let (_, n) = name.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// A cluster whose links are connected and whose generation is agreed.
pub(crate) struct Formed {
    pub(crate) generation: Generation,
    /// Timely's links, `None` at this process's index.
    pub(crate) data: Vec<Option<TcpStream>>,
    heartbeats: Vec<Option<TcpStream>>,
    listener: TcpListener,
    own: Hello,
}

const MAX_HELLO: u32 = 1 << 20;

fn write_hello(stream: &mut TcpStream, hello: &Hello) -> io::Result<()> {
    let bytes = serde_json::to_vec(hello).map_err(io::Error::other)?;
    stream.write_all(&(bytes.len() as u32).to_be_bytes())?;
    stream.write_all(&bytes)?;
    stream.flush()
}

fn read_hello(stream: &mut TcpStream, timeout: Duration) -> io::Result<Hello> {
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HELLO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a hello of {len} bytes"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    stream.read_exact(&mut bytes)?;
    stream.set_read_timeout(None)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The port this process listens on: its own entry's, on every interface.
fn listen_address(own: &str) -> Result<SocketAddr> {
    let port = own
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| RuntimeError::config("peers", format!("`{own}` is not host:port")))?;
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

/// Claims a generation at least as new as the one given (see the module documentation):
/// returns the generation claimed, or an error if the claim fails.
pub(crate) type Claim<'a> = dyn FnMut(Generation) -> Result<Generation> + 'a;

/// The exchange in progress: what both its threads share.
struct Exchange {
    own: Hello,
    deadline: Instant,
    /// Either side's failure ends the other's waiting.
    give_up: AtomicBool,
    /// The newest generation a peer showed, if newer than this process's.
    newer: AtomicU64,
}

impl Exchange {
    fn saw_newer(&self, generation: Generation) {
        self.newer.fetch_max(generation.0, Ordering::Relaxed);
        self.give_up.store(true, Ordering::Relaxed);
    }

    fn refuse(&self, hello: &Hello, from: &str) {
        tracing::info!(
            process = hello.index,
            %from,
            offered = %hello.generation,
            generation = %self.own.generation,
            "refused process {} at {from}: it offers generation {}, this process forms generation {}; it moves up when it reads the refusal",
            hello.index,
            hello.generation,
            self.own.generation
        );
    }
}

/// Connects to every peer and agrees on the generation (see the module documentation).
///
/// `floor` is the oldest generation this run may take (one past the newest marker in
/// the checkpoint store); `claim` claims one in the store; `restores` is the checkpoint
/// this process restores.
pub(crate) fn form(
    job: &str,
    peers: &[String],
    index: usize,
    floor: Generation,
    claim: &mut Claim<'_>,
    restores: Option<Epoch>,
    start_timeout: Duration,
) -> Result<Formed> {
    let listen = listen_address(&peers[index])?;
    let listener = TcpListener::bind(listen).map_err(|e| {
        RuntimeError::config(
            "peers",
            format!(
                "this process (index {index}) cannot listen on {listen} for its entry `{}`: {e}",
                peers[index]
            ),
        )
    })?;
    let deadline = Instant::now() + start_timeout;
    let mut floor = floor;
    loop {
        let generation = claim(floor)?;
        let ex = Exchange {
            own: Hello {
                job: job.to_string(),
                peers: peers.to_vec(),
                index,
                link: LinkKind::Data,
                generation,
                restores,
            },
            deadline,
            give_up: AtomicBool::new(false),
            newer: AtomicU64::new(0),
        };
        let (connected, accepted) = std::thread::scope(|s| {
            let accepting = s.spawn(|| {
                let accepted = accept_all(&listener, &ex);
                if accepted.is_err() {
                    ex.give_up.store(true, Ordering::Relaxed);
                }
                accepted
            });
            let connected = connect_all(&ex);
            if connected.is_err() {
                ex.give_up.store(true, Ordering::Relaxed);
            }
            let accepted = accepting.join().unwrap_or_else(|_| {
                Err(RuntimeError::Dataflow(
                    "the thread accepting peers panicked".into(),
                ))
            });
            (connected, accepted)
        });
        let newer = Generation(ex.newer.load(Ordering::Relaxed));
        if newer > generation {
            // Every link of this attempt is dropped: the peers see them close and
            // connect again once they have claimed the newer generation too.
            tracing::info!(
                generation = %generation,
                newer = %newer,
                "a peer runs a newer generation: claiming it and connecting again"
            );
            floor = newer;
            continue;
        }
        // The side that failed first names the cause; the other side only gave up.
        let accepted = accepted?;
        let mut links: Vec<(Hello, TcpStream)> = connected?;
        links.extend(accepted);
        let hellos: Vec<Hello> = links
            .iter()
            .filter(|(h, _)| h.link == LinkKind::Data)
            .map(|(h, _)| h.clone())
            .collect();
        let generation = agree(&ex.own, &hellos)?;
        let mut data: Vec<Option<TcpStream>> = (0..peers.len()).map(|_| None).collect();
        let mut heartbeats: Vec<Option<TcpStream>> = (0..peers.len()).map(|_| None).collect();
        for (hello, stream) in links {
            let _ = stream.set_nodelay(true);
            match hello.link {
                LinkKind::Data => data[hello.index] = Some(stream),
                LinkKind::Heartbeat => heartbeats[hello.index] = Some(stream),
            }
        }
        tracing::info!(
            generation = %generation,
            processes = peers.len(),
            index,
            "the cluster is formed"
        );
        return Ok(Formed {
            generation,
            data,
            heartbeats,
            listener,
            own: ex.own,
        });
    }
}

/// Connects to every peer with a lower index, both links, retrying until the deadline.
/// Stops early (with what it has) when a peer shows a newer generation.
fn connect_all(ex: &Exchange) -> Result<Vec<(Hello, TcpStream)>> {
    let mut out = Vec::new();
    for peer in 0..ex.own.index {
        for link in [LinkKind::Data, LinkKind::Heartbeat] {
            match connect_one(ex, peer, link)? {
                Some(connected) => out.push(connected),
                None => return Ok(out),
            }
        }
    }
    Ok(out)
}

/// One link to `peer`: `None` when a newer generation was seen (on this link or
/// another), so that the exchange starts again.
fn connect_one(ex: &Exchange, peer: usize, link: LinkKind) -> Result<Option<(Hello, TcpStream)>> {
    let own = &ex.own;
    let address = &own.peers[peer];
    let unreachable = |reason: String| RuntimeError::Peer {
        process: peer,
        address: address.clone(),
        reason,
    };
    let hello = Hello {
        link,
        ..own.clone()
    };
    loop {
        if ex.newer.load(Ordering::Relaxed) > own.generation.0 {
            return Ok(None);
        }
        let attempt = (|| -> io::Result<(Hello, TcpStream)> {
            let target = address.to_socket_addrs()?.next().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address")
            })?;
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
            write_hello(&mut stream, &hello)?;
            let reply = read_hello(&mut stream, Duration::from_secs(10))?;
            Ok((reply, stream))
        })();
        let failed = match attempt {
            Ok((reply, stream)) => {
                check(own, &reply)?;
                if reply.index != peer {
                    return Err(RuntimeError::config(
                        "process-index",
                        format!(
                            "{address} answers as process {}, but it is entry {peer} of --peers: is a process started with the wrong index, or are the peer lists different?",
                            reply.index
                        ),
                    ));
                }
                match compare(own.generation, reply.generation) {
                    Compared::Same => return Ok(Some((reply, stream))),
                    Compared::MoveUp(newer) => {
                        ex.saw_newer(newer);
                        return Ok(None);
                    }
                    Compared::Refuse => {
                        ex.refuse(&reply, address);
                        format!("it is still at generation {}", reply.generation)
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= ex.deadline || ex.give_up.load(Ordering::Relaxed) {
            if ex.newer.load(Ordering::Relaxed) > own.generation.0 {
                return Ok(None);
            }
            return Err(unreachable(format!(
                "cannot be reached within the start timeout: {failed}; is it running, and is --peers right?"
            )));
        }
        tracing::debug!(peer, %address, reason = %failed, "peer not ready yet; retrying");
        // A retry interval, not a wait for a condition: the peer may not listen yet.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Accepts both links from every peer with a higher index, until the deadline. Stops
/// early (with what it has) when a peer shows a newer generation.
fn accept_all(listener: &TcpListener, ex: &Exchange) -> Result<Vec<(Hello, TcpStream)>> {
    let own = &ex.own;
    let count = own.peers.len();
    let expected = 2 * (count - own.index - 1);
    let mut out: Vec<(Hello, TcpStream)> = Vec::new();
    listener
        .set_nonblocking(true)
        .map_err(|e| RuntimeError::Dataflow(format!("cannot poll the listener: {e}")))?;
    while out.len() < expected {
        match listener.accept() {
            Ok((mut stream, from)) => {
                let _ = stream.set_nonblocking(false);
                let remaining = ex.deadline.saturating_duration_since(Instant::now());
                let hello = match read_hello(&mut stream, remaining.min(Duration::from_secs(10))) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "a connection that is no weir peer was dropped");
                        continue;
                    }
                };
                if hello.index <= own.index || hello.index >= count {
                    return Err(RuntimeError::config(
                        "process-index",
                        format!(
                            "a process at {from} says it is process {} of {}, but this process is {} and only higher indices connect to it: are two processes started with the same index, or are the peer lists different?",
                            hello.index,
                            hello.peers.len(),
                            own.index
                        ),
                    ));
                }
                let reply = Hello {
                    link: hello.link,
                    ..own.clone()
                };
                if let Err(e) = write_hello(&mut stream, &reply) {
                    tracing::warn!(%from, error = %e, "a peer left during the handshake");
                    continue;
                }
                // Answered first, so that the other process learns of a mismatch too.
                check(own, &hello)?;
                match compare(own.generation, hello.generation) {
                    Compared::Same => {}
                    Compared::Refuse => {
                        ex.refuse(&hello, &from.to_string());
                        continue;
                    }
                    Compared::MoveUp(newer) => {
                        ex.saw_newer(newer);
                        return Ok(out);
                    }
                }
                if out
                    .iter()
                    .any(|(h, _)| h.index == hello.index && h.link == hello.link)
                {
                    return Err(RuntimeError::config(
                        "process-index",
                        format!(
                            "two processes say they are process {} (the second one from {from}): every index must be used exactly once",
                            hello.index
                        ),
                    ));
                }
                out.push((hello, stream));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ex.give_up.load(Ordering::Relaxed) {
                    return Ok(out);
                }
                if Instant::now() >= ex.deadline {
                    let missing: Vec<usize> = (own.index + 1..count)
                        .filter(|i| out.iter().filter(|(h, _)| h.index == *i).count() < 2)
                        .collect();
                    let first = missing.first().copied().unwrap_or(own.index + 1);
                    return Err(RuntimeError::Peer {
                        process: first,
                        address: own.peers[first].clone(),
                        reason: format!(
                            "did not connect within the start timeout (missing: processes {missing:?}); is it running, and is --peers right?"
                        ),
                    });
                }
                // Polling the listener alongside the outgoing connections.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(RuntimeError::Dataflow(format!("cannot accept peers: {e}"))),
        }
    }
    let _ = listener.set_nonblocking(false);
    Ok(out)
}

/// What to do when a peer is lost: record the failure of the run.
pub(crate) type OnLost = Arc<dyn Fn(RuntimeError) + Send + Sync>;

/// Timely's end-of-stream marker: a message header of zeros, written last on a link.
const CLEAN_END: usize = 48;

/// A timely data link that turns the loss of its peer into a failure of the run
/// (naming the peer) instead of a panic of timely's network thread. After a loss, the
/// thread using the link parks: the run is failing, and the process is about to exit.
pub(crate) struct Link {
    stream: TcpStream,
    peer: usize,
    address: Arc<str>,
    /// The last bytes read: timely ends a link with [`CLEAN_END`] zero bytes.
    tail: Vec<u8>,
    lost: OnLost,
}

impl Link {
    pub(crate) fn new(stream: TcpStream, peer: usize, address: &str, lost: OnLost) -> Self {
        Link {
            stream,
            peer,
            address: address.into(),
            tail: Vec::with_capacity(2 * CLEAN_END),
            lost,
        }
    }

    fn lose(&self, reason: String) -> ! {
        (self.lost)(RuntimeError::Peer {
            process: self.peer,
            address: self.address.to_string(),
            reason,
        });
        loop {
            std::thread::park();
        }
    }

    fn remember(&mut self, bytes: &[u8]) {
        if bytes.len() >= CLEAN_END {
            self.tail.clear();
            self.tail
                .extend_from_slice(&bytes[bytes.len() - CLEAN_END..]);
        } else {
            self.tail.extend_from_slice(bytes);
            let excess = self.tail.len().saturating_sub(CLEAN_END);
            self.tail.drain(..excess);
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stream.read(buf) {
            Ok(0) if self.tail.len() == CLEAN_END && self.tail.iter().all(|b| *b == 0) => Ok(0),
            Ok(0) => self.lose("closed its connection: it exited or was killed".into()),
            Ok(n) => {
                self.remember(&buf[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => self.lose(format!("broke its connection: {e}")),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.stream.write(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                self.lose(format!("cannot be written to: {e}"))
            }
            other => other,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.stream.flush() {
            Err(e) => self.lose(format!("cannot be written to: {e}")),
            ok => ok,
        }
    }
}

impl timely::communication::allocator::zero_copy::stream::Stream for Link {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(Link {
            stream: self.stream.try_clone()?,
            peer: self.peer,
            address: Arc::clone(&self.address),
            tail: Vec::with_capacity(2 * CLEAN_END),
            lost: Arc::clone(&self.lost),
        })
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.stream.set_nonblocking(nonblocking)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
}

/// Heartbeat bytes.
const BEAT: u8 = 1;
const DONE: u8 = 2;

/// Watches the peers while the dataflow runs (see the module documentation).
pub(crate) struct Watch {
    finished: Arc<AtomicBool>,
    heartbeats: Vec<TcpStream>,
}

impl Formed {
    /// Timely's data links, wrapped so that a lost peer fails the run.
    pub(crate) fn links(&mut self, lost: &OnLost) -> Vec<Option<Link>> {
        let peers = self.own.peers.clone();
        self.data
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                s.take()
                    .map(|s| Link::new(s, i, &peers[i], Arc::clone(lost)))
            })
            .collect()
    }

    /// Starts the heartbeats, the watch over the peers' heartbeats, and the watch for a
    /// restarted peer.
    pub(crate) fn watch(self, timeout: Duration, lost: OnLost) -> Watch {
        let finished = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for (peer, stream) in self.heartbeats.into_iter().enumerate() {
            let Some(stream) = stream else { continue };
            let address = self.own.peers[peer].clone();
            if let Ok(writer) = stream.try_clone() {
                writers.push(writer);
            }
            let (finished, lost) = (Arc::clone(&finished), Arc::clone(&lost));
            let _ = std::thread::Builder::new()
                .name(format!("weir-peer-{peer}"))
                .spawn(move || watch_peer(stream, peer, address, timeout, finished, lost));
        }
        let beats: Vec<TcpStream> = writers.iter().filter_map(|w| w.try_clone().ok()).collect();
        let beating = Arc::clone(&finished);
        let _ = std::thread::Builder::new()
            .name("weir-heartbeat".into())
            .spawn(move || {
                let every = timeout / 4;
                let mut beats = beats;
                while !beating.load(Ordering::Relaxed) {
                    for b in &mut beats {
                        // A peer that cannot be written to is noticed by its watcher.
                        let _ = b.write_all(&[BEAT]);
                    }
                    // The heartbeat period.
                    std::thread::sleep(every);
                }
            });
        let own = self.own;
        let listener = self.listener;
        let restarted = Arc::clone(&finished);
        let _ = std::thread::Builder::new()
            .name("weir-rejoin".into())
            .spawn(move || watch_rejoins(listener, own, restarted, lost));
        Watch {
            finished,
            heartbeats: writers,
        }
    }
}

fn watch_peer(
    mut stream: TcpStream,
    peer: usize,
    address: String,
    timeout: Duration,
    finished: Arc<AtomicBool>,
    lost: OnLost,
) {
    let _ = stream.set_read_timeout(Some(timeout));
    let mut byte = [0u8; 1];
    let mut excused = false;
    loop {
        let waiting = Instant::now();
        let reason = match stream.read(&mut byte) {
            Ok(1) if byte[0] == DONE => return,
            Ok(1) => {
                excused = false;
                continue;
            }
            Ok(_) => "closed its connection: it exited or was killed".to_string(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if !excused && paused_itself(waiting.elapsed(), timeout) {
                    // This process was stopped itself (SIGSTOP, a frozen machine): its
                    // peer gets one more timeout to be heard from, and the process's
                    // own work (a coordinator that finds itself fenced) goes first.
                    excused = true;
                    continue;
                }
                format!(
                    "sent no heartbeat for {} ms: it is stopped, or the network to it is cut (--peer-timeout-ms)",
                    timeout.as_millis()
                )
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => format!("broke its connection: {e}"),
        };
        if !finished.load(Ordering::Relaxed) {
            lost(RuntimeError::Peer {
                process: peer,
                address,
                reason,
            });
        }
        return;
    }
}

/// Whether a read that waited `waited` for a heartbeat, with a read timeout of
/// `timeout`, waited that long because this process was stopped: a running process's
/// read returns within about its timeout. Taking a late return for a pause costs one
/// more timeout before a silent peer is declared lost, once.
fn paused_itself(waited: Duration, timeout: Duration) -> bool {
    waited >= timeout + timeout / 4
}

fn watch_rejoins(listener: TcpListener, own: Hello, finished: Arc<AtomicBool>, lost: OnLost) {
    for stream in listener.incoming() {
        if finished.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        let Ok(hello) = read_hello(&mut stream, Duration::from_secs(5)) else {
            continue;
        };
        if hello.job != own.job || hello.peers != own.peers || hello.index >= own.peers.len() {
            continue;
        }
        lost(RuntimeError::Peer {
            process: hello.index,
            address: own.peers[hello.index].clone(),
            reason: format!(
                "started again (it claimed generation {}): this generation ends, so that the whole cluster moves to a new one",
                hello.generation
            ),
        });
        return;
    }
}

impl Watch {
    /// The run ended well: tell the peers, so that they do not take this process's exit
    /// for a loss, and stop watching them.
    pub(crate) fn finish(mut self) {
        self.finished.store(true, Ordering::Relaxed);
        for b in &mut self.heartbeats {
            let _ = b.write_all(&[DONE]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_well_past_the_timeout_means_this_process_was_stopped() {
        let timeout = Duration::from_millis(2000);
        assert!(!paused_itself(Duration::from_millis(2001), timeout));
        assert!(!paused_itself(Duration::from_millis(2499), timeout));
        assert!(paused_itself(Duration::from_millis(2500), timeout));
        assert!(paused_itself(Duration::from_secs(60), timeout));
    }

    fn hello(index: usize, generation: u64, restores: Option<u64>) -> Hello {
        Hello {
            job: "wc".into(),
            peers: vec!["a:1".into(), "b:1".into(), "c:1".into()],
            index,
            link: LinkKind::Data,
            generation: Generation(generation),
            restores: restores.map(Epoch),
        }
    }

    #[test]
    fn a_cluster_forms_only_when_every_process_claimed_the_same_generation() {
        let own = hello(0, 5, Some(7));
        let peers = [hello(1, 5, Some(7)), hello(2, 5, Some(7))];
        assert_eq!(agree(&own, &peers).unwrap(), Generation(5));
        let e = agree(&own, &[hello(1, 5, Some(7)), hello(2, 4, Some(7))]).unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert!(e.to_string().contains("claimed generation 4"), "{e}");
    }

    #[test]
    fn an_older_peer_is_refused_and_a_newer_one_is_followed() {
        assert_eq!(compare(Generation(5), Generation(5)), Compared::Same);
        assert_eq!(compare(Generation(5), Generation(0)), Compared::Refuse);
        assert_eq!(
            compare(Generation(5), Generation(7)),
            Compared::MoveUp(Generation(7))
        );
    }

    #[test]
    fn another_job_or_peer_list_is_refused_for_good() {
        let own = hello(0, 1, None);
        let mut other = hello(1, 1, None);
        other.job = "other".into();
        let e = agree(&own, &[other]).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("runs job `other`"), "{e}");
        let mut other = hello(2, 1, None);
        other.peers.pop();
        let e = agree(&own, &[other]).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("same --peers"), "{e}");
    }

    #[test]
    fn different_checkpoints_to_restore_are_retried() {
        let e = agree(&hello(0, 1, Some(4)), &[hello(1, 1, Some(5))]).unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert!(
            e.to_string()
                .contains("process 1 at b:1 restores checkpoint 5"),
            "{e}"
        );
    }

    #[test]
    fn pod_names_give_indices() {
        assert_eq!(index_from_host_name("wc-0"), Some(0));
        assert_eq!(index_from_host_name("wc-12.wc.default.svc"), Some(12));
        assert_eq!(index_from_host_name("wc-"), None);
        assert_eq!(index_from_host_name("wc-x1"), None);
        assert_eq!(index_from_host_name(""), None);
    }

    #[test]
    fn a_link_knows_a_clean_end_from_a_loss() {
        let mut link_tail = Link {
            stream: TcpListener::bind("127.0.0.1:0")
                .and_then(|l| TcpStream::connect(l.local_addr()?))
                .unwrap(),
            peer: 1,
            address: "x:1".into(),
            tail: Vec::new(),
            lost: Arc::new(|_| {}),
        };
        link_tail.remember(&[7; 100]);
        link_tail.remember(&[0; 30]);
        assert!(link_tail.tail.iter().any(|b| *b != 0));
        link_tail.remember(&[0; 18]);
        assert_eq!(link_tail.tail, vec![0; CLEAN_END]);
    }
}
