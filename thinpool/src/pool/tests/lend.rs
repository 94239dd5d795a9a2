//! Lent pools (thinbox keeps them, another engine owns the thin devices),
//! growth to a size on both pool kinds, and devices refused before lvm2.

use super::*;
use crate::lvm::DeviceUse;

fn lvm_pool(e: &Env) -> Pool {
    let mut c = super::lvm::lvm_cfg(e);
    c.data_percent = 20;
    c.metadata_percent = 1;
    Pool::create_lvm(&e.deps, &c).unwrap()
}

#[test]
fn a_lent_pool_is_the_engines() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    p.create_thin("ours", MIB16).unwrap();
    let err = p.lend("containerd").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::HasThins { count: 1, .. }),
        "{err}"
    );
    assert_eq!(p.lent_to(), None);
    p.delete_thin("ours").unwrap();
    p.lend("containerd").unwrap();
    assert_eq!(p.lent_to(), Some("containerd"));
    let err = p.create_thin("mine", MIB16).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Lent { .. }), "{err}");
    assert!(err.to_string().contains("containerd"), "{err}");

    // The engine makes a thin device and its dm device, as containerd's
    // devmapper snapshotter does (`POOL-snap-N`), and leaves it without
    // a table: a reopen neither records nor removes either.
    e.dm.message(p.name(), "create_thin 7").unwrap();
    let theirs = format!("{}-snap-1", p.name());
    e.dm.create(&theirs).unwrap();
    drop(p);
    let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
    assert_eq!(p.lent_to(), Some("containerd"), "kept across opens");
    assert!(
        e.dm.info(&theirs).unwrap().is_some(),
        "their device is left"
    );
    assert!(p.reconciliation().unknown_ids.is_empty());
    assert!(p.thins().unwrap().is_empty());
    assert!(p.remove_unknown().is_err(), "never deletes their ids");
    assert_eq!(kernel_ids(&e, &p), vec![7]);

    // Taken back only once the engine's devices are gone.
    let err = p.take_back().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::HasThins { count: 1, .. }),
        "{err}"
    );
    e.dm.remove(&theirs, false).unwrap();
    e.dm.message(p.name(), "delete 7").unwrap();
    p.take_back().unwrap();
    assert_eq!(p.lent_to(), None);
    p.create_thin("mine", MIB16).unwrap();
}

#[test]
fn grows_loopback_files_to_a_size() {
    let e = env();
    let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
    let before = p.sizes().unwrap();
    assert_eq!(before.data, Bytes::mib(64));
    let err = p.grow_to(Some(Bytes::mib(32)), None).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::CannotShrink { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("+SIZE"), "{err}");
    let grew = p
        .grow_to(Some(Bytes::mib(96)), Some(Bytes::mib(8)))
        .unwrap();
    assert_eq!(grew.data, Some(Bytes::mib(96)));
    assert_eq!(grew.metadata, Some(Bytes::mib(8)));
    let after = p.sizes().unwrap();
    assert_eq!(
        (after.data, after.metadata),
        (Bytes::mib(96), Bytes::mib(8))
    );
    assert_eq!(p.table().length.bytes(), Bytes::mib(96));
    // The same size again changes nothing.
    assert_eq!(
        p.grow_to(Some(Bytes::mib(96)), None).unwrap(),
        Extended::default()
    );
}

#[test]
fn grows_an_lvm_pool_within_its_vg() {
    let e = super::lvm::lvm_env(&[]);
    let mut p = lvm_pool(&e);
    let before = p.sizes().unwrap();
    // 1 GiB disk: 255 extents; 20% data = 51 extents (204 MiB).
    assert_eq!(before.data, Bytes::mib(204));
    let grew = p.grow_to(Some(Bytes::mib(300)), None).unwrap();
    assert_eq!(grew.data, Some(Bytes::mib(300)));
    assert_eq!(p.table().length.bytes(), Bytes::mib(300));
    assert!(e
        .lvm
        .calls()
        .iter()
        .any(|c| c.contains("lvextend -L +98304k vg0/pool")));
    // More than the VG has: refused with the figures, nothing run.
    let calls = e.lvm.calls().len();
    let err = p.grow_to(Some(Bytes::gib(2)), None).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::VgTooSmall { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("vg0") && msg.contains("free") && msg.contains("vgextend"),
        "{msg}"
    );
    assert_eq!(
        e.lvm.calls().len(),
        calls + 1,
        "only vgs ran: {:?}",
        e.lvm.calls()
    );
    let meta = p.sizes().unwrap().metadata;
    let grew = p
        .grow_to(None, Some(Bytes(meta.0 + Bytes::mib(4).0)))
        .unwrap();
    assert!(grew.metadata.is_some() && grew.data.is_none(), "{grew:?}");
    assert!(
        e.lvm
            .calls()
            .iter()
            .any(|c| c.contains("lvextend --poolmetadatasize +4096k vg0/pool")),
        "{:?}",
        e.lvm.calls()
    );
}

#[test]
fn unusable_devices_are_refused_before_lvm2_runs() {
    let e = env();
    fs::create_dir_all(&e.dir).unwrap();
    let mut c = LvmConfig::new(
        vec![PathBuf::from("/dev/fake-vdz")],
        "vg0",
        "pool",
        e.dir.join("lvm.db"),
    );
    c.profile_dir = e.dir.join("profile");
    let err = Pool::create_lvm(&e.deps, &c).unwrap_err();
    assert!(
        matches!(
            &err.kind(),
            ErrorKind::DeviceUnusable {
                found: DeviceUse::Missing,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("/dev/fake-vdz does not exist"),
        "{err}"
    );
    e.lvm.add_disk(DISK, Bytes::gib(1), &[]);
    e.lvm.set_device_use(
        DISK,
        DeviceUse::HeldBy {
            holders: vec!["dm device other".into()],
        },
    );
    c.devices = vec![PathBuf::from(DISK)];
    let err = Pool::create_lvm(&e.deps, &c).unwrap_err();
    assert!(err.to_string().contains("held by dm device other"), "{err}");
    assert!(
        !e.lvm
            .calls()
            .iter()
            .any(|c| c.starts_with("pvcreate") || c.starts_with("wipefs")),
        "{:?}",
        e.lvm.calls()
    );
    assert!(!c.store.exists(), "no store left");
}
