//! Every `unsafe` system call of the crate, each behind a safe function whose
//! doc says what the caller must know.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// What [`clone_process`] returns in each process.
#[derive(Debug)]
pub enum CloneResult {
    /// In the parent: the child's pid (in the parent's pid namespace).
    Parent(Pid),
    /// In the child.
    Child,
}

/// `clone(2)` with fork semantics (a copy of the address space, SIGCHLD on
/// exit) plus the namespace `flags` (`CLONE_NEW*`).
///
/// The child runs on a copy of the calling process: only the calling thread
/// exists there, so the child must not wait for locks other threads held
/// (the crate calls this from a process whose other threads, if any, do not
/// hold the allocator or stdio locks across the call; see the crate docs).
pub fn clone_process(flags: libc::c_int) -> nix::Result<CloneResult> {
    let flags = libc::c_ulong::try_from(flags | libc::SIGCHLD).map_err(|_| Errno::EINVAL)?;
    // SAFETY: without CLONE_VM (never in `flags`: callers pass only CLONE_NEW*
    // bits) and with a null stack pointer the kernel gives the child a copy of
    // the parent's address space and the current stack, exactly as fork(2)
    // does, so both processes return here with valid memory; the parent and
    // child tid pointers are null and unused without CLONE_*TID flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(Pid::from_raw(
            i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?,
        ))),
    }
}

/// `struct clone_args` of `clone3(2)` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`,
/// Linux 5.7): every field a 64-bit word, in the kernel's order.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7): start the child in the cgroup2
/// directory named by `clone_args.cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// [`clone_process`], with the child started inside the cgroup2 directory
/// open as `cgroup` (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7), so it
/// never runs in the caller's cgroup and nobody writes its pid into
/// `cgroup.procs` (a write that waits for an RCU grace period). Fails with
/// ENOSYS before 5.3 and E2BIG before 5.7 (callers fall back to
/// [`clone_process`] and `cgroup.procs`); same caveat about other threads.
pub fn clone_into_cgroup(
    flags: libc::c_int,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<CloneResult> {
    use std::os::fd::AsRawFd;
    let ns = u64::try_from(flags).map_err(|_| Errno::EINVAL)?;
    let mut args = CloneArgs {
        flags: ns | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: u64::try_from(cgroup.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        ..CloneArgs::default()
    };
    // SAFETY: as in clone_process: no CLONE_VM (callers pass only CLONE_NEW*
    // bits) and a zero stack and stack size give fork(2) semantics, so both
    // processes return here on valid memory; `args` is a fully initialised
    // clone_args of the size passed, living across the call, with no
    // pointer fields in use (pidfd, tids, set_tid are zero) and `cgroup` an
    // open descriptor borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent(Pid::from_raw(
            i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?,
        ))),
    }
}

/// `fork(2)`; same caveat as [`clone_process`] about other threads.
pub fn fork_process() -> nix::Result<CloneResult> {
    // SAFETY: the child only runs async-signal-safe work plus allocation in a
    // process that has a single thread at this point (the container's init,
    // itself a fresh clone of one thread).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(CloneResult::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(CloneResult::Child),
    }
}

/// `pidfd_open(2)` (Linux 5.3): a file descriptor that becomes readable when
/// the process exits.
pub fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new file
    // descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0 as libc::c_uint) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned `fd` as a new descriptor that nothing
    // else owns, so taking ownership closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `IFF_UP` on the interface `name` (the loopback in a new network
/// namespace).
pub fn interface_up(name: &str) -> nix::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(Errno::ENAMETOOLONG);
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated ifr_name (checked to fit
    // IFNAMSIZ above) and writes ifr_flags inside `req`, which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds ifru_flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads ifr_name and ifr_flags from `req`, valid as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `_exit(2)`: ends the process at once, without running destructors,
/// atexit handlers or stdio flushes (which belong to the parent's copy of
/// the address space in a cloned child).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an int and never returns; it touches no memory of
    // the process, so it is sound in any state.
    unsafe { libc::_exit(code) }
}

/// Makes the terminal `fd` the controlling terminal of the calling process,
/// which must be a session leader without one (call `setsid` first).
pub fn set_controlling_terminal(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal the terminal
    // from another session) and no pointer; `fd` is a borrowed open descriptor.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0 as libc::c_int) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Sets `FD_CLOEXEC` on descriptor number `fd`, which may or may not be
/// open (EBADF then).
pub fn set_cloexec(fd: std::os::fd::RawFd) -> nix::Result<()> {
    // SAFETY: F_SETFD takes an int flag and no pointer; on a number that is
    // not open the kernel returns EBADF and changes nothing.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program of raw instructions
/// (each `u64` one `struct bpf_insn`, little-endian layout); on a verifier
/// refusal the verifier's log is returned in the error.
pub fn bpf_load_device_program(insns: &[u64]) -> Result<OwnedFd, (Errno, String)> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    let license = b"Apache-2.0\0";
    let mut log = vec![0u8; 1 << 16];
    let load = |with_log: bool, log: &mut [u8]| -> libc::c_long {
        // union bpf_attr, BPF_PROG_LOAD member: prog_type u32 @0, insn_cnt
        // u32 @4, insns u64 @8, license u64 @16, log_level u32 @24,
        // log_size u32 @28, log_buf u64 @32; the rest zero.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
        attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        if with_log {
            attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
            attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
            attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
        }
        // SAFETY: `attr` is a fully initialised 128-byte bpf_attr whose
        // pointers (instructions, license, log buffer with its true length)
        // point into memory that outlives the call; the kernel reads at most
        // `size` bytes of attr and writes at most log_size bytes of log.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                attr.as_mut_ptr(),
                attr.len() as libc::c_uint,
            )
        }
    };
    let mut fd = load(false, &mut log);
    if fd < 0 {
        let first = Errno::last();
        fd = load(true, &mut log);
        if fd < 0 {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            return Err((first, String::from_utf8_lossy(&log[..end]).into_owned()));
        }
    }
    let fd = i32::try_from(fd).map_err(|_| (Errno::EBADF, String::new()))?;
    // SAFETY: the kernel returned `fd` as a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches a loaded device program to the cgroup whose directory is open
/// as `cgroup` (`BPF_PROG_ATTACH`, `BPF_CGROUP_DEVICE`); the cgroup keeps
/// the program until it is removed.
pub fn bpf_attach_device_program(
    cgroup: std::os::fd::BorrowedFd<'_>,
    program: std::os::fd::BorrowedFd<'_>,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_CGROUP_DEVICE: u32 = 6;
    // BPF_PROG_ATTACH member: target_fd u32 @0, attach_bpf_fd u32 @4,
    // attach_type u32 @8, attach_flags u32 @12.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    // SAFETY: `attr` is an initialised bpf_attr naming two open descriptors;
    // the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
