//! The default seccomp filter: everything is allowed except what Docker's
//! default profile denies to a container without `CAP_SYS_ADMIN` and friends
//! (kernel modules, kexec, mount and namespace calls, keyrings, ptrace,
//! BPF, perf, clock setting, swap, reboot, io_uring, ...), which fail with
//! `EPERM`; `clone` with any `CLONE_NEW*` flag fails with `EPERM` and
//! `clone3` with `ENOSYS`, so libc falls back to `clone` where the flags can
//! be inspected (as Docker does).
//!
//! Needs seccomp filter mode (Linux 3.5) and, for `clone3`, Linux 5.3 headers.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, ErrorKind, Result};

/// The syscalls denied outright with `EPERM`.
pub fn denied_syscalls() -> Vec<(&'static str, libc::c_long)> {
    let mut list = vec![
        ("acct", libc::SYS_acct),
        ("add_key", libc::SYS_add_key),
        ("bpf", libc::SYS_bpf),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("clock_settime", libc::SYS_clock_settime),
        ("delete_module", libc::SYS_delete_module),
        ("finit_module", libc::SYS_finit_module),
        ("fanotify_init", libc::SYS_fanotify_init),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fsopen", libc::SYS_fsopen),
        ("fspick", libc::SYS_fspick),
        ("get_mempolicy", libc::SYS_get_mempolicy),
        ("init_module", libc::SYS_init_module),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("kcmp", libc::SYS_kcmp),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("kexec_load", libc::SYS_kexec_load),
        ("keyctl", libc::SYS_keyctl),
        ("mbind", libc::SYS_mbind),
        ("mount", libc::SYS_mount),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("move_mount", libc::SYS_move_mount),
        ("move_pages", libc::SYS_move_pages),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("nfsservctl", libc::SYS_nfsservctl),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("open_tree", libc::SYS_open_tree),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("pivot_root", libc::SYS_pivot_root),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("ptrace", libc::SYS_ptrace),
        ("quotactl", libc::SYS_quotactl),
        ("reboot", libc::SYS_reboot),
        ("request_key", libc::SYS_request_key),
        ("set_mempolicy", libc::SYS_set_mempolicy),
        ("setns", libc::SYS_setns),
        ("settimeofday", libc::SYS_settimeofday),
        ("swapoff", libc::SYS_swapoff),
        ("swapon", libc::SYS_swapon),
        ("syslog", libc::SYS_syslog),
        ("umount2", libc::SYS_umount2),
        ("unshare", libc::SYS_unshare),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("vhangup", libc::SYS_vhangup),
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        // Syscall numbers libc no longer names (removed from the kernel, still reserved).
        ("create_module", 174),
        ("get_kernel_syms", 177),
        ("ioperm", libc::SYS_ioperm),
        ("iopl", libc::SYS_iopl),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("query_module", 178),
        ("_sysctl", libc::SYS__sysctl),
        ("sysfs", libc::SYS_sysfs),
        ("uselib", libc::SYS_uselib),
        ("ustat", libc::SYS_ustat),
    ]);
    list
}

/// The `CLONE_NEW*` flags whose use in `clone` is denied.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

fn arch() -> Result<TargetArch> {
    std::env::consts::ARCH.try_into().map_err(|_| {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "no seccomp filter for {}: run with seccomp unconfined",
                std::env::consts::ARCH
            ),
        )
    })
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, action: SeccompAction) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?).map_err(|e| {
        Error::new(ErrorKind::Start, "cannot build the seccomp filter").with_source(e)
    })?;
    filter.try_into().map_err(|e: seccompiler::BackendError| {
        Error::new(ErrorKind::Start, "cannot compile the seccomp filter").with_source(e)
    })
}

/// The default filter as BPF programs, to be installed in order.
pub fn default_filters() -> Result<Vec<BpfProgram>> {
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
        .into_iter()
        .map(|(_, nr)| (nr, vec![]))
        .collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::try_from(flag).expect("CLONE_NEW* flags are positive");
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]));
            cond.map_err(|e| {
                Error::new(ErrorKind::Start, "cannot build the clone seccomp rule").with_source(e)
            })
        })
        .collect::<Result<Vec<_>>>()?;
    eperm.insert(libc::SYS_clone, clone_rules);
    let enosys: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, vec![])].into();
    Ok(vec![
        compile(eperm, SeccompAction::Errno(libc::EPERM as u32))?,
        compile(enosys, SeccompAction::Errno(libc::ENOSYS as u32))?,
    ])
}

/// Installs `filters` on the calling thread (needs `no_new_privs` or
/// `CAP_SYS_ADMIN`).
pub fn apply(filters: &[BpfProgram]) -> Result<()> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| {
            Error::new(ErrorKind::Start, "cannot install the seccomp filter").with_source(e)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_compiles_and_denies_dockers_list() {
        let filters = default_filters().unwrap();
        assert_eq!(filters.len(), 2);
        let names: Vec<_> = denied_syscalls().into_iter().map(|(n, _)| n).collect();
        for must in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "kexec_load",
            "init_module",
            "bpf",
            "ptrace",
            "reboot",
            "swapon",
            "keyctl",
            "add_key",
            "perf_event_open",
            "open_by_handle_at",
            "clock_settime",
            "userfaultfd",
        ] {
            assert!(names.contains(&must), "{must} is not denied");
        }
    }
}
