//! Crash recovery against real backends: the states a crash can leave
//! between an intent and its done record are recreated by hand (records in
//! the store, objects made or not made by the backend), then the
//! snapshotter is reopened and must settle every one of them.

use std::fs;
use std::path::Path;

use snapshotter::core::{Backend, Object};
use snapshotter::store::{SnapshotId, Store};
use snapshotter::{ErrorKind, Key, Kind, Labels, MountGuard, Name, Snapshots, Snapshotter};

fn k(s: &str) -> Key {
    Key::new(s).unwrap()
}
fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

pub fn recovery<B: Backend>(base: &Path, make: impl Fn(&Path) -> B) {
    let root = base.join("root");
    let mnt = base.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let l = Labels::new();
    {
        let sn = Snapshots::open(&root, make(&root)).unwrap();
        let m = sn.prepare(&k("base-a"), None, &l).unwrap();
        let g = MountGuard::new(&m, &mnt).unwrap();
        fs::write(mnt.join("file"), b"base").unwrap();
        g.unmount().unwrap();
        sn.commit(&n("base"), &k("base-a"), &l).unwrap();
        let m = sn.prepare(&k("to-commit"), Some(&n("base")), &l).unwrap();
        let g = MountGuard::new(&m, &mnt).unwrap();
        fs::write(mnt.join("child"), b"child").unwrap();
        g.unmount().unwrap();
        sn.prepare(&k("to-remove"), Some(&n("base")), &l).unwrap();
        sn.close().unwrap();
    }

    let mut store = Store::open(&root.join("metadata.db")).unwrap();
    let backend = make(&root);
    let base_id = store.get("base").unwrap().id;

    // Crash after the prepare intent and the backend's create, before done.
    let half = store
        .insert_raw(
            Some("half"),
            None,
            Some(base_id),
            Kind::Active,
            snapshotter::store::State::Creating,
        )
        .unwrap();
    backend
        .create(
            &Object {
                id: half,
                kind: Kind::Active,
                parents: &[base_id],
            },
            &Labels::new(),
        )
        .unwrap();
    // Crash after the prepare intent, before the backend did anything.
    store
        .insert_raw(
            Some("nothing"),
            None,
            None,
            Kind::View,
            snapshotter::store::State::Creating,
        )
        .unwrap();
    // Crash after the commit intent, before the backend committed.
    let committing = store
        .begin_commit("to-commit", "committed", &l, std::time::SystemTime::now())
        .unwrap();
    // Crash after the remove intent, before the backend removed.
    let removing = store.begin_remove("to-remove").unwrap();
    // An object whose record never got written (or was lost).
    let orphan = SnapshotId(1_000_000);
    backend
        .create(
            &Object {
                id: orphan,
                kind: Kind::Active,
                parents: &[],
            },
            &Labels::new(),
        )
        .unwrap();
    drop(store);
    drop(backend);

    let sn = Snapshots::open(&root, make(&root)).unwrap();
    assert_eq!(sn.stat(&k("half")).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        sn.stat(&k("nothing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        sn.stat(&k("to-remove")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        sn.stat(&k("to-commit")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let info = sn.stat(&k("committed")).unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.parent.as_deref(), Some("base"));
    let m = sn.view(&k("look"), Some(&n("committed")), &l).unwrap();
    let g = MountGuard::new(&m, &mnt).unwrap();
    assert_eq!(
        fs::read(mnt.join("child")).unwrap(),
        b"child",
        "committed content lost"
    );
    assert_eq!(fs::read(mnt.join("file")).unwrap(), b"base");
    g.unmount().unwrap();
    sn.remove(&k("look")).unwrap();
    sn.cleanup().unwrap();

    // Backend objects and records agree exactly.
    let listed: Vec<SnapshotId> = make(&root).list().unwrap();
    assert!(!listed.contains(&half), "half-created object left behind");
    assert!(!listed.contains(&removing.id), "removed object left behind");
    assert!(!listed.contains(&orphan), "orphan object left behind");
    assert!(listed.contains(&committing.id));
    assert_eq!(listed.len(), 2, "objects: {listed:?}");
    sn.close().unwrap();
}
