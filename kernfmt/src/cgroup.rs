//! How the cgroup hierarchies are mounted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{MountInfo, ParseError};

/// How cgroup hierarchies are mounted on a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// Only cgroup v1 controller hierarchies (RHEL 7 style).
    V1,
    /// The unified cgroup2 hierarchy at /sys/fs/cgroup owns every controller.
    V2,
    /// v1 controllers plus a cgroup2 hierarchy without controllers at
    /// /sys/fs/cgroup/unified (systemd's hybrid mode).
    Hybrid,
}

/// The controllers a cgroup v1 hierarchy can carry (a named hierarchy such
/// as `name=systemd` carries none).
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

impl CgroupLayout {
    /// The layout the mount table shows: cgroup2 at /sys/fs/cgroup is v2;
    /// v1 controller hierarchies with cgroup2 at /sys/fs/cgroup/unified are
    /// hybrid, without it v1; no controllers anywhere is `None`.
    pub fn of_mounts(mounts: &[MountInfo]) -> Option<CgroupLayout> {
        let mut v1_controllers = false;
        let mut v2_at_root = false;
        let mut v2_unified = false;
        for m in mounts {
            match m.fstype.as_str() {
                "cgroup2" if m.mount_point == "/sys/fs/cgroup" => v2_at_root = true,
                "cgroup2" if m.mount_point == "/sys/fs/cgroup/unified" => v2_unified = true,
                "cgroup" if m.super_option_list().any(|o| V1_CONTROLLERS.contains(&o)) => {
                    v1_controllers = true
                }
                _ => {}
            }
        }
        match (v1_controllers, v2_at_root, v2_unified) {
            (_, true, _) => Some(CgroupLayout::V2),
            (true, false, true) => Some(CgroupLayout::Hybrid),
            (true, false, false) => Some(CgroupLayout::V1),
            (false, false, _) => None,
        }
    }
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupLayout::V1 => "v1",
            CgroupLayout::V2 => "v2",
            CgroupLayout::Hybrid => "hybrid",
        })
    }
}

impl FromStr for CgroupLayout {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "v1" => Ok(CgroupLayout::V1),
            "v2" => Ok(CgroupLayout::V2),
            "hybrid" => Ok(CgroupLayout::Hybrid),
            other => Err(ParseError::new("a cgroup layout (v1, v2 or hybrid)", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
40 35 0:35 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory
";

    fn layout(text: &str) -> Option<CgroupLayout> {
        CgroupLayout::of_mounts(&MountInfo::parse_all(text).unwrap())
    }

    #[test]
    fn detects_hybrid_v1_and_v2_layouts() {
        assert_eq!(layout(HYBRID), Some(CgroupLayout::Hybrid));
        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(layout(&v1), Some(CgroupLayout::V1));
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(layout(v2), Some(CgroupLayout::V2));
        // Only a named hierarchy: no controllers anywhere.
        let named_only = "37 35 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(layout(named_only), None);
    }

    #[test]
    fn names_round_trip() {
        for l in [CgroupLayout::V1, CgroupLayout::V2, CgroupLayout::Hybrid] {
            assert_eq!(l.to_string().parse::<CgroupLayout>().unwrap(), l);
        }
        let e = "v3".parse::<CgroupLayout>().unwrap_err();
        assert!(e.to_string().contains("v1, v2 or hybrid"), "{e}");
    }
}
