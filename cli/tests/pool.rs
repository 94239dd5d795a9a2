//! `thinbox pool ...` through the real binary, in the VM (dm-thin, LVM):
//! loopback create/status/extend/check/monitor/destroy, bad sizes (one
//! line, non-zero, nothing left), direct-lvm on a virtio disk, adopting a
//! pool made with dmsetup, and the ZFS backend running snapshot commands.
#![forbid(unsafe_code)]

mod cli_support;

use std::process::ExitCode;

use cli_support::{disks, dm_devices, loops_under, serve_args, sigterm, Root, VgGuard};
use integration::fixtures::{run, sparse_file, try_run, unique_name, LoopDevice, ZfsPool};
use integration::harness::{self, KernelTest};
use integration::need::Need;

const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    let mut tests = [
        KernelTest::new(
            "monitor_follows_dm_events_and_stops_on_sigterm",
            monitor_follows_dm_events_and_stops_on_sigterm,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        KernelTest::new("serve_keeps_its_pools_grown", serve_keeps_its_pools_grown).needs(&[
            Need::Root,
            Need::Loop,
            Need::DmThin,
        ]),
        KernelTest::new("loopback_pool_lifecycle", loopback_pool_lifecycle).needs(&[
            Need::Root,
            Need::Loop,
            Need::DmThin,
        ]),
        KernelTest::new("bad_pool_sizes_leave_nothing", bad_pool_sizes_leave_nothing).needs(&[
            Need::Root,
            Need::Loop,
            Need::DmThin,
        ]),
        KernelTest::new(
            "create_killed_midway_is_undone",
            create_killed_midway_is_undone,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        KernelTest::new(
            "monitor_grows_the_default_pool",
            monitor_grows_the_default_pool,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        KernelTest::new(
            "repair_restores_a_pool_with_damaged_metadata",
            repair_restores_a_pool_with_damaged_metadata,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        KernelTest::new("lvm_pool_on_a_virtio_disk", lvm_pool_on_a_virtio_disk).needs(&[
            Need::Root,
            Need::Lvm,
            Need::Disks(1),
        ]),
        KernelTest::new("adopt_a_dmsetup_pool", adopt_a_dmsetup_pool).needs(&[
            Need::Root,
            Need::Loop,
            Need::DmThin,
        ]),
        KernelTest::new(
            "zfs_backend_runs_snapshot_commands",
            zfs_backend_runs_snapshot_commands,
        )
        .needs(&[Need::Root, Need::Zfs]),
    ];
    // A pool's life, its growth by the monitor, a create killed midway and a
    // direct-lvm pool on every kernel of the matrix.
    harness::in_kernel_matrix(
        &mut tests,
        &[
            "loopback_pool_lifecycle",
            "monitor_follows_dm_events_and_stops_on_sigterm",
            "create_killed_midway_is_undone",
            "lvm_pool_on_a_virtio_disk",
        ],
    );
    harness::main(&tests)
}

/// `thinbox serve` monitors its root's pool as `pool monitor` would, a
/// second monitor is refused while it does, and with `--no-monitor` a
/// `pool monitor` beside the daemon opens the pool the daemon holds.
fn serve_keeps_its_pools_grown() {
    let root = Root::with_config(
        "[devmapper]\ndata_size = \"256M\"\nmetadata_size = \"64M\"\nbase_size = \"1G\"\nautoextend_threshold = 50\nautoextend_percent = 50\n",
    );
    root.ok(&["snapshot", "ls"]);
    let pool = format!(
        "{}-pool",
        root.path().file_name().unwrap().to_string_lossy()
    );
    let socket = root.path().join("serve.sock");
    let daemon = serve_args(&root, &socket, &[], &[]);
    let wait_for = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        for _ in 0..600 {
            let st = root.json(&["pool", "status", &pool]);
            if f(&st) {
                return st;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "{what} never happened: {}",
            root.json(&["pool", "status", &pool])
        );
    };
    // The daemon's monitor sets the low-water mark from the threshold.
    wait_for("low-water mark set", &|st| st["low_water_mark"] == 2048);
    let second = root
        .command(&["pool", "monitor", &pool, "--once"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second monitor ran: {second:?}");
    assert!(
        err.contains("already monitored by another process") && err.contains("serve"),
        "{err}"
    );
    // The CLI writes beside the daemon; the daemon's monitor grows the pool.
    let mnt = root.path().join("mnt");
    root.ok(&["snapshot", "prepare", "a", "--mount", mnt.to_str().unwrap()]);
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", mnt.join("fill").display()),
            "bs=1M",
            "count=160",
            "conv=fsync",
        ],
    );
    let st = wait_for("autoextend", &|st| {
        st["data"]["total_bytes"].as_u64() >= Some(384 * MIB)
    });
    assert_eq!(st["mode"], "rw", "{st}");
    run("umount", &[mnt.to_str().unwrap()]);
    sigterm(&daemon.0);
    let mut daemon = daemon;
    let status = daemon.0.wait().unwrap();
    let log = std::fs::read_to_string(root.path().join("serve.log")).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains(&format!("extended pool {pool}'s data to")),
        "{log}"
    );
    // Without its monitor the daemon leaves the pool to `pool monitor`,
    // which opens it beside the daemon (once waited for it to stop).
    let daemon = serve_args(&root, &socket, &[], &["--no-monitor"]);
    let once = root.json(&["pool", "monitor", &pool, "--once"]);
    assert_eq!(once["status"]["mode"], "rw", "{once}");
    root.ok(&["snapshot", "rm", "a"]);
    drop(daemon);
}

fn dm_exists(name: &str) -> bool {
    try_run("dmsetup", &["info", name])
}

/// Nothing of pool `name` is left under `root` or in the kernel.
#[track_caller]
fn nothing_left(root: &Root, name: &str) {
    assert!(!dm_exists(name), "dm device {name} left");
    assert!(dm_devices(name).is_empty(), "{:?}", dm_devices(name));
    assert!(
        !root.path().join("pools").join(name).exists(),
        "pool dir left"
    );
    assert!(
        loops_under(root.path()).is_empty(),
        "{:?}",
        loops_under(root.path())
    );
}

fn loopback_pool_lifecycle() {
    let root = Root::new();
    let name = unique_name("pool");
    let r = root.json(&[
        "pool",
        "create",
        "--name",
        &name,
        "--data-size",
        "256M",
        "--metadata-size",
        "64M",
        "--skip-block-zeroing",
        "--free-space-floor",
        "5",
    ]);
    assert_eq!(r["name"], name.as_str(), "{r}");
    assert_eq!(r["kind"], "loopback", "{r}");
    assert_eq!(r["mode"], "rw", "{r}");
    assert_eq!(r["active"], true, "{r}");
    assert_eq!(r["data"]["total_bytes"], 256 * MIB, "{r}");
    assert_eq!(r["data"]["total_blocks"], 256 * MIB / 65536, "{r}");
    assert_eq!(r["metadata"]["total_bytes"], 64 * MIB, "{r}");
    assert_eq!(r["block_size"], 65536, "{r}");
    assert_eq!(r["no_space_policy"], "error_if_no_space", "{r}");
    assert_eq!(r["autoextend_threshold"], 80, "{r}");
    assert_eq!(r["free_space_floor"], 5, "{r}");
    // Low-water mark from the threshold: 20% of the blocks free.
    assert_eq!(r["low_water_mark"], 4096 / 5, "{r}");
    let table = run("dmsetup", &["table", &name]);
    assert!(table.contains("skip_block_zeroing"), "{table}");
    assert!(root
        .path()
        .join("pools")
        .join(&name)
        .join("pool.toml")
        .exists());

    // The same name again is refused and the pool is untouched.
    let line = root.fails(
        &[
            "pool",
            "create",
            "--name",
            &name,
            "--data-size",
            "128M",
            "--metadata-size",
            "64M",
        ],
        4,
    );
    assert!(line.contains("already exists"), "{line}");
    assert!(dm_exists(&name));

    let all = root.json(&["pool", "status"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let human = root.ok(&["pool", "status", &name]);
    assert!(
        human.contains("low-water mark") && human.contains("free-space floor"),
        "{human}"
    );

    // Extend data and metadata.
    let r = root.json(&["pool", "extend", &name, "--data", "512M"]);
    assert_eq!(r["data"]["total_bytes"], 512 * MIB, "{r}");
    let r = root.json(&["pool", "extend", &name, "--metadata", "96M"]);
    assert_eq!(r["metadata"]["total_bytes"], 96 * MIB, "{r}");
    let line = root.fails(&["pool", "extend", &name, "--data", "600008K"], 2);
    assert!(line.contains("multiple"), "{line}");
    let line = root.fails(&["pool", "extend", &name, "--data", "128M"], 2);
    assert!(line.contains("pools only grow"), "{line}");
    root.fails(&["pool", "extend", &name], 2);
    assert_eq!(
        root.json(&["pool", "status", &name])["data"]["total_bytes"],
        512 * MIB
    );

    // Check on a metadata snapshot of the live pool.
    let c = root.json(&["pool", "check", &name]);
    assert_eq!(c["metadata"], "ok", "{c}");

    // Monitor once: nothing to grow at 0% used.
    let out = root.ok(&["--json", "pool", "monitor", &name, "--once"]);
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(m["extended_data_to"], serde_json::Value::Null, "{m}");

    // Unknown pools.
    root.fails(&["pool", "status", "thinbox-test-nope"], 3);
    root.fails(&["pool", "check", "thinbox-test-nope"], 3);
    root.fails(&["pool", "destroy", "thinbox-test-nope"], 3);

    let d = root.json(&["pool", "destroy", &name]);
    assert_eq!(d["destroyed"], true, "{d}");
    nothing_left(&root, &name);
    root.fails(&["pool", "status", &name], 3);
}

fn bad_pool_sizes_leave_nothing() {
    let root = Root::new();
    let name = unique_name("pool");
    for (args, code, says) in [
        (
            &["--data-size", "1000K"][..],
            2,
            "multiple of the block size",
        ),
        (&["--block-size", "32K"], 2, "block size"),
        (&["--block-size", "96K"], 2, "multiple of 64 KiB"),
        (&["--block-size", "2G"], 2, "1 GiB"),
        (
            &["--data-size", "100G", "--metadata-size", "1M"],
            2,
            "too small",
        ),
        (&["--data-size", "0"], 2, "too small"),
        (&["--data-size", "12X"], 2, "12X"),
    ] {
        let mut a = vec!["pool", "create", "--name", &name];
        a.extend_from_slice(args);
        if !args.contains(&"--metadata-size") {
            a.extend(["--metadata-size", "16M"]);
        }
        let r = root.run(&a);
        assert_eq!(r.code, code, "{a:?}: {r:?}");
        let first = r.stderr.lines().next().unwrap_or_default();
        assert!(r.stderr.contains(says), "{a:?}: {r:?}");
        if first.starts_with("thinbox: ") {
            assert_eq!(r.stderr.lines().count(), 1, "{a:?}: {r:?}");
        }
        nothing_left(&root, &name);
    }
    let line = root.fails(
        &["pool", "create", "--name", "bad/name", "--data-size", "64M"],
        2,
    );
    assert!(line.contains("bad/name"), "{line}");
}

fn monitor_grows_the_default_pool() {
    // The default dm-thin backend, with a threshold its base filesystem crosses.
    let root = Root::with_config(
        "[devmapper]\ndata_size = \"256M\"\nmetadata_size = \"64M\"\nbase_size = \"128M\"\nautoextend_threshold = 1\nautoextend_percent = 50\n",
    );
    root.ok(&["snapshot", "ls"]);
    let pool = format!(
        "{}-pool",
        root.path().file_name().unwrap().to_string_lossy()
    );
    let before = root.json(&["pool", "status", &pool]);
    assert!(
        before["data"]["used_blocks"].as_u64().unwrap() > 0,
        "{before}"
    );
    assert_eq!(before["autoextend_threshold"], 1, "{before}");
    let out = root.ok(&["--json", "pool", "monitor", &pool, "--once"]);
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(m["extended_data_to"], 384 * MIB, "{m}");
    assert_eq!(m["status"]["data"]["total_bytes"], 384 * MIB, "{m}");
    // The snapshotter still works on the grown pool, and opening it grows
    // it again past the (silly) 1% threshold, as the monitor would.
    root.ok(&["snapshot", "prepare", "a"]);
    let after = root.json(&["pool", "status", &pool]);
    assert_eq!(after["data"]["total_bytes"], 576 * MIB, "{after}");
    root.ok(&["snapshot", "rm", "a"]);
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn lvm_pool_on_a_virtio_disk() {
    let disk = disks().remove(0);
    let root = Root::new();
    let name = unique_name("lvm");
    let vg = unique_name("vg").replace('-', "_");
    let _guard = VgGuard {
        vg: vg.clone(),
        disks: vec![disk.clone()],
    };
    let create = |force: bool| {
        let mut a = vec![
            "pool",
            "create",
            "--name",
            &name,
            "--lvm",
            &disk,
            "--vg",
            &vg,
            "--data-percent",
            "50",
            "--metadata-percent",
            "2",
        ];
        if force {
            a.push("--force");
        }
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };

    // A disk holding a filesystem is refused, naming it; nothing is made.
    run("mkfs.ext4", &["-q", "-F", &disk]);
    let line = root.fails(&args(&create(false)), 4);
    assert!(line.contains("ext4") && line.contains("force"), "{line}");
    assert!(!try_run("vgs", &[&vg]));
    assert!(!root.path().join("pools").join(&name).exists());

    let r = root.json(&args(&create(true)));
    assert_eq!(r["kind"], "lvm", "{r}");
    assert_eq!(r["mode"], "rw", "{r}");
    assert_eq!(r["block_size"], 512 * 1024, "{r}");
    assert!(try_run("vgs", &[&vg]));
    let st = root.json(&["pool", "status", &name]);
    assert_eq!(st["active"], true, "{st}");
    assert_eq!(root.json(&["pool", "check", &name])["metadata"], "ok");
    // Pools only grow (lend.rs grows lvm pools to and by a size).
    let line = root.fails(&["pool", "extend", &name, "--data", "1G"], 2);
    assert!(line.contains("only grow"), "{line}");

    // The root's snapshotter on the direct-lvm pool.
    root.set_config(&format!(
        "backend = \"devmapper\"\n[devmapper]\npool_name = \"{name}\"\nbase_size = \"256M\"\n"
    ));
    let mnt = root.path().join("mnt");
    let r = root.run(&["snapshot", "prepare", "a", "--mount", mnt.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("existing pool"), "{r:?}");
    assert!(root.backend_record().contains("named-pool"));
    std::fs::write(mnt.join("f"), "on lvm").unwrap();
    run("umount", &[mnt.to_str().unwrap()]);
    root.ok(&["snapshot", "commit", "base", "a"]);
    let v = root.json(&["snapshot", "view", "v", "base"]);
    assert_eq!(v["mounts"][0]["type"], "ext4", "{v}");
    root.ok(&["snapshot", "rm", "v"]);
    let line = root.fails(&["pool", "destroy", &name], 4);
    assert!(line.contains("holds the snapshots"), "{line}");
    // Forget the root's backend; the pool and everything on it then goes.
    std::fs::remove_file(root.path().join("backend.toml")).unwrap();

    root.ok(&["pool", "destroy", &name]);
    assert!(!try_run("vgs", &[&vg]), "volume group removed");
    assert!(!root.path().join("pools").join(&name).exists());
}

fn adopt_a_dmsetup_pool() {
    let root = Root::new();
    let (meta_file, data_file) = (root.path().join("meta"), root.path().join("data"));
    sparse_file(&meta_file, 16 * MIB);
    sparse_file(&data_file, 256 * MIB);
    let meta = LoopDevice::attach(&meta_file);
    let data = LoopDevice::attach(&data_file);
    let dm_name = unique_name("foreign");
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            try_run("dmsetup", &["remove", "--force", &self.0]);
        }
    }
    let table = format!(
        "0 {} thin-pool {} {} 128 0 0",
        256 * MIB / 512,
        meta.as_str(),
        data.as_str()
    );
    run("dmsetup", &["create", &dm_name, "--table", &table]);
    let _remove = Remove(dm_name.clone());

    // Someone else's (transaction id moved) is refused unless allowed.
    run(
        "dmsetup",
        &["message", &dm_name, "0", "set_transaction_id 0 3"],
    );
    let line = root.fails(&["pool", "create", "--adopt", &dm_name], 4);
    assert!(line.contains("transaction id 3"), "{line}");
    assert!(!root.path().join("pools").join(&dm_name).exists());
    let r = root.json(&["pool", "create", "--adopt", &dm_name, "--allow-foreign"]);
    assert_eq!(r["kind"], "adopted", "{r}");
    assert_eq!(r["dm_name"], dm_name.as_str(), "{r}");
    assert_eq!(r["transaction_id"], 3, "{r}");
    assert_eq!(r["data"]["total_bytes"], 256 * MIB, "{r}");
    // Not a thin-pool.
    let linear = unique_name("linear");
    run(
        "dmsetup",
        &[
            "create",
            &linear,
            "--table",
            &format!("0 2048 linear {} 0", meta.as_str()),
        ],
    );
    let _remove_linear = Remove(linear.clone());
    let line = root.fails(&["pool", "create", "--adopt", &linear], 2);
    assert!(line.contains("not a thin-pool"), "{line}");
    assert!(!root.path().join("pools").join(&linear).exists());
    // Destroying an adopted pool forgets it and leaves the pool.
    root.ok(&["pool", "destroy", &dm_name]);
    assert!(dm_exists(&dm_name), "not ours to remove");
    root.fails(&["pool", "status", &dm_name], 3);
}

fn zfs_backend_runs_snapshot_commands() {
    let zpool = ZfsPool::create(512 * MIB);
    let dataset = format!("{}/thinbox", zpool.name);
    run("zfs", &["create", &dataset]);
    let root = Root::with_config(&format!(
        "backend = \"zfs\"\n[zfs]\ndataset = \"{dataset}\"\n"
    ));
    let r = root.run(&["snapshot", "prepare", "a"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("using the zfs backend"), "{r:?}");
    assert!(root.backend_record().contains("zfs-dataset"));
    let mnt = root.path().join("mnt");
    root.ok(&["snapshot", "mounts", "a", "--mount", mnt.to_str().unwrap()]);
    std::fs::write(mnt.join("f"), "zfs").unwrap();
    run("umount", &[mnt.to_str().unwrap()]);
    let c = root.json(&["snapshot", "commit", "base", "a"]);
    assert_eq!(c["kind"], "committed", "{c}");
    root.ok(&["snapshot", "prepare", "b", "base"]);
    let all = root.json(&["snapshot", "ls"]);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    root.fails(&["snapshot", "rm", "base"], 4);
    let u = root.json(&["snapshot", "usage", "base"]);
    assert!(u["size"].as_u64().unwrap() > 0, "{u}");
    let tar = root.path().join("l.tar");
    root.ok(&["snapshot", "diff", "base", tar.to_str().unwrap()]);
    let list = run("tar", &["-tf", tar.to_str().unwrap()]);
    assert!(
        list.lines().any(|l| l.trim_start_matches("./") == "f"),
        "{list}"
    );
    root.ok(&["snapshot", "rm", "b"]);
    root.ok(&["snapshot", "rm", "base"]);
}

fn create_killed_midway_is_undone() {
    use std::os::unix::process::ExitStatusExt;
    let root = Root::new();
    let name = unique_name("pool");
    let create = [
        "pool",
        "create",
        "--name",
        &name,
        "--data-size",
        "256M",
        "--metadata-size",
        "64M",
    ];
    let killed = |root: &Root| {
        let out = root
            .command(&create)
            .env("THINBOX_CRASH_AT", "pool-created")
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(9), "{out:?}");
    };
    // Killed after thinpool made the pool, before the record says so.
    killed(&root);
    let st = root.json(&["pool", "status", &name]);
    assert!(st["mode"].as_str().unwrap().contains("half-made"), "{st}");
    let line = root.fails(&["pool", "check", &name], 1);
    assert!(line.contains("thinbox pool destroy"), "{line}");
    // Creating it again finishes the job.
    let r = root.json(&create);
    assert_eq!(r["mode"], "rw", "{r}");
    assert_eq!(loops_under(root.path()).len(), 2);
    root.ok(&["pool", "destroy", &name]);
    nothing_left(&root, &name);
    // Killed again, then destroyed instead.
    killed(&root);
    root.ok(&["pool", "destroy", &name]);
    nothing_left(&root, &name);
}

fn monitor_follows_dm_events_and_stops_on_sigterm() {
    let root = Root::with_config(
        "[devmapper]\ndata_size = \"256M\"\nmetadata_size = \"64M\"\nbase_size = \"1G\"\nautoextend_threshold = 50\nautoextend_percent = 50\n",
    );
    root.ok(&["snapshot", "ls"]);
    let pool = format!(
        "{}-pool",
        root.path().file_name().unwrap().to_string_lossy()
    );
    let monitor = root
        .command(&[
            "--json",
            "pool",
            "monitor",
            &pool,
            "--interval",
            "3600",
            "--log-format",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let wait_for = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        for _ in 0..600 {
            let st = root.json(&["pool", "status", &pool]);
            if f(&st) {
                return st;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "{what} never happened: {}",
            root.json(&["pool", "status", &pool])
        );
    };
    // The monitor sets the low-water mark from the threshold (half the pool).
    wait_for("low-water mark set", &|st| st["low_water_mark"] == 2048);
    // Write past it: the kernel's event wakes the monitor (its interval is
    // an hour), which grows the pool by half.
    let mnt = root.path().join("mnt");
    root.ok(&["snapshot", "prepare", "a", "--mount", mnt.to_str().unwrap()]);
    let file = mnt.join("fill");
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", file.display()),
            "bs=1M",
            "count=160",
            "conv=fsync",
        ],
    );
    let st = wait_for("autoextend", &|st| {
        st["data"]["total_bytes"].as_u64() >= Some(384 * MIB)
    });
    assert_eq!(st["mode"], "rw", "{st}");
    run("umount", &[mnt.to_str().unwrap()]);
    // SIGTERM ends it cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = monitor.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|g| g["extended_data_to"].as_u64() >= Some(384 * MIB)),
        "{text}"
    );
    // Its log: one JSON object per line, the growth among them.
    let log = String::from_utf8_lossy(&out.stderr);
    let grew = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"))
        })
        .find(|v| v["fields"]["device"] == "data")
        .unwrap_or_else(|| panic!("no growth logged: {log}"));
    assert_eq!(grew["level"], "INFO", "{grew}");
    assert!(
        grew["fields"]["bytes"].as_u64() >= Some(384 * MIB),
        "{grew}"
    );
    // Counted for the metrics: the monitor's growth, and none of metadata.
    let metrics = root.ok(&["metrics"]);
    let series = |device: &str| {
        cli_support::metric(
            &metrics,
            &format!(r#"thinbox_pool_autoextends_total{{device="{device}",pool="{pool}"}}"#),
        )
    };
    assert!(series("data") >= 1.0, "{metrics}");
    assert_eq!(series("metadata"), 0.0, "{metrics}");
    root.ok(&["snapshot", "rm", "a"]);
}

/// Damages the metadata file of an inactive pool the way thin_repair can
/// mend: the data space map's index block (its btree root, named in the
/// superblock's `data_space_map_root` at byte 64: nr_blocks, nr_allocated,
/// bitmap_root) loses its checksum; the mappings are untouched.
fn damage_space_map(metadata: &std::path::Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(metadata)
        .unwrap();
    let mut superblock = [0u8; 4096];
    f.read_exact(&mut superblock).unwrap();
    assert_eq!(
        u64::from_le_bytes(superblock[32..40].try_into().unwrap()),
        27022010,
        "thin-pool superblock magic"
    );
    let index = u64::from_le_bytes(superblock[80..88].try_into().unwrap());
    assert!(index > 0, "the data space map's index block");
    f.seek(SeekFrom::Start(index * 4096)).unwrap();
    f.write_all(&[0xff; 64]).unwrap();
    f.sync_all().unwrap();
}

fn repair_restores_a_pool_with_damaged_metadata() {
    let root = Root::with_config(
        "[devmapper]\ndata_size = \"256M\"\nmetadata_size = \"64M\"\nbase_size = \"128M\"\n",
    );
    let pool = format!(
        "{}-pool",
        root.path().file_name().unwrap().to_string_lossy()
    );
    // Data on two thin devices (and the base filesystem's).
    let contents = [
        ("a", "first ".repeat(50_000)),
        ("b", "second ".repeat(50_000)),
    ];
    for (key, text) in &contents {
        let mnt = root.path().join(format!("mnt-{key}"));
        root.ok(&["snapshot", "prepare", key, "--mount", mnt.to_str().unwrap()]);
        std::fs::write(mnt.join("file"), text).unwrap();
        run("umount", &[mnt.to_str().unwrap()]);
    }
    let dir = root.path().join("pools").join(&pool);
    let metadata = dir.join("metadata");
    assert!(metadata.exists(), "{}", metadata.display());

    // Offline as after a crash (no clean shutdown), then damaged.
    let mut devices = dm_devices(&pool);
    devices.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for d in &devices {
        run("dmsetup", &["remove", d]);
    }
    for l in loops_under(&dir) {
        run("losetup", &["-d", &l]);
    }
    damage_space_map(&metadata);
    assert!(
        !try_run("thin_check", &[metadata.to_str().unwrap()]),
        "thin_check accepts the damaged metadata"
    );

    // thinbox sees it, refuses to use the pool, and says what to run.
    let line = root.fails(&["pool", "check", &pool], 1);
    assert!(
        line.contains(&format!("thinbox pool repair {pool}")),
        "{line}"
    );
    let st = root.json(&["pool", "status", &pool]);
    assert_eq!(st["needs_check"], true, "{st}");
    assert!(st["mode"].as_str().unwrap().starts_with("damaged"), "{st}");
    assert!(dm_devices(&pool).is_empty(), "a damaged pool was activated");
    let metrics = root.ok(&["metrics"]);
    let series = |s: &str| cli_support::metric(&metrics, s);
    assert_eq!(
        series(&format!(r#"thinbox_pool_needs_check{{pool="{pool}"}}"#)),
        1.0
    );
    assert_eq!(
        series(&format!(
            r#"thinbox_pool_mode{{mode="fail",pool="{pool}"}}"#
        )),
        1.0
    );

    // doctor says the same, and leaves it to the operator.
    let d = root.run(&["--json", "doctor"]);
    assert_eq!(d.code, 1, "{d:?}");
    let v: serde_json::Value = serde_json::from_str(&d.stdout).unwrap();
    assert_eq!(v["findings"][0]["kind"], "pool_damaged", "{v}");
    assert_eq!(
        v["findings"][0]["fix"],
        format!("thinbox pool repair {pool}"),
        "{v}"
    );
    assert_eq!(v["findings"][0]["fixable"], false, "{v}");

    // The repair: fresh metadata swapped in, the damaged copy kept.
    let r = root.json(&["pool", "repair", &pool]);
    assert_eq!(r["thin_devices"], 3, "{r}");
    assert_eq!(r["missing"], serde_json::json!([]), "{r}");
    assert_eq!(r["status"]["mode"], "rw", "{r}");
    assert_eq!(r["status"]["needs_check"], false, "{r}");
    let damaged = std::path::PathBuf::from(r["damaged_metadata"].as_str().unwrap());
    assert_eq!(damaged, dir.join("metadata.damaged"));
    assert!(
        !try_run("thin_check", &[damaged.to_str().unwrap()]),
        "the kept copy is the damaged one"
    );
    assert!(!dir.join("metadata.repaired").exists());
    root.ok(&["pool", "check", &pool]);

    // Every thin device's data reads back.
    for (key, text) in &contents {
        let mnt = root.path().join(format!("look-{key}"));
        std::fs::create_dir_all(&mnt).unwrap();
        root.ok(&["snapshot", "mounts", key, "--mount", mnt.to_str().unwrap()]);
        let read = std::fs::read_to_string(mnt.join("file"));
        run("umount", &[mnt.to_str().unwrap()]);
        assert!(read.as_ref().is_ok_and(|r| r == text), "{key}: {read:?}");
    }
    // And the pool takes new work.
    root.ok(&["snapshot", "prepare", "c"]);
    root.ok(&["snapshot", "rm", "c"]);
}
