//! Defects a hostile user found (issue 11), each proven through the real
//! binary on the host's loopback btrfs default: containers of two roots do
//! not share a cgroup, a killed run leaves no cgroup for the next run of
//! the same name to inherit, impossible limits and bad roots or configs
//! are refused up front with a clear error (one JSON object under
//! `--json`), leaving nothing made.
#![forbid(unsafe_code)]

mod cli_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use cli_support::{busybox_image, start_sleeper, Root};
use integration::harness::{self, KernelTest};
use integration::need::Need;

const BTRFS: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs];

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new(
            "host_btrfs_two_roots_never_share_a_cgroup",
            two_roots_never_share_a_cgroup,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_killed_run_leaves_no_cgroup_to_inherit",
            killed_run_leaves_no_cgroup_to_inherit,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_impossible_run_limits_are_refused_up_front",
            impossible_run_limits_are_refused_up_front,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_rm_force_removes_a_starting_container",
            rm_force_removes_a_starting_container,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_snapshots_of_images_and_containers_are_guarded",
            snapshots_of_images_and_containers_are_guarded,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_readers_do_not_wait_for_an_import",
            readers_do_not_wait_for_an_import,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_btrfs_concurrent_writers_take_turns",
            concurrent_writers_take_turns,
        )
        .needs(BTRFS),
        KernelTest::new(
            "host_bad_roots_and_configs_get_a_clear_error",
            bad_roots_and_configs_get_a_clear_error,
        )
        .needs(&[Need::Root]),
    ])
}

/// The cgroup hierarchies mounted on this machine (v1 controllers and the
/// v2 or hybrid unified one).
fn hierarchies() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        out.push(PathBuf::from("/sys/fs/cgroup"));
    }
    out
}

/// thinbox's cgroups of containers called `name`, in every hierarchy.
fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for h in hierarchies() {
        let Ok(roots) = fs::read_dir(h.join("thinbox")) else {
            continue;
        };
        for root in roots.flatten().filter(|e| e.path().is_dir()) {
            // Before the fix a container's cgroup was thinbox/NAME itself.
            if root.file_name() == name {
                found.push(root.path());
            }
            for c in fs::read_dir(root.path()).into_iter().flatten().flatten() {
                let n = c.file_name().to_string_lossy().into_owned();
                if c.path().is_dir() && n.starts_with(&format!("{name}-")) {
                    found.push(c.path());
                }
            }
        }
    }
    found
}

/// `--root R1 run --name same --memory 100M` running while `--root R2 run
/// --name same --memory 50M` starts and ends: the first keeps its 100M
/// limit and is not killed by the second's cleanup.
fn two_roots_never_share_a_cgroup() {
    let (r1, r2) = (Root::new(), Root::new());
    busybox_image(&r1, "bb:1");
    busybox_image(&r2, "bb:1");
    let limit = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null \
                 || cat /sys/fs/cgroup/memory.max";
    let first = r1
        .command(&[
            "--json",
            "run",
            "--name",
            "same",
            "--memory",
            "100M",
            "bb:1",
            "--",
            "sh",
            "-c",
            &format!("while [ ! -e /go ]; do sleep 0.1; done; {limit}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r1
        .json(&["ps"])
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["state"] == "running")
    {
        assert!(Instant::now() < deadline, "the first container never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = r2.run(&[
        "run", "--rm", "--name", "same", "--memory", "50M", "bb:1", "--", "sh", "-c", limit,
    ]);
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(
        second.stdout.trim(),
        (50u64 << 20).to_string(),
        "{second:?}"
    );
    // Let the first container read its limit now.
    fs::write(r1.path().join("containers/same/rootfs/go"), "").unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&(100u64 << 20).to_string()),
        "the first container's limit changed: {stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(
        report["report"]["reason"], "exited",
        "the first container did not exit on its own: {stdout}"
    );
    r1.ok(&["rm", "same"]);
}

/// kill -9 of `thinbox run --name x --memory 32M --pids 7`, then `thinbox
/// rm x`: nothing of its cgroup is left, and the next `run --name x` does
/// not inherit its limits.
fn killed_run_leaves_no_cgroup_to_inherit() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let name = format!("x{}", std::process::id());
    let mut child = root
        .command(&[
            "run", "--name", &name, "--memory", "32M", "--pids", "7", "bb:1", "--", "sleep", "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cgroups_named(&name).is_empty() {
        assert!(Instant::now() < deadline, "no cgroup appeared for {name}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = loop {
        let ps = root.json(&["ps"]);
        if let Some(p) = ps[0]["pid"].as_i64() {
            break p;
        }
        assert!(Instant::now() < deadline, "never running: {ps}");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = || !Path::new(&format!("/proc/{pid}")).exists();
    while !gone() {
        assert!(Instant::now() < deadline, "the container outlived its run");
        std::thread::sleep(Duration::from_millis(50));
    }
    root.ok(&["rm", &name]);
    assert_eq!(cgroups_named(&name), Vec::<PathBuf>::new(), "cgroups left");

    let r = root.run(&[
        "run",
        "--rm",
        "--name",
        &name,
        "bb:1",
        "--",
        "cat",
        "/sys/fs/cgroup/pids/pids.max",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout.trim(),
        "max",
        "the new run inherited a limit: {r:?}"
    );
    assert_eq!(cgroups_named(&name), Vec::<PathBuf>::new(), "cgroups left");

    // A sleeper killed the same way is gone after any next command.
    let mut child = start_sleeper(&root, &name);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        root.ok(&["ps", "-a"]);
        if cgroups_named(&name).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", cgroups_named(&name));
        std::thread::sleep(Duration::from_millis(100));
    }
    root.ok(&["rm", &name]);
}

/// The error object `--json` prints on stderr.
fn json_error(r: &cli_support::Run) -> serde_json::Value {
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {r:?}");
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"));
    v["error"].clone()
}

/// Limits no container can run under, and a `--commit` name that is no
/// image name, are refused before anything is made or run (they were
/// accepted: `--memory 1k` OOM-killed `true`, `--timeout 0` reported
/// `timed_out`, `--cpus 1e300` failed with a raw kernel error, a bad
/// commit name was found only after the run).
fn impossible_run_limits_are_refused_up_front() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let snapshots = cli_support::snapshots(&root);
    let marker = "touch /ran; true";
    for (flags, says) in [
        (vec!["--memory", "0"], "below the 6 MiB"),
        (vec!["--memory", "1"], "below the 6 MiB"),
        (vec!["--memory", "1k"], "below the 6 MiB"),
        (vec!["--pids", "0"], "--pids 0"),
        (vec!["--timeout", "0"], "--timeout 0"),
        (vec!["--cpus", "1e300"], "out of range"),
        (vec!["--cpus", "0.001"], "out of range"),
        (vec!["--cpus", "NaN"], "out of range"),
        (vec!["--rm", "--commit", "bad name"], "--commit"),
    ] {
        let mut args = vec!["run", "--name", "limits"];
        args.extend(flags.iter().copied());
        args.extend(["bb:1", "--", "sh", "-c", marker]);
        let r = root.run(&args);
        assert_eq!(r.code, 2, "{flags:?}: {r:?}");
        assert!(r.stderr.contains(says), "{flags:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{flags:?}: {r:?}");
        let mut json = vec!["--json"];
        json.extend(args.iter().copied());
        let e = json_error(&root.run(&json));
        assert_eq!(e["kind"], "invalid_argument", "{flags:?}: {e}");
        assert_eq!(e["exit_code"], 2, "{flags:?}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
        assert!(e["fix"].as_str().is_some_and(|f| !f.is_empty()), "{e}");
    }
    assert!(
        cli_support::containers(&root).is_empty(),
        "no container was recorded"
    );
    assert_eq!(cli_support::snapshots(&root), snapshots, "nothing was made");
    // At the minimum a container runs.
    let r = root.run(&[
        "run", "--rm", "--memory", "6M", "--pids", "1", "bb:1", "--", "true",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    // Other failures are JSON objects under --json too, usage errors included.
    let e = json_error(&root.run(&["--json", "run", "no-such-image"]));
    assert_eq!(e["kind"], "not_found", "{e}");
    assert_eq!(e["exit_code"], 3, "{e}");
    let r = root.run(&["--json", "run", "--no-such-flag", "bb:1"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(json_error(&r)["kind"], "usage", "{r:?}");
}

/// `--root` naming a file, a root thinbox may not write even as root, and
/// a config file that is not UTF-8 each get one line naming the problem
/// (they said "File exists", "run as root" and exited 1).
fn bad_roots_and_configs_get_a_clear_error() {
    let dir = integration::fixtures::temp_dir();
    let config = dir.path().join("config.toml");
    fs::write(&config, "").unwrap();
    let thinbox = |root: &Path, config: &Path, args: &[&str]| -> cli_support::Run {
        std::process::Command::new(cli_support::THINBOX)
            .arg("--root")
            .arg(root)
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .unwrap()
            .into()
    };
    let file = dir.path().join("a-file");
    fs::write(&file, "not a directory").unwrap();
    for args in [&["ps"][..], &["pool", "status"]] {
        let r = thinbox(&file, &config, args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("is a file, not a directory"), "{r:?}");
    }
    let locked = dir.path().join("immutable");
    fs::create_dir(&locked).unwrap();
    integration::fixtures::run("chattr", &["+i", locked.to_str().unwrap()]);
    let r = thinbox(&locked.join("root"), &config, &["snapshot", "ls"]);
    integration::fixtures::run("chattr", &["-i", locked.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        !r.stderr.contains("run as root"),
        "said run as root to root: {r:?}"
    );
    assert!(r.stderr.contains("immutable"), "{r:?}");
    let latin1 = dir.path().join("latin1.toml");
    fs::write(&latin1, b"root = \"/var/lib/caf\xe9\"\n").unwrap();
    let r = thinbox(&dir.path().join("root"), &latin1, &["ps"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("not UTF-8"), "{r:?}");
}

/// `rm --force` of a container still starting (its `thinbox run` alive,
/// no first process yet) kills that `thinbox run` and rolls back what it
/// made (it told the user to use `--force`).
fn rm_force_removes_a_starting_container() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    root.ok(&["ps"]);
    // A `thinbox run` stuck before starting its container: a process whose
    // name starts with "thinbox", recorded as the owner of a created row.
    let stuck = root.path().join("thinbox-stuck");
    fs::copy("/bin/sleep", &stuck).unwrap();
    /// Kills the stand-in on the way out, whatever the test found.
    struct Owner(std::process::Child);
    impl Drop for Owner {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut owner = Owner(
        std::process::Command::new(&stuck)
            .arg("600")
            .spawn()
            .unwrap(),
    );
    let db = rusqlite::Connection::open(root.path().join("containers.db")).unwrap();
    db.execute(
        "INSERT INTO containers (name, image, state, owner, created) \
         VALUES ('starting', 'bb:1', 'created', ?1, 0)",
        [owner.0.id()],
    )
    .unwrap();
    drop(db);
    let r = root.run(&["rm", "starting"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("is starting") && r.stderr.contains("--force"),
        "{r:?}"
    );
    let r = root.run(&["rm", "--force", "starting"]);
    assert_eq!(r.code, 0, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = owner.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the stuck run was not killed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the stuck run was killed"
    );
    assert!(cli_support::containers(&root).is_empty());
}

/// `snapshot rm` of an image's layer and `snapshot rm|commit` of a
/// container's root are refused, naming the owner and the command that
/// removes it, unless --force; under a running container even --force is
/// refused (removing a layer four images used had succeeded, and so had
/// committing a running container's root).
fn snapshots_of_images_and_containers_are_guarded() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let layer = root.json(&["image", "inspect", "bb:1"])["layers"][0]["chain_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = root.run(&["snapshot", "rm", &layer]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("layer of image bb:1") && r.stderr.contains("thinbox image rm bb:1"),
        "{r:?}"
    );
    assert_eq!(
        root.run(&["run", "--rm", "bb:1", "--", "true"]).code,
        0,
        "the image still runs"
    );

    let mut child = start_sleeper(&root, "guarded");
    for args in [
        &["snapshot", "commit", "taken", "container/guarded"][..],
        &[
            "snapshot",
            "commit",
            "--force",
            "taken",
            "container/guarded",
        ],
        &["snapshot", "rm", "container/guarded"],
        &["snapshot", "rm", "--force", "container/guarded"],
    ] {
        let r = root.run(args);
        assert_eq!(r.code, 4, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("running container \"guarded\""),
            "{args:?}: {r:?}"
        );
    }
    let ps = root.json(&["ps"]);
    assert_eq!(
        ps[0]["state"], "running",
        "the container kept its root: {ps}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while root.json(&["ps"]).as_array().is_some_and(|a| !a.is_empty()) {
        assert!(Instant::now() < deadline, "never exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = root.run(&["snapshot", "rm", "container/guarded"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("thinbox rm guarded"), "{r:?}");
    root.ok(&["snapshot", "rm", "--force", "container/guarded"]);
    root.ok(&["rm", "guarded"]);
    assert!(cli_support::containers(&root).is_empty());
}

/// Waits (up to a minute: a deadlock guard, not a timing claim) for
/// `child` to exit; kills it and fails if it does not.
fn wait_or_kill(mut child: std::process::Child, what: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} waited for the paused import");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// An import held after its first layer (`THINBOX_PAUSE_AT`) does not
/// keep the root: `ps`, `image ls`, `image inspect` and `snapshot ls`
/// answer meanwhile (they waited for the whole import), `image ls` does not
/// show the half-made image, and writers of other things (`run`, `snapshot
/// prepare`, `rm`) go ahead without waiting.
fn readers_do_not_wait_for_an_import() {
    use snapshotter::image::write::{self, Entry, ImageSpec};
    let root = Root::new();
    busybox_image(&root, "bb:1");
    root.ok(&["run", "--name", "done", "bb:1", "--", "true"]);
    let oci = root.path().join("two-layers");
    let layer = |name: &str| write::layer_tar(&[Entry::file(name, b"x", 0o644)]).unwrap();
    let config = snapshotter::image::ImageConfig {
        env: vec![],
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        working_dir: "/".into(),
        user: String::new(),
        ..Default::default()
    };
    write::oci_dir(
        &ImageSpec::new(config, vec![layer("a"), layer("b")]).name("two:1"),
        &oci,
    )
    .unwrap();
    let pause = tempfile::tempdir().unwrap();
    let import = root
        .command(&["image", "import", oci.to_str().unwrap()])
        .env("THINBOX_PAUSE_AT", "import-layer")
        .env("THINBOX_PAUSE_DIR", pause.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pause.path().join("paused").exists() {
        assert!(
            Instant::now() < deadline,
            "the import never reached its pause"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let read = |args: &[&str]| {
        let child = root
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_or_kill(child, &format!("thinbox {args:?}"));
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ps = read(&["--json", "ps", "-a"]);
    assert!(ps.contains("\"done\""), "{ps}");
    let ls = read(&["image", "ls"]);
    assert!(ls.contains("bb:1") && !ls.contains("two:1"), "{ls}");
    assert!(read(&["image", "inspect", "bb:1"]).contains("bb:1"));
    let snaps = read(&["--json", "snapshot", "ls"]);
    assert!(snaps.contains("\"kind\""), "{snaps}");

    // So do writers of other things: a container runs, a snapshot is
    // made and removed, all while the import holds the root.
    let run = root
        .command(&["run", "--rm", "bb:1", "--", "echo", "ran"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_or_kill(run, "thinbox run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("waiting"),
        "{out:?}"
    );
    read(&["snapshot", "prepare", "beside"]);
    read(&["snapshot", "rm", "beside"]);
    fs::write(pause.path().join("go"), "").unwrap();
    let out = wait_or_kill(import, "the import");
    assert!(out.status.success(), "{out:?}");
    assert!(read(&["image", "ls"]).contains("two:1"));
}

/// Two processes making and removing snapshots on one root at once take
/// turns on its locks: every command succeeds and nothing is left.
fn concurrent_writers_take_turns() {
    let root = Root::new();
    busybox_image(&root, "bb:1");
    let before = cli_support::snapshots(&root);
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let script = (0..8)
                .map(|i| {
                    format!(
                        "{t} snapshot prepare w{w}-{i} && {t} snapshot rm w{w}-{i} && \
                         {t} run --rm bb:1 -- true || exit 1",
                        t = root_command(&root)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::process::Command::new("sh")
                .args(["-ec", &script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for w in workers {
        let out = wait_or_kill(w, "a writer");
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(cli_support::snapshots(&root), before);
    assert!(cli_support::containers(&root).is_empty());
}

/// The shell words that run the test binary against `root`.
fn root_command(root: &Root) -> String {
    format!(
        "{} --root {} --config {}",
        cli_support::THINBOX,
        root.path().display(),
        root.config.display()
    )
}
