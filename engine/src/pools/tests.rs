//! Unit tests of [`super`] (pools).

use std::sync::Arc;

use thinpool::dm::{DmControl, FakeDm};
use thinpool::loopdev::FakeLoop;
use thinpool::lvm::FakeLvm;
use thinpool::metadata::FakeTools;
use thinpool::Bytes;

use super::*;

fn pools(root: &Path) -> (Pools, FakeDm) {
    let dm = FakeDm::new();
    let deps = Deps {
        dm: Arc::new(dm.clone()),
        loops: Arc::new(FakeLoop::new()),
        tools: Arc::new(FakeTools::new(&dm)),
        lvm: Arc::new(FakeLvm::new(&dm)),
    };
    (Pools::with_deps(root, deps), dm)
}

fn cfg(p: &Pools, name: &str) -> LoopbackConfig {
    let mut c = LoopbackConfig::new(name, p.dir_of(name));
    c.data_size = Bytes::mib(256);
    c.metadata_size = Bytes::mib(64);
    c
}

#[test]
fn loopback_pool_life_cycle_over_fakes() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _dm) = pools(tmp.path());
    let policy = AutoextendPolicy::default();
    let opened = p.create_loopback(&cfg(&p, "tp"), &policy, 5).unwrap();
    assert_eq!(opened.record.state, RecordState::Ready);
    assert_eq!(opened.record.dm_name.as_deref(), Some("tp"));
    drop(opened);
    assert_eq!(p.names().unwrap(), ["tp"]);

    let r = p.status("tp").unwrap();
    assert!(r.active);
    assert_eq!(r.mode, "rw");
    assert_eq!(r.data.unwrap().total_bytes, 256 << 20);
    assert_eq!(r.block_size, Some(65536));
    assert_eq!(r.free_space_floor, 5);
    assert_eq!(r.autoextend_threshold, 80);

    let e = p.create_loopback(&cfg(&p, "tp"), &policy, 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);

    let x = p
        .extend("tp", Some(SizeChange::To(Bytes::mib(512))), None)
        .unwrap();
    assert_eq!((x.data_before, x.data_after), (256 << 20, 512 << 20));
    assert_eq!(p.status("tp").unwrap().data.unwrap().total_bytes, 512 << 20);
    let x = p
        .extend("tp", Some(SizeChange::By(Bytes::mib(64))), None)
        .unwrap();
    assert_eq!(x.data_after, 576 << 20);
    let e = p
        .extend("tp", Some(SizeChange::To(Bytes((600 << 20) + 512))), None)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{}", e.message);
    let e = p
        .extend("tp", Some(SizeChange::To(Bytes::mib(300))), None)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{}", e.message);
    assert!(e.message.contains("only grow"), "{}", e.message);

    // Lent, the pool is its engine's: destroy needs --force.
    let h = p
        .hand_over("tp", Some(LentTo::Docker), &EngineSettings::default())
        .unwrap();
    assert_eq!(h.lent_to, Some(LentTo::Docker));
    assert!(!h.written, "rendered only");
    assert!(h.config.unwrap().contains("dm.thinpooldev=/dev/mapper/tp"));
    assert_eq!(p.record("tp").unwrap().lent_to, Some(LentTo::Docker));
    assert_eq!(p.status("tp").unwrap().lent_to, Some(LentTo::Docker));
    let e = p.destroy("tp", false).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InUse);
    assert!(e.message.contains("--force"), "{}", e.message);
    let h = p.hand_over("tp", None, &EngineSettings::default()).unwrap();
    assert_eq!((h.lent_to, h.config), (None, None));
    assert_eq!(p.record("tp").unwrap().lent_to, None);

    p.destroy("tp", false).unwrap();
    assert!(p.names().unwrap().is_empty());
    assert!(!p.dir_of("tp").exists());
    assert_eq!(p.status("tp").unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn bad_sizes_leave_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _dm) = pools(tmp.path());
    let mut c = cfg(&p, "tp");
    c.metadata_size = Bytes::mib(1);
    c.data_size = Bytes::gib(100);
    let e = p
        .create_loopback(&c, &AutoextendPolicy::default(), 0)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{}", e.message);
    assert!(e.message.contains("too small"), "{}", e.message);
    assert!(!p.dir_of("tp").exists());
    assert!(p.names().unwrap().is_empty());
    let e = p.record("bad/name").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
}

#[test]
fn a_record_left_creating_is_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _dm) = pools(tmp.path());
    let policy = AutoextendPolicy::default();
    // A crash after the pool was made but before the record said so.
    let opened = p.create_loopback(&cfg(&p, "tp"), &policy, 0).unwrap();
    let mut rec = opened.record.clone();
    drop(opened);
    rec.state = RecordState::Creating;
    p.save(&rec).unwrap();
    assert!(p.status("tp").unwrap().mode.contains("half-made"));
    let e = p.open_pool("tp").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Corrupt);
    assert!(e.message.contains("thinbox pool destroy"), "{}", e.message);
    // Creating it again undoes the half-made one first.
    let mut c = cfg(&p, "tp");
    c.data_size = Bytes::mib(128);
    let opened = p.create_loopback(&c, &policy, 0).unwrap();
    drop(opened);
    assert_eq!(p.status("tp").unwrap().data.unwrap().total_bytes, 128 << 20);
    // And destroy removes a half-made one too.
    let mut rec = p.record("tp").unwrap();
    rec.state = RecordState::Creating;
    p.save(&rec).unwrap();
    p.destroy("tp", false).unwrap();
    assert!(!p.dir_of("tp").exists());
}

#[test]
fn records_round_trip() {
    let rec = PoolRecord {
        name: "p".into(),
        kind: PoolKind::Lvm,
        state: RecordState::Ready,
        dir: None,
        store: Some("/r/pools/p/thinbox.db".into()),
        dm_name: None,
        vg: Some("my-vg".into()),
        lv: Some("p".into()),
        devices: vec!["/dev/vdb".into()],
        autoextend_threshold: 80,
        autoextend_percent: 20,
        free_space_floor: 0,
        lent_to: Some(LentTo::Containerd),
    };
    let text = toml::to_string(&rec).unwrap();
    assert!(text.contains("lent_to = \"containerd\""), "{text}");
    assert_eq!(toml::from_str::<PoolRecord>(&text).unwrap(), rec);
    assert_eq!(rec.dm_name(), "my--vg-p");
    assert!(toml::from_str::<PoolRecord>(&format!("{text}\nbogus = 1\n")).is_err());
}

#[test]
fn status_says_when_less_than_the_floor_is_free() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, dm) = pools(tmp.path());
    let mut opened = p
        .create_loopback(&cfg(&p, "tp"), &AutoextendPolicy::default(), 50)
        .unwrap();
    assert!(!p.status("tp").unwrap().below_floor);
    // 256 MiB of 64 KiB blocks: 4096; a writer takes 3000 of them.
    opened
        .pool
        .create_thin("t", thinpool::Sectors::new(2048 * 512))
        .unwrap();
    opened.pool.activate("t").unwrap();
    dm.provision("tp-t", 3000).unwrap();
    let st = p.status("tp").unwrap();
    assert!(st.below_floor, "{st:?}");
    assert_eq!(st.free_space_floor, 50);
}

#[test]
fn damaged_metadata_is_reported_then_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dm = FakeDm::new();
    let tools = FakeTools::new(&dm);
    let deps = Deps {
        dm: Arc::new(dm.clone()),
        loops: Arc::new(FakeLoop::new()),
        tools: Arc::new(tools.clone()),
        lvm: Arc::new(FakeLvm::new(&dm)),
    };
    let p = Pools::with_deps(tmp.path(), deps);
    let mut opened = p
        .create_loopback(&cfg(&p, "tp"), &AutoextendPolicy::default(), 0)
        .unwrap();
    opened
        .pool
        .create_thin("a", thinpool::Sectors::new(32768))
        .unwrap();
    drop(opened);
    // Gone without a clean shutdown, and damaged meanwhile.
    dm.remove("tp", false).unwrap();
    tools.set_corrupt(true);

    let e = p.check("tp").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Corrupt);
    assert!(e.message.contains("thinbox pool repair tp"), "{e}");
    let st = p.status("tp").unwrap();
    assert!(st.mode.starts_with("damaged"), "{st:?}");
    assert!(st.needs_check);
    assert!(p.damaged("tp").is_some());

    let r = p.repair("tp").unwrap();
    assert_eq!(r.thin_devices, 1);
    assert!(r.missing.is_empty());
    assert_eq!(r.damaged_metadata, p.dir_of("tp").join("metadata.damaged"));
    assert_eq!(r.status.mode, "rw");
    assert!(!r.status.needs_check);
    assert!(p.damaged("tp").is_none());
    p.check("tp").unwrap();
}

#[test]
fn repair_is_refused_for_pools_thinbox_does_not_own_the_metadata_of() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _dm) = pools(tmp.path());
    let rec = PoolRecord {
        name: "vgpool".into(),
        kind: PoolKind::Lvm,
        state: RecordState::Ready,
        dir: None,
        store: Some(tmp.path().join("x.db")),
        dm_name: None,
        vg: Some("vg0".into()),
        lv: Some("pool0".into()),
        devices: vec![],
        autoextend_threshold: 80,
        autoextend_percent: 20,
        free_space_floor: 0,
        lent_to: None,
    };
    std::fs::create_dir_all(p.dir_of("vgpool")).unwrap();
    p.save(&rec).unwrap();
    let e = p.repair("vgpool").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("lvconvert --repair vg0/pool0"), "{e}");
}
