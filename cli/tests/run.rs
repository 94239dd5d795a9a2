//! `thinbox run`, `ps` and `rm` through the real binary, on the embedded
//! default (loopback btrfs on the host, a loopback dm-thin pool in the VM)
//! with a busybox image built from the host's busybox-static: output and
//! exit codes passed through, limits applied and the exit reason reported
//! (`--json` parsed), `--commit` making a layer whose diff holds exactly
//! the container's changes, `--rm`, and bad input (unknown image, bad or
//! taken name, missing executable, removing a running container or its
//! image) failing with one line and leaving nothing behind.
#![forbid(unsafe_code)]

mod cli_support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cli_support::{busybox_image, containers, one_line, snapshots, start_sleeper, Root};
use integration::harness::{self, KernelTest};
use integration::need::Need;

const BTRFS: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs];
const DM_THIN: &[Need] = &[Need::Root, Need::Loop, Need::DmThin];

fn main() -> ExitCode {
    let mut tests = Vec::new();
    // What does not depend on the backend runs on dm-thin in the full run
    // only: under TCG these take 15-60 s each (the OOM one allocates until
    // killed), and the host's btrfs runs the same code in the smoke run.
    const NOT_ON_DM_THIN_IN_SMOKE: &[(&str, &str)] = &[
        (
            "run_output_exit_codes_and_json",
            "host_btrfs_run_output_exit_codes_and_json",
        ),
        ("run_reports_oom", "host_btrfs_run_reports_oom"),
        (
            "running_container_and_its_image_are_not_removed",
            "host_btrfs_running_container_and_its_image_are_not_removed",
        ),
    ];
    for (prefix, needs) in [("host_btrfs", BTRFS), ("vm_dmthin", DM_THIN)] {
        let t = |name: &str, f: fn()| {
            let test = KernelTest::new(format!("{prefix}_{name}").leak(), f).needs(needs);
            match NOT_ON_DM_THIN_IN_SMOKE.iter().find(|(n, _)| *n == name) {
                Some((_, covered_by)) if prefix == "vm_dmthin" => test.not_in_smoke(covered_by),
                _ => test,
            }
        };
        tests.push(t(
            "run_output_exit_codes_and_json",
            run_output_exit_codes_and_json,
        ));
        tests.push(t("run_reports_oom", run_reports_oom));
        tests.push(t(
            "run_commit_layer_holds_exactly_the_changes",
            run_commit_layer_holds_exactly_the_changes,
        ));
        tests.push(t(
            "run_bad_input_leaves_nothing",
            run_bad_input_leaves_nothing,
        ));
        tests.push(t(
            "running_container_and_its_image_are_not_removed",
            running_container_and_its_image_are_not_removed,
        ));
        tests.push(t("killed_run_is_reconciled", killed_run_is_reconciled));
        tests.push(t(
            "run_with_io_throttle_on_the_root_device",
            run_with_io_throttle_on_the_root_device,
        ));
    }
    tests.push(
        KernelTest::new(
            "vm_dmthin_full_pool_is_the_exit_reason",
            full_pool_is_the_exit_reason,
        )
        .needs(DM_THIN),
    );
    harness::main(&tests)
}

/// A thin pool out of data space (with `error_if_no_space`, the default)
/// fails the container's writes with EIO while its filesystem still shows
/// free space: the run reports `pool_full` (it reported `exited`, the
/// container's own failure).
fn full_pool_is_the_exit_reason() {
    let root = Root::with_config(
        "[devmapper]\ndata_size = \"128M\"\nmetadata_size = \"64M\"\nbase_size = \"512M\"\n",
    );
    busybox_image(&root, "bb:1");
    let r = root.run(&[
        "--json",
        "run",
        "--name",
        "filler",
        "bb:1",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=400 oflag=direct",
    ]);
    assert_ne!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!("no report ({e}): {r:?}");
        });
    assert_eq!(v["report"]["reason"], "pool_full", "{v}");
    assert_eq!(v["report"]["root_full"], true, "{v}");
}

fn run_output_exit_codes_and_json() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let before = snapshots(&root);

    // Output passes through; the image's env and the hostname apply.
    let r = root.run(&[
        "run",
        "--rm",
        "--name",
        "hello",
        "--memory",
        "64M",
        "--pids",
        "32",
        "bb:1",
        "--",
        "sh",
        "-c",
        "echo out:$FROM_IMAGE:$(hostname); echo err >&2",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "out:yes:hello\n", "{r:?}");
    assert!(r.stderr.starts_with("err\n"), "{r:?}");
    assert!(
        r.stderr
            .contains("container hello ended: exited (exit code 0)"),
        "{r:?}"
    );
    // --rm left no record and no snapshot.
    assert!(containers(&root).is_empty());
    assert_eq!(snapshots(&root), before);

    // The container's exit code is thinbox's.
    let r = root.run(&["run", "--rm", "bb:1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(r.code, 7, "{r:?}");
    // --timeout kills the container: 128 + SIGKILL, reason `timed_out`,
    // in the JSON report.
    let r = root.run(&[
        "--json",
        "run",
        "--name",
        "slow",
        "--timeout",
        "1",
        "bb:1",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(r.code, 137, "{r:?}");
    let out: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(out["name"], "slow");
    assert_eq!(out["report"]["reason"], "timed_out", "{out}");
    assert_eq!(out["report"]["exit_code"], 137, "{out}");
    assert_eq!(out["removed"], false);

    // Kept without --rm: ps -a shows it exited with its report; ps hides it.
    let all = containers(&root);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["state"], "exited");
    assert_eq!(all[0]["image"], "bb:1");
    assert_eq!(all[0]["report"]["reason"], "timed_out");
    assert!(root.json(&["ps"]).as_array().unwrap().is_empty());
    assert!(snapshots(&root).contains("container/slow"));
    let human = root.ok(&["ps", "-a"]);
    assert!(
        human.contains("slow") && human.contains("timed_out"),
        "{human}"
    );

    // rm removes record and snapshot.
    let removed = root.json(&["rm", "slow"]);
    assert_eq!(removed["removed"][0], "slow");
    assert!(containers(&root).is_empty());
    assert_eq!(snapshots(&root), before);
}

fn run_reports_oom() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let r = root.run(&[
        "--json",
        "run",
        "--rm",
        "--memory",
        "24M",
        "bb:1",
        "--",
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert_eq!(r.code, 137, "{r:?}");
    let out: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(out["report"]["reason"], "oom_killed", "{out}");
    assert!(
        out["report"]["events"]["oom_kills"].as_u64().unwrap() >= 1,
        "{out}"
    );
    assert!(!r.stdout.contains("survived"));
    assert!(containers(&root).is_empty());
}

fn run_commit_layer_holds_exactly_the_changes() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let r = root.run(&[
        "run",
        "--name",
        "builder",
        "--commit",
        "bb:2",
        "bb:1",
        "--",
        "sh",
        "-c",
        "echo changed >/etc/motd; rm /etc/obsolete; mkdir /new; echo hi >/new/file",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("committed as image bb:2"), "{r:?}");
    let img = root.json(&["image", "inspect", "bb:2"]);
    let layers = img["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{img}");
    assert_eq!(img["config"]["env"][1], "FROM_IMAGE=yes", "{img}");
    let top = layers[1]["chain_id"].as_str().unwrap();

    // The new layer's diff against the image holds exactly the changes.
    let tar_path = root.path().join("top.tar");
    root.ok(&["snapshot", "diff", top, tar_path.to_str().unwrap()]);
    let mut entries = BTreeSet::new();
    let mut archive = tar::Archive::new(fs::File::open(&tar_path).unwrap());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let mut body = String::new();
        if e.header().entry_type().is_file() {
            e.read_to_string(&mut body).unwrap();
        }
        entries.insert(format!("{path}={}", body.trim_end()));
    }
    let expected: BTreeSet<String> = [
        "etc=",
        "etc/motd=changed",
        "etc/.wh.obsolete=",
        "new=",
        "new/file=hi",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(entries, expected);

    // A container from the committed image sees the changes.
    let r = root.run(&[
        "run",
        "--rm",
        "bb:2",
        "--",
        "sh",
        "-c",
        "cat /etc/motd /new/file; test -e /etc/obsolete || echo gone",
    ]);
    assert_eq!(r.stdout, "changed\nhi\ngone\n", "{r:?}");
    // The container's snapshot became the layer: rm keeps it for the image.
    root.ok(&["rm", "builder"]);
    assert!(snapshots(&root).contains(top));
    root.ok(&["image", "rm", "bb:2"]);
    assert!(!snapshots(&root).contains(top));
}

fn run_bad_input_leaves_nothing() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let before = snapshots(&root);
    let mounts_under_root = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains("/containers/"))
            .filter(|l| l.contains(root.path().to_str().unwrap()))
            .count()
    };
    let line = root.fails(&["run", "nosuch:1"], 3);
    assert!(
        line.contains("nosuch:1") && line.contains("image ls"),
        "{line}"
    );
    let line = root.fails(&["run", "--name", "bad/name", "bb:1"], 2);
    assert!(line.contains("bad/name"), "{line}");
    // clap reports a bad flag value (its own usage message, exit 2).
    let r = root.run(&["run", "--memory", "lots", "bb:1"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("\"lots\" is not a size"), "{r:?}");
    let line = root.fails(&["run", "--cpus", "0", "bb:1", "--", "true"], 2);
    assert!(line.contains("--cpus"), "{line}");
    // An executable that is not in the image: reported, nothing left.
    let r = root.run(&["run", "--name", "noexec", "bb:1", "--", "/bin/nonexistent"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("/bin/nonexistent"), "{r:?}");
    assert!(containers(&root).is_empty(), "{:?}", containers(&root));
    assert_eq!(snapshots(&root), before);
    assert_eq!(mounts_under_root(), 0);
    // A name already in use.
    root.ok(&["run", "--name", "taken", "bb:1", "--", "true"]);
    let line = root.fails(&["run", "--name", "taken", "bb:1", "--", "true"], 4);
    assert!(
        line.contains("\"taken\"") && line.contains("thinbox rm taken"),
        "{line}"
    );
    // --commit to a taken image name is refused before anything runs.
    let line = root.fails(&["run", "--commit", "bb:1", "bb:1", "--", "true"], 4);
    assert!(line.contains("bb:1"), "{line}");
    root.ok(&["rm", "taken"]);
    let line = root.fails(&["rm", "taken"], 3);
    assert!(line.contains("taken"), "{line}");
    assert!(containers(&root).is_empty());
    assert_eq!(snapshots(&root), before);
    assert_eq!(mounts_under_root(), 0);
}

fn running_container_and_its_image_are_not_removed() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let mut child = start_sleeper(&root, "long");
    let line = root.fails(&["rm", "long"], 4);
    assert!(
        line.contains("running") && line.contains("--force"),
        "{line}"
    );
    let r = root.run(&["image", "rm", "bb:1"]);
    assert_eq!(r.code, 4, "{r:?}");
    one_line(&r.stderr);
    root.ok(&["rm", "--force", "long"]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137), "{status:?}");
    assert!(containers(&root).is_empty(), "{:?}", containers(&root));
    root.ok(&["image", "rm", "bb:1"]);
    assert!(snapshots(&root).is_empty(), "{:?}", snapshots(&root));
}

/// Starts `thinbox run --name NAME bb:1 -- sleep 600` in the background
/// and waits until `ps` shows it running.
// The child is returned to the caller, which waits for it.
#[allow(clippy::zombie_processes)]
/// kill -9 of `thinbox run` while its container runs: the container dies
/// with it, and the next command marks it exited and unmounts its root.
fn killed_run_is_reconciled() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let mut child = start_sleeper(&root, "victim");
    let pid = root.json(&["ps"])[0]["pid"].as_i64().unwrap() as i32;
    child.kill().unwrap();
    child.wait().unwrap();
    let all = containers(&root);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["state"], "exited", "{all:?}");
    assert!(all[0]["report"].is_null(), "{all:?}");
    // Gone, or a zombie waiting for whichever subreaper inherited it.
    let dead = || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty()
            || stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dead() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dead(), "container pid {pid} survived its thinbox run");
    let rootfs = root.path().join("containers/victim/rootfs");
    assert!(!cli_support::is_mounted(&rootfs));
    root.ok(&["rm", "victim"]);
    root.ok(&["image", "rm", "bb:1"]);
    assert!(snapshots(&root).is_empty(), "{:?}", snapshots(&root));
}

fn run_with_io_throttle_on_the_root_device() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    // The root device (loop under btrfs, or the dm thin device) gets the
    // throttle; the write completes.
    let r = root.run(&[
        "--json",
        "run",
        "--rm",
        "--io-write-bps",
        "4M",
        "--io-read-bps",
        "4M",
        "bb:1",
        "--",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/io.max /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device \
         /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device 2>/dev/null; \
         dd if=/dev/zero of=/data bs=64k count=16 oflag=direct && echo wrote",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("wrote\n"), "{r:?}");
    // The container's own cgroup holds the throttle on the root's device
    // (v2 io.max, or v1 blkio throttle files), in bytes per second.
    let four_mib = (4u64 << 20).to_string();
    let throttles: Vec<&str> = r.stdout.lines().filter(|l| l.contains(&four_mib)).collect();
    assert!(
        throttles.len() == 2
            || throttles
                .iter()
                .any(|l| l.contains("rbps=") && l.contains("wbps=")),
        "no read and write throttle of 4 MiB/s: {r:?}"
    );
    // A throttled direct write of 8 MiB at 4 MiB/s takes about 2 s, however
    // fast the disk: the limit acts.
    let start = Instant::now();
    let r = root.run(&[
        "run",
        "--rm",
        "--io-write-bps",
        "4M",
        "bb:1",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/data",
        "bs=64k",
        "count=128",
        "oflag=direct",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "8 MiB at 4 MiB/s took {:?}: the throttle does not act",
        start.elapsed()
    );
}
