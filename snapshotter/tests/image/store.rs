//! The image store's own rules on every backend: taken names (re-import a
//! no-op, another manifest moves the name), atomic failures, crash
//! rollback, removal refused under a container, stale diff views.

use super::*;

/// A name already holding the same manifest is left as it is (a no-op
/// import); a name holding another image moves to the new one, as `docker
/// load` does, and the old image keeps its layers under its manifest
/// digest.
pub(super) fn name_taken(env: &Env<'_>) {
    let images = env.images();
    let src = env.path("oci");
    write::oci_dir(&two_layer_spec("taken"), &src).unwrap();
    let first = import(env, &images, &src, None).unwrap();
    let before = env.snapshots();
    let again = images.import(env.sn, &src, None, &mut |_| {}).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].outcome, ImportOutcome::AlreadyPresent);
    assert_eq!(again[0].image, first[0]);
    assert_eq!(env.snapshots(), before, "nothing applied again");
    assert_eq!(images.list().unwrap(), first);

    let other = env.path("other.tar");
    write::oci_tar(
        &ImageSpec::new(config(), vec![third_layer()]).name("x"),
        &other,
    )
    .unwrap();
    let got = images
        .import(env.sn, &other, Some("taken"), &mut |_| {})
        .unwrap();
    assert_eq!(got.len(), 1);
    let old = first[0].manifest;
    assert_eq!(
        got[0].outcome,
        ImportOutcome::NameMoved {
            from: old,
            now_named: old.to_string()
        }
    );
    assert_ne!(got[0].image.manifest, old);
    let list = images.list().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let kept = images.get(&old.to_string()).unwrap();
    assert_eq!(
        kept.layers, first[0].layers,
        "the old image keeps its layers"
    );
    assert_eq!(images.get("taken").unwrap().manifest, got[0].image.manifest);
    // The old image is removable by its new name, leaving the new one whole.
    images.remove(env.sn, &old.to_string()).unwrap();
    assert_eq!(images.list().unwrap(), vec![got[0].image.clone()]);
}

/// A failure at layer 3 of 3 removes layers 2 and 3, keeps layer 1 which
/// another image owns, and leaves no record.
pub(super) fn atomic_failure(env: &Env<'_>) {
    let mut images = env.images();
    let a = env.path("a");
    write::oci_dir(&ImageSpec::new(config(), vec![base_layer()]).name("a"), &a).unwrap();
    let ia = import(env, &images, &a, None).unwrap();
    let before = env.snapshots();
    images.set_fault_hook(|p| match p {
        FaultPoint::LayerCommitted(1) => {
            Err(snapshotter::Error::new(ErrorKind::Io, "test").detail("injected failure"))
        }
        _ => Ok(()),
    });
    let b = env.path("b");
    let spec =
        ImageSpec::new(config(), vec![base_layer(), second_layer(), third_layer()]).name("b");
    write::oci_dir(&spec, &b).unwrap();
    let e = import(env, &images, &b, None).unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(env.snapshots(), before);
    assert_eq!(images.list().unwrap(), ia);
    drop(images);
    let images = env.images();
    assert_eq!(env.snapshots(), before);
    assert_eq!(images.list().unwrap(), ia);
    // The same import succeeds once the fault is gone.
    import(env, &images, &b, None).unwrap();
    assert_eq!(env.snapshots().len(), 3);
}

/// A crash (panic) mid-import leaves snapshots and the intent; reopening
/// the store rolls them back, sparing the layer that existed before.
pub(super) fn crash_rollback(env: &Env<'_>) {
    let a = env.path("a");
    write::oci_dir(&ImageSpec::new(config(), vec![base_layer()]).name("a"), &a).unwrap();
    let ia = import(env, &env.images(), &a, None).unwrap();
    let before = env.snapshots();
    let b = env.path("b");
    let spec =
        ImageSpec::new(config(), vec![base_layer(), second_layer(), third_layer()]).name("b");
    write::oci_dir(&spec, &b).unwrap();
    for point in [FaultPoint::LayerCommitted(1), FaultPoint::BeforeRecord] {
        let mut images = env.images();
        images.set_fault_hook(move |p| {
            if p == point {
                panic!("injected crash at {p:?}");
            }
            Ok(())
        });
        let crashed = catch_unwind(AssertUnwindSafe(|| import(env, &images, &b, None)));
        assert!(crashed.is_err(), "the import should have crashed");
        assert!(
            env.snapshots().len() > before.len(),
            "the crash left snapshots"
        );
        drop(images);
        let images = env.images();
        assert_eq!(env.snapshots(), before, "after a crash at {point:?}");
        assert_eq!(images.list().unwrap(), ia);
    }
}

/// A container's root on the image's top refuses removal; once it is
/// gone the image and its layers go.
pub(super) fn rm_refused_while_container(env: &Env<'_>) {
    let images = env.images();
    let src = env.path("oci");
    write::oci_dir(&two_layer_spec("busy"), &src).unwrap();
    let img = import(env, &images, &src, None).unwrap().remove(0);
    let ctr = Key::new("container-1").unwrap();
    env.sn
        .prepare(&ctr, img.top_snapshot().as_ref(), &Labels::new())
        .unwrap();
    let e = images.remove(env.sn, "busy").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    assert!(e.to_string().contains("container-1"), "{e}");
    assert_eq!(images.list().unwrap().len(), 1);
    assert_eq!(env.snapshots().len(), 3);
    env.sn.remove(&ctr).unwrap();
    images.remove(env.sn, "busy").unwrap();
    assert!(env.snapshots().is_empty(), "{:?}", env.snapshots());
    assert_eq!(
        images.remove(env.sn, "busy").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

/// A pid no process has: views named after it are a dead diff's.
pub(super) fn dead_pid() -> u32 {
    (4_000_000..)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

/// The views a diff killed mid-way (SIGKILL during `run --commit`) left
/// held the image's layers, so `image rm` was refused for ever; opening the
/// image store removes them, and keeps a live process's diff views.
pub(super) fn stale_diff_views_are_removed(env: &Env<'_>) {
    let src = env.path("oci");
    write::oci_dir(&two_layer_spec("held"), &src).unwrap();
    let img = {
        let images = env.images();
        import(env, &images, &src, None).unwrap().remove(0)
    };
    let top = img.top_snapshot().unwrap();
    let dead = Key::new(format!("thinbox-diff-{}-upper-container/x", dead_pid())).unwrap();
    let live = Key::new(format!(
        "thinbox-diff-{}-lower-container/y",
        std::process::id()
    ))
    .unwrap();
    for k in [&dead, &live] {
        env.sn.view(k, Some(&top), &Labels::new()).unwrap();
    }
    let images = env.images();
    assert!(
        env.sn.stat(&dead).is_err(),
        "the dead diff's view is gone: {:?}",
        env.snapshots()
    );
    assert!(env.sn.stat(&live).is_ok(), "a live diff's view is kept");
    let e = images.remove(env.sn, "held").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    env.sn.remove(&live).unwrap();
    images.remove(env.sn, "held").unwrap();
    assert!(env.snapshots().is_empty(), "{:?}", env.snapshots());
}
