//! Pools for other engines, through the real binary in the VM (real lvm2,
//! real containerd): a direct-lvm pool made `--for containerd` and written
//! into containerd's config, which Debian's containerd then uses through
//! its devmapper snapshotter while `thinbox pool monitor` grows the pool
//! under a container filling it; `pool extend` to a size and by one on
//! both pool kinds; and each device `pool create --lvm` cannot use, refused
//! in one line with nothing made.
#![forbid(unsafe_code)]

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use cli_support::{busybox_spec, disks, sigterm, Containerd, Reap, Root, VgGuard};
use integration::fixtures::{run, try_run, unique_name};
use integration::harness::{self, KernelTest};
use integration::need::Need;
use snapshotter::image::write;

const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new(
            "containerd_runs_on_a_lent_lvm_pool",
            containerd_runs_on_a_lent_lvm_pool,
        )
        .needs(&[Need::Root, Need::Lvm, Need::Disks(1)])
        .timeout(Duration::from_secs(900)),
        KernelTest::new(
            "hand_over_a_pool_to_docker_and_back",
            hand_over_a_pool_to_docker_and_back,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        KernelTest::new("extend_loopback_to_and_by", extend_loopback_to_and_by).needs(&[
            Need::Root,
            Need::Loop,
            Need::DmThin,
        ]),
        // lvm2 under TCG makes it 35 s; the sizes' parsing and checks are
        // the loopback test's, lvextend is thinpool's sigkill_during_resize_lvm.
        KernelTest::new("extend_lvm_to_and_by", extend_lvm_to_and_by)
            .needs(&[Need::Root, Need::Lvm, Need::Disks(1)])
            .not_in_smoke("extend_loopback_to_and_by"),
        KernelTest::new(
            "unusable_devices_get_one_line",
            unusable_devices_get_one_line,
        )
        .needs(&[Need::Root, Need::Lvm, Need::Disks(2)]),
    ])
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn lv_bytes(vg: &str, lv: &str) -> u64 {
    let out = run(
        "lvs",
        &[
            "--noheadings",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_size",
            &format!("{vg}/{lv}"),
        ],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("lvs size {out:?}: {e}"))
}

fn containerd_runs_on_a_lent_lvm_pool() {
    let disk = disks().remove(0);
    let root = Root::new();
    let name = unique_name("ctd");
    let vg = unique_name("vg").replace('-', "_");
    let _guard = VgGuard {
        vg: vg.clone(),
        disks: vec![disk.clone()],
    };
    // containerd kept wholly inside the test's directory: the guest's
    // root is read-only, and the node's other settings must survive.
    let ctd = root.path().join("containerd");
    std::fs::create_dir_all(&ctd).unwrap();
    let cfg = ctd.join("config.toml");
    let sock = ctd.join("containerd.sock");
    let original = format!(
        r#"# the node's containerd
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
        d = ctd.display(),
        sock = sock.display()
    );
    std::fs::write(&cfg, &original).unwrap();

    let out = root.json(&[
        "pool",
        "create",
        "--name",
        &name,
        "--lvm",
        &disk,
        "--vg",
        &vg,
        "--data-percent",
        "5",
        "--metadata-percent",
        "1",
        "--for",
        "containerd",
        "--write",
        "--config-file",
        s(&cfg),
        "--base-size",
        "1G",
        "--root-path",
        s(&ctd.join("devmapper")),
        "--autoextend-threshold",
        "60",
    ]);
    let st = &out["status"];
    let h = &out["hand_over"];
    assert_eq!(st["lent_to"], "containerd", "{out}");
    assert_eq!(
        st["no_space_policy"], "queue_if_no_space",
        "writes wait for the monitor: {out}"
    );
    assert_eq!(h["written"], true, "{out}");
    let backup = PathBuf::from(h["backup"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), original);
    let merged: toml::Value = toml::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    let dm = &merged["plugins"]["io.containerd.snapshotter.v1.devmapper"];
    let dm_name = st["dm_name"].as_str().unwrap().to_owned();
    assert_eq!(dm["pool_name"].as_str(), Some(dm_name.as_str()), "{merged}");
    assert_eq!(dm["base_image_size"].as_str(), Some("1GB"));
    assert_eq!(merged["grpc"]["address"].as_str(), Some(s(&sock)), "kept");
    assert_eq!(
        merged["disabled_plugins"].as_array().unwrap().len(),
        4,
        "kept"
    );

    // thinbox makes no thin devices in a lent pool.
    let own = Root::with_config(&format!(
        "backend = \"devmapper\"\n[devmapper]\npool_name = \"{name}\"\n"
    ));
    let _ = std::fs::remove_dir(own.path().join("pools"));
    std::os::unix::fs::symlink(root.path().join("pools"), own.path().join("pools")).unwrap();
    let line = own.fails(&["snapshot", "prepare", "x"], 4);
    assert!(line.contains("lent to containerd"), "{line}");
    std::fs::remove_file(own.path().join("pools")).unwrap();
    let line = root.fails(&["pool", "destroy", &name], 4);
    assert!(line.contains("--force"), "{line}");

    // Debian's containerd on the written config. Without udev in the
    // guest, libdevmapper makes the nodes itself.
    let containerd = Containerd::start_on(&ctd, &sock, &cfg);
    let ctr = |args: &[&str]| containerd.ctr(args);
    let log_text = || containerd.log();
    let (ok, plugins) = ctr(&["plugins", "ls"]);
    assert!(ok, "{plugins}");
    let devmapper = plugins
        .lines()
        .find(|l| l.contains("devmapper"))
        .unwrap_or_default();
    assert!(
        devmapper.trim_end().ends_with("ok"),
        "devmapper plugin: {plugins}\n{}",
        log_text()
    );

    let image = "docker.io/library/busybox:latest";
    let tar = ctd.join("busybox.tar");
    write::docker_tar(&busybox_spec(image), &tar).unwrap();
    let (ok, o) = ctr(&["images", "import", "--snapshotter", "devmapper", s(&tar)]);
    assert!(ok, "ctr images import: {o}\n{}", log_text());

    let before = root.json(&["pool", "status", &name]);
    let total = before["data"]["total_bytes"].as_u64().unwrap();
    let lv_before = lv_bytes(&vg, &name);
    let monitor = Reap(
        root.command(&["--json", "pool", "monitor", &name, "--interval", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // lvm2 set the low-water mark from the profile (60%: 40% free).
    let blocks = before["data"]["total_blocks"].as_u64().unwrap();
    let started = Instant::now();
    while root.json(&["pool", "status", &name])["low_water_mark"].as_u64()
        != Some(blocks * 40 / 100)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "low-water mark never set"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A container writes half as much again as the pool holds: without the
    // monitor its writes would wait for space until dm-thin gave up. Its
    // writes go straight to the device (O_DIRECT), into a headroom of 40%:
    // under TCG a buffered writer fills 20% of the pool before any lvextend
    // can end, and an lvextend of a pool already out of space with writes
    // queued waits in suspend until dm-thin's no_space_timeout fails them
    // (docs/design.md, direct-lvm).
    let count = total * 3 / 2 / MIB;
    let (ok, o) = ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "devmapper",
        image,
        &unique_name("fill"),
        "sh",
        "-c",
        &format!("dd if=/dev/zero of=/fill bs=1M count={count} oflag=direct conv=fsync 2>&1 && ls -l /fill && echo filled"),
    ]);
    assert!(ok && o.contains("filled"), "ctr run: {o}\n{}", log_text());
    assert!(o.contains(&(count * MIB).to_string()), "{o}");
    let after = root.json(&["pool", "status", &name]);
    assert_eq!(after["mode"], "rw", "{after}");
    assert!(
        after["data"]["total_bytes"].as_u64().unwrap() >= total * 3 / 2,
        "{after}"
    );
    assert!(lv_bytes(&vg, &name) > lv_before, "lvextend grew the LV");

    sigterm(&monitor.0);
    let mut monitor = monitor;
    let status = monitor.0.wait().unwrap();
    let mut text = String::new();
    use std::io::Read;
    monitor
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(status.success(), "monitor: {status:?} {text}");
    let grew = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["extended_data_to"].is_u64())
        .count();
    assert!(grew >= 1, "{text}");

    containerd.stop();
    // The engine's thin devices go with a forced destroy.
    root.ok(&["pool", "destroy", &name, "--force"]);
    assert!(!try_run("vgs", &[&vg]), "volume group removed");
    let left = run("dmsetup", &["ls"]);
    assert!(!left.contains(&dm_name), "{left}");
}

/// A loopback pool of 256 MiB data, 64 MiB metadata.
fn small_pool(root: &Root, name: &str) {
    root.ok(&[
        "pool",
        "create",
        "--name",
        name,
        "--data-size",
        "256M",
        "--metadata-size",
        "64M",
    ]);
}

fn hand_over_a_pool_to_docker_and_back() {
    let root = Root::new();
    let name = unique_name("dock");
    small_pool(&root, &name);
    // thinbox's own thin devices (a root's snapshotter on the pool) keep it thinbox's.
    let busy = unique_name("busy");
    small_pool(&root, &busy);
    let own = Root::with_config(&format!(
        "backend = \"devmapper\"\n[devmapper]\npool_name = \"{busy}\"\nbase_size = \"64M\"\n"
    ));
    let _ = std::fs::remove_dir(own.path().join("pools"));
    std::os::unix::fs::symlink(root.path().join("pools"), own.path().join("pools")).unwrap();
    own.ok(&["snapshot", "prepare", "mine"]);
    let line = root.fails(&["pool", "hand-over", &busy, "--to", "docker"], 4);
    assert!(line.contains("of thinbox's thin devices"), "{line}");
    assert!(root.json(&["pool", "status", &busy])["lent_to"].is_null());
    own.ok(&["snapshot", "rm", "mine"]);
    std::fs::remove_file(own.path().join("backend.toml")).unwrap();
    std::fs::remove_file(own.path().join("pools")).unwrap();
    root.ok(&["pool", "destroy", &busy]);

    let file = root.path().join("daemon.json");
    std::fs::write(
        &file,
        "{\"log-driver\": \"journald\", \"storage-opts\": [\"dm.basesize=20G\"]}\n",
    )
    .unwrap();
    // Without --write the settings are printed and the file is left.
    let out = root.ok(&[
        "pool",
        "hand-over",
        &name,
        "--to",
        "docker",
        "--config-file",
        s(&file),
    ]);
    assert!(
        out.contains(&format!("dm.thinpooldev=/dev/mapper/{name}")),
        "{out}"
    );
    assert!(out.contains("--write"), "{out}");
    assert!(!std::fs::read_to_string(&file)
        .unwrap()
        .contains("devicemapper"));
    let h = root.json(&[
        "pool",
        "hand-over",
        &name,
        "--to",
        "docker",
        "--write",
        "--config-file",
        s(&file),
    ]);
    assert_eq!(h["written"], true, "{h}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["storage-driver"], "devicemapper");
    assert_eq!(v["log-driver"], "journald");
    assert_eq!(v["storage-opts"][0], "dm.basesize=20G");
    assert_eq!(
        v["storage-opts"][1],
        format!("dm.thinpooldev=/dev/mapper/{name}")
    );
    assert!(PathBuf::from(h["backup"].as_str().unwrap()).exists());
    assert_eq!(root.json(&["pool", "status", &name])["lent_to"], "docker");
    let text = root.ok(&["pool", "status", &name]);
    assert!(text.contains("lent to:              docker"), "{text}");
    // Back to thinbox: the pool is empty, so it is.
    let h = root.json(&["pool", "hand-over", &name, "--to", "thinbox"]);
    assert!(h["lent_to"].is_null(), "{h}");
    assert!(root.json(&["pool", "status", &name])["lent_to"].is_null());
    root.ok(&["pool", "destroy", &name]);
}

fn extend_loopback_to_and_by() {
    let root = Root::new();
    let name = unique_name("grow");
    small_pool(&root, &name);
    let data = || {
        root.json(&["pool", "status", &name])["data"]["total_bytes"]
            .as_u64()
            .unwrap()
    };
    let meta_file = root.path().join("pools").join(&name).join("metadata");
    let x = root.json(&["pool", "extend", &name, "--data", "384M"]);
    assert_eq!(x["extension"]["data_before"], 256 * MIB, "{x}");
    assert_eq!(x["extension"]["data_after"], 384 * MIB, "{x}");
    assert_eq!(data(), 384 * MIB);
    root.ok(&[
        "pool",
        "extend",
        &name,
        "--data",
        "+128M",
        "--metadata",
        "+8M",
    ]);
    assert_eq!(data(), 512 * MIB);
    assert_eq!(std::fs::metadata(&meta_file).unwrap().len(), 72 * MIB);
    let line = root.fails(&["pool", "extend", &name, "--data", "100M"], 2);
    assert!(
        line.contains("only grow") && line.contains("+SIZE"),
        "{line}"
    );
    let r = root.run(&["pool", "extend", &name, "--data", "+x"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("+x") && r.stderr.contains("size"),
        "{r:?}"
    );
    assert_eq!(data(), 512 * MIB, "nothing changed");
    root.ok(&["pool", "destroy", &name]);
}

fn extend_lvm_to_and_by() {
    let disk = disks().remove(0);
    let root = Root::new();
    let name = unique_name("grow");
    let vg = unique_name("vg").replace('-', "_");
    let _guard = VgGuard {
        vg: vg.clone(),
        disks: vec![disk.clone()],
    };
    root.ok(&[
        "pool",
        "create",
        "--name",
        &name,
        "--lvm",
        &disk,
        "--vg",
        &vg,
        "--data-percent",
        "10",
        "--metadata-percent",
        "1",
        "--force",
    ]);
    let status = || root.json(&["pool", "status", &name]);
    let data0 = status()["data"]["total_bytes"].as_u64().unwrap();
    let lv0 = lv_bytes(&vg, &name);
    let x = root.json(&["pool", "extend", &name, "--data", "+256M"]);
    assert_eq!(x["extension"]["data_after"], data0 + 256 * MIB, "{x}");
    assert_eq!(status()["data"]["total_bytes"], data0 + 256 * MIB);
    assert_eq!(lv_bytes(&vg, &name), lv0 + 256 * MIB);
    let to = (data0 + 512 * MIB).to_string();
    root.ok(&["pool", "extend", &name, "--data", &to]);
    assert_eq!(status()["data"]["total_bytes"], data0 + 512 * MIB);
    let meta0 = status()["metadata"]["total_bytes"].as_u64().unwrap();
    let x = root.json(&["pool", "extend", &name, "--metadata", "+8M"]);
    assert!(
        x["extension"]["metadata_after"].as_u64().unwrap() >= meta0 + 8 * MIB,
        "{x}"
    );
    assert!(status()["metadata"]["total_bytes"].as_u64().unwrap() >= meta0 + 8 * MIB);
    // More than the VG has: the figures, and nothing changed.
    let line = root.fails(&["pool", "extend", &name, "--data", "+64G"], 7);
    assert!(
        line.contains(&vg) && line.contains("free") && line.contains("vgextend"),
        "{line}"
    );
    assert_eq!(status()["data"]["total_bytes"], data0 + 512 * MIB);
    root.ok(&["pool", "destroy", &name]);
}

fn unusable_devices_get_one_line() {
    let d = disks();
    let (spare, other) = (d[0].clone(), d[1].clone());
    let root = Root::new();
    let name = unique_name("bad");
    let vg = unique_name("vg").replace('-', "_");
    let _guard = VgGuard {
        vg: vg.clone(),
        disks: vec![spare.clone(), other.clone()],
    };
    let create = |dev: &str, code: i32| {
        let line = root.fails(
            &["pool", "create", "--name", &name, "--lvm", dev, "--vg", &vg],
            code,
        );
        assert!(line.contains(dev), "names the device: {line}");
        assert!(!try_run("vgs", &[&vg]), "no VG made for {dev}");
        assert!(
            !root.path().join("pools").join(&name).exists(),
            "no record for {dev}"
        );
        line
    };
    let line = create("/dev/vdz", 3);
    assert!(
        line.contains("does not exist") && line.contains("lsblk"),
        "{line}"
    );
    let file = root.path().join("disk.img");
    std::fs::write(&file, b"").unwrap();
    let line = create(s(&file), 2);
    assert!(
        line.contains("regular file") && line.contains("loopback"),
        "{line}"
    );
    let line = create(s(root.path()), 2);
    assert!(line.contains("a directory"), "{line}");

    // Mounted.
    run("mkfs.ext4", &["-q", "-F", &other]);
    let mnt = root.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run("mount", &[&other, s(&mnt)]);
    let line = create(&other, 4);
    assert!(
        line.contains("mounted on") && line.contains(s(&mnt)) && line.contains("unmount"),
        "{line}"
    );
    run("umount", &[s(&mnt)]);
    run("wipefs", &["-a", &other]);

    // A PV of another VG.
    let theirs = unique_name("theirs").replace('-', "_");
    run("vgcreate", &[&theirs, &other]);
    let line = create(&other, 4);
    assert!(
        line.contains(&format!("volume group {theirs}")) && line.contains("vgreduce"),
        "{line}"
    );
    assert!(try_run("vgs", &[&theirs]), "their VG is left alone");
    run("vgremove", &["-f", &theirs]);
    run("pvremove", &["-y", &other]);

    // Held by a dm device.
    let held = unique_name("held");
    run(
        "dmsetup",
        &["create", &held, "--table", &format!("0 8 linear {other} 0")],
    );
    let line = create(&other, 4);
    assert!(
        line.contains(&format!("dm device {held}")) && line.contains("dmsetup remove"),
        "{line}"
    );
    run("dmsetup", &["remove", &held]);

    // With every reason gone, the same spare disk makes a pool.
    root.ok(&[
        "pool", "create", "--name", &name, "--lvm", &spare, "--vg", &vg, "--force",
    ]);
    root.ok(&["pool", "destroy", &name]);
}
