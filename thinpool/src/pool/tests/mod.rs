//! Unit tests of pools over the fakes (FakeDm, FakeLoop, FakeTools,
//! FakeLvm): one file per concern, sharing the environment below.

use super::*;
use crate::dm::{CrashWhen, FakeDm};
use crate::loopdev::FakeLoop;
use crate::metadata::FakeTools;
use std::panic::{catch_unwind, AssertUnwindSafe};
struct Env {
    dm: FakeDm,
    loops: FakeLoop,
    lvm: crate::lvm::FakeLvm,
    deps: Deps,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

fn env() -> Env {
    let dm = FakeDm::new();
    let loops = FakeLoop::new();
    let lvm = crate::lvm::FakeLvm::new(&dm);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    Env {
        deps: Deps {
            dm: Arc::new(dm.clone()),
            loops: Arc::new(loops.clone()),
            tools: Arc::new(FakeTools::new(&dm)),
            lvm: Arc::new(lvm.clone()),
        },
        dm,
        loops,
        lvm,
        _tmp: tmp,
        dir,
    }
}

fn cfg(e: &Env) -> LoopbackConfig {
    LoopbackConfig {
        data_size: Bytes::mib(64),
        metadata_size: Bytes::mib(4),
        max_thins: 100,
        ..LoopbackConfig::new("tp", &e.dir)
    }
}

const MIB16: Sectors = Sectors::new(32768);

/// Thin ids in the fake pool's metadata.
fn kernel_ids(e: &Env, p: &Pool) -> Vec<u32> {
    e.dm.thin_ids(&p.table().metadata.to_string())
}

fn recorded_ids(p: &Pool) -> Vec<u32> {
    p.thins().unwrap().iter().map(|t| t.id.get()).collect()
}

// ---- direct-lvm pools over the fake lvm2 ----------------------------

const DISK: &str = "/dev/fake-vda";

mod crash;
mod lend;
mod loopback;
mod lvm;
mod repair;
mod space;
mod thin;
