//! cgroups v1, v2 and hybrid behind one trait, [`Cgroup`].
//!
//! [`Hierarchies::detect`] reads `/proc/self/mountinfo` and finds where each
//! v1 controller and the cgroup2 hierarchy are mounted; [`Hierarchies::open`]
//! returns the manager for that layout. Every manager works on the paths it
//! was given, so unit tests point a manager at a fixture directory and read
//! back what it wrote, and the same code drives the real cgroupfs.
//!
//! Kernel features: cgroup2 `cgroup.kill` needs Linux 5.14 (older kernels
//! fall back to freezing and killing each process); `memory.events`
//! `oom_kill` needs 4.13 on v2, `memory.oom_control` `oom_kill` 4.13 on v1
//! (older v1 kernels fall back to `memory.failcnt`).
//!
//! Where a limit cannot act:
//! - v1 `blkio.throttle.*` limits only I/O that bypasses the page cache
//!   (direct I/O, or writeback that the kernel attributes to the cgroup on
//!   v2 only); buffered writes on v1 escape the throttle.
//! - I/O weights (`blkio.bfq.weight`, `io.weight`) act only on a
//!   request-based disk using the BFQ scheduler or iocost; a dm thin device
//!   is bio-based, so set weights on the pool's data disk or use throttles.
//! - `memory.memsw.limit_in_bytes` exists only when swap accounting is on
//!   (`swapaccount=1`).

mod bpf;
mod files;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use files::{
    unescape_octal, Bytes, CpuList, CpuMax, DevNum, DeviceRate, DeviceRule, FlatKeyed, IoMax, Max,
    MountInfo,
};
pub use v1::V1Cgroup;
pub use v2::V2Cgroup;

use crate::error::{io_error, Error, ErrorKind, Result};

pub use kernfmt::CgroupLayout;

/// The v1 controllers thinbox uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Controller {
    /// `memory`
    Memory,
    /// `cpu`
    Cpu,
    /// `cpuacct`
    Cpuacct,
    /// `cpuset`
    Cpuset,
    /// `pids`
    Pids,
    /// `blkio`
    Blkio,
    /// `freezer`
    Freezer,
    /// `devices`
    Devices,
}

impl Controller {
    /// Every controller, in the order hierarchies are joined.
    pub const ALL: [Controller; 8] = [
        Controller::Cpuset,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Memory,
        Controller::Pids,
        Controller::Blkio,
        Controller::Freezer,
        Controller::Devices,
    ];

    /// The name the kernel uses in mount options and file prefixes.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Pids => "pids",
            Controller::Blkio => "blkio",
            Controller::Freezer => "freezer",
            Controller::Devices => "devices",
        }
    }

    fn from_name(name: &str) -> Option<Controller> {
        Controller::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Where the hierarchies of this machine are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchies {
    /// Mount point of each v1 controller (several may share one mount).
    pub v1: BTreeMap<Controller, PathBuf>,
    /// Mount point of the cgroup2 hierarchy, if any.
    pub v2: Option<PathBuf>,
    /// Whether the cgroup2 hierarchy holds the controllers (pure v2).
    pub v2_has_controllers: bool,
}

impl Hierarchies {
    /// Reads the hierarchies from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Hierarchies> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path)
            .map_err(|e| io_error(ErrorKind::Io, "cannot read mountinfo", path, e))?;
        Hierarchies::from_mountinfo(&text)
    }

    /// Finds the hierarchies in mountinfo text.
    pub fn from_mountinfo(text: &str) -> Result<Hierarchies> {
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for m in MountInfo::parse_all(text)? {
            match m.fstype.as_str() {
                // Only a hierarchy mounted at its root is a place to make cgroups.
                "cgroup" if m.root == "/" => {
                    for c in m.super_option_list().filter_map(Controller::from_name) {
                        v1.entry(c).or_insert_with(|| PathBuf::from(&m.mount_point));
                    }
                }
                // Prefer /sys/fs/cgroup over any other mount of the same hierarchy.
                "cgroup2"
                    if m.root == "/" && (v2.is_none() || m.mount_point == "/sys/fs/cgroup") =>
                {
                    v2 = Some(PathBuf::from(&m.mount_point));
                }
                _ => {}
            }
        }
        if v1.is_empty() && v2.is_none() {
            return Err(Error::new(
                ErrorKind::NoCgroups,
                "no cgroup hierarchy is mounted: mount cgroup2 on /sys/fs/cgroup",
            ));
        }
        let v2_has_controllers = v1.is_empty() && v2.is_some();
        Ok(Hierarchies {
            v1,
            v2,
            v2_has_controllers,
        })
    }

    /// The layout these hierarchies form.
    pub fn layout(&self) -> CgroupLayout {
        match (self.v1.is_empty(), &self.v2) {
            (true, _) => CgroupLayout::V2,
            (false, Some(_)) => CgroupLayout::Hybrid,
            (false, None) => CgroupLayout::V1,
        }
    }

    /// Removes the cgroups below `parent` (e.g. `thinbox`) that hold no
    /// process and were made more than `min_age` ago: what a runner that
    /// died left behind (its containers die with it: their first process
    /// has the parent-death signal SIGKILL). The age keeps a container that
    /// is being started right now, whose cgroup is still empty, safe.
    /// Returns the cgroup paths removed.
    pub fn remove_stale(
        &self,
        parent: &CgroupPath,
        min_age: std::time::Duration,
    ) -> Result<Vec<CgroupPath>> {
        let mut names = std::collections::BTreeSet::new();
        let roots: Vec<&PathBuf> = self.v1.values().chain(self.v2.iter()).collect();
        for root in &roots {
            let dir = root.join(parent.as_path());
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    names.insert(e.file_name());
                }
            }
        }
        let mut removed = vec![];
        for name in names {
            let path = CgroupPath::new(parent.as_path().join(&name))?;
            let cg = self.open(&path);
            let dirs: Vec<PathBuf> = cg.dirs().into_iter().filter(|d| d.exists()).collect();
            let young = dirs.iter().any(|d| {
                std::fs::metadata(d)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < min_age)
            });
            let busy = dirs
                .iter()
                .any(|d| read_procs(&d.join("cgroup.procs")).map_or(true, |p| !p.is_empty()));
            if young || busy {
                continue;
            }
            for d in dirs {
                remove_dir(&d)?;
            }
            removed.push(path);
        }
        Ok(removed)
    }

    /// The manager for cgroup `path` (relative to each hierarchy's root) on this layout.
    pub fn open(&self, path: &CgroupPath) -> Box<dyn Cgroup> {
        match (self.layout(), &self.v2) {
            (CgroupLayout::V2, Some(root)) => Box::new(V2Cgroup::new(root, path)),
            (CgroupLayout::Hybrid, Some(unified)) => {
                Box::new(V1Cgroup::new(self.v1.clone(), Some(unified.clone()), path))
            }
            _ => Box::new(V1Cgroup::new(self.v1.clone(), None, path)),
        }
    }
}

/// A cgroup's path below each hierarchy's root: relative, no `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CgroupPath(PathBuf);

impl CgroupPath {
    /// Checks that `path` is relative and stays below the hierarchy root.
    pub fn new(path: impl AsRef<Path>) -> Result<CgroupPath> {
        let path = path.as_ref();
        let ok = !path.as_os_str().is_empty()
            && path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !ok {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "cgroup path {} must be relative without \"..\": use e.g. thinbox/NAME",
                    path.display()
                ),
            ));
        }
        Ok(CgroupPath(path.to_owned()))
    }

    /// The path itself.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// Memory limits, in the OCI meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLimits {
    /// Hard limit on memory use.
    pub limit: Option<Bytes>,
    /// Limit on memory plus swap (OCI `swap`); `Max::Unlimited` lifts it.
    pub swap: Option<Max<Bytes>>,
    /// Soft limit / protection (v1 `soft_limit_in_bytes`, v2 `memory.low`).
    pub reservation: Option<Bytes>,
}

/// CPU bandwidth: `quota_us` of run time every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuQuota {
    /// Run time per period; `Max::Unlimited` lifts it.
    pub quota_us: Max<u64>,
    /// The period (1000 ..= 1_000_000 µs).
    pub period_us: u64,
}

/// CPU limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuLimits {
    /// Relative weight in v1 `cpu.shares` units (2 ..= 262144); converted on v2.
    pub shares: Option<u64>,
    /// Bandwidth limit.
    pub quota: Option<CpuQuota>,
    /// CPUs the container may run on.
    pub cpus: Option<CpuList>,
    /// Memory nodes the container may allocate from.
    pub mems: Option<CpuList>,
}

/// What an I/O throttle limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleKind {
    /// Bytes read per second.
    ReadBps,
    /// Bytes written per second.
    WriteBps,
    /// Read operations per second.
    ReadIops,
    /// Write operations per second.
    WriteIops,
}

/// One per-device I/O throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoThrottle {
    /// The block device (for thinbox, the thin device backing the root).
    pub device: DevNum,
    /// What is limited.
    pub kind: ThrottleKind,
    /// Bytes or operations per second.
    pub rate: u64,
}

/// Block I/O limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimits {
    /// Proportional weight in OCI/v1 units (10 ..= 1000); converted on v2.
    pub weight: Option<u16>,
    /// Per-device throttles.
    pub throttles: Vec<IoThrottle>,
}

/// Every limit a container's cgroup can carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory.
    pub memory: MemoryLimits,
    /// CPU and cpuset.
    pub cpu: CpuLimits,
    /// Maximum number of tasks.
    pub pids: Option<Max<u64>>,
    /// Block I/O.
    pub io: IoLimits,
    /// Device access rules from the spec (`linux.resources.devices`),
    /// applied before thinbox's default allow list.
    pub devices: Vec<DeviceAccess>,
}

/// One device access rule: allow or deny what `rule` matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAccess {
    /// Allow (true) or deny (false).
    pub allow: bool,
    /// What it matches.
    pub rule: DeviceRule,
}

fn positive(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{what} {value} is negative: give a positive number or leave it out"),
        )
    })
}

fn max_or(value: i64, what: &str) -> Result<Max<u64>> {
    if value == -1 {
        Ok(Max::Unlimited)
    } else {
        positive(value, what).map(Max::Limit)
    }
}

impl Resources {
    /// Converts the OCI `linux.resources`, rejecting values no kernel takes.
    pub fn from_oci(r: &oci_spec::runtime::LinuxResources) -> Result<Resources> {
        let mut out = Resources::default();
        if let Some(m) = r.memory() {
            out.memory.limit = m
                .limit()
                .map(|v| positive(v, "memory limit").map(Bytes))
                .transpose()?;
            out.memory.swap = m
                .swap()
                .map(|v| {
                    max_or(v, "memory+swap limit").map(|m| match m {
                        Max::Unlimited => Max::Unlimited,
                        Max::Limit(b) => Max::Limit(Bytes(b)),
                    })
                })
                .transpose()?;
            out.memory.reservation = m
                .reservation()
                .map(|v| positive(v, "memory reservation").map(Bytes))
                .transpose()?;
        }
        if let Some(c) = r.cpu() {
            out.cpu.shares = c.shares();
            if c.quota().is_some() || c.period().is_some() {
                out.cpu.quota = Some(CpuQuota {
                    quota_us: c
                        .quota()
                        .map(|q| max_or(q, "cpu quota"))
                        .transpose()?
                        .unwrap_or(Max::Unlimited),
                    period_us: c.period().unwrap_or(100_000),
                });
            }
            out.cpu.cpus = c.cpus().as_deref().map(str::parse).transpose()?;
            out.cpu.mems = c.mems().as_deref().map(str::parse).transpose()?;
        }
        if let Some(p) = r.pids() {
            out.pids = Some(if p.limit() <= 0 {
                Max::Unlimited
            } else {
                Max::Limit(p.limit() as u64)
            });
        }
        if let Some(b) = r.block_io() {
            out.io.weight = b.weight();
            let lists = [
                (b.throttle_read_bps_device(), ThrottleKind::ReadBps),
                (b.throttle_write_bps_device(), ThrottleKind::WriteBps),
                (b.throttle_read_iops_device(), ThrottleKind::ReadIops),
                (b.throttle_write_iops_device(), ThrottleKind::WriteIops),
            ];
            for (list, kind) in lists {
                for t in list.iter().flatten() {
                    let device = DevNum::new(
                        u32::try_from(t.major()).map_err(|_| bad_device(t.major(), t.minor()))?,
                        u32::try_from(t.minor()).map_err(|_| bad_device(t.major(), t.minor()))?,
                    );
                    out.io.throttles.push(IoThrottle {
                        device,
                        kind,
                        rate: t.rate(),
                    });
                }
            }
        }
        for d in r.devices().iter().flatten() {
            use oci_spec::runtime::LinuxDeviceType as T;
            let kind = match d.typ().unwrap_or(T::A) {
                T::A => 'a',
                T::B => 'b',
                T::C | T::U => 'c',
                T::P => {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        "a device cgroup rule of type p (fifo) matches nothing: use a, b or c",
                    ))
                }
            };
            let num = |v: Option<i64>| -> Result<Option<u32>> {
                v.map(|n| {
                    u32::try_from(n).map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidConfig,
                            format!("device number {n} in a device rule is out of range"),
                        )
                    })
                })
                .transpose()
            };
            let text = format!(
                "{kind} {}:{} {}",
                num(d.major())?.map_or("*".into(), |v| v.to_string()),
                num(d.minor())?.map_or("*".into(), |v| v.to_string()),
                d.access().as_deref().unwrap_or("rwm")
            );
            out.devices.push(DeviceAccess {
                allow: d.allow(),
                rule: text.parse()?,
            });
        }
        out.check_ranges()?;
        Ok(out)
    }

    /// Checks ranges the kernel would reject with a bare EINVAL.
    pub fn check_ranges(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::new(ErrorKind::InvalidConfig, msg));
        if let Some(s) = self.cpu.shares {
            if !(2..=262_144).contains(&s) {
                return invalid(format!("cpu shares {s} out of range: use 2 to 262144"));
            }
        }
        if let Some(q) = &self.cpu.quota {
            if !(1000..=1_000_000).contains(&q.period_us) {
                return invalid(format!(
                    "cpu period {} µs out of range: use 1000 to 1000000",
                    q.period_us
                ));
            }
            if let Max::Limit(quota) = q.quota_us {
                if quota < 1000 {
                    return invalid(format!("cpu quota {quota} µs too small: use at least 1000"));
                }
            }
        }
        if let Some(w) = self.io.weight {
            if !(10..=1000).contains(&w) {
                return invalid(format!("block io weight {w} out of range: use 10 to 1000"));
            }
        }
        if let (Some(limit), Some(Max::Limit(swap))) = (self.memory.limit, self.memory.swap) {
            if swap < limit {
                return invalid(format!(
                    "memory+swap limit {swap} is below the memory limit {limit}: \
                     the swap value counts memory plus swap, so make it at least the memory limit"
                ));
            }
        }
        Ok(())
    }
}

fn bad_device(major: i64, minor: i64) -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        format!("block device {major}:{minor} is not a valid device number"),
    )
}

/// Every rule in force: deny all, then `rules`, then the default allow list.
pub fn effective_device_rules(rules: &[DeviceAccess]) -> Vec<DeviceAccess> {
    let mut all = vec![DeviceAccess {
        allow: false,
        rule: DeviceRule {
            kind: 'a',
            major: None,
            minor: None,
            access: "rwm".into(),
        },
    }];
    all.extend(rules.iter().cloned());
    all.extend(
        default_device_rules()
            .into_iter()
            .map(|rule| DeviceAccess { allow: true, rule }),
    );
    all
}

/// The devices a container may use (runc's default allow list).
pub fn default_device_rules() -> Vec<DeviceRule> {
    let c = |ma: Option<u32>, mi: Option<u32>, a: &str| DeviceRule::char(ma, mi, a);
    vec![
        c(None, None, "m"),
        DeviceRule {
            kind: 'b',
            major: None,
            minor: None,
            access: "m".into(),
        },
        c(Some(1), Some(3), "rwm"),
        c(Some(1), Some(5), "rwm"),
        c(Some(1), Some(7), "rwm"),
        c(Some(1), Some(8), "rwm"),
        c(Some(1), Some(9), "rwm"),
        c(Some(5), Some(0), "rwm"),
        c(Some(5), Some(1), "rwm"),
        c(Some(5), Some(2), "rwm"),
        c(Some(136), None, "rwm"),
    ]
}

/// Counters a container's cgroup collected, read after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupEvents {
    /// Processes the OOM killer killed in this cgroup.
    pub oom_kills: u64,
    /// Times memory use hit the limit (v2 `max`, v1 `failcnt`).
    pub memory_limit_hits: u64,
    /// Forks refused because `pids.max` was reached.
    pub pids_limit_hits: u64,
    /// Whether the kernel counts OOM kills per cgroup (`oom_kill` appeared
    /// in v1 `memory.oom_control` and v2 `memory.events` with Linux 4.13);
    /// without it a SIGKILL after the limit was hit is taken as an OOM kill.
    pub oom_kills_counted: bool,
}

/// One container's cgroup, on whichever layout the host has.
pub trait Cgroup: fmt::Debug + Send {
    /// The layout this manager drives.
    fn layout(&self) -> CgroupLayout;
    /// Makes the cgroup (and its parents) in every hierarchy.
    fn create(&self) -> Result<()>;
    /// Denies access to every device node, applies `rules` (the spec's),
    /// then allows runc's default set (the null, zero, full, random,
    /// urandom, tty, console, ptmx and pts nodes; mknod of any), as runc
    /// orders them. True when enforced: on v1 by the devices controller, on
    /// v2 by an eBPF device program attached to the cgroup; false when the
    /// v1 devices controller is not mounted.
    fn restrict_devices(&self, rules: &[DeviceAccess]) -> Result<bool>;
    /// Writes the limits.
    fn apply(&self, resources: &Resources) -> Result<()>;
    /// Moves a process into the cgroup.
    fn add_process(&self, pid: Pid) -> Result<()>;
    /// The one directory a new process can be started in directly
    /// (`clone3` with `CLONE_INTO_CGROUP`) instead of [`Cgroup::add_process`]:
    /// the cgroup2 directory when that is the cgroup's only hierarchy.
    fn clone_into_dir(&self) -> Option<PathBuf> {
        None
    }
    /// The processes in the cgroup.
    fn procs(&self) -> Result<Vec<Pid>>;
    /// OOM and pids counters.
    fn events(&self) -> Result<CgroupEvents>;
    /// Kills every process in the cgroup and waits until it is empty.
    fn kill_all(&self) -> Result<()>;
    /// Removes the cgroup from every hierarchy; it must be empty.
    fn remove(&self) -> Result<()>;
    /// The directories this cgroup lives in, one per hierarchy.
    fn dirs(&self) -> Vec<PathBuf>;
}

/// Facts about the host that limits are checked against before a container starts.
pub trait HostFacts {
    /// The online CPUs.
    fn online_cpus(&self) -> Result<CpuList>;
    /// The online memory nodes.
    fn online_mems(&self) -> Result<CpuList>;
    /// Whether a block device with this number exists.
    fn block_device_exists(&self, dev: DevNum) -> bool;
}

/// [`HostFacts`] read from a sysfs tree (`/sys` on a real host).
#[derive(Debug, Clone)]
pub struct SysfsHost {
    root: PathBuf,
}

impl SysfsHost {
    /// Reads facts below `root` (normally `/sys`).
    pub fn new(root: impl Into<PathBuf>) -> SysfsHost {
        SysfsHost { root: root.into() }
    }
}

impl Default for SysfsHost {
    fn default() -> Self {
        SysfsHost::new("/sys")
    }
}

impl HostFacts for SysfsHost {
    fn online_cpus(&self) -> Result<CpuList> {
        let path = self.root.join("devices/system/cpu/online");
        read_parse(&path)
    }

    fn online_mems(&self) -> Result<CpuList> {
        let path = self.root.join("devices/system/node/online");
        if !path.exists() {
            // A kernel without NUMA has exactly node 0.
            return Ok(CpuList([0].into()));
        }
        read_parse(&path)
    }

    fn block_device_exists(&self, dev: DevNum) -> bool {
        self.root.join("dev/block").join(dev.to_string()).exists()
    }
}

/// Checks that the host can apply `resources`, before anything starts.
pub fn validate(resources: &Resources, host: &dyn HostFacts) -> Result<()> {
    resources.check_ranges()?;
    if let Some(cpus) = &resources.cpu.cpus {
        let online = host.online_cpus()?;
        if cpus.is_empty() || !cpus.is_subset(&online) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "cpuset cpus {cpus:?} names CPUs {} that this host does not have: use CPUs from {online}",
                    cpus.missing_from(&online),
                    cpus = cpus.to_string(),
                ),
            ));
        }
    }
    if let Some(mems) = &resources.cpu.mems {
        let online = host.online_mems()?;
        if mems.is_empty() || !mems.is_subset(&online) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "cpuset mems {mems:?} names memory nodes {} that this host does not have: use nodes from {online}",
                    mems.missing_from(&online),
                    mems = mems.to_string(),
                ),
            ));
        }
    }
    for t in &resources.io.throttles {
        if !host.block_device_exists(t.device) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "io throttle on block device {} but no such device exists: \
                     throttle the device that backs the container's root (see lsblk or /sys/dev/block)",
                    t.device
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| io_error(ErrorKind::Cgroup, "cannot read cgroup file", path, e))
}

pub(crate) fn read_parse<T: std::str::FromStr<Err = Error>>(path: &Path) -> Result<T> {
    read_string(path)?
        .trim_end()
        .parse()
        .map_err(|e: Error| e.with_path(path))
}

/// Writes `value` to an existing cgroup file (never creates one: a missing
/// file means the kernel lacks the feature).
pub(crate) fn write_file(path: &Path, value: impl fmt::Display) -> Result<()> {
    use std::io::Write;
    let text = value.to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "this kernel has no {} to write {text:?} to: the limit cannot be applied here",
                        path.file_name().unwrap_or_default().to_string_lossy()
                    ),
                )
                .with_path(path)
                .with_source(e)
            } else {
                io_error(ErrorKind::Cgroup, "cannot open cgroup file", path, e)
            }
        })?;
    f.write_all(text.as_bytes()).map_err(|e| {
        Error::new(ErrorKind::Cgroup, format!("cannot write {text:?}"))
            .with_path(path)
            .with_source(e)
    })
}

pub(crate) fn read_procs(path: &Path) -> Result<Vec<Pid>> {
    let text = read_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .map(Pid::from_raw)
                .map_err(|_| crate::error::parse_error("a pid", l).with_path(path))
        })
        .collect()
}

/// Removes a cgroup directory, retrying while the kernel still counts exiting tasks.
pub(crate) fn remove_dir(path: &Path) -> Result<()> {
    for attempt in 0..200 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 199 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(io_error(
                    ErrorKind::Cgroup,
                    "cannot remove cgroup: processes are still in it",
                    path,
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Waits until `procs` lists no process (the kernel empties a cgroup
/// asynchronously after SIGKILL).
pub(crate) fn wait_empty(procs: &Path) -> Result<()> {
    for _ in 0..500 {
        if read_procs(procs)?.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(Error::new(
        ErrorKind::Cgroup,
        "processes remain in the cgroup 5 s after SIGKILL",
    )
    .with_path(procs))
}

#[cfg(test)]
mod tests;
