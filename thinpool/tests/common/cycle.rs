//! The snapshot cycle measured by the `snapshot_cycle` benchmark and checked
//! by the `snapshot_cycle_sequences_work` kernel test: create a snapshot of
//! an active origin, activate it, deactivate it, delete it — once through the
//! library, once through `dmsetup` commands (the peer).

use std::path::PathBuf;
use std::process::Command;

use thinpool::pool::{Deps, LoopbackConfig, Pool};
use thinpool::{Bytes, Sectors};

/// A loopback pool with an active origin, made outside the timed region.
pub struct Fixture {
    pub pool: Pool,
    pub origin_dm: String,
    pub origin_len: Sectors,
    pub pool_devnum: String,
    _tmp: tempfile::TempDir,
}

impl Fixture {
    pub fn new(name: &str) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("thinbox-test-{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let cfg = LoopbackConfig {
            data_size: Bytes::mib(256),
            metadata_size: Bytes::mib(16),
            max_thins: 100,
            ..LoopbackConfig::new(name, tmp.path().join("pool"))
        };
        let deps = Deps::real().expect("needs root and device-mapper (run in the VM)");
        let mut pool = Pool::create_loopback(&deps, &cfg).expect("create pool");
        let origin_len = Sectors::new(64 << 11);
        pool.create_thin("origin", origin_len)
            .expect("create origin");
        pool.activate("origin").expect("activate origin");
        let pool_devnum = deps
            .dm
            .info(pool.name())
            .expect("pool info")
            .expect("pool exists")
            .devnum
            .to_string();
        Fixture {
            origin_dm: format!("{}-origin", pool.name()),
            pool,
            origin_len,
            pool_devnum,
            _tmp: tmp,
        }
    }

    /// The library sequence.
    pub fn library_cycle(&mut self) {
        self.pool.snapshot("origin", "snap").expect("snapshot");
        let dev: PathBuf = self.pool.activate("snap").expect("activate");
        assert!(dev.exists() || dev.starts_with("/dev/dm-"));
        self.pool.deactivate("snap", false).expect("deactivate");
        self.pool.delete_thin("snap").expect("delete");
    }

    /// The same through dmsetup: suspend, create_snap, resume, create,
    /// remove, delete. (Thin id 4242, which the library never allocates here.)
    pub fn dmsetup_cycle(&self) {
        let pool = self.pool.name();
        let snap = format!("{pool}-cli-snap");
        let table = format!("0 {} thin {} 4242", self.origin_len, self.pool_devnum);
        dmsetup(&["suspend", &self.origin_dm]);
        dmsetup(&["message", pool, "0", "create_snap 4242 0"]);
        dmsetup(&["resume", &self.origin_dm]);
        dmsetup(&["create", &snap, "--table", &table]);
        dmsetup(&["remove", &snap]);
        dmsetup(&["message", pool, "0", "delete 4242"]);
    }
}

fn dmsetup(args: &[&str]) {
    let st = Command::new("dmsetup")
        .args(args)
        .status()
        .expect("run dmsetup");
    assert!(st.success(), "dmsetup {args:?} failed");
}
