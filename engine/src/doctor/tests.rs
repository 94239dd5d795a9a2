//! Unit tests of [`super`] (doctor): the comparisons, over made-up tables.

use super::*;

fn loop_on(dev: &str, file: &str, deleted: bool, held: bool) -> LoopDevice {
    LoopDevice {
        device: dev.into(),
        file: file.into(),
        deleted,
        held,
    }
}

#[test]
fn loops_on_files_thinbox_does_not_keep_are_leaked() {
    let root = Path::new("/var/lib/thinbox");
    let kept: BTreeSet<PathBuf> = [
        "/var/lib/thinbox/pools/tp/data",
        "/var/lib/thinbox/pools/tp/metadata",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    let loops = [
        loop_on("/dev/loop0", "/var/lib/thinbox/pools/tp/data", false, true),
        loop_on(
            "/dev/loop1",
            "/var/lib/thinbox/pools/tp/metadata",
            true,
            true,
        ),
        loop_on(
            "/dev/loop2",
            "/var/lib/thinbox/pools/gone/data",
            false,
            false,
        ),
        loop_on("/dev/loop3", "/srv/other.img", false, false),
        loop_on("/dev/loop4", "/var/lib/thinbox/stray.img", false, true),
    ];
    let found = leaked_loops(&loops, root, &kept);
    let subjects: Vec<(&str, bool)> = found
        .iter()
        .map(|f| (f.subject.as_str(), f.fixable))
        .collect();
    // A kept file replaced under its loop device (deleted) is leaked too;
    // another tool's file is not thinbox's business; a held one is left.
    assert_eq!(
        subjects,
        [
            ("/dev/loop1", false),
            ("/dev/loop2", true),
            ("/dev/loop4", false)
        ]
    );
    assert_eq!(found[1].fix, "losetup -d /dev/loop2");
    assert!(found[0].detail.contains("(deleted)"), "{}", found[0].detail);
}

#[test]
fn roots_of_containers_not_running_are_stale_mounts() {
    let root = Path::new("/r");
    let mounts: Vec<PathBuf> = [
        "/r/containers/web/rootfs",
        "/r/containers/db/rootfs",
        "/r/containers/db/rootfs",
        "/r/containers/db/rootfs/proc",
        "/r/btrfs",
        "/other/containers/x/rootfs",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    let running: BTreeSet<String> = ["web".to_owned()].into();
    let found = stale_mounts(&mounts, root, &running);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, FindingKind::StaleMount);
    assert_eq!(found[0].subject, "/r/containers/db/rootfs");
    assert_eq!(found[0].fix, "umount /r/containers/db/rootfs");
    assert!(found[0].fixable);
}

#[test]
fn thin_ids_and_records_are_compared_both_ways() {
    let in_metadata: BTreeSet<u32> = [1, 2, 7].into();
    let recorded: std::collections::BTreeMap<u32, String> = [
        (1, "base".to_owned()),
        (2, "snap-a".to_owned()),
        (3, "snap-b".to_owned()),
    ]
    .into();
    let found = thin_id_drift("tp", "tp-dm", &in_metadata, &recorded);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].kind, FindingKind::OrphanThinId);
    assert_eq!(found[0].subject, "tp:7");
    assert!(found[0]
        .fix
        .ends_with("dmsetup message tp-dm 0 \"delete 7\""));
    // Not provably thinbox's: someone's data, for all doctor knows.
    assert!(!found[0].fixable);
    assert_eq!(found[1].kind, FindingKind::RecordWithoutThinDevice);
    assert_eq!(found[1].subject, "tp:snap-b");
    assert!(!found[1].fixable);
    assert!(thin_id_drift("tp", "tp", &[1].into(), &[(1, "x".into())].into()).is_empty());
}
