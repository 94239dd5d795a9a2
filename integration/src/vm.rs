//! The VM harness: boots Debian's stock kernel under QEMU with the host's root
//! shared read-only over virtio-9p, runs one command inside, and returns its
//! exit status and output.
//!
//! Layout of one boot:
//! - the kernel, its modules (plus ZFS built by DKMS) and a busybox initramfs
//!   come from the cache that `scripts/setup.sh` fills ([`GuestImage`]);
//! - the initramfs mounts the host root at `/` (read-only) and a per-run share
//!   directory at `/run/thinbox-vm` (read-write), then runs the share's
//!   `guest-init.sh` as PID 1 in a chroot;
//! - `guest-init.sh` mounts fresh proc, sysfs, devtmpfs, tmpfs `/tmp`, the
//!   chosen cgroup layout, loads the storage modules, runs `command` and writes
//!   `stdout`, `stderr`, `status` and `dmesg` into the share, then powers off.
//!
//! Needs on the host: qemu-system-x86_64 (KVM used when it works, TCG
//! otherwise) and the cache prepared by `scripts/setup.sh`.

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kernfmt::CgroupLayout;

/// Set to `1` inside the guest.
pub const IN_VM_ENV: &str = "THINBOX_IN_VM";
/// Inside the guest: the spare virtio disks, space-separated (`/dev/vda /dev/vdb`).
pub const DISKS_ENV: &str = "THINBOX_VM_DISKS";
/// Where the share is mounted inside the guest.
pub const GUEST_SHARE: &str = "/run/thinbox-vm";

const INITRAMFS_INIT: &str = include_str!("../guest/initramfs-init");
const GUEST_INIT: &str = include_str!("../guest/guest-init.sh");

/// Errors from preparing or running a guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// The guest kernel, modules and initramfs are not in the cache.
    #[error("no guest kernel is prepared in {cache}: run scripts/setup.sh (as root) first")]
    NotPrepared {
        /// The cache directory.
        cache: PathBuf,
    },
    /// The cache is under a directory the guest mounts over.
    #[error("the guest cache {cache} is hidden inside the VM, which mounts its own /tmp, /var/tmp, /run and /dev: set THINBOX_CACHE to a directory such as /var/cache/thinbox and run scripts/setup.sh")]
    HiddenCache {
        /// The cache directory.
        cache: PathBuf,
    },
    /// No prepared guest kernel has this ABI.
    #[error("no guest kernel {wanted} is prepared (prepared: {known}): scripts/setup.sh prepares the default kernel and the matrix's")]
    UnknownKernel {
        /// The ABI or prefix asked for.
        wanted: String,
        /// The ABIs prepared.
        known: String,
    },
    /// The initramfs predates the current init script.
    #[error("the guest initramfs in {dir} was built from an older init script: run scripts/setup.sh again")]
    StaleInitramfs {
        /// The prepared kernel's directory.
        dir: PathBuf,
    },
    /// A program (qemu) could not be started.
    #[error("cannot start {program}: {source}; install it with scripts/setup.sh")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// File I/O on the host side failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest ran past its time limit.
    #[error("the guest did not finish within {timeout:?} and was killed; console:\n{console}")]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// The guest's console output.
        console: String,
    },
    /// The guest stopped before reporting the command's result.
    #[error("the guest stopped without running the command ({reason}); console:\n{console}")]
    NoResult {
        /// Why, as far as the host can tell.
        reason: String,
        /// The guest's console output.
        console: String,
    },
    /// A VM option is invalid.
    #[error("bad VM option: {0}")]
    BadOption(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VmError + 'a {
    move |source| VmError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The cached guest kernel, modules and initramfs for one kernel version.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel ABI (`6.1.0-57-amd64`).
    pub kernel_version: String,
    /// Its directory in the cache.
    pub dir: PathBuf,
}

impl GuestImage {
    /// The cache root: `THINBOX_CACHE` or `/var/cache/thinbox`.
    pub fn cache_root() -> PathBuf {
        std::env::var_os("THINBOX_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/thinbox"))
    }

    /// Finds the guest prepared by `scripts/setup.sh`.
    pub fn locate() -> Result<GuestImage, VmError> {
        Self::locate_in(Self::cache_root())
    }

    /// Finds the guest prepared in the cache root `cache`.
    pub fn locate_in(cache: PathBuf) -> Result<GuestImage, VmError> {
        let hidden = ["/tmp", "/var/tmp", "/run", "/dev", "/proc", "/sys"];
        if hidden.iter().any(|h| cache.starts_with(h)) {
            return Err(VmError::HiddenCache { cache });
        }
        let not_prepared = || VmError::NotPrepared {
            cache: cache.clone(),
        };
        let current = fs::read_to_string(cache.join("vm/current")).map_err(|_| not_prepared())?;
        Self::locate_version(cache, current.trim())
    }

    /// The kernels of the matrix that `scripts/setup.sh` prepared besides
    /// the default one (`vm/matrix`, one ABI a line), in its order.
    pub fn matrix_kernels() -> Vec<String> {
        fs::read_to_string(Self::cache_root().join("vm/matrix"))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The prepared guest whose kernel ABI is `wanted` or starts with it
    /// (`5.10` finds `5.10.0-32-amd64`), among the default kernel and the
    /// matrix's.
    pub fn locate_kernel(wanted: &str) -> Result<GuestImage, VmError> {
        let cache = Self::cache_root();
        let mut known = Self::matrix_kernels();
        if let Ok(current) = fs::read_to_string(cache.join("vm/current")) {
            known.insert(0, current.trim().to_owned());
        }
        let found = known
            .iter()
            .find(|k| k.as_str() == wanted)
            .or_else(|| known.iter().find(|k| k.starts_with(wanted)));
        match found {
            Some(kernel) => Self::locate_version(cache, kernel),
            // An ABI prepared but not (yet) in the matrix.
            None if cache.join("vm").join(wanted).join("ready").exists() => {
                Self::locate_version(cache, wanted)
            }
            None => Err(VmError::UnknownKernel {
                wanted: wanted.to_owned(),
                known: known.join(", "),
            }),
        }
    }

    /// The guest for kernel ABI `kernel_version` in the cache root `cache`.
    pub fn locate_version(cache: PathBuf, kernel_version: &str) -> Result<GuestImage, VmError> {
        let kernel_version = kernel_version.to_owned();
        let dir = cache.join("vm").join(&kernel_version);
        if !dir.join("ready").exists() {
            return Err(VmError::NotPrepared { cache });
        }
        let built_from = fs::read_to_string(dir.join("init")).unwrap_or_default();
        if built_from != INITRAMFS_INIT {
            return Err(VmError::StaleInitramfs { dir });
        }
        Ok(GuestImage {
            kernel_version,
            dir,
        })
    }

    /// The kernel image.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The initramfs.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initrd.cpio")
    }

    /// The modules directory.
    pub fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.kernel_version)
    }

    /// Whether DKMS-built ZFS modules are in the cached module tree.
    pub fn has_zfs(&self) -> bool {
        self.modules().join("updates/dkms/zfs.ko").exists()
    }
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if a probe boot under KVM succeeds on this host (cached), else TCG.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// qemu's emulation (TCG).
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(VmError::BadOption(format!(
                "accelerator {other:?}: use auto, kvm or tcg"
            ))),
        }
    }
}

/// A size in bytes given as `512M`, `4G` or a plain byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSize(pub u64);

impl std::str::FromStr for DiskSize {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            VmError::BadOption(format!(
                "disk size {s:?}: use a number with K, M, G or T, e.g. 4G"
            ))
        };
        let (digits, shift) = match s.as_bytes().last() {
            Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
            Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
            Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
            Some(b'T' | b't') => (&s[..s.len() - 1], 40),
            _ => (s, 0),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
        if bytes == 0 {
            return Err(bad());
        }
        Ok(DiskSize(bytes))
    }
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if self.0 % (1u64 << shift) == 0 {
                return write!(f, "{}{suffix}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// How to boot one guest.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The guest's cgroup layout.
    pub cgroup: CgroupLayout,
    /// The guest's memory in MiB.
    pub memory_mib: u32,
    /// The guest's CPUs.
    pub cpus: u8,
    /// Extra sparse virtio disks, `/dev/vda`, `/dev/vdb`, ... in the guest.
    pub disks: Vec<DiskSize>,
    /// The whole boot, command included, is killed after this long.
    pub timeout: Duration,
    /// The accelerator.
    pub accel: Accel,
    /// Extra environment for the command in the guest.
    pub env: Vec<(String, String)>,
    /// Copy the guest command's stdout to ours while it runs.
    pub echo_stdout: bool,
    /// Host paths the command needs that lie under /tmp or /var/tmp (which
    /// the guest covers with its own tmpfs): they are bound back in place.
    /// The current directory is always kept.
    pub keep_paths: Vec<PathBuf>,
    /// A directory to share with the guest, kept after the run so the caller
    /// can read what the command wrote to `/run/thinbox-vm`; a temporary one
    /// (removed afterwards) when `None`.
    pub share: Option<PathBuf>,
    /// Appended to the guest kernel's command line.
    pub kernel_args: Vec<String>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            cgroup: CgroupLayout::V2,
            memory_mib: 4096,
            cpus: 2,
            disks: Vec::new(),
            timeout: Duration::from_secs(600),
            accel: Accel::Auto,
            env: Vec::new(),
            echo_stdout: false,
            keep_paths: Vec::new(),
            share: None,
            kernel_args: Vec::new(),
        }
    }
}

/// What came back from a guest.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// The command's exit status (128+N when killed by signal N).
    pub status: i32,
    /// The command's standard output.
    pub stdout: String,
    /// The command's standard error.
    pub stderr: String,
    /// The serial console: kernel messages and init's complaints.
    pub console: String,
    /// The guest kernel's log.
    pub dmesg: String,
    /// The accelerator.
    pub accel: Accel,
    /// How long the guest ran.
    pub elapsed: Duration,
    /// The console of each earlier boot whose kernel panicked before the
    /// guest's init ran (booted again; see [`run_script`]).
    pub kernel_panics: Vec<String>,
}

impl VmOutput {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Runs `command` (argv) inside a fresh guest and returns its result.
pub fn run(image: &GuestImage, config: &VmConfig, command: &[String]) -> Result<VmOutput, VmError> {
    if command.is_empty() {
        return Err(VmError::BadOption("no command to run in the guest".into()));
    }
    let script = command
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    run_script(image, config, &script)
}

/// Runs a shell script (run by the host's `/bin/sh` inside the guest). A
/// boot whose kernel panics before the guest's init runs is booted again once
/// ([`VmOutput::kernel_panics`]).
pub fn run_script(
    image: &GuestImage,
    config: &VmConfig,
    script: &str,
) -> Result<VmOutput, VmError> {
    let accel = match config.accel {
        Accel::Auto => probe_accel(image),
        other => other,
    };
    let mut kernel_panics = Vec::new();
    loop {
        match boot(image, config, script, accel) {
            Ok(mut out) => {
                out.kernel_panics = kernel_panics;
                return Ok(out);
            }
            Err(VmError::NoResult { console, .. }) if kernel_panicked_before_init(&console) => {
                if kernel_panics.len() == KERNEL_PANIC_BOOTS {
                    let boots = kernel_panics.len() + 1;
                    return Err(VmError::NoResult {
                        reason: format!(
                            "the kernel panicked before the guest's init ran, in {boots} boots"
                        ),
                        console,
                    });
                }
                kernel_panics.push(console);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Boots again after a kernel panic before the guest's init ran, at most
/// this many times. Nothing of thinbox ran in such a boot: QEMU 7.2's
/// multi-threaded TCG once let a vCPU execute the int3 of a finished
/// kernel text patch (6.12, sched_clock_cpu, 1.9 s into the boot).
const KERNEL_PANIC_BOOTS: usize = 1;

/// The first line guest-init.sh writes to the console.
const GUEST_STARTED: &str = "thinbox-guest: started";

fn kernel_panicked_before_init(console: &str) -> bool {
    console.contains("Kernel panic - not syncing") && !console.contains(GUEST_STARTED)
}

fn boot(
    image: &GuestImage,
    config: &VmConfig,
    script: &str,
    accel: Accel,
) -> Result<VmOutput, VmError> {
    let temporary_share;
    let share_path = match &config.share {
        Some(dir) => dir.as_path(),
        None => {
            temporary_share = tempfile::Builder::new()
                .prefix("thinbox-vm-")
                .tempdir()
                .map_err(io_err("create share directory in", &std::env::temp_dir()))?;
            temporary_share.path()
        }
    };
    write_share(image, config, share_path, script)?;

    let mut disks = Vec::new();
    for (i, size) in config.disks.iter().enumerate() {
        let path = share_path.join(format!("disk{i}.img"));
        let file = fs::File::create(&path).map_err(io_err("create disk image", &path))?;
        file.set_len(size.0)
            .map_err(io_err("size disk image", &path))?;
        disks.push(path);
    }

    let console_path = share_path.join("console.log");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(match accel {
        Accel::Kvm => ["-accel", "kvm", "-cpu", "max"],
        _ => ["-accel", "tcg", "-cpu", "max"],
    });
    qemu.args([
        "-smp",
        &config.cpus.to_string(),
        "-m",
        &config.memory_mib.to_string(),
    ]);
    qemu.args([
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-display",
        "none",
        "-monitor",
        "none",
    ]);
    qemu.arg("-serial")
        .arg(format!("file:{}", console_path.display()));
    qemu.arg("-kernel").arg(image.kernel());
    qemu.arg("-initrd").arg(image.initramfs());
    let mut cmdline = String::from("console=ttyS0 loglevel=6 panic=-1 oops=panic");
    if config.cgroup == CgroupLayout::V2 {
        cmdline.push_str(" cgroup_no_v1=all");
    }
    for arg in &config.kernel_args {
        cmdline.push(' ');
        cmdline.push_str(arg);
    }
    qemu.arg("-append").arg(cmdline);
    qemu.arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap");
    qemu.arg("-virtfs").arg(format!(
        "local,path={},mount_tag=share,security_model=none,multidevs=remap",
        share_path.display()
    ));
    for disk in &disks {
        qemu.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe,discard=unmap",
            disk.display()
        ));
    }
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::sys::die_with_parent(&mut qemu);

    let started = Instant::now();
    let child = qemu.spawn().map_err(|source| VmError::Spawn {
        program: "qemu-system-x86_64".into(),
        source,
    })?;
    let mut guest = GuestProcess(Some(child));
    let stdout_path = share_path.join("stdout");
    let mut echo_offset = 0u64;
    let exit = loop {
        if config.echo_stdout {
            echo_offset = echo_new_bytes(&stdout_path, echo_offset);
        }
        if let Some(status) = guest.try_wait() {
            break status;
        }
        if started.elapsed() > config.timeout {
            guest.kill();
            return Err(VmError::Timeout {
                timeout: config.timeout,
                console: read_lossy(&console_path),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if config.echo_stdout {
        echo_new_bytes(&stdout_path, echo_offset);
    }
    let elapsed = started.elapsed();
    let console = read_lossy(&console_path);
    let setup_errors = read_lossy(&share_path.join("setup-errors"));
    let status = fs::read_to_string(share_path.join("status"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let Some(status) = status else {
        let qemu_stderr = guest.stderr();
        let reason = if !setup_errors.is_empty() {
            setup_errors.trim().to_owned()
        } else if !exit.success() {
            format!("qemu exited with {exit}: {}", qemu_stderr.trim())
        } else {
            "no exit status was written".into()
        };
        return Err(VmError::NoResult { reason, console });
    };
    Ok(VmOutput {
        status,
        stdout: read_lossy(&stdout_path),
        stderr: read_lossy(&share_path.join("stderr")),
        console,
        dmesg: read_lossy(&share_path.join("dmesg")),
        accel,
        elapsed,
        kernel_panics: Vec::new(),
    })
}

/// Writes `guest-init.sh` (with this boot's settings) and `command`.
fn write_share(
    image: &GuestImage,
    config: &VmConfig,
    share: &Path,
    script: &str,
) -> Result<(), VmError> {
    let mut init = String::new();
    let disks: Vec<String> = (0..config.disks.len())
        .map(|i| format!("/dev/vd{}", char::from(b'a' + i as u8)))
        .collect();
    let vars = [
        ("THINBOX_VM_CGROUP", config.cgroup.to_string()),
        ("THINBOX_VM_KVER", image.kernel_version.clone()),
        ("THINBOX_VM_MODULES", image.modules().display().to_string()),
        (
            "THINBOX_VM_ZFS",
            if image.has_zfs() {
                "1".into()
            } else {
                String::new()
            },
        ),
        ("THINBOX_VM_KEEP", keep_paths(config)),
    ];
    for (name, value) in vars {
        init.push_str(&format!("{name}={}\n", shell_quote(&value)));
    }
    let exported = [
        (IN_VM_ENV.to_owned(), "1".to_owned()),
        (DISKS_ENV.to_owned(), disks.join(" ")),
    ];
    for (name, value) in exported.iter().chain(config.env.iter()) {
        init.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    init.push_str(GUEST_INIT);
    let init_path = share.join("guest-init.sh");
    fs::write(&init_path, init).map_err(io_err("write", &init_path))?;
    let command_path = share.join("command");
    fs::write(&command_path, format!("{script}\n")).map_err(io_err("write", &command_path))?;
    Ok(())
}

/// The host paths to keep visible in the guest, colon-separated.
fn keep_paths(config: &VmConfig) -> String {
    let mut paths: Vec<PathBuf> = config.keep_paths.clone();
    paths.extend(std::env::current_dir().ok());
    paths.sort();
    paths.dedup();
    paths
        .iter()
        .filter_map(|p| p.to_str())
        .filter(|p| !p.contains(':'))
        .collect::<Vec<_>>()
        .join(":")
}

/// Copies what was appended to `path` since `offset` to our stdout.
fn echo_new_bytes(path: &Path, offset: u64) -> u64 {
    let Ok(mut file) = fs::File::open(path) else {
        return offset;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return offset;
    }
    let mut buf = Vec::new();
    let n = file.read_to_end(&mut buf).unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&buf[..n]);
    let _ = out.flush();
    offset + n as u64
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Quotes one word for `/bin/sh`.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The QEMU child; killed and reaped if dropped while still running.
struct GuestProcess(Option<Child>);

impl GuestProcess {
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status),
            Ok(None) => None,
            Err(_) => {
                self.kill();
                None
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stderr(&mut self) -> String {
        let mut out = String::new();
        if let Some(err) = self.0.as_mut().and_then(|c| c.stderr.as_mut()) {
            let _ = err.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for GuestProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Decides once per host kernel whether KVM really works (on some hosts
/// `/dev/kvm` exists but guests abort or hang), caching the verdict.
fn probe_accel(image: &GuestImage) -> Accel {
    if let Ok(forced) = std::env::var("THINBOX_VM_ACCEL") {
        if let Ok(accel @ (Accel::Kvm | Accel::Tcg)) = forced.parse() {
            return accel;
        }
    }
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    let host_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let verdict_path = GuestImage::cache_root().join(format!("vm/kvm-verdict-{host_release}"));
    match fs::read_to_string(&verdict_path).as_deref().map(str::trim) {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    let probe = VmConfig {
        timeout: Duration::from_secs(20),
        memory_mib: 512,
        share: None,
        ..VmConfig::default()
    };
    let verdict = match boot(image, &probe, "true", Accel::Kvm) {
        Ok(out) if out.success() => Accel::Kvm,
        _ => Accel::Tcg,
    };
    let _ = fs::write(
        &verdict_path,
        if verdict == Accel::Kvm {
            "kvm\n"
        } else {
            "tcg\n"
        },
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_sizes_parse_and_print() {
        assert_eq!("4G".parse::<DiskSize>().unwrap(), DiskSize(4 << 30));
        assert_eq!("512m".parse::<DiskSize>().unwrap(), DiskSize(512 << 20));
        assert_eq!("4096".parse::<DiskSize>().unwrap(), DiskSize(4096));
        assert_eq!(DiskSize(4 << 30).to_string(), "4G");
        assert_eq!(DiskSize(1536 << 20).to_string(), "1536M");
        assert!("0G".parse::<DiskSize>().is_err());
        assert!("lots".parse::<DiskSize>().is_err());
        assert!("99999999999T".parse::<DiskSize>().is_err());
    }

    #[test]
    fn shell_quoting_survives_sh() {
        for word in ["plain", "with space", "it's", "", "$HOME", "a\"b"] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
    }

    #[test]
    fn caches_the_guest_cannot_see_or_that_are_empty_are_refused() {
        let hidden = GuestImage::locate_in(PathBuf::from("/tmp/thinbox-cache"));
        assert!(
            matches!(hidden, Err(VmError::HiddenCache { .. })),
            "{hidden:?}"
        );
        let empty = GuestImage::locate_in(PathBuf::from("/nonexistent/thinbox-cache"));
        assert!(
            matches!(empty, Err(VmError::NotPrepared { .. })),
            "{empty:?}"
        );
        assert!(empty
            .unwrap_err()
            .to_string()
            .contains("run scripts/setup.sh"));
    }

    #[test]
    fn only_a_panic_before_the_guest_init_boots_again() {
        let early = "[    1.85] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[    1.86] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert!(kernel_panicked_before_init(early));
        let late = format!("{GUEST_STARTED}\n{early}");
        assert!(!kernel_panicked_before_init(&late));
        assert!(!kernel_panicked_before_init(
            "thinbox-initramfs: cannot load 9p.ko\n"
        ));
    }

    #[test]
    fn accel_names_parse() {
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("hvf".parse::<Accel>().is_err());
    }
}
