//! What the runner's kernel tests share: the busybox rootfs, builders and
//! starters, and the host-side witnesses.

use super::*;

/// A busybox root filesystem in a temporary directory.
pub(super) struct Rootfs {
    _dir: tempfile::TempDir,
    pub(super) path: std::path::PathBuf,
}

impl Rootfs {
    pub(super) fn new() -> Rootfs {
        let dir = temp_dir();
        let path = dir.path().join("rootfs");
        for d in [
            "bin", "proc", "sys", "dev", "tmp", "etc", "root", "mnt", "out",
        ] {
            fs::create_dir_all(path.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", path.join("bin/busybox"))
            .expect("copy /bin/busybox (busybox-static)");
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                symlink("busybox", path.join("bin").join(applet)).unwrap();
            }
        }
        fs::write(
            path.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        fs::write(
            path.join("etc/group"),
            "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
        )
        .unwrap();
        fs::write(path.join("I_AM_THE_CONTAINER_ROOT"), "").unwrap();
        Rootfs { _dir: dir, path }
    }

    pub(super) fn builder(&self) -> ContainerBuilder {
        builder_on(&self.path, "ctr")
    }

    /// Runs `script` under `sh -c`, its stdout and stderr into /out/log.
    pub(super) fn sh(&self, builder: ContainerBuilder, script: &str) -> (ExitReport, String) {
        let _ = fs::remove_file(self.path.join("out/log"));
        let config = builder
            .args(["/bin/sh", "-c", &format!("exec >/out/log 2>&1; {script}")])
            .build()
            .unwrap();
        let report = Runtime::detect().unwrap().run(&config).unwrap();
        let log = fs::read_to_string(self.path.join("out/log")).unwrap_or_default();
        (report, log)
    }
}

/// A container on `root` with PATH=/bin, a 60 s timeout and a unique id
/// made from `name`.
pub(super) fn builder_on(root: &std::path::Path, name: &str) -> ContainerBuilder {
    ContainerConfig::builder(root)
        .id(unique_name(name))
        .env("PATH", "/bin")
        .timeout(Duration::from_secs(60))
}

/// Starts `args` with `builder`'s settings.
pub(super) fn start(builder: ContainerBuilder, args: &[&str]) -> Container {
    let config = builder
        .args(args.iter().copied())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    Runtime::detect().unwrap().start(&config).unwrap()
}

/// Whether this is a cgroup v1 host whose kernel builds the memory
/// controller for v2 only: Linux 6.11 made v1 memory (and 6.12 v1 cpuset)
/// optional, and Debian's 6.12 and RHEL 10 leave them out. Only then is a
/// missing v1 memory hierarchy the kernel's doing, not a test setup's.
pub(super) fn v1_without_memory() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v1_memory = mountinfo.lines().any(|l| {
        l.contains(" - cgroup ")
            && l.rsplit(' ')
                .next()
                .is_some_and(|o| o.split(',').any(|o| o == "memory"))
    });
    let layout = Runtime::detect().unwrap().hierarchies().layout();
    layout == runner::cgroup::CgroupLayout::V1 && (major, minor) >= (6, 11) && !v1_memory
}

/// On such a host ([`v1_without_memory`]): a container with a memory limit
/// is refused with Unsupported naming the memory controller and the way
/// out, and leaves no cgroup in any hierarchy.
pub(super) fn assert_memory_limit_refused(builder: ContainerBuilder) {
    let config = builder.args(["/bin/true"]).build().unwrap();
    let Err(e) = Runtime::detect().unwrap().start(&config) else {
        panic!("a memory limit on cgroup v1 without a memory controller must be refused");
    };
    assert_eq!(e.kind(), runner::ErrorKind::Unsupported, "{e}");
    let message = e.to_string();
    assert!(
        message.contains("memory") && message.contains("cgroup v2"),
        "{message}"
    );
    for hierarchy in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = hierarchy.path().join(config.cgroup_path.as_path());
        assert!(!left.exists(), "{} was left", left.display());
    }
}

pub(super) fn assert_clean(report: &ExitReport) {
    assert!(report.cgroup_removed, "cgroup left behind: {report:?}");
}

/// Reads `key` from the `cpu.stat` of whichever cgroup dir has one.
pub(super) fn cpu_stat(dirs: &[std::path::PathBuf], key: &str) -> u64 {
    let d = dirs
        .iter()
        .find(|d| d.join("cpu.stat").exists())
        .unwrap_or_else(|| panic!("no cpu.stat in {dirs:?}"));
    let stat: runner::cgroup::FlatKeyed = fs::read_to_string(d.join("cpu.stat"))
        .unwrap()
        .parse()
        .unwrap();
    stat.get(key)
}

/// A busybox root on its own ext4 loop device of `size` bytes:
/// (temp dir, device, mount, device number), dropped in reverse order.
pub(super) fn loop_rootfs(
    size: u64,
) -> (
    tempfile::TempDir,
    integration::fixtures::LoopDevice,
    integration::fixtures::Mount,
    DevNum,
) {
    use integration::fixtures::{run, sparse_file, LoopDevice, Mount};
    let dir = temp_dir();
    let image = dir.path().join("root.img");
    sparse_file(&image, size);
    let dev = LoopDevice::attach(&image);
    run("mkfs.ext4", &["-q", dev.as_str()]);
    let mnt = Mount::new(dev.as_str(), &dir.path().join("root"), Some("ext4"), "");
    fill_with_busybox(&mnt.target);
    let device = device_number(&dev.path);
    (dir, dev, mnt, device)
}

/// Copies the busybox tree into `dir`.
pub(super) fn fill_with_busybox(dir: &std::path::Path) {
    let tree = Rootfs::new();
    integration::fixtures::run(
        "cp",
        &[
            "-a",
            &format!("{}/.", tree.path.display()),
            dir.to_str().unwrap(),
        ],
    );
}

pub(super) fn device_number(path: &std::path::Path) -> DevNum {
    use std::os::unix::fs::MetadataExt;
    let rdev = fs::metadata(path).unwrap().rdev();
    DevNum::new(
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    )
}
