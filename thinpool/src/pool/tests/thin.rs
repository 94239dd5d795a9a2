//! Thin devices: life cycle, transactions, resize, unknown ids, usage and
//! the live metadata check.

use super::*;

#[test]
fn thin_lifecycle() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    let a = p.create_thin("a", MIB16).unwrap();
    assert_eq!(a, ThinId::new(0).unwrap());
    assert!(matches!(
        p.create_thin("a", MIB16).unwrap_err().kind(),
        ErrorKind::NameTaken { .. }
    ));
    assert!(matches!(
        p.create_thin("b", Sectors::new(1000)).unwrap_err().kind(),
        ErrorKind::NotBlockMultiple { .. }
    ));
    let dev = p.activate("a").unwrap();
    assert!(dev.to_str().unwrap().starts_with("/dev/dm-"));
    assert_eq!(p.activate("a").unwrap(), dev);
    e.dm.provision("tp-a", 4).unwrap();
    let s = p.thin_status("a").unwrap();
    assert_eq!(
        s,
        ThinStatus::Working {
            mapped: Sectors::new(512),
            highest_mapped: Some(Sectors::new(511))
        }
    );
    // Snapshot of an active origin suspends it and resumes it.
    let before = e.dm.calls().len();
    let s = p.snapshot("a", "s").unwrap();
    assert_eq!(s, ThinId::new(1).unwrap());
    let calls = e.dm.calls()[before..].to_vec();
    let sus = calls
        .iter()
        .position(|c| c == "suspend tp-a")
        .expect("suspended");
    let snap = calls
        .iter()
        .position(|c| c.starts_with("message create_snap 1 0"))
        .unwrap();
    let res = calls
        .iter()
        .position(|c| c == "resume tp-a")
        .expect("resumed");
    assert!(sus < snap && snap < res, "{calls:?}");
    // A failing snapshot still resumes the origin.
    e.dm.fail_next("message create_snap", ErrorKind::Injected);
    assert!(p.snapshot("a", "s2").is_err());
    assert!(!e.dm.info("tp-a").unwrap().unwrap().suspended);
    assert!(p.store().thin("s2").unwrap().is_none());
    // Snapshot of an inactive origin does not suspend.
    p.deactivate("a", false).unwrap();
    p.deactivate("a", false).unwrap();
    let before = e.dm.calls().len();
    p.snapshot("a", "s3").unwrap();
    assert!(!e.dm.calls()[before..]
        .iter()
        .any(|c| c.starts_with("suspend")));
    // Delete refuses a busy device, then works.
    p.activate("s").unwrap();
    e.dm.open("tp-s");
    assert!(p.delete_thin("s").unwrap_err().is_busy());
    e.dm.close("tp-s");
    p.delete_thin("s").unwrap();
    assert_eq!(kernel_ids(&e, &p), vec![0, 2]);
    assert_eq!(recorded_ids(&p), vec![0, 2]);
    assert_eq!(
        p.status().unwrap().usage().unwrap().transaction_id,
        TransactionId(4)
    );
    p.destroy().unwrap();
    assert!(e.dm.list().unwrap().is_empty());
}

#[test]
fn foreign_transaction_is_detected() {
    let e = env();
    let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    e.dm.message("tp", "set_transaction_id 0 7").unwrap();
    drop(p);
    let err = Pool::open_loopback(&e.deps, &e.dir).unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::TransactionMismatch {
            kernel: 7,
            recorded: 0
        }
    );
}

#[test]
fn failed_resize_changes_nothing() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.activate("a").unwrap();
    let big = Sectors::new(MIB16.get() * 2);
    let txn = p.store().expected_txn().unwrap();
    e.dm.fail_next("load tp-a", ErrorKind::Injected);
    let err = p.resize_thin("a", big).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Injected);
    assert_eq!(p.store().thin("a").unwrap().unwrap().size, MIB16);
    assert!(p.store().pending().unwrap().is_empty());
    assert_eq!(p.store().expected_txn().unwrap(), txn);
    let live = ThinTable::from_target(&e.dm.table("tp-a").unwrap()[0]).unwrap();
    assert_eq!(live.length, MIB16);
    // A failed resume: the new table never went live, so neither does
    // the size; the next resize resumes the device with it.
    e.dm.fail_next("resume tp-a", ErrorKind::Injected);
    assert!(p.resize_thin("a", big).is_err());
    assert_eq!(p.store().thin("a").unwrap().unwrap().size, MIB16);
    assert!(p.store().pending().unwrap().is_empty());
    p.resize_thin("a", big).unwrap();
    assert_eq!(p.store().thin("a").unwrap().unwrap().size, big);
    let live = ThinTable::from_target(&e.dm.table("tp-a").unwrap()[0]).unwrap();
    assert_eq!(live.length, big);
    assert!(!e.dm.info("tp-a").unwrap().unwrap().suspended);
    p.destroy().unwrap();
}

#[test]
fn an_id_taken_behind_the_records_back_is_found_and_skipped() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    let a = p.create_thin("a", MIB16).unwrap();
    // Another tool takes the id thinbox would give next, keeping the
    // transaction id: the reopen trusts the records.
    e.dm.message("tp", &format!("create_thin {}", a.get() + 1))
        .unwrap();
    drop(p);
    let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    assert!(p.reconciliation().trusted);
    // The kernel refuses the id; thinbox compares, and takes another.
    let b = p.create_thin("b", MIB16).unwrap();
    assert_ne!(b.get(), a.get() + 1);
    assert_eq!(
        p.reconciliation().unknown_ids,
        vec![ThinId::new(u64::from(a.get()) + 1).unwrap()]
    );
    assert_eq!(p.store().pending().unwrap().len(), 0);
}

#[test]
fn unknown_and_missing_ids_are_reported() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.create_thin("b", MIB16).unwrap();
    // Another tool adds id 5 and deletes b's id behind thinbox's back.
    e.dm.message("tp", "create_thin 5").unwrap();
    e.dm.message("tp", "delete 1").unwrap();
    drop(p);
    // The pool is still active and its transaction id is the records':
    // the open trusts them (no thin_ls)...
    let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    assert!(p.reconciliation().trusted && p.reconciliation().is_clean());
    // ...until a comparison is asked for, which finds both changes.
    let r = p.rescan().unwrap().clone();
    assert_eq!(r.unknown_ids, vec![ThinId::new(5).unwrap()]);
    assert_eq!(r.missing, vec!["b".to_owned()]);
    assert!(!r.trusted);
    // While unknown ids stay, every open compares.
    drop(p);
    let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    let r = p.reconciliation().clone();
    assert_eq!(r.unknown_ids, vec![ThinId::new(5).unwrap()]);
    assert!(!r.trusted);
    // New devices do not collide with the unknown id.
    for n in ["c", "d", "e", "f", "g"] {
        p.create_thin(n, MIB16).unwrap();
    }
    assert!(!recorded_ids(&p).contains(&5), "{:?}", recorded_ids(&p));
    for n in ["c", "d", "e", "f", "g"] {
        p.delete_thin(n).unwrap();
    }
    assert_eq!(
        p.store().thin("b").unwrap().unwrap().state,
        ThinState::Missing
    );
    assert!(p.activate("b").unwrap_err().is_not_found());
    assert_eq!(p.remove_unknown().unwrap(), vec![ThinId::new(5).unwrap()]);
    assert_eq!(kernel_ids(&e, &p), vec![0]);
    drop(p);
    let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    assert!(p.reconciliation().is_clean(), "{:?}", p.reconciliation());
    p.destroy().unwrap();
}

#[test]
fn usage_reads_a_metadata_snapshot() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.activate("a").unwrap();
    e.dm.provision("tp-a", 7).unwrap();
    let u = p.usage().unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].mapped, DataBlocks::new(7));
    let calls = e.dm.calls();
    let n = calls.len();
    assert_eq!(calls[n - 2..].len(), 2);
    assert!(calls.iter().any(|c| c == "message reserve_metadata_snap"));
    assert_eq!(calls.last().unwrap(), "message release_metadata_snap");
    p.destroy().unwrap();
}

#[test]
fn check_live_checks_a_metadata_snapshot_and_releases_it() {
    let e = env();
    let tools = FakeTools::new(&e.dm);
    let deps = Deps {
        tools: Arc::new(tools.clone()),
        ..e.deps.clone()
    };
    let p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
    p.check_live().unwrap();
    assert_eq!(
        e.dm.calls().last().unwrap(),
        "message release_metadata_snap"
    );
    tools.set_corrupt(true);
    let err = p.check_live().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MetadataCheckFailed { .. }),
        "{err}"
    );
    let calls = e.dm.calls();
    assert_eq!(calls.last().unwrap(), "message release_metadata_snap");
    assert_eq!(
        calls[calls.len() - 2],
        "message reserve_metadata_snap",
        "checked while holding the snapshot: {calls:?}"
    );
    tools.set_corrupt(false);
    p.destroy().unwrap();
}

#[test]
fn resize_grows_record_and_live_table() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.create_thin("b", MIB16).unwrap();
    p.activate("a").unwrap();
    let big = Sectors::new(MIB16.get() * 2);
    p.resize_thin("a", big).unwrap();
    p.resize_thin("b", big).unwrap();
    let t: ThinTable = e.dm.table("tp-a").unwrap()[0].to_string().parse().unwrap();
    assert_eq!(t.length, big);
    assert_eq!(p.store().thin("b").unwrap().unwrap().size, big);
    assert!(!p.is_active("b").unwrap(), "resize does not activate");
    assert!(matches!(
        p.resize_thin("a", MIB16).unwrap_err().kind(),
        ErrorKind::SizeTooSmall { .. }
    ));
    assert!(matches!(
        p.resize_thin("a", Sectors::new(big.get() + 8))
            .unwrap_err()
            .kind(),
        ErrorKind::NotBlockMultiple { .. }
    ));
    // No filesystem recorded: nothing to grow, and snapshots inherit that.
    assert_eq!(p.filesystem("a").unwrap(), None);
    assert_eq!(p.mount_options("a").unwrap(), "");
    p.destroy().unwrap();
}

#[test]
fn crash_mid_activation_is_cleaned() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    e.dm.crash_at("load tp-a", CrashWhen::Before);
    assert!(catch_unwind(AssertUnwindSafe(|| p.activate("a"))).is_err());
    drop(p);
    let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    assert_eq!(p.reconciliation().removed, vec!["tp-a".to_owned()]);
    p.activate("a").unwrap();
    p.destroy().unwrap();
}
