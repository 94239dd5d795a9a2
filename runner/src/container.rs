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

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, Cgroup, CgroupEvents, Hierarchies, HostFacts, SysfsHost};
use crate::config::{to_caps, ContainerConfig, SeccompMode};
use crate::error::{Error, ErrorKind, Result};
use crate::mounts::{self, RootfsPlan};
use crate::sys::{self, CloneResult};

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
    /// It failed while the device under its root was out of space (the
    /// filesystem full, or the thin pool out of data space, as the
    /// [`RootSpaceProbe`] says).
    RootDeviceFull,
}

/// Says whether the storage under a container's root ran out of space:
/// the snapshotter answers for a thin pool (its out-of-data-space mode);
/// [`FilesystemFull`] answers for a plain filesystem.
pub trait RootSpaceProbe {
    /// Whether the root's storage is out of space now.
    fn out_of_space(&self) -> Result<bool>;
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
    fn out_of_space(&self) -> Result<bool> {
        let st = nix::sys::statvfs::statvfs(&self.path).map_err(|e| {
            Error::new(ErrorKind::Io, "statvfs of the root")
                .with_path(&self.path)
                .with_source(e)
        })?;
        Ok(st.blocks_available() == 0)
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
    /// Whether the root's storage was out of space at exit (false when no
    /// probe was given).
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
        root_full: bool,
        events: CgroupEvents,
        cgroup_removed: bool,
    ) -> ExitReport {
        let failed = termination != Termination::Exited { code: 0 };
        // Kernels before 4.13 do not count OOM kills: a SIGKILL after the
        // memory limit was hit is the OOM killer's (what runc reports too).
        let oom = events.oom_kills > 0
            || (!events.oom_kills_counted
                && events.memory_limit_hits > 0
                && termination == Termination::Signaled { signal: 9 });
        let reason = if oom && failed {
            ExitReason::OomKilled
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
        let root_full = match probe {
            Some(p) => p.out_of_space()?,
            None => false,
        };
        Ok(ExitReport::new(
            termination,
            timed_out,
            root_full,
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

/// An error in the child, sent back over the error pipe.
#[derive(Debug)]
struct ChildError {
    not_found: bool,
    message: String,
}

impl ChildError {
    fn encode(e: &Error) -> String {
        let tag = if e.kind() == ErrorKind::ExecutableNotFound {
            "N"
        } else {
            "S"
        };
        format!("{tag}{e}")
    }

    fn decode(s: &str) -> ChildError {
        let (tag, message) = s.split_at_checked(1).unwrap_or(("S", s));
        ChildError {
            not_found: tag == "N",
            message: message.to_owned(),
        }
    }

    fn into_error(self) -> Error {
        let kind = if self.not_found {
            ErrorKind::ExecutableNotFound
        } else {
            ErrorKind::Start
        };
        Error::new(
            kind,
            format!(
                "the container failed to start and was torn down: {}",
                self.message
            ),
        )
    }
}

/// Everything the child needs, prepared (and allocated) before the clone.
struct ChildPlan<'a> {
    config: &'a ContainerConfig,
    hierarchies: &'a Hierarchies,
    args: Vec<CString>,
    env: Vec<CString>,
    path_env: String,
    filters: Vec<seccompiler::BpfProgram>,
    propagation: nix::mount::MsFlags,
    terminal: bool,
}

impl<'a> ChildPlan<'a> {
    fn new(config: &'a ContainerConfig, hierarchies: &'a Hierarchies) -> Result<ChildPlan<'a>> {
        let cstr = |s: &str| {
            CString::new(s).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("{s:?} contains a NUL byte"),
                )
            })
        };
        let args = config
            .args()
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<_>>()?;
        let env_list = config
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default();
        let env = env_list.iter().map(|e| cstr(e)).collect::<Result<_>>()?;
        let path_env = env_list
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .to_owned();
        let filters = match config.seccomp {
            SeccompMode::Default => crate::seccomp::default_filters()?,
            SeccompMode::Unconfined => vec![],
        };
        let propagation = mounts::root_propagation(
            config
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.rootfs_propagation().as_deref()),
        )?;
        let terminal = config
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        Ok(ChildPlan {
            terminal,
            config,
            hierarchies,
            args,
            env,
            path_env,
            filters,
            propagation,
        })
    }
}

/// The child's side: never returns.
fn child_entry(
    plan: &ChildPlan<'_>,
    go_r: OwnedFd,
    err_w: OwnedFd,
    status_w: OwnedFd,
    pty_slave: Option<OwnedFd>,
) -> ! {
    let mut err_w = Some(std::fs::File::from(err_w));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        child_setup(plan, go_r, status_w, &mut err_w, pty_slave)
    }));
    let msg = match outcome {
        Ok(Err(e)) => ChildError::encode(&e),
        Ok(Ok(never)) => match never {},
        Err(_) => "Sa panic in the container setup".to_owned(),
    };
    if let Some(mut w) = err_w {
        let _ = w.write_all(msg.as_bytes());
    }
    sys::exit_now(127)
}

fn step(what: &'static str) -> impl Fn(nix::Error) -> Error {
    move |e| Error::new(ErrorKind::Start, what).with_source(e)
}

fn child_setup(
    plan: &ChildPlan<'_>,
    go_r: OwnedFd,
    status_w: OwnedFd,
    err_w: &mut Option<std::fs::File>,
    pty_slave: Option<OwnedFd>,
) -> Result<Infallible> {
    let config = plan.config;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("set the parent-death signal"))?;
    let mut byte = [0u8; 1];
    let n = std::fs::File::from(go_r)
        .read(&mut byte)
        .map_err(|e| Error::new(ErrorKind::Start, "wait for the parent").with_source(e))?;
    if n == 0 {
        sys::exit_now(1);
    }
    if let Some(slave) = pty_slave {
        // A new session whose controlling terminal is the pty, on stdio.
        nix::unistd::setsid().map_err(step("setsid"))?;
        sys::set_controlling_terminal(slave.as_fd())
            .map_err(step("make the pty the controlling terminal"))?;
        nix::unistd::dup2_stdin(&slave).map_err(step("dup the pty to stdin"))?;
        nix::unistd::dup2_stdout(&slave).map_err(step("dup the pty to stdout"))?;
        nix::unistd::dup2_stderr(&slave).map_err(step("dup the pty to stderr"))?;
    }
    let userns = config.has_namespace(LinuxNamespaceType::User);
    if userns {
        // Become the namespace's root (mapped by the parent) so files made
        // from here on have an owner the namespace can name.
        let root_gid = Gid::from_raw(0);
        let root_uid = Uid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid)
            .map_err(step("become gid 0 in the user namespace"))?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid)
            .map_err(step("become uid 0 in the user namespace"))?;
    }
    let cgroupns = config.has_namespace(LinuxNamespaceType::Cgroup);
    if cgroupns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(step("unshare the cgroup namespace"))?;
    }
    if config.has_namespace(LinuxNamespaceType::Uts) {
        if let Some(h) = config.spec.hostname() {
            nix::unistd::sethostname(h).map_err(step("sethostname"))?;
        }
    }
    if config.has_namespace(LinuxNamespaceType::Network) {
        sys::interface_up("lo").map_err(step("bring the loopback interface up"))?;
    }
    let umask = config
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.user().umask())
        .unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    let empty = vec![];
    let rootfs_plan = RootfsPlan {
        rootfs: &config.rootfs,
        bundle: config.bundle.as_deref(),
        mounts: config.spec.mounts().as_deref().unwrap_or(&empty),
        propagation: plan.propagation,
        userns,
        hierarchies: plan.hierarchies,
        cgroupns,
        cgroup_path: config.cgroup_path.as_path(),
    };
    let ops = mounts::KernelMounts;
    mounts::setup_rootfs(&rootfs_plan, &ops)?;
    let linux = config.spec.linux().as_ref();
    // Sysctls first: /proc/sys becomes read-only below.
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        for (key, value) in sysctl {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|e| {
                Error::new(ErrorKind::Start, format!("set sysctl {key}={value}"))
                    .with_path(&path)
                    .with_source(e)
            })?;
        }
    }
    let empty_paths = vec![];
    mounts::mask_paths(
        linux
            .and_then(|l| l.masked_paths().as_ref())
            .unwrap_or(&empty_paths),
        &ops,
    )?;
    mounts::readonly_paths(
        linux
            .and_then(|l| l.readonly_paths().as_ref())
            .unwrap_or(&empty_paths),
        &ops,
    )?;
    if config.spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mounts::remount_readonly(Path::new("/"), false, &ops)?;
    }
    let process = config
        .spec
        .process()
        .as_ref()
        .expect("validated: a process");
    nix::unistd::chdir(process.cwd()).map_err(|e| {
        Error::new(ErrorKind::Start, "chdir to the working directory")
            .with_path(process.cwd())
            .with_source(e)
    })?;
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
            Error::new(ErrorKind::Start, format!("set oom_score_adj {adj}")).with_source(e)
        })?;
    }
    for r in process.rlimits().iter().flatten() {
        nix::sys::resource::setrlimit(rlimit_resource(r.typ()), r.soft(), r.hard())
            .map_err(step("setrlimit"))?;
    }
    let exe = find_executable(&plan.args[0], &plan.path_env)?;
    if config.init {
        run_init(plan, &exe, status_w, err_w)
    } else {
        drop(status_w);
        finish_and_exec(plan, &exe)
    }
}

fn rlimit_resource(t: PosixRlimitType) -> nix::sys::resource::Resource {
    use nix::sys::resource::Resource as R;
    match t {
        PosixRlimitType::RlimitCpu => R::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => R::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => R::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => R::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => R::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => R::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => R::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => R::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => R::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => R::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => R::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => R::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => R::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => R::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => R::RLIMIT_RTTIME,
    }
}

/// Finds the program the way execvp would, in the new root.
fn find_executable(arg0: &CString, path_env: &str) -> Result<CString> {
    let name = arg0.to_string_lossy().into_owned();
    let is_exec = |p: &Path| {
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
            && std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
    };
    if name.contains('/') {
        if is_exec(Path::new(&name)) {
            return Ok(arg0.clone());
        }
    } else {
        for dir in path_env.split(':').filter(|d| !d.is_empty()) {
            let candidate = Path::new(dir).join(&name);
            if is_exec(&candidate) {
                return CString::new(candidate.as_os_str().as_encoded_bytes())
                    .map_err(|_| Error::new(ErrorKind::InvalidConfig, "NUL in PATH"));
            }
        }
    }
    Err(Error::new(
        ErrorKind::ExecutableNotFound,
        format!(
            "executable {name:?} not found in the container (PATH={path_env}): \
             check process.args[0] and the rootfs"
        ),
    ))
}

/// Drops to the configured user, capabilities, no_new_privs and seccomp, then execs.
fn finish_and_exec(plan: &ChildPlan<'_>, exe: &CString) -> Result<Infallible> {
    use caps::CapSet;
    let process = plan
        .config
        .spec
        .process()
        .as_ref()
        .expect("validated: a process");
    let user = process.user();
    let nnp = process.no_new_privileges().unwrap_or(false);
    let caps_of = |set: Option<&oci_spec::runtime::Capabilities>| -> Result<caps::CapsHashSet> {
        set.into_iter().flatten().map(|c| to_caps(*c)).collect()
    };
    let (bounding, effective, permitted, inheritable, ambient) = match process.capabilities() {
        Some(c) => (
            caps_of(c.bounding().as_ref())?,
            caps_of(c.effective().as_ref())?,
            caps_of(c.permitted().as_ref())?,
            caps_of(c.inheritable().as_ref())?,
            caps_of(c.ambient().as_ref())?,
        ),
        None => Default::default(),
    };
    let caps_err = |what: &'static str| {
        move |e: caps::errors::CapsError| {
            Error::new(ErrorKind::Start, what).with_source(std::io::Error::other(e.to_string()))
        }
    };
    if !nnp && !plan.filters.is_empty() {
        // Without no_new_privs the filter needs CAP_SYS_ADMIN: install it first.
        crate::seccomp::apply(&plan.filters)?;
    }
    for cap in caps::all() {
        if !bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("drop a bounding capability"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(step("keep capabilities across setuid"))?;
    let mut groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    groups.dedup();
    nix::unistd::setgroups(&groups).map_err(step("setgroups"))?;
    let gid = Gid::from_raw(user.gid());
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(step("setresuid"))?;
    // Effective must stay a subset of permitted at every step: shrink it first.
    caps::set(None, CapSet::Effective, &effective)
        .map_err(caps_err("set effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(caps_err("set permitted capabilities"))?;
    caps::set(None, CapSet::Inheritable, &inheritable)
        .map_err(caps_err("set inheritable capabilities"))?;
    // The kernel raises an ambient capability only if it is permitted and
    // inheritable; like runc, ambient entries without both are left out
    // (`runc spec` lists ambient capabilities but no inheritable ones).
    let ambient: caps::CapsHashSet = ambient
        .into_iter()
        .filter(|c| permitted.contains(c) && inheritable.contains(c))
        .collect();
    caps::set(None, CapSet::Ambient, &ambient).map_err(caps_err("set ambient capabilities"))?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(step("set no_new_privs"))?;
        crate::seccomp::apply(&plan.filters)?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(step("reset the signal mask"))?;
    close_inherited_fds()?;
    let e = nix::unistd::execve(exe, &plan.args, &plan.env).unwrap_err();
    Err(Error::new(
        ErrorKind::Start,
        format!("execve {}", exe.to_string_lossy()),
    )
    .with_source(e))
}

/// Marks every descriptor above stderr close-on-exec, so nothing the
/// caller left open (sockets, files, other containers' pipes) leaks into
/// the container.
fn close_inherited_fds() -> Result<()> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| {
        Error::new(ErrorKind::Start, "list open descriptors")
            .with_path("/proc/self/fd")
            .with_source(e)
    })?;
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // The read_dir handle itself is closed by now: EBADF is expected.
        let _ = sys::set_cloexec(fd);
    }
    Ok(())
}

/// thinbox's init: forks the process, forwards signals to it, reaps every
/// orphan, and exits when the process does, reporting its status.
fn run_init(
    plan: &ChildPlan<'_>,
    exe: &CString,
    status_w: OwnedFd,
    err_w: &mut Option<std::fs::File>,
) -> Result<Infallible> {
    let all = SigSet::all();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)
        .map_err(step("block signals in init"))?;
    let main = match sys::fork_process().map_err(step("fork the process under init"))? {
        CloneResult::Child => {
            drop(status_w);
            return finish_and_exec(plan, exe);
        }
        CloneResult::Parent(pid) => pid,
    };
    // The error pipe must reach EOF when the process execs: init lets go of it.
    drop(err_w.take());
    let mut status_w = std::fs::File::from(status_w);
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(main, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(main) {
                        if let Some(t) = Termination::from_wait(status) {
                            let _ = status_w.write_all(t.encode().as_bytes());
                            let code = match t {
                                Termination::Exited { code } => code,
                                Termination::Signaled { signal } => 128 + signal,
                            };
                            sys::exit_now(code);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(t: Termination, timed_out: bool, full: bool, ev: CgroupEvents) -> ExitReason {
        ExitReport::new(t, timed_out, full, ev, true).reason
    }

    #[test]
    fn the_most_telling_reason_wins() {
        let ok = Termination::Exited { code: 0 };
        let failed = Termination::Exited { code: 1 };
        let killed = Termination::Signaled { signal: 9 };
        let none = CgroupEvents::default();
        let oom = CgroupEvents {
            oom_kills: 1,
            ..none
        };
        let pids = CgroupEvents {
            pids_limit_hits: 3,
            ..none
        };
        assert_eq!(report(ok, false, false, none), ExitReason::Exited);
        assert_eq!(report(failed, false, false, none), ExitReason::Exited);
        assert_eq!(report(killed, false, false, none), ExitReason::Signaled);
        assert_eq!(report(killed, false, false, oom), ExitReason::OomKilled);
        // A child was OOM-killed but the container still succeeded: it exited.
        assert_eq!(report(ok, false, false, oom), ExitReason::Exited);
        assert_eq!(report(failed, false, false, pids), ExitReason::PidsLimitHit);
        assert_eq!(report(killed, true, false, pids), ExitReason::PidsLimitHit);
        assert_eq!(report(killed, true, false, none), ExitReason::TimedOut);
        assert_eq!(
            report(failed, false, true, pids),
            ExitReason::RootDeviceFull
        );
        assert_eq!(report(killed, true, true, none), ExitReason::RootDeviceFull);
        assert_eq!(report(ok, false, true, none), ExitReason::Exited);
        // Old kernels: no OOM counter; SIGKILL after hitting the limit is OOM.
        let old_kernel = CgroupEvents {
            memory_limit_hits: 12,
            ..none
        };
        assert_eq!(
            report(killed, false, false, old_kernel),
            ExitReason::OomKilled
        );
        let counted = CgroupEvents {
            oom_kills_counted: true,
            ..old_kernel
        };
        assert_eq!(report(killed, false, false, counted), ExitReason::Signaled);
    }

    #[test]
    fn reports_serialize_with_snake_case_reasons() {
        let r = ExitReport::new(
            Termination::Signaled { signal: 9 },
            false,
            false,
            CgroupEvents {
                oom_kills: 1,
                memory_limit_hits: 5,
                pids_limit_hits: 0,
                oom_kills_counted: true,
            },
            true,
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["reason"], "oom_killed");
        assert_eq!(v["exit_code"], 137);
        assert_eq!(v["termination"]["kind"], "signaled");
        assert_eq!(v["events"]["oom_kills"], 1);
        let back: ExitReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn init_status_round_trips() {
        for t in [
            Termination::Exited { code: 3 },
            Termination::Signaled { signal: 15 },
        ] {
            assert_eq!(Termination::decode(&t.encode()), Some(t));
        }
        assert_eq!(Termination::decode("X1"), None);
        assert_eq!(Termination::decode(""), None);
    }

    #[test]
    fn child_errors_keep_their_kind() {
        let e = Error::new(ErrorKind::ExecutableNotFound, "executable \"x\" not found");
        let back = ChildError::decode(&ChildError::encode(&e)).into_error();
        assert_eq!(back.kind(), ErrorKind::ExecutableNotFound);
        assert!(back.to_string().contains("not found"));
        let e = Error::new(ErrorKind::Start, "pivot_root");
        assert_eq!(
            ChildError::decode(&ChildError::encode(&e))
                .into_error()
                .kind(),
            ErrorKind::Start
        );
    }
}
