//! Crash matrices: a simulated crash at every step of every thin mutation,
//! then reconciliation on the next open.

use super::*;

/// Runs `op` with a crash injected at `(pattern, when)`, reopens, and
/// checks reconciliation: no orphan ids, nothing reported done lost, no
/// device left suspended, and the pool usable again.
fn crash_case(op: &str, pattern: &str, when: CrashWhen) {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("base", MIB16).unwrap();
    p.activate("base").unwrap();
    p.create_thin("victim", MIB16).unwrap();
    let done_before = recorded_ids(&p);
    e.dm.crash_at(pattern, when);
    let r = catch_unwind(AssertUnwindSafe(|| match op {
        "create" => p.create_thin("new", MIB16).map(drop),
        "snapshot" => p.snapshot("base", "new").map(drop),
        "delete" => p.delete_thin("victim"),
        _ => unreachable!(),
    }));
    assert!(
        r.is_err(),
        "{op} {pattern} {when:?}: the crash did not happen"
    );
    drop(p);
    let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    let rec = p.reconciliation().clone();
    let kernel = kernel_ids(&e, &p);
    let recorded = recorded_ids(&p);
    assert_eq!(
        kernel, recorded,
        "{op} {pattern} {when:?}: orphans ({rec:?})"
    );
    assert!(p
        .thins()
        .unwrap()
        .iter()
        .all(|t| t.state == ThinState::Ready));
    assert!(recorded.contains(&0), "base lost");
    if op != "delete" {
        for id in &done_before {
            assert!(recorded.contains(id), "{id} was done and is lost");
        }
    }
    let finished = pattern.contains("set_transaction_id") && when == CrashWhen::After;
    match op {
        "delete" => assert!(!recorded.contains(&1), "a started delete is finished"),
        _ => assert_eq!(p.store().thin("new").unwrap().is_some(), finished),
    }
    assert_eq!(rec.completed.len() + rec.rolled_back.len(), 1, "{rec:?}");
    let info = e.dm.info("tp-base").unwrap().unwrap();
    assert!(!info.suspended, "origin left suspended");
    // The pool works afterwards.
    p.create_thin("after", MIB16).unwrap();
    p.destroy().unwrap();
}

#[test]
fn crash_matrix() {
    for (op, msg) in [
        ("create", "message create_thin"),
        ("snapshot", "message create_snap"),
        ("delete", "message delete"),
    ] {
        crash_case(op, msg, CrashWhen::Before);
        crash_case(op, msg, CrashWhen::After);
        crash_case(op, "message set_transaction_id", CrashWhen::After);
    }
    // Mid-snapshot, with the origin suspended.
    crash_case("snapshot", "suspend tp-base", CrashWhen::After);
    crash_case("snapshot", "resume tp-base", CrashWhen::Before);
}

#[test]
fn resize_crash_matrix() {
    let big = Sectors::new(MIB16.get() * 2);
    for (active, pattern, when) in [
        (true, "load tp-a", CrashWhen::Before),
        (true, "load tp-a", CrashWhen::After),
        (true, "suspend tp-a", CrashWhen::After),
        (true, "resume tp-a", CrashWhen::Before),
        (true, "message set_transaction_id", CrashWhen::Before),
        (true, "message set_transaction_id", CrashWhen::After),
        (false, "message set_transaction_id", CrashWhen::Before),
        (false, "message set_transaction_id", CrashWhen::After),
    ] {
        let what = format!("active={active} {pattern} {when:?}");
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("a", MIB16).unwrap();
        if active {
            p.activate("a").unwrap();
        }
        e.dm.crash_at(pattern, when);
        let r = catch_unwind(AssertUnwindSafe(|| p.resize_thin("a", big)));
        assert!(r.is_err(), "{what}: no crash");
        drop(p);
        let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        let rec = p.reconciliation().clone();
        assert_eq!(rec.completed.len(), 1, "{what}: {rec:?}");
        assert_eq!(rec.completed[0].intent.kind, OpKind::Resize);
        assert_eq!(p.store().thin("a").unwrap().unwrap().size, big, "{what}");
        assert!(p.store().pending().unwrap().is_empty());
        assert_eq!(kernel_ids(&e, &p), recorded_ids(&p), "{what}");
        assert_eq!(p.is_active("a").unwrap(), active, "{what}");
        let dev = p.activate("a").unwrap();
        assert!(dev.to_str().unwrap().starts_with("/dev/dm-"));
        let t = ThinTable::from_target(&e.dm.table("tp-a").unwrap()[0]).unwrap();
        assert_eq!(t.length, big, "{what}: live table disagrees");
        assert!(!e.dm.info("tp-a").unwrap().unwrap().suspended, "{what}");
        assert_eq!(
            p.status().unwrap().usage().unwrap().transaction_id,
            p.store().expected_txn().unwrap()
        );
        p.destroy().unwrap();
    }
}
