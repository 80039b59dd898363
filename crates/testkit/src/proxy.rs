//! A fault-injecting TCP proxy: tests put it between a client and a real engine, then cut the
//! link to see what the client does when the engine is unreachable.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections from a local port to an upstream address until [`cut`](Self::cut).
///
/// While cut, every open connection is closed and new ones are accepted and closed at once, as
/// a broker behind a failed network path would look to its client. [`restore`](Self::restore)
/// forwards again. Dropping the proxy stops it.
pub struct FaultProxy {
    local: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    /// Connections being forwarded now.
    live: Arc<watch::Sender<usize>>,
    task: JoinHandle<()>,
}

/// Counts a forwarded connection while it lives.
struct Live(Arc<watch::Sender<usize>>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl FaultProxy {
    /// Starts a proxy in front of the engine `url` points at (`scheme://[user@]host:port/...`)
    /// and returns it with the same URL pointed at the proxy, for a client to connect through.
    pub async fn in_front_of(url: &str) -> io::Result<(Self, String)> {
        Self::in_front_of_on(url, "127.0.0.1:0").await
    }

    /// [`in_front_of`](Self::in_front_of), listening on `listen` (`ip:port`).
    pub async fn in_front_of_on(url: &str, listen: &str) -> io::Result<(Self, String)> {
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("not a URL: {url}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, host) = match authority.rsplit_once('@') {
            Some((user, host)) => (format!("{user}@"), host),
            None => (String::new(), authority),
        };
        let proxy = Self::start_on(listen, host).await?;
        let through = format!("{scheme}://{user}{}/{path}", proxy.local_addr());
        Ok((proxy, through))
    }

    /// Starts forwarding `127.0.0.1:<some port>` to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> io::Result<Self> {
        Self::start_on("127.0.0.1:0", upstream).await
    }

    /// Starts forwarding `listen` (`ip:port`, port 0 for any) to `upstream`: an address of a
    /// network namespace's link, say, so that a process inside the namespace reaches an engine
    /// that listens on loopback only.
    pub async fn start_on(listen: &str, upstream: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let upstream = upstream.to_owned();
        let state = Arc::clone(&cut);
        let live = Arc::new(watch::channel(0_usize).0);
        let counted = Arc::clone(&live);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *state.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut_now = state.subscribe();
                let upstream = upstream.clone();
                counted.send_modify(|n| *n += 1);
                let alive = Live(Arc::clone(&counted));
                tokio::spawn(async move {
                    let _alive = alive;
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_now.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(Self {
            local,
            cut,
            live,
            task,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Closes every connection and refuses new ones until [`restore`](Self::restore). Returns
    /// once every connection that was open is closed, so that what the test does next meets
    /// the cut, not a connection still being torn down.
    pub async fn cut(&self) {
        self.cut.send_replace(true);
        let _ = self.live.subscribe().wait_for(|n| *n == 0).await;
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_replace(true);
    }
}
