//! Space: the free-space floor, the watch loop and autoextend.

use super::*;

#[test]
fn free_space_floor() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("a", MIB16).unwrap();
    p.activate("a").unwrap();
    e.dm.provision("tp-a", 900).unwrap();
    p.set_free_space_floor(20).unwrap();
    let err = p.create_thin("b", MIB16).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::BelowFreeSpaceFloor { .. }));
    assert!(err.to_string().contains("87% full"), "{err}");
    p.set_free_space_floor(0).unwrap();
    p.create_thin("b", MIB16).unwrap();
    p.destroy().unwrap();
}

#[test]
fn watch_once_reports_one_check() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut checks = 0;
    let opts = WatchOptions {
        once: true,
        ..WatchOptions::on_events(std::time::Duration::from_millis(5))
    };
    let n = p
        .watch(&AutoextendPolicy::default(), &stop, opts, &mut |_| {
            checks += 1
        })
        .unwrap();
    assert_eq!((n, checks), (0, 1));
    p.destroy().unwrap();
}

#[test]
fn autoextend_on_low_water_event() {
    let e = env();
    let mut c = cfg(&e);
    c.features.error_if_no_space = false;
    let mut p = Pool::create_loopback(&e.deps, &c).unwrap();
    p.create_thin("a", Sectors::new(2 * 131072)).unwrap();
    p.activate("a").unwrap();
    let policy = AutoextendPolicy {
        threshold_percent: 50,
        extend_percent: 100,
        max_data: Bytes::mib(256),
        max_metadata: Bytes::mib(8),
    };
    assert_eq!(
        policy.low_water_mark(DataBlocks::new(1024)),
        DataBlocks::new(512)
    );
    // Below the threshold nothing happens.
    e.dm.provision("tp-a", 100).unwrap();
    assert_eq!(p.maybe_extend(&policy).unwrap(), Extended::default());
    // Crossing it doubles the data file and reloads the table.
    e.dm.provision("tp-a", 500).unwrap();
    let d = p.maybe_extend(&policy).unwrap();
    assert_eq!(d.data, Some(Bytes::mib(128)));
    assert_eq!(fs::metadata(e.dir.join("data")).unwrap().len(), 128 << 20);
    assert_eq!(p.table().length, Sectors::new(262144));
    assert_eq!(p.table().low_water_mark, DataBlocks::new(1024));
    let u = p.status().unwrap().usage().unwrap().clone();
    assert_eq!(u.total_data, DataBlocks::new(2048));
    // The watcher wakes on the low-water event and extends up to the cap.
    e.dm.provision("tp-a", 500).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let dm = e.dm.clone();
    let stopper = std::thread::scope(|s| {
        let h = s.spawn(|| {
            p.watch(
                &policy,
                &stop,
                WatchOptions::on_events(std::time::Duration::from_millis(5)),
                &mut |_| {},
            )
        });
        while fs::metadata(e.dir.join("data")).unwrap().len() < 256 << 20 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().unwrap()
    });
    assert_eq!(stopper.unwrap(), 1);
    assert!(dm.calls().iter().any(|c| c == "wait_events"));
    // Reopen keeps the new size; the capped pool does not grow further.
    drop(p);
    let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    assert_eq!(p.table().length, Sectors::new(524288));
    e.dm.provision("tp-a", 2900).unwrap();
    assert_eq!(p.maybe_extend(&policy).unwrap().data, None);
    assert!(matches!(
        p.extend_data(Bytes::mib(64)).unwrap_err().kind(),
        ErrorKind::SizeTooSmall { .. }
    ));
    p.extend_metadata(Bytes::mib(8)).unwrap();
    p.destroy().unwrap();
}

#[test]
fn the_default_low_water_mark_follows_the_autoextend_policy() {
    let mut c = LoopbackConfig::new("p", "/d");
    let blocks = DataBlocks::new(1000);
    assert_eq!(
        c.low_water_mark_for(blocks),
        DataBlocks::new(100),
        "a tenth"
    );
    c.autoextend = Some(AutoextendPolicy {
        threshold_percent: 80,
        ..AutoextendPolicy::default()
    });
    assert_eq!(
        c.low_water_mark_for(blocks),
        DataBlocks::new(200),
        "20% free"
    );
    c.autoextend = Some(AutoextendPolicy {
        threshold_percent: 100,
        ..AutoextendPolicy::default()
    });
    assert_eq!(
        c.low_water_mark_for(blocks),
        DataBlocks::new(1),
        "at least a block"
    );
    c.low_water_mark = Some(DataBlocks::new(7));
    assert_eq!(
        c.low_water_mark_for(blocks),
        DataBlocks::new(7),
        "given wins"
    );
}
