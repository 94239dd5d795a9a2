//! Tests only direct-lvm pools have: lvm2 making the pool on a spare disk
//! (signatures refused unless forced, a profile, dmeventd monitoring,
//! lvextend), and SIGKILL at each lvm2 step of a creation.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use integration::fixtures::{run, temp_dir, try_run, unique_name};
use thinpool::lvm::{LvChange, LvExtend, LvRow, LvmControl, PvInfo, RealLvm, ThinPoolSpec, VgInfo};
use thinpool::pool::{AutoextendPolicy, Deps, LvmConfig, Monitor, Pool};
use thinpool::{Bytes, ErrorKind, Sectors};

use crate::crash::KillSwitch;
use crate::support::*;

/// The environment variable that makes the test binary an lvm2 crash child.
pub const LVM_CRASH_ENV: &str = "THINPOOL_LVM_CRASH_CHILD";

pub fn direct_lvm_pool_lifecycle() {
    let disk = std::env::var(integration::vm::DISKS_ENV).unwrap();
    let disk = disk.split_whitespace().next().unwrap().to_owned();
    let tmp = temp_dir();
    let vg = unique_name("vg").replace('-', "_");
    let _guard = VgGuard(vg.clone(), disk.clone());
    let deps = deps();
    let mut cfg = LvmConfig::new(
        vec![PathBuf::from(&disk)],
        &vg,
        "pool",
        tmp.path().join("lvm.db"),
    );
    cfg.data_percent = 50;
    cfg.metadata_percent = 2;

    // A device with a filesystem is refused, naming what was found.
    run("mkfs.ext4", &["-q", "-F", &disk]);
    let err = Pool::create_lvm(&deps, &cfg).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::DeviceHasSignature { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("ext4"), "{err}");
    assert!(!try_run("vgs", &[&vg]), "nothing made");
    assert!(!cfg.store.exists());

    cfg.force = true;
    let mut pool = Pool::create_lvm(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    assert_eq!(pool.table().block_size.bytes(), Bytes::kib(512));
    assert!(pool.table().features.error_if_no_space, "--errorwhenfull y");
    let lvs = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_when_full",
            &format!("{vg}/pool"),
        ],
    );
    assert!(lvs.contains("\"error\""), "{lvs}");
    // The VG name is taken now: refused, nothing made, nothing of ours touched.
    let mut other = cfg.clone();
    other.store = tmp.path().join("other.db");
    let err = Pool::create_lvm(&deps, &other).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NameTaken { .. }), "{err}");
    assert!(!other.store.exists());
    assert!(dm_exists(&name));
    assert!(pool.table().features.skip_block_zeroing, "zeroing off");
    let profile =
        fs::read_to_string(cfg.profile_dir.join(format!("thinbox-{vg}-pool.profile"))).unwrap();
    assert!(
        profile.contains("thin_pool_autoextend_threshold=80"),
        "{profile}"
    );
    let lvs = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_profile",
            &format!("{vg}/pool"),
        ],
    );
    assert!(lvs.contains(&format!("thinbox-{vg}-pool")), "{lvs}");
    // Monitoring: lvm2 starts dmeventd where it is installed; thinbox reports
    // which monitor is active, as lvs (read independently) sees it.
    let lvs = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "seg_monitor",
            &format!("{vg}/pool"),
        ],
    );
    let monitored = lvs.contains("\"monitored\"");
    assert_eq!(monitored, Path::new("/sbin/dmeventd").exists(), "{lvs}");
    let expected = if monitored {
        Monitor::Dmeventd
    } else {
        Monitor::Watch
    };
    assert_eq!(pool.monitor().unwrap(), expected);

    let size = Sectors::new(64 * MIB / 512);
    pool.create_thin("a", size).unwrap();
    let dev = pool.activate("a").unwrap();
    write_at(&dev, 0, b"on lvm");
    pool.snapshot("a", "s").unwrap();
    write_at(&dev, 0, b"changed");
    assert_eq!(read_at(&pool.activate("s").unwrap(), 0, 6), b"on lvm");
    pool.deactivate("s", false).unwrap();
    pool.delete_thin("s").unwrap();
    assert_eq!(kernel_thin_ids(&name, pool.metadata_device().path), vec![0]);

    // Autoextend through lvextend.
    let before = pool.table().length;
    let policy = AutoextendPolicy {
        threshold_percent: 0,
        extend_percent: 10,
        ..AutoextendPolicy::default()
    };
    let meta_before = pool.status().unwrap().usage().unwrap().total_meta;
    let grown = pool.maybe_extend(&policy).unwrap();
    assert!(grown.data.is_some());
    assert!(pool.table().length > before);
    // At a 0% threshold the metadata LV grows too (lvextend --poolmetadatasize).
    assert!(grown.metadata.is_some());
    let meta_after = pool.status().unwrap().usage().unwrap().total_meta;
    assert!(meta_after > meta_before, "{meta_before} -> {meta_after}");
    let table_text = run("dmsetup", &["table", &name]);
    assert_eq!(table_text.trim(), pool.table().to_string());

    // Shut down (lvchange -an) and open again: thin devices and data survive.
    pool.shutdown().unwrap();
    assert!(!dm_exists(&name));
    let pool = Pool::open_lvm(&deps, &cfg.store).unwrap();
    assert!(
        pool.reconciliation().is_clean(),
        "{:?}",
        pool.reconciliation()
    );
    assert_eq!(read_at(&pool.activate("a").unwrap(), 0, 7), b"changed");

    pool.destroy().unwrap();
    assert!(!try_run("vgs", &[&vg]));
    assert!(thinpool::lvm::signatures(Path::new(&disk))
        .unwrap()
        .is_empty());
    assert!(!cfg.store.exists());
    assert!(!cfg
        .profile_dir
        .join(format!("thinbox-{vg}-pool.profile"))
        .exists());
}

/// lvm2 that SIGKILLs its own process at a matching command (description
/// `pvcreate`, `vgcreate`, `lvcreate`, `lvchange --metadataprofile`, ...).
#[derive(Debug)]
struct KillLvm {
    inner: RealLvm,
    switch: KillSwitch,
}

impl KillLvm {
    fn around<T>(
        &self,
        desc: &str,
        f: impl FnOnce() -> thinpool::Result<T>,
    ) -> thinpool::Result<T> {
        self.switch.around(desc, f)
    }
}

impl LvmControl for KillLvm {
    fn signatures(&self, dev: &Path) -> thinpool::Result<Vec<String>> {
        self.inner.signatures(dev)
    }
    fn device_use(&self, dev: &Path) -> thinpool::Result<thinpool::lvm::DeviceUse> {
        self.inner.device_use(dev)
    }
    fn wipe(&self, dev: &Path) -> thinpool::Result<()> {
        self.around("wipefs", || self.inner.wipe(dev))
    }
    fn pvcreate(&self, devs: &[PathBuf]) -> thinpool::Result<()> {
        self.around("pvcreate", || self.inner.pvcreate(devs))
    }
    fn pvremove(&self, devs: &[PathBuf]) -> thinpool::Result<()> {
        self.around("pvremove", || self.inner.pvremove(devs))
    }
    fn pvs(&self) -> thinpool::Result<Vec<PvInfo>> {
        self.inner.pvs()
    }
    fn vgcreate(&self, vg: &str, devs: &[PathBuf]) -> thinpool::Result<()> {
        self.around("vgcreate", || self.inner.vgcreate(vg, devs))
    }
    fn vgremove(&self, vg: &str) -> thinpool::Result<()> {
        self.around("vgremove", || self.inner.vgremove(vg))
    }
    fn vg(&self, vg: &str) -> thinpool::Result<Option<VgInfo>> {
        self.inner.vg(vg)
    }
    fn create_thin_pool(&self, spec: &ThinPoolSpec) -> thinpool::Result<()> {
        self.around("lvcreate", || self.inner.create_thin_pool(spec))
    }
    fn lvs(&self, vg: &str) -> thinpool::Result<Vec<LvRow>> {
        self.inner.lvs(vg)
    }
    fn lvchange(&self, lv: &str, change: &LvChange) -> thinpool::Result<()> {
        let desc = format!("lvchange {}", change.args().join(" "));
        self.around(&desc, || self.inner.lvchange(lv, change))
    }
    fn lvextend(&self, lv: &str, extend: LvExtend) -> thinpool::Result<()> {
        self.around("lvextend", || self.inner.lvextend(lv, extend))
    }
    fn lvremove(&self, lv: &str) -> thinpool::Result<()> {
        self.around("lvremove", || self.inner.lvremove(lv))
    }
}

/// Child side: `DISK|VG|STORE|PROFILE_DIR|PATTERN|before|after`; creates the
/// pool with a killing lvm2 and must die before returning.
pub fn lvm_crash_child(spec: &str) -> ! {
    let f: Vec<&str> = spec.split('|').collect();
    let deps = Deps {
        lvm: Arc::new(KillLvm {
            inner: RealLvm,
            switch: KillSwitch {
                pattern: f[4].to_owned(),
                after: f[5] == "after",
            },
        }),
        ..deps()
    };
    let mut cfg = LvmConfig::new(vec![PathBuf::from(f[0])], f[1], "pool", f[2]);
    cfg.profile_dir = PathBuf::from(f[3]);
    cfg.force = true;
    cfg.data_percent = 10;
    let r = Pool::create_lvm(&deps, &cfg).map(drop);
    eprintln!("lvm crash child survived: {r:?}");
    std::process::exit(3);
}

/// Nothing of the pool is left: no VG, no PV label on the disk, no dm
/// device of the VG, no profile, no store.
pub fn assert_no_lvm_leftovers(disk: &str, vg: &str, cfg: &LvmConfig, what: &str) {
    assert!(!try_run("vgs", &[vg]), "{what}: VG left");
    let pvs = run("pvs", &["--reportformat", "json", "-o", "pv_name"]);
    assert!(!pvs.contains(disk), "{what}: PV left: {pvs}");
    let sigs = thinpool::lvm::signatures(Path::new(disk)).unwrap();
    assert!(!sigs.iter().any(|s| s == "LVM2_member"), "{what}: {sigs:?}");
    let dm = run("dmsetup", &["ls"]);
    assert!(!dm.contains(vg), "{what}: dm devices left: {dm}");
    assert!(!cfg.store.exists(), "{what}: store left");
    let profile = cfg.profile_dir.join(format!("thinbox-{vg}-pool.profile"));
    assert!(!profile.exists(), "{what}: profile left");
}

pub fn sigkill_during_lvm_create() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = temp_dir();
    let (disk, vg, _guard, mut cfg) = lvm_setup(tmp.path());
    cfg.data_percent = 10;
    let deps = deps();
    // (pattern, after, whether a reopen finishes the creation)
    let points = [
        ("wipefs", true, false),
        ("pvcreate", true, false),
        ("vgcreate", true, false),
        ("lvcreate", false, false),
        ("lvcreate", true, false),
        ("lvchange --metadataprofile", false, false),
        ("lvchange --metadataprofile", true, false),
        ("lvchange --monitor", true, false),
        ("lvchange -ay", false, true),
    ];
    // Each point is a child killed and a VG made and removed (~30 s under
    // TCG): CI's smoke run takes three, one for each way out (rolled back
    // by an open, rolled back by a new create, rolled forward), killed
    // before and after an lvm2 step; THINBOX_FULL=1 runs all nine.
    let chosen: Vec<_> = points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| integration::harness::full_matrix() || [1, 4, 8].contains(i))
        .map(|(_, p)| p)
        .collect();
    for (i, (pattern, after, forward)) in chosen.into_iter().enumerate() {
        let what = format!("{pattern} {}", if after { "after" } else { "before" });
        let spec = format!(
            "{disk}|{vg}|{}|{}|{pattern}|{}",
            cfg.store.display(),
            cfg.profile_dir.display(),
            if after { "after" } else { "before" }
        );
        let status = Command::new(std::env::current_exe().unwrap())
            .env(LVM_CRASH_ENV, &spec)
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{what}: child was not killed: {status:?}"
        );
        if forward {
            let pool = Pool::open_lvm(&deps, &cfg.store).unwrap();
            assert!(pool.reconciliation().is_clean(), "{what}");
            pool.destroy().unwrap();
        } else if i % 2 == 0 {
            // Retry by opening: the creation is rolled back.
            let err = Pool::open_lvm(&deps, &cfg.store).unwrap_err();
            assert!(
                matches!(err.kind(), ErrorKind::CreationRolledBack { .. }),
                "{what}: {err}"
            );
            assert_no_lvm_leftovers(&disk, &vg, &cfg, &what);
        } else {
            // Retry by creating again: rolled back first, then made anew.
            let mut pool = Pool::create_lvm(&deps, &cfg).unwrap();
            pool.create_thin("t", THIN_SIZE).unwrap();
            pool.destroy().unwrap();
        }
        assert_no_lvm_leftovers(&disk, &vg, &cfg, &what);
    }
}
