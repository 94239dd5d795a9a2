//! `thinbox serve`: containerd's snapshots API
//! (`containerd.services.snapshots.v1.Snapshots`) over one thinbox root,
//! on a unix socket, so containerd (and through its CRI plugin, a
//! Kubernetes node) uses thinbox as a proxy snapshotter plugin.
//!
//! - [`Daemon::bind`] opens the engine (shared, so the CLI keeps working
//!   beside the daemon) and binds the socket (mode 0600, or 0660 with a
//!   group); [`Daemon::run`] serves until SIGTERM or SIGINT, then finishes
//!   the calls in flight and closes the engine;
//! - [`service`]: each gRPC call runs the engine's snapshotter on a
//!   blocking thread (the libraries stay synchronous; only this crate owns
//!   an async runtime), containerd's keys kept apart from the CLI's by
//!   [`engine::clients`], errors given containerd's errdefs codes;
//! - [`socket`]: binding, stale sockets, permissions;
//! - [`metrics`]: `GET /metrics` on a TCP address (Prometheus' text
//!   format): the root's pools, snapshots and containers, read at each
//!   scrape, and each verb's latency and errors;
//! - [`monitor`]: every pool of the root kept grown past its autoextend
//!   threshold (`[serve] monitor_pools`), one thread per pool.
//!
//! The gRPC server is the `containerd-snapshots` crate (containerd's own
//! rust-extensions, tonic); see docs/design.md. Errors are the engine's
//! ([`engine::Error`]): the daemon adds no kinds of its own.
//!
//! Kernel: whatever the root's backend needs; root.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod monitor;
pub mod service;
pub mod socket;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{Engine, EngineOptions, Error, ErrorKind, Result};
use nix::unistd::Gid;

/// containerd's default address for the plugin, as `thinbox containerd
/// config` prints it.
pub const DEFAULT_SOCKET: &str = "/run/thinbox/containerd.sock";

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The engine's root and configuration.
    pub engine: EngineOptions,
    /// The socket's path.
    pub socket: PathBuf,
    /// A group given read and write on the socket (mode 0660), else 0600.
    pub group: Option<Gid>,
    /// Where `/metrics` is served; None serves none. Port 0 picks one
    /// ([`Daemon::metrics_address`] says which).
    pub metrics: Option<SocketAddr>,
    /// Keep the root's pools grown ([`monitor`]).
    pub monitor_pools: bool,
}

/// A bound daemon, not serving yet.
#[derive(Debug)]
pub struct Daemon {
    runtime: tokio::runtime::Runtime,
    stop: service::Stop,
    engine: Arc<Engine>,
    listener: UnixListener,
    socket: PathBuf,
    metrics: Option<BoundMetrics>,
    /// The engine's options, when the root's pools are to be monitored.
    monitor: Option<EngineOptions>,
}

/// The metrics endpoint, bound: its listener, what it answers, and the
/// operation families the service records into.
#[derive(Debug)]
struct BoundMetrics {
    listener: TcpListener,
    registry: Arc<prometheus::Registry>,
    ops: metrics::Operations,
}

impl Daemon {
    /// Binds the metrics address, opens the engine and binds the socket;
    /// refused when another daemon listens on it (a stale socket file is
    /// replaced) or the metrics address is taken.
    pub fn bind(opts: &ServeOptions) -> Result<Daemon> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("thinbox-serve")
            .build()
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the runtime: {e}")))?;
        // SIGTERM and SIGINT are caught from here on: one that arrives
        // while the engine opens stops the daemon as soon as it serves.
        let stop = {
            let _in = runtime.enter();
            service::Stop::catch()?
        };
        // The port first: taken, it fails the start before the engine
        // opens (and on a new root, chooses and makes a backend).
        let metrics = Daemon::bind_metrics(opts)?;
        let engine = Engine::open(&opts.engine)?;
        let listener = match socket::bind(&opts.socket, opts.group) {
            Ok(l) => l,
            Err(e) => {
                let _ = engine.close();
                return Err(e);
            }
        };
        Ok(Daemon {
            runtime,
            stop,
            engine: Arc::new(engine),
            listener,
            socket: opts.socket.clone(),
            metrics,
            monitor: opts.monitor_pools.then(|| opts.engine.clone()),
        })
    }

    fn bind_metrics(opts: &ServeOptions) -> Result<Option<BoundMetrics>> {
        let Some(addr) = opts.metrics else {
            return Ok(None);
        };
        let listener = metrics::bind(addr)?;
        let registry =
            engine::metrics::registry(engine::metrics::StateCollector::new(opts.engine.clone()))?;
        let ops = metrics::Operations::registered(&registry)?;
        Ok(Some(BoundMetrics {
            listener,
            registry: Arc::new(registry),
            ops,
        }))
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|m| m.listener.local_addr().ok())
    }

    /// The engine served.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where it listens.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serves until SIGTERM or SIGINT (monitoring the root's pools
    /// meanwhile), then stops the monitors, closes the engine and removes
    /// the socket.
    pub fn run(self) -> Result<()> {
        let Daemon {
            runtime,
            stop,
            engine,
            listener,
            socket,
            metrics,
            monitor,
        } = self;
        let monitors = monitor.map(monitor::PoolMonitors::start);
        let served = runtime.block_on(async {
            // One signal stops both servers.
            let (stopped, on_stop) = tokio::sync::watch::channel(false);
            let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            tokio::spawn(async move {
                stop.wait().await;
                let _ = stopped.send(true);
            });
            let (ops, scrapes) = match metrics {
                Some(m) => (
                    Some(m.ops),
                    Some(tokio::spawn(metrics::serve(
                        m.listener,
                        m.registry,
                        wait(on_stop.clone()),
                    ))),
                ),
                None => (None, None),
            };
            let served = service::serve(engine.clone(), listener, ops, wait(on_stop.clone())).await;
            if let Some(s) = scrapes {
                match s.await {
                    Ok(Err(e)) => tracing::warn!("{e}"),
                    Err(e) => tracing::warn!("the metrics server failed: {e}"),
                    Ok(Ok(())) => {}
                }
            }
            served
        });
        if let Some(m) = monitors {
            m.stop();
        }
        // Calls still on blocking threads finish before the engine closes.
        runtime.shutdown_timeout(std::time::Duration::from_secs(30));
        let _ = std::fs::remove_file(&socket);
        let closed = match Arc::try_unwrap(engine) {
            Ok(engine) => engine.close(),
            Err(_) => Err(Error::new(
                ErrorKind::Failed,
                "a call outlived the daemon; the engine is released when the process exits",
            )),
        };
        served?;
        closed
    }
}
