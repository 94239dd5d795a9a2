//! Criterion benchmarks for thinbox. Each benchmark measures thinbox and a
//! peer doing the same work in the same run (raw dmsetup/btrfs/zfs commands,
//! runc and crun, overlayfs) and the ratio goes into docs/benchmarks.md.
//!
//! The benchmark targets are in `benches/benches/` (`snapshot_backends`,
//! `container_start`, `cli_paths`; thinpool has its own `snapshot_cycle`);
//! this library holds what they share: the busybox OCI bundle the runtimes
//! run ([`Bundle`]) and interleaved A/B timing of two processes ([`Pairs`]).
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A busybox rootfs inside one OCI bundle directory (`runc spec`, its
/// process `/bin/true`, no terminal), shared by every runtime.
#[derive(Debug)]
pub struct Bundle {
    _dir: tempfile::TempDir,
    /// The rootfs (busybox with an applet link each, passwd and group).
    pub rootfs: PathBuf,
    /// The bundle directory (`config.json`, `rootfs/`).
    pub bundle: PathBuf,
    /// A container id for the runtimes, unique to this process.
    pub id: String,
}

impl Bundle {
    /// Makes the rootfs and the bundle in a new temporary directory.
    pub fn new() -> Bundle {
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("thinbox-test-{pid}-bench-"))
            .tempdir()
            .expect("temp dir");
        let bundle = dir.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("copy /bin/busybox (install busybox-static)");
        // In a chroot so the applet links point at /bin/busybox inside the
        // rootfs, not at the temp dir's host path.
        run(Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/busybox", "--install", "-s", "/bin"]));
        if !rootfs.join("bin/true").exists() {
            symlink("busybox", rootfs.join("bin/true")).unwrap();
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();

        // `runc spec` writes the default bundle config; crun and thinbox
        // read the same.
        run(Command::new("runc").arg("spec").current_dir(&bundle));
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        spec["process"]["args"] = serde_json::json!(["/bin/true"]);
        spec["process"]["terminal"] = serde_json::json!(false);
        spec["root"]["path"] = serde_json::json!(rootfs.to_str().unwrap());
        fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

        Bundle {
            _dir: dir,
            rootfs,
            bundle,
            id: format!("thinbox-test-{pid}-bench"),
        }
    }

    /// The temporary directory the bundle is in (for other fixtures).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Default for Bundle {
    fn default() -> Bundle {
        Bundle::new()
    }
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Interleaved timings of two contenders doing the same work: round `i`
/// runs A then B when `i` is even, B then A when odd, so drift of a shared
/// machine falls on both. Each contender times its own work (setup such as
/// naming a fresh key stays outside) and the figures are medians: of A, of
/// B, and of the per-round ratios A/B.
#[derive(Debug, Default)]
pub struct Pairs {
    a: Vec<Duration>,
    b: Vec<Duration>,
}

impl Pairs {
    /// One round; `round` picks the order.
    pub fn round(
        &mut self,
        round: u64,
        a: &mut dyn FnMut() -> Duration,
        b: &mut dyn FnMut() -> Duration,
    ) {
        if round % 2 == 0 {
            self.a.push(a());
            self.b.push(b());
        } else {
            self.b.push(b());
            self.a.push(a());
        }
    }

    /// Rounds so far.
    pub fn len(&self) -> usize {
        self.a.len().min(self.b.len())
    }

    /// Whether no round ran.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (median A, median B, median of A/B per round).
    pub fn medians(&self) -> (Duration, Duration, f64) {
        let n = self.len();
        let mut ratios: Vec<f64> = (0..n)
            .map(|i| self.a[i].as_secs_f64() / self.b[i].as_secs_f64().max(1e-9))
            .collect();
        ratios.sort_by(f64::total_cmp);
        (
            median(&self.a[..n]),
            median(&self.b[..n]),
            median_f(&ratios),
        )
    }

    /// `NAME A/B = R.RRRx (median of N interleaved rounds: a ms vs b ms)`.
    pub fn report(&self, name: &str, a: &str, b: &str) -> String {
        let (ma, mb, r) = self.medians();
        format!(
            "{name} {a}/{b} = {r:.3}x (median of {} interleaved rounds: {:.2} ms vs {:.2} ms)",
            self.len(),
            ma.as_secs_f64() * 1e3,
            mb.as_secs_f64() * 1e3
        )
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    match s.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2,
    }
}

fn median_f(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The release `thinbox` binary (`THINBOX_BIN`, else
/// `target/release/thinbox`); panics naming how to build it for `bench`.
pub fn thinbox_exe(bench: &str) -> PathBuf {
    let exe = std::env::var_os("THINBOX_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/thinbox"),
        PathBuf::from,
    );
    assert!(
        exe.exists(),
        "{bench} needs the release thinbox at {}: run `cargo build --release -p cli` (or set THINBOX_BIN)",
        exe.display()
    );
    exe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_alternate_and_take_medians() {
        let mut p = Pairs::default();
        let order = std::cell::RefCell::new(Vec::new());
        for i in 0..3 {
            p.round(
                i,
                &mut || {
                    order.borrow_mut().push('a');
                    Duration::from_millis(20 + i)
                },
                &mut || {
                    order.borrow_mut().push('b');
                    Duration::from_millis(10)
                },
            );
        }
        assert_eq!(order.into_inner(), ['a', 'b', 'b', 'a', 'a', 'b']);
        let (a, b, r) = p.medians();
        assert_eq!(
            (a, b),
            (Duration::from_millis(21), Duration::from_millis(10))
        );
        assert!((r - 2.1).abs() < 1e-9, "{r}");
        assert!(p
            .report("x", "A", "B")
            .starts_with("x A/B = 2.100x (median of 3"));
    }
}
