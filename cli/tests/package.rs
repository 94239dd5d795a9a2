//! The .deb and .rpm `scripts/package.sh` builds: lintian and rpmlint
//! report no errors; the declared dependencies (and Debian's resolve on
//! this Debian); each installed into a fresh root by dpkg and rpm lands
//! where its units expect, and `systemd-analyze verify` accepts the units
//! there; the glibc floor is the README's; and the installed binary works
//! (snapshots and a container on this host's btrfs).
#![forbid(unsafe_code)]

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use cli_support::{busybox_image, Root};
use integration::fixtures::{run, temp_dir};
use integration::harness::{self, KernelTest};
use integration::need::Need;

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new("packages_install_and_run", packages_install_and_run)
            .needs(&[Need::Root, Need::Loop, Need::Btrfs])
            // A cold release build (CI builds it in a step of its own first).
            .timeout(Duration::from_secs(1800)),
    ])
}

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `program args`; its status, stdout and stderr.
fn output(program: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup.sh installs it)"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// The files every package installs, but for the unit and zsh directories.
const FILES: &[&str] = &[
    "usr/bin/thinbox",
    "etc/thinbox/config.toml",
    "usr/share/man/man1/thinbox.1.gz",
    "usr/share/man/man1/thinbox-serve.1.gz",
    "usr/share/man/man1/thinbox-pool-monitor.1.gz",
    "usr/share/man/man1/thinbox-metrics.1.gz",
    "usr/share/bash-completion/completions/thinbox",
    "usr/share/fish/vendor_completions.d/thinbox.fish",
    "usr/share/doc/thinbox/copyright",
];

/// A root with nothing in it but a shell for maintainer scripts and
/// systemd's own units (copied from this host's systemd package), as a
/// fresh system has them.
fn fresh_root(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/sh")).unwrap();
    let units = dir.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    let (ok, list) = output("dpkg", &["-L", "systemd"]);
    assert!(ok, "{list}");
    let mut copied = 0;
    for f in list
        .lines()
        .filter(|l| l.starts_with("/lib/systemd/system/"))
    {
        let p = Path::new(f);
        if p.is_file() && p.parent() == Some(Path::new("/lib/systemd/system")) {
            std::fs::copy(p, units.join(p.file_name().unwrap())).unwrap();
            copied += 1;
        }
    }
    assert!(copied > 50, "systemd's units: {copied}");
}

/// `systemd-analyze verify` of the two units inside `root`.
#[track_caller]
fn units_verify(root: &Path) {
    let (ok, out) = output(
        "systemd-analyze",
        &[
            "verify",
            &format!("--root={}", s(root)),
            "thinbox.service",
            "thinbox-monitor@thinbox-pool.service",
        ],
    );
    assert!(ok, "systemd-analyze verify in {}: {out}", root.display());
}

/// The ExecStart= program of a unit in `root`, resolved inside it.
fn exec_start(root: &Path, unit: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root.join(unit)).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart in {}", unit.display()));
    let program = line.split_whitespace().next().unwrap();
    root.join(program.trim_start_matches('/'))
}

#[track_caller]
fn lands(root: &Path, unitdir: &str, zsh: &str) {
    for f in FILES.iter().map(|f| f.to_string()).chain([
        format!("{unitdir}/thinbox.service"),
        format!("{unitdir}/thinbox-monitor@.service"),
        format!("{zsh}/_thinbox"),
    ]) {
        assert!(root.join(&f).is_file(), "{f} is not in {}", root.display());
    }
    for unit in ["thinbox.service", "thinbox-monitor@.service"] {
        let program = exec_start(root, &Path::new(unitdir).join(unit));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&program)
                .unwrap_or_else(|e| panic!("{unit}'s {}: {e}", program.display()))
                .permissions(),
        );
        assert_eq!(mode & 0o111, 0o111, "{}", program.display());
    }
    units_verify(root);
}

fn packages_install_and_run() {
    let out = temp_dir();
    let (ok, text) = output(
        &format!("{REPO}/scripts/package.sh"),
        &["--out", s(out.path())],
    );
    assert!(ok, "scripts/package.sh: {text}");
    let lines: Vec<&str> = text.lines().collect();
    let deb = lines
        .iter()
        .find(|l| l.ends_with(".deb"))
        .unwrap()
        .to_string();
    let rpm = lines
        .iter()
        .find(|l| l.ends_with(".rpm"))
        .unwrap()
        .to_string();
    let floor = text
        .lines()
        .find_map(|l| l.strip_prefix("glibc floor: "))
        .unwrap_or_else(|| panic!("{text}"))
        .to_owned();

    // The floor is RHEL 8's glibc, as the README says.
    assert_eq!(floor, "2.28", "{text}");
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).unwrap();
    assert!(
        readme.contains(&format!("glibc {floor}**")),
        "the README's glibc floor"
    );

    // The linters: no errors (lintian's exit says so; rpmlint's too).
    let (ok, lint) = output("lintian", &["--fail-on", "error", &deb]);
    assert!(ok, "lintian: {lint}");
    let (ok, lint) = output(
        "rpmlint",
        &["-c", &format!("{REPO}/packaging/rpmlint.toml"), &rpm],
    );
    assert!(ok && lint.contains(" 0 errors"), "rpmlint: {lint}");

    // What each declares.
    let depends = run("dpkg-deb", &["-f", &deb, "Depends"]);
    for d in ["lvm2", "thin-provisioning-tools", "e2fsprogs", "xfsprogs"] {
        assert!(depends.contains(d), "Depends: {depends}");
    }
    assert!(
        depends.contains(&format!("libc6 (>= {floor})")),
        "{depends}"
    );
    assert!(run("dpkg-deb", &["-f", &deb, "Recommends"]).contains("btrfs-progs"));
    let conffiles = run("dpkg-deb", &["-I", &deb, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/thinbox/config.toml");
    let requires = run("rpm", &["-qp", "--requires", &rpm]);
    for r in [
        "lvm2",
        "device-mapper-persistent-data",
        "e2fsprogs",
        "xfsprogs",
        &format!("glibc >= {floor}"),
    ] {
        assert!(requires.lines().any(|l| l.trim() == r), "{r} in {requires}");
    }
    assert!(
        !requires.contains("btrfs"),
        "RHEL has no btrfs-progs: {requires}"
    );
    assert!(!requires.contains("libbtrfsutil"), "{requires}");
    let config = run("rpm", &["-qp", "--configfiles", &rpm]);
    assert_eq!(config.trim(), "/etc/thinbox/config.toml");
    // Debian's dependencies resolve on this Debian.
    let (ok, sim) = output(
        "apt-get",
        &["install", "--simulate", "--no-install-recommends", &deb],
    );
    assert!(ok, "apt-get install --simulate: {sim}");

    // Installed into fresh roots.
    let roots = temp_dir();
    let deb_root = roots.path().join("deb");
    fresh_root(&deb_root);
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(deb_root.join(d)).unwrap();
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(deb_root.join(f), "").unwrap();
    }
    let (ok, o) = output(
        "dpkg",
        &[
            &format!("--root={}", s(&deb_root)),
            "--force-depends",
            "--log=/dev/null",
            "-i",
            &deb,
        ],
    );
    assert!(ok, "dpkg -i: {o}");
    lands(
        &deb_root,
        "lib/systemd/system",
        "usr/share/zsh/vendor-completions",
    );
    let status = run(
        "dpkg",
        &[&format!("--root={}", s(&deb_root)), "-s", "thinbox"],
    );
    assert!(status.contains("Status: install ok installed"), "{status}");

    let rpm_root = roots.path().join("rpm");
    fresh_root(&rpm_root);
    run("rpm", &["--root", s(&rpm_root), "--initdb"]);
    let (ok, o) = output("rpm", &["--root", s(&rpm_root), "-i", "--nodeps", &rpm]);
    assert!(ok, "rpm -i: {o}");
    lands(
        &rpm_root,
        "usr/lib/systemd/system",
        "usr/share/zsh/site-functions",
    );
    let (ok, o) = output(
        "rpm",
        &["--root", s(&rpm_root), "-V", "--nodeps", "thinbox"],
    );
    assert!(ok, "rpm -V: {o}");

    // The man page reads, the completions parse.
    let page = run(
        "sh",
        &[
            "-c",
            &format!(
                "gzip -dc {}/usr/share/man/man1/thinbox-serve.1.gz",
                s(&deb_root)
            ),
        ],
    );
    assert!(
        page.contains(".TH thinbox-serve") && page.contains("metrics"),
        "{page}"
    );
    run(
        "bash",
        &[
            "-n",
            s(&deb_root.join("usr/share/bash-completion/completions/thinbox")),
        ],
    );

    // The installed binary's shared libraries are glibc's, and it works:
    // snapshots and a container on this host's btrfs.
    let binary = deb_root.join("usr/bin/thinbox");
    let needed = run("objdump", &["-p", s(&binary)]);
    for lib in needed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
    {
        let lib = lib.trim();
        assert!(
            [
                "libc.so.6",
                "libm.so.6",
                "libpthread.so.0",
                "libdl.so.2",
                "libutil.so.1",
                "librt.so.1",
                "ld-linux-x86-64.so.2"
            ]
            .contains(&lib),
            "the packaged binary needs {lib}"
        );
    }
    let root = Root::new();
    let packaged = |args: &[&str]| {
        let o = Command::new(&binary)
            .args(["--root", s(root.path()), "--config", s(&root.config)])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "packaged thinbox {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(packaged(&["--version"]).starts_with("thinbox "));
    packaged(&["snapshot", "prepare", "a"]);
    packaged(&["snapshot", "commit", "base", "a"]);
    busybox_image(&root, "bb:1");
    let said = packaged(&["run", "--rm", "bb:1", "--", "echo", "from the package"]);
    assert!(said.contains("from the package"), "{said}");
    let ls = packaged(&["--json", "snapshot", "ls"]);
    assert!(ls.contains("\"base\""), "{ls}");
}
