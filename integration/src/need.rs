//! What a real-kernel test needs, and what the kernel it runs on has.
//!
//! A test declares its [`Need`]s; the [`Environment`] probe says which of them
//! the current machine satisfies. The orchestrator uses the same probe to
//! decide whether a test runs on the host or inside the Debian-kernel VM.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use kernfmt::CgroupLayout;

/// One thing a real-kernel test needs from the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Need {
    /// Effective uid 0.
    Root,
    /// Loop devices (`/dev/loop-control`).
    Loop,
    /// btrfs in the kernel and btrfs-progs.
    Btrfs,
    /// overlayfs in the kernel.
    Overlay,
    /// device-mapper with the thin-pool target.
    DmThin,
    /// dm-thin plus the lvm2 tools.
    Lvm,
    /// The ZFS module and the zfs/zpool tools.
    Zfs,
    /// cgroup v1 controller hierarchies (pure v1 or hybrid).
    CgroupV1,
    /// cgroup v2 with controllers available (pure v2).
    CgroupV2,
    /// Exactly this cgroup layout for the whole machine.
    CgroupLayout(CgroupLayout),
    /// At least this many spare whole block devices (virtio disks in the VM),
    /// listed in `THINBOX_VM_DISKS`.
    Disks(u8),
    /// Must run inside the Debian-kernel VM even if the host could run it
    /// (e.g. to prove a backend on the guest kernel too).
    Vm,
    /// Can boot the test VM itself: QEMU and the guest prepared by
    /// scripts/setup.sh (the host, never the guest).
    VmHarness,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Root => f.write_str("root"),
            Need::Loop => f.write_str("loop"),
            Need::Btrfs => f.write_str("btrfs"),
            Need::Overlay => f.write_str("overlay"),
            Need::DmThin => f.write_str("dm-thin"),
            Need::Lvm => f.write_str("lvm"),
            Need::Zfs => f.write_str("zfs"),
            Need::CgroupV1 => f.write_str("cgroup-v1"),
            Need::CgroupV2 => f.write_str("cgroup-v2"),
            Need::CgroupLayout(layout) => write!(f, "cgroup-layout={layout}"),
            Need::Disks(n) => write!(f, "disks={n}"),
            Need::Vm => f.write_str("vm"),
            Need::VmHarness => f.write_str("vm-harness"),
        }
    }
}

impl FromStr for Need {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(layout) = s.strip_prefix("cgroup-layout=") {
            return layout
                .parse()
                .map(Need::CgroupLayout)
                .map_err(|e: kernfmt::ParseError| e.to_string());
        }
        if let Some(n) = s.strip_prefix("disks=") {
            return n
                .parse()
                .map(Need::Disks)
                .map_err(|_| format!("bad disk count {n:?}: use a number from 0 to 255"));
        }
        Ok(match s {
            "root" => Need::Root,
            "loop" => Need::Loop,
            "btrfs" => Need::Btrfs,
            "overlay" => Need::Overlay,
            "dm-thin" => Need::DmThin,
            "lvm" => Need::Lvm,
            "zfs" => Need::Zfs,
            "cgroup-v1" => Need::CgroupV1,
            "cgroup-v2" => Need::CgroupV2,
            "vm" => Need::Vm,
            "vm-harness" => Need::VmHarness,
            other => return Err(format!("unknown need {other:?}")),
        })
    }
}

/// What the running kernel and userland provide, probed once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// Running as root.
    pub root: bool,
    /// Loop devices (`/dev/loop-control`).
    pub loop_devices: bool,
    /// btrfs in the kernel and btrfs-progs.
    pub btrfs: bool,
    /// overlayfs in the kernel.
    pub overlay: bool,
    /// device-mapper with the thin-pool target.
    pub dm_thin: bool,
    /// lvm2.
    pub lvm: bool,
    /// ZFS (module and tools).
    pub zfs: bool,
    /// The cgroup layout, when cgroups are mounted.
    pub cgroup_layout: Option<CgroupLayout>,
    /// cgroup2 has controllers to delegate (false on a hybrid host, where v1 owns them all).
    pub cgroup_v2_controllers: bool,
    /// Spare block devices for tests (virtio disks in the VM).
    pub disks: Vec<String>,
    /// Inside the test VM.
    pub in_vm: bool,
    /// QEMU and a prepared guest image are here.
    pub vm_harness: bool,
}

impl Environment {
    /// Probes the current machine. Loads kernel modules on demand where
    /// `modprobe` exists, as a user's first command would.
    pub fn probe() -> Environment {
        let root = nix::unistd::geteuid().is_root();
        let in_vm = std::env::var_os(crate::vm::IN_VM_ENV).is_some();
        let loop_devices = root && (Path::new("/dev/loop-control").exists() || modprobe("loop"));
        let btrfs = has_filesystem("btrfs") && which("mkfs.btrfs");
        let overlay = has_filesystem("overlay");
        let dm_thin = Path::new("/dev/mapper/control").exists() && has_dm_thin_target();
        let lvm = dm_thin && which("lvm");
        let zfs = (Path::new("/dev/zfs").exists()
            || (root && modprobe("zfs") && Path::new("/dev/zfs").exists()))
            && which("zfs")
            && which("zpool");
        let cgroup_layout = kernfmt::MountInfo::read_self()
            .ok()
            .and_then(|m| CgroupLayout::of_mounts(&m));
        let cgroup_v2_controllers = cgroup_layout == Some(CgroupLayout::V2)
            && std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .map(|c| !c.trim().is_empty())
                .unwrap_or(false);
        let disks = std::env::var(crate::vm::DISKS_ENV)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let vm_harness =
            !in_vm && which("qemu-system-x86_64") && crate::vm::GuestImage::locate().is_ok();
        Environment {
            root,
            loop_devices,
            btrfs,
            overlay,
            dm_thin,
            lvm,
            zfs,
            cgroup_layout,
            cgroup_v2_controllers,
            disks,
            in_vm,
            vm_harness,
        }
    }

    /// Whether this machine satisfies one need.
    pub fn has(&self, need: Need) -> bool {
        match need {
            Need::Root => self.root,
            Need::Loop => self.loop_devices,
            Need::Btrfs => self.btrfs,
            Need::Overlay => self.overlay,
            Need::DmThin => self.dm_thin,
            Need::Lvm => self.lvm,
            Need::Zfs => self.zfs,
            Need::CgroupV1 => matches!(
                self.cgroup_layout,
                Some(CgroupLayout::V1 | CgroupLayout::Hybrid)
            ),
            Need::CgroupV2 => self.cgroup_v2_controllers,
            Need::CgroupLayout(layout) => self.cgroup_layout == Some(layout),
            Need::Disks(n) => self.disks.len() >= usize::from(n),
            Need::Vm => self.in_vm,
            Need::VmHarness => self.vm_harness,
        }
    }

    /// The needs in `needs` that this machine lacks.
    pub fn missing(&self, needs: &[Need]) -> Vec<Need> {
        needs.iter().copied().filter(|n| !self.has(*n)).collect()
    }

    /// What the Debian-kernel guest provides when booted with `layout`,
    /// `disks` spare disks and the ZFS modules present or not.
    pub fn guest(layout: CgroupLayout, disks: u8, zfs: bool) -> Environment {
        Environment {
            root: true,
            loop_devices: true,
            btrfs: true,
            overlay: true,
            dm_thin: true,
            lvm: true,
            zfs,
            cgroup_layout: Some(layout),
            cgroup_v2_controllers: layout == CgroupLayout::V2,
            disks: (0..disks)
                .map(|i| format!("/dev/vd{}", char::from(b'a' + i)))
                .collect(),
            in_vm: true,
            vm_harness: false,
        }
    }
}

fn has_filesystem(name: &str) -> bool {
    let listed = |name: &str| {
        std::fs::read_to_string("/proc/filesystems")
            .map(|fs| {
                fs.lines()
                    .any(|l| l.split_whitespace().last() == Some(name))
            })
            .unwrap_or(false)
    };
    listed(name) || (modprobe(name) && listed(name))
}

fn has_dm_thin_target() -> bool {
    // The kernel lists the thin-pool target only once its module is loaded.
    let loaded = || Path::new("/sys/module/dm_thin_pool").exists();
    loaded() || (modprobe("dm-thin-pool") && loaded())
}

/// Loads a module quietly; true when `modprobe` succeeded.
fn modprobe(module: &str) -> bool {
    Command::new("modprobe")
        .arg("-q")
        .arg(module)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether an executable of that name is on `PATH` (or in the sbin dirs).
pub fn which(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .any(|dir| Path::new(dir).join(program).is_file());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_round_trip_through_text() {
        let all = [
            Need::Root,
            Need::Loop,
            Need::Btrfs,
            Need::Overlay,
            Need::DmThin,
            Need::Lvm,
            Need::Zfs,
            Need::CgroupV1,
            Need::CgroupV2,
            Need::CgroupLayout(CgroupLayout::V1),
            Need::CgroupLayout(CgroupLayout::V2),
            Need::CgroupLayout(CgroupLayout::Hybrid),
            Need::Disks(3),
            Need::Vm,
            Need::VmHarness,
        ];
        for need in all {
            assert_eq!(need.to_string().parse::<Need>(), Ok(need));
        }
        assert!("dm-cache".parse::<Need>().is_err());
        assert!("disks=many".parse::<Need>().is_err());
    }

    #[test]
    fn guest_environment_satisfies_what_it_claims() {
        let guest = Environment::guest(CgroupLayout::V1, 2, true);
        assert!(guest.has(Need::DmThin) && guest.has(Need::Zfs) && guest.has(Need::Vm));
        assert!(guest.has(Need::CgroupV1) && !guest.has(Need::CgroupV2));
        assert!(guest.has(Need::Disks(2)) && !guest.has(Need::Disks(3)));
        assert_eq!(
            guest.missing(&[Need::CgroupLayout(CgroupLayout::V2), Need::Loop]),
            vec![Need::CgroupLayout(CgroupLayout::V2)]
        );
    }
}
