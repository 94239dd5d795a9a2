//! `thinbox doctor`: cross-checks a root's records against the kernel and
//! reports each drift with the command that fixes it; with `fix`, repairs
//! what is provably thinbox's.
//!
//! What it compares: each recorded pool's health (damaged metadata, mode,
//! free-space floor) and whether it is active (after a reboot it is not:
//! the fix activates it, as the next use would); the dm devices named for
//! a loopback pool's thin devices against its thin records; loop devices
//! backed by files under the root against the files thinbox keeps attached
//! (pool data and metadata, `btrfs.img`); mounts of container roots
//! against running containers; and the root's cgroups (`thinbox/ROOT_ID/`
//! in every hierarchy) against running containers' records.
//!
//! Reading takes no lock and changes nothing. A fix acts only on what
//! thinbox made and nothing holds: a dm device or loop device nobody has
//! open, a mount of a container that no longer runs, an empty cgroup.
//! Everything else is reported for the operator.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::containers::{Containers, State};
use crate::error::{Error, ErrorKind, Result};
use crate::options::EngineOptions;
use crate::pools::{PoolKind, PoolRecord, Pools};

/// What kind of drift a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A pool's metadata is damaged or the kernel wants it checked.
    PoolDamaged,
    /// A pool is not in rw mode (out of data space, read-only, failed).
    PoolNotWritable,
    /// Less than a pool's free-space floor is free.
    PoolBelowFloor,
    /// A recorded pool is not active (after a reboot, say).
    PoolInactive,
    /// A pool's record store (`thinbox.db`) is gone.
    PoolStoreMissing,
    /// A direct-lvm pool's thin-pool LV is not in its volume group (renamed
    /// or removed by hand).
    PoolLvMissing,
    /// A thin id in a pool's metadata that no record explains (made by
    /// hand, or a bug's leftover): not provably thinbox's, so reported only.
    OrphanThinId,
    /// A recorded thin device whose id the pool's metadata lacks.
    RecordWithoutThinDevice,
    /// A dm device named for a pool's thin device that no record explains.
    DmDeviceWithoutRecord,
    /// A loop device backed by a file under the root that thinbox does not
    /// keep attached.
    LeakedLoopDevice,
    /// A container's root still mounted though the container is not running.
    StaleMount,
    /// A cgroup of the root that no running container has.
    LeftoverCgroup,
    /// A snapshot thinbox keeps for containerd that containerd has no
    /// record of.
    UnknownToContainerd,
}

/// One drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Its kind.
    pub kind: FindingKind,
    /// What it is about: a pool, device, mount point or cgroup.
    pub subject: String,
    /// What was found.
    pub detail: String,
    /// The command that fixes it.
    pub fix: String,
    /// Whether `doctor --fix` does that itself (it is thinbox's and unused).
    pub fixable: bool,
}

/// What doctor found, and with `fix`, what it fixed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Every drift found before fixing.
    pub findings: Vec<Finding>,
    /// The findings fixed, in order.
    pub fixed: Vec<Finding>,
    /// Fixes that failed: the finding's subject and why.
    pub failed: Vec<(String, String)>,
    /// What was not compared, and why (containerd's view when containerd
    /// or `thinbox serve` does not answer).
    pub notes: Vec<String>,
}

/// Checks the root `opts` names, and with `containerd` the snapshots kept
/// for containerd against its view; with `fix`, fixes what is fixable.
/// `plan` sees the fixable findings before any is fixed.
pub fn run(
    opts: &EngineOptions,
    fix: bool,
    containerd: Option<&dyn ContainerdView>,
    plan: &mut dyn FnMut(&[Finding]),
) -> Result<Report> {
    // A root holds pools (`thinbox pool create`) before any snapshot picks
    // its backend: those are checked too.
    let root = match opts.used_root()? {
        Some(root) => root,
        None => {
            let (root, _) = opts.state_root()?;
            if !root.join("pools").is_dir() {
                return Ok(Report::default());
            }
            std::fs::canonicalize(&root).map_err(|e| Error::io("cannot open", &root, e))?
        }
    };
    let mut findings = Vec::new();
    let mut kept_loops: BTreeSet<PathBuf> = [root.join("btrfs.img")].into();
    if root.join("pools").is_dir() {
        let pools = Pools::for_engine(&root, opts)?;
        check_pools(&pools, &mut findings, &mut kept_loops)?;
    }
    findings.extend(leaked_loops(&loop_devices(), &root, &kept_loops));
    let running = running_containers(&root)?;
    findings.extend(stale_mounts(&mount_points()?, &root, &running.names));
    findings.extend(leftover_cgroups(&root, &running.cgroups)?);
    let mut notes = Vec::new();
    if let Some(view) = containerd {
        let mut stored = Vec::new();
        if let Some(reader) = opts.read_snapshots()? {
            reader.walk(&[], &mut |i| {
                stored.push(i.name.as_str().to_owned());
                Ok(())
            })?;
        }
        if stored
            .iter()
            .any(|s| containerd::containerd_name(s).is_some())
        {
            match containerd::unknown_to_containerd(&stored, view) {
                Ok(found) => findings.extend(found),
                Err(e) => notes.push(format!(
                    "containerd's view was not compared ({}): {e}",
                    view.describe()
                )),
            }
        }
    }

    let mut report = Report {
        findings,
        notes,
        ..Report::default()
    };
    if !fix {
        return Ok(report);
    }
    let mut todo: Vec<Finding> = report
        .findings
        .iter()
        .filter(|f| f.fixable)
        .cloned()
        .collect();
    // Holders before what they hold: a mount before its device.
    todo.sort_by_key(|f| match f.kind {
        FindingKind::StaleMount => 0,
        FindingKind::DmDeviceWithoutRecord => 1,
        FindingKind::LeakedLoopDevice => 2,
        _ => 3,
    });
    plan(&todo);
    for f in todo {
        match apply(opts, &root, &f) {
            Ok(()) => report.fixed.push(f),
            Err(e) => report.failed.push((f.subject.clone(), e.to_string())),
        }
    }
    Ok(report)
}

fn check_pools(
    pools: &Pools,
    findings: &mut Vec<Finding>,
    kept_loops: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    let names = pools.names()?;
    // Every LV a record names, so a renamed one is told from another pool's.
    let mut recorded_lvs = BTreeSet::new();
    for name in &names {
        let rec = pools.record(name)?;
        if let (Some(vg), Some(lv)) = (rec.vg, rec.lv) {
            recorded_lvs.insert((vg, lv));
        }
    }
    for name in names {
        let rec = pools.record(&name)?;
        if let Some(f) = lv_missing(pools, &name, &rec, &recorded_lvs)? {
            findings.push(f);
            continue;
        }
        if let Some(dir) = &rec.dir {
            kept_loops.insert(dir.join("data"));
            kept_loops.insert(dir.join("metadata"));
        }
        let st = pools.status(&name)?;
        let finding = |kind, detail: String, fix: String, fixable| Finding {
            kind,
            subject: name.clone(),
            detail,
            fix,
            fixable,
        };
        if pools.damaged(&name).is_some() || st.needs_check {
            findings.push(finding(
                FindingKind::PoolDamaged,
                format!("pool {name}'s metadata needs repair ({})", st.mode),
                format!("thinbox pool repair {name}"),
                false,
            ));
            continue;
        }
        if !st.active {
            findings.push(finding(
                FindingKind::PoolInactive,
                format!("pool {name} is recorded but not active (a reboot?)"),
                format!("thinbox pool check {name}"),
                rec.kind != PoolKind::Adopted,
            ));
            continue;
        }
        if st.mode != "rw" {
            findings.push(finding(
                FindingKind::PoolNotWritable,
                format!("pool {name} is {}", st.mode),
                format!("thinbox pool extend {name} --data +10G, then thinbox pool check {name}"),
                false,
            ));
        }
        if st.below_floor {
            findings.push(finding(
                FindingKind::PoolBelowFloor,
                format!(
                    "pool {name} has less than its {}% floor free: new thin devices are refused",
                    st.free_space_floor
                ),
                format!("thinbox pool extend {name} --data +10G"),
                false,
            ));
        }
        // The pools whose every thin device is thinbox's: its own loopback
        // and direct-lvm pools, not lent (an adopted pool's other thin
        // devices are someone else's).
        let store = match (rec.kind, &rec.lent_to) {
            (PoolKind::Loopback, None) => rec.dir.as_ref().map(|d| d.join("thinbox.db")),
            (PoolKind::Lvm, None) => rec.store.clone(),
            _ => None,
        };
        if let Some(db) = store {
            if !db.exists() {
                // Never compared (opening would make an empty store, and
                // every thin id would look like an orphan).
                findings.push(finding(
                    FindingKind::PoolStoreMissing,
                    format!(
                        "pool {name}'s record store {} is missing: which thin device is which is lost",
                        db.display()
                    ),
                    format!(
                        "restore {} from a backup; the thin devices are untouched (`thin_ls` lists them)",
                        db.display()
                    ),
                    false,
                ));
                continue;
            }
            let thins = thinpool::store::Store::open(&db)?.thins()?;
            let ids = thinpool::pool::live_thin_usage(pools.deps(), &st.dm_name)?;
            findings.extend(thin_id_drift(
                &name,
                &st.dm_name,
                &ids.iter().map(|u| u.id.get()).collect(),
                &thins.iter().map(|t| (t.id.get(), t.name.clone())).collect(),
            ));
            let recorded: BTreeSet<String> = thins
                .iter()
                .map(|t| format!("{}-{}", st.dm_name, t.name))
                .collect();
            let dm = &pools.deps().dm;
            for (dev, _) in dm.list()? {
                if !dev.starts_with(&format!("{}-", st.dm_name)) || recorded.contains(&dev) {
                    continue;
                }
                let open = dm.info(&dev)?.map_or(0, |i| i.open_count);
                findings.push(Finding {
                    kind: FindingKind::DmDeviceWithoutRecord,
                    subject: dev.clone(),
                    detail: format!(
                        "dm device {dev} is named for a thin device of pool {name}, which has no record of it{}",
                        if open > 0 { " (it is open)" } else { "" }
                    ),
                    fix: format!("dmsetup remove {dev}"),
                    fixable: open == 0,
                });
            }
        }
    }
    Ok(())
}

/// A direct-lvm pool whose LV its volume group lacks: the thin-pool LVs
/// there that no record names are what it may have been renamed to. Never
/// fixed by doctor (an LV cannot be proved thinbox's: lvm2 keeps no mark).
fn lv_missing(
    pools: &Pools,
    name: &str,
    rec: &PoolRecord,
    recorded: &BTreeSet<(String, String)>,
) -> Result<Option<Finding>> {
    let (PoolKind::Lvm, Some(vg), Some(lv)) = (rec.kind, &rec.vg, &rec.lv) else {
        return Ok(None);
    };
    let lvs = match pools.deps().lvm.lvs(vg) {
        Ok(lvs) => lvs,
        Err(e) => {
            return Ok(Some(Finding {
                kind: FindingKind::PoolLvMissing,
                subject: name.to_owned(),
                detail: format!("pool {name}'s volume group {vg} cannot be read: {e}"),
                fix: format!("vgchange -ay {vg} (or vgcfgrestore {vg})"),
                fixable: false,
            }))
        }
    };
    if lvs.iter().any(|r| &r.lv_name == lv) {
        return Ok(None);
    }
    let candidates: Vec<&str> = lvs
        .iter()
        .filter(|r| r.is_thin_pool() && !recorded.contains(&(vg.clone(), r.lv_name.clone())))
        .map(|r| r.lv_name.as_str())
        .collect();
    let (detail, fix) = match candidates.as_slice() {
        [renamed] => (
            format!(
                "pool {name}'s thin-pool LV {vg}/{lv} is gone; {vg}/{renamed} is a thin pool no record names (renamed by hand?)"
            ),
            format!("lvrename {vg} {renamed} {lv}"),
        ),
        [] => (
            format!("pool {name}'s thin-pool LV {vg}/{lv} is gone and {vg} has no unrecorded thin pool"),
            format!("vgcfgrestore {vg} from a backup holding {lv}, or thinbox pool destroy {name}"),
        ),
        many => (
            format!(
                "pool {name}'s thin-pool LV {vg}/{lv} is gone; {vg} has unrecorded thin pools {}",
                many.join(", ")
            ),
            format!("lvrename {vg} OLD {lv}, OLD the one that was {lv}"),
        ),
    };
    Ok(Some(Finding {
        kind: FindingKind::PoolLvMissing,
        subject: name.to_owned(),
        detail,
        fix,
        fixable: false,
    }))
}

/// Thin ids in a (thinbox-made, not lent) pool's metadata that no record
/// explains, and records whose id the metadata lacks.
pub fn thin_id_drift(
    pool: &str,
    dm_name: &str,
    in_metadata: &BTreeSet<u32>,
    recorded: &std::collections::BTreeMap<u32, String>,
) -> Vec<Finding> {
    let orphans = in_metadata
        .iter()
        .filter(|id| !recorded.contains_key(id))
        .map(|id| Finding {
            kind: FindingKind::OrphanThinId,
            subject: format!("{pool}:{id}"),
            detail: format!("thin id {id} is in pool {pool}'s metadata but no record explains it"),
            fix: format!("if it is nobody's data: dmsetup message {dm_name} 0 \"delete {id}\""),
            fixable: false,
        });
    let lost = recorded
        .iter()
        .filter(|(id, _)| !in_metadata.contains(id))
        .map(|(id, name)| Finding {
            kind: FindingKind::RecordWithoutThinDevice,
            subject: format!("{pool}:{name}"),
            detail: format!(
                "thin device {name} (id {id}) is recorded but pool {pool}'s metadata has no such id"
            ),
            fix: format!("thinbox pool check {pool} (marks it missing), then remove what used it"),
            fixable: false,
        });
    orphans.chain(lost).collect()
}

/// A loop device and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub device: String,
    /// The backing file (`(deleted)` stripped), and whether it was deleted.
    pub file: PathBuf,
    /// The file is deleted.
    pub deleted: bool,
    /// Something (a dm device, a mount) holds the device.
    pub held: bool,
}

fn loop_devices() -> Vec<LoopDevice> {
    let mut v = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return v;
    };
    // Read once: a loop device mounted directly is held too.
    let mounted = mount_sources();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end();
        let (file, deleted) = match backing.strip_suffix(" (deleted)") {
            Some(f) => (f, true),
            None => (backing, false),
        };
        let held = std::fs::read_dir(e.path().join("holders"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
            || mounted.contains(&format!("/dev/{name}"));
        v.push(LoopDevice {
            device: format!("/dev/{name}"),
            file: PathBuf::from(file),
            deleted,
            held,
        });
    }
    v
}

fn mount_sources() -> BTreeSet<String> {
    kernfmt::MountInfo::read_self()
        .map(|t| t.into_iter().map(|m| m.source).collect())
        .unwrap_or_default()
}

/// Loop devices on files under `root` that are not in `kept`.
pub fn leaked_loops(loops: &[LoopDevice], root: &Path, kept: &BTreeSet<PathBuf>) -> Vec<Finding> {
    loops
        .iter()
        .filter(|l| l.file.starts_with(root) && (l.deleted || !kept.contains(&l.file)))
        .map(|l| Finding {
            kind: FindingKind::LeakedLoopDevice,
            subject: l.device.clone(),
            detail: format!(
                "{} is attached to {}{}, which thinbox does not keep attached{}",
                l.device,
                l.file.display(),
                if l.deleted { " (deleted)" } else { "" },
                if l.held { "; something holds it" } else { "" }
            ),
            fix: format!("losetup -d {}", l.device),
            fixable: !l.held,
        })
        .collect()
}

fn mount_points() -> Result<Vec<PathBuf>> {
    Ok(kernfmt::MountInfo::read_self()
        .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?
        .iter()
        .map(|m| m.mount_point_path())
        .collect())
}

/// Container roots (`ROOT/containers/NAME/rootfs`) mounted though no
/// running container has that name.
pub fn stale_mounts(mounts: &[PathBuf], root: &Path, running: &BTreeSet<String>) -> Vec<Finding> {
    let containers = root.join("containers");
    let mut seen = BTreeSet::new();
    mounts
        .iter()
        .filter_map(|m| {
            let rest = m.strip_prefix(&containers).ok()?;
            let mut parts = rest.components();
            let name = parts.next()?.as_os_str().to_string_lossy().into_owned();
            (parts.next()?.as_os_str() == "rootfs" && parts.next().is_none()).then_some(name)
        })
        .filter(|name| !running.contains(name) && seen.insert(name.clone()))
        .map(|name| {
            let at = containers.join(&name).join("rootfs");
            Finding {
                kind: FindingKind::StaleMount,
                subject: at.display().to_string(),
                detail: format!(
                    "container {name}'s root is mounted at {} but the container is not running",
                    at.display()
                ),
                fix: format!("umount {}", at.display()),
                fixable: true,
            }
        })
        .collect()
}

struct Running {
    names: BTreeSet<String>,
    cgroups: BTreeSet<String>,
}

fn running_containers(root: &Path) -> Result<Running> {
    let mut r = Running {
        names: BTreeSet::new(),
        cgroups: BTreeSet::new(),
    };
    if !root.join("containers.db").exists() {
        return Ok(r);
    }
    for c in Containers::open(root)?.list()? {
        if matches!(c.state, State::Running | State::Created | State::Preparing) {
            r.names.insert(c.name.clone());
            if let Some(cg) = c.cgroup {
                r.cgroups.insert(cg);
            }
        }
    }
    Ok(r)
}

fn leftover_cgroups(root: &Path, running: &BTreeSet<String>) -> Result<Vec<Finding>> {
    let parent = crate::containers::root_cgroup(root)?;
    let Ok(h) = runner::cgroup::Hierarchies::detect() else {
        return Ok(Vec::new());
    };
    let bases: Vec<&PathBuf> = h.v1.values().chain(h.v2.iter()).collect();
    let mut names = BTreeSet::new();
    for base in &bases {
        if let Ok(entries) = std::fs::read_dir(base.join(parent.as_path())) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    names.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    Ok(names
        .into_iter()
        .map(|n| parent.as_path().join(n).to_string_lossy().into_owned())
        .filter(|path| !running.contains(path))
        .map(|path| {
            // A process in it (of a container thinbox lost track of) is
            // left to the operator.
            let busy = bases.iter().any(|b| {
                std::fs::read_to_string(b.join(&path).join("cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty())
            });
            Finding {
                kind: FindingKind::LeftoverCgroup,
                subject: path.clone(),
                detail: format!(
                    "cgroup {path} belongs to no running container{}",
                    if busy { " (it has processes)" } else { "" }
                ),
                fix: format!("rmdir the {path} directory of each cgroup hierarchy"),
                fixable: !busy,
            }
        })
        .collect())
}

fn apply(opts: &EngineOptions, root: &Path, f: &Finding) -> Result<()> {
    let failed =
        |what: &str, e: String| Error::new(ErrorKind::Failed, format!("{what} {}: {e}", f.subject));
    match f.kind {
        FindingKind::PoolInactive => {
            Pools::for_engine(root, opts)?.open_pool(&f.subject)?;
            Ok(())
        }
        FindingKind::DmDeviceWithoutRecord => {
            let pools = Pools::for_engine(root, opts)?;
            pools.deps().dm.remove(&f.subject, false)?;
            Ok(())
        }
        FindingKind::LeakedLoopDevice => {
            let out = std::process::Command::new("losetup")
                .args(["-d", &f.subject])
                .output()
                .map_err(|e| failed("cannot run losetup -d for", e.to_string()))?;
            if !out.status.success() {
                return Err(failed(
                    "losetup -d failed for",
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ));
            }
            Ok(())
        }
        // Detached: what a killed container mounted below its root (proc,
        // dev) goes with it.
        FindingKind::StaleMount => {
            nix::mount::umount2(Path::new(&f.subject), nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| failed("cannot unmount", e.to_string()))
        }
        FindingKind::LeftoverCgroup => crate::containers::remove_cgroup(&f.subject),
        _ => Ok(()),
    }
}

mod containerd;
pub use containerd::{ContainerdView, Ctr};

#[cfg(test)]
mod tests;
