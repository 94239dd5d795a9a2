//! Starting, waiting for and tearing down one container.

//!

//! [`Runtime::start`] checks the config and the limits against the host,

//! makes the cgroup, then clones a child into new mount, pid, uts, ipc,

//! network (and user) namespaces; on a pure v2 host the child starts inside

//! its cgroup (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7), elsewhere the

//! parent moves it there. The parent writes its id maps, then lets it go

//! on; the child enters a

//! new cgroup namespace, sets the hostname, brings `lo` up, builds the root

//! (see [`crate::mounts`]), drops to the configured user, capabilities,

//! `no_new_privs` and seccomp filter, and execs. A failure in the child is

//! sent back with the step that failed, and the parent tears the half-made

//! container down (its namespaces die with it; the cgroup is killed and

//! removed) before returning the error.

//!

//! [`Container::wait`] waits for pid 1 (with a timeout that kills the whole

//! cgroup, forwarding signals if asked), reads the cgroup's OOM and pids

//! counters, removes the cgroup and returns an [`ExitReport`].
use crate::cgroup::{self, Cgroup, CgroupEvents, Hierarchies, HostFacts, SysfsHost};
use crate::config::{to_caps, ContainerConfig, SeccompMode};
use crate::error::{Error, ErrorKind, Result};
use crate::mounts::{self, RootfsPlan};
use crate::sys::{self, CloneResult};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod child;
use child::{child_entry, ChildError, ChildPlan};

/// How the container's pid 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Termination {
    /// It called exit with this code.
    Exited {
        /// The exit code (0..=255).
        code: i32,
    },
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
    },
}

impl Termination {
    /// The shell convention: the code, or 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            Termination::Exited { code } => code,
            Termination::Signaled { signal } => 128 + signal,
        }
    }

    fn from_wait(status: WaitStatus) -> Option<Termination> {
        match status {
            WaitStatus::Exited(_, code) => Some(Termination::Exited { code }),
            WaitStatus::Signaled(_, sig, _) => Some(Termination::Signaled { signal: sig as i32 }),
            _ => None,
        }
    }

    fn encode(self) -> String {
        match self {
            Termination::Exited { code } => format!("E{code}"),
            Termination::Signaled { signal } => format!("S{signal}"),
        }
    }

    fn decode(s: &str) -> Option<Termination> {
        let (k, v) = s.split_at_checked(1)?;
        let v: i32 = v.trim().parse().ok()?;
        match k {
            "E" => Some(Termination::Exited { code: v }),
            "S" => Some(Termination::Signaled { signal: v }),
            _ => None,
        }
    }
}

/// Why the container ended, most telling first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It exited by itself.
    Exited,
    /// A signal killed it (not the OOM killer, not the timeout).
    Signaled,
    /// The OOM killer killed a process of the container (memory limit).
    OomKilled,
    /// A fork failed on `pids.max` and the container did not succeed.
    PidsLimitHit,
    /// It ran past its timeout and thinbox killed its cgroup.
    TimedOut,
    /// It failed after filling its own root up to its size (`thinbox run
    /// --size`: the thin device, the btrfs qgroup limit, the zfs refquota).
    RootSizeReached,
    /// It failed while the filesystem under its root, shared with other
    /// containers, was full (as the [`RootSpaceProbe`] says).
    RootDeviceFull,
    /// It failed while the thin pool under its root was out of data space,
    /// read-only or failed: with `error_if_no_space` its writes got EIO
    /// while its filesystem still showed free space.
    PoolFull,
}

/// What ran out under a container's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// The container's root holds all its size allows (its own device,
    /// qgroup limit or quota).
    OwnSize,
    /// The root's filesystem, shared with others, has no block left.
    Filesystem,
    /// The thin pool under it is out of data space (or read-only, failed).
    Pool,
}

/// Says whether the storage under a container's root ran out of space:
/// the engine answers for a thin pool (from its status line);
/// [`FilesystemFull`] answers for a plain filesystem.
pub trait RootSpaceProbe {
    /// What is out of space now, if anything.
    fn shortage(&self) -> Result<Option<Shortage>>;
}

/// A [`RootSpaceProbe`] over the filesystem mounted at a path: full when
/// it has no block left for unprivileged users (`statvfs` `f_bavail`).
#[derive(Debug, Clone)]
pub struct FilesystemFull {
    path: PathBuf,
}

impl FilesystemFull {
    /// Probes the filesystem that holds `path` (normally the rootfs).
    pub fn new(path: impl Into<PathBuf>) -> FilesystemFull {
        FilesystemFull { path: path.into() }
    }
}

impl RootSpaceProbe for FilesystemFull {
    fn shortage(&self) -> Result<Option<Shortage>> {
        let st = nix::sys::statvfs::statvfs(&self.path).map_err(|e| {
            Error::new(ErrorKind::Io, "statvfs of the root")
                .with_path(&self.path)
                .with_source(e)
        })?;
        Ok((st.blocks_available() == 0).then_some(Shortage::Filesystem))
    }
}

/// What a finished container reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// Why it ended.
    pub reason: ExitReason,
    /// How its main process ended.
    pub termination: Termination,
    /// `termination` as a shell exit code (128 + signal).
    pub exit_code: i32,
    /// Whether the timeout fired.
    pub timed_out: bool,
    /// Whether the root's storage (its filesystem or the thin pool under
    /// it) was out of space at exit (false when no probe was given).
    pub root_full: bool,
    /// The cgroup's counters at exit.
    pub events: CgroupEvents,
    /// Whether the cgroup was removed afterwards.
    pub cgroup_removed: bool,
}

impl ExitReport {
    fn new(
        termination: Termination,
        timed_out: bool,
        shortage: Option<Shortage>,
        events: CgroupEvents,
        cgroup_removed: bool,
    ) -> ExitReport {
        let root_full = shortage.is_some();
        let failed = termination != Termination::Exited { code: 0 };
        // Kernels before 4.13 do not count OOM kills: a SIGKILL after the
        // memory limit was hit is the OOM killer's (what runc reports too).
        let oom = events.oom_kills > 0
            || (!events.oom_kills_counted
                && events.memory_limit_hits > 0
                && termination == Termination::Signaled { signal: 9 });
        let reason = if oom && failed {
            ExitReason::OomKilled
        } else if shortage == Some(Shortage::Pool) && (failed || timed_out) {
            ExitReason::PoolFull
        } else if shortage == Some(Shortage::OwnSize) && (failed || timed_out) {
            ExitReason::RootSizeReached
        } else if root_full && (failed || timed_out) {
            ExitReason::RootDeviceFull
        } else if events.pids_limit_hits > 0 && (failed || timed_out) {
            ExitReason::PidsLimitHit
        } else if timed_out {
            ExitReason::TimedOut
        } else if matches!(termination, Termination::Signaled { .. }) {
            ExitReason::Signaled
        } else {
            ExitReason::Exited
        };
        ExitReport {
            reason,
            termination,
            exit_code: termination.exit_code(),
            timed_out,
            root_full,
            events,
            cgroup_removed,
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the report serializes")
    }
}

/// The host interfaces a container is started against: where the cgroup
/// hierarchies are and what the host has (CPUs, block devices).
pub struct Runtime {
    hierarchies: Hierarchies,
    host: Box<dyn HostFacts + Send + Sync>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("hierarchies", &self.hierarchies)
            .finish_non_exhaustive()
    }
}

const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

impl Runtime {
    /// The host's hierarchies (from `/proc/self/mountinfo`) and `/sys`.
    pub fn detect() -> Result<Runtime> {
        Ok(Runtime::new(
            Hierarchies::detect()?,
            Box::new(SysfsHost::default()),
        ))
    }

    /// A runtime on given hierarchies and host facts.
    pub fn new(hierarchies: Hierarchies, host: Box<dyn HostFacts + Send + Sync>) -> Runtime {
        Runtime { hierarchies, host }
    }

    /// The hierarchies containers get their cgroups in.
    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// Starts and waits for a container.
    pub fn run(&self, config: &ContainerConfig) -> Result<ExitReport> {
        self.start(config)?.wait()
    }

    /// Starts a container; it runs until [`Container::wait`].
    pub fn start(&self, config: &ContainerConfig) -> Result<Container> {
        config.validate()?;
        let resources = config.resources()?;
        cgroup::validate(&resources, self.host.as_ref())?;
        let cg = self.hierarchies.open(&config.cgroup_path);
        let made = cg
            .create()
            .and_then(|()| cg.restrict_devices(&resources.devices))
            .and_then(|_| cg.apply(&resources));
        if let Err(e) = made {
            let _ = cg.remove();
            return Err(e);
        }
        match self.spawn(config, cg.as_ref()) {
            Ok(Spawned {
                pid,
                status_r,
                terminal,
            }) => {
                let pidfd = match sys::pidfd_open(pid) {
                    Ok(fd) => fd,
                    Err(e) => {
                        teardown(pid, cg.as_ref());
                        return Err(Error::new(
                            ErrorKind::Start,
                            "pidfd_open failed (needs Linux 5.3)",
                        )
                        .with_source(e));
                    }
                };
                Ok(Container {
                    pid,
                    pidfd,
                    status_r,
                    terminal,
                    cgroup: Some(cg),
                    timeout: config.timeout,
                    forward_signals: false,
                    reaped: false,
                })
            }
            Err(e) => {
                let _ = cg.kill_all();
                let _ = cg.remove();
                Err(e)
            }
        }
    }

    fn spawn(&self, config: &ContainerConfig, cg: &dyn Cgroup) -> Result<Spawned> {
        let start_err = |what: &str, e: nix::Error| {
            Error::new(ErrorKind::Start, what.to_owned()).with_source(e)
        };
        let child = ChildPlan::new(config, &self.hierarchies)?;
        let pty = if child.terminal {
            Some(open_pty(config)?)
        } else {
            None
        };
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (go_r, go_w) = nix::unistd::pipe2(cloexec).map_err(|e| start_err("pipe", e))?;
        let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(|e| start_err("pipe", e))?;
        let (status_r, status_w) = nix::unistd::pipe2(cloexec).map_err(|e| start_err("pipe", e))?;
        let mut flags = 0;
        for (t, f) in [
            (LinuxNamespaceType::Mount, libc::CLONE_NEWNS),
            (LinuxNamespaceType::Pid, libc::CLONE_NEWPID),
            (LinuxNamespaceType::Uts, libc::CLONE_NEWUTS),
            (LinuxNamespaceType::Ipc, libc::CLONE_NEWIPC),
            (LinuxNamespaceType::Network, libc::CLONE_NEWNET),
            (LinuxNamespaceType::User, libc::CLONE_NEWUSER),
        ] {
            if config.has_namespace(t) {
                flags |= f;
            }
        }
        // On a pure cgroup2 host the child starts inside its cgroup; without
        // clone3 (before 5.3, or refused by a seccomp profile: ENOSYS, or
        // EPERM from older profiles) or without CLONE_INTO_CGROUP (before
        // 5.7: E2BIG) it is cloned, then moved there. An error that is not
        // about clone3 comes back from the plain clone as well.
        let cgroup_dir = cg
            .clone_into_dir()
            .and_then(|d| std::fs::File::open(d).ok());
        let cloned_into =
            cgroup_dir
                .as_ref()
                .and_then(|dir| match sys::clone_into_cgroup(flags, dir.as_fd()) {
                    Err(
                        nix::Error::ENOSYS
                        | nix::Error::E2BIG
                        | nix::Error::EINVAL
                        | nix::Error::EPERM,
                    ) => None,
                    cloned => Some(cloned),
                });
        let in_cgroup = cloned_into.is_some();
        let cloned = match cloned_into {
            Some(cloned) => cloned,
            None => sys::clone_process(flags),
        };
        let pid = match cloned.map_err(|e| start_err("clone", e))? {
            CloneResult::Child => {
                drop((go_w, err_r, status_r, cgroup_dir));
                let slave = pty.map(|(master, slave)| {
                    drop(master);
                    slave
                });
                child_entry(&child, go_r, err_w, status_w, slave)
            }
            CloneResult::Parent(pid) => pid,
        };
        drop((go_r, err_w, status_w));
        let master = pty.map(|(master, slave)| {
            drop(slave);
            master
        });
        let prepared = (|| {
            if !in_cgroup {
                cg.add_process(pid)?;
            }
            if config.has_namespace(LinuxNamespaceType::User) {
                write_id_maps(pid, config)?;
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            teardown(pid, cg);
            return Err(e);
        }
        let mut go = std::fs::File::from(go_w);
        if let Err(e) = go.write_all(b"g") {
            teardown(pid, cg);
            return Err(Error::new(
                ErrorKind::Start,
                "the container's first process died before setup",
            )
            .with_source(e));
        }
        drop(go);
        let mut msg = String::new();
        let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
        if !msg.is_empty() {
            teardown(pid, cg);
            return Err(ChildError::decode(&msg).into_error());
        }
        Ok(Spawned {
            pid,
            status_r: config.init.then(|| std::fs::File::from(status_r)),
            terminal: master,
        })
    }
}

/// What [`Runtime::spawn`] hands to [`Container`].
struct Spawned {
    pid: Pid,
    status_r: Option<std::fs::File>,
    terminal: Option<OwnedFd>,
}

/// A pseudo-terminal pair (master, slave) sized as `process.consoleSize`,
/// both close-on-exec (the child's stdio copies of the slave are not).
fn open_pty(config: &ContainerConfig) -> Result<(OwnedFd, OwnedFd)> {
    let size = config
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.console_size())
        .map(|b| nix::pty::Winsize {
            ws_row: u16::try_from(b.height()).unwrap_or(u16::MAX),
            ws_col: u16::try_from(b.width()).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
    let pty = nix::pty::openpty(size.as_ref(), None)
        .map_err(|e| Error::new(ErrorKind::Start, "openpty").with_source(e))?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| Error::new(ErrorKind::Start, "set close-on-exec on the pty").with_source(e))?;
    }
    Ok((pty.master, pty.slave))
}

fn teardown(pid: Pid, cg: &dyn Cgroup) {
    let _ = kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
    let _ = cg.kill_all();
}

fn write_id_maps(pid: Pid, config: &ContainerConfig) -> Result<()> {
    let linux = config.spec.linux().as_ref();
    for (file, maps) in [
        ("uid_map", linux.and_then(|l| l.uid_mappings().clone())),
        ("gid_map", linux.and_then(|l| l.gid_mappings().clone())),
    ] {
        let text: String = maps
            .unwrap_or_default()
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, &text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("the kernel refused the {file} {text:?}: check the id ranges"),
            )
            .with_path(&path)
            .with_source(e)
        })?;
    }
    Ok(())
}

/// A running container.
#[derive(Debug)]
pub struct Container {
    pid: Pid,
    pidfd: OwnedFd,
    status_r: Option<std::fs::File>,
    terminal: Option<OwnedFd>,
    cgroup: Option<Box<dyn Cgroup>>,
    timeout: Option<Duration>,
    forward_signals: bool,
    reaped: bool,
}

impl Container {
    /// The pid of the container's pid 1, in the caller's pid namespace.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The cgroup directories (one per hierarchy).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map(|c| c.dirs()).unwrap_or_default()
    }

    /// Takes the master end of the container's pseudo-terminal (when the
    /// config asked for `process.terminal`): read the process's output from
    /// it, write its input to it. Reads fail with EIO once the process and
    /// everything holding the terminal have exited.
    pub fn take_terminal(&mut self) -> Option<OwnedFd> {
        self.terminal.take()
    }

    /// Sends `signal` to pid 1 of the container.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.pid, signal).map_err(|e| {
            Error::new(ErrorKind::Wait, format!("cannot send {signal}")).with_source(e)
        })
    }

    /// Kills every process of the container (cgroup.kill / freeze + kill).
    pub fn kill_all(&self) -> Result<()> {
        match &self.cgroup {
            Some(c) => c.kill_all(),
            None => Ok(()),
        }
    }

    /// While waiting, forward SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 and
    /// SIGWINCH that the calling thread receives to the container. The
    /// signals are blocked in the calling thread during the wait.
    pub fn forward_signals(mut self, on: bool) -> Container {
        self.forward_signals = on;
        self
    }

    /// Polls the pidfd (and the signalfd, forwarding what it reads) until
    /// pid 1 exits or the deadline passes (then kills the cgroup). True
    /// when the deadline passed.
    fn wait_for_exit(
        &self,
        deadline: Option<Instant>,
        signal_fd: Option<&nix::sys::signalfd::SignalFd>,
    ) -> Result<bool> {
        let mut timed_out = false;
        loop {
            let remaining = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        timed_out = true;
                        self.kill_all()?;
                        break;
                    }
                    nix::poll::PollTimeout::try_from(left.max(Duration::from_millis(1)))
                        .unwrap_or(nix::poll::PollTimeout::MAX)
                }
                None => nix::poll::PollTimeout::NONE,
            };
            let mut fds = vec![nix::poll::PollFd::new(
                self.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if let Some(sfd) = signal_fd {
                fds.push(nix::poll::PollFd::new(
                    sfd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
            }
            match nix::poll::poll(&mut fds, remaining) {
                Ok(0) | Err(nix::Error::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(Error::new(ErrorKind::Wait, "poll").with_source(e)),
            }
            let exited = fds[0].any().unwrap_or(false);
            let signalled = fds.get(1).and_then(|f| f.any()).unwrap_or(false);
            if signalled {
                if let Some(sfd) = signal_fd {
                    if let Ok(Some(info)) = sfd.read_signal() {
                        if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                            let _ = kill(self.pid, sig);
                        }
                    }
                }
            }
            if exited {
                break;
            }
        }
        Ok(timed_out)
    }

    /// Waits for the container to end (killing its cgroup at the timeout),
    /// removes its cgroup and reports why it ended.
    pub fn wait(self) -> Result<ExitReport> {
        self.wait_with_probe(None)
    }

    /// [`Container::wait`], asking `probe` whether the root ran out of
    /// space so that a failure from a full disk (or a thin pool out of data
    /// space, where writes may hang until the timeout) is reported as such.
    pub fn wait_with_probe(mut self, probe: Option<&dyn RootSpaceProbe>) -> Result<ExitReport> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let signal_fd = if self.forward_signals {
            let mut mask = SigSet::empty();
            for s in FORWARDED {
                mask.add(s);
            }
            let mut old = SigSet::empty();
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old))
                .map_err(|e| Error::new(ErrorKind::Wait, "cannot block signals").with_source(e))?;
            let fd = nix::sys::signalfd::SignalFd::new(&mask)
                .map_err(|e| Error::new(ErrorKind::Wait, "signalfd").with_source(e))?;
            Some((fd, mask, old))
        } else {
            None
        };
        let waited = self.wait_for_exit(deadline, signal_fd.as_ref().map(|(fd, _, _)| fd));
        if let Some((_, _, old)) = &signal_fd {
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old), None);
        }
        let timed_out = waited?;
        let status = waitpid(self.pid, None)
            .map_err(|e| Error::new(ErrorKind::Wait, "waitpid").with_source(e))?;
        let mut termination = Termination::from_wait(status).ok_or_else(|| {
            Error::new(
                ErrorKind::Wait,
                format!("unexpected wait status {status:?}"),
            )
        })?;
        if let Some(mut r) = self.status_r.take() {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            if let Some(t) = Termination::decode(&s) {
                termination = t;
            }
        }
        self.reaped = true;
        let cg = self
            .cgroup
            .take()
            .expect("a running container has its cgroup");
        // Read the counters, then always kill and remove, reporting the first error.
        let events = cg.events();
        let killed = cg.kill_all();
        let removed = cg.remove();
        let events = events?;
        killed?;
        removed?;
        let removed = cg.dirs().iter().all(|d| !d.exists());
        let shortage = match probe {
            Some(p) => p.shortage()?,
            None => None,
        };
        Ok(ExitReport::new(
            termination,
            timed_out,
            shortage,
            events,
            removed,
        ))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.kill_all();
            if !self.reaped {
                let _ = kill(self.pid, Signal::SIGKILL);
                let _ = waitpid(self.pid, Some(WaitPidFlag::empty()));
            }
            let _ = cg.remove();
        }
    }
}

#[cfg(test)]
mod tests;
