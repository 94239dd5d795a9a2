//! Snapshots made for other clients of the root (containerd through
//! `thinbox serve`), kept apart from the CLI's own.
//!
//! containerd's keys (its metadata store names them `NAMESPACE/ID/KEY`, its
//! test suite by absolute paths) are stored with the prefix
//! [`CONTAINERD_PREFIX`], so they can never collide with a key the CLI
//! made: the CLI refuses keys that start with [`RESERVED`]. `thinbox
//! snapshot ls` shows both, each marked with who made it.

use snapshotter::{Key, Labels};

use crate::error::{Error, ErrorKind, Result};

/// The first character of every key reserved for a client (the
/// snapshotter undoes a client's cut commits: see
/// [`snapshotter::types::CLIENT_KEY_PREFIX`]).
pub const RESERVED: char = snapshotter::types::CLIENT_KEY_PREFIX;

/// The prefix of the keys stored for containerd.
pub const CONTAINERD_PREFIX: &str = "@containerd/";

/// Who made a snapshot, from its stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The `thinbox` CLI (or the engine itself: images, containers).
    Thinbox,
    /// containerd, through `thinbox serve`.
    Containerd,
}

impl Client {
    /// Who made the snapshot stored as `stored`.
    pub fn of(stored: &str) -> Client {
        if stored.starts_with(CONTAINERD_PREFIX) {
            Client::Containerd
        } else {
            Client::Thinbox
        }
    }

    /// The client's name, as `snapshot ls` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Client::Thinbox => "thinbox",
            Client::Containerd => "containerd",
        }
    }
}

/// The stored key of containerd's key `key`: refused when empty, with a
/// NUL or another control character, or with a `..` path component.
pub fn containerd_key(key: &str) -> Result<Key> {
    if key.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "key must not be empty",
        ));
    }
    if key.split('/').any(|c| c == "..") {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("key {key:?} has a \"..\" component: give a key without one"),
        ));
    }
    Key::new(format!("{CONTAINERD_PREFIX}{key}")).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("key {key:?}: {e}; give a key without control characters"),
        )
    })
}

/// containerd's key of the stored key `stored`, if containerd made it.
pub fn containerd_view(stored: &str) -> Option<&str> {
    stored.strip_prefix(CONTAINERD_PREFIX)
}

/// Refuses labels a client sent with a NUL or another control character
/// in a name or value.
pub fn check_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.chars().chain(v.chars()).any(|c| c == '\0') {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "label {:?}: names and values must not hold NUL",
                    k.escape_debug()
                ),
            ));
        }
    }
    snapshotter::types::validate_labels(labels).map_err(Error::from)
}

/// Refuses a key the CLI was given that is reserved for a client.
pub fn check_cli_key(key: &str) -> Result<()> {
    if key.starts_with(RESERVED) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "key {key:?}: keys starting with {RESERVED:?} are kept for containerd's snapshots \
                 (made through `thinbox serve`); choose another key"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_keys_are_prefixed_and_read_back() {
        let k = containerd_key("default/3/sha256:ab").unwrap();
        assert_eq!(k.as_str(), "@containerd/default/3/sha256:ab");
        assert_eq!(containerd_view(k.as_str()), Some("default/3/sha256:ab"));
        assert_eq!(Client::of(k.as_str()), Client::Containerd);
        assert_eq!(Client::of("default/3/sha256:ab"), Client::Thinbox);
        assert_eq!(containerd_view("mine"), None);
        // containerd's test suite keys by absolute path.
        let abs = containerd_key("/tmp/work/preparing").unwrap();
        assert_eq!(containerd_view(abs.as_str()), Some("/tmp/work/preparing"));
    }

    #[test]
    fn bad_keys_and_labels_are_refused() {
        for bad in ["a/../b", "..", "a\0b", "", "x\n"] {
            let e = containerd_key(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}");
        }
        assert!(containerd_key("a..b").is_ok());
        let mut l = Labels::new();
        l.insert("ok".into(), "fine".into());
        check_labels(&l).unwrap();
        l.insert("bad\0".into(), "v".into());
        assert_eq!(
            check_labels(&l).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        let mut l = Labels::new();
        l.insert("k".into(), "v\0".into());
        assert_eq!(
            check_labels(&l).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        assert!(check_cli_key("@containerd/x").is_err());
        assert!(check_cli_key("mine").is_ok());
    }
}
