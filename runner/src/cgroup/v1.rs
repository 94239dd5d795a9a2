//! cgroup v1: one hierarchy per controller (some co-mounted, such as
//! `cpu,cpuacct`), optionally with a controller-less cgroup2 hierarchy
//! beside them (hybrid, systemd's default on older distributions).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{
    read_parse, read_procs, read_string, remove_dir, wait_empty, write_file, Cgroup, CgroupEvents,
    CgroupLayout, CgroupPath, Controller, DeviceRate, FlatKeyed, Max, Resources, ThrottleKind,
};
use crate::error::{io_error, Error, ErrorKind, Result};

/// A cgroup in every v1 hierarchy (and the unified one on a hybrid host).
#[derive(Debug, Clone)]
pub struct V1Cgroup {
    mounts: BTreeMap<Controller, PathBuf>,
    unified: Option<PathBuf>,
    path: CgroupPath,
}

impl V1Cgroup {
    /// The cgroup `path` below each controller's mount point in `mounts`,
    /// and below `unified` (the cgroup2 mount of a hybrid host) if given.
    pub fn new(
        mounts: BTreeMap<Controller, PathBuf>,
        unified: Option<PathBuf>,
        path: &CgroupPath,
    ) -> V1Cgroup {
        V1Cgroup {
            mounts,
            unified,
            path: path.clone(),
        }
    }

    /// The cgroup's directory in the hierarchy of `controller`.
    pub fn dir(&self, controller: Controller) -> Option<PathBuf> {
        self.mounts
            .get(&controller)
            .map(|m| m.join(self.path.as_path()))
    }

    fn file(&self, controller: Controller, name: &str) -> Result<PathBuf> {
        self.dir(controller).map(|d| d.join(name)).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the {name} cgroup controller is not mounted in cgroup v1: mount it, or boot with cgroup v2 \
                     where the kernel builds it for v2 only (Linux 6.11 and later without its V1 option, \
                     as Debian's 6.12 and RHEL 10), or drop the {name} limits",
                    name = controller.name()
                ),
            )
        })
    }

    /// The hierarchy to read membership from: freezer, else any.
    fn procs_file(&self) -> Option<PathBuf> {
        self.dir(Controller::Freezer)
            .or_else(|| {
                self.mounts
                    .values()
                    .next()
                    .map(|m| m.join(self.path.as_path()))
            })
            .map(|d| d.join("cgroup.procs"))
    }

    fn mount_dirs(&self) -> Vec<(PathBuf, PathBuf)> {
        let mut seen: Vec<(PathBuf, PathBuf)> = vec![];
        for m in self.mounts.values() {
            if !seen.iter().any(|(root, _)| root == m) {
                seen.push((m.clone(), m.join(self.path.as_path())));
            }
        }
        if let Some(u) = &self.unified {
            seen.push((u.clone(), u.join(self.path.as_path())));
        }
        seen
    }
}

fn mkdir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(ErrorKind::Cgroup, "cannot create cgroup", dir, e)),
    }
}

impl Cgroup for V1Cgroup {
    fn layout(&self) -> CgroupLayout {
        if self.unified.is_some() {
            CgroupLayout::Hybrid
        } else {
            CgroupLayout::V1
        }
    }

    fn create(&self) -> Result<()> {
        for (root, _) in self.mount_dirs() {
            let is_cpuset = self.mounts.get(&Controller::Cpuset) == Some(&root);
            let mut dir = root.clone();
            for part in self.path.as_path().components() {
                let parent = dir.clone();
                dir.push(part);
                mkdir(&dir)?;
                if is_cpuset {
                    // A new v1 cpuset starts empty and refuses tasks: inherit the parent's.
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        if read_string(&dir.join(f))?.trim().is_empty() {
                            write_file(&dir.join(f), read_string(&parent.join(f))?.trim())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn restrict_devices(&self, rules: &[super::DeviceAccess]) -> Result<bool> {
        let Some(dir) = self.dir(Controller::Devices) else {
            return Ok(false);
        };
        for r in super::effective_device_rules(rules) {
            let file = if r.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            write_file(&dir.join(file), &r.rule)?;
        }
        Ok(true)
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        use Controller::*;
        if let Some(limit) = r.memory.limit {
            write_file(&self.file(Memory, "memory.limit_in_bytes")?, limit.0)?;
        }
        if let Some(swap) = r.memory.swap {
            let value = match swap {
                Max::Unlimited => "-1".to_owned(),
                Max::Limit(b) => b.0.to_string(),
            };
            write_file(&self.file(Memory, "memory.memsw.limit_in_bytes")?, value).map_err(
                |e| {
                    if e.kind() == ErrorKind::Unsupported {
                        Error::new(
                            ErrorKind::Unsupported,
                            "a swap limit needs swap accounting: boot with swapaccount=1 or drop the swap limit",
                        )
                        .with_source(e)
                    } else {
                        e
                    }
                },
            )?;
        }
        if let Some(soft) = r.memory.reservation {
            write_file(&self.file(Memory, "memory.soft_limit_in_bytes")?, soft.0)?;
        }
        if let Some(shares) = r.cpu.shares {
            write_file(&self.file(Cpu, "cpu.shares")?, shares)?;
        }
        if let Some(q) = r.cpu.quota {
            write_file(&self.file(Cpu, "cpu.cfs_period_us")?, q.period_us)?;
            let quota = match q.quota_us {
                Max::Unlimited => "-1".to_owned(),
                Max::Limit(v) => v.to_string(),
            };
            write_file(&self.file(Cpu, "cpu.cfs_quota_us")?, quota)?;
        }
        if let Some(cpus) = &r.cpu.cpus {
            write_file(&self.file(Cpuset, "cpuset.cpus")?, cpus)?;
        }
        if let Some(mems) = &r.cpu.mems {
            write_file(&self.file(Cpuset, "cpuset.mems")?, mems)?;
        }
        if let Some(pids) = r.pids {
            write_file(&self.file(Pids, "pids.max")?, pids)?;
        }
        if let Some(w) = r.io.weight {
            let plain = self.file(Blkio, "blkio.weight")?;
            let bfq = self.file(Blkio, "blkio.bfq.weight")?;
            let target = if plain.exists() || !bfq.exists() {
                plain
            } else {
                bfq
            };
            write_file(&target, w).map_err(|e| {
                if e.kind() == ErrorKind::Unsupported {
                    Error::new(
                        ErrorKind::Unsupported,
                        "block io weights need the BFQ scheduler (blkio.bfq.weight): \
                         load bfq or use io throttles",
                    )
                    .with_source(e)
                } else {
                    e
                }
            })?;
        }
        for t in &r.io.throttles {
            let name = match t.kind {
                ThrottleKind::ReadBps => "blkio.throttle.read_bps_device",
                ThrottleKind::WriteBps => "blkio.throttle.write_bps_device",
                ThrottleKind::ReadIops => "blkio.throttle.read_iops_device",
                ThrottleKind::WriteIops => "blkio.throttle.write_iops_device",
            };
            let line = DeviceRate {
                device: t.device,
                rate: t.rate,
            };
            write_file(&self.file(Blkio, name)?, line)?;
        }
        Ok(())
    }

    fn add_process(&self, pid: Pid) -> Result<()> {
        for (_, dir) in self.mount_dirs() {
            write_file(&dir.join("cgroup.procs"), pid)?;
        }
        Ok(())
    }

    fn procs(&self) -> Result<Vec<Pid>> {
        match self.procs_file() {
            Some(f) => read_procs(&f),
            None => Ok(vec![]),
        }
    }

    fn events(&self) -> Result<CgroupEvents> {
        let mut ev = CgroupEvents::default();
        if let Some(dir) = self.dir(Controller::Memory) {
            let oom = dir.join("memory.oom_control");
            if oom.exists() {
                let o: FlatKeyed = read_parse(&oom)?;
                ev.oom_kills = o.get("oom_kill");
                ev.oom_kills_counted = o.0.contains_key("oom_kill");
            }
            let failcnt = dir.join("memory.failcnt");
            if failcnt.exists() {
                ev.memory_limit_hits = read_string(&failcnt)?.trim().parse().unwrap_or(0);
            }
        }
        if let Some(dir) = self.dir(Controller::Pids) {
            let f = dir.join("pids.events");
            if f.exists() {
                let p: FlatKeyed = read_parse(&f)?;
                ev.pids_limit_hits = p.get("max");
            }
        }
        Ok(ev)
    }

    fn kill_all(&self) -> Result<()> {
        let Some(procs) = self.procs_file() else {
            return Ok(());
        };
        // On a hybrid host the unified hierarchy can kill atomically (5.14+).
        if let Some(u) = &self.unified {
            let kill_file = u.join(self.path.as_path()).join("cgroup.kill");
            if kill_file.exists() {
                write_file(&kill_file, 1)?;
                return wait_empty(&procs);
            }
        }
        // Nothing left (the usual case: the pid namespace died with its pid
        // 1) and nothing inside to fork: no freeze needed, which costs two
        // freezer state changes per container.
        if read_procs(&procs)?.is_empty() {
            return Ok(());
        }
        // Freeze so nothing forks while we kill, SIGKILL each, thaw to let them die.
        let state = self
            .dir(Controller::Freezer)
            .map(|d| d.join("freezer.state"));
        if let Some(state) = &state {
            write_file(state, "FROZEN")?;
            for _ in 0..500 {
                if read_string(state)?.trim() == "FROZEN" {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        for _ in 0..10 {
            let pids = read_procs(&procs)?;
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            if state.is_some() {
                break;
            }
        }
        if let Some(state) = &state {
            write_file(state, "THAWED")?;
        }
        wait_empty(&procs)
    }

    fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for (_, dir) in self.mount_dirs() {
            if let Err(e) = remove_dir(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.mount_dirs().into_iter().map(|(_, d)| d).collect()
    }
}
