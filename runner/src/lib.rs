//! Namespaced, cgroup-limited containers whose root is a thinbox snapshot.
//!
//! # Lifecycle
//!
//! 1. Describe the container: [`ContainerConfig::builder`] (Rust callers) or
//!    [`ContainerConfig::from_bundle`] (an OCI bundle's `config.json`). The
//!    root is a directory: the mounted snapshot. The block device behind it
//!    ([`cgroup::DevNum`]) gets the I/O throttles.
//! 2. [`Runtime::detect`] finds the cgroup layout (v1, v2 or hybrid) in
//!    `/proc/self/mountinfo`; [`Runtime::start`] checks the limits against
//!    the host (CPUs that exist, devices that exist) before anything starts,
//!    makes the cgroup, and clones the container's first process into new
//!    namespaces ([`container`]).
//! 3. [`Container::wait`] returns an [`ExitReport`]: exited, signalled,
//!    OOM-killed, pids limit hit, root device full (with a
//!    [`RootSpaceProbe`]) or timed out, with the exit code (128 +
//!    signal) and the cgroup's counters; the cgroup is gone afterwards.
//!
//! A crash of the runner kills its containers (their first process has
//! the parent-death signal SIGKILL); [`cgroup::Hierarchies::remove_stale`]
//! removes the empty cgroups left behind.
//!
//! # Example
//!
//! ```no_run
//! use runner::cgroup::{Bytes, DevNum, ThrottleKind};
//! use runner::{ContainerConfig, Runtime};
//!
//! let config = ContainerConfig::builder("/var/lib/thinbox/mnt/web-1")
//!     .args(["/bin/sh", "-c", "exec my-server"])
//!     .memory_limit(Bytes::mib(256))
//!     .pids_limit(128)
//!     .cpu_quota(50_000, 100_000)
//!     .root_device(DevNum::new(253, 4))
//!     .root_throttle(ThrottleKind::WriteBps, 10 << 20)
//!     .build()?;
//! let report = Runtime::detect()?.run(&config)?;
//! println!("{}", report.to_json()); // {"reason":"oom_killed","exit_code":137,...}
//! # Ok::<(), runner::Error>(())
//! ```
//!
//! # Security defaults
//!
//! runc's: the capabilities `CAP_AUDIT_WRITE`, `CAP_KILL` and
//! `CAP_NET_BIND_SERVICE` only; `no_new_privs`; a seccomp filter denying
//! what Docker's default profile denies ([`seccomp`]); masked and read-only
//! `/proc` and `/sys` paths; a minimal `/dev` with no host device nodes, and
//! a device filter (v1 devices controller, or an eBPF program on v2) that
//! allows only those nodes; private mount propagation; descriptors the
//! caller leaked are closed before exec. A user namespace with uid/gid maps
//! on request.
//!
//! # Not supported (refused with a clear error)
//!
//! OCI hooks, `linux.devices` (extra device nodes), joining existing
//! namespaces (`path`), the time namespace, shared root propagation.
//!
//! # Modules
//!
//! - [`cgroup`]: one [`cgroup::Cgroup`] trait over v1, v2 and hybrid, and
//!   the cgroupfs file formats as types;
//! - [`config`]: the OCI runtime-spec model with runc's defaults;
//! - [`mounts`]: the root filesystem inside the mount namespace;
//! - [`seccomp`]: the default seccomp filter;
//! - [`container`]: start, wait, exit reasons, pseudo-terminals, signal
//!   forwarding, thinbox's optional init (zombie reaping).
//!
//! # Threads
//!
//! The container's first process is a fork-like `clone` of the caller. Call
//! [`Runtime::start`] from a process where no other thread holds the
//! allocator's or stdio's locks at that moment (a CLI, a test process, or a
//! dedicated helper process in a threaded daemon).
//!
//! Needs Linux 5.3 (pidfd) and root; cgroup2 `cgroup.kill` is used from 5.14,
//! `clone3` with `CLONE_INTO_CGROUP` (pure v2) from 5.7.
#![deny(unsafe_code)]

pub mod cgroup;
pub mod config;
pub mod container;
pub mod error;
pub mod mounts;
pub mod seccomp;
// The one module whose `unsafe` blocks the crate allows, each with a SAFETY comment.
#[allow(unsafe_code)]
mod sys;

pub use config::{ContainerBuilder, ContainerConfig, SeccompMode};
pub use container::{
    Container, ExitReason, ExitReport, FilesystemFull, RootSpaceProbe, Runtime, Shortage,
    Termination,
};
pub use error::{Error, ErrorKind, Result};
