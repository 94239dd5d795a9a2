//! The loop-device seam. [`RealLoop`] uses `/dev/loop-control` through the
//! `loopdev-3` crate, enables direct I/O where the backing filesystem allows
//! it (`LOOP_SET_DIRECT_IO`, kernel 4.4+; tmpfs refuses it), retries when a
//! free device is taken by someone else between lookup and attach (EBUSY),
//! and finds existing attachments through sysfs (`/sys/block/loopN/loop/backing_file`).
//! [`FakeLoop`] keeps attachments in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::table::DevNum;

/// An attached loop device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// Its device number.
    pub devnum: DevNum,
    /// Whether direct I/O is on.
    pub direct_io: bool,
}

/// Loop-device control.
pub trait LoopControl: Send + Sync + fmt::Debug {
    /// Attaches `file` to a free loop device; tries direct I/O when asked.
    fn attach(&self, file: &Path, direct_io: bool) -> Result<LoopInfo>;
    /// The loop device `file` is attached to, if any.
    fn find(&self, file: &Path) -> Result<Option<LoopInfo>>;
    /// Detaches a loop device.
    fn detach(&self, dev: &Path) -> Result<()>;
    /// Re-reads the backing file's size (after the file grew).
    fn refresh_capacity(&self, dev: &Path) -> Result<()>;
}

impl<T: LoopControl + ?Sized> LoopControl for Arc<T> {
    fn attach(&self, file: &Path, direct_io: bool) -> Result<LoopInfo> {
        (**self).attach(file, direct_io)
    }
    fn find(&self, file: &Path) -> Result<Option<LoopInfo>> {
        (**self).find(file)
    }
    fn detach(&self, dev: &Path) -> Result<()> {
        (**self).detach(dev)
    }
    fn refresh_capacity(&self, dev: &Path) -> Result<()> {
        (**self).refresh_capacity(dev)
    }
}

/// Loop control on the kernel.
#[derive(Debug, Default)]
pub struct RealLoop;

const ATTACH_RETRIES: u32 = 10;

fn loop_err(e: std::io::Error, path: &Path, op: &'static str) -> Error {
    let kind = match e.raw_os_error() {
        Some(libc::EBUSY) => ErrorKind::Busy {
            device: path.display().to_string(),
        },
        Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::NotRoot,
        Some(libc::ENOENT) | Some(libc::ENXIO) => ErrorKind::NotFound {
            name: path.display().to_string(),
        },
        _ => ErrorKind::Loop,
    };
    Error::new(kind).op(op).path(path).with_source(e)
}

pub(crate) fn devnum_of(dev: &Path) -> Result<DevNum> {
    let m = std::fs::metadata(dev).map_err(|e| Error::io(e, dev))?;
    let rdev = m.rdev();
    Ok(DevNum {
        major: libc::major(rdev),
        minor: libc::minor(rdev),
    })
}

impl LoopControl for RealLoop {
    fn attach(&self, file: &Path, direct_io: bool) -> Result<LoopInfo> {
        let op = "attach loop device";
        let ctl = loopdev::LoopControl::open()
            .map_err(|e| loop_err(e, Path::new("/dev/loop-control"), op))?;
        let mut attempt = 0;
        let dev = loop {
            let dev = ctl
                .next_free()
                .map_err(|e| loop_err(e, Path::new("/dev/loop-control"), op))?;
            match dev.attach_file(file) {
                Ok(()) => break dev,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < ATTACH_RETRIES => {
                    // Another process took this device between next_free and attach.
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 * u64::from(attempt)));
                }
                Err(e) => return Err(loop_err(e, file, op)),
            }
        };
        let path = dev
            .path()
            .ok_or_else(|| Error::new(ErrorKind::Loop).op(op).path(file))?;
        let direct = direct_io && dev.set_direct_io(true).is_ok();
        Ok(LoopInfo {
            devnum: devnum_of(&path)?,
            path,
            direct_io: direct,
        })
    }

    fn find(&self, file: &Path) -> Result<Option<LoopInfo>> {
        let want = std::fs::canonicalize(file).map_err(|e| Error::io(e, file))?;
        let Ok(dir) = std::fs::read_dir("/sys/block") else {
            return Ok(None);
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file"))
            else {
                continue;
            };
            if Path::new(backing.trim_end()) != want {
                continue;
            }
            let dio = std::fs::read_to_string(entry.path().join("loop/dio")).unwrap_or_default();
            let path = PathBuf::from(format!("/dev/{name}"));
            return Ok(Some(LoopInfo {
                devnum: devnum_of(&path)?,
                path,
                direct_io: dio.trim() == "1",
            }));
        }
        Ok(None)
    }

    fn detach(&self, dev: &Path) -> Result<()> {
        let op = "detach loop device";
        let d = loopdev::LoopDevice::open(dev).map_err(|e| loop_err(e, dev, op))?;
        let mut attempt = 0;
        loop {
            match d.detach() {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < ATTACH_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
                }
                // Already detached.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(()),
                Err(e) => return Err(loop_err(e, dev, op)),
            }
        }
    }

    fn refresh_capacity(&self, dev: &Path) -> Result<()> {
        let op = "refresh loop device capacity";
        let d = loopdev::LoopDevice::open(dev).map_err(|e| loop_err(e, dev, op))?;
        d.set_capacity().map_err(|e| loop_err(e, dev, op))
    }
}

/// In-memory loop control for unit tests. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeLoop {
    state: Arc<Mutex<BTreeMap<u32, PathBuf>>>,
}

impl FakeLoop {
    /// No attachments.
    pub fn new() -> FakeLoop {
        FakeLoop::default()
    }

    /// Number of attached devices.
    pub fn attached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, PathBuf>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(n: u32) -> LoopInfo {
        LoopInfo {
            path: PathBuf::from(format!("/dev/loop{n}")),
            devnum: DevNum { major: 7, minor: n },
            direct_io: true,
        }
    }
}

impl LoopControl for FakeLoop {
    fn attach(&self, file: &Path, _direct_io: bool) -> Result<LoopInfo> {
        if !file.exists() {
            return Err(Error::new(ErrorKind::NotFound {
                name: file.display().to_string(),
            })
            .op("attach loop device"));
        }
        let mut st = self.lock();
        let n = (0..).find(|n| !st.contains_key(n)).expect("a free number");
        st.insert(n, file.to_owned());
        Ok(Self::info(n))
    }

    fn find(&self, file: &Path) -> Result<Option<LoopInfo>> {
        Ok(self
            .lock()
            .iter()
            .find(|(_, f)| f.as_path() == file)
            .map(|(n, _)| Self::info(*n)))
    }

    fn detach(&self, dev: &Path) -> Result<()> {
        let n: Option<u32> = dev
            .to_str()
            .and_then(|s| s.strip_prefix("/dev/loop"))
            .and_then(|s| s.parse().ok());
        match n {
            Some(n) if self.lock().remove(&n).is_some() => Ok(()),
            _ => Err(Error::new(ErrorKind::NotFound {
                name: dev.display().to_string(),
            })
            .op("detach loop device")),
        }
    }

    fn refresh_capacity(&self, _dev: &Path) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_attach_find_detach() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        std::fs::write(&f, b"").unwrap();
        let l = FakeLoop::new();
        let a = l.attach(&f, true).unwrap();
        assert_eq!(l.find(&f).unwrap(), Some(a.clone()));
        let b = l.attach(&f, true).unwrap();
        assert_ne!(a.path, b.path);
        l.detach(&a.path).unwrap();
        l.detach(&b.path).unwrap();
        assert_eq!(l.find(&f).unwrap(), None);
        assert!(l.detach(&a.path).unwrap_err().is_not_found());
    }
}
