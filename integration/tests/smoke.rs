//! Smoke tests that prove the test platform: each drives the system tools on
//! the kernel that has the feature (btrfs on the host; dm-thin, LVM, ZFS and
//! both cgroup layouts in the Debian-kernel VM). Later crates replace these
//! tools with thinbox's own code; these stay as the proof that the
//! environment itself works.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use integration::fixtures::{
    run, sparse_file, temp_dir, try_run, unique_name, LoopDevice, Mount, ZfsPool,
};
use integration::harness::{self, KernelTest};
use integration::need::{CgroupLayout, Need};

const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new(
            "btrfs_on_loop_subvolume_and_snapshot",
            btrfs_on_loop_subvolume_and_snapshot,
        )
        .needs(&[Need::Root, Need::Loop, Need::Btrfs]),
        KernelTest::new(
            "dm_thin_pool_thin_device_ext4_snapshot",
            dm_thin_pool_thin_device_ext4_snapshot,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        KernelTest::new("lvm_thin_pool_on_virtio_disk", lvm_thin_pool_on_virtio_disk).needs(&[
            Need::Root,
            Need::Lvm,
            Need::Disks(1),
        ]),
        KernelTest::new(
            "zfs_pool_dataset_snapshot_clone",
            zfs_pool_dataset_snapshot_clone,
        )
        .needs(&[Need::Root, Need::Zfs]),
        KernelTest::new(
            "cgroup_v2_boot_shows_unified_hierarchy",
            cgroup_v2_boot_shows_unified_hierarchy,
        )
        .needs(&[Need::Root, Need::CgroupLayout(CgroupLayout::V2)]),
        KernelTest::new(
            "cgroup_v1_boot_shows_controller_hierarchies",
            cgroup_v1_boot_shows_controller_hierarchies,
        )
        .needs(&[Need::Root, Need::CgroupLayout(CgroupLayout::V1)]),
    ])
}

fn btrfs_on_loop_subvolume_and_snapshot() {
    let dir = temp_dir();
    let image = dir.path().join("btrfs.img");
    sparse_file(&image, 256 * MIB);
    let dev = LoopDevice::attach(&image);
    run("mkfs.btrfs", &["-q", "-f", dev.as_str()]);
    let mnt = Mount::new(dev.as_str(), &dir.path().join("mnt"), Some("btrfs"), "");
    let root = mnt.target.to_str().unwrap().to_owned();
    let sub = format!("{root}/sub");
    let snap = format!("{root}/snap");
    run("btrfs", &["subvolume", "create", &sub]);
    fs::write(format!("{sub}/file"), "before snapshot").unwrap();
    run("btrfs", &["subvolume", "snapshot", "-r", &sub, &snap]);
    fs::write(format!("{sub}/file"), "after snapshot").unwrap();
    assert_eq!(
        fs::read_to_string(format!("{snap}/file")).unwrap(),
        "before snapshot"
    );
    assert_eq!(
        fs::read_to_string(format!("{sub}/file")).unwrap(),
        "after snapshot"
    );
    let list = run("btrfs", &["subvolume", "list", &root]);
    assert!(
        list.contains("path sub") && list.contains("path snap"),
        "{list}"
    );
    // The read-only snapshot refuses writes.
    assert!(fs::write(format!("{snap}/file"), "x").is_err());
}

/// Removes dm devices by name on drop, last made first.
struct DmDevices(Vec<String>);

impl Drop for DmDevices {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            try_run("dmsetup", &["remove", "--force", name]);
        }
    }
}

fn dm_thin_pool_thin_device_ext4_snapshot() {
    let dir = temp_dir();
    let (meta_file, data_file) = (dir.path().join("meta"), dir.path().join("data"));
    sparse_file(&meta_file, 16 * MIB);
    sparse_file(&data_file, 512 * MIB);
    let meta = LoopDevice::attach(&meta_file);
    let data = LoopDevice::attach(&data_file);
    let pool = unique_name("pool");
    let thin = unique_name("thin");
    let snap = unique_name("snap");
    let mut devices = DmDevices(vec![]);

    // 512 MiB of 64 KiB blocks (128 sectors), low-water mark 1024 blocks.
    let pool_table = format!(
        "0 {} thin-pool {} {} 128 1024 1 skip_block_zeroing",
        512 * MIB / 512,
        meta.as_str(),
        data.as_str()
    );
    run("dmsetup", &["create", &pool, "--table", &pool_table]);
    devices.0.push(pool.clone());
    run("dmsetup", &["message", &pool, "0", "create_thin 0"]);
    let thin_table = format!("0 {} thin /dev/mapper/{pool} 0", 256 * MIB / 512);
    run("dmsetup", &["mknodes"]);
    run("dmsetup", &["create", &thin, "--table", &thin_table]);
    devices.0.push(thin.clone());
    run("dmsetup", &["mknodes"]);
    let thin_dev = format!("/dev/mapper/{thin}");
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-E",
            "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            &thin_dev,
        ],
    );
    {
        let mnt = Mount::new(&thin_dev, &dir.path().join("origin"), Some("ext4"), "");
        fs::write(mnt.target.join("file"), "in the origin").unwrap();
        run("sync", &[]);
        // Snapshot an active origin: suspend it so its pending writes are flushed first.
        run("dmsetup", &["suspend", &thin]);
        let made = try_run("dmsetup", &["message", &pool, "0", "create_snap 1 0"]);
        run("dmsetup", &["resume", &thin]);
        assert!(made, "create_snap failed");
        fs::write(mnt.target.join("file"), "changed after the snapshot").unwrap();
    }
    let snap_table = format!("0 {} thin /dev/mapper/{pool} 1", 256 * MIB / 512);
    run("dmsetup", &["create", &snap, "--table", &snap_table]);
    devices.0.push(snap.clone());
    run("dmsetup", &["mknodes"]);
    {
        let mnt = Mount::new(
            &format!("/dev/mapper/{snap}"),
            &dir.path().join("snap"),
            Some("ext4"),
            "ro",
        );
        assert_eq!(
            fs::read_to_string(mnt.target.join("file")).unwrap(),
            "in the origin"
        );
    }
    let status = run("dmsetup", &["status", &pool]);
    // "<start> <len> thin-pool <transaction id> <used meta>/<total meta> <used data>/<total data> ..."
    let fields: Vec<&str> = status.split_whitespace().collect();
    assert_eq!(fields[2], "thin-pool", "{status}");
    let used_data: u64 = fields[5].split('/').next().unwrap().parse().unwrap();
    assert!(
        used_data > 0,
        "the pool maps no data after mkfs and a write: {status}"
    );
    let thin_status = run("dmsetup", &["status", &thin]);
    assert!(thin_status.contains(" thin "), "{thin_status}");
}

fn lvm_thin_pool_on_virtio_disk() {
    let disk = std::env::var(integration::vm::DISKS_ENV).unwrap();
    let disk = disk.split_whitespace().next().unwrap().to_owned();
    let vg = unique_name("vg").replace('-', "_");
    struct Vg(String, String);
    impl Drop for Vg {
        fn drop(&mut self) {
            try_run("vgremove", &["-f", &self.0]);
            try_run("pvremove", &["-ff", "-y", &self.1]);
            try_run("wipefs", &["-a", &self.1]);
        }
    }
    run("pvcreate", &["-q", "-f", &disk]);
    run("vgcreate", &["-q", &vg, &disk]);
    let _vg = Vg(vg.clone(), disk.clone());
    run(
        "lvcreate",
        &[
            "-q",
            "--type",
            "thin-pool",
            "-L",
            "512M",
            "--zero",
            "n",
            "-n",
            "pool",
            &vg,
        ],
    );
    run(
        "lvcreate",
        &["-q", "-V", "1G", "-T", &format!("{vg}/pool"), "-n", "thin"],
    );
    let report = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_name,lv_attr,pool_lv,lv_size",
            "--units",
            "b",
            &vg,
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let lvs = report["report"][0]["lv"].as_array().unwrap();
    let thin = lvs
        .iter()
        .find(|lv| lv["lv_name"] == "thin")
        .expect("thin LV in the report");
    assert_eq!(thin["pool_lv"], "pool");
    assert!(thin["lv_attr"].as_str().unwrap().starts_with('V'), "{thin}");
    run("dmsetup", &["mknodes"]);
    let dev = format!("/dev/mapper/{vg}-thin");
    run("mkfs.ext4", &["-q", "-E", "nodiscard", &dev]);
    let dir = temp_dir();
    let mnt = Mount::new(&dev, &dir.path().join("mnt"), Some("ext4"), "");
    fs::write(mnt.target.join("file"), "on lvm thin").unwrap();
    assert_eq!(
        fs::read_to_string(mnt.target.join("file")).unwrap(),
        "on lvm thin"
    );
    drop(mnt);
    let pool = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "data_percent",
            &format!("{vg}/pool"),
        ],
    );
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap();
    let used: f64 = pool["report"][0]["lv"][0]["data_percent"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        used > 0.0,
        "the thin pool shows no data after mkfs and a write"
    );
}

fn zfs_pool_dataset_snapshot_clone() {
    let zpool = ZfsPool::create(256 * MIB);
    let (pool, dir) = (zpool.name.clone(), &zpool.dir);
    let data_mnt = dir.path().join("data");
    let dataset = format!("{pool}/data");
    run(
        "zfs",
        &[
            "create",
            "-o",
            &format!("mountpoint={}", data_mnt.display()),
            &dataset,
        ],
    );
    fs::write(data_mnt.join("file"), "before snapshot").unwrap();
    run("zfs", &["snapshot", &format!("{dataset}@one")]);
    fs::write(data_mnt.join("file"), "after snapshot").unwrap();
    let clone_mnt = dir.path().join("clone");
    run(
        "zfs",
        &[
            "clone",
            "-o",
            &format!("mountpoint={}", clone_mnt.display()),
            &format!("{dataset}@one"),
            &format!("{pool}/clone"),
        ],
    );
    assert_eq!(
        fs::read_to_string(clone_mnt.join("file")).unwrap(),
        "before snapshot"
    );
    let origin = run(
        "zfs",
        &[
            "get",
            "-H",
            "-p",
            "-o",
            "value",
            "origin",
            &format!("{pool}/clone"),
        ],
    );
    assert_eq!(origin.trim(), format!("{dataset}@one"));
    let listing = run(
        "zfs",
        &["list", "-H", "-p", "-t", "all", "-o", "name", "-r", &pool],
    );
    for name in [
        dataset.clone(),
        format!("{dataset}@one"),
        format!("{pool}/clone"),
    ] {
        assert!(
            listing.lines().any(|l| l == name),
            "{name} missing from:\n{listing}"
        );
    }
}

fn cgroup_v2_boot_shows_unified_hierarchy() {
    let root = Path::new("/sys/fs/cgroup");
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    for wanted in ["cpu", "memory", "pids", "io", "cpuset"] {
        assert!(
            controllers.split_whitespace().any(|c| c == wanted),
            "{wanted} missing from {controllers:?}"
        );
    }
    // No v1 hierarchy is mounted anywhere.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(" - cgroup ")),
        "{mounts}"
    );
    fs::write(root.join("cgroup.subtree_control"), "+pids +memory").unwrap();
    let child = root.join(unique_name("cg"));
    fs::create_dir(&child).unwrap();
    fs::write(child.join("pids.max"), "7").unwrap();
    assert_eq!(
        fs::read_to_string(child.join("pids.max")).unwrap().trim(),
        "7"
    );
    fs::write(child.join("memory.max"), "67108864").unwrap();
    assert_eq!(
        fs::read_to_string(child.join("memory.max")).unwrap().trim(),
        "67108864"
    );
    fs::remove_dir(&child).unwrap();
}

fn cgroup_v1_boot_shows_controller_hierarchies() {
    let root = Path::new("/sys/fs/cgroup");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(" - cgroup2 ")),
        "cgroup2 is mounted on a v1 boot:\n{mounts}"
    );
    // Each controller has its own hierarchy; a child cgroup in each takes a limit.
    let limits = [
        ("memory", "memory.limit_in_bytes", "67108864"),
        ("pids", "pids.max", "7"),
        ("cpu,cpuacct", "cpu.cfs_quota_us", "50000"),
        ("cpu", "cpu.shares", "512"),
        // Weights need BFQ; throttles work on any block device (loop0 is 7:0).
        ("blkio", "blkio.throttle.read_bps_device", "7:0 1048576"),
        ("cpuset", "cpuset.cpus", "0"),
    ];
    for (controller, file, value) in limits {
        let child = root.join(controller).join(unique_name("cg"));
        fs::create_dir(&child).unwrap_or_else(|e| panic!("mkdir {}: {e}", child.display()));
        fs::write(child.join(file), value)
            .unwrap_or_else(|e| panic!("write {value} to {controller}/{file}: {e}"));
        assert_eq!(
            fs::read_to_string(child.join(file)).unwrap().trim(),
            value,
            "{controller}/{file}"
        );
        fs::remove_dir(&child).unwrap();
    }
    assert!(root.join("freezer/tasks").exists(), "no freezer hierarchy");
}
