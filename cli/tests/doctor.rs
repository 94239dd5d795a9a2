//! `thinbox doctor [--fix]` through the real binary, each drift made on
//! purpose: on the host a loop device leaked on a file under the root, a
//! killed container's root left mounted, a container's cgroup left in
//! every hierarchy; in the VM a dm device named for a pool's thin device
//! that no record explains and the thin id under it (reported only), the
//! pool's record store deleted, a pool left inactive as after a reboot, and
//! on a direct-lvm pool a thin id made by hand (reported only) and its LV
//! renamed by hand (reported with the lvrename back).
//! Each is reported with its fix, `--fix` repairs it, and doctor is clean
//! afterwards.
#![forbid(unsafe_code)]

mod cli_support;

use std::path::Path;
use std::process::ExitCode;

use cli_support::{disks, dm_devices, loops_under, Root, VgGuard};
use integration::fixtures::{run, sparse_file};
use integration::harness::{self, KernelTest};
use integration::need::Need;
use serde_json::Value;

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new("doctor_fixes_host_drift", doctor_fixes_host_drift).needs(&[
            Need::Root,
            Need::Loop,
            Need::Btrfs,
            Need::CgroupV1,
        ]),
        KernelTest::new("doctor_fixes_pool_drift", doctor_fixes_pool_drift).needs(&[
            Need::Root,
            Need::Loop,
            Need::DmThin,
        ]),
        KernelTest::new("doctor_finds_a_renamed_lv", doctor_finds_a_renamed_lv).needs(&[
            Need::Root,
            Need::DmThin,
            Need::Lvm,
            Need::Disks(1),
        ]),
    ])
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `thinbox --json doctor [extra]`: its exit code and report.
fn doctor(root: &Root, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["--json", "doctor"];
    args.extend_from_slice(extra);
    let r = root.run(&args);
    let v = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("doctor: {e}: {r:?}"));
    (r.code, v)
}

/// The (kind, subject, fixable) of each finding.
fn findings(v: &Value) -> Vec<(String, String, bool)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["subject"].as_str().unwrap().to_owned(),
                f["fixable"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[track_caller]
fn clean(root: &Root) {
    let (code, v) = doctor(root, &[]);
    assert_eq!((code, findings(&v)), (0, vec![]), "{v}");
}

/// The root's cgroup parent, `thinbox/ROOT_ID` (engine::containers::root_cgroup).
fn root_cgroup(root: &Root) -> String {
    let digest = run(
        "sh",
        &["-c", &format!("printf %s '{}' | sha256sum", s(root.path()))],
    );
    format!("thinbox/{}", &digest[..12])
}

fn doctor_fixes_host_drift() {
    let root = Root::new();
    root.ok(&["snapshot", "prepare", "a"]);
    clean(&root);

    // A loop device on a file under the root.
    let stray = root.path().join("stray.img");
    sparse_file(&stray, 16 << 20);
    let dev = run("losetup", &["-f", "--show", s(&stray)])
        .trim()
        .to_owned();
    // A killed container's root, still mounted.
    let rootfs = root.path().join("containers/ghost/rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    run("mount", &["-t", "tmpfs", "ghost", s(&rootfs)]);
    // Its cgroup, left in two hierarchies.
    let cgroup = format!("{}/ghost-0123", root_cgroup(&root));
    let dirs: Vec<_> = ["memory", "unified"]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h).join(&cgroup))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }

    let (code, v) = doctor(&root, &[]);
    assert_eq!(code, 1, "findings left: exit 1: {v}");
    let mut found = findings(&v);
    found.sort();
    assert_eq!(
        found,
        [
            ("leaked_loop_device".to_owned(), dev.clone(), true),
            ("leftover_cgroup".to_owned(), cgroup.clone(), true),
            ("stale_mount".to_owned(), s(&rootfs).to_owned(), true),
        ],
        "{v}"
    );
    let fixes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fix"].as_str().unwrap())
        .collect();
    assert!(
        fixes.contains(&format!("losetup -d {dev}").as_str()),
        "{fixes:?}"
    );
    // Reading changed nothing.
    assert_eq!(
        loops_under(root.path()).len(),
        2,
        "btrfs.img's and the stray"
    );

    let (code, v) = doctor(&root, &["--fix"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["fixed"].as_array().unwrap().len(), 3, "{v}");
    assert!(!integration::fixtures::is_mount_point(&rootfs));
    assert!(!loops_under(root.path()).contains(&dev));
    for d in &dirs {
        assert!(!d.exists(), "{} is left", d.display());
    }
    clean(&root);
    // The root still works.
    root.ok(&["snapshot", "rm", "a"]);
}

fn doctor_fixes_pool_drift() {
    let root = Root::with_config(
        "[devmapper]\ndata_size = \"256M\"\nmetadata_size = \"64M\"\nbase_size = \"128M\"\n",
    );
    root.ok(&["snapshot", "prepare", "a"]);
    let pool = format!(
        "{}-pool",
        root.path().file_name().unwrap().to_string_lossy()
    );
    clean(&root);

    // A thin device made by hand on thinbox's pool: no record explains it.
    run("dmsetup", &["message", &pool, "0", "create_thin 4242"]);
    let stray = format!("{pool}-stray");
    // By number: the guest has no udev to make /dev/mapper nodes.
    let devnum = run(
        "dmsetup",
        &[
            "info",
            "-c",
            "--noheadings",
            "-o",
            "major,minor",
            "--separator",
            ":",
            &pool,
        ],
    )
    .trim()
    .to_owned();
    run(
        "dmsetup",
        &[
            "create",
            &stray,
            "--table",
            &format!("0 2048 thin {devnum} 4242"),
        ],
    );
    let (code, v) = doctor(&root, &[]);
    assert_eq!(code, 1, "{v}");
    let mut found = findings(&v);
    found.sort();
    assert_eq!(
        found,
        [
            ("dm_device_without_record".to_owned(), stray.clone(), true),
            ("orphan_thin_id".to_owned(), format!("{pool}:4242"), false),
        ],
        "{v}"
    );
    // The device goes; the id, which may hold somebody's data, is only
    // reported.
    let (code, v) = doctor(&root, &["--fix"]);
    assert_eq!(code, 1, "{v}");
    assert!(!dm_devices(&stray).contains(&stray));
    let fixed: Vec<&str> = v["fixed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(fixed, ["dm_device_without_record"], "{v}");
    let (code, v) = doctor(&root, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        findings(&v),
        [("orphan_thin_id".to_owned(), format!("{pool}:4242"), false)],
        "{v}"
    );
    run("dmsetup", &["message", &pool, "0", "delete 4242"]);
    clean(&root);

    // The pool's record store deleted: reported, never compared.
    let db = root.path().join("pools").join(&pool).join("thinbox.db");
    let kept = root.path().join("thinbox.db.kept");
    std::fs::rename(&db, &kept).unwrap();
    let (code, v) = doctor(&root, &["--fix"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        findings(&v),
        [("pool_store_missing".to_owned(), pool.clone(), false)],
        "{v}"
    );
    assert!(!db.exists(), "doctor made a store");
    std::fs::rename(&kept, &db).unwrap();
    clean(&root);

    // A reboot: every device of the pool gone, the records kept.
    let mut devices = dm_devices(&pool);
    devices.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for d in &devices {
        run("dmsetup", &["remove", d]);
    }
    for l in loops_under(root.path()) {
        run("losetup", &["-d", &l]);
    }
    let (code, v) = doctor(&root, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        findings(&v),
        [("pool_inactive".to_owned(), pool.clone(), true)],
        "{v}"
    );
    let (code, v) = doctor(&root, &["--fix"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        dm_devices(&pool).contains(&pool),
        "the pool is active again"
    );
    clean(&root);
    root.ok(&["snapshot", "prepare", "b"]);
    root.ok(&["snapshot", "rm", "b"]);
}

/// A thin id made by hand in a direct-lvm pool's metadata: reported, kept.
/// The pool's thin-pool LV renamed by hand: doctor names the pool,
/// the LV it became and the `lvrename` back, and fixes nothing itself (lvm2
/// keeps no mark that proves an LV thinbox's); renamed back, all is clean.
fn doctor_finds_a_renamed_lv() {
    let disk = disks().remove(0);
    let root = Root::new();
    let name = integration::fixtures::unique_name("lvm");
    let vg = integration::fixtures::unique_name("vg").replace('-', "_");
    let _guard = VgGuard {
        vg: vg.clone(),
        disks: vec![disk.clone()],
    };
    root.ok(&[
        "pool",
        "create",
        "--name",
        &name,
        "--lvm",
        &disk,
        "--vg",
        &vg,
        "--data-percent",
        "50",
        "--metadata-percent",
        "2",
        "--force",
    ]);
    let lv = run("lvs", &["--noheadings", "-o", "lv_name,lv_attr", &vg])
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut w| match (w.next(), w.next()) {
            (Some(lv), Some(attr)) if attr.starts_with('t') => Some(lv.to_owned()),
            _ => None,
        })
        .expect("the pool's thin-pool LV");
    clean(&root);

    // A thin id made by hand in the LV's metadata: reported, never deleted.
    let dm_name = root.json(&["pool", "status", &name])["dm_name"]
        .as_str()
        .unwrap()
        .to_owned();
    run("dmsetup", &["message", &dm_name, "0", "create_thin 4242"]);
    let (code, v) = doctor(&root, &["--fix"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        findings(&v),
        [("orphan_thin_id".to_owned(), format!("{name}:4242"), false)],
        "{v}"
    );
    run("dmsetup", &["message", &dm_name, "0", "delete 4242"]);
    clean(&root);

    run("lvrename", &[&vg, &lv, "moved"]);
    let (code, v) = doctor(&root, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        findings(&v),
        vec![("pool_lv_missing".to_owned(), name.clone(), false)],
        "{v}"
    );
    let fix = v["findings"][0]["fix"].as_str().unwrap();
    assert_eq!(fix, format!("lvrename {vg} moved {lv}"), "{v}");
    assert!(
        v["findings"][0]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{vg}/moved")),
        "{v}"
    );
    // --fix leaves it alone.
    let (code, _) = doctor(&root, &["--fix"]);
    assert_eq!(code, 1);
    assert!(try_lv(&vg, "moved"));

    run("lvrename", &[&vg, "moved", &lv]);
    clean(&root);
    root.ok(&["pool", "destroy", &name]);
}

fn try_lv(vg: &str, lv: &str) -> bool {
    std::process::Command::new("lvs")
        .arg(format!("{vg}/{lv}"))
        .output()
        .is_ok_and(|o| o.status.success())
}
