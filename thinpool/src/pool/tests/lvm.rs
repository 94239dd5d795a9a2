//! Direct-lvm pools over FakeLvm.

use super::*;

pub(super) fn lvm_cfg(e: &Env) -> LvmConfig {
    let mut c = LvmConfig::new(
        vec![PathBuf::from(DISK)],
        "vg0",
        "pool",
        e.dir.join("lvm.db"),
    );
    c.profile_dir = e.dir.join("profile");
    c.data_percent = 50;
    c.metadata_percent = 2;
    c
}

pub(super) fn lvm_env(signatures: &[&str]) -> Env {
    let e = env();
    fs::create_dir_all(&e.dir).unwrap();
    e.lvm.add_disk(DISK, Bytes::gib(1), signatures);
    e.lvm.set_profile_dir(e.dir.join("profile"));
    e
}

/// Nothing of a pool is left: no VG, no PV label, no profile, no
/// store, no dm device.
fn assert_no_lvm_leftovers(e: &Env, c: &LvmConfig, what: &str) {
    assert!(e.lvm.vg_names().is_empty(), "{what}: VG left");
    assert!(e.lvm.pv_devices().is_empty(), "{what}: PV left");
    assert!(
        !e.lvm
            .signatures(Path::new(DISK))
            .unwrap()
            .contains(&"LVM2_member".to_owned()),
        "{what}: PV signature left"
    );
    assert!(!c.store.exists(), "{what}: store left");
    assert!(
        fs::read_dir(&c.profile_dir).map_or(true, |mut d| d.next().is_none()),
        "{what}: profile left"
    );
    assert!(e.dm.list().unwrap().is_empty(), "{what}: dm devices left");
}

#[test]
fn lvm_pool_lifecycle() {
    let e = lvm_env(&[]);
    let c = lvm_cfg(&e);
    let mut p = Pool::create_lvm(&e.deps, &c).unwrap();
    // 1 GiB disk: 255 extents of 4 MiB; 50% data = 127 extents, 2% metadata = 5.
    assert_eq!(p.name(), "vg0-pool");
    assert_eq!(p.table().length, Sectors::new(127 * 8192));
    assert_eq!(p.table().block_size.bytes(), Bytes::kib(512));
    assert!(p.table().features.skip_block_zeroing, "zeroing off");
    assert!(p.table().features.error_if_no_space, "--errorwhenfull y");
    let row = crate::lvm::lv(&e.lvm, "vg0", "pool").unwrap();
    assert_eq!(row.lv_profile, "thinbox-vg0-pool");
    assert_eq!(row.lv_when_full, "error");
    let profile = fs::read_to_string(c.profile_dir.join("thinbox-vg0-pool.profile")).unwrap();
    assert!(
        profile.contains("thin_pool_autoextend_threshold=80"),
        "{profile}"
    );
    // lvm2 set the mark from the profile (a refresh after attaching it):
    // 127 extents of 4 MiB are 1016 blocks of 512 KiB, 20% free is 203.
    assert_eq!(p.table().low_water_mark, DataBlocks::new(203));
    // thinbox never swaps in a table of its own beside lvm2's.
    let err = p.set_low_water_mark(DataBlocks::new(7)).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unsupported { .. }), "{err}");
    assert_eq!(p.table().low_water_mark, DataBlocks::new(203));
    assert!(e
        .lvm
        .calls()
        .iter()
        .any(|c| c == "lvchange --monitor y vg0/pool"));
    assert_eq!(p.monitor().unwrap(), Monitor::Dmeventd);
    // Thin devices on it.
    p.create_thin("a", MIB16).unwrap();
    p.activate("a").unwrap();
    p.snapshot("a", "s").unwrap();
    p.resize_thin("a", Sectors::new(MIB16.get() * 2)).unwrap();
    p.delete_thin("s").unwrap();
    assert_eq!(kernel_ids(&e, &p), vec![0]);
    // Autoextend through lvextend; lvm2's reload moves the mark along.
    let policy = AutoextendPolicy {
        threshold_percent: 0,
        extend_percent: 10,
        ..AutoextendPolicy::default()
    };
    let grown = p.maybe_extend(&policy).unwrap();
    assert!(e
        .lvm
        .calls()
        .iter()
        .any(|c| c == "lvextend -l +10%LV vg0/pool"));
    assert_eq!(p.table().length, Sectors::new(140 * 8192));
    assert_eq!(grown.data, Some(p.table().length.bytes()));
    assert_eq!(p.table().low_water_mark, DataBlocks::new(1120 / 5));
    // Shut down and reopen: the records and the thin device survive.
    p.shutdown().unwrap();
    assert!(e.dm.info("vg0-pool").unwrap().is_none());
    let p = Pool::open_lvm(&e.deps, &c.store).unwrap();
    assert!(p.reconciliation().is_clean(), "{:?}", p.reconciliation());
    assert_eq!(recorded_ids(&p), vec![0]);
    p.activate("a").unwrap();
    p.destroy().unwrap();
    assert_no_lvm_leftovers(&e, &c, "destroy");
}

#[test]
fn lvm_refuses_signatures_unless_forced() {
    let e = lvm_env(&["ext4", "dos"]);
    let mut c = lvm_cfg(&e);
    let err = Pool::create_lvm(&e.deps, &c).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::DeviceHasSignature { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("/dev/fake-vda holds ext4, dos"),
        "{err}"
    );
    assert!(err.to_string().contains("force"), "{err}");
    assert!(!e.lvm.calls().iter().any(|c| c.starts_with("pvcreate")));
    assert!(!c.store.exists());
    c.force = true;
    let p = Pool::create_lvm(&e.deps, &c).unwrap();
    assert!(e.lvm.calls().iter().any(|c| c == "wipefs -a /dev/fake-vda"));
    p.destroy().unwrap();
    assert_no_lvm_leftovers(&e, &c, "destroy");
}

#[test]
fn lvm_bad_input_and_taken_names() {
    let e = lvm_env(&[]);
    let mut c = lvm_cfg(&e);
    c.data_percent = 90;
    c.metadata_percent = 10;
    let err = Pool::create_lvm(&e.deps, &c).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Parse { .. }), "{err}");
    assert!(err.to_string().contains("spare"), "{err}");
    assert!(e.lvm.calls().is_empty(), "refused before any command");
    let mut c = lvm_cfg(&e);
    c.devices.clear();
    assert!(Pool::create_lvm(&e.deps, &c).unwrap_err().is_not_found());
    // A VG of that name exists already.
    let c = lvm_cfg(&e);
    let p = Pool::create_lvm(&e.deps, &c).unwrap();
    let mut other = lvm_cfg(&e);
    other.store = e.dir.join("other.db");
    let err = Pool::create_lvm(&e.deps, &other).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NameTaken { .. }), "{err}");
    assert!(!other.store.exists());
    // A failure half-way (lvcreate) rolls everything back.
    p.destroy().unwrap();
    e.lvm.fail_next("lvcreate");
    let err = Pool::create_lvm(&e.deps, &c).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::ToolFailed { .. }), "{err}");
    assert_no_lvm_leftovers(&e, &c, "failed lvcreate");
}

#[test]
fn lvm_without_dmeventd_thinbox_watches() {
    let e = lvm_env(&[]);
    e.lvm.set_dmeventd(false);
    let c = lvm_cfg(&e);
    let p = Pool::create_lvm(&e.deps, &c).unwrap();
    assert!(
        e.lvm
            .calls()
            .iter()
            .any(|c| c == "lvchange --monitor y vg0/pool"),
        "monitoring is attempted"
    );
    assert_eq!(p.monitor().unwrap(), Monitor::Watch);
    assert_eq!(p.monitor().unwrap().to_string(), "thinbox watch");
    p.destroy().unwrap();
    // Turned off on request even where dmeventd runs.
    e.lvm.set_dmeventd(true);
    let mut c = lvm_cfg(&e);
    c.monitor = false;
    c.error_when_full = false;
    let p = Pool::create_lvm(&e.deps, &c).unwrap();
    assert_eq!(p.monitor().unwrap(), Monitor::Watch);
    assert!(!p.table().features.error_if_no_space, "writes queue");
    drop(p);
    // A reopen (lvchange -ay) keeps monitoring off.
    let p = Pool::open_lvm(&e.deps, &c.store).unwrap();
    assert_eq!(p.monitor().unwrap(), Monitor::Watch);
    p.destroy().unwrap();
    let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    assert_eq!(p.monitor().unwrap(), Monitor::Watch);
    p.destroy().unwrap();
}

#[test]
fn lvm_create_crash_matrix() {
    // (pattern, when, rolled forward by open)
    let points = [
        ("wipefs -a", CrashWhen::Before, false),
        ("wipefs -a", CrashWhen::After, false),
        ("pvcreate", CrashWhen::Before, false),
        ("pvcreate", CrashWhen::After, false),
        ("vgcreate", CrashWhen::After, false),
        ("lvcreate", CrashWhen::Before, false),
        ("lvcreate", CrashWhen::After, false),
        ("--metadataprofile", CrashWhen::Before, false),
        ("--metadataprofile", CrashWhen::After, false),
        ("--errorwhenfull", CrashWhen::After, false),
        ("--monitor", CrashWhen::After, false),
        ("lvchange -ay", CrashWhen::Before, true),
    ];
    for (pattern, when, forward) in points {
        for retry_by_create in [false, true] {
            let what = format!("{pattern} {when:?} retry_by_create={retry_by_create}");
            let e = lvm_env(&["ext4"]);
            let mut c = lvm_cfg(&e);
            c.force = true;
            e.lvm.crash_at(pattern, when);
            let r = catch_unwind(AssertUnwindSafe(|| Pool::create_lvm(&e.deps, &c)));
            assert!(r.is_err(), "{what}: no crash");
            if retry_by_create && !forward {
                // Creating again rolls the interrupted creation back first.
                let p = Pool::create_lvm(&e.deps, &c).unwrap();
                p.destroy().unwrap();
                assert_no_lvm_leftovers(&e, &c, &what);
                continue;
            }
            match Pool::open_lvm(&e.deps, &c.store) {
                Ok(p) => {
                    assert!(forward, "{what}: an uncommitted creation was opened");
                    assert!(p.reconciliation().is_clean());
                    p.destroy().unwrap();
                    assert_no_lvm_leftovers(&e, &c, &what);
                }
                Err(err) => {
                    assert!(!forward, "{what}: {err}");
                    assert!(
                        matches!(err.kind(), ErrorKind::CreationRolledBack { .. }),
                        "{what}: {err}"
                    );
                    assert!(err.to_string().contains("create the pool again"), "{err}");
                    assert_no_lvm_leftovers(&e, &c, &what);
                    let p = Pool::create_lvm(&e.deps, &c).unwrap();
                    p.destroy().unwrap();
                }
            }
        }
    }
}

#[test]
fn lvm_rollback_leaves_what_is_not_ours() {
    let e = lvm_env(&[]);
    e.lvm.add_disk("/dev/fake-vdb", Bytes::gib(1), &[]);
    let c = lvm_cfg(&e);
    e.lvm.crash_at("vgcreate", CrashWhen::Before);
    assert!(catch_unwind(AssertUnwindSafe(|| Pool::create_lvm(&e.deps, &c))).is_err());
    // Someone else makes a VG of that name on another disk meanwhile.
    let other = vec![PathBuf::from("/dev/fake-vdb")];
    e.lvm.pvcreate(&other).unwrap();
    e.lvm.vgcreate("vg0", &other).unwrap();
    let err = Pool::open_lvm(&e.deps, &c.store).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NotOurs { .. }), "{err}");
    assert!(err.to_string().contains("volume group vg0"), "{err}");
    assert_eq!(e.lvm.vg_names(), vec!["vg0".to_owned()], "their VG stays");
    assert!(!e.lvm.calls().iter().any(|c| c.starts_with("vgremove")));
}

#[test]
fn watch_refreshes_an_lvm_pool_only_when_its_table_has_no_mark() {
    let e = lvm_env(&[]);
    let c = lvm_cfg(&e);
    let mut p = Pool::create_lvm(&e.deps, &c).unwrap();
    let refreshes = || {
        e.lvm
            .calls()
            .iter()
            .filter(|c| *c == "lvchange --refresh vg0/pool")
            .count()
    };
    let watch_once = |p: &mut Pool, threshold_percent: u8| {
        let policy = AutoextendPolicy {
            threshold_percent,
            ..AutoextendPolicy::default()
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        let opts = WatchOptions {
            once: true,
            ..WatchOptions::on_events(std::time::Duration::from_millis(5))
        };
        p.watch(&policy, &stop, opts, &mut |_| {}).unwrap();
    };
    assert_eq!(refreshes(), 1, "creation refreshes once");
    // lvm2's mark (203, from the profile's 80%) stands even where a
    // policy asks another (90%: 101): no reload of a pool that has one.
    watch_once(&mut p, 90);
    assert_eq!(refreshes(), 1, "{:?}", e.lvm.calls());
    // A table without a mark (reloaded while the profile was unreadable,
    // as a pool whose profile was attached without a reload has).
    let profile = c.profile_dir.join("thinbox-vg0-pool.profile");
    let text = fs::read_to_string(&profile).unwrap();
    fs::remove_file(&profile).unwrap();
    e.lvm
        .lvchange("vg0/pool", &crate::lvm::LvChange::Refresh)
        .unwrap();
    fs::write(&profile, text).unwrap();
    let mut p = Pool::open_lvm(&e.deps, &c.store).unwrap();
    assert_eq!(p.table().low_water_mark, DataBlocks::ZERO);
    watch_once(&mut p, 80);
    assert_eq!(refreshes(), 3, "one refresh by watch: {:?}", e.lvm.calls());
    assert_eq!(p.table().low_water_mark, DataBlocks::new(203));
    p.destroy().unwrap();
    assert_no_lvm_leftovers(&e, &c, "destroy");
}
