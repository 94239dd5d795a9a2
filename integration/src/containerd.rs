//! containerd's own snapshotter test suite (`snapshots/testsuite`, from
//! Debian's `golang-github-containerd-containerd-dev`) against `thinbox
//! serve`: the Go test in `integration/containerd-suite`, built with
//! Debian's `golang-go` in GOPATH mode (`GO111MODULE=off`), and its
//! verdicts per case.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fixtures::{sigterm, Reap};

/// Where Debian puts Go sources.
pub const GOCODE: &str = "/usr/share/gocode";

/// The suite's Go source directory.
pub const SUITE_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/containerd-suite");

/// Builds the suite's test binary under `out` (once per change of its Go
/// files: their sizes and mtimes name it) and returns its path; panics
/// naming what to install when Go or containerd's sources are missing.
pub fn suite_binary(out: &Path) -> PathBuf {
    let (mut bytes, mut newest) = (0u64, 0u64);
    for e in std::fs::read_dir(SUITE_SOURCE).expect("integration/containerd-suite") {
        let e = e.unwrap();
        if e.path().extension().is_some_and(|x| x == "go") {
            let meta = e.metadata().unwrap();
            bytes += meta.len();
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            newest = newest.max(mtime);
        }
    }
    let name = format!("containerd-suite-{bytes}-{newest}.test");
    // Built on the host, the guest finds it in the shared target directory.
    if out.join(&name).exists() {
        return out.join(&name);
    }
    let out = writable(out);
    let bin = out.join(&name);
    if bin.exists() {
        return bin;
    }
    assert!(
        Path::new(GOCODE)
            .join("src/github.com/containerd/containerd/snapshots/testsuite")
            .is_dir(),
        "containerd's Go sources are missing: apt-get install golang-github-containerd-containerd-dev (scripts/setup.sh)"
    );
    let gopath = tempfile::tempdir_in(&out).expect("GOPATH directory");
    let pkg = gopath.path().join("src/thinboxsuite");
    std::fs::create_dir_all(pkg.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(SUITE_SOURCE, &pkg).unwrap();
    let partial = out.join(format!("containerd-suite.{}.partial", std::process::id()));
    let o = Command::new("go")
        .args(["test", "-c", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(&pkg)
        .env("GOPATH", format!("{}:{GOCODE}", gopath.path().display()))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", out.join("go-cache"))
        .env("HOME", &out)
        .output()
        .expect("go (apt-get install golang-go; scripts/setup.sh)");
    assert!(
        o.status.success(),
        "building containerd's snapshotter suite failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Renamed into place: a concurrent build only replaces an equal file.
    std::fs::rename(&partial, &bin).unwrap();
    bin
}

/// `dir` if this process can write there (the guest sees the host's
/// target directory read-only), else the temporary directory.
fn writable(dir: &Path) -> PathBuf {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&probe, b"").is_ok() {
        let _ = std::fs::remove_file(&probe);
        return dir.to_owned();
    }
    let tmp = std::env::temp_dir().join("thinbox-containerd-suite");
    std::fs::create_dir_all(&tmp).unwrap();
    tmp
}

/// The verdicts of one run of the suite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Cases that passed.
    pub passed: Vec<String>,
    /// Cases the suite skipped.
    pub skipped: Vec<String>,
    /// Cases that failed.
    pub failed: Vec<String>,
}

/// Reads `go test -test.v` output: the `--- PASS|SKIP|FAIL: TestX/Case`
/// lines of the cases (the parent test's own line is left out).
pub fn verdicts(output: &str) -> Verdicts {
    let mut v = Verdicts::default();
    for line in output.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix("--- ") else {
            continue;
        };
        let Some((verdict, rest)) = rest.split_once(": ") else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap_or_default();
        let Some((_, case)) = name.split_once('/') else {
            continue;
        };
        let list = match verdict {
            "PASS" => &mut v.passed,
            "SKIP" => &mut v.skipped,
            "FAIL" => &mut v.failed,
            _ => continue,
        };
        list.push(case.to_owned());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_case_verdicts() {
        let out = "=== RUN   TestThinbox\n\
            --- FAIL: TestThinbox (0.00s)\n    \
            --- PASS: TestThinbox/Basic (0.10s)\n    \
            --- SKIP: TestThinbox/Rename (0.03s)\n    \
            testsuite.go:808: write failed\n    \
            --- FAIL: TestThinbox/128LayersMount (5.29s)\nFAIL\n";
        let v = verdicts(out);
        assert_eq!(v.passed, ["Basic"]);
        assert_eq!(v.skipped, ["Rename"]);
        assert_eq!(v.failed, ["128LayersMount"]);
    }
}

/// Debian's containerd, kept wholly inside `dir` (root, state, socket,
/// log), with `extra` appended to its config (proxy plugins, say).
#[derive(Debug)]
pub struct Containerd {
    /// Its directory: root, state, config, log.
    pub dir: PathBuf,
    /// Its socket.
    pub sock: PathBuf,
    /// The process.
    pub child: Reap,
}

impl Containerd {
    /// Starts containerd without its CRI plugin and waits until `ctr
    /// version` answers.
    pub fn start(dir: &Path, extra: &str) -> Containerd {
        Containerd::start_with(dir, extra, false)
    }

    /// Starts containerd with its CRI plugin (a Kubernetes node's
    /// containerd: the caller's `extra` configures it, its state stays in
    /// `dir`) and waits until `ctr version` answers.
    pub fn start_with_cri(dir: &Path, extra: &str) -> Containerd {
        Containerd::start_with(dir, extra, true)
    }

    fn start_with(dir: &Path, extra: &str, cri: bool) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let disabled = if cri {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\", "
        };
        let sock = dir.join("containerd.sock");
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [{disabled}\"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.zfs\"]\n\
                 [grpc]\n  address = \"{s}\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n{extra}",
                d = dir.display(),
                s = sock.display()
            ),
        )
        .unwrap();
        Containerd::start_on(dir, &sock, &cfg)
    }

    /// Starts containerd on config file `cfg` (its log in `dir`, its
    /// socket `sock`) and waits until `ctr version` answers.
    pub fn start_on(dir: &Path, sock: &Path, cfg: &Path) -> Containerd {
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Reap(
            Command::new("containerd")
                .arg("--config")
                .arg(cfg)
                .env("DM_DISABLE_UDEV", "1")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("containerd (install Debian's containerd)"),
        );
        let c = Containerd {
            dir: dir.to_owned(),
            sock: sock.to_owned(),
            child,
        };
        let started = Instant::now();
        while !c.ctr(&["version"]).0 {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "containerd never answered: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        c
    }

    /// The `ctr` command line against it, in namespace `thinbox-test`.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in("thinbox-test", args)
    }

    /// The `ctr` command line against it, in `namespace` (`k8s.io` is the
    /// CRI plugin's).
    pub fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.sock)
            .args(["--namespace", namespace])
            .args(args)
            .env("DM_DISABLE_UDEV", "1");
        c
    }

    /// Runs `ctr` against it in namespace `thinbox-test`: success and output.
    pub fn ctr(&self, args: &[&str]) -> (bool, String) {
        let o = self.ctr_command(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Stops it with SIGTERM and waits.
    pub fn stop(mut self) {
        sigterm(&self.child.0);
        self.child.0.wait().unwrap();
    }
}
