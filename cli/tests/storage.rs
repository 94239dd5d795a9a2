//! A full disk can't take the store down (issue 11.3): each container's
//! root is bounded (`run --size`, `[run] size`, 10G by default) by what
//! its backend offers (btrfs: a qgroup limit on thinbox's own image;
//! dm-thin: the device; zfs: `refquota`), the exit reason says the
//! container's own root was full, and the stores live off the filesystem
//! containers write into, so a container that fills a shared filesystem
//! leaves every command working. Backends that cannot bound a root
//! (overlay, naive) refuse `--size` and say the root is unbounded.
//!
//! And the space under the sparse btrfs image is checked (issue 11.4): on
//! a small filesystem the default image is cut to what fits, keeping a
//! reserve for the stores, and a configured one that does not fit is
//! refused with the figures; an image that went read-only after loop I/O
//! errors (the filesystem under it filled anyway) is mounted again on the
//! next command, with a warning.
#![forbid(unsafe_code)]

mod cli_support;

use std::fs;
use std::process::ExitCode;

use cli_support::{busybox_image, containers, snapshots, Root};
use integration::fixtures::{run, sparse_file, temp_dir, LoopDevice, Mount, ZfsPool};
use integration::harness::{self, KernelTest};
use integration::need::Need;

const BTRFS: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs];

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new(
            "host_btrfs_a_container_fills_only_its_own_root",
            a_container_fills_only_its_own_root,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_a_full_filesystem_leaves_the_stores_working",
            a_full_filesystem_leaves_the_stores_working,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_metadata_moves_off_the_container_filesystem",
            metadata_moves_off_the_container_filesystem,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_a_small_filesystem_gets_an_image_that_fits",
            a_small_filesystem_gets_an_image_that_fits,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_an_image_gone_read_only_is_mounted_again",
            an_image_gone_read_only_is_mounted_again,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_overlay_roots_are_unbounded_and_say_so",
            overlay_roots_are_unbounded_and_say_so,
        )
        .needs(&[Need::Root, Need::Overlay]),
        KernelTest::new(
            "vm_dmthin_root_size_is_its_device",
            dmthin_root_is_its_device,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        // The host kernel has no XFS quota support (CONFIG_XFS_QUOTA).
        KernelTest::new(
            "vm_overlay_xfs_root_size_is_a_project_quota",
            overlay_xfs_root_is_a_project_quota,
        )
        .needs(&[Need::Root, Need::Overlay, Need::Loop, Need::Vm]),
        KernelTest::new("vm_zfs_root_size_is_its_refquota", zfs_root_is_its_refquota)
            .needs(&[Need::Root, Need::Zfs]),
    ])
}

/// `thinbox --json run ARGS`: the exit code and the run's report.
fn run_json(root: &Root, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["--json", "run"];
    a.extend_from_slice(args);
    let r = root.run(&a);
    let v = serde_json::from_str(r.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}): {r:?}"));
    (r.code, v)
}

/// A shell line that writes 1 MiB blocks to /big until the root is full
/// (or `mib` MiB), prints how many MiB it wrote and exits as dd did.
/// Random bytes: ZFS 2.2 and later compress by default, and zeros (or any
/// repeated byte) would fill no quota.
fn fill(mib: u32) -> String {
    format!(
        "dd if=/dev/urandom of=/big bs=1M count={mib} 2>/dev/null; r=$?; \
         echo $(( $(stat -c %s /big) / 1048576 )); exit $r"
    )
}

/// What `fill` printed.
fn written_mib(report: &serde_json::Value, stdout_line: &str) -> u64 {
    stdout_line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no size printed: {stdout_line:?} ({report})"))
}

/// Runs `fill` in a container and returns (exit code, report, MiB written).
fn filled(root: &Root, extra: &[&str], mib: u32) -> (i32, serde_json::Value, u64) {
    let cmd = fill(mib);
    let mut args = extra.to_vec();
    args.extend(["bb:1", "--", "sh", "-c", &cmd]);
    let mut a = vec!["--json", "run"];
    a.extend_from_slice(&args);
    let r = root.run(&a);
    let mut lines = r.stdout.lines();
    let size_line = lines.next().unwrap_or_default().to_owned();
    let v: serde_json::Value = serde_json::from_str(lines.last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}): {r:?}"));
    let mib = written_mib(&v, &size_line);
    (r.code, v, mib)
}

/// Every command that failed on the issue's full root works.
fn commands_still_work(root: &Root) {
    root.ok(&["ps", "-a"]);
    root.ok(&["image", "ls"]);
    root.ok(&["snapshot", "ls"]);
    let r = root.run(&["run", "--rm", "bb:1", "--", "echo", "still-here"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "still-here\n"), "{r:?}");
}

/// `--size 48M` and `[run] size = "40M"` bound the root: the container's
/// writes stop near its size with the reason `root_size_reached`, the
/// filesystem keeps the rest, and the next commands work.
fn a_container_fills_only_its_own_root() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    // The image's loop device does direct I/O (no second page cache).
    let loops = cli_support::loops_under(root.path());
    assert_eq!(loops.len(), 1, "{loops:?}");
    let dio = format!(
        "/sys/block/{}/loop/dio",
        loops[0].trim_start_matches("/dev/")
    );
    assert_eq!(fs::read_to_string(&dio).unwrap().trim(), "1", "{dio}");
    let (code, v, mib) = filled(&root, &["--rm", "--size", "48M"], 200);
    assert_eq!(code, 1, "dd fails past the size: {v}");
    assert_eq!(v["report"]["reason"], "root_size_reached", "{v}");
    assert_eq!(v["root_size"], 48u64 << 20, "{v}");
    assert!(
        (8..=48).contains(&mib),
        "{mib} MiB written under a 48M bound"
    );
    commands_still_work(&root);

    root.set_config("[run]\nsize = \"40M\"\n");
    let (_, v, mib) = filled(&root, &["--rm"], 200);
    assert_eq!(v["report"]["reason"], "root_size_reached", "{v}");
    assert_eq!(v["root_size"], 40u64 << 20, "{v}");
    assert!(mib <= 40, "{mib} MiB written under a 40M bound");
    // --size beats the config; a size below 1M is refused up front.
    let (_, v, mib) = filled(&root, &["--rm", "--size", "64M"], 50);
    assert_eq!(v["report"]["reason"], "exited", "50 MiB fit in 64M: {v}");
    assert_eq!(mib, 50);
    let line = root.fails(&["run", "--size", "512K", "bb:1", "--", "true"], 2);
    assert!(
        line.contains("--size 512 KiB") && line.contains("at least 1M"),
        "{line}"
    );
    assert!(containers(&root).is_empty());
}

/// The issue's defect: a container filling a shared filesystem (here a
/// 256M btrfs image under a 2G bound) took every command down with
/// "metadata store error", as the snapshot store lived on it. Now the
/// reason is `root_device_full` and ps, image ls, rm and run work.
fn a_full_filesystem_leaves_the_stores_working() {
    let root = Root::with_config("[btrfs]\nimage_size = \"256M\"\n[run]\nsize = \"2G\"\n");
    busybox_image(&root, "bb:1");
    assert!(root.path().join("snapshots/metadata.db").is_file());
    assert!(!root.path().join("btrfs/metadata.db").exists());
    let (code, v, mib) = filled(&root, &["--name", "hog"], 1000);
    assert_ne!(code, 0, "{v}");
    assert_eq!(v["report"]["reason"], "root_device_full", "{v}");
    assert!(mib > 100, "only {mib} MiB fit on the 256M filesystem");
    commands_still_work(&root);
    root.ok(&["rm", "hog"]);
    commands_still_work(&root);
}

/// A root made before the store moved (metadata inside the btrfs image)
/// is moved on open and keeps its images.
fn metadata_moves_off_the_container_filesystem() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let (new, old) = (
        root.path().join("snapshots/metadata.db"),
        root.path().join("btrfs/metadata.db"),
    );
    let before = snapshots(&root);
    // The old layout: the store inside the mounted image.
    for suffix in ["", "-wal"] {
        let from = root.path().join(format!("snapshots/metadata.db{suffix}"));
        if from.exists() {
            fs::copy(
                &from,
                root.path().join(format!("btrfs/metadata.db{suffix}")),
            )
            .unwrap();
            fs::remove_file(&from).unwrap();
        }
    }
    assert_eq!(snapshots(&root), before);
    assert!(new.is_file() && !old.exists());
    commands_still_work(&root);
}

/// On overlay off xfs a root cannot be bounded: `--size` is refused
/// saying what would, making nothing; without it the run says so and works.
fn overlay_roots_are_unbounded_and_say_so() {
    let root = Root::with_config("backend = \"overlay\"\n");
    busybox_image(&root, "bb:1");
    let before = snapshots(&root);
    let line = root.fails(&["run", "--size", "64M", "bb:1", "--", "true"], 2);
    assert!(
        line.contains("--size 64 MiB") && line.contains("only on xfs mounted with -o prjquota"),
        "{line}"
    );
    assert_eq!(snapshots(&root), before);
    assert!(containers(&root).is_empty());
    let r = root.run(&["run", "--rm", "bb:1", "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("no size bound"), "{r:?}");
    let (_, v) = run_json(&root, &["--rm", "bb:1", "--", "true"]);
    assert!(v["root_size"].is_null(), "{v}");
}

/// dm-thin: the root is its thin device (`devmapper.base_size`); filling it
/// is `root_size_reached`, and `--size` grows the device past the base.
fn dmthin_root_is_its_device() {
    let root = Root::with_config("[devmapper]\ndata_size = \"1G\"\nbase_size = \"64M\"\n");
    busybox_image(&root, "bb:1");
    let (code, v, mib) = filled(&root, &["--rm"], 200);
    assert_ne!(code, 0, "{v}");
    assert_eq!(v["report"]["reason"], "root_size_reached", "{v}");
    assert_eq!(v["root_size"], 64u64 << 20, "{v}");
    assert!((32..=64).contains(&mib), "{mib} MiB on a 64M device");
    let r = root.run(&[
        "run",
        "--rm",
        "--size",
        "128M",
        "bb:1",
        "--",
        "sh",
        "-c",
        "stat -f -c '%b %S' /",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let nums: Vec<u64> = r
        .stdout
        .split_whitespace()
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("not blocks and a size: {r:?}"))
        })
        .collect();
    let kib = nums[0] * nums[1] / 1024;
    assert!(kib > 96 << 10, "--size 128M gave a {kib} KiB filesystem");
    commands_still_work(&root);
}

/// zfs: `--size` is the clone's refquota; filling it is `root_size_reached`.
fn zfs_root_is_its_refquota() {
    let zpool = ZfsPool::create(512 << 20);
    let dataset = format!("{}/thinbox", zpool.name);
    run("zfs", &["create", &dataset]);
    let root = Root::with_config(&format!(
        "backend = \"zfs\"\n[zfs]\ndataset = \"{dataset}\"\n"
    ));
    busybox_image(&root, "bb:1");
    let (code, v, mib) = filled(&root, &["--rm", "--size", "32M"], 200);
    assert_ne!(code, 0, "{v}");
    assert_eq!(v["report"]["reason"], "root_size_reached", "{v}");
    assert!(mib <= 32, "{mib} MiB under a 32M refquota");
    commands_still_work(&root);
    root.ok(&["image", "rm", "bb:1"]);
    drop(root);
}

/// A 300 MB ext4 filesystem on a loop device: the issue's small disk.
struct SmallFs {
    mount: Mount,
    _dev: LoopDevice,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    fn new() -> SmallFs {
        let dir = temp_dir();
        let file = dir.path().join("small.img");
        sparse_file(&file, 300 << 20);
        run("mkfs.ext4", &["-q", "-F", file.to_str().unwrap()]);
        let dev = LoopDevice::attach(&file);
        let mount = Mount::new(dev.as_str(), &dir.path().join("mnt"), Some("ext4"), "");
        SmallFs {
            mount,
            _dev: dev,
            _dir: dir,
        }
    }
}

fn mount_line(path: &std::path::Path) -> Option<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
        .map(str::to_owned)
}

/// The issue's 20 GiB image on a 200 MB filesystem: the default is cut to
/// the room (a warning with the figures), leaving a reserve; a configured
/// size that does not fit is refused (exit 7) leaving nothing made.
fn a_small_filesystem_gets_an_image_that_fits() {
    let small = SmallFs::new();
    let root = Root::within(&small.mount.target, "");
    let r = root.run(&["snapshot", "ls"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("would be 20 GiB")
            && r.stderr.contains("instead of the default 20 GiB")
            && r.stderr.contains("btrfs.image_size"),
        "{r:?}"
    );
    let image = fs::metadata(root.path().join("btrfs.img")).unwrap().len();
    let st = nix::sys::statvfs::statvfs(&small.mount.target).unwrap();
    let size = st.blocks() * st.fragment_size();
    assert!(
        image < size * 95 / 100,
        "a {image}-byte image on a {size}-byte filesystem"
    );
    busybox_image(&root, "bb:1");

    let other = Root::within(&small.mount.target, "[btrfs]\nimage_size = \"1G\"\n");
    let line = other.fails(&["snapshot", "ls"], 7);
    assert!(
        line.contains("would be 1 GiB") && line.contains("set btrfs.image_size to at most"),
        "{line}"
    );
    for made in ["btrfs.img", "btrfs", "backend.toml", "backend.partial.toml"] {
        assert!(!other.path().join(made).exists(), "{made} was left");
    }
    assert!(cli_support::loops_under(other.path()).is_empty());
    drop((other, root));
}

/// The filesystem under the image fills anyway (another writer): the
/// container's writes hit loop I/O errors and btrfs turns read-only. The
/// next command detaches every mount of it and mounts it afresh with a
/// warning; then everything works again.
fn an_image_gone_read_only_is_mounted_again() {
    let small = SmallFs::new();
    let root = Root::within(&small.mount.target, "[run]\nsize = \"1G\"\n");
    busybox_image(&root, "bb:1");
    let btrfs = root.path().join("btrfs");
    // Someone else takes all but 4 MiB of the filesystem.
    let st = nix::sys::statvfs::statvfs(&small.mount.target).unwrap();
    let free = st.blocks_available() * st.fragment_size();
    let filler = small.mount.target.join("filler");
    run(
        "fallocate",
        &[
            "-l",
            &(free - (4 << 20)).to_string(),
            filler.to_str().unwrap(),
        ],
    );
    let r = root.run(&[
        "run",
        "--name",
        "hog",
        "bb:1",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=100; sync",
    ]);
    run("sync", &[]);
    let mut recovered = r.stderr.contains("had gone read-only");
    if !recovered {
        let line = mount_line(&btrfs).unwrap_or_default();
        assert!(
            line.split(" - ").nth(1).is_some_and(|s| s.contains(" ro,")) || line.is_empty(),
            "btrfs did not turn read-only: {line} ({r:?})"
        );
    }
    fs::remove_file(&filler).unwrap();
    let ps = root.run(&["ps", "-a"]);
    assert_eq!(ps.code, 0, "{ps:?}");
    recovered |= ps.stderr.contains("had gone read-only") && ps.stderr.contains("mounted it again");
    assert!(recovered, "no recovery was reported: {r:?} {ps:?}");
    let line = mount_line(&btrfs).expect("btrfs mounted again");
    assert!(
        !line.split(" - ").nth(1).unwrap().contains(" ro,"),
        "{line}"
    );
    root.ok(&["rm", "hog"]);
    commands_still_work(&root);
    drop(root);
}

/// Overlay on xfs mounted with `-o prjquota`: `--size` puts the
/// container's upper and work directories in an xfs project with a hard
/// limit; filling it is `root_size_reached`.
fn overlay_xfs_root_is_a_project_quota() {
    let dir = temp_dir();
    let file = dir.path().join("xfs.img");
    sparse_file(&file, 512 << 20);
    run("mkfs.xfs", &["-q", "-f", file.to_str().unwrap()]);
    let dev = LoopDevice::attach(&file);
    let mount = Mount::new(
        dev.as_str(),
        &dir.path().join("mnt"),
        Some("xfs"),
        "prjquota",
    );
    let root = Root::within(&mount.target, "backend = \"overlay\"\n");
    busybox_image(&root, "bb:1");
    let (code, v, mib) = filled(&root, &["--rm", "--size", "16M"], 200);
    assert_ne!(code, 0, "{v}");
    assert_eq!(v["report"]["reason"], "root_size_reached", "{v}");
    assert!(
        (8..=16).contains(&mib),
        "{mib} MiB under a 16M project quota"
    );
    let (_, v) = run_json(&root, &["--rm", "bb:1", "--", "true"]);
    assert_eq!(v["root_size"], 10u64 << 30, "the default bound: {v}");
    commands_still_work(&root);
    drop(root);
    drop(mount);
    drop(dev);
}
