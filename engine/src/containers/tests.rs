//! Unit tests of [`super`] (containers).

use super::*;

#[test]
fn container_names_are_validated() {
    assert!(ContainerName::new("web-1").is_ok());
    assert!(ContainerName::new("a.b_c").is_ok());
    for bad in ["", "-x", "a/b", "a b", &"x".repeat(65), ".."] {
        let e = ContainerName::new(bad).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}");
        assert!(e.message.contains("letters, digits"), "{e}");
    }
    let r = ContainerName::random();
    assert!(ContainerName::new(r.as_str()).is_ok());
    assert_ne!(r, ContainerName::random());
    assert_eq!(
        ContainerName::new("web").unwrap().snapshot_key().as_str(),
        "container/web"
    );
}

#[test]
fn records_move_through_states_and_names_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let c = Containers::open(dir.path()).unwrap();
    let n = ContainerName::new("one").unwrap();
    c.begin(&n, "busybox:latest").unwrap();
    let e = c.begin(&n, "other").unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    assert!(e.message.contains("thinbox rm one"), "{e}");
    assert_eq!(c.get(&n).unwrap().state, State::Preparing);
    c.set(&n, State::Running, Some(1)).unwrap();
    let r = c.get(&n).unwrap();
    assert_eq!((r.state, r.pid), (State::Running, Some(1)));
    c.finish(&n, None, Some("img2")).unwrap();
    let r = c.get(&n).unwrap();
    assert_eq!(r.state, State::Exited);
    assert_eq!(r.committed.as_deref(), Some("img2"));
    c.delete(&n).unwrap();
    assert_eq!(c.get(&n).unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn users_resolve_from_the_image() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("etc")).unwrap();
    fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n",
    )
    .unwrap();
    fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
    assert_eq!(parse_user("", dir.path()).unwrap(), (0, 0));
    assert_eq!(parse_user("1000", dir.path()).unwrap(), (1000, 1000));
    assert_eq!(parse_user("1000:5", dir.path()).unwrap(), (1000, 5));
    assert_eq!(parse_user("www", dir.path()).unwrap(), (33, 34));
    assert_eq!(parse_user("www:staff", dir.path()).unwrap(), (33, 50));
    let e = parse_user("nobody", dir.path()).unwrap_err();
    assert!(e.message.contains("\"nobody\""), "{e}");
}
