//! thinbox as containerd's snapshotter (`thinbox serve`), tested with
//! containerd's own code and binaries:
//!
//! - containerd's snapshotter test suite (Debian's
//!   golang-github-containerd-containerd-dev, built with Debian's Go)
//!   through containerd's proxy client, one `thinbox serve` per case, on
//!   every backend: btrfs, overlay and naive on the host; dm-thin (ext4 and
//!   xfs), zfs and btrfs in the VM. Bad input over gRPC gets containerd's
//!   errdefs codes with nothing half-made (the suite's `TestThinboxErrors`);
//! - Debian's containerd with the proxy plugin `thinbox containerd config`
//!   prints: `ctr images import` and `ctr run --snapshotter thinbox`, a
//!   write inside the container seen in the snapshot, the CLI working
//!   beside the daemon, and removal reclaiming the snapshots: btrfs on the
//!   host, dm-thin in the VM (zfs too with `THINBOX_FULL=1`);
//! - SIGKILL of the daemon at each step of each verb, containerd driving it.
//!
//! CI runs the whole suite on the host's backends, all of it but the
//! 128-layer mount on dm-thin ext4 in the VM, and a smoke subset
//! ([`SMOKE_CASES`]) on zfs and the guest's btrfs (dm-thin xfs only in the
//! full run). `THINBOX_FULL=1` runs every case everywhere.
#![forbid(unsafe_code)]

mod cli_support;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use cli_support::{
    busybox_spec, http_get, metric, metrics_address, serve, serve_with, sigterm, Containerd, Root,
    THINBOX,
};
use integration::containerd::{suite_binary, verdicts, Verdicts};
use integration::fixtures::{run, sparse_file, temp_dir, LoopDevice, Mount, ZfsPool};
use integration::harness::{self, KernelTest};
use integration::need::Need;
use serde_json::Value;
use snapshotter::image::write;

fn main() -> ExitCode {
    const LONG: Duration = Duration::from_secs(1800);
    let tests = vec![
        KernelTest::new("suite_on_btrfs", suite_on_btrfs).needs(&[
            Need::Root,
            Need::Loop,
            Need::Btrfs,
        ]),
        KernelTest::new("suite_on_overlay", suite_on_overlay).needs(&[Need::Root, Need::Overlay]),
        KernelTest::new("suite_on_naive", suite_on_naive).needs(&[Need::Root]),
        KernelTest::new("suite_on_devmapper_ext4", suite_on_devmapper_ext4)
            .needs(&[Need::Root, Need::Loop, Need::DmThin])
            .timeout(LONG),
        KernelTest::new("suite_on_devmapper_xfs", suite_on_devmapper_xfs)
            .needs(&[Need::Root, Need::Loop, Need::DmThin])
            .timeout(LONG)
            // The filesystem is the only difference, which the snapshotter's
            // own devmapper_xfs_* kernel tests cover.
            .not_in_smoke("suite_on_devmapper_ext4"),
        KernelTest::new("suite_on_zfs", suite_on_zfs)
            .needs(&[Need::Root, Need::Zfs])
            .timeout(Duration::from_secs(3000)),
        KernelTest::new("suite_on_btrfs_in_vm", suite_on_btrfs)
            .needs(&[Need::Root, Need::Loop, Need::Btrfs, Need::Vm])
            .timeout(LONG),
        KernelTest::new("ctr_runs_on_btrfs", ctr_runs_on_btrfs)
            .needs(&[Need::Root, Need::Loop, Need::Btrfs])
            .timeout(Duration::from_secs(600)),
        KernelTest::new(
            "doctor_sees_what_containerd_forgot",
            doctor_sees_what_containerd_forgot,
        )
        .needs(&[Need::Root, Need::Loop, Need::Btrfs])
        .timeout(Duration::from_secs(600)),
        KernelTest::new("daemon_killed_at_each_step", daemon_killed_at_each_step)
            .needs(&[Need::Root, Need::Loop, Need::Btrfs])
            .timeout(Duration::from_secs(600)),
        KernelTest::new("ctr_runs_on_devmapper", ctr_runs_on_devmapper)
            .needs(&[Need::Root, Need::Loop, Need::DmThin])
            .timeout(LONG),
        // 43 s under TCG; containerd's suite covers zfs in the smoke run.
        KernelTest::new("ctr_runs_on_zfs", ctr_runs_on_zfs)
            .needs(&[Need::Root, Need::Zfs])
            .timeout(LONG)
            .not_in_smoke("ctr_runs_on_devmapper"),
    ];
    harness::main(&tests)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every case of containerd's suite (1.6.20) and of `TestThinboxErrors`.
const SUITE_CASES: &[&str] = &[
    "Basic",
    "StatActive",
    "StatComitted",
    "TransitivityTest",
    "PreareViewFailingtest",
    "Update",
    "Remove",
    "Walk",
    "LayerFileupdate",
    "RemoveDirectoryInLowerLayer",
    "Chown",
    "DirectoryPermissionOnCommit",
    "RemoveIntermediateSnapshot",
    "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer",
    "ViewReadonly",
    "StatInWalk",
    "CloseTwice",
    "RootPermission",
    "128LayersMount",
];

/// Error cases of `TestThinboxErrors`.
const ERROR_CASES: usize = 13;

/// The cases the VM's smoke runs (CI) on the backends whose whole suite
/// runs only with `THINBOX_FULL=1`: the life cycle, refusals, views,
/// labels, a walk and removal.
const SMOKE_CASES: &[&str] = &[
    "Basic",
    "PreareViewFailingtest",
    "Update",
    "Remove",
    "ViewReadonly",
    "StatInWalk",
];

/// How much of the suite a test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cover {
    /// Every case.
    All,
    /// Every case but the 128-layer mount (90 s on dm-thin under TCG;
    /// thinbox's own conformance suite mounts 128 layers on each backend).
    Most,
    /// [`SMOKE_CASES`].
    Smoke,
}

/// `smoke` in CI's smoke run, `full` with `THINBOX_FULL=1`.
fn cover(smoke: Cover, full: Cover) -> Cover {
    if integration::harness::full_matrix() {
        full
    } else {
        smoke
    }
}

/// The daemons' logs of the cases a failed run left (the suite prints a
/// file's first bytes only, and a killed run removes nothing).
fn serve_logs(tmp: &Path) -> String {
    let mut logs = String::new();
    for case in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let log = case.path().join("root/serve.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            logs += &format!("== {}\n{text}\n", log.display());
        }
    }
    logs
}

/// Runs the suite with `env`, and checks every case passed but the one
/// containerd skips for every snapshotter (Rename).
fn suite(backend: &str, env: &[(&str, &str)], cover: Cover) -> Verdicts {
    let bin = suite_binary(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let tmp = temp_dir();
    let most: Vec<&str> = SUITE_CASES
        .iter()
        .copied()
        .filter(|c| *c != "128LayersMount")
        .collect();
    let cases: &[&str] = match cover {
        Cover::All => SUITE_CASES,
        Cover::Most => &most,
        Cover::Smoke => SMOKE_CASES,
    };
    let started = Instant::now();
    let out = Command::new(&bin)
        .args(["-test.v", "-test.timeout=50m"])
        // Go matches each level of a subtest's name on its own.
        .arg(format!(
            "-test.run=^TestThinbox(Errors)?$/^({}{}|Refuses.*)$",
            cases.join("|"),
            if cases.len() >= most.len() {
                "|Rename"
            } else {
                ""
            }
        ))
        .env("THINBOX_BIN", THINBOX)
        .env("THINBOX_SUITE_BACKEND", backend)
        .env("TMPDIR", tmp.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let v = verdicts(&text);
    eprintln!(
        "containerd's suite on {backend}{}: {} passed, {} skipped ({}), {} failed, in {:.0?}",
        env.iter()
            .find(|(k, _)| *k == "THINBOX_SUITE_FS")
            .map_or(String::new(), |(_, v)| format!(" ({v})")),
        v.passed.len(),
        v.skipped.len(),
        v.skipped.join(", "),
        v.failed.len(),
        started.elapsed()
    );
    if !v.failed.is_empty() || !out.status.success() {
        panic!(
            "the suite failed ({:?}), cases {:?}:\n{text}\n{}",
            out.status,
            v.failed,
            serve_logs(tmp.path())
        );
    }
    if cases.len() >= most.len() {
        assert_eq!(v.skipped, ["Rename"], "{text}");
    }
    assert_eq!(v.passed.len(), cases.len() + ERROR_CASES, "{text}");
    // What the cases left: nothing mounted or attached under their roots.
    let left: Vec<_> = integration::fixtures::mount_points()
        .into_iter()
        .filter(|m| m.starts_with(tmp.path()))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    v
}

/// A btrfs filesystem on a loop device, mounted for the test.
struct LoopBtrfs {
    mount: Mount,
    _device: LoopDevice,
    _dir: tempfile::TempDir,
}

fn loop_btrfs(size: u64) -> LoopBtrfs {
    let dir = temp_dir();
    let img = dir.path().join("btrfs.img");
    sparse_file(&img, size);
    let device = LoopDevice::attach(&img);
    run("mkfs.btrfs", &["-q", device.as_str()]);
    let mount = Mount::new(device.as_str(), &dir.path().join("mnt"), Some("btrfs"), "");
    LoopBtrfs {
        mount,
        _device: device,
        _dir: dir,
    }
}

fn suite_on_btrfs() {
    let fs = loop_btrfs(4 << 30);
    // The host runs it whole; the guest's kernel gets the smoke.
    let cases = if std::env::var_os(integration::vm::IN_VM_ENV).is_some() {
        cover(Cover::Smoke, Cover::All)
    } else {
        Cover::All
    };
    suite(
        "btrfs",
        &[("THINBOX_SUITE_BTRFS", s(&fs.mount.target))],
        cases,
    );
    // The cases' subvolumes go with the filesystem.
    drop(fs);
}

fn suite_on_overlay() {
    suite("overlay", &[], Cover::All);
}

fn suite_on_naive() {
    suite("naive", &[], Cover::All);
}

// CI leaves containerd's 128-layer case (90 s under TCG) to xfs's and
// the full run.
fn suite_on_devmapper_ext4() {
    suite(
        "devmapper",
        &[("THINBOX_SUITE_FS", "ext4")],
        cover(Cover::Most, Cover::All),
    );
}

fn suite_on_devmapper_xfs() {
    suite(
        "devmapper",
        &[("THINBOX_SUITE_FS", "xfs")],
        cover(Cover::Smoke, Cover::All),
    );
}

fn suite_on_zfs() {
    let zpool = ZfsPool::create(4 << 30);
    let parent = format!("{}/suite", zpool.name);
    run("zfs", &["create", &parent]);
    // The 128-layer case takes 20 of the whole suite's 23 minutes on zfs
    // under TCG: the full run's alone.
    suite(
        "zfs",
        &[("THINBOX_SUITE_ZFS", &parent)],
        cover(Cover::Smoke, Cover::All),
    );
}

// ---- real containerd ---------------------------------------------------

/// containerd's snapshots as `thinbox snapshot ls --json` shows them.
fn containerd_snapshots(root: &Root) -> Vec<Value> {
    let all = root.json(&["snapshot", "ls"]);
    all.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["made_by"] == "containerd")
        .cloned()
        .collect()
}

/// Waits (containerd's garbage collector removes snapshots in the
/// background) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Bytes allocated to the loopback pools' data files under `root`.
fn pool_data_allocated(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(root.join("pools"))
        .map(|d| {
            d.filter_map(|e| std::fs::metadata(e.ok()?.path().join("data")).ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// The test on one backend: `config` picks it; `space_back`: a loopback
/// dm-thin pool, whose data file must shrink when a snapshot goes.
fn ctr_runs_through_thinbox(config: &str, space_back: bool) {
    let root = Root::with_config(config);
    let socket = root.path().join("thinbox.sock");
    let daemon = serve(&root, &socket);
    assert_eq!(
        std::fs::metadata(&socket)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );

    // The lines `thinbox containerd config` prints, as containerd reads them.
    let snippet = root.ok(&["containerd", "config", "--socket", s(&socket)]);
    let plugin = &snippet[snippet
        .find("[proxy_plugins]")
        .expect("the proxy plugin table")..];
    let plugin = &plugin[..plugin.find("# Kubernetes").unwrap_or(plugin.len())];
    let ctd = Containerd::start(&root.path().join("containerd"), plugin);
    let (ok, plugins) = ctd.ctr(&["plugins", "ls"]);
    assert!(ok, "{plugins}");
    assert!(
        plugins
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1")
                && l.contains("thinbox")
                && l.trim_end().ends_with("ok")),
        "the proxy plugin: {plugins}\n{}",
        ctd.log()
    );

    let image = "docker.io/library/busybox:latest";
    let tar = root.path().join("busybox.tar");
    write::docker_tar(&busybox_spec(image), &tar).unwrap();
    let (ok, o) = ctd.ctr(&["images", "import", "--snapshotter", "thinbox", s(&tar)]);
    assert!(ok, "ctr images import: {o}\n{}", ctd.log());
    let layers = containerd_snapshots(&root);
    assert!(
        layers.iter().any(|i| i["kind"] == "committed"),
        "the image's layer, made by containerd: {layers:?}"
    );

    // A container's output, through a root thinbox made.
    let (ok, o) = ctd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "thinbox",
        image,
        "hello",
        "sh",
        "-c",
        "echo hello from thinbox",
    ]);
    assert!(
        ok && o.contains("hello from thinbox"),
        "ctr run: {o}\n{}",
        ctd.log()
    );

    // A write inside a container, seen in its snapshot; the CLI works
    // beside the daemon the while.
    let cli = std::thread::spawn({
        let root_path = root.path().to_owned();
        move || {
            for i in 0..5 {
                let k = format!("mine-{i}");
                let prepare = Command::new(THINBOX)
                    .args([
                        "--root",
                        s(&root_path),
                        "--config",
                        s(&root_path.join("config.toml")),
                    ])
                    .args(["snapshot", "prepare", &k])
                    .output()
                    .unwrap();
                assert!(
                    prepare.status.success(),
                    "{}",
                    String::from_utf8_lossy(&prepare.stderr)
                );
                let rm = Command::new(THINBOX)
                    .args([
                        "--root",
                        s(&root_path),
                        "--config",
                        s(&root_path.join("config.toml")),
                    ])
                    .args(["snapshot", "rm", &k])
                    .output()
                    .unwrap();
                assert!(
                    rm.status.success(),
                    "{}",
                    String::from_utf8_lossy(&rm.stderr)
                );
            }
        }
    });
    let script = if space_back {
        "echo written > /marker && dd if=/dev/zero of=/big bs=1M count=64 conv=fsync"
    } else {
        "echo written > /marker"
    };
    let (ok, o) = ctd.ctr(&[
        "run",
        "--snapshotter",
        "thinbox",
        image,
        "keep",
        "sh",
        "-c",
        script,
    ]);
    assert!(ok, "ctr run: {o}\n{}", ctd.log());
    cli.join().expect("the CLI beside the daemon");
    let keep = containerd_snapshots(&root)
        .into_iter()
        .find(|i| i["name"].as_str().unwrap().ends_with("/keep"))
        .unwrap_or_else(|| {
            panic!(
                "the container's snapshot: {:?}",
                containerd_snapshots(&root)
            )
        });
    let key = keep["name"].as_str().unwrap().to_owned();
    assert!(key.starts_with("@containerd/thinbox-test/"), "{key}");
    assert_eq!(keep["kind"], "active");
    let look = temp_dir();
    let mnt = look.path().join("root");
    std::fs::create_dir_all(&mnt).unwrap();
    root.ok(&["snapshot", "mounts", &key, "--mount", s(&mnt)]);
    let marker = std::fs::read_to_string(mnt.join("marker"));
    run("umount", &[s(&mnt)]);
    assert_eq!(marker.unwrap(), "written\n");
    // containerd's snapshots are containerd's to change.
    let line = root.fails(&["snapshot", "rm", &key], 4);
    assert!(line.contains("containerd made it"), "{line}");
    let line = root.fails(&["snapshot", "prepare", "@containerd/mine"], 2);
    assert!(line.contains("kept for containerd"), "{line}");

    // serve's metrics: each verb containerd called, timed, and its
    // snapshots by kind (errors by code: the suite's TestThinboxErrors).
    let (code, _, scrape) = http_get(&metrics_address(&root), "/metrics");
    assert_eq!(code, 200, "{scrape}");
    for (verb, at_least) in [("prepare", 3.0), ("commit", 1.0), ("mounts", 1.0)] {
        let n = metric(
            &scrape,
            &format!(r#"thinbox_operation_duration_seconds_count{{verb="{verb}"}}"#),
        );
        assert!(n >= at_least, "{verb}: {n} calls\n{scrape}");
    }
    assert!(
        metric(
            &scrape,
            r#"thinbox_snapshots{client="containerd",kind="committed"}"#
        ) >= 1.0,
        "{scrape}"
    );

    // Removal reaches thinbox: the container's snapshot, then the image's.
    let allocated = pool_data_allocated(root.path());
    let (ok, o) = ctd.ctr(&["containers", "rm", "keep"]);
    assert!(ok, "{o}");
    eventually("the container's snapshot removed", || {
        !containerd_snapshots(&root)
            .iter()
            .any(|i| i["name"] == key.as_str())
    });
    if space_back {
        // Its blocks were discarded: the pool's sparse data file shrank
        // (containerd#5691 is this not happening). At once, or when the
        // daemon retries a removal the container's device deferred while
        // its mount namespace was still letting go of it.
        let started = Instant::now();
        loop {
            let after = pool_data_allocated(root.path());
            if allocated >= after + (32 << 20) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the data file held {allocated} bytes before the removal, {after} after\n{}",
                std::fs::read_to_string(root.path().join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let (ok, o) = ctd.ctr(&["images", "rm", "--sync", image]);
    assert!(ok, "{o}");
    eventually("the image's layers removed", || {
        containerd_snapshots(&root).is_empty()
    });
    ctd.stop();

    // SIGTERM: the daemon finishes, releases the root and its socket.
    sigterm(&daemon.0);
    let mut daemon = daemon;
    let status = daemon.0.wait().unwrap();
    assert!(
        status.success(),
        "thinbox serve: {status:?} {}",
        std::fs::read_to_string(root.path().join("serve.log")).unwrap_or_default()
    );
    assert!(!socket.exists(), "socket removed");
}

fn ctr_runs_on_btrfs() {
    ctr_runs_through_thinbox("backend = \"btrfs\"\n[btrfs]\nimage_size = \"2G\"\n", false);
}

fn ctr_runs_on_devmapper() {
    ctr_runs_through_thinbox(
        "backend = \"devmapper\"\n[devmapper]\ndata_size = \"2G\"\nbase_size = \"256M\"\n",
        true,
    );
}

fn ctr_runs_on_zfs() {
    let zpool = ZfsPool::create(2 << 30);
    let dataset = format!("{}/thinbox", zpool.name);
    run("zfs", &["create", &dataset]);
    ctr_runs_through_thinbox(
        &format!("backend = \"zfs\"\n[zfs]\ndataset = \"{dataset}\"\n"),
        false,
    );
}

/// `thinbox --json doctor` against containerd at `ctd`: exit code, report.
fn doctor_with(root: &Root, ctd: &Containerd) -> (i32, Value) {
    let r = root.run(&["--json", "doctor", "--containerd-address", s(&ctd.sock)]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("doctor: {e}: {r:?}"));
    (r.code, v)
}

/// containerd's database lost while thinbox keeps its snapshots (the
/// containerd#4790 drift): doctor, given containerd's socket, reports each
/// snapshot kept for containerd that containerd no longer lists, fixes
/// none, and is clean once containerd's garbage collector has run; with
/// `serve` down, it says the view was not compared.
fn doctor_sees_what_containerd_forgot() {
    let root = Root::with_config("backend = \"btrfs\"\n[btrfs]\nimage_size = \"1G\"\n");
    let socket = root.path().join("thinbox.sock");
    let daemon = serve(&root, &socket);
    let snippet = root.ok(&["containerd", "config", "--socket", s(&socket)]);
    let plugin = &snippet[snippet.find("[proxy_plugins]").unwrap()..];
    let plugin = &plugin[..plugin.find("# Kubernetes").unwrap_or(plugin.len())];
    // No collection at start: the drift must stay until the test asks for one.
    let extra = format!(
        "{plugin}\n[plugins.\"io.containerd.gc.v1.scheduler\"]\n  startup_delay = \"1h\"\n"
    );
    let dir = root.path().join("containerd");
    let ctd = Containerd::start(&dir, &extra);
    let image = "docker.io/library/busybox:latest";
    let tar = root.path().join("busybox.tar");
    write::docker_tar(&busybox_spec(image), &tar).unwrap();
    let (ok, o) = ctd.ctr(&["images", "import", "--snapshotter", "thinbox", s(&tar)]);
    assert!(ok, "ctr images import: {o}\n{}", ctd.log());
    let kept = containerd_snapshots(&root);
    assert!(!kept.is_empty());
    let (code, v) = doctor_with(&root, &ctd);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["findings"], serde_json::json!([]), "{v}");
    assert_eq!(v["notes"], serde_json::json!([]), "{v}");

    // containerd restarted on an empty database.
    ctd.stop();
    std::fs::remove_file(dir.join("root/io.containerd.metadata.v1.bolt/meta.db")).unwrap();
    let ctd = Containerd::start(&dir, &extra);
    let (code, v) = doctor_with(&root, &ctd);
    assert_eq!(code, 1, "{v}");
    let found = v["findings"].as_array().unwrap();
    assert_eq!(found.len(), kept.len(), "{v}");
    for f in found {
        assert_eq!(f["kind"], "unknown_to_containerd", "{v}");
        assert_eq!(f["fixable"], false, "{v}");
        assert!(
            f["subject"]
                .as_str()
                .unwrap()
                .starts_with("@containerd/thinbox-test/"),
            "{v}"
        );
    }
    let (code, v) = {
        let r = root.run(&[
            "--json",
            "doctor",
            "--fix",
            "--containerd-address",
            s(&ctd.sock),
        ]);
        (r.code, serde_json::from_str::<Value>(&r.stdout).unwrap())
    };
    assert_eq!((code, v["fixed"].as_array().unwrap().len()), (1, 0), "{v}");
    assert_eq!(containerd_snapshots(&root).len(), kept.len());

    // The fix doctor names: a collection after a removal on thinbox (here a
    // snapshot of a fresh key prepared and removed, then a lease removed
    // synchronously; no image is imported again, as containerd's new
    // database hands out the ids of the old one).
    for verb in ["prepare", "rm"] {
        let (ok, o) = ctd.ctr(&["snapshots", "--snapshotter", "thinbox", verb, "doctor-gc"]);
        assert!(ok, "{verb}: {o}");
    }
    let (ok, lease) = ctd.ctr(&["leases", "create"]);
    assert!(ok, "{lease}");
    let lease = lease.split_whitespace().next().unwrap().to_owned();
    let (ok, o) = ctd.ctr(&["leases", "delete", "--sync", &lease]);
    assert!(ok, "{o}");
    eventually(
        "containerd's collector removes what it does not know",
        || containerd_snapshots(&root).is_empty(),
    );
    let (code, v) = doctor_with(&root, &ctd);
    assert_eq!(
        (code, v["findings"].as_array().unwrap().len()),
        (0, 0),
        "{v}"
    );

    // serve down: with a containerd snapshot kept, the view is not compared, and said so.
    let (ok, o) = ctd.ctr(&["images", "import", "--snapshotter", "thinbox", s(&tar)]);
    assert!(ok, "{o}");
    sigterm(&daemon.0);
    let mut daemon = daemon;
    daemon.0.wait().unwrap();
    let (code, v) = doctor_with(&root, &ctd);
    assert_eq!(code, 0, "{v}");
    let notes = v["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{v}");
    assert!(notes[0].as_str().unwrap().contains("not compared"), "{v}");
    ctd.stop();
}

// ---- SIGKILL of the daemon at each step ---------------------------------

/// The backend's objects: subvolumes under the configured btrfs directory.
fn btrfs_objects(dir: &Path) -> usize {
    ["active", "view", "snapshots"]
        .iter()
        .map(|sub| std::fs::read_dir(dir.join(sub)).map_or(0, |d| d.count()))
        .sum()
}

/// Waits until containerd reaches the (re)started daemon: its proxy
/// client reconnects with a backoff.
fn reachable(ctd: &Containerd) {
    eventually("containerd reaches thinbox serve", || {
        ctd.ctr(&["snapshots", "--snapshotter", "thinbox", "info", "base"])
            .0
    });
}

/// SIGKILL of the daemon after each verb recorded its intent and after the
/// backend did it, with containerd driving it: after a restart the store and
/// the backend agree (no object without its row, no row without its
/// object), a cut prepare or view is gone on both sides, a cut removal is
/// finished (containerd removes through its garbage collector, which sees
/// the snapshot gone), a cut commit is undone (containerd kept the active
/// key; it can commit again), and containerd, restarted meanwhile, still
/// stats every snapshot it lists.
fn daemon_killed_at_each_step() {
    let fs = loop_btrfs(2 << 30);
    let objects = fs.mount.target.join("thinbox");
    std::fs::create_dir_all(&objects).unwrap();
    let root = Root::with_config(&format!(
        "backend = \"btrfs\"\n[btrfs]\npath = \"{}\"\n",
        objects.display()
    ));
    let socket = root.path().join("thinbox.sock");
    let plugin = format!(
        "[proxy_plugins]\n  [proxy_plugins.thinbox]\n    type = \"snapshot\"\n    address = \"{}\"\n",
        socket.display()
    );
    let ctd_dir = root.path().join("containerd");
    let mut daemon = serve(&root, &socket);
    let mut ctd = Containerd::start(&ctd_dir, &plugin);
    let snap = |ctd: &Containerd, args: &[&str]| {
        let mut a = vec!["snapshots", "--snapshotter", "thinbox"];
        a.extend_from_slice(args);
        ctd.ctr(&a)
    };
    // A committed base for views.
    let (ok, o) = snap(&ctd, &["prepare", "base-active"]);
    assert!(ok, "{o}");
    let (ok, o) = snap(&ctd, &["commit", "base", "base-active"]);
    assert!(ok, "{o}");
    for verb in ["prepare", "view", "commit", "remove"] {
        for when in ["recorded", "made"] {
            let step = format!("snapshot-{verb}-{when}");
            let k = format!("{verb}-{when}");
            // The daemon that dies at the step.
            sigterm(&daemon.0);
            assert!(daemon.0.wait().unwrap().success());
            daemon = serve_with(&root, &socket, &[("THINBOX_CRASH_AT", &step)]);
            reachable(&ctd);
            // What the verb needs first (other steps, so not killed).
            if verb == "commit" || verb == "remove" {
                let (ok, o) = snap(&ctd, &["prepare", &k, "base"]);
                assert!(ok, "{step}: {o}");
            }
            let (ok, o) = match verb {
                "prepare" => snap(&ctd, &["prepare", &k, "base"]),
                "view" => snap(&ctd, &["view", &k, "base"]),
                "commit" => snap(&ctd, &["commit", &format!("{k}-done"), &k]),
                _ => snap(&ctd, &["rm", &k]),
            };
            // containerd removes through its garbage collector: its rm
            // succeeds and the daemon dies in the collection after.
            assert_eq!(ok, verb == "remove", "{step}: {o}");
            let started = Instant::now();
            let status = loop {
                if let Some(st) = daemon.0.try_wait().unwrap() {
                    break st;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(90),
                    "{step}: the daemon was never killed"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "{step}: {status:?}");
            // containerd restarted meanwhile; the daemon restarted.
            ctd.stop();
            daemon = serve(&root, &socket);
            ctd = Containerd::start(&ctd_dir, &plugin);
            reachable(&ctd);
            // Store and backend agree: one object per row.
            let rows = root.json(&["snapshot", "ls"]);
            let rows = rows.as_array().unwrap();
            assert_eq!(
                btrfs_objects(&objects),
                rows.len(),
                "{step}: objects vs rows {rows:?}"
            );
            let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
            let has = |suffix: &str| names.iter().any(|n| n.ends_with(&format!("/{suffix}")));
            match verb {
                "prepare" | "view" => assert!(!has(&k), "{step}: a cut {verb} is gone: {names:?}"),
                "remove" => {
                    // The collector may have died on another of its
                    // removals (an orphan of an earlier step): a deletion
                    // schedules it again.
                    let mut poke = 0;
                    eventually(&format!("{step}: the cut removal finished"), || {
                        poke += 1;
                        let dummy = format!("gc-poke-{k}-{poke}");
                        let _ = snap(&ctd, &["prepare", &dummy]);
                        let _ = snap(&ctd, &["rm", &dummy]);
                        let rows = root.json(&["snapshot", "ls"]);
                        !rows
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|r| r["name"].as_str().unwrap().ends_with(&format!("/{k}")))
                    })
                }
                // containerd saw the commit fail and kept the active key:
                // thinbox undoes the cut commit of a client's snapshot.
                _ => assert!(!has(&format!("{k}-done")) && has(&k), "{step}: {names:?}"),
            }
            if verb == "commit" {
                reachable(&ctd);
                let (ok, o) = snap(&ctd, &["commit", &format!("{k}-done"), &k]);
                assert!(ok, "{step}: containerd commits again: {o}");
            }
            // containerd stats every snapshot it lists.
            let (ok, list) = snap(&ctd, &["ls"]);
            assert!(ok, "{list}");
            for line in list.lines().skip(1) {
                let key = line.split_whitespace().next().unwrap();
                let (ok, o) = snap(&ctd, &["info", key]);
                assert!(ok, "{step}: containerd lists {key} but cannot stat it: {o}");
            }
        }
    }
    ctd.stop();
    sigterm(&daemon.0);
    assert!(daemon.0.wait().unwrap().success());
}
