//! The daemon's unix socket: its directory, a stale file left by a killed
//! daemon, and who may connect.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use engine::{Error, ErrorKind, Result};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{chown, Gid};

/// Binds `path`: its directory made (0711), a stale socket replaced, one a
/// live daemon answers on refused; mode 0600, or 0660 owned by `group`.
pub fn bind(path: &Path, group: Option<Gid>) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711));
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::new(
                ErrorKind::InUse,
                format!(
                    "another thinbox serve listens on {}: stop it, or give another --socket",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path).map_err(|e| Error::io("cannot remove stale socket", path, e))?;
    }
    // Made with no access for others from the start, not chmodded after.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(|e| Error::io("cannot listen on", path, e))?;
    if let Some(gid) = group {
        chown(path, None, Some(gid)).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot give {} to group {gid}: {e}", path.display()),
            )
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| Error::io("cannot set the mode of", path, e))?;
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("cannot set up", path, e))?;
    Ok(listener)
}

/// Tells systemd (`Type=notify`) the socket is ready, when started by it:
/// `READY=1` to `$NOTIFY_SOCKET`. Nothing without one.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let sent = match path.to_str().and_then(|p| p.strip_prefix('@')) {
        // An abstract socket (systemd's usual form).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| sock.send_to_addr(b"READY=1", &a))
        }
        None => sock.send_to(b"READY=1", &path),
    };
    if let Err(e) = sent {
        tracing::warn!("cannot tell systemd the daemon is ready: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn binds_private_replaces_stale_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/thinbox.sock");
        let l = bind(&path, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let e = bind(&path, None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InUse);
        assert!(e.to_string().contains("--socket"), "{e}");
        drop(l);
        // The file is left, as after a SIGKILL: the next daemon replaces it.
        assert!(path.exists());
        let _l = bind(&path, Some(nix::unistd::getgid())).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    }

    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify_ready();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 32];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
