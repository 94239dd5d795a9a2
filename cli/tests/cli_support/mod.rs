//! Shared helpers for the CLI tests: a state root in a `thinbox-test-*`
//! temporary directory, the real `thinbox` binary run against it, and a
//! teardown that removes whatever the embedded default made (the btrfs
//! image's mount and loop device, or the loopback dm-thin pool).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration::fixtures::{temp_dir, try_run};
use serde_json::Value;
use snapshotter::image::write::{self, Entry, ImageSpec};
use snapshotter::image::ImageConfig;

/// The binary under test.
pub const THINBOX: &str = env!("CARGO_BIN_EXE_thinbox");

/// A state root (the temporary directory itself, so the default pool name
/// `thinbox-test-PID-...-pool` is one the sweep recognises) with a config
/// file beside the state.
pub struct Root {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Root {
    /// A root with an empty config file (the embedded default).
    pub fn new() -> Root {
        Root::with_config("")
    }

    /// A root with `config` as its config file.
    pub fn with_config(config: &str) -> Root {
        let dir = temp_dir();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        Root { dir, config: path }
    }

    /// A root in a new directory inside `parent` (on another filesystem,
    /// say), with `config` as its config file.
    pub fn within(parent: &Path, config: &str) -> Root {
        let dir = integration::fixtures::temp_dir_in(parent);
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        Root { dir, config: path }
    }

    /// The state root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the config file.
    pub fn set_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// The command line for `args` against this root.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(THINBOX);
        c.arg("--root")
            .arg(self.path())
            .arg("--config")
            .arg(&self.config)
            .args(args);
        c
    }

    /// Runs `args`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run thinbox").into()
    }

    /// Runs `args`, which must succeed; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "thinbox {args:?} failed: {r:?}");
        r.stdout
    }

    /// Runs `args` with `--json`, which must succeed; returns the parsed output.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("thinbox {a:?}: bad json {e}: {out}"))
    }

    /// Runs `args`, which must fail with exit `code` and exactly one line
    /// on stderr starting `thinbox: `; returns that line.
    #[track_caller]
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, code,
            "thinbox {args:?}: expected exit {code}: {r:?}"
        );
        one_line(&r.stderr)
    }

    /// The recorded backend (`ROOT/backend.toml`), as text.
    pub fn backend_record(&self) -> String {
        std::fs::read_to_string(self.path().join("backend.toml")).unwrap_or_default()
    }
}

/// Names of every snapshot under `root` (`thinbox snapshot ls`).
pub fn snapshots(root: &Root) -> std::collections::BTreeSet<String> {
    root.json(&["snapshot", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts `stderr` is one `thinbox: ...` line (no backtrace) and returns it.
#[track_caller]
pub fn one_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr: {stderr:?}");
    assert!(lines[0].starts_with("thinbox: "), "{stderr:?}");
    assert!(!stderr.contains("backtrace"), "{stderr:?}");
    lines[0].to_owned()
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    integration::fixtures::is_mount_point(path)
}

/// Loop devices whose backing file is under `dir`.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let backing =
            std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
        if name.starts_with("loop") && Path::new(backing.trim_end()).starts_with(dir) {
            v.push(format!("/dev/{name}"));
        }
    }
    v
}

/// dm devices whose name starts with `prefix`.
pub fn dm_devices(prefix: &str) -> Vec<String> {
    integration::fixtures::dm_names(prefix)
}

impl Drop for Root {
    fn drop(&mut self) {
        let root = self.dir.path().to_owned();
        // Mounts below the root, deepest first.
        let mut mounts: Vec<String> = integration::fixtures::mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&root))
            .map(|m| m.to_string_lossy().into_owned())
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if !try_run("umount", &[&m]) {
                try_run("umount", &["-l", &m]);
            }
        }
        // The default pool's devices: thins first, then the pool.
        let prefix = format!("{}-pool", root.file_name().unwrap().to_string_lossy());
        if Path::new("/dev/mapper/control").exists() {
            for _ in 0..3 {
                let mut devs = dm_devices(&prefix);
                devs.sort_by_key(|d| std::cmp::Reverse(d.len()));
                for d in devs {
                    try_run("dmsetup", &["remove", "--force", &d]);
                }
            }
        }
        for l in loops_under(&root) {
            try_run("losetup", &["-d", &l]);
        }
    }
}

// ---- a busybox image and containers on it -----------------------------

pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "rm", "ls", "sleep", "dd", "head", "tr", "hostname", "id", "true",
    "false", "mkdir", "test", "touch",
];

/// An image `name` with busybox and applet links, `PATH=/bin`, Cmd `sh`.
pub fn busybox_spec(name: &str) -> ImageSpec {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (install busybox-static)");
    let mut entries = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", &busybox, 0o755),
        Entry::dir("etc"),
        Entry::file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        Entry::file("etc/group", b"root:x:0:\n", 0o644),
        Entry::file("etc/motd", b"original\n", 0o644),
        Entry::file("etc/obsolete", b"to be removed\n", 0o644),
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry::dir("dev"),
        Entry::dir("tmp"),
    ];
    for a in APPLETS {
        entries.push(Entry::symlink(&format!("bin/{a}"), "busybox"));
    }
    let config = ImageConfig {
        env: vec!["PATH=/bin".into(), "FROM_IMAGE=yes".into()],
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        working_dir: "/".into(),
        user: String::new(),
        ..Default::default()
    };
    ImageSpec::new(config, vec![write::layer_tar(&entries).unwrap()]).name(name)
}

/// [`busybox_spec`] imported into `root` as `name`.
pub fn busybox_image(root: &Root, name: &str) {
    let dir = root.path().join(format!("oci-{}", name.replace(':', "-")));
    write::oci_dir(&busybox_spec(name), &dir).unwrap();
    root.ok(&["image", "import", dir.to_str().unwrap()]);
}

pub fn containers(root: &Root) -> Vec<serde_json::Value> {
    root.json(&["ps", "-a"]).as_array().unwrap().clone()
}

/// Starts `thinbox run --name NAME bb:1 -- sleep 600` and waits until
/// `ps` shows it running. The caller owns (kills and waits for) the child.
#[allow(clippy::zombie_processes)]
pub fn start_sleeper(root: &Root, name: &str) -> std::process::Child {
    let mut child = root
        .command(&["run", "--name", name, "bb:1", "--", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = root.json(&["ps"]);
        let running = ps
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name && c["state"] == "running");
        if running {
            return child;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("container never ran: {ps}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- lvm ----------------------------------------------------------------

/// The VM's spare disks (`THINBOX_VM_DISKS`).
pub fn disks() -> Vec<String> {
    std::env::var(integration::vm::DISKS_ENV)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Removes the VG (after any dm device stacked on its pool) and the PV
/// labels, whatever the test left.
pub struct VgGuard {
    /// The VG.
    pub vg: String,
    /// Its disks.
    pub disks: Vec<String>,
}

impl Drop for VgGuard {
    fn drop(&mut self) {
        let prefix = format!("{}-", self.vg.replace('-', "--"));
        // containerd's thin devices on the pool hold it open.
        for n in integration::fixtures::dm_names(&prefix) {
            if n.contains("-snap-") {
                try_run("dmsetup", &["remove", &n]);
            }
        }
        try_run("vgremove", &["-f", &self.vg]);
        for d in &self.disks {
            try_run("pvremove", &["-ff", "-y", d]);
            try_run("wipefs", &["-a", d]);
        }
    }
}

// ---- children the tests start: containerd, thinbox serve -------------

// Not every test binary uses them.
#[allow(unused_imports)]
pub use integration::containerd::Containerd;
#[allow(unused_imports)]
pub use integration::fixtures::{sigterm, Reap};

/// `thinbox serve` on `root`, up once its socket is.
pub fn serve(root: &Root, socket: &Path) -> Reap {
    serve_with(root, socket, &[])
}

/// [`serve`] with `env` set for the daemon (`THINBOX_CRASH_AT`, say).
pub fn serve_with(root: &Root, socket: &Path, env: &[(&str, &str)]) -> Reap {
    serve_args(root, socket, env, &[])
}

/// [`serve_with`] and `args` after serve's own (`--no-monitor`, say).
pub fn serve_args(root: &Root, socket: &Path, env: &[(&str, &str)], args: &[&str]) -> Reap {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(root.path().join("serve.log"))
        .unwrap();
    let child = Reap(
        root.command(&[
            "serve",
            "--socket",
            socket.to_str().unwrap(),
            // Tests run side by side: each its own port.
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap(),
    );
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "thinbox serve made no socket: {}",
            std::fs::read_to_string(root.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A plain HTTP/1.0 GET: the status code, the headers, the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line from {addr}{path}: {text}"));
    (code, head.to_owned(), body.to_owned())
}

/// Where the `thinbox serve` [`serve_with`] started answers `/metrics`
/// (`ADDR`, from its start line in `serve.log`).
pub fn metrics_address(root: &Root) -> String {
    let log = std::fs::read_to_string(root.path().join("serve.log")).unwrap_or_default();
    log.lines()
        .rev()
        .find_map(|l| {
            let (_, url) = l.split_once("metrics on http://")?;
            url.strip_suffix("/metrics").map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no metrics address in serve.log:\n{log}"))
}

/// The value of the sample whose name and labels are exactly `series` in
/// Prometheus' text format (labels sorted by name, as thinbox writes them).
#[track_caller]
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}
