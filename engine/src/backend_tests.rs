//! Unit tests of the backend record, the choice and making, over fakes.

use std::sync::Arc;

use thinpool::loopdev::{FakeLoop, LoopControl};

use super::*;
use crate::deps::{FakeFilesystems, FakeProbe, Filesystems};
use crate::observer::Recorder;
use crate::{Engine, EngineOptions};

#[test]
fn pool_names_come_from_the_root() {
    assert_eq!(
        default_pool_name(Path::new("/var/lib/thinbox")),
        "thinbox-pool"
    );
    assert_eq!(default_pool_name(Path::new("/tmp/a b")), "a_b-pool");
    assert!(default_pool_name(Path::new(&"x".repeat(100))).len() <= 64);
}

#[test]
fn records_round_trip() {
    for source in [
        Source::LoopbackPool {
            pool: "p".into(),
            base_size: Bytes::gib(10),
            fs: "ext4".into(),
        },
        Source::BtrfsImage {
            image: "/r/btrfs.img".into(),
            mountpoint: "/r/btrfs".into(),
        },
        Source::ZfsDataset {
            dataset: "tank/x".into(),
        },
        Source::NamedPool {
            pool: "lvm".into(),
            base_size: Bytes::gib(1),
            fs: "xfs".into(),
        },
    ] {
        let rec = BackendRecord {
            backend: BackendKind::Btrfs,
            reason: "why".into(),
            source,
        };
        let text = toml::to_string(&rec).unwrap();
        assert_eq!(
            toml::from_str::<BackendRecord>(&text).unwrap(),
            rec,
            "{text}"
        );
    }
}

#[test]
fn configured_backend_must_agree_with_the_record() {
    let rec = BackendRecord {
        backend: BackendKind::Btrfs,
        reason: String::new(),
        source: Source::BtrfsDir { path: "/x".into() },
    };
    let mut c = Config::default();
    assert!(check_agrees(&c, &rec, Path::new("/r")).is_ok());
    c.backend = BackendChoice::Zfs;
    let e = check_agrees(&c, &rec, Path::new("/r")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(
        e.message.contains("btrfs") && e.message.contains("zfs"),
        "{}",
        e.message
    );
}

#[test]
fn zfs_without_dataset_is_refused() {
    let c = Config {
        backend: BackendChoice::Zfs,
        ..Config::default()
    };
    let e = choose(&c, Path::new("/r"), &FakeProbe::nothing()).unwrap_err();
    assert!(e.message.contains("[zfs] dataset"), "{}", e.message);
}

fn probe(dm: bool, btrfs: bool, overlay: bool) -> FakeProbe {
    FakeProbe {
        dm_thin: if dm { Ok(()) } else { Err("no dm".into()) },
        loopback_btrfs: if btrfs {
            Ok(())
        } else {
            Err("no btrfs".into())
        },
        filesystems: if overlay {
            vec!["overlay".into()]
        } else {
            vec![]
        },
    }
}

#[test]
fn auto_falls_back_from_dm_thin_to_btrfs_to_overlay() {
    let c = Config::default();
    let root = Path::new("/r");
    let r = choose(&c, root, &probe(true, true, true)).unwrap();
    assert_eq!(r.backend, BackendKind::DmThin);
    assert!(matches!(r.source, Source::LoopbackPool { ref pool, .. } if pool == "r-pool"));
    let r = choose(&c, root, &probe(false, true, true)).unwrap();
    assert_eq!(r.backend, BackendKind::Btrfs);
    assert!(r.reason.contains("no dm"), "{}", r.reason);
    assert_eq!(
        r.source,
        Source::BtrfsImage {
            image: root.join("btrfs.img"),
            mountpoint: root.join("btrfs"),
        }
    );
    let r = choose(&c, root, &probe(false, false, true)).unwrap();
    assert_eq!(r.backend, BackendKind::Overlay);
    assert!(
        r.reason.contains("no dm") && r.reason.contains("no btrfs"),
        "{}",
        r.reason
    );
    let e = choose(&c, root, &probe(false, false, false)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BackendUnavailable);
    assert!(e.message.contains("backend = \"naive\""), "{}", e.message);
}

#[test]
fn a_configured_backend_the_kernel_lacks_is_refused() {
    let c = Config {
        backend: BackendChoice::Devmapper,
        ..Config::default()
    };
    let e = choose(&c, Path::new("/r"), &probe(false, true, true)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BackendUnavailable);
    assert!(e.message.contains("no dm"), "{}", e.message);
    let c = Config {
        backend: BackendChoice::Btrfs,
        ..Config::default()
    };
    let e = choose(&c, Path::new("/r"), &probe(true, false, true)).unwrap_err();
    assert!(e.message.contains("[btrfs] path"), "{}", e.message);
}

struct Fakes {
    opts: EngineOptions,
    loops: FakeLoop,
    fs: FakeFilesystems,
    events: Arc<Recorder>,
    _dir: tempfile::TempDir,
}

fn fakes(probe: FakeProbe) -> Fakes {
    let dir = tempfile::tempdir().unwrap();
    let loops = FakeLoop::new();
    let fs = FakeFilesystems::new();
    let events = Arc::new(Recorder::default());
    let deps = Deps {
        probe: Arc::new(probe),
        pools: Arc::new(|| Err(thinpool::Error::new(thinpool::ErrorKind::DmUnavailable))),
        loops: Arc::new(loops.clone()),
        fs: Arc::new(fs.clone()),
    };
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    let opts = EngineOptions::new(
        Some(dir.path().join("root")),
        dir.path().join("config.toml"),
    )
    .with_deps(deps)
    .observed_by(events.clone());
    Fakes {
        opts,
        loops,
        fs,
        events,
        _dir: dir,
    }
}

#[test]
fn first_open_chooses_once_and_says_so() {
    let f = fakes(probe(false, false, true));
    let e = Engine::open(&f.opts).unwrap();
    assert!(e.chose_backend());
    assert_eq!(e.backend(), BackendKind::Overlay);
    e.close().unwrap();
    let chosen = |ev: &[Event]| {
        ev.iter()
            .filter(|e| matches!(e, Event::BackendChosen { backend, .. } if backend == "overlay"))
            .count()
    };
    assert_eq!(chosen(&f.events.events()), 1);
    let e = Engine::open(&f.opts).unwrap();
    assert!(!e.chose_backend());
    e.close().unwrap();
    assert_eq!(chosen(&f.events.events()), 1, "announced again");
}

#[test]
fn a_failing_mkfs_leaves_nothing_behind() {
    let f = fakes(probe(false, true, true));
    f.fs.fail_mkfs(true);
    let err = Engine::open(&f.opts).unwrap_err();
    assert!(err.message.contains("mkfs.btrfs"), "{}", err.message);
    let root = f.opts.root.clone().unwrap();
    for left in ["btrfs.img", "backend.toml", "backend.partial.toml"] {
        assert!(!root.join(left).exists(), "{left} left behind");
    }
    assert_eq!(f.loops.attached(), 0);
    assert!(f.fs.mounted().is_empty());
    assert!(f
        .events
        .events()
        .iter()
        .any(|e| matches!(e, Event::Mkfs { fs, .. } if fs == "btrfs")));
}

#[test]
fn a_half_made_btrfs_image_is_undone_on_the_next_open() {
    let f = fakes(probe(false, true, true));
    let root = f.opts.root.clone().unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    let rec = BackendRecord {
        backend: BackendKind::Btrfs,
        reason: "a run killed during mkfs".into(),
        source: Source::BtrfsImage {
            image: root.join("btrfs.img"),
            mountpoint: root.join("btrfs"),
        },
    };
    crate::state::write_toml(&root.join(PARTIAL), &rec).unwrap();
    std::fs::write(root.join("btrfs.img"), b"half").unwrap();
    std::fs::create_dir(root.join("btrfs")).unwrap();
    f.loops.attach(&root.join("btrfs.img"), true).unwrap();
    f.fs.mount_btrfs(Path::new("/dev/loop0"), &root.join("btrfs"))
        .unwrap();
    f.fs.fail_mkfs(true);
    // The retry fails too (mkfs), and undoes both attempts.
    Engine::open(&f.opts).unwrap_err();
    assert_eq!(f.loops.attached(), 0);
    assert!(f.fs.mounted().is_empty());
    assert!(!root.join("btrfs.img").exists());
    assert!(!root.join(PARTIAL).exists());
    // The choice is made afresh: on a kernel that now offers only
    // overlayfs, overlay.
    let g = fakes(probe(false, false, true));
    let opts = EngineOptions {
        root: Some(root.clone()),
        ..g.opts.clone()
    };
    let e = Engine::open(&opts).unwrap();
    assert_eq!(e.backend(), BackendKind::Overlay);
    e.close().unwrap();
}
