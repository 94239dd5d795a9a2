//! The embedded default and the configuration, through the real binary:
//! loopback btrfs on the host, loopback dm-thin in the VM, the choice
//! printed once and recorded, crash leftovers redone, config overrides and
//! errors, usage errors, and the non-root refusal.
#![forbid(unsafe_code)]

mod cli_support;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use cli_support::{is_mounted, loops_under, one_line, Root, THINBOX};
use integration::harness::{self, KernelTest};
use integration::need::Need;

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new(
            "default_lands_on_loopback_btrfs",
            default_lands_on_loopback_btrfs,
        )
        .needs(&[Need::Root, Need::Loop, Need::Btrfs]),
        KernelTest::new(
            "default_is_remounted_after_reboot",
            default_is_remounted_after_reboot,
        )
        .needs(&[Need::Root, Need::Loop, Need::Btrfs]),
        KernelTest::new("half_made_default_is_redone", half_made_default_is_redone).needs(&[
            Need::Root,
            Need::Loop,
            Need::Btrfs,
        ]),
        KernelTest::new(
            "config_file_overrides_the_default",
            config_file_overrides_the_default,
        )
        .needs(&[Need::Root, Need::Overlay]),
        KernelTest::new(
            "bad_config_is_one_line_and_changes_nothing",
            bad_config_is_one_line_and_changes_nothing,
        )
        .needs(&[Need::Root]),
        KernelTest::new(
            "killed_at_each_step_of_the_btrfs_default",
            killed_at_each_step_of_the_btrfs_default,
        )
        .needs(&[Need::Root, Need::Loop, Need::Btrfs]),
        KernelTest::new(
            "killed_at_each_step_of_the_dm_thin_default",
            killed_at_each_step_of_the_dm_thin_default,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        KernelTest::new(
            "a_second_thinbox_waits_for_the_first",
            a_second_thinbox_waits_for_the_first,
        )
        .needs(&[Need::Root, Need::Loop, Need::Btrfs]),
        KernelTest::new("usage_errors_exit_2", usage_errors_exit_2),
        KernelTest::new("non_root_is_refused", non_root_is_refused).needs(&[Need::Root]),
        KernelTest::new(
            "half_made_dm_thin_default_is_redone",
            half_made_dm_thin_default_is_redone,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin]),
        KernelTest::new("configured_btrfs_directory", configured_btrfs_directory).needs(&[
            Need::Root,
            Need::Loop,
            Need::Btrfs,
        ]),
        KernelTest::new(
            "systemd_unit_runs_a_valid_command",
            systemd_unit_runs_a_valid_command,
        )
        .needs(&[Need::Root]),
        KernelTest::new("default_lands_on_dm_thin", default_lands_on_dm_thin).needs(&[
            Need::Root,
            Need::Loop,
            Need::DmThin,
        ]),
    ])
}

fn default_lands_on_loopback_btrfs() {
    let root = Root::new();
    let first = root.run(&["snapshot", "ls"]);
    assert_eq!(first.code, 0, "{first:?}");
    let line = one_line(&first.stderr);
    assert!(line.contains("using the btrfs backend"), "{line}");
    assert!(line.contains("no dm-thin"), "says why: {line}");
    let rec = root.backend_record();
    assert!(rec.contains("backend = \"btrfs\""), "{rec}");
    assert!(rec.contains("btrfs-image"), "{rec}");
    assert!(!root.path().join("backend.partial.toml").exists());
    assert!(is_mounted(&root.path().join("btrfs")), "image mounted");
    assert_eq!(loops_under(root.path()).len(), 1);
    let img = std::fs::metadata(root.path().join("btrfs.img")).unwrap();
    assert_eq!(img.len(), 20 << 30, "default image size");
    // Sparse: far less allocated than its size.
    use std::os::unix::fs::MetadataExt;
    assert!(img.blocks() * 512 < 1 << 30, "sparse image");

    // Later runs reuse it silently.
    let second = root.run(&["snapshot", "ls"]);
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(second.stderr, "", "the choice is printed once");
    assert_eq!(root.json(&["snapshot", "ls"]), serde_json::json!([]));
    assert_eq!(loops_under(root.path()).len(), 1, "no second loop device");
}

fn default_is_remounted_after_reboot() {
    let root = Root::new();
    root.ok(&["snapshot", "prepare", "a"]);
    root.ok(&["snapshot", "commit", "base", "a"]);
    // A reboot: the mount and the loop device are gone, the image stays.
    let mnt = root.path().join("btrfs");
    integration::fixtures::run("umount", &[mnt.to_str().unwrap()]);
    for l in loops_under(root.path()) {
        integration::fixtures::run("losetup", &["-d", &l]);
    }
    assert!(!is_mounted(&mnt));
    // Listing reads the records only (it touches no mount).
    let r = root.run(&["--json", "snapshot", "ls"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr, "", "no new choice after a reboot");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["name"], "base", "{v}");
    assert_eq!(v[0]["kind"], "committed", "{v}");
    // The first command that needs the snapshots mounts the image again.
    let r = root.run(&["snapshot", "prepare", "b", "base"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{r:?}");
    assert!(is_mounted(&mnt));
}

fn half_made_default_is_redone() {
    let root = Root::new();
    // What a run killed during mkfs leaves: the partial record and an
    // unformatted image.
    let img = root.path().join("btrfs.img");
    integration::fixtures::sparse_file(&img, 1 << 30);
    std::fs::write(
        root.path().join("backend.partial.toml"),
        format!(
            "backend = \"btrfs\"\nreason = \"test\"\n[source]\nkind = \"btrfs-image\"\nimage = \"{}\"\nmountpoint = \"{}\"\n",
            img.display(),
            root.path().join("btrfs").display()
        ),
    )
    .unwrap();
    let r = root.run(&["snapshot", "ls"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(one_line(&r.stderr).contains("btrfs"), "{r:?}");
    assert!(!root.path().join("backend.partial.toml").exists());
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        20 << 30,
        "image made again"
    );
    root.ok(&["snapshot", "prepare", "k"]);
    assert_eq!(loops_under(root.path()).len(), 1);
}

fn config_file_overrides_the_default() {
    let root = Root::with_config("backend = \"overlay\"\n");
    let r = root.run(&["snapshot", "prepare", "a"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        one_line(&r.stderr).contains("using the overlay backend"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("overlay") || r.stdout.contains("bind"),
        "{r:?}"
    );
    assert!(root.backend_record().contains("backend = \"overlay\""));
    assert!(!root.path().join("btrfs.img").exists(), "no btrfs made");

    // The root keeps its backend: a config asking for another one is refused.
    root.set_config("backend = \"naive\"\n");
    let line = root.fails(&["snapshot", "ls"], 2);
    assert!(line.contains("overlay") && line.contains("naive"), "{line}");

    // --root on the command line beats `root` in the config file.
    let other = Root::with_config("backend = \"naive\"\n");
    other.set_config(&format!(
        "root = \"{}\"\nbackend = \"naive\"\n",
        root.path().join("elsewhere").display()
    ));
    other.ok(&["snapshot", "ls"]);
    assert!(other.backend_record().contains("naive"));
    assert!(!root.path().join("elsewhere").exists());
}

fn bad_config_is_one_line_and_changes_nothing() {
    let root = Root::with_config("backend = \"btrfs\"\n[devmapper]\ndata_sise = \"1G\"\n");
    let line = root.fails(&["snapshot", "ls"], 2);
    assert!(line.contains("data_sise"), "names the key: {line}");
    assert!(line.contains("config.toml"), "names the file: {line}");
    assert!(line.contains("line 3"), "{line}");
    assert!(!root.path().join("backend.toml").exists());

    root.set_config("backend = \"lvm\"\n");
    let line = root.fails(&["snapshot", "ls"], 2);
    assert!(line.contains("lvm"), "{line}");

    root.set_config("backend = \"zfs\"\n");
    let line = root.fails(&["snapshot", "ls"], 2);
    assert!(line.contains("[zfs] dataset"), "{line}");
    assert!(!root.path().join("backend.toml").exists());

    let r = std::process::Command::new(THINBOX)
        .args([
            "--root",
            "/nonexistent",
            "--config",
            "/nonexistent/c.toml",
            "snapshot",
            "ls",
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(3));
    assert!(one_line(&String::from_utf8_lossy(&r.stderr)).contains("/nonexistent/c.toml"));
}

fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["snapshot", "ls", "--bogus"],
        &["pool", "create"],
        &["pool", "extend"],
        &["snapshot", "prepare"],
    ] {
        let out = std::process::Command::new(THINBOX)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    let out = std::process::Command::new(THINBOX)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("Exit codes") && help.contains("5  not root"),
        "{help}"
    );
}

fn non_root_is_refused() {
    let root = Root::new();
    for args in [&["snapshot", "ls"][..], &["pool", "status"]] {
        let out = root
            .command(args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run thinbox as nobody");
        assert_eq!(out.status.code(), Some(5), "{args:?}: {out:?}");
        let line = one_line(&String::from_utf8_lossy(&out.stderr));
        assert!(line.contains("run as root"), "{line}");
    }
    assert!(!root.path().join("backend.toml").exists());
}

fn default_lands_on_dm_thin() {
    // The default backend choice with smaller sizes (the guest's /tmp is a tmpfs).
    let root = Root::with_config(
        "[devmapper]\ndata_size = \"2G\"\nmetadata_size = \"64M\"\nbase_size = \"256M\"\n",
    );
    let r = root.run(&["snapshot", "ls"]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = one_line(&r.stderr);
    assert!(line.contains("using the dm-thin backend"), "{line}");
    let rec = root.backend_record();
    assert!(rec.contains("backend = \"dm-thin\""), "{rec}");
    let pool = format!(
        "{}-pool",
        root.path().file_name().unwrap().to_string_lossy()
    );
    assert!(rec.contains(&pool), "{rec}");
    assert_eq!(root.run(&["snapshot", "ls"]).stderr, "", "printed once");

    // The pool is a named pool: `thinbox pool status` shows it.
    let st = root.json(&["pool", "status", &pool]);
    assert_eq!(st["kind"], "loopback", "{st}");
    assert_eq!(st["mode"], "rw", "{st}");
    assert_eq!(st["data"]["total_bytes"], 2u64 << 30, "{st}");
    // And it cannot be destroyed under the snapshotter's feet.
    let line = root.fails(&["pool", "destroy", &pool], 4);
    assert!(line.contains("holds the snapshots"), "{line}");

    // Snapshots work on it: block devices with ext4.
    let mnt = root.path().join("mnt");
    let out = root.ok(&["snapshot", "prepare", "a", "--mount", mnt.to_str().unwrap()]);
    assert!(out.contains("mounted"), "{out}");
    std::fs::write(mnt.join("hello"), "dm-thin").unwrap();
    integration::fixtures::run("umount", &[mnt.to_str().unwrap()]);
    root.ok(&["snapshot", "commit", "base", "a"]);
    // Usage counts exclusive blocks: all of base's before a view shares them.
    let u = root.json(&["snapshot", "usage", "base"]);
    assert!(u["size"].as_u64().unwrap() > 0, "{u}");
    let v = root.json(&["snapshot", "view", "v", "base"]);
    assert_eq!(v["mounts"][0]["type"], "ext4", "{v}");
    let tar = root.path().join("layer.tar");
    root.ok(&["snapshot", "diff", "base", tar.to_str().unwrap()]);
    let list = integration::fixtures::run("tar", &["-tf", tar.to_str().unwrap()]);
    assert!(
        list.lines().any(|l| l.trim_start_matches("./") == "hello"),
        "{list}"
    );
    root.ok(&["snapshot", "rm", "v"]);
    root.ok(&["snapshot", "rm", "base"]);
}

fn half_made_dm_thin_default_is_redone() {
    let config = "[devmapper]\ndata_size = \"1G\"\nmetadata_size = \"64M\"\nbase_size = \"256M\"\n";
    let root = Root::with_config(config);
    let pool = format!(
        "{}-pool",
        root.path().file_name().unwrap().to_string_lossy()
    );
    // What a run killed after making the pool but before recording the
    // backend leaves: the pool (here of another size) and the partial record.
    root.ok(&[
        "pool",
        "create",
        "--name",
        &pool,
        "--data-size",
        "2G",
        "--metadata-size",
        "64M",
    ]);
    std::fs::write(
        root.path().join("backend.partial.toml"),
        format!(
            "backend = \"dm-thin\"\nreason = \"test\"\n[source]\nkind = \"loopback-pool\"\npool = \"{pool}\"\nbase_size = \"256M\"\nfs = \"ext4\"\n"
        ),
    )
    .unwrap();
    let r = root.run(&["snapshot", "ls"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(one_line(&r.stderr).contains("dm-thin"), "{r:?}");
    assert!(!root.path().join("backend.partial.toml").exists());
    let st = root.json(&["pool", "status", &pool]);
    assert_eq!(
        st["data"]["total_bytes"],
        1u64 << 30,
        "made again from the config: {st}"
    );
    root.ok(&["snapshot", "prepare", "a"]);
    root.ok(&["snapshot", "rm", "a"]);
}

fn configured_btrfs_directory() {
    use integration::fixtures::{run, sparse_file, LoopDevice, Mount};
    let fs = integration::fixtures::temp_dir();
    let img = fs.path().join("img");
    sparse_file(&img, 512 << 20);
    let dev = LoopDevice::attach(&img);
    run("mkfs.btrfs", &["-q", "-f", dev.as_str()]);
    let mnt = Mount::new(dev.as_str(), &fs.path().join("mnt"), Some("btrfs"), "");
    let dir = mnt.target.join("thinbox");

    let root = Root::with_config(&format!(
        "backend = \"btrfs\"\n[btrfs]\npath = \"{}\"\n",
        dir.display()
    ));
    let r = root.run(&["snapshot", "prepare", "a"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        one_line(&r.stderr).contains(&dir.display().to_string()),
        "{r:?}"
    );
    assert!(root.backend_record().contains("btrfs-dir"));
    assert!(!root.path().join("btrfs.img").exists(), "no image made");
    root.ok(&["snapshot", "commit", "base", "a"]);
    assert!(
        dir.join("snapshots").exists(),
        "snapshots kept in the directory"
    );
    root.ok(&["snapshot", "rm", "base"]);

    // A directory that is not on btrfs: one line, exit 6, nothing recorded.
    let other = Root::with_config(&format!(
        "backend = \"btrfs\"\n[btrfs]\npath = \"{}\"\n",
        fs.path().join("plain").display()
    ));
    let line = other.fails(&["snapshot", "ls"], 6);
    assert!(line.contains("not on btrfs"), "{line}");
    assert!(!other.path().join("backend.toml").exists());
    assert!(!other.path().join("backend.partial.toml").exists());
    drop(root);
    drop(mnt);
}

/// A unit file of `cli/systemd` and the words of its `ExecStart=`.
fn unit_exec(file: &str) -> (String, Vec<String>) {
    let path = format!("{}/systemd/{file}", env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(&path).unwrap();
    let words = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("an ExecStart line in {path}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (unit, words)
}

fn systemd_unit_runs_a_valid_command() {
    // Where the packages install it (issue 15), the same in both units.
    let (_, words) = unit_exec("thinbox-monitor@.service");
    assert_eq!(words[0], "/usr/bin/thinbox", "{words:?}");
    let (serve, serve_words) = unit_exec("thinbox.service");
    assert_eq!(serve_words[0], "/usr/bin/thinbox", "{serve_words:?}");
    assert!(serve.contains("Before=containerd.service"), "{serve}");
    // Its arguments parse: `--help` after them prints the usage, exit 0.
    let mut help: Vec<&str> = serve_words[1..].iter().map(String::as_str).collect();
    help.push("--help");
    let r = Root::new().run(&help);
    assert_eq!(r.code, 0, "{r:?}");
    let root = Root::new();
    let pool = integration::fixtures::unique_name("pool");
    let args: Vec<String> = words[1..].iter().map(|w| w.replace("%i", &pool)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = root.run(&args);
    // The arguments parse (not a usage error); the pool does not exist, or
    // this kernel has no device-mapper.
    assert!(r.code == 3 || r.code == 6, "{r:?}");
    let line = one_line(&r.stderr);
    assert!(
        line.contains(&pool) || line.contains("device-mapper"),
        "{line}"
    );
}

/// Runs `args` with `THINBOX_CRASH_AT=step`; the binary must die by SIGKILL.
#[track_caller]
fn killed_at(root: &Root, step: &str, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let out = root
        .command(args)
        .env("THINBOX_CRASH_AT", step)
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{step}: {out:?}");
}

fn killed_at_each_step_of_the_btrfs_default() {
    for step in ["btrfs-image", "btrfs-mkfs", "btrfs-mount", "backend-opened"] {
        let root = Root::new();
        killed_at(&root, step, &["snapshot", "ls"]);
        assert!(!root.path().join("backend.toml").exists(), "{step}");
        assert!(root.path().join("backend.partial.toml").exists(), "{step}");
        let r = root.run(&["snapshot", "prepare", "a"]);
        assert_eq!(r.code, 0, "{step}: {r:?}");
        assert!(
            one_line(&r.stderr).contains("using the btrfs backend"),
            "{step}: {r:?}"
        );
        assert!(!root.path().join("backend.partial.toml").exists(), "{step}");
        assert_eq!(loops_under(root.path()).len(), 1, "{step}: one loop device");
        let btrfs = root.path().join("btrfs");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let n = mounts
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(btrfs.to_str().unwrap()))
            .count();
        assert_eq!(n, 1, "{step}: mounted once");
        root.ok(&["snapshot", "commit", "base", "a"]);
    }
}

fn killed_at_each_step_of_the_dm_thin_default() {
    let config = "[devmapper]\ndata_size = \"1G\"\nmetadata_size = \"64M\"\nbase_size = \"256M\"\n";
    for step in ["pool-created", "backend-opened"] {
        let root = Root::with_config(config);
        let pool = format!(
            "{}-pool",
            root.path().file_name().unwrap().to_string_lossy()
        );
        killed_at(&root, step, &["snapshot", "ls"]);
        assert!(!root.path().join("backend.toml").exists(), "{step}");
        let r = root.run(&["snapshot", "prepare", "a"]);
        assert_eq!(r.code, 0, "{step}: {r:?}");
        assert!(
            one_line(&r.stderr).contains("using the dm-thin backend"),
            "{step}: {r:?}"
        );
        assert!(!root.path().join("backend.partial.toml").exists(), "{step}");
        assert_eq!(
            loops_under(root.path()).len(),
            2,
            "{step}: data and metadata loops"
        );
        let st = root.json(&["pool", "status", &pool]);
        assert_eq!(st["mode"], "rw", "{step}: {st}");
        root.ok(&["snapshot", "commit", "base", "a"]);
        root.ok(&["snapshot", "rm", "base"]);
    }
}

fn a_second_thinbox_waits_for_the_first() {
    use nix::fcntl::{Flock, FlockArg};
    let root = Root::new();
    root.ok(&["snapshot", "ls"]);
    // Hold the engine lock as a running thinbox would.
    let f = std::fs::File::options()
        .write(true)
        .open(root.path().join("engine.lock"))
        .unwrap();
    let held = Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap();
    let mut child = root
        .command(&["--json", "snapshot", "prepare", "k"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "waits instead of failing"
    );
    assert!(
        !root
            .path()
            .join("btrfs/active")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "nothing done while waiting"
    );
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // Said off a terminal too (a silent wait looks like a hang); the
    // holder is not a thinbox process, so none is named (the pid the
    // file names from the earlier `snapshot ls` is gone).
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{out:?}");
    assert!(
        err.starts_with("thinbox: waiting for another thinbox process holding")
            && err.contains("engine.lock"),
        "{out:?}"
    );
    root.json(&["snapshot", "inspect", "k"]);
}
