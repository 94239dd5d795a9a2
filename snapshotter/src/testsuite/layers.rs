//! containerd's layer cases: files changed, removed, moved, chowned and
//! renamed across layers, views, permissions, and 128 layers mounted.

use super::*;

pub(super) fn check_layer_file_update(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::File("/foo", b"foo\n".to_vec(), 0o777),
        Change::Dir("/a", 0o755),
        Change::File("/a/bar", b"bar\n".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::File("/foo", b"foo, updated\n".to_vec(), 0o700),
        Change::File(
            "/a/bar",
            b"bar, updated in a larger file than before\n".to_vec(),
            0o600,
        ),
    ];
    let l3 = vec![Change::File("/foo", b"f\n".to_vec(), 0o644)];
    check_snapshots(sn, work, &[l1, l2, l3]);
}

pub(super) fn check_remove_dir_in_lower(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/lib", 0o700),
        Change::File("/lib/hidden", b"hidden".to_vec(), 0o644),
        Change::Dir("/lib/sub", 0o755),
        Change::File("/lib/sub/deeper", b"deeper".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::RemoveAll("/lib"),
        Change::Dir("/lib", 0o755),
        Change::File("/lib/not-hidden", b"not hidden".to_vec(), 0o644),
    ];
    let l3 = vec![Change::File("/lib/newfile", b"new".to_vec(), 0o644)];
    check_snapshots(sn, work, &[l1, l2, l3]);
}

pub(super) fn check_chown(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/opt", 0o700),
        Change::Dir("/opt/a", 0o700),
        Change::Dir("/opt/a/b", 0o700),
        Change::File("/opt/a/b/file.txt", b"hello".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::Chown("/opt", 1, 1),
        Change::Chown("/opt/a", 1, 1),
        Change::Chown("/opt/a/b", 1, 1),
        Change::Chown("/opt/a/b/file.txt", 1, 1),
    ];
    let l3 = vec![Change::Chown("/opt/a/b/file.txt", 2, 2)];
    check_snapshots(sn, work, &[l1, l2, l3]);
}

pub(super) fn check_dir_permission_on_commit(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/dir1", 0o700),
        Change::Dir("/dir2", 0o700),
        Change::Dir("/dir3", 0o700),
        Change::Chown("/dir1", 1, 1),
        Change::Chown("/dir2", 1, 1),
        Change::Chown("/dir3", 1, 1),
    ];
    let l2 = vec![
        Change::Dir("/dir4", 0o700),
        Change::Chown("/dir4", 1, 1),
        Change::File("/dir1/file", b"hello".to_vec(), 0o644),
        Change::Chown("/dir1/file", 1, 1),
    ];
    let l3 = vec![
        Change::Dir("/dir5", 0o700),
        Change::Chown("/dir5", 1, 1),
        Change::File("/dir2/file", b"hello".to_vec(), 0o644),
        Change::Chown("/dir2/file", 1, 1),
    ];
    check_snapshots(sn, work, &[l1, l2, l3]);
}

pub(super) fn check_remove_intermediate(sn: &dyn Snapshotter, work: &Path) {
    let (base, g) = prepare_mount(sn, work, "base", None);
    g.unmount().expect("unmount");
    let committed_base = n(p(&work.join("committed-base")));
    sn.commit(&committed_base, &k(p(&base)), &gc_labels())
        .expect("commit");
    let intermediate = k(p(&work.join("intermediate")));
    sn.prepare(&intermediate, Some(&committed_base), &gc_labels())
        .expect("prepare");
    let committed_inter = n(p(&work.join("committed-inter")));
    sn.commit(&committed_inter, &intermediate, &gc_labels())
        .expect("commit");
    let top = k(p(&work.join("toplayer")));
    sn.prepare(&top, Some(&committed_inter), &gc_labels())
        .expect("prepare");
    let e = sn
        .remove(committed_inter.as_key())
        .expect_err("intermediate removal should fail");
    assert_eq!(e.kind(), ErrorKind::HasChildren);
    sn.remove(&top).expect("remove top");
    sn.remove(committed_inter.as_key())
        .expect("remove intermediate");
    sn.remove(committed_base.as_key()).expect("remove base");
}

pub(super) fn check_deleted_files_in_child(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::File("/foo", b"foo\n".to_vec(), 0o777),
        Change::File("/foobar", b"foobar\n".to_vec(), 0o777),
    ];
    let l2 = vec![Change::RemoveAll("/foobar")];
    check_snapshots(sn, work, &[l1, l2, vec![]]);
}

pub(super) fn check_move_file_from_lower(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/dir1", 0o700),
        Change::File("/dir1/f1", b"Hello".to_vec(), 0o644),
        Change::Dir("/dir2", 0o700),
        Change::File("/dir2/f2", b"...".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::Dir("/dir3", 0o700),
        Change::File("/dir3/f1", b"Hello".to_vec(), 0o644),
        Change::RemoveAll("/dir1"),
        Change::Link("/dir2/f2", "/dir3/f2"),
        Change::RemoveAll("/dir2/f2"),
    ];
    check_snapshots(sn, work, &[l1, l2]);
}

pub(super) fn check_view_readonly(sn: &dyn Snapshotter, work: &Path) {
    let preparing = k(p(&work.join("preparing")));
    sn.prepare(&preparing, None, &gc_labels()).expect("prepare");
    let committed = n(p(&work.join("committed")));
    sn.commit(&committed, &preparing, &gc_labels())
        .expect("commit");
    let view = k(p(&work.join("view")));
    let m = sn
        .view(&view, Some(&committed), &gc_labels())
        .expect("view");
    let target = work.join("view-mount");
    let g = mount(&m, &target);
    let res = fs::write(target.join("testfile"), "testcontent");
    g.unmount().expect("unmount");
    assert!(res.is_err(), "write to a view must fail (EROFS)");
    sn.remove(&view).expect("remove view");
    sn.remove(committed.as_key()).expect("remove");
}

pub(super) fn check_stat_in_walk(sn: &dyn Snapshotter, _work: &Path) {
    let l = gc_labels();
    sn.prepare(&k("a"), None, &l).expect("prepare");
    sn.commit(&n("b"), &k("a"), &l).expect("commit");
    sn.prepare(&k("c"), Some(&n("b")), &l).expect("prepare");
    sn.view(&k("d"), Some(&n("b")), &l).expect("view");
    let mut count = 0;
    sn.walk(&[], &mut |info| {
        let st = sn.stat(&Key::new(info.name.clone())?)?;
        assert_eq!(&st, info);
        count += 1;
        Ok(())
    })
    .expect("walk");
    assert_eq!(count, 3);
}

pub(super) fn check_close_twice(sn: &dyn Snapshotter, _work: &Path) {
    let l = gc_labels();
    sn.prepare(&k("closeTwice-prepare"), None, &l)
        .expect("prepare");
    sn.commit(&n("closeTwice"), &k("closeTwice-prepare"), &l)
        .expect("commit");
    sn.remove(&k("closeTwice")).expect("remove");
    sn.close().expect("first close");
    sn.close().expect("second close");
    let e = sn.stat(&k("anything")).expect_err("closed");
    assert_eq!(e.kind(), ErrorKind::Closed);
}

pub(super) fn check_root_permission(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_mount(sn, work, "preparing", None);
    let mode = fs::metadata(&preparing).expect("stat").mode() & 0o777;
    g.unmount().expect("unmount");
    assert_eq!(mode, 0o755, "expected 0755, got {mode:o}");
}

pub(super) fn check_rename(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/dir1", 0o700),
        Change::Dir("/somefiles", 0o700),
        Change::File("/somefiles/f1", b"was here".to_vec(), 0o644),
        Change::File("/somefiles/f2", b"nothing interesting".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::Rename("/dir1", "/dir2"),
        Change::File("/somefiles/f1-overwrite", b"new content 1".to_vec(), 0o644),
        Change::Rename("/somefiles/f1-overwrite", "/somefiles/f1"),
        Change::Rename("/somefiles/f2", "/somefiles/f3"),
    ];
    check_snapshots(sn, work, &[l1, l2]);
}

pub(super) fn check_128_layers(sn: &dyn Snapshotter, work: &Path) {
    let mut layers = vec![vec![
        Change::File("/bottom", b"way at the bottom\n".to_vec(), 0o777),
        Change::File("/overwriteme", b"FIRST!\n".to_vec(), 0o777),
        Change::Dir("/addhere", 0o755),
        Change::Dir("/onlyme", 0o755),
        Change::File("/onlyme/bottom", b"bye!\n".to_vec(), 0o777),
    ]];
    for i in 1..=127 {
        // Changes name paths with &'static str (like containerd's literal
        // appliers); the 254 generated names of this one case are leaked,
        // which is fine in a short-lived test process.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        layers.push(vec![
            Change::File(
                "/overwriteme",
                format!("{i} WAS HERE!\n").into_bytes(),
                0o777,
            ),
            Change::File(
                leak(format!("/addhere/file-{i}")),
                b"same\n".to_vec(),
                0o755,
            ),
            Change::RemoveAll("/onlyme"),
            Change::Dir("/onlyme", 0o755),
            Change::File(
                leak(format!("/onlyme/file-{i}")),
                b"only me!\n".to_vec(),
                0o777,
            ),
        ]);
    }
    check_snapshots(sn, work, &layers);
}
