//! [`DmControl`] on the kernel, through the `devicemapper` crate's ioctls.

use devicemapper::{DevId, DmError, DmFlags, DmName, DmOptions, DM};

use super::{check_dm_name, DmControl, DmInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::table::{DevNum, TargetLine};
use crate::units::Sectors;

/// Device-mapper control through `/dev/mapper/control`.
pub struct RealDm {
    dm: DM,
}

impl std::fmt::Debug for RealDm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RealDm")
    }
}

impl RealDm {
    /// Opens `/dev/mapper/control`. Fails with [`ErrorKind::NotRoot`] for a
    /// non-root caller.
    pub fn new() -> Result<RealDm> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::new(ErrorKind::NotRoot).op("open device-mapper control"));
        }
        if !std::path::Path::new("/dev/mapper/control").exists() {
            return Err(Error::new(ErrorKind::DmUnavailable)
                .op("open device-mapper control")
                .path("/dev/mapper/control"));
        }
        let dm = DM::new()
            .map_err(|e| map_err(e, "/dev/mapper/control").op("open device-mapper control"))?;
        Ok(RealDm { dm })
    }
}

/// Maps a devicemapper error to ours, classifying by errno.
fn map_err(e: DmError, device: &str) -> Error {
    let errno = match &e {
        DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => Some(**errno as i32),
        _ => None,
    };
    let kind = match errno {
        Some(libc::EBUSY) => ErrorKind::Busy {
            device: device.to_owned(),
        },
        Some(libc::ENXIO) | Some(libc::ENODEV) => ErrorKind::NotFound {
            name: device.to_owned(),
        },
        Some(libc::EEXIST) => ErrorKind::NameTaken {
            name: device.to_owned(),
        },
        Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::NotRoot,
        Some(libc::ENOSPC) => ErrorKind::Kernel {
            errno: Some(libc::ENOSPC),
        },
        errno => ErrorKind::Kernel { errno },
    };
    let err = Error::new(kind).device(device);
    match errno {
        Some(n) => err.with_source(std::io::Error::from_raw_os_error(n)),
        None => err.with_source(e),
    }
}

fn dm_name(name: &str) -> Result<&DmName> {
    check_dm_name(name)?;
    DmName::new(name).map_err(|e| map_err(e, name))
}

fn to_info(name: &str, i: &devicemapper::DeviceInfo) -> DmInfo {
    let flags = i.flags();
    DmInfo {
        name: i
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|| name.to_owned()),
        devnum: DevNum {
            major: i.device().major,
            minor: i.device().minor,
        },
        open_count: i.open_count().max(0) as u32,
        suspended: flags.contains(DmFlags::DM_SUSPEND),
        live_table: flags.contains(DmFlags::DM_ACTIVE_PRESENT),
        inactive_table: flags.contains(DmFlags::DM_INACTIVE_PRESENT),
        event_nr: i.event_nr(),
    }
}

fn to_lines(v: Vec<(u64, u64, String, String)>) -> Vec<TargetLine> {
    v.into_iter()
        .map(|(start, length, target_type, params)| TargetLine {
            start: Sectors::new(start),
            length: Sectors::new(length),
            target_type,
            params: params.trim().to_owned(),
        })
        .collect()
}

impl DmControl for RealDm {
    fn create(&self, name: &str) -> Result<DmInfo> {
        let n = dm_name(name)?;
        let i = self
            .dm
            .device_create(n, None, DmOptions::default())
            .map_err(|e| map_err(e, name).op("create dm device"))?;
        Ok(to_info(name, &i))
    }

    fn load(&self, name: &str, table: &[TargetLine]) -> Result<()> {
        let n = dm_name(name)?;
        let t: Vec<(u64, u64, String, String)> = table
            .iter()
            .map(|l| {
                (
                    l.start.get(),
                    l.length.get(),
                    l.target_type.clone(),
                    l.params.clone(),
                )
            })
            .collect();
        self.dm
            .table_load(&DevId::Name(n), &t, DmOptions::default())
            .map_err(|e| map_err(e, name).op("load dm table"))?;
        Ok(())
    }

    fn suspend(&self, name: &str) -> Result<()> {
        let n = dm_name(name)?;
        self.dm
            .device_suspend(
                &DevId::Name(n),
                DmOptions::default().set_flags(DmFlags::DM_SUSPEND),
            )
            .map_err(|e| map_err(e, name).op("suspend dm device"))?;
        Ok(())
    }

    fn resume(&self, name: &str) -> Result<()> {
        let n = dm_name(name)?;
        self.dm
            .device_suspend(&DevId::Name(n), DmOptions::default())
            .map_err(|e| map_err(e, name).op("resume dm device"))?;
        Ok(())
    }

    fn remove(&self, name: &str, deferred: bool) -> Result<()> {
        let n = dm_name(name)?;
        let opts = if deferred {
            DmOptions::default().set_flags(DmFlags::DM_DEFERRED_REMOVE)
        } else {
            DmOptions::default()
        };
        self.dm
            .device_remove(&DevId::Name(n), opts)
            .map_err(|e| map_err(e, name).op("remove dm device"))?;
        Ok(())
    }

    fn message(&self, name: &str, msg: &str) -> Result<Option<String>> {
        let n = dm_name(name)?;
        let (_, out) = self
            .dm
            .target_msg(&DevId::Name(n), None, msg)
            .map_err(|e| map_err(e, name).op("send dm message"))?;
        Ok(out)
    }

    fn status(&self, name: &str) -> Result<Vec<TargetLine>> {
        let n = dm_name(name)?;
        let (_, v) = self
            .dm
            // A status read issues no I/O: without NOFLUSH dm-thin commits
            // the pool's metadata first, which waits (in D state) while
            // lvm2 has the metadata LV suspended, as `lvs` does not.
            .table_status(
                &DevId::Name(n),
                DmOptions::default().set_flags(DmFlags::DM_NOFLUSH),
            )
            .map_err(|e| map_err(e, name).op("read dm status"))?;
        Ok(to_lines(v))
    }

    fn table(&self, name: &str) -> Result<Vec<TargetLine>> {
        let n = dm_name(name)?;
        let (_, v) = self
            .dm
            .table_status(
                &DevId::Name(n),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(|e| map_err(e, name).op("read dm table"))?;
        Ok(to_lines(v))
    }

    fn info(&self, name: &str) -> Result<Option<DmInfo>> {
        let n = dm_name(name)?;
        match self.dm.device_info(&DevId::Name(n)) {
            Ok(i) => Ok(Some(to_info(name, &i))),
            Err(e) => {
                let e = map_err(e, name);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e.op("read dm device info"))
                }
            }
        }
    }

    fn list(&self) -> Result<Vec<(String, DevNum)>> {
        let v = self
            .dm
            .list_devices()
            .map_err(|e| map_err(e, "/dev/mapper/control").op("list dm devices"))?;
        Ok(v.into_iter()
            .map(|(n, d, _)| {
                (
                    n.to_string(),
                    DevNum {
                        major: d.major,
                        minor: d.minor,
                    },
                )
            })
            .collect())
    }

    fn target_types(&self) -> Result<Vec<String>> {
        let v = self
            .dm
            .list_versions()
            .map_err(|e| map_err(e, "/dev/mapper/control").op("list dm target types"))?;
        Ok(v.into_iter().map(|(n, ..)| n).collect())
    }

    fn arm_events(&self) -> Result<()> {
        self.dm
            .arm_poll()
            .map_err(|e| map_err(e, "/dev/mapper/control").op("arm dm events"))?;
        Ok(())
    }

    fn wait_events(&self, timeout: std::time::Duration) -> Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.dm.file().as_fd(), PollFlags::POLLIN)];
        let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, t) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(Error::new(ErrorKind::Kernel {
                errno: Some(e as i32),
            })
            .op("wait for dm events")
            .with_source(std::io::Error::from(e))),
        }
    }
}
