//! Container configuration in the OCI runtime-spec model.
//!
//! A [`ContainerConfig`] is an OCI [`Spec`] plus what thinbox adds: the
//! rootfs directory (a mounted snapshot), the block device behind it (for
//! I/O throttles), the cgroup path, an optional init that reaps zombies and
//! a timeout. Build one with [`ContainerConfig::builder`] from Rust, or load
//! a `config.json` bundle with [`ContainerConfig::from_bundle`].
//!
//! The defaults are runc's (`runc spec`): namespaces mount, pid, uts, ipc,
//! network and cgroup; the capabilities `CAP_AUDIT_WRITE`, `CAP_KILL`,
//! `CAP_NET_BIND_SERVICE` and no others; `no_new_privileges`; `RLIMIT_NOFILE`
//! 1024; `/proc`, `/dev` (tmpfs), `/dev/pts`, `/dev/shm`, `/dev/mqueue`,
//! read-only `/sys` and `/sys/fs/cgroup`; runc's masked paths (`/proc/kcore`,
//! `/proc/keys`, `/sys/firmware`, ...) and read-only paths (`/proc/sys`,
//! `/proc/sysrq-trigger`, ...); and a default seccomp filter.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{
    Capability, LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceType,
    PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Spec,
};
use serde::{Deserialize, Serialize};

use crate::cgroup::{
    Bytes, CgroupPath, CpuList, CpuQuota, DevNum, IoThrottle, Max, Resources, ThrottleKind,
};
use crate::error::{Error, ErrorKind, Result};

/// Which seccomp filter the container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// thinbox's default filter (see [`crate::seccomp`]).
    #[default]
    Default,
    /// No filter at all.
    Unconfined,
}

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The OCI spec (process, hostname, mounts, namespaces, resources, paths).
    pub spec: Spec,
    /// The container's root directory, absolute.
    pub rootfs: PathBuf,
    /// The block device that backs the root, for throttles the caller adds.
    pub root_device: Option<DevNum>,
    /// Limits beyond what `spec.linux.resources` says (builder-set), merged at start.
    pub extra_resources: Resources,
    /// The cgroup path below each hierarchy's root.
    pub cgroup_path: CgroupPath,
    /// Run a small init as pid 1 that reaps orphans and forwards signals, with
    /// the process as its child (like `docker run --init`).
    pub init: bool,
    /// Kill the whole cgroup after this long.
    pub timeout: Option<Duration>,
    /// The seccomp filter.
    pub seccomp: SeccompMode,
    /// The bundle directory, when loaded from one: relative bind-mount
    /// sources are taken from here.
    pub bundle: Option<PathBuf>,
}

/// The namespaces thinbox can create.
pub const SUPPORTED_NAMESPACES: [LinuxNamespaceType; 7] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::User,
];

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidConfig, msg)
}

fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Time => "time",
    }
}

/// Converts an OCI capability to the `caps` crate's.
pub fn to_caps(c: Capability) -> Result<caps::Capability> {
    let name = serde_json::to_string(&c).unwrap_or_default();
    name.trim_matches('"')
        .parse()
        .map_err(|_| invalid(format!("capability {name} is unknown to this build")))
}

impl ContainerConfig {
    /// A builder with runc's defaults, running `args` in `rootfs`.
    pub fn builder(rootfs: impl Into<PathBuf>) -> ContainerBuilder {
        ContainerBuilder::new(rootfs)
    }

    /// Loads `config.json` from an OCI bundle directory; `root.path` is
    /// taken relative to the bundle.
    pub fn from_bundle(bundle: impl AsRef<Path>) -> Result<ContainerConfig> {
        let bundle = bundle.as_ref();
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::new(
                ErrorKind::Rootfs,
                "cannot read the bundle's config.json: pass a bundle directory",
            )
            .with_path(&path)
            .with_source(e)
        })?;
        let spec: Spec = serde_json::from_str(&text).map_err(|e| {
            invalid("config.json is not a valid OCI runtime spec (an unknown namespace or a misspelt field?)")
                .with_path(&path)
                .with_source(e)
        })?;
        let root = spec.root().as_ref().ok_or_else(|| {
            invalid("config.json has no root.path: name the rootfs directory").with_path(&path)
        })?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            bundle.join(root.path())
        };
        let id = bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        let cgroup_path = match spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) {
            Some(p) => CgroupPath::new(p.strip_prefix("/").unwrap_or(&p))?,
            None => default_cgroup_path(&id)?,
        };
        let config = ContainerConfig {
            spec,
            rootfs,
            root_device: None,
            extra_resources: Resources::default(),
            cgroup_path,
            init: false,
            timeout: None,
            seccomp: SeccompMode::Default,
            bundle: Some(bundle.to_owned()),
        };
        config.validate()?;
        Ok(config)
    }

    /// The argument vector of the process.
    pub fn args(&self) -> &[String] {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_deref())
            .unwrap_or(&[])
    }

    /// The namespaces to create.
    pub fn namespaces(&self) -> Vec<LinuxNamespace> {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
    }

    /// Whether the config asks for a namespace of this type.
    pub fn has_namespace(&self, t: LinuxNamespaceType) -> bool {
        self.namespaces().iter().any(|n| n.typ() == t)
    }

    /// The limits of the container: the spec's, then the builder's, then
    /// the throttles for the root device.
    pub fn resources(&self) -> Result<Resources> {
        let mut r = match self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
        {
            Some(oci) => Resources::from_oci(oci)?,
            None => Resources::default(),
        };
        let e = &self.extra_resources;
        macro_rules! merge {
            ($($f:ident).+) => {
                if e.$($f).+.is_some() {
                    r.$($f).+ = e.$($f).+.clone();
                }
            };
        }
        merge!(memory.limit);
        merge!(memory.swap);
        merge!(memory.reservation);
        merge!(cpu.shares);
        merge!(cpu.quota);
        merge!(cpu.cpus);
        merge!(cpu.mems);
        merge!(pids);
        merge!(io.weight);
        r.io.throttles.extend(e.io.throttles.iter().copied());
        r.check_ranges()?;
        Ok(r)
    }

    /// Checks everything that can be checked before anything starts.
    pub fn validate(&self) -> Result<()> {
        if !self.rootfs.is_absolute() {
            return Err(invalid(format!(
                "rootfs {} must be an absolute path",
                self.rootfs.display()
            )));
        }
        if !self.rootfs.is_dir() {
            return Err(Error::new(
                ErrorKind::Rootfs,
                "the rootfs directory does not exist: mount the snapshot there first",
            )
            .with_path(&self.rootfs));
        }
        let process = self
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("the config has no process: give process.args"))?;
        if let Some(devices) = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().as_ref())
        {
            if !devices.is_empty() {
                return Err(invalid(
                    "linux.devices (extra device nodes) is not supported: remove it; \
                     containers get null, zero, full, random, urandom, tty, ptmx and pts",
                ));
            }
        }
        if self.spec.hooks().is_some() {
            return Err(invalid(
                "OCI hooks are not supported: remove the hooks section",
            ));
        }
        if let Some(sysctl) = self.spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
            for key in sysctl.keys() {
                if key.contains('/') || key.contains("..") || key.is_empty() {
                    return Err(invalid(format!(
                        "sysctl {key:?} is not a sysctl name: use dotted names like net.ipv4.ip_forward"
                    )));
                }
            }
        }
        if self.args().is_empty() {
            return Err(invalid("process.args is empty: give the program to run"));
        }
        if !process.cwd().is_absolute() {
            return Err(invalid(format!(
                "process.cwd {} must be absolute",
                process.cwd().display()
            )));
        }
        for ns in self.namespaces() {
            if !SUPPORTED_NAMESPACES.contains(&ns.typ()) {
                return Err(invalid(format!(
                    "the {} namespace is not supported: use mount, pid, uts, ipc, network, cgroup or user",
                    ns_name(ns.typ())
                )));
            }
            if let Some(p) = ns.path() {
                return Err(invalid(format!(
                    "joining an existing {} namespace ({}) is not supported: drop its path",
                    ns_name(ns.typ()),
                    p.display()
                )));
            }
        }
        if !self.has_namespace(LinuxNamespaceType::Mount) {
            return Err(invalid(
                "a container needs a mount namespace: add {\"type\": \"mount\"}",
            ));
        }
        let linux = self.spec.linux().as_ref();
        let uid_maps = linux
            .and_then(|l| l.uid_mappings().clone())
            .unwrap_or_default();
        let gid_maps = linux
            .and_then(|l| l.gid_mappings().clone())
            .unwrap_or_default();
        let userns = self.has_namespace(LinuxNamespaceType::User);
        if userns {
            check_id_maps("uid", &uid_maps)?;
            check_id_maps("gid", &gid_maps)?;
        } else if !uid_maps.is_empty() || !gid_maps.is_empty() {
            return Err(invalid(
                "uid/gid mappings given without a user namespace: add {\"type\": \"user\"} or drop the mappings",
            ));
        }
        if let Some(caps) = process.capabilities() {
            for set in [
                caps.bounding(),
                caps.effective(),
                caps.permitted(),
                caps.inheritable(),
                caps.ambient(),
            ]
            .into_iter()
            .flatten()
            {
                for c in set {
                    to_caps(*c)?;
                }
            }
        }
        for m in self.spec.mounts().iter().flatten() {
            if !m.destination().is_absolute() {
                return Err(invalid(format!(
                    "mount destination {} must be absolute",
                    m.destination().display()
                )));
            }
        }
        self.resources()?;
        Ok(())
    }
}

fn check_id_maps(what: &str, maps: &[LinuxIdMapping]) -> Result<()> {
    if maps.is_empty() {
        return Err(invalid(format!(
            "a user namespace needs {what} mappings: add linux.{what}Mappings"
        )));
    }
    if maps.len() > 340 {
        return Err(invalid(format!(
            "{} {what} mappings: the kernel takes at most 340",
            maps.len()
        )));
    }
    for (i, m) in maps.iter().enumerate() {
        if m.size() == 0 {
            return Err(invalid(format!(
                "{what} mapping {} -> {} has size 0: give a size of at least 1",
                m.container_id(),
                m.host_id()
            )));
        }
        let end = |start: u32| u64::from(start) + u64::from(m.size());
        if end(m.container_id()) > 1 << 32 || end(m.host_id()) > 1 << 32 {
            return Err(invalid(format!(
                "{what} mapping {} -> {} size {} runs past 2^32",
                m.container_id(),
                m.host_id(),
                m.size()
            )));
        }
        for o in &maps[i + 1..] {
            let overlap = |a: u32, b: u32| {
                u64::from(a) < u64::from(b) + u64::from(o.size())
                    && u64::from(b) < u64::from(a) + u64::from(m.size())
            };
            if overlap(m.container_id(), o.container_id()) || overlap(m.host_id(), o.host_id()) {
                return Err(invalid(format!(
                    "{what} mappings {}:{}:{} and {}:{}:{} overlap: the kernel refuses overlapping ranges",
                    m.container_id(),
                    m.host_id(),
                    m.size(),
                    o.container_id(),
                    o.host_id(),
                    o.size()
                )));
            }
        }
    }
    Ok(())
}

/// `thinbox/<id>`.
pub fn default_cgroup_path(id: &str) -> Result<CgroupPath> {
    CgroupPath::new(Path::new("thinbox").join(id))
}

/// Builds a [`ContainerConfig`] on runc's defaults.
#[derive(Debug, Clone)]
pub struct ContainerBuilder {
    config: ContainerConfig,
    id: String,
    cgroup_path: Option<CgroupPath>,
}

static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl ContainerBuilder {
    fn new(rootfs: impl Into<PathBuf>) -> ContainerBuilder {
        let mut spec = Spec::default();
        spec.set_hostname(Some("thinbox".into()));
        // oci-spec's default process has KILL, NET_BIND_SERVICE and
        // AUDIT_WRITE inheritable and ambient, so a non-root user kept them
        // across execve. Since CVE-2022-24769 runc and moby leave both sets
        // empty: a non-root process starts with no capabilities, as there.
        if let Some(process) = spec.process_mut().as_mut() {
            let mut caps = process.capabilities().clone().unwrap_or_default();
            caps.set_inheritable(Some(HashSet::new()));
            caps.set_ambient(Some(HashSet::new()));
            process.set_capabilities(Some(caps));
        }
        // The root is the container's own snapshot: writable unless asked
        // (`runc spec` writes `readonly: true`).
        if let Some(root) = spec.root_mut() {
            root.set_readonly(Some(false));
        }
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        ContainerBuilder {
            config: ContainerConfig {
                spec,
                rootfs: rootfs.into(),
                root_device: None,
                extra_resources: Resources::default(),
                // Replaced in build(); a valid placeholder.
                cgroup_path: CgroupPath::new("thinbox").expect("a valid path"),
                init: false,
                timeout: None,
                seccomp: SeccompMode::Default,
                bundle: None,
            },
            id,
            cgroup_path: None,
        }
    }

    fn process(&mut self) -> &mut oci_spec::runtime::Process {
        self.config
            .spec
            .process_mut()
            .get_or_insert_with(Default::default)
    }

    fn linux(&mut self) -> &mut oci_spec::runtime::Linux {
        self.config
            .spec
            .linux_mut()
            .get_or_insert_with(Default::default)
    }

    /// The container's name: used for the cgroup path `thinbox/<id>`.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The program and its arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        let args = args.into_iter().map(Into::into).collect();
        self.process().set_args(Some(args));
        self
    }

    /// Adds `KEY=VALUE` to the environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        let env = self.process().env_mut().get_or_insert_with(Vec::new);
        env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(format!("{key}={value}"));
        self
    }

    /// The working directory inside the container.
    pub fn cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.process().set_cwd(cwd.into());
        self
    }

    /// The uid and gid the process runs as (inside the user namespace, if any).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        let user = self.process().user_mut();
        user.set_uid(uid);
        user.set_gid(gid);
        self
    }

    /// Supplementary groups.
    pub fn additional_gids(mut self, gids: Vec<u32>) -> Self {
        self.process().user_mut().set_additional_gids(Some(gids));
        self
    }

    /// The hostname inside the UTS namespace.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.config.spec.set_hostname(Some(name.into()));
        self
    }

    /// Sets an rlimit (soft and hard).
    pub fn rlimit(mut self, typ: PosixRlimitType, soft: u64, hard: u64) -> Self {
        let limit: PosixRlimit = PosixRlimitBuilder::default()
            .typ(typ)
            .soft(soft)
            .hard(hard)
            .build()
            .expect("all rlimit fields are set");
        let mut list = self.process().rlimits().clone().unwrap_or_default();
        list.retain(|l| l.typ() != typ);
        list.push(limit);
        self.process().set_rlimits(Some(list));
        self
    }

    /// Replaces every capability set (bounding, effective, permitted; ambient
    /// and inheritable stay empty) with `caps`.
    pub fn capabilities(mut self, caps: HashSet<Capability>) -> Self {
        let mut c = self.process().capabilities().clone().unwrap_or_default();
        c.set_bounding(Some(caps.clone()));
        c.set_effective(Some(caps.clone()));
        c.set_permitted(Some(caps));
        c.set_inheritable(Some(HashSet::new()));
        c.set_ambient(Some(HashSet::new()));
        self.process().set_capabilities(Some(c));
        self
    }

    /// Gives the process a pseudo-terminal as stdin, stdout and stderr (its
    /// master end is [`crate::Container::take_terminal`]); default: stdio
    /// is passed through.
    pub fn terminal(mut self, on: bool) -> Self {
        self.process().set_terminal(Some(on));
        self
    }

    /// Whether exec may gain privileges (setuid, file caps). Default: no.
    pub fn no_new_privileges(mut self, on: bool) -> Self {
        self.process().set_no_new_privileges(Some(on));
        self
    }

    /// Mounts the root read-only.
    pub fn readonly_root(mut self, on: bool) -> Self {
        let root = self
            .config
            .spec
            .root_mut()
            .get_or_insert_with(Default::default);
        root.set_readonly(Some(on));
        self
    }

    /// Adds a user namespace mapping container ids from 0 to `host_uid` /
    /// `host_gid` onward, `size` ids each.
    pub fn user_namespace(mut self, host_uid: u32, host_gid: u32, size: u32) -> Self {
        let map = |host: u32| -> LinuxIdMapping {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(size)
                .build()
                .expect("all id-map fields are set")
        };
        let (u, g) = (map(host_uid), map(host_gid));
        let linux = self.linux();
        linux.set_uid_mappings(Some(vec![u]));
        linux.set_gid_mappings(Some(vec![g]));
        let ns = linux.namespaces_mut().get_or_insert_with(Vec::new);
        if !ns.iter().any(|n| n.typ() == LinuxNamespaceType::User) {
            let mut user = LinuxNamespace::default();
            user.set_typ(LinuxNamespaceType::User);
            ns.push(user);
        }
        self
    }

    /// Memory limit.
    pub fn memory_limit(mut self, limit: Bytes) -> Self {
        self.config.extra_resources.memory.limit = Some(limit);
        self
    }

    /// Memory + swap limit (OCI meaning).
    pub fn memory_swap(mut self, total: Max<Bytes>) -> Self {
        self.config.extra_resources.memory.swap = Some(total);
        self
    }

    /// Memory soft limit / protection.
    pub fn memory_reservation(mut self, r: Bytes) -> Self {
        self.config.extra_resources.memory.reservation = Some(r);
        self
    }

    /// Maximum number of tasks.
    pub fn pids_limit(mut self, n: u64) -> Self {
        self.config.extra_resources.pids = Some(Max::Limit(n));
        self
    }

    /// CPU shares (v1 units; converted to a weight on v2).
    pub fn cpu_shares(mut self, shares: u64) -> Self {
        self.config.extra_resources.cpu.shares = Some(shares);
        self
    }

    /// CPU bandwidth: `quota_us` per `period_us`.
    pub fn cpu_quota(mut self, quota_us: u64, period_us: u64) -> Self {
        self.config.extra_resources.cpu.quota = Some(CpuQuota {
            quota_us: Max::Limit(quota_us),
            period_us,
        });
        self
    }

    /// CPUs the container may use.
    pub fn cpuset_cpus(mut self, cpus: CpuList) -> Self {
        self.config.extra_resources.cpu.cpus = Some(cpus);
        self
    }

    /// Memory nodes the container may use.
    pub fn cpuset_mems(mut self, mems: CpuList) -> Self {
        self.config.extra_resources.cpu.mems = Some(mems);
        self
    }

    /// Block I/O weight (10..=1000).
    pub fn io_weight(mut self, w: u16) -> Self {
        self.config.extra_resources.io.weight = Some(w);
        self
    }

    /// The block device that backs the root; [`Self::root_throttle`] applies to it.
    pub fn root_device(mut self, dev: DevNum) -> Self {
        self.config.root_device = Some(dev);
        self
    }

    /// Throttles I/O on the root device (set [`Self::root_device`] first).
    pub fn root_throttle(mut self, kind: ThrottleKind, rate: u64) -> Self {
        if let Some(device) = self.config.root_device {
            self.config
                .extra_resources
                .io
                .throttles
                .push(IoThrottle { device, kind, rate });
        }
        self
    }

    /// Throttles I/O on any device.
    pub fn io_throttle(mut self, device: DevNum, kind: ThrottleKind, rate: u64) -> Self {
        self.config
            .extra_resources
            .io
            .throttles
            .push(IoThrottle { device, kind, rate });
        self
    }

    /// The cgroup path (default `thinbox/<id>`).
    pub fn cgroup_path(mut self, path: CgroupPath) -> Self {
        self.cgroup_path = Some(path);
        self
    }

    /// Run thinbox's init as pid 1 (reaps zombies, forwards signals).
    pub fn init(mut self, on: bool) -> Self {
        self.config.init = on;
        self
    }

    /// Kill the container's cgroup after `t`.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.config.timeout = Some(t);
        self
    }

    /// The seccomp filter.
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.config.seccomp = mode;
        self
    }

    /// Direct access to the spec, for fields without a builder method.
    pub fn spec_mut(&mut self) -> &mut Spec {
        &mut self.config.spec
    }

    /// Checks and returns the config.
    pub fn build(mut self) -> Result<ContainerConfig> {
        self.config.cgroup_path = match self.cgroup_path.take() {
            Some(p) => p,
            None => default_cgroup_path(&self.id)?,
        };
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests;
