//! Real-kernel tests of the runner: containers on a busybox rootfs, on the

//! host (hybrid cgroups) and in the VM booted with pure cgroup v2 and v1.

//!

//! The rootfs is the host's static busybox copied into a temporary

//! directory with a symlink per applet (`busybox --list`), which is what

//! `busybox --install -s` makes. Each container writes what it observed to

//! a file in its root; the test reads it from the host side afterwards.

#![forbid(unsafe_code)]

use integration::fixtures::{temp_dir, unique_name};
use integration::harness::{self, KernelTest};
use integration::need::{CgroupLayout, Need};
use nix::sys::signal::Signal;
use oci_spec::runtime::Capability;
use runner::cgroup::{Bytes, CpuList, DevNum, Max, ThrottleKind};
use runner::{
    Container, ContainerBuilder, ContainerConfig, ErrorKind, ExitReason, ExitReport, Runtime,
    SeccompMode, Termination,
};
use std::fs;
use std::os::unix::fs::symlink;
use std::process::ExitCode;
use std::time::Duration;

#[path = "kernel/isolation.rs"]
mod isolation;
#[path = "kernel/limits.rs"]
mod limits;
#[path = "kernel/process.rs"]
mod process;
#[path = "kernel/snapshots.rs"]
mod snapshots;
#[path = "kernel/support.rs"]
mod support;

use isolation::*;
use limits::*;
use process::*;
use snapshots::*;
use support::*;

/// The tests, each registered once per cgroup layout.
const TESTS: &[(&str, fn())] = &[
    (
        "pid_1_and_host_processes_invisible",
        pid_1_and_host_processes_invisible,
    ),
    (
        "hostname_and_network_isolated",
        hostname_and_network_isolated,
    ),
    ("root_cannot_be_escaped", root_cannot_be_escaped),
    (
        "memory_hog_is_oom_killed_and_reported",
        memory_hog_is_oom_killed_and_reported,
    ),
    (
        "fork_bomb_is_stopped_by_pids_limit",
        fork_bomb_is_stopped_by_pids_limit,
    ),
    ("exit_codes_and_signals", exit_codes_and_signals),
    (
        "init_reaps_zombies_and_forwards_signals",
        init_reaps_zombies_and_forwards_signals,
    ),
    (
        "timeout_kills_the_whole_cgroup",
        timeout_kills_the_whole_cgroup,
    ),
    ("limits_land_in_the_cgroup", limits_land_in_the_cgroup),
    (
        "bad_input_fails_before_or_tears_down",
        bad_input_fails_before_or_tears_down,
    ),
    ("security_defaults_apply", security_defaults_apply),
    (
        "cpu_quota_throttles_a_busy_loop",
        cpu_quota_throttles_a_busy_loop,
    ),
    ("runc_spec_bundle_runs", runc_spec_bundle_runs),
    (
        "non_root_capabilities_match_runc",
        non_root_capabilities_match_runc,
    ),
    (
        "cgroup_mount_shows_only_the_own_cgroup",
        cgroup_mount_shows_only_the_own_cgroup,
    ),
    (
        "stale_cgroups_are_swept_and_live_ones_kept",
        stale_cgroups_are_swept_and_live_ones_kept,
    ),
    (
        "terminal_gives_the_process_a_pty",
        terminal_gives_the_process_a_pty,
    ),
    (
        "signals_are_forwarded_while_waiting",
        signals_are_forwarded_while_waiting,
    ),
];

/// Every cgroup layout a test can be registered for, with its name suffix.
const LAYOUTS: [(&str, CgroupLayout); 3] = [
    ("hybrid", CgroupLayout::Hybrid),
    ("v2", CgroupLayout::V2),
    ("v1", CgroupLayout::V1),
];

/// Registers `body` once per layout as `<name>_<suffix>`, needing `needs`
/// and that layout.
fn per_layout(
    tests: &mut Vec<KernelTest>,
    name: &str,
    body: fn(),
    needs: &[Need],
    layouts: &[(&str, CgroupLayout)],
) {
    for &(suffix, layout) in layouts {
        let name: &'static str = Box::leak(format!("{name}_{suffix}").into_boxed_str());
        let needs: &'static [Need] = Box::leak(
            needs
                .iter()
                .copied()
                .chain([Need::CgroupLayout(layout)])
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        tests.push(KernelTest::new(name, body).needs(needs));
    }
}

fn main() -> ExitCode {
    let (all, hybrid, v2, vm) = (&LAYOUTS[..], &LAYOUTS[..1], &LAYOUTS[1..2], &LAYOUTS[1..]);
    let mut tests = vec![];
    for layout in all {
        for (name, body) in TESTS {
            per_layout(&mut tests, name, *body, &[Need::Root], &[*layout]);
        }
    }
    // The VM's root is entered with switch_root (a chroot over the
    // initramfs), where the kernel refuses new user namespaces even to root
    // (`unshare -U` fails there too): user-namespace tests run on the host.
    per_layout(
        &mut tests,
        "user_namespace_maps_root",
        user_namespace_maps_root,
        &[Need::Root],
        hybrid,
    );
    let root_loop = &[Need::Root, Need::Loop];
    per_layout(
        &mut tests,
        "full_root_device_is_the_exit_reason",
        full_root_device_is_the_exit_reason,
        root_loop,
        all,
    );
    // Device filtering: the v1 devices controller, or on v2 an eBPF program.
    per_layout(
        &mut tests,
        "host_devices_are_denied_by_the_devices_cgroup",
        host_devices_are_denied_by_the_devices_cgroup,
        root_loop,
        all,
    );
    // Containers on the snapshot kinds thinbox manages, made here with the
    // system tools: runner does not depend on thinpool or snapshotter.
    tests.push(
        KernelTest::new(
            "container_on_a_btrfs_snapshot",
            container_on_a_btrfs_snapshot,
        )
        .needs(&[
            Need::Root,
            Need::Loop,
            Need::Btrfs,
            Need::CgroupLayout(CgroupLayout::Hybrid),
        ]),
    );
    per_layout(
        &mut tests,
        "container_on_a_dm_thin_snapshot",
        container_on_a_dm_thin_snapshot,
        &[Need::Root, Need::Loop, Need::DmThin],
        vm,
    );
    per_layout(
        &mut tests,
        "container_on_a_zfs_clone",
        container_on_a_zfs_clone,
        &[Need::Root, Need::Zfs],
        v2,
    );
    per_layout(
        &mut tests,
        "direct_io_is_throttled_on_the_root_device",
        direct_io_is_throttled_on_the_root_device,
        root_loop,
        all,
    );
    // Limited containers on every kernel of the matrix, on cgroup v1 and v2:
    // memory, pids and cpu in the cgroup, the OOM killer and the pids limit
    // at work, and io throttled on a dm-thin root.
    let matrix: Vec<&'static str> = [
        "limits_land_in_the_cgroup",
        "memory_hog_is_oom_killed_and_reported",
        "fork_bomb_is_stopped_by_pids_limit",
        "container_on_a_dm_thin_snapshot",
    ]
    .iter()
    .flat_map(|name| {
        ["v1", "v2"].map(|layout| &*Box::leak(format!("{name}_{layout}").into_boxed_str()))
    })
    .collect();
    harness::in_kernel_matrix(&mut tests, &matrix);
    harness::main(&tests)
}
