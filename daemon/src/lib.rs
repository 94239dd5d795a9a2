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
//! - [`socket`]: binding, stale sockets, permissions.
//!
//! The gRPC server is the `containerd-snapshots` crate (containerd's own
//! rust-extensions, tonic); see docs/design.md. Errors are the engine's
//! ([`engine::Error`]): the daemon adds no kinds of its own.
//!
//! Kernel: whatever the root's backend needs; root.
#![forbid(unsafe_code)]

pub mod service;
pub mod socket;

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
}

/// A bound daemon, not serving yet.
#[derive(Debug)]
pub struct Daemon {
    runtime: tokio::runtime::Runtime,
    stop: service::Stop,
    engine: Arc<Engine>,
    listener: UnixListener,
    socket: PathBuf,
}

impl Daemon {
    /// Opens the engine and binds the socket; refused when another daemon
    /// listens on it (a stale socket file is replaced).
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
        })
    }

    /// The engine served.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where it listens.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serves until SIGTERM or SIGINT, then closes the engine and removes
    /// the socket.
    pub fn run(self) -> Result<()> {
        let Daemon {
            runtime,
            stop,
            engine,
            listener,
            socket,
        } = self;
        let served = runtime.block_on(service::serve(engine.clone(), listener, stop));
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
