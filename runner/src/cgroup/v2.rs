//! The unified (cgroup2) hierarchy: every controller in one tree.
//! Needs Linux 4.15 for `cpu`, 5.0 for `cpuset` and 5.14 for `cgroup.kill`.

use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use super::{
    read_parse, read_procs, read_string, remove_dir, wait_empty, write_file, Cgroup, CgroupEvents,
    CgroupLayout, CgroupPath, CpuMax, FlatKeyed, IoMax, Max, Resources, ThrottleKind,
};
use crate::error::{io_error, Error, ErrorKind, Result};

/// The controllers thinbox enables for its cgroups, when the parent offers them.
const WANTED: [&str; 5] = ["cpuset", "cpu", "io", "memory", "pids"];

/// A cgroup in the unified hierarchy mounted at `root`.
#[derive(Debug, Clone)]
pub struct V2Cgroup {
    root: PathBuf,
    path: CgroupPath,
}

impl V2Cgroup {
    /// The cgroup `path` below the cgroup2 mount `root`.
    pub fn new(root: &Path, path: &CgroupPath) -> V2Cgroup {
        V2Cgroup {
            root: root.to_owned(),
            path: path.clone(),
        }
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(self.path.as_path())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// OCI/v1 `cpu.shares` (2..=262144) to v2 `cpu.weight` (1..=10000), as runc does.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// OCI/v1 blkio weight (10..=1000) to v2 `io.weight` (1..=10000), as runc does.
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    1 + (u64::from(weight.clamp(10, 1000)) - 10) * 9999 / 990
}

impl Cgroup for V2Cgroup {
    fn layout(&self) -> CgroupLayout {
        CgroupLayout::V2
    }

    fn create(&self) -> Result<()> {
        // Enable the controllers on the way down: each level delegates to the next.
        let mut dir = self.root.clone();
        for part in self.path.as_path().components() {
            let offered = read_string(&dir.join("cgroup.controllers"))?;
            let enabled = read_string(&dir.join("cgroup.subtree_control"))?;
            for c in WANTED {
                let offered = offered.split_whitespace().any(|o| o == c);
                let on = enabled.split_whitespace().any(|o| o == c);
                if offered && !on {
                    write_file(&dir.join("cgroup.subtree_control"), format!("+{c}"))?;
                }
            }
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(ErrorKind::Cgroup, "cannot create cgroup", &dir, e)),
            }
        }
        Ok(())
    }

    fn restrict_devices(&self, rules: &[super::DeviceAccess]) -> Result<bool> {
        // cgroup2 filters devices only through an eBPF program.
        let program = super::bpf::device_program(&super::effective_device_rules(rules));
        let prog = crate::sys::bpf_load_device_program(&program).map_err(|(errno, log)| {
            Error::new(
                ErrorKind::Cgroup,
                format!("the kernel refused the device filter program: {log}"),
            )
            .with_source(errno)
        })?;
        let dir = self.dir();
        let cgroup = std::fs::File::open(&dir)
            .map_err(|e| io_error(ErrorKind::Cgroup, "cannot open the cgroup", &dir, e))?;
        use std::os::fd::AsFd;
        crate::sys::bpf_attach_device_program(cgroup.as_fd(), prog.as_fd()).map_err(|e| {
            Error::new(
                ErrorKind::Cgroup,
                "cannot attach the device filter to the cgroup",
            )
            .with_path(&dir)
            .with_source(e)
        })?;
        Ok(true)
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        if let Some(limit) = r.memory.limit {
            write_file(&self.file("memory.max"), limit.0)?;
        }
        if let Some(swap) = r.memory.swap {
            // OCI counts memory+swap; v2 limits swap alone.
            let value = match (swap, r.memory.limit) {
                (Max::Unlimited, _) => Max::Unlimited,
                (Max::Limit(total), Some(mem)) => Max::Limit(total.0.saturating_sub(mem.0)),
                (Max::Limit(total), None) => Max::Limit(total.0),
            };
            write_file(&self.file("memory.swap.max"), value)?;
        }
        if let Some(low) = r.memory.reservation {
            write_file(&self.file("memory.low"), low.0)?;
        }
        if let Some(shares) = r.cpu.shares {
            write_file(&self.file("cpu.weight"), shares_to_weight(shares))?;
        }
        if let Some(q) = r.cpu.quota {
            let value = CpuMax {
                quota_us: q.quota_us,
                period_us: q.period_us,
            };
            write_file(&self.file("cpu.max"), value)?;
        }
        if let Some(cpus) = &r.cpu.cpus {
            write_file(&self.file("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = &r.cpu.mems {
            write_file(&self.file("cpuset.mems"), mems)?;
        }
        if let Some(pids) = r.pids {
            write_file(&self.file("pids.max"), pids)?;
        }
        if let Some(w) = r.io.weight {
            let path = self.file("io.weight");
            let bfq = self.file("io.bfq.weight");
            let target = if path.exists() || !bfq.exists() {
                path
            } else {
                bfq
            };
            write_file(&target, format!("default {}", blkio_weight_to_io_weight(w)))?;
        }
        let mut lines: Vec<IoMax> = vec![];
        for t in &r.io.throttles {
            let pos = match lines.iter().position(|l| l.device == t.device) {
                Some(p) => p,
                None => {
                    lines.push(IoMax::unlimited(t.device));
                    lines.len() - 1
                }
            };
            let line = &mut lines[pos];
            let slot = match t.kind {
                ThrottleKind::ReadBps => &mut line.rbps,
                ThrottleKind::WriteBps => &mut line.wbps,
                ThrottleKind::ReadIops => &mut line.riops,
                ThrottleKind::WriteIops => &mut line.wiops,
            };
            *slot = Max::Limit(t.rate);
        }
        for line in lines {
            write_file(&self.file("io.max"), line)?;
        }
        Ok(())
    }

    fn add_process(&self, pid: Pid) -> Result<()> {
        write_file(&self.file("cgroup.procs"), pid)
    }

    fn procs(&self) -> Result<Vec<Pid>> {
        read_procs(&self.file("cgroup.procs"))
    }

    fn events(&self) -> Result<CgroupEvents> {
        let mut ev = CgroupEvents::default();
        let mem = self.file("memory.events");
        if mem.exists() {
            let m: FlatKeyed = read_parse(&mem)?;
            ev.oom_kills = m.get("oom_kill");
            ev.oom_kills_counted = m.0.contains_key("oom_kill");
            ev.memory_limit_hits = m.get("max");
        }
        let pids = self.file("pids.events");
        if pids.exists() {
            let p: FlatKeyed = read_parse(&pids)?;
            ev.pids_limit_hits = p.get("max");
        }
        Ok(ev)
    }

    fn kill_all(&self) -> Result<()> {
        let kill = self.file("cgroup.kill");
        if kill.exists() {
            write_file(&kill, 1)?;
        } else if !self.procs()?.is_empty() {
            // Before 5.14: freeze, kill each process, thaw so SIGKILL is
            // delivered (an empty cgroup has nothing inside to fork).
            write_file(&self.file("cgroup.freeze"), 1)?;
            for pid in self.procs()? {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            write_file(&self.file("cgroup.freeze"), 0)?;
        }
        wait_empty(&self.file("cgroup.procs"))
    }

    fn remove(&self) -> Result<()> {
        remove_dir(&self.dir())
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir()]
    }

    fn clone_into_dir(&self) -> Option<PathBuf> {
        Some(self.dir())
    }
}
