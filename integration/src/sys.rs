//! The one raw hook the harness needs that std and nix do not wrap safely.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

/// Makes the child get SIGKILL when the thread that spawned it dies, so that
/// a killed test run never leaves a QEMU (or a test child) running.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child between fork and exec; it
    // only calls prctl(2) (async-signal-safe), allocates nothing and touches no
    // lock or memory shared with the parent's other threads.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}
