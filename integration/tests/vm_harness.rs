//! Tests of the VM harness itself, run on the host that boots the guests:
//! the documented command, exit status and streams, cgroup layouts, and the
//! failure paths (a hung guest, a panicking guest, setup without root).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use integration::fixtures::temp_dir;
use integration::harness::{self, KernelTest};
use integration::need::{CgroupLayout, Need};
use integration::vm::{self, GuestImage, VmConfig, VmError};

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new(
            "documented_vm_command_lists_thin_pool_target",
            documented_vm_command_lists_thin_pool_target,
        )
        .needs(&[Need::VmHarness]),
        KernelTest::new(
            "command_status_and_streams_come_back",
            command_status_and_streams_come_back,
        )
        .needs(&[Need::VmHarness]),
        KernelTest::new(
            "hybrid_boot_mounts_cgroup2_at_unified",
            hybrid_boot_mounts_cgroup2_at_unified,
        )
        .needs(&[Need::VmHarness]),
        KernelTest::new(
            "hung_guest_is_killed_at_timeout_with_console",
            hung_guest_is_killed_at_timeout_with_console,
        )
        .needs(&[Need::VmHarness]),
        KernelTest::new(
            "panicking_guest_is_reported_with_console",
            panicking_guest_is_reported_with_console,
        )
        .needs(&[Need::VmHarness]),
        KernelTest::new(
            "kernel_panic_before_init_boots_again",
            kernel_panic_before_init_boots_again,
        )
        .needs(&[Need::VmHarness]),
        KernelTest::new(
            "setup_refuses_to_run_without_root",
            setup_refuses_to_run_without_root,
        )
        .needs(&[Need::Root])
        .timeout(Duration::from_secs(60)),
    ])
}

fn image() -> GuestImage {
    GuestImage::locate().expect("guest prepared by scripts/setup.sh")
}

fn documented_vm_command_lists_thin_pool_target() {
    let out = Command::new(env!("CARGO_BIN_EXE_thinbox-vm"))
        .args(["run", "--", "dmsetup", "targets"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.lines().any(|l| l.starts_with("thin-pool")),
        "no thin-pool line in:\n{stdout}"
    );
}

fn command_status_and_streams_come_back() {
    let out = vm::run_script(
        &image(),
        &VmConfig::default(),
        "echo out; echo err >&2; exit 7",
    )
    .unwrap();
    assert_eq!(out.status, 7);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    // A command killed by a signal reports 128+N, as a shell does.
    let out = vm::run_script(&image(), &VmConfig::default(), "sh -c 'kill -TERM $$'").unwrap();
    assert_eq!(out.status, 128 + 15);
}

fn hybrid_boot_mounts_cgroup2_at_unified() {
    let config = VmConfig {
        cgroup: CgroupLayout::Hybrid,
        ..VmConfig::default()
    };
    let out = vm::run_script(&image(), &config, "stat -f -c %T /sys/fs/cgroup/unified; cat /sys/fs/cgroup/memory/memory.limit_in_bytes >/dev/null && echo v1-memory").unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "cgroup2fs\nv1-memory\n");
}

/// Whether any process still has `needle` in its command line.
fn process_mentions(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}

fn hung_guest_is_killed_at_timeout_with_console() {
    let share = temp_dir();
    let config = VmConfig {
        timeout: Duration::from_secs(40),
        share: Some(share.path().to_owned()),
        ..VmConfig::default()
    };
    match vm::run_script(&image(), &config, "sleep 600") {
        Err(VmError::Timeout { console, .. }) => {
            assert!(
                console.contains("Linux version"),
                "the console log is missing:\n{console}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let share_path = share.path().to_str().unwrap();
    assert!(
        !process_mentions(share_path),
        "a QEMU for {share_path} is still running"
    );
    assert!(!Path::new(share_path).join("status").exists());
}

fn panicking_guest_is_reported_with_console() {
    let share = temp_dir();
    let config = VmConfig {
        share: Some(share.path().to_owned()),
        ..VmConfig::default()
    };
    match vm::run_script(&image(), &config, "echo c >/proc/sysrq-trigger") {
        Err(VmError::NoResult { console, .. }) => {
            assert!(
                console.contains("Kernel panic"),
                "no panic in the console:\n{console}"
            );
        }
        other => panic!("expected the guest to die without a result, got {other:?}"),
    }
    assert!(!process_mentions(share.path().to_str().unwrap()));
}

/// A kernel that dies before thinbox's guest init runs is booted once more
/// (an emulator fault, not a test's), and twice is an error saying so.
fn kernel_panic_before_init_boots_again() {
    let config = VmConfig {
        timeout: Duration::from_secs(120),
        // No such init in the initramfs: the kernel panics looking for a root.
        kernel_args: vec!["rdinit=/no-such-init".into()],
        ..VmConfig::default()
    };
    match vm::run_script(&image(), &config, "true") {
        Err(VmError::NoResult { reason, console }) => {
            assert!(
                reason.contains("in 2 boots"),
                "reason {reason:?}, console:\n{console}"
            );
            assert!(console.contains("Kernel panic"), "{console}");
        }
        other => panic!("expected two panicked boots, got {other:?}"),
    }
}

fn setup_refuses_to_run_without_root() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "setup.sh succeeded as nobody");
    assert!(
        stderr.contains("must run as root"),
        "unclear message: {stderr}"
    );
}
