//! Metadata repair of loopback pools: the damaged file kept, the repaired
//! one swapped in, the records matched; refused while a thin device is
//! open; a repair cut before or inside the swap settled on the next open.

use super::*;

/// `repair.rs`'s name for the fresh file.
const REPAIRED: &str = "metadata.repaired";

fn corrupt_env() -> (Env, FakeTools, Deps) {
    let e = env();
    let tools = FakeTools::new(&e.dm);
    let deps = Deps {
        tools: Arc::new(tools.clone()),
        ..e.deps.clone()
    };
    (e, tools, deps)
}

#[test]
fn repair_keeps_the_damaged_metadata_and_the_thin_devices() {
    let (e, tools, deps) = corrupt_env();
    let mut p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.snapshot("a", "b").unwrap();
    p.activate("a").unwrap();
    drop(p);
    std::fs::write(e.dir.join("metadata.damaged"), b"an earlier one").unwrap();
    tools.set_corrupt(true);

    let (p, r) = Pool::repair_loopback(&deps, &e.dir).unwrap();
    // The earlier damaged file stays; this one goes beside it.
    assert_eq!(r.damaged, e.dir.join("metadata.damaged.2"));
    assert!(r.damaged.exists());
    assert_eq!(
        std::fs::read(e.dir.join("metadata.damaged")).unwrap(),
        b"an earlier one"
    );
    assert!(!e.dir.join(REPAIRED).exists());
    assert_eq!(r.thin_ids.len(), 2);
    assert!(
        p.reconciliation().missing.is_empty(),
        "{:?}",
        p.reconciliation()
    );
    assert_eq!(recorded_ids(&p), kernel_ids(&e, &p));
    // The devices it deactivated come back on demand; the pool is usable.
    p.activate("b").unwrap();
    assert_eq!(e.loops.attached(), 2, "the pool's two loop devices only");
    p.destroy().unwrap();
}

#[test]
fn repair_refuses_while_a_thin_device_is_open() {
    let (e, tools, deps) = corrupt_env();
    let mut p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.activate("a").unwrap();
    e.dm.open("tp-a");
    tools.set_corrupt(true);
    let err = Pool::repair_loopback(&deps, &e.dir).unwrap_err();
    assert!(err.is_busy(), "{err}");
    assert!(err.to_string().contains("tp-a"), "{err}");
    // Nothing changed: the pool and its device are up, no file written.
    assert!(e.dm.info("tp").unwrap().is_some());
    assert!(e.dm.info("tp-a").unwrap().is_some());
    assert!(!e.dir.join(REPAIRED).exists());
    assert!(!e.dir.join("metadata.damaged").exists());
    e.dm.close("tp-a");
    drop(p);
}

#[test]
fn a_failed_repair_leaves_the_old_metadata_in_place() {
    let (e, _tools, deps) = corrupt_env();
    let p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
    drop(p);
    #[derive(Debug)]
    struct Unrepairable(FakeTools);
    impl MetadataTools for Unrepairable {
        fn list(&self, m: MetaDev<'_>, s: bool) -> Result<Vec<ThinUsage>> {
            self.0.list(m, s)
        }
        fn check(&self, m: MetaDev<'_>) -> Result<()> {
            self.0.check(m)
        }
        fn check_snapshot(&self, m: MetaDev<'_>) -> Result<()> {
            self.0.check_snapshot(m)
        }
        fn repair(&self, _: MetaDev<'_>, _: MetaDev<'_>) -> Result<()> {
            Err(Error::new(ErrorKind::ToolFailed {
                tool: "thin_repair".into(),
                status: Some(1),
            }))
        }
    }
    let bad = Deps {
        tools: Arc::new(Unrepairable(FakeTools::new(&e.dm))),
        ..deps.clone()
    };
    let err = Pool::repair_loopback(&bad, &e.dir).unwrap_err();
    assert!(err.to_string().contains("thin_repair"), "{err}");
    assert!(e.dir.join("metadata").exists());
    assert!(!e.dir.join(REPAIRED).exists());
    assert!(!e.dir.join("metadata.damaged").exists());
    assert_eq!(
        e.loops.attached(),
        0,
        "loop devices left: the pool is offline"
    );
    // It opens again as it was.
    Pool::open_loopback(&deps, &e.dir)
        .unwrap()
        .destroy()
        .unwrap();
}

#[test]
fn a_cut_repair_is_settled_on_open() {
    let (e, _tools, deps) = corrupt_env();
    let mut p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.shutdown().unwrap();
    let meta = e.dir.join("metadata");
    let repaired = e.dir.join(REPAIRED);
    let original = std::fs::metadata(&meta).unwrap().len();

    // Cut before the swap: the repaired file is dropped.
    std::fs::write(&repaired, b"half written").unwrap();
    let p = Pool::open_loopback(&deps, &e.dir).unwrap();
    assert!(!repaired.exists());
    assert_eq!(std::fs::metadata(&meta).unwrap().len(), original);
    p.shutdown().unwrap();

    // Cut between the renames: the swap is finished.
    std::fs::rename(&meta, e.dir.join("metadata.damaged")).unwrap();
    std::fs::copy(e.dir.join("metadata.damaged"), &repaired).unwrap();
    let p = Pool::open_loopback(&deps, &e.dir).unwrap();
    assert!(!repaired.exists());
    assert!(meta.exists());
    assert_eq!(recorded_ids(&p).len(), 1);
    p.destroy().unwrap();
}
