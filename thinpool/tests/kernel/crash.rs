//! SIGKILL at each step of each thin mutation (create, snapshot, delete,
//! resize), on every pool kind: a child process opens the pool with a dm
//! control that kills it at a matching call; the parent reopens and checks
//! that the kernel's thin ids equal the records, that nothing is half-made
//! and that no origin is left suspended.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use integration::fixtures::run;
use thinpool::dm::{DmControl, DmInfo, RealDm};
use thinpool::loopdev::RealLoop;
use thinpool::metadata::ThinTools;
use thinpool::pool::Deps;
use thinpool::store::ThinState;
use thinpool::table::{DevNum, TargetLine, ThinTable};
use thinpool::Sectors;

use crate::support::*;

/// The environment variable that makes the test binary a crash child.
pub const CRASH_ENV: &str = "THINPOOL_CRASH_CHILD";

/// Where a crash child dies: at the first call whose description starts
/// with `pattern`, before it or (when it succeeded) after it.
#[derive(Debug)]
pub struct KillSwitch {
    pub pattern: String,
    pub after: bool,
}

impl KillSwitch {
    /// Runs `f`, the call described by `desc`, dying where the switch says.
    pub fn around<T>(
        &self,
        desc: &str,
        f: impl FnOnce() -> thinpool::Result<T>,
    ) -> thinpool::Result<T> {
        let hit = desc.starts_with(&self.pattern);
        if hit && !self.after {
            die();
        }
        let r = f();
        if hit && self.after && r.is_ok() {
            die();
        }
        r
    }
}

/// Real dm control that SIGKILLs its own process at a matching call.
#[derive(Debug)]
struct KillAt {
    inner: RealDm,
    switch: KillSwitch,
}

impl KillAt {
    fn around<T>(
        &self,
        desc: String,
        f: impl FnOnce() -> thinpool::Result<T>,
    ) -> thinpool::Result<T> {
        self.switch.around(&desc, f)
    }
}

/// Kills this process at once.
pub fn die() -> ! {
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL).unwrap();
    unreachable!("SIGKILL returned");
}

impl DmControl for KillAt {
    fn create(&self, name: &str) -> thinpool::Result<DmInfo> {
        self.around(format!("create {name}"), || self.inner.create(name))
    }
    fn load(&self, name: &str, table: &[TargetLine]) -> thinpool::Result<()> {
        self.around(format!("load {name}"), || self.inner.load(name, table))
    }
    fn suspend(&self, name: &str) -> thinpool::Result<()> {
        self.around(format!("suspend {name}"), || self.inner.suspend(name))
    }
    fn resume(&self, name: &str) -> thinpool::Result<()> {
        self.around(format!("resume {name}"), || self.inner.resume(name))
    }
    fn remove(&self, name: &str, deferred: bool) -> thinpool::Result<()> {
        self.around(format!("remove {name}"), || {
            self.inner.remove(name, deferred)
        })
    }
    fn message(&self, name: &str, msg: &str) -> thinpool::Result<Option<String>> {
        self.around(format!("message {msg}"), || self.inner.message(name, msg))
    }
    fn status(&self, name: &str) -> thinpool::Result<Vec<TargetLine>> {
        self.inner.status(name)
    }
    fn table(&self, name: &str) -> thinpool::Result<Vec<TargetLine>> {
        self.inner.table(name)
    }
    fn info(&self, name: &str) -> thinpool::Result<Option<DmInfo>> {
        self.inner.info(name)
    }
    fn list(&self) -> thinpool::Result<Vec<(String, DevNum)>> {
        self.inner.list()
    }
    fn target_types(&self) -> thinpool::Result<Vec<String>> {
        self.inner.target_types()
    }
    fn arm_events(&self) -> thinpool::Result<()> {
        self.inner.arm_events()
    }
    fn wait_events(&self, timeout: std::time::Duration) -> thinpool::Result<bool> {
        self.inner.wait_events(timeout)
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Loopback => "loopback",
        Kind::Lvm => "lvm",
        Kind::Adopted => "adopted",
    }
}

fn kind_of(name: &str) -> Kind {
    match name {
        "loopback" => Kind::Loopback,
        "lvm" => Kind::Lvm,
        "adopted" => Kind::Adopted,
        k => panic!("unknown pool kind {k}"),
    }
}

/// Child side: `KIND|PATH|OP|PATTERN|before|after`; opens the pool with a
/// killing dm, runs the operation and must die before returning.
pub fn crash_child(spec: &str) -> ! {
    let f: Vec<&str> = spec.split('|').collect();
    let deps = Deps {
        dm: Arc::new(KillAt {
            inner: RealDm::new().unwrap(),
            switch: KillSwitch {
                pattern: f[3].to_owned(),
                after: f[4] == "after",
            },
        }),
        loops: Arc::new(RealLoop),
        tools: Arc::new(ThinTools),
        lvm: Arc::new(thinpool::lvm::RealLvm),
    };
    let mut pool = TestPool::open(kind_of(f[0]), &deps, Path::new(f[1]));
    let r = match f[2] {
        "create" => pool.create_thin("new", THIN_SIZE).map(drop),
        "snapshot" => pool.snapshot("base", "new").map(drop),
        "delete" => pool.delete_thin("victim"),
        "resize" | "resize_inactive" => {
            let thin = if f[2] == "resize" { "base" } else { "victim" };
            let size = pool.store().thin(thin).unwrap().unwrap().size;
            pool.resize_thin(thin, Sectors::new(size.get() + THIN_SIZE.get()))
        }
        op => panic!("unknown op {op}"),
    };
    eprintln!("crash child survived: {r:?}");
    std::process::exit(3);
}

/// One crash case: runs OP in a child killed at PATTERN, then reopens and
/// checks that the kernel's thin ids (read with thin_dump) equal the records,
/// that nothing is half-made, and that the origin is not left suspended.
fn crash_case(kind: Kind, path: &Path, name: &str, op: &str, pattern: &str, after: bool) {
    let spec = format!(
        "{}|{}|{op}|{pattern}|{}",
        kind_name(kind),
        path.display(),
        if after { "after" } else { "before" }
    );
    let resized = if op == "resize" { "base" } else { "victim" };
    let size_before = TestPool::open(kind, &deps(), path)
        .store()
        .thin(resized)
        .unwrap()
        .unwrap()
        .size;
    let status = Command::new(std::env::current_exe().unwrap())
        .env(CRASH_ENV, &spec)
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{spec}: child was not killed: {status:?}"
    );

    let deps = deps();
    let mut pool = TestPool::open(kind, &deps, path);
    let rec = pool.reconciliation().clone();
    assert_eq!(
        rec.completed.len() + rec.rolled_back.len(),
        1,
        "{spec}: {rec:?}"
    );
    let meta: PathBuf = pool.metadata_device().path.to_owned();
    let kernel = kernel_thin_ids(name, &meta);
    assert_eq!(
        kernel,
        recorded_ids(&pool),
        "{spec}: orphans or lost devices ({rec:?})"
    );
    assert!(pool
        .thins()
        .unwrap()
        .iter()
        .all(|t| t.state == ThinState::Ready));
    assert!(
        pool.store().thin("base").unwrap().is_some(),
        "{spec}: base lost"
    );
    let base = deps.dm.info(&format!("{name}-base")).unwrap().unwrap();
    assert!(!base.suspended, "{spec}: origin left suspended");
    let finished = after && pattern.starts_with("message set_transaction_id");
    match op {
        "delete" => assert!(pool.store().thin("victim").unwrap().is_none(), "{spec}"),
        "resize" | "resize_inactive" => {
            // A started resize is finished: record and live table agree on the new size.
            let want = Sectors::new(size_before.get() + THIN_SIZE.get());
            let rec_size = pool.store().thin(resized).unwrap().unwrap().size;
            assert_eq!(rec_size, want, "{spec}");
            let dev = pool.activate(resized).unwrap();
            let table = run("dmsetup", &["table", &format!("{name}-{resized}")]);
            let t: ThinTable = table.trim().parse().unwrap();
            assert_eq!(t.length, want, "{spec}: live table");
            assert_eq!(device_sectors(&dev), want.get(), "{spec}: device size");
            if op == "resize_inactive" {
                pool.deactivate(resized, false).unwrap();
            }
        }
        _ => assert_eq!(
            pool.store().thin("new").unwrap().is_some(),
            finished,
            "{spec}"
        ),
    }
    // Reset for the next case.
    if pool.store().thin("new").unwrap().is_some() {
        pool.delete_thin("new").unwrap();
    }
    if op == "delete" {
        pool.create_thin("victim", THIN_SIZE).unwrap();
    }
}

/// The crash points of `op`: every step on a loopback pool; on the other
/// kinds (slower to open: `lvchange -ay`, or an adoption) one before and
/// one after each kind of step, which exercises the same protocol.
fn points(kind: Kind, op: &str) -> &'static [(&'static str, bool)] {
    match (kind, op) {
        (Kind::Loopback, "create") => &[
            ("message create_thin", false),
            ("message create_thin", true),
            ("message set_transaction_id", false),
            ("message set_transaction_id", true),
        ],
        (_, "create") => &[
            ("message create_thin", false),
            ("message set_transaction_id", true),
        ],
        (Kind::Loopback, "snapshot") => &[
            ("suspend", true),
            ("message create_snap", false),
            ("message create_snap", true),
            ("resume", false),
            ("message set_transaction_id", true),
        ],
        (_, "snapshot") => &[
            ("suspend", true),
            ("message create_snap", true),
            ("message set_transaction_id", true),
        ],
        (Kind::Loopback, "delete") => &[
            ("message delete", false),
            ("message delete", true),
            ("message set_transaction_id", true),
        ],
        (_, "delete") => &[
            ("message delete", true),
            ("message set_transaction_id", false),
        ],
        (Kind::Loopback, "resize") => &[
            ("load", false),
            ("load", true),
            ("suspend", true),
            ("resume", false),
            ("message set_transaction_id", false),
            ("message set_transaction_id", true),
        ],
        (_, "resize") => &[
            ("load", true),
            ("resume", false),
            ("message set_transaction_id", true),
        ],
        (_, "resize_inactive") => &[
            ("message set_transaction_id", false),
            ("message set_transaction_id", true),
        ],
        (_, op) => panic!("no crash points for {op}"),
    }
}

/// Every crash point of each of `ops` on a fresh pool of `kind` with an
/// active `base` (holding data) and a `victim`; the data survives all.
fn crash_suite(kind: Kind, ops: &[&str]) {
    let mut tp = TestPool::make(kind, Spec::default());
    let name = tp.dm_name();
    tp.create_thin("base", THIN_SIZE).unwrap();
    let dev = tp.activate("base").unwrap();
    write_at(&dev, 0, b"base data");
    tp.create_thin("victim", THIN_SIZE).unwrap();
    tp.close();
    for op in ops {
        for (pattern, after) in points(kind, op) {
            crash_case(kind, &tp.path, &name, op, pattern, *after);
        }
    }
    let pool = tp.reopen();
    assert_eq!(read_at(&pool.activate("base").unwrap(), 0, 9), b"base data");
    tp.finish();
}

pub fn sigkill_during_create(kind: Kind) {
    crash_suite(kind, &["create"]);
}

pub fn sigkill_during_snapshot(kind: Kind) {
    crash_suite(kind, &["snapshot"]);
}

pub fn sigkill_during_delete(kind: Kind) {
    crash_suite(kind, &["delete"]);
}

pub fn sigkill_during_resize(kind: Kind) {
    crash_suite(kind, &["resize", "resize_inactive"]);
}
