//! Unit tests of [`super`] (metrics) over fake kernels.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use snapshotter::{Key, Labels};
use thinpool::dm::FakeDm;
use thinpool::loopdev::FakeLoop;
use thinpool::lvm::FakeLvm;
use thinpool::metadata::FakeTools;
use thinpool::pool::{AutoextendPolicy, Extended, LoopbackConfig};

use super::*;
use crate::deps::{Deps, FakeFilesystems, FakeProbe};
use crate::Engine;

struct Root {
    opts: EngineOptions,
    _dir: tempfile::TempDir,
}

/// An overlay root (chosen on first open) whose pools run on fake dm.
fn root(pools_work: bool) -> Root {
    let dir = tempfile::tempdir().unwrap();
    let dm = FakeDm::new();
    let pool_deps = thinpool::pool::Deps {
        dm: Arc::new(dm.clone()),
        loops: Arc::new(FakeLoop::new()),
        tools: Arc::new(FakeTools::new(&dm)),
        lvm: Arc::new(FakeLvm::new(&dm)),
    };
    let deps = Deps {
        probe: Arc::new(FakeProbe {
            dm_thin: Err("no dm".into()),
            loopback_btrfs: Err("no btrfs".into()),
            filesystems: vec!["overlay".into()],
        }),
        pools: Arc::new(move || {
            if pools_work {
                Ok(pool_deps.clone())
            } else {
                Err(thinpool::Error::new(thinpool::ErrorKind::DmUnavailable))
            }
        }),
        loops: Arc::new(FakeLoop::new()),
        fs: Arc::new(FakeFilesystems::new()),
    };
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    let opts = EngineOptions::new(
        Some(dir.path().join("root")),
        dir.path().join("config.toml"),
    )
    .with_deps(deps);
    Root { opts, _dir: dir }
}

fn scrape(opts: &EngineOptions) -> String {
    encode(&registry(StateCollector::new(opts.clone())).unwrap()).unwrap()
}

fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .map(|l| &l[series.len() + 1..])
}

#[test]
fn a_pool_its_extensions_and_snapshots_are_exported() {
    let r = root(true);
    let e = Engine::open(&r.opts).unwrap();
    let pools = r.opts.pools().unwrap();
    let mut cfg = LoopbackConfig::new("tp", pools.dir_of("tp"));
    cfg.data_size = thinpool::Bytes::mib(256);
    cfg.metadata_size = thinpool::Bytes::mib(64);
    drop(
        pools
            .create_loopback(&cfg, &AutoextendPolicy::default(), 5)
            .unwrap(),
    );
    let grew = Extended {
        data: Some(thinpool::Bytes::mib(512)),
        metadata: None,
    };
    pools.count_extension("tp", &grew).unwrap();
    pools.count_extension("tp", &grew).unwrap();
    pools.count_extension("tp", &Extended::default()).unwrap();
    e.snapshotter()
        .prepare(&Key::new("c1").unwrap(), None, &Labels::new())
        .unwrap();

    let text = scrape(&r.opts);
    let value =
        |series: &str| line(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(
        value(r#"thinbox_pool_data_size_bytes{pool="tp"}"#),
        "268435456"
    );
    assert_eq!(value(r#"thinbox_pool_data_used_bytes{pool="tp"}"#), "0");
    // What `pool status` reports (the fake kernel's metadata geometry).
    let status = pools.status("tp").unwrap();
    assert_eq!(
        value(r#"thinbox_pool_metadata_size_bytes{pool="tp"}"#),
        status.metadata.unwrap().total_bytes.to_string()
    );
    assert_eq!(
        value(r#"thinbox_pool_metadata_used_bytes{pool="tp"}"#),
        status.metadata.unwrap().used_bytes.to_string()
    );
    assert_eq!(value(r#"thinbox_pool_mode{mode="rw",pool="tp"}"#), "1");
    for m in ["out_of_data_space", "ro", "fail", "inactive"] {
        assert_eq!(
            value(&format!(r#"thinbox_pool_mode{{mode="{m}",pool="tp"}}"#)),
            "0"
        );
    }
    assert_eq!(
        value(r#"thinbox_pool_info{dm_name="tp",kind="loopback",pool="tp"}"#),
        "1"
    );
    assert_eq!(
        value(r#"thinbox_pool_autoextends_total{device="data",pool="tp"}"#),
        "2"
    );
    assert_eq!(
        value(r#"thinbox_pool_autoextends_total{device="metadata",pool="tp"}"#),
        "0"
    );
    assert_eq!(value(r#"thinbox_pool_needs_check{pool="tp"}"#), "0");
    assert_eq!(
        value(r#"thinbox_snapshots{client="thinbox",kind="active"}"#),
        "1"
    );
    assert_eq!(
        value(r#"thinbox_snapshots{client="containerd",kind="committed"}"#),
        "0"
    );
    assert_eq!(value(r#"thinbox_collect_failed{part="pools"}"#), "0");
    assert!(
        text.contains("# TYPE thinbox_pool_autoextends_total counter"),
        "{text}"
    );

    // Each scrape reads afresh: a removed pool's series go.
    e.close().unwrap();
    r.opts.pools().unwrap().destroy("tp", false).unwrap();
    let text = scrape(&r.opts);
    assert!(!text.contains(r#"pool="tp""#), "{text}");
}

#[test]
fn a_part_that_cannot_be_read_says_so_and_the_rest_is_exported() {
    let r = root(false);
    Engine::open(&r.opts).unwrap().close().unwrap();
    // A pools directory with a record, but no dm to read it with.
    let dir = r.opts.state_root().unwrap().0.join("pools/tp");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pool.toml"), "").unwrap();
    let text = scrape(&r.opts);
    assert_eq!(
        line(&text, r#"thinbox_collect_failed{part="pools"}"#),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        line(&text, r#"thinbox_collect_failed{part="snapshots"}"#),
        Some("0"),
        "{text}"
    );
    assert_eq!(
        line(
            &text,
            r#"thinbox_snapshots{client="thinbox",kind="active"}"#
        ),
        Some("0"),
        "{text}"
    );
}

#[test]
fn a_textfile_is_whole_and_readable_by_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thinbox.prom");
    write_textfile(&path, "a 1\n").unwrap();
    write_textfile(&path, "b 2\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    let e = write_textfile(&dir.path().join("no/such/dir/x.prom"), "").unwrap_err();
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}

#[test]
fn modes_map_to_their_series() {
    assert_eq!(pool_mode("rw"), "rw");
    assert_eq!(pool_mode("out_of_data_space"), "out_of_data_space");
    assert_eq!(pool_mode("Fail"), "fail");
    assert_eq!(pool_mode("half-made (run `thinbox pool destroy`)"), "fail");
    assert_eq!(pool_mode("inactive"), "inactive");
}
