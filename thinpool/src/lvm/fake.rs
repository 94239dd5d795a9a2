//! An in-memory lvm2: disks with signatures, PVs, VGs of 4 MiB extents and
//! thin-pool LVs (with lvm2's spare metadata LV counted), whose activation
//! creates the pool's dm devices in a [`FakeDm`] the way lvm2 does in the
//! kernel: `VG-LV_tmeta` and `VG-LV_tdata` (kept until the LV is removed,
//! so the fake pool metadata, keyed by device number, survives
//! deactivation as the on-disk metadata would) and the `VG-LV` thin-pool.
//!
//! Faults: [`FakeLvm::fail_next`] makes the next command whose description
//! (`pvcreate /dev/x`, `vgcreate VG`, `lvcreate VG/LV`, `lvchange
//! --metadataprofile P VG/LV`, ...) contains a pattern fail as a tool
//! failure; [`FakeLvm::crash_at`] makes it panic before or after taking
//! effect, modelling a process killed there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{DeviceUse, LvChange, LvExtend, LvRow, LvmControl, PvInfo, ThinPoolSpec, VgInfo};
use crate::dm::{CrashWhen, DmControl, FakeDm};
use crate::error::{Error, ErrorKind, Result};
use crate::table::{DevRef, PoolFeatures, PoolTable, TargetLine};
use crate::units::{BlockSize, Bytes, DataBlocks, Sectors};

const EXTENT: u64 = 4 << 20;

#[derive(Debug, Clone)]
struct Lv {
    data_extents: u64,
    meta_extents: u64,
    chunk: BlockSize,
    zero: bool,
    profile: String,
    monitored: bool,
    error_when_full: bool,
    active: bool,
}

#[derive(Debug, Clone)]
struct Vg {
    devs: Vec<PathBuf>,
    extent_count: u64,
    lvs: BTreeMap<String, Lv>,
}

impl Vg {
    fn free(&self) -> u64 {
        let used: u64 = self
            .lvs
            .values()
            .map(|l| l.data_extents + l.meta_extents)
            .sum();
        // lvm2 keeps one spare metadata LV as big as the biggest pool's.
        let spare = self.lvs.values().map(|l| l.meta_extents).max().unwrap_or(0);
        self.extent_count.saturating_sub(used + spare)
    }
}

#[derive(Debug, Default)]
struct State {
    disks: BTreeMap<PathBuf, u64>,
    signatures: BTreeMap<PathBuf, Vec<String>>,
    uses: BTreeMap<PathBuf, DeviceUse>,
    pvs: BTreeMap<PathBuf, Option<String>>,
    vgs: BTreeMap<String, Vg>,
    dmeventd: bool,
    profile_dir: Option<PathBuf>,
    calls: Vec<String>,
    fail: Vec<String>,
    crash: Vec<(String, CrashWhen)>,
}

/// The fake. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeLvm {
    state: Arc<Mutex<State>>,
    dm: FakeDm,
}

fn failed(desc: &str, status: i32) -> Error {
    Error::new(ErrorKind::ToolFailed {
        tool: desc.to_owned(),
        status: Some(status),
    })
}

/// lvm2's dm name for `vg/lv` (a `-` inside a name is doubled).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

fn split(lv: &str) -> (&str, &str) {
    lv.split_once('/').unwrap_or((lv, ""))
}

impl FakeLvm {
    /// A fake whose pools appear in `dm`; dmeventd is running.
    pub fn new(dm: &FakeDm) -> FakeLvm {
        let f = FakeLvm {
            state: Default::default(),
            dm: dm.clone(),
        };
        f.lock().dmeventd = true;
        f
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a block device of `size`, carrying `signatures`.
    pub fn add_disk(&self, dev: impl Into<PathBuf>, size: Bytes, signatures: &[&str]) {
        let dev = dev.into();
        let mut st = self.lock();
        st.disks.insert(dev.clone(), size.0);
        st.signatures
            .insert(dev, signatures.iter().map(|s| (*s).to_owned()).collect());
    }

    /// What `device_use` reports for `dev` (a mount, dm holders) besides
    /// what the fake knows itself (missing disks, PVs in a VG).
    pub fn set_device_use(&self, dev: impl Into<PathBuf>, found: DeviceUse) {
        self.lock().uses.insert(dev.into(), found);
    }

    /// Where the fake finds profiles (lvm2's `profile_dir`): with it, a
    /// pool's table carries the low-water mark of its profile's
    /// `thin_pool_autoextend_threshold`, as lvm2 sets it on each reload.
    pub fn set_profile_dir(&self, dir: impl Into<PathBuf>) {
        self.lock().profile_dir = Some(dir.into());
    }

    /// Whether dmeventd is there (without it `lvchange --monitor y` fails).
    pub fn set_dmeventd(&self, running: bool) {
        self.lock().dmeventd = running;
    }

    /// The next command whose description contains `pattern` fails.
    pub fn fail_next(&self, pattern: &str) {
        self.lock().fail.push(pattern.to_owned());
    }

    /// The next command matching `pattern` panics, before or after taking effect.
    pub fn crash_at(&self, pattern: &str, when: CrashWhen) {
        self.lock().crash.push((pattern.to_owned(), when));
    }

    /// Every command run so far, as descriptions.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The VGs that exist.
    pub fn vg_names(&self) -> Vec<String> {
        self.lock().vgs.keys().cloned().collect()
    }

    /// The devices that carry a PV label.
    pub fn pv_devices(&self) -> Vec<PathBuf> {
        self.lock().pvs.keys().cloned().collect()
    }

    /// Runs one command: records it, applies injected faults, and runs `f`.
    fn cmd<T>(&self, desc: String, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let crash = {
            let mut st = self.lock();
            st.calls.push(desc.clone());
            if let Some(i) = st.fail.iter().position(|p| desc.contains(p.as_str())) {
                st.fail.remove(i);
                return Err(failed(&desc, 5).with_source(std::io::Error::other("injected")));
            }
            st.crash
                .iter()
                .position(|(p, _)| desc.contains(p.as_str()))
                .map(|i| st.crash.remove(i).1)
        };
        if crash == Some(CrashWhen::Before) {
            panic!("injected crash before {desc}");
        }
        let r = f(&mut self.lock());
        if crash == Some(CrashWhen::After) && r.is_ok() {
            panic!("injected crash after {desc}");
        }
        r
    }

    /// lvm2's low-water mark for `lv`: the free share its profile's
    /// threshold leaves (lvm2 raises a threshold below 50% to 50%), none
    /// at 100% or without a profile.
    fn low_water_mark(st: &State, lv: &Lv) -> DataBlocks {
        let threshold = st
            .profile_dir
            .as_ref()
            .filter(|_| !lv.profile.is_empty())
            .and_then(|d| std::fs::read_to_string(d.join(format!("{}.profile", lv.profile))).ok())
            .and_then(|text| {
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("thin_pool_autoextend_threshold"))
                    .find_map(|v| v.trim().trim_start_matches('=').trim().parse::<u64>().ok())
            })
            .unwrap_or(100)
            .clamp(50, 100);
        let blocks = lv.data_extents * EXTENT / lv.chunk.bytes().0;
        DataBlocks::new(blocks * (100 - threshold) / 100)
    }

    fn pool_table(st: &State, lv: &Lv, meta: DevRef, data: DevRef) -> PoolTable {
        PoolTable {
            length: Sectors::new(lv.data_extents * EXTENT / 512),
            metadata: meta,
            data,
            block_size: lv.chunk,
            low_water_mark: Self::low_water_mark(st, lv),
            features: PoolFeatures {
                skip_block_zeroing: !lv.zero,
                error_if_no_space: lv.error_when_full,
                ..PoolFeatures::default()
            },
        }
    }

    /// Makes (or reloads) the LV's dm devices.
    fn activate(&self, st: &State, vgn: &str, lvn: &str) -> Result<()> {
        let vg = &st.vgs[vgn];
        let lv = &vg.lvs[lvn];
        let name = dm_name(vgn, lvn);
        let mut sub = Vec::new();
        for (suffix, len) in [
            ("_tmeta", lv.meta_extents * EXTENT / 512),
            ("_tdata", lv.data_extents * EXTENT / 512),
        ] {
            let n = format!("{name}{suffix}");
            let info = match self.dm.info(&n)? {
                Some(i) => i,
                None => self.dm.create(&n)?,
            };
            self.dm.load(
                &n,
                &[TargetLine {
                    start: Sectors::ZERO,
                    length: Sectors::new(len),
                    target_type: "linear".into(),
                    params: "254:0 0".into(),
                }],
            )?;
            self.dm.resume(&n)?;
            sub.push(DevRef::Num(info.devnum));
        }
        let data = sub.pop().expect("two sub-LVs");
        let meta = sub.pop().expect("two sub-LVs");
        let table = Self::pool_table(st, lv, meta, data);
        let existed = self.dm.info(&name)?.is_some();
        if !existed {
            self.dm.create(&name)?;
        }
        self.dm.load(&name, &[table.to_target()])?;
        if existed {
            self.dm.suspend(&name)?;
        }
        self.dm.resume(&name)
    }

    fn remove_dm(&self, vgn: &str, lvn: &str, subs: bool) -> Result<()> {
        let name = dm_name(vgn, lvn);
        let mut names = vec![name.clone()];
        if subs {
            names.extend([format!("{name}_tmeta"), format!("{name}_tdata")]);
        }
        for n in names {
            if self.dm.info(&n)?.is_some() {
                self.dm.remove(&n, false)?;
            }
        }
        Ok(())
    }
}

impl LvmControl for FakeLvm {
    fn device_use(&self, dev: &Path) -> Result<DeviceUse> {
        let st = self.lock();
        if !st.disks.contains_key(dev) {
            return Ok(DeviceUse::Missing);
        }
        if let Some(u) = st.uses.get(dev) {
            return Ok(u.clone());
        }
        Ok(match st.pvs.get(dev) {
            Some(Some(vg)) => DeviceUse::PvOf { vg: vg.clone() },
            _ => DeviceUse::Free,
        })
    }

    fn signatures(&self, dev: &Path) -> Result<Vec<String>> {
        self.cmd(format!("wipefs --no-act {}", dev.display()), |st| {
            st.signatures
                .get(dev)
                .cloned()
                .ok_or_else(|| failed(&format!("wipefs {}", dev.display()), 1))
        })
    }

    fn wipe(&self, dev: &Path) -> Result<()> {
        let desc = format!("wipefs -a {}", dev.display());
        self.cmd(desc.clone(), |st| {
            if st.pvs.get(dev).is_some_and(|v| v.is_some()) {
                return Err(failed(&desc, 1));
            }
            st.pvs.remove(dev);
            st.signatures
                .get_mut(dev)
                .ok_or_else(|| failed(&desc, 1))?
                .clear();
            Ok(())
        })
    }

    fn pvcreate(&self, devs: &[PathBuf]) -> Result<()> {
        let desc = format!("pvcreate {}", show(devs));
        self.cmd(desc.clone(), |st| {
            for d in devs {
                if !st.disks.contains_key(d) || st.pvs.get(d).is_some_and(|v| v.is_some()) {
                    return Err(failed(&desc, 5));
                }
            }
            for d in devs {
                st.pvs.insert(d.clone(), None);
                st.signatures.insert(d.clone(), vec!["LVM2_member".into()]);
            }
            Ok(())
        })
    }

    fn pvremove(&self, devs: &[PathBuf]) -> Result<()> {
        let desc = format!("pvremove {}", show(devs));
        self.cmd(desc.clone(), |st| {
            for d in devs {
                if st.pvs.get(d) != Some(&None) {
                    return Err(failed(&desc, 5));
                }
            }
            for d in devs {
                st.pvs.remove(d);
                if let Some(s) = st.signatures.get_mut(d) {
                    s.retain(|s| s != "LVM2_member");
                }
            }
            Ok(())
        })
    }

    fn pvs(&self) -> Result<Vec<PvInfo>> {
        self.cmd("pvs".into(), |st| {
            Ok(st
                .pvs
                .iter()
                .map(|(d, vg)| PvInfo {
                    device: d.clone(),
                    vg: vg.clone(),
                })
                .collect())
        })
    }

    fn vgcreate(&self, vg: &str, devs: &[PathBuf]) -> Result<()> {
        let desc = format!("vgcreate {vg} {}", show(devs));
        self.cmd(desc.clone(), |st| {
            if st.vgs.contains_key(vg) || devs.iter().any(|d| st.pvs.get(d) != Some(&None)) {
                return Err(failed(&desc, 5));
            }
            let extent_count = devs
                .iter()
                .map(|d| st.disks[d].saturating_sub(1 << 20) / EXTENT)
                .sum();
            for d in devs {
                st.pvs.insert(d.clone(), Some(vg.to_owned()));
            }
            st.vgs.insert(
                vg.to_owned(),
                Vg {
                    devs: devs.to_vec(),
                    extent_count,
                    lvs: BTreeMap::new(),
                },
            );
            Ok(())
        })
    }

    fn vgremove(&self, vg: &str) -> Result<()> {
        let desc = format!("vgremove {vg}");
        let lvs: Vec<String> = self.cmd(desc.clone(), |st| {
            let v = st.vgs.get(vg).ok_or_else(|| failed(&desc, 5))?;
            Ok(v.lvs.keys().cloned().collect())
        })?;
        for l in &lvs {
            self.remove_dm(vg, l, true)?;
        }
        let mut st = self.lock();
        if let Some(v) = st.vgs.remove(vg) {
            for d in v.devs {
                st.pvs.insert(d, None);
            }
        }
        Ok(())
    }

    fn vg(&self, vg: &str) -> Result<Option<VgInfo>> {
        self.cmd("vgs".into(), |st| {
            Ok(st.vgs.get(vg).map(|v| VgInfo {
                name: vg.to_owned(),
                extent_size: Bytes(EXTENT),
                extent_count: v.extent_count,
                free_count: v.free(),
            }))
        })
    }

    fn create_thin_pool(&self, s: &ThinPoolSpec) -> Result<()> {
        let desc = format!("lvcreate {}/{}", s.vg, s.lv);
        self.cmd(desc.clone(), |st| {
            let dmeventd = st.dmeventd;
            let vg = st.vgs.get_mut(&s.vg).ok_or_else(|| failed(&desc, 5))?;
            let meta_extents = s.metadata.0.div_ceil(EXTENT);
            if vg.lvs.contains_key(&s.lv) || s.data_extents + 2 * meta_extents > vg.free() {
                return Err(failed(&desc, 5));
            }
            vg.lvs.insert(
                s.lv.clone(),
                Lv {
                    data_extents: s.data_extents,
                    meta_extents,
                    chunk: s.chunk,
                    zero: s.zero,
                    profile: String::new(),
                    monitored: dmeventd,
                    error_when_full: false,
                    active: true,
                },
            );
            Ok(())
        })?;
        let st = self.lock();
        self.activate(&st, &s.vg, &s.lv)
    }

    fn lvs(&self, vg: &str) -> Result<Vec<LvRow>> {
        self.cmd("lvs".into(), |st| {
            let Some(v) = st.vgs.get(vg) else {
                return Ok(Vec::new());
            };
            Ok(v.lvs
                .iter()
                .map(|(n, l)| LvRow {
                    lv_name: n.clone(),
                    vg_name: vg.to_owned(),
                    lv_attr: format!("twi-{}-t---", if l.active { 'a' } else { '-' }),
                    lv_dm_path: format!("/dev/mapper/{}", dm_name(vg, n)),
                    seg_monitor: match (l.active, l.monitored) {
                        (false, _) => String::new(),
                        (true, true) => "monitored".into(),
                        (true, false) => "not monitored".into(),
                    },
                    lv_profile: l.profile.clone(),
                    lv_when_full: if l.error_when_full { "error" } else { "queue" }.into(),
                })
                .collect())
        })
    }

    fn lvchange(&self, lv: &str, change: &LvChange) -> Result<()> {
        let desc = format!("lvchange {} {lv}", change.args().join(" "));
        let (vgn, lvn) = split(lv);
        let reload = self.cmd(desc.clone(), |st| {
            let dmeventd = st.dmeventd;
            let l = st
                .vgs
                .get_mut(vgn)
                .and_then(|v| v.lvs.get_mut(lvn))
                .ok_or_else(|| failed(&desc, 5))?;
            Ok(match change {
                LvChange::Activate => {
                    let was = l.active;
                    l.active = true;
                    l.monitored = dmeventd;
                    !was
                }
                LvChange::Deactivate => {
                    l.active = false;
                    false
                }
                LvChange::Profile(p) => {
                    l.profile = p.clone();
                    false
                }
                LvChange::Monitor(on) => {
                    if *on && !dmeventd {
                        return Err(failed(&desc, 5));
                    }
                    l.monitored = *on;
                    false
                }
                LvChange::ErrorWhenFull(on) => {
                    if l.error_when_full == *on {
                        // lvm2: "Error when full is already (un)set".
                        return Err(failed(&desc, 5));
                    }
                    l.error_when_full = *on;
                    l.active
                }
                LvChange::Refresh => {
                    if !l.active {
                        return Err(failed(&desc, 5));
                    }
                    true
                }
            })
        })?;
        if *change == LvChange::Deactivate {
            return self.remove_dm(vgn, lvn, false);
        }
        if reload {
            let st = self.lock();
            self.activate(&st, vgn, lvn)?;
        }
        Ok(())
    }

    fn lvextend(&self, lv: &str, extend: LvExtend) -> Result<()> {
        let desc = format!("lvextend {} {lv}", extend.args().join(" "));
        let (vgn, lvn) = split(lv);
        let active = self.cmd(desc.clone(), |st| {
            let v = st.vgs.get_mut(vgn).ok_or_else(|| failed(&desc, 5))?;
            let free = v.free();
            let l = v.lvs.get_mut(lvn).ok_or_else(|| failed(&desc, 5))?;
            let more = match extend {
                LvExtend::DataPercent(p) => (l.data_extents * u64::from(p)).div_ceil(100),
                LvExtend::DataBy(b) => b.0.div_ceil(EXTENT),
                LvExtend::Metadata(b) => b.0.div_ceil(EXTENT),
            };
            if more > free {
                return Err(failed(&desc, 5));
            }
            match extend {
                LvExtend::DataPercent(_) | LvExtend::DataBy(_) => l.data_extents += more,
                LvExtend::Metadata(_) => l.meta_extents += more,
            }
            Ok(l.active)
        })?;
        if active {
            let st = self.lock();
            self.activate(&st, vgn, lvn)?;
        }
        Ok(())
    }

    fn lvremove(&self, lv: &str) -> Result<()> {
        let desc = format!("lvremove {lv}");
        let (vgn, lvn) = split(lv);
        self.cmd(desc.clone(), |st| {
            st.vgs
                .get(vgn)
                .and_then(|v| v.lvs.get(lvn))
                .map(drop)
                .ok_or_else(|| failed(&desc, 5))
        })?;
        self.remove_dm(vgn, lvn, true)?;
        if let Some(v) = self.lock().vgs.get_mut(vgn) {
            v.lvs.remove(lvn);
        }
        Ok(())
    }
}

fn show(devs: &[PathBuf]) -> String {
    devs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}
