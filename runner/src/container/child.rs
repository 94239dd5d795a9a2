//! The container's side of a start: what the child does between clone and
//! execve (namespaces joined, id maps awaited, mounts and pivot_root,
//! rlimits, capabilities, no_new_privs, seccomp, the executable found), how
//! its errors travel back to the parent, and the init that reaps zombies.

use super::*;

/// An error in the child, sent back over the error pipe.
#[derive(Debug)]
pub(super) struct ChildError {
    not_found: bool,
    message: String,
}

impl ChildError {
    pub(super) fn encode(e: &Error) -> String {
        let tag = if e.kind() == ErrorKind::ExecutableNotFound {
            "N"
        } else {
            "S"
        };
        format!("{tag}{e}")
    }

    pub(super) fn decode(s: &str) -> ChildError {
        let (tag, message) = s.split_at_checked(1).unwrap_or(("S", s));
        ChildError {
            not_found: tag == "N",
            message: message.to_owned(),
        }
    }

    pub(super) fn into_error(self) -> Error {
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
pub(super) struct ChildPlan<'a> {
    config: &'a ContainerConfig,
    hierarchies: &'a Hierarchies,
    args: Vec<CString>,
    env: Vec<CString>,
    path_env: String,
    filters: Vec<seccompiler::BpfProgram>,
    propagation: nix::mount::MsFlags,
    pub(super) terminal: bool,
}

impl<'a> ChildPlan<'a> {
    pub(super) fn new(
        config: &'a ContainerConfig,
        hierarchies: &'a Hierarchies,
    ) -> Result<ChildPlan<'a>> {
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
pub(super) fn child_entry(
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

pub(super) fn step(what: &'static str) -> impl Fn(nix::Error) -> Error {
    move |e| Error::new(ErrorKind::Start, what).with_source(e)
}

pub(super) fn child_setup(
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

pub(super) fn rlimit_resource(t: PosixRlimitType) -> nix::sys::resource::Resource {
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
pub(super) fn find_executable(arg0: &CString, path_env: &str) -> Result<CString> {
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
pub(super) fn finish_and_exec(plan: &ChildPlan<'_>, exe: &CString) -> Result<Infallible> {
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
pub(super) fn close_inherited_fds() -> Result<()> {
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
pub(super) fn run_init(
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
