//! A TCP proxy on loopback that a test places between clients and a server, to inject the
//! network's faults without touching the server: latency, connections cut mid-stream, and a
//! partition (a black hole: nothing passes either way, new connections hang) that heals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    /// Added before every chunk is passed on.
    latency: Duration,
    /// Nothing is passed on (bytes wait in the socket buffers, as in a partition TCP outlives).
    partitioned: bool,
    /// Bumped to cut every connection open now.
    cuts: u64,
}

/// A proxy from a port of its own on 127.0.0.1 to `upstream`; stops when dropped.
pub struct Proxy {
    port: u16,
    faults: Arc<watch::Sender<Faults>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and pass every connection on to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Self::start_on(0, upstream).await
    }

    /// Listen on `port` (0: a free one) and pass every connection on to `upstream`.
    pub async fn start_on(port: u16, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let faults = Arc::new(watch::Sender::new(Faults::default()));
        let task = tokio::spawn(accept(listener, upstream, faults.clone()));
        Ok(Proxy { port, faults, task })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Delay every chunk by `latency` from now on (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.faults.send_modify(|f| f.latency = latency);
    }

    /// Start (`true`) or heal (`false`) a partition: while it lasts nothing passes and new
    /// connections are accepted but not passed on; after it, the traffic resumes.
    pub fn set_partitioned(&self, partitioned: bool) {
        self.faults.send_modify(|f| f.partitioned = partitioned);
    }

    /// Cut every connection open now (both sides see the connection closed); later
    /// connections pass.
    pub fn cut(&self) {
        self.faults.send_modify(|f| f.cuts += 1);
    }

    /// Back to passing everything at once.
    pub fn heal(&self) {
        self.faults.send_modify(|f| {
            f.latency = Duration::ZERO;
            f.partitioned = false;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections end with the sender: their pumps see the channel closed.
        self.faults.send_modify(|f| f.cuts += 1);
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, faults: Arc<watch::Sender<Faults>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let rx = faults.subscribe();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let _ = connection(client, upstream, rx).await;
        });
    }
}

/// One proxied connection: until either side closes, or a cut.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<Faults>,
) -> std::io::Result<()> {
    let cuts = faults.borrow().cuts;
    // A partition holds the connection before it reaches the server, too.
    if passable(&mut faults, cuts).await.is_err() {
        return Ok(());
    }
    let mut watcher = faults.clone();
    let server = tokio::select! {
        s = TcpStream::connect(upstream) => s?,
        _ = cut(&mut watcher, cuts) => return Ok(()),
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, faults.clone(), cuts);
    let down = pump(server_read, client_write, faults.clone(), cuts);
    // Either direction ending ends both: the sockets close when the halves drop.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut(&mut faults, cuts) => {}
    }
    Ok(())
}

/// Copy `from` to `to` chunk by chunk, each passed on only when no partition holds it and
/// after the latency of the moment.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
    cuts: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // While partitioned, not even reading: the sender's buffers fill as in a black hole.
        passable(&mut faults, cuts)
            .await
            .map_err(|_| std::io::ErrorKind::ConnectionAborted)?;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let latency = faults.borrow().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        passable(&mut faults, cuts)
            .await
            .map_err(|_| std::io::ErrorKind::ConnectionAborted)?;
        to.write_all(&buf[..n]).await?;
    }
}

/// Wait until no partition holds traffic; `Err` when the connection was cut meanwhile.
async fn passable(faults: &mut watch::Receiver<Faults>, cuts: u64) -> Result<(), ()> {
    loop {
        let now = *faults.borrow_and_update();
        if now.cuts != cuts {
            return Err(());
        }
        if !now.partitioned {
            return Ok(());
        }
        if faults.changed().await.is_err() {
            return Err(());
        }
    }
}

/// Resolves when the connections opened at `cuts` are cut (or the proxy is gone).
async fn cut(faults: &mut watch::Receiver<Faults>, cuts: u64) {
    loop {
        if faults.borrow_and_update().cuts != cuts {
            return;
        }
        if faults.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Proxy;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// An echo server on loopback.
    async fn echo() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<Duration> {
        let started = Instant::now();
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn passes_delays_partitions_and_cuts() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        assert!(round_trip(&mut s).await.unwrap() < Duration::from_millis(100));

        proxy.set_latency(Duration::from_millis(100));
        let slow = round_trip(&mut s).await.unwrap();
        assert!(slow >= Duration::from_millis(200), "{slow:?}: both ways");
        proxy.heal();

        // A partition: nothing comes back while it lasts, everything once it heals.
        proxy.set_partitioned(true);
        let pending = tokio::spawn(async move {
            let took = round_trip(&mut s).await.unwrap();
            (s, took)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pending.is_finished(), "nothing passes a partition");
        proxy.set_partitioned(false);
        let (mut s, took) = pending.await.unwrap();
        assert!(took >= Duration::from_millis(300), "{took:?}");

        // A cut: the open connection is closed, a new one passes.
        proxy.cut();
        let mut buf = [0u8; 4];
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = s.write_all(b"ping").await;
            s.read(&mut buf).await
        })
        .await
        .expect("a cut connection does not hang");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        round_trip(&mut again).await.unwrap();
    }
}
