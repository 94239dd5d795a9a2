//! containerd's basic cases: prepare, stat, commit, views, update, remove
//! and walk.

use super::*;

// ------------------------------------------------------------------- cases

pub(super) fn check_basic(sn: &dyn Snapshotter, work: &Path) {
    let initial = vec![
        Change::File("/foo", b"foo\n".to_vec(), 0o777),
        Change::Dir("/a", 0o755),
        Change::Dir("/a/b", 0o755),
        Change::Dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        Change::File("/bar", b"bar\n".to_vec(), 0o777),
        Change::File("/foo", b"bar\n".to_vec(), 0o777),
        Change::RemoveAll("/a/b"),
    ];
    let caps = sn.capabilities();
    let preparing = work.join("preparing");
    let m = sn
        .prepare(&k(p(&preparing)), None, &gc_labels())
        .expect("prepare");
    let g = mount(&m, &preparing);
    apply(&initial, &preparing, Some(caps));
    g.unmount().expect("unmount");

    let committed = n(p(&work.join("committed")));
    sn.commit(&committed, &k(p(&preparing)), &gc_labels())
        .expect("commit");
    let si = sn.stat(committed.as_key()).expect("stat committed");
    assert_eq!(si.parent, None);
    assert_eq!(si.kind, Kind::Committed);
    assert!(
        sn.stat(&k(p(&preparing))).is_err(),
        "active key still there after commit"
    );

    let expected_initial = work.join("expected-initial");
    fs::create_dir_all(&expected_initial).expect("mkdir");
    apply(&initial, &expected_initial, None);

    let next = work.join("nextlayer");
    let m = sn
        .prepare(&k(p(&next)), Some(&committed), &gc_labels())
        .expect("prepare next");
    let g = mount(&m, &next);
    assert_same_tree(&expected_initial, &next);
    apply(&diff, &next, Some(caps));
    g.unmount().expect("unmount");
    let ni = sn.stat(&k(p(&next))).expect("stat next");
    assert_eq!(ni.parent.as_deref(), Some(committed.as_str()));
    assert_eq!(ni.kind, Kind::Active);

    let next_committed = n(p(&work.join("committed-next")));
    sn.commit(&next_committed, &k(p(&next)), &gc_labels())
        .expect("commit next");
    let si2 = sn.stat(next_committed.as_key()).expect("stat");
    assert_eq!(si2.parent.as_deref(), Some(committed.as_str()));
    assert_eq!(si2.kind, Kind::Committed);
    assert!(sn.stat(&k(p(&next))).is_err());

    let mut walked = BTreeMap::new();
    sn.walk(&[], &mut |i| {
        walked.insert(i.name.clone(), i.clone());
        Ok(())
    })
    .expect("walk");
    assert_eq!(walked.get(si.name.as_str()), Some(&si));
    assert_eq!(walked.get(si2.name.as_str()), Some(&si2));

    let nextnext = work.join("nextnextlayer");
    let m = sn
        .view(&k(p(&nextnext)), Some(&next_committed), &gc_labels())
        .expect("view");
    let g = mount(&m, &nextnext);
    apply(&diff, &expected_initial, None);
    assert_same_tree(&expected_initial, &nextnext);
    g.unmount().expect("unmount");
    sn.remove(&k(p(&nextnext))).expect("remove view");
    let e = sn
        .remove(committed.as_key())
        .expect_err("removing a parent must fail");
    assert_eq!(e.kind(), ErrorKind::HasChildren);
    assert!(e.to_string().contains("remove"), "{e}");
    sn.remove(next_committed.as_key()).expect("remove");
    sn.remove(committed.as_key()).expect("remove");
}

pub(super) fn prepare_write_foo(sn: &dyn Snapshotter, work: &Path) -> (PathBuf, MountGuard) {
    let preparing = work.join("preparing");
    let m = sn
        .prepare(&k(p(&preparing)), None, &gc_labels())
        .expect("prepare");
    let g = mount(&m, &preparing);
    fs::write(preparing.join("foo"), "foo\n").expect("write");
    (preparing, g)
}

pub(super) fn check_stat_active(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_write_foo(sn, work);
    let si = sn.stat(&k(p(&preparing))).expect("stat");
    assert_eq!(si.name, p(&preparing));
    assert_eq!(si.kind, Kind::Active);
    assert_eq!(si.parent, None);
    g.unmount().expect("unmount");
}

pub(super) fn check_stat_committed(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_write_foo(sn, work);
    g.unmount().expect("unmount");
    let committed = n(p(&work.join("committed")));
    sn.commit(&committed, &k(p(&preparing)), &gc_labels())
        .expect("commit");
    let si = sn.stat(committed.as_key()).expect("stat");
    assert_eq!(si.name, committed.as_str());
    assert_eq!(si.kind, Kind::Committed);
    assert_eq!(si.parent, None);
}

pub(super) fn prepare_mount(
    sn: &dyn Snapshotter,
    work: &Path,
    name: &str,
    parent: Option<&Name>,
) -> (PathBuf, MountGuard) {
    let path = work.join(name);
    let m = sn
        .prepare(&k(p(&path)), parent, &gc_labels())
        .expect("prepare");
    let g = mount(&m, &path);
    (path, g)
}

pub(super) fn check_transitivity(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_mount(sn, work, "preparing", None);
    fs::write(preparing.join("foo"), "foo\n").expect("write");
    g.unmount().expect("unmount");
    let snap_a = n(p(&work.join("snapA")));
    sn.commit(&snap_a, &k(p(&preparing)), &gc_labels())
        .expect("commit");
    let (next, g) = prepare_mount(sn, work, "next", Some(&snap_a));
    fs::write(next.join("foo"), "foo bar\n").expect("write");
    g.unmount().expect("unmount");
    let snap_b = n(p(&work.join("snapB")));
    sn.commit(&snap_b, &k(p(&next)), &gc_labels())
        .expect("commit");
    let si_a = sn.stat(snap_a.as_key()).expect("stat");
    let si_b = sn.stat(snap_b.as_key()).expect("stat");
    let si_parent_b = sn
        .stat(&k(si_b.parent.clone().expect("B has a parent")))
        .expect("stat");
    assert_eq!(si_a.parent, None);
    assert_eq!(si_b.parent.as_deref(), Some(snap_a.as_str()));
    assert_eq!(si_parent_b.parent, None);
}

pub(super) fn check_prepare_view(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_mount(sn, work, "preparing", None);
    g.unmount().expect("unmount");
    let snap_a = n(p(&work.join("snapA")));
    sn.commit(&snap_a, &k(p(&preparing)), &gc_labels())
        .expect("commit");
    let new_layer = k(p(&work.join("newlayer")));
    sn.prepare(&new_layer, Some(&snap_a), &gc_labels())
        .expect("prepare");
    let e = sn
        .view(&new_layer, Some(&snap_a), &gc_labels())
        .expect_err("view with an active key");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let prep = k(p(&work.join("prepLayer")));
    sn.prepare(&prep, Some(&snap_a), &gc_labels())
        .expect("prepare");
    let e = sn
        .prepare(&prep, Some(&snap_a), &gc_labels())
        .expect_err("prepare twice");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let view = k(p(&work.join("viewLayer")));
    sn.view(&view, Some(&snap_a), &gc_labels()).expect("view");
    let e = sn
        .view(&view, Some(&snap_a), &gc_labels())
        .expect_err("view twice");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
}

/// c1 <- c2 <- a1; a2; c2 <- v1; v2.
pub(super) fn base_test_snapshots(sn: &dyn Snapshotter) {
    let l = gc_labels();
    sn.prepare(&k("c1-a"), None, &l).expect("prepare");
    sn.commit(&n("c1"), &k("c1-a"), &l).expect("commit");
    sn.prepare(&k("c2-a"), Some(&n("c1")), &l).expect("prepare");
    sn.commit(&n("c2"), &k("c2-a"), &l).expect("commit");
    sn.prepare(&k("a1"), Some(&n("c2")), &l).expect("prepare");
    sn.prepare(&k("a2"), None, &l).expect("prepare");
    sn.view(&k("v1"), Some(&n("c2")), &l).expect("view");
    sn.view(&k("v2"), None, &l).expect("view");
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

pub(super) fn check_update(sn: &dyn Snapshotter, _work: &Path) {
    let t1 = SystemTime::now();
    base_test_snapshots(sn);
    let t2 = SystemTime::now();
    let cases: [(&str, Kind, Option<&str>); 6] = [
        ("c1", Kind::Committed, None),
        ("c2", Kind::Committed, Some("c1")),
        ("a1", Kind::Active, Some("c2")),
        ("a2", Kind::Active, None),
        ("v1", Kind::View, Some("c2")),
        ("v2", Kind::View, None),
    ];
    for (name, kind, parent) in cases {
        let st = sn.stat(&k(name)).expect("stat");
        assert!(
            st.created >= t1 && st.created <= t2,
            "{name}: created time out of range"
        );
        assert_eq!(st.created, st.updated, "{name}");
        assert_eq!(st.kind, kind, "{name}");
        assert_eq!(st.parent.as_deref(), parent, "{name}");
        assert_eq!(st.name, name);
        let created = st.created;

        let expected = labels(&[
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            ("containerd.io/gc.root", "root"),
        ]);
        let mut info = Info {
            parent: Some("doesnotexist".into()),
            labels: expected.clone(),
            ..st
        };
        let u1 = SystemTime::now();
        let st = sn.update(&info, &[]).expect("update");
        let u2 = SystemTime::now();
        assert_eq!(st.created, created, "{name}");
        assert!(
            st.updated >= u1 && st.updated <= u2,
            "{name}: updated time out of range"
        );
        assert_eq!(st.kind, kind);
        assert_eq!(
            st.parent.as_deref(),
            parent,
            "{name}: parent must not change"
        );
        assert_eq!(st.labels, expected);

        info.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let st = sn
            .update(&info, &["labels.l1", "labels.l2"])
            .expect("update");
        assert_eq!(
            st.labels,
            labels(&[
                ("l1", "updated"),
                ("l3", "v3"),
                ("containerd.io/gc.root", "root")
            ])
        );

        info.labels = labels(&[("l4", "v4"), ("containerd.io/gc.root", "root")]);
        let st = sn.update(&info, &["labels"]).expect("update");
        assert_eq!(st.labels, info.labels);

        let e = sn
            .update(&info, &["parent"])
            .expect_err("parent is immutable");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}

pub(super) fn check_remove(sn: &dyn Snapshotter, _work: &Path) {
    let l = gc_labels();
    sn.prepare(&k("committed-a"), None, &l).expect("prepare");
    sn.commit(&n("committed-1"), &k("committed-a"), &l)
        .expect("commit");
    sn.prepare(&k("reuse-1"), Some(&n("committed-1")), &l)
        .expect("prepare");
    sn.remove(&k("reuse-1")).expect("remove");
    sn.view(&k("reuse-1"), Some(&n("committed-1")), &l)
        .expect("view");
    sn.remove(&k("reuse-1")).expect("remove");
    sn.prepare(&k("reuse-1"), None, &l).expect("prepare");
    sn.remove(&k("committed-1")).expect("remove");
    sn.commit(&n("committed-1"), &k("reuse-1"), &l)
        .expect("commit");
}

pub(super) fn check_walk(sn: &dyn Snapshotter, _work: &Path) {
    let root = labels(&[("containerd.io/gc.root", "check-walk")]);
    let with = |l: &str| labels(&[("l", l), ("containerd.io/gc.root", "check-walk")]);
    sn.prepare(&k("a-np"), None, &root).expect("prepare");
    sn.prepare(&k("p-tmp"), None, &root).expect("prepare");
    sn.commit(&n("p"), &k("p-tmp"), &root).expect("commit");
    sn.prepare(&k("a"), Some(&n("p")), &root).expect("prepare");
    sn.view(&k("v"), Some(&n("p")), &root).expect("view");
    sn.prepare(&k("p-wl-tmp"), None, &root).expect("prepare");
    sn.commit(&n("p-wl"), &k("p-wl-tmp"), &with("1"))
        .expect("commit");
    sn.prepare(&k("a-wl"), Some(&n("p-wl")), &with("2"))
        .expect("prepare");
    sn.view(&k("v-wl"), Some(&n("p-wl")), &with("3"))
        .expect("view");
    sn.prepare(&k("a-np-wl"), None, &with("2"))
        .expect("prepare");

    let table: &[(&[&str], &[&str])] = &[
        (
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            &["labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["a-np", "a", "a-wl", "a-np-wl"],
            &["kind==active,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["v", "v-wl"],
            &["kind==view,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["p", "p-wl"],
            &["kind==committed,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
        (&["a-wl"], &["name==a-wl,labels.l"]),
        (&["a", "v"], &["parent==p"]),
        (
            &["a", "v", "a-wl", "v-wl"],
            &["parent!=\"\",labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
        (&["a-wl", "a-np-wl"], &["labels.l==2"]),
    ];
    for (i, (want, filters)) in table.iter().enumerate() {
        let filters: Vec<Filter> = filters.iter().map(|f| f.parse().expect("filter")).collect();
        let mut got = Vec::new();
        sn.walk(&filters, &mut |info| {
            got.push(info.name.clone());
            Ok(())
        })
        .expect("walk");
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "[{i}] filters {filters:?}");
    }
}
