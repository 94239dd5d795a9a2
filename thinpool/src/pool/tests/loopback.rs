//! Loopback pool life cycle: create, reopen, destroy, bad input, interrupted
//! creation and opening, metadata checks after an unclean stop.

use super::*;

#[test]
fn create_reopen_destroy_leaves_nothing() {
    let e = env();
    let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    assert_eq!(e.loops.attached(), 2);
    assert_eq!(p.table().block_size, BlockSize::DEFAULT);
    assert!(p.table().features.error_if_no_space);
    // 64 MiB / 64 KiB = 1024 blocks; the low-water mark defaults to a tenth.
    assert_eq!(p.table().low_water_mark, DataBlocks::new(102));
    let u = p.status().unwrap().usage().unwrap().clone();
    assert_eq!(u.total_data, DataBlocks::new(1024));
    drop(p);
    // Re-opening an active pool is idempotent.
    let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    let p2 = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    assert!(p2.reconciliation().is_clean());
    assert_eq!(e.loops.attached(), 2);
    drop(p2);
    p.destroy().unwrap();
    assert_eq!(e.loops.attached(), 0);
    assert!(e.dm.list().unwrap().is_empty());
    assert!(!e.dir.exists());
}

#[test]
fn bad_input_gets_its_own_kind_and_leaves_nothing() {
    let e = env();
    let mut c = cfg(&e);
    c.data_size = Bytes(Bytes::mib(64).0 + Bytes::kib(4).0);
    let err = Pool::create_loopback(&e.deps, &c).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NotBlockMultiple { .. }),
        "{err}"
    );
    let mut c = cfg(&e);
    c.data_size = Bytes::gib(100);
    c.metadata_size = Bytes::mib(1);
    let err = Pool::create_loopback(&e.deps, &c).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MetadataTooSmall { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("create loopback pool, pool tp"),
        "{err}"
    );
    let mut c = cfg(&e);
    c.name = "bad name".into();
    assert!(matches!(
        Pool::create_loopback(&e.deps, &c).unwrap_err().kind(),
        ErrorKind::InvalidName { .. }
    ));
    // A failure half-way (table load) undoes everything.
    e.dm.fail_next("load tp", ErrorKind::Injected);
    assert!(Pool::create_loopback(&e.deps, &cfg(&e)).is_err());
    assert_eq!(e.loops.attached(), 0);
    assert!(e.dm.list().unwrap().is_empty());
    assert!(!e.dir.exists());
    // Name taken.
    let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    let mut c = cfg(&e);
    c.dir = e.dir.with_file_name("other");
    assert!(matches!(
        Pool::create_loopback(&e.deps, &c).unwrap_err().kind(),
        ErrorKind::NameTaken { .. }
    ));
    assert!(!c.dir.exists());
    p.destroy().unwrap();
}

#[test]
fn no_thin_target_is_its_own_error() {
    let e = env();
    e.dm.without_thin_target();
    let err = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::DmThinUnsupported);
    assert_eq!(e.loops.attached(), 0);
    assert!(!e.dir.exists());
}

#[test]
fn unclean_shutdown_runs_thin_check() {
    let e = env();
    let tools = FakeTools::new(&e.dm);
    let deps = Deps {
        tools: Arc::new(tools.clone()),
        ..e.deps.clone()
    };
    let mut p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
    assert!(!p.reconciliation().checked, "a new pool needs no check");
    p.create_thin("a", MIB16).unwrap();
    p.activate("a").unwrap();
    // A clean shutdown: the next open skips the check.
    p.shutdown().unwrap();
    assert_eq!(e.loops.attached(), 0);
    assert!(e.dm.list().unwrap().is_empty());
    let p = Pool::open_loopback(&deps, &e.dir).unwrap();
    assert!(!p.reconciliation().checked);
    // A crash: devices vanish without the clean flag.
    let (d, m) = (
        p.loops().unwrap().0.path.clone(),
        p.loops().unwrap().1.path.clone(),
    );
    drop(p);
    e.dm.remove("tp", false).unwrap();
    e.loops.detach(&d).unwrap();
    e.loops.detach(&m).unwrap();
    tools.set_corrupt(true);
    let err = Pool::open_loopback(&deps, &e.dir).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MetadataCheckFailed { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("thin_repair"), "{err}");
    assert_eq!(
        e.loops.attached(),
        0,
        "a failed open leaves no loop devices"
    );
    tools.set_corrupt(false);
    let p = Pool::open_loopback(&deps, &e.dir).unwrap();
    assert!(p.reconciliation().checked);
    assert!(p.reconciliation().is_clean());
    p.destroy().unwrap();
}

#[test]
fn deferred_destroy_of_a_busy_pool() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.activate("a").unwrap();
    e.dm.open("tp-a");
    let p2 = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    drop(p);
    assert!(
        p2.destroy().unwrap_err().is_busy(),
        "strict destroy refuses"
    );
    let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    p.destroy_deferred().unwrap();
    assert!(!e.dir.exists(), "files go at once");
    assert!(
        e.dm.info("tp-a").unwrap().is_some(),
        "the open device stays"
    );
    assert!(e.dm.info("tp").unwrap().is_some());
    e.dm.close("tp-a");
    assert!(
        e.dm.list().unwrap().is_empty(),
        "all gone after the last close"
    );
}

#[test]
fn crash_during_pool_creation_is_finished_on_open() {
    for (pattern, when) in [
        ("create tp", CrashWhen::After),
        ("load tp", CrashWhen::Before),
        ("resume tp", CrashWhen::Before),
    ] {
        // A fresh fake each time: its metadata outlives the pool, as a
        // metadata file would.
        let e = env();
        e.dm.crash_at(pattern, when);
        let r = catch_unwind(AssertUnwindSafe(|| {
            Pool::create_loopback(&e.deps, &cfg(&e))
        }));
        assert!(r.is_err(), "{pattern}: no crash");
        let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        p.create_thin("a", MIB16).unwrap();
        assert_eq!(e.loops.attached(), 2, "{pattern}");
        p.destroy().unwrap();
        assert!(
            e.dm.list().unwrap().is_empty() && !e.dir.exists(),
            "{pattern}"
        );
    }
}

#[test]
fn failed_open_undoes_only_its_own_work() {
    let e = env();
    let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    let (d, m) = (
        p.loops().unwrap().0.path.clone(),
        p.loops().unwrap().1.path.clone(),
    );
    drop(p);
    // An active pool whose reopen fails keeps its loop devices.
    e.dm.fail_next("table tp", ErrorKind::Injected);
    assert!(Pool::open_loopback(&e.deps, &e.dir).is_err());
    assert_eq!(e.loops.attached(), 2);
    assert!(e.dm.info("tp").unwrap().is_some());
    // After a "reboot", a failed activation leaves nothing attached.
    e.dm.remove("tp", false).unwrap();
    e.loops.detach(&d).unwrap();
    e.loops.detach(&m).unwrap();
    e.dm.fail_next("load tp", ErrorKind::Injected);
    assert!(Pool::open_loopback(&e.deps, &e.dir).is_err());
    assert_eq!(e.loops.attached(), 0);
    assert!(e.dm.list().unwrap().is_empty());
    Pool::open_loopback(&e.deps, &e.dir)
        .unwrap()
        .destroy()
        .unwrap();
}

#[test]
fn opens_without_metadata_tools() {
    #[derive(Debug)]
    struct NoTools;
    impl MetadataTools for NoTools {
        fn list(&self, _: MetaDev<'_>, _: bool) -> Result<Vec<ThinUsage>> {
            Err(Error::new(ErrorKind::ToolMissing {
                tool: "thin_ls".into(),
            }))
        }
        fn check(&self, _: MetaDev<'_>) -> Result<()> {
            Ok(())
        }
        fn check_snapshot(&self, _: MetaDev<'_>) -> Result<()> {
            Ok(())
        }
        fn repair(&self, _: MetaDev<'_>, _: MetaDev<'_>) -> Result<()> {
            Ok(())
        }
    }
    let e = env();
    let deps = Deps {
        tools: Arc::new(NoTools),
        ..e.deps.clone()
    };
    let mut p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
    assert!(p.reconciliation().unscanned);
    p.create_thin("a", MIB16).unwrap();
    assert!(matches!(
        p.usage().unwrap_err().kind(),
        ErrorKind::ToolMissing { .. }
    ));
    p.destroy().unwrap();
}
