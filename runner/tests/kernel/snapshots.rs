//! Containers whose root is a snapshot of each kind thinbox manages, made
//! with the system tools (runner does not depend on thinpool or
//! snapshotter).

use super::*;

/// Runs a container on `root` (optionally throttled on `device`): it sees
/// itself as pid 1 and its writes land in `root` only. With a device, 3 MiB
/// of direct writes under a 1 MiB/s throttle take at least 1.5 s (a lower
/// bound the kernel enforces) and the throttle is in the cgroup.
pub(super) fn container_on(root: &std::path::Path, device: Option<DevNum>) -> String {
    let mut b = builder_on(root, "snap").timeout(Duration::from_secs(120));
    if let Some(d) = device {
        b = b
            .root_device(d)
            .root_throttle(ThrottleKind::WriteBps, 1 << 20);
    }
    let script = match device {
        Some(_) => "echo pid=$$ >/out/log; echo in-container > /written; \
                    dd if=/dev/zero of=/data bs=64k count=48 oflag=direct 2>>/out/log; echo dd=$? >>/out/log",
        None => "echo pid=$$ >/out/log; echo in-container > /written",
    };
    let container = start(b, &["/bin/sh", "-c", script]);
    if let Some(d) = device {
        let dirs = container.cgroup_dirs();
        let throttle = dirs
            .iter()
            .flat_map(|dir| ["io.max", "blkio.throttle.write_bps_device"].map(|f| dir.join(f)))
            .find(|f| f.exists())
            .expect("a throttle file");
        let text = fs::read_to_string(&throttle).unwrap();
        assert!(text.contains(&format!("{d} ")), "{d} not throttled: {text}");
    }
    let start = std::time::Instant::now();
    let report = container.wait().unwrap();
    let took = start.elapsed();
    let log = fs::read_to_string(root.join("out/log")).unwrap_or_default();
    assert_eq!(report.exit_code, 0, "{report:?} {log}");
    assert!(log.starts_with("pid=1"), "{log}");
    assert_eq!(
        fs::read_to_string(root.join("written")).unwrap(),
        "in-container\n"
    );
    if device.is_some() {
        assert!(log.contains("dd=0"), "{log}");
        assert!(
            took >= Duration::from_millis(1500),
            "3 MiB under 1 MiB/s took {took:?}"
        );
    }
    assert_clean(&report);
    log
}

pub(super) fn container_on_a_btrfs_snapshot() {
    use integration::fixtures::{run, sparse_file, LoopDevice, Mount};
    let dir = temp_dir();
    let image = dir.path().join("btrfs.img");
    sparse_file(&image, 256 << 20);
    let dev = LoopDevice::attach(&image);
    run("mkfs.btrfs", &["-q", "-f", dev.as_str()]);
    let mnt = Mount::new(dev.as_str(), &dir.path().join("mnt"), Some("btrfs"), "");
    let base = mnt.target.join("base");
    let snap = mnt.target.join("snap");
    run("btrfs", &["subvolume", "create", base.to_str().unwrap()]);
    fill_with_busybox(&base);
    run(
        "btrfs",
        &[
            "subvolume",
            "snapshot",
            base.to_str().unwrap(),
            snap.to_str().unwrap(),
        ],
    );
    container_on(&snap, Some(device_number(&dev.path)));
    assert!(
        !base.join("written").exists(),
        "the write reached the origin subvolume"
    );
}

pub(super) fn container_on_a_dm_thin_snapshot() {
    use integration::fixtures::{run, sparse_file, try_run, LoopDevice, Mount};
    struct Dm(Vec<String>);
    impl Drop for Dm {
        fn drop(&mut self) {
            for n in self.0.iter().rev() {
                try_run("dmsetup", &["remove", "--force", n]);
            }
        }
    }
    let dir = temp_dir();
    let (meta_f, data_f) = (dir.path().join("meta"), dir.path().join("data"));
    sparse_file(&meta_f, 16 << 20);
    sparse_file(&data_f, 256 << 20);
    let meta = LoopDevice::attach(&meta_f);
    let data = LoopDevice::attach(&data_f);
    let (pool, origin, snap) = (
        unique_name("pool"),
        unique_name("origin"),
        unique_name("snap"),
    );
    let mut dm = Dm(vec![]);
    let table = format!(
        "0 {} thin-pool {} {} 128 1024 1 skip_block_zeroing",
        (256u64 << 20) / 512,
        meta.as_str(),
        data.as_str()
    );
    run("dmsetup", &["create", &pool, "--table", &table]);
    dm.0.push(pool.clone());
    run("dmsetup", &["mknodes"]);
    run("dmsetup", &["message", &pool, "0", "create_thin 0"]);
    let thin = |id: u32| format!("0 {} thin /dev/mapper/{pool} {id}", (128u64 << 20) / 512);
    run("dmsetup", &["create", &origin, "--table", &thin(0)]);
    dm.0.push(origin.clone());
    run("dmsetup", &["mknodes"]);
    let origin_dev = format!("/dev/mapper/{origin}");
    run("mkfs.ext4", &["-q", "-E", "nodiscard", &origin_dev]);
    {
        let m = Mount::new(&origin_dev, &dir.path().join("origin"), Some("ext4"), "");
        fill_with_busybox(&m.target);
        run("sync", &[]);
    }
    // Snapshot an active origin: suspend it so its pending writes are flushed first.
    run("dmsetup", &["suspend", &origin]);
    let made = try_run("dmsetup", &["message", &pool, "0", "create_snap 1 0"]);
    run("dmsetup", &["resume", &origin]);
    assert!(made, "create_snap failed");
    run("dmsetup", &["create", &snap, "--table", &thin(1)]);
    dm.0.push(snap.clone());
    run("dmsetup", &["mknodes"]);
    let snap_dev = std::path::PathBuf::from(format!("/dev/mapper/{snap}"));
    let device = device_number(&snap_dev);
    assert_eq!(
        device.major,
        device_number(std::path::Path::new(&origin_dev)).major,
        "both are dm devices"
    );
    {
        let m = Mount::new(
            snap_dev.to_str().unwrap(),
            &dir.path().join("snap"),
            Some("ext4"),
            "",
        );
        // The throttle goes on the thin snapshot device itself, not the pool's disks.
        container_on(&m.target, Some(device));
    }
    let m = Mount::new(&origin_dev, &dir.path().join("origin"), Some("ext4"), "ro");
    assert!(
        !m.target.join("written").exists(),
        "the write reached the origin"
    );
}

pub(super) fn container_on_a_zfs_clone() {
    use integration::fixtures::{run, ZfsPool};
    let zpool = ZfsPool::create(256 << 20);
    let (pool, dir) = (zpool.name.clone(), &zpool.dir);
    let base_mnt = dir.path().join("base");
    run(
        "zfs",
        &[
            "create",
            "-o",
            &format!("mountpoint={}", base_mnt.display()),
            &format!("{pool}/base"),
        ],
    );
    fill_with_busybox(&base_mnt);
    run("zfs", &["snapshot", &format!("{pool}/base@one")]);
    let clone_mnt = dir.path().join("clone");
    run(
        "zfs",
        &[
            "clone",
            "-o",
            &format!("mountpoint={}", clone_mnt.display()),
            &format!("{pool}/base@one"),
            &format!("{pool}/clone"),
        ],
    );
    container_on(&clone_mnt, None);
    assert!(
        !base_mnt.join("written").exists(),
        "the write reached the origin dataset"
    );
}
