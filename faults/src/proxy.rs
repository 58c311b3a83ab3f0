//! The network without root: every node on loopback behind a userspace TCP proxy that the
//! harness controls link by link.
//!
//! Node `n` listens on `127.0.0.1:SERVER_BASE+n` but advertises `127.0.0.1:PROXY_BASE+n`, the
//! proxy in front of it, and makes its own connections to other nodes from `127.0.0.(10+n)`
//! (`--peer-source-ip`). The proxy therefore knows which link every connection belongs to:
//! from node `i` to node `j`, or from the harness (any other source), which is never faulted.
//! Per link it can refuse and cut connections (partitions), reset them at random (a lossy
//! link: at TCP level loss shows up as broken connections), and delay every chunk by a
//! latency plus jitter — the delay this kernel's missing netem cannot give.

use std::collections::HashSet;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;

const PROXY_BASE: u16 = 17700;
const SERVER_BASE: u16 = 17800;

pub fn advertised_addr(n: usize) -> String {
    format!("127.0.0.1:{}", PROXY_BASE + n as u16)
}

pub fn listen_addr(n: usize) -> String {
    format!("127.0.0.1:{}", SERVER_BASE + n as u16)
}

pub fn source_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + n as u8))
}

/// The faults currently on the links.
#[derive(Default)]
struct Links {
    blocked: HashSet<(usize, usize)>,
    reset_percent: u32,
    delay: Option<(Duration, Duration)>,
}

pub struct Proxies {
    links: Arc<Mutex<Links>>,
    /// Bumped on every change, so open connections re-check their link.
    generation: watch::Sender<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxies {
    pub async fn start(nodes: usize) -> Result<Self, String> {
        let links = Arc::new(Mutex::new(Links::default()));
        let (generation, _) = watch::channel(0);
        let mut tasks = Vec::new();
        for n in 1..=nodes {
            let listener = TcpListener::bind(advertised_addr(n))
                .await
                .map_err(|e| format!("proxy for node {n}: {e}"))?;
            tasks.push(tokio::spawn(accept_loop(
                listener,
                n,
                nodes,
                links.clone(),
                generation.subscribe(),
            )));
        }
        Ok(Self {
            links,
            generation,
            tasks,
        })
    }

    fn change(&self, edit: impl FnOnce(&mut Links)) {
        edit(&mut self.links.lock().expect("links"));
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn partition(&self, a: &[usize], b: &[usize]) {
        self.change(|links| {
            for &x in a {
                for &y in b {
                    links.blocked.insert((x, y));
                    links.blocked.insert((y, x));
                }
            }
        });
    }

    pub fn lose_packets(&self, percent: u32) {
        self.change(|links| links.reset_percent = percent);
    }

    pub fn delay(&self, latency: Duration, jitter: Duration) {
        self.change(|links| links.delay = Some((latency, jitter)));
    }

    pub fn heal(&self) {
        self.change(|links| *links = Links::default());
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn source_node(ip: IpAddr, nodes: usize) -> Option<usize> {
    (1..=nodes).find(|n| source_ip(*n) == ip)
}

async fn accept_loop(
    listener: TcpListener,
    target: usize,
    nodes: usize,
    links: Arc<Mutex<Links>>,
    generation: watch::Receiver<u64>,
) {
    while let Ok((client, peer)) = listener.accept().await {
        let link = source_node(peer.ip(), nodes).map(|from| (from, target));
        if link.is_some_and(|link| links.lock().expect("links").blocked.contains(&link)) {
            continue;
        }
        let (links, generation) = (links.clone(), generation.clone());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(listen_addr(target)).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            relay(client, server, link, links, generation).await;
        });
    }
}

/// Pipes bytes both ways until either side closes or the link is cut.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    link: Option<(usize, usize)>,
    links: Arc<Mutex<Links>>,
    mut generation: watch::Receiver<u64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let faulty = link.is_some();
    // Bytes are delivered at their arrival time plus the link's delay, in order, without
    // holding up the bytes behind them: a delayed link, not a slow one.
    let (scheduled, mut due) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read_links = links.clone();
    let read_side = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut last_due = tokio::time::Instant::now();
        loop {
            let read = client_read.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                return;
            }
            let mut deliver_at = tokio::time::Instant::now();
            if faulty {
                let (delay, reset) = {
                    let links = read_links.lock().expect("links");
                    (links.delay, links.reset_percent)
                };
                if reset > 0 && rand::thread_rng().gen_range(0..100) < reset {
                    return;
                }
                if let Some((latency, jitter)) = delay {
                    let extra = rand::thread_rng().gen_range(0..=jitter.as_millis() as u64);
                    deliver_at += latency + Duration::from_millis(extra);
                }
            }
            last_due = last_due.max(deliver_at);
            if scheduled.send((last_due, buffer[..read].to_vec())).is_err() {
                return;
            }
        }
    };
    let write_side = async {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if server_write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let forward = async {
        tokio::join!(read_side, write_side);
    };
    let backward = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    };
    let cut = async {
        let Some(link) = link else {
            return std::future::pending::<()>().await;
        };
        while generation.changed().await.is_ok() {
            if links.lock().expect("links").blocked.contains(&link) {
                return;
            }
        }
    };
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
        _ = cut => {}
    }
}
