//! Real-kernel tests for pools: they run in the Debian-kernel VM (dm-thin
//! is not on the host). Each behaviour has one body, run against every pool
//! kind (loopback, direct-lvm, adopted) through the factory in
//! `kernel/support.rs`, as the snapshotter's conformance suite runs one
//! body per backend; what only one kind has lives in that kind's file.
//! Small sizes: the guest's /tmp is a tmpfs in 4 GiB of RAM, so data files
//! are sparse and 512 MiB at most.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use integration::harness::{self, KernelTest};
use integration::need::Need;

#[path = "kernel/adopt.rs"]
mod adopt;
#[path = "kernel/crash.rs"]
mod crash;
#[path = "common/cycle.rs"]
mod cycle;
#[path = "kernel/loopback.rs"]
mod loopback;
#[path = "kernel/lvm.rs"]
mod lvm;
#[path = "kernel/shared.rs"]
mod shared;
#[path = "kernel/support.rs"]
mod support;

use support::{Kind, DM_THIN, LVM};

/// Registers `body` once per listed kind, as `NAME_loopback`, `NAME_lvm`,
/// `NAME_adopted`. `LvmNotInSmoke` is the LVM kind left out of CI's smoke
/// run: its lvm2 setup and teardown cost 20-35 s per test under TCG, the
/// body's thin-pool operations are the same on every kind, and the
/// LVM-only code has its own smoke tests (`direct_lvm_pool_lifecycle`,
/// `adopt_lvm_pool`, `sigkill_during_lvm_create`, `sigkill_during_resize_lvm`).
macro_rules! per_kind {
    ($tests:ident, $name:literal, $body:path, [$($kind:ident),+]) => {
        $(per_kind!(@one $tests, $name, $body, $kind);)+
    };
    (@one $tests:ident, $name:literal, $body:path, Loopback) => {
        $tests.push(
            KernelTest::new(concat!($name, "_loopback"), || $body(Kind::Loopback))
                .needs(Kind::Loopback.needs()),
        )
    };
    (@one $tests:ident, $name:literal, $body:path, Lvm) => {
        $tests.push(
            KernelTest::new(concat!($name, "_lvm"), || $body(Kind::Lvm)).needs(Kind::Lvm.needs()),
        )
    };
    (@one $tests:ident, $name:literal, $body:path, LvmNotInSmoke) => {
        $tests.push(
            KernelTest::new(concat!($name, "_lvm"), || $body(Kind::Lvm))
                .needs(Kind::Lvm.needs())
                .not_in_smoke(concat!($name, "_loopback")),
        )
    };
    (@one $tests:ident, $name:literal, $body:path, Adopted) => {
        $tests.push(
            KernelTest::new(concat!($name, "_adopted"), || $body(Kind::Adopted))
                .needs(Kind::Adopted.needs()),
        )
    };
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(crash::CRASH_ENV) {
        crash::crash_child(&spec);
    }
    if let Ok(spec) = std::env::var(lvm::LVM_CRASH_ENV) {
        lvm::lvm_crash_child(&spec);
    }
    if let Ok(file) = std::env::var(loopback::NON_ROOT_ENV) {
        loopback::non_root_child(Path::new(&file));
    }
    // What one kind has.
    let mut tests = vec![
        KernelTest::new(
            "non_root_caller_is_told_to_be_root",
            loopback::non_root_caller_is_told_to_be_root,
        )
        .needs(&[Need::Root, Need::Loop]),
        KernelTest::new(
            "loop_devices_use_direct_io",
            loopback::loop_devices_use_direct_io,
        )
        .needs(&[Need::Root, Need::Loop]),
        KernelTest::new(
            "loopback_metadata_autoextends",
            loopback::metadata_autoextends,
        )
        .needs(DM_THIN),
        KernelTest::new("loopback_pool_lifecycle", loopback::loopback_pool_lifecycle)
            .needs(DM_THIN),
        KernelTest::new(
            "loopback_pool_reactivates_from_files",
            loopback::loopback_pool_reactivates_from_files,
        )
        .needs(DM_THIN),
        KernelTest::new(
            "deferred_destroy_of_busy_pool",
            loopback::deferred_destroy_of_busy_pool,
        )
        .needs(DM_THIN),
        KernelTest::new(
            "snapshot_cycle_sequences_work",
            loopback::snapshot_cycle_sequences_work,
        )
        .needs(DM_THIN),
        KernelTest::new(
            "bad_input_leaves_nothing",
            loopback::bad_input_leaves_nothing,
        )
        .needs(DM_THIN),
        KernelTest::new("direct_lvm_pool_lifecycle", lvm::direct_lvm_pool_lifecycle).needs(LVM),
        KernelTest::new("sigkill_during_lvm_create", lvm::sigkill_during_lvm_create).needs(LVM),
        KernelTest::new("adopt_existing_pool", adopt::adopt_existing_pool).needs(DM_THIN),
        KernelTest::new("adopt_lvm_pool", adopt::adopt_lvm_pool).needs(LVM),
    ];
    // One body, every kind.
    per_kind!(
        tests,
        "thin_ops_and_usage",
        shared::thin_ops_and_usage,
        [Loopback, LvmNotInSmoke, Adopted]
    );
    per_kind!(
        tests,
        "table_and_status_round_trip",
        shared::table_and_status_round_trip,
        [Loopback, LvmNotInSmoke, Adopted]
    );
    per_kind!(
        tests,
        "floor_and_enospc",
        shared::floor_and_enospc,
        [Loopback, LvmNotInSmoke, Adopted]
    );
    // Adopted pools are not thinbox's to grow.
    per_kind!(
        tests,
        "autoextend_under_write_load",
        shared::autoextend_under_write_load,
        [Loopback, LvmNotInSmoke]
    );
    per_kind!(
        tests,
        "filesystems_mkfs_snapshot_resize",
        shared::filesystems_mkfs_snapshot_resize,
        [Loopback, LvmNotInSmoke, Adopted]
    );
    per_kind!(
        tests,
        "sigkill_during_create",
        crash::sigkill_during_create,
        [Loopback, LvmNotInSmoke, Adopted]
    );
    per_kind!(
        tests,
        "sigkill_during_snapshot",
        crash::sigkill_during_snapshot,
        [Loopback, LvmNotInSmoke, Adopted]
    );
    per_kind!(
        tests,
        "sigkill_during_delete",
        crash::sigkill_during_delete,
        [Loopback, LvmNotInSmoke, Adopted]
    );
    per_kind!(
        tests,
        "sigkill_during_resize",
        crash::sigkill_during_resize,
        [Loopback, Lvm, Adopted]
    );
    harness::main(&tests)
}
