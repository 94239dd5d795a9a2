//! The vocabulary: keys and names, kinds, snapshot info, usage and
//! capabilities.
//!
//! containerd's model: an *active* snapshot (writable) and a *view*
//! (read-only) are addressed by their **key**; `commit` turns an active
//! snapshot into a *committed* one addressed by its **name**. Keys and names
//! share one namespace: a name cannot be used as a key while it exists.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::error::{Error, ErrorKind, Result};

/// Longest key or name accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Longest label name plus value accepted, in bytes (containerd's limit).
pub const MAX_LABEL_LEN: usize = 4096;

fn validate(s: &str, what: &'static str) -> Result<()> {
    let bad = |d: &str| {
        Err(Error::new(ErrorKind::InvalidArgument, "parse")
            .key(s.escape_debug())
            .detail(format!("{what} {d}")))
    };
    if s.is_empty() {
        return bad("must not be empty");
    }
    if s.len() > MAX_KEY_LEN {
        return bad("must be at most 4096 bytes");
    }
    if s.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    Ok(())
}

/// The key of an active snapshot or a view (also used to look up any
/// snapshot, committed ones included, since keys and names share a
/// namespace). Non-empty, at most [`MAX_KEY_LEN`] bytes, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Validates `s` as a key.
    pub fn new(s: impl Into<String>) -> Result<Key> {
        let s = s.into();
        validate(&s, "key")?;
        Ok(Key(s))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Key {
    type Err = Error;
    fn from_str(s: &str) -> Result<Key> {
        Key::new(s)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Key> for Key {
    fn as_ref(&self) -> &Key {
        self
    }
}

/// The name of a committed snapshot. Validated like a [`Key`]; every name is
/// also a key ([`Name::as_key`]) for `stat`, `remove` and friends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Key);

impl Name {
    /// Validates `s` as a name.
    pub fn new(s: impl Into<String>) -> Result<Name> {
        let s = s.into();
        validate(&s, "name")?;
        Ok(Name(Key(s)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The same string as a lookup key.
    pub fn as_key(&self) -> &Key {
        &self.0
    }
}

impl AsRef<Key> for Name {
    fn as_ref(&self) -> &Key {
        &self.0
    }
}

impl FromStr for Name {
    type Err = Error;
    fn from_str(s: &str) -> Result<Name> {
        Name::new(s)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Read-only, made by `view`; cannot be committed or be a parent.
    View,
    /// Writable, made by `prepare`; becomes committed by `commit`.
    Active,
    /// Immutable; the only kind that can be a parent.
    Committed,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        })
    }
}

impl FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Kind> {
        match s {
            "view" => Ok(Kind::View),
            "active" => Ok(Kind::Active),
            "committed" => Ok(Kind::Committed),
            other => Err(Error::new(ErrorKind::InvalidArgument, "parse")
                .key(other)
                .detail("kind must be view, active or committed")),
        }
    }
}

/// The first character of the keys of a remote client's snapshots
/// (`thinbox serve` stores containerd's as `@containerd/KEY`). Such a
/// client saw a cut commit fail, so recovery undoes it rather than
/// finishing it; local callers never use it.
pub const CLIENT_KEY_PREFIX: char = '@';

/// Whether `key` is a remote client's (see [`CLIENT_KEY_PREFIX`]).
pub fn is_client_key(key: &str) -> bool {
    key.starts_with(CLIENT_KEY_PREFIX)
}

/// Labels: free-form metadata attached to a snapshot.
pub type Labels = BTreeMap<String, String>;

/// Checks every label against [`MAX_LABEL_LEN`] and forbids empty names.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() || k.len() + v.len() > MAX_LABEL_LEN {
            return Err(Error::new(ErrorKind::InvalidArgument, "label")
                .key(k)
                .detail("label names must be non-empty and name plus value at most 4096 bytes"));
        }
    }
    Ok(())
}

/// The label that sizes a new active snapshot: its value is the most it may
/// hold, in bytes, either a plain number or one with a binary suffix (`K`,
/// `M`, `G`, `T`, optionally followed by `iB`), for example `536870912` or
/// `512M`. Backends whose [`Capabilities::max_size_label`] is set (dm-thin)
/// grow the snapshot's device and filesystem to that size when it is
/// prepared (rounded up to the backend's allocation unit; a size smaller
/// than the parent's is refused), so the device bounds it. Backends whose
/// [`Capabilities::bounds_size`] is set without it limit what the snapshot
/// references instead (btrfs: a qgroup limit, which needs quotas on; zfs:
/// `refquota`), so writing past it fails with EDQUOT or ENOSPC. Other
/// backends, and views, refuse the label. containerd's devmapper
/// snapshotter has only a snapshotter-wide `base_image_size`; this label is
/// the per-snapshot form (Docker's `--storage-opt size=`).
pub const MAX_SIZE_LABEL: &str = "thinbox.io/max-size";

/// containerd's name for [`MAX_SIZE_LABEL`] (containerd#14070), honoured
/// the same way, so a CRI client's label sizes a thinbox snapshot.
pub const CONTAINERD_MAX_SIZE_LABEL: &str = "containerd.io/snapshot/max-size";

/// The size label on `labels` and its value: [`MAX_SIZE_LABEL`] or
/// [`CONTAINERD_MAX_SIZE_LABEL`]; both at once must agree.
pub fn size_label(labels: &Labels) -> Result<Option<(&'static str, &str)>> {
    let ours = labels.get(MAX_SIZE_LABEL).map(String::as_str);
    let theirs = labels.get(CONTAINERD_MAX_SIZE_LABEL).map(String::as_str);
    match (ours, theirs) {
        (Some(a), Some(b)) if a != b => Err(Error::new(ErrorKind::InvalidArgument, "label")
            .key(MAX_SIZE_LABEL)
            .detail(format!(
                "{MAX_SIZE_LABEL}={a:?} and {CONTAINERD_MAX_SIZE_LABEL}={b:?} disagree; give one"
            ))),
        (Some(a), _) => Ok(Some((MAX_SIZE_LABEL, a))),
        (None, Some(b)) => Ok(Some((CONTAINERD_MAX_SIZE_LABEL, b))),
        (None, None) => Ok(None),
    }
}

/// Parses a size as [`MAX_SIZE_LABEL`] takes it.
pub fn parse_size(value: &str) -> Result<Bytes> {
    parse_size_label(MAX_SIZE_LABEL, value)
}

/// Parses the value of size label `label` (named in the error).
fn parse_size_label(label: &str, value: &str) -> Result<Bytes> {
    let bad = |why: &str| {
        Err(Error::new(ErrorKind::InvalidArgument, "label")
            .key(label)
            .detail(format!(
                "{label}={value:?}: {why}; give bytes, e.g. 536870912 or 512M"
            )))
    };
    // The label's form is stricter than what people type at the CLI: digits
    // and an optional upper-case binary suffix, no spaces; the value itself
    // is parsed by the one size parser.
    let digits = value.len() - value.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return bad("not a size");
    }
    if !matches!(
        &value[digits..],
        "" | "K" | "KiB" | "M" | "MiB" | "G" | "GiB" | "T" | "TiB"
    ) {
        return bad("unknown suffix");
    }
    match value.parse::<Bytes>() {
        Ok(Bytes(0)) => bad("must not be zero"),
        Ok(b) => Ok(b),
        Err(_) => bad("too large"),
    }
}

/// The bound [`MAX_SIZE_LABEL`] puts on a new snapshot of `kind`, for
/// backends that limit rather than grow; refused on views, which are never
/// written.
pub fn size_bound(key: &str, kind: Kind, labels: &Labels) -> Result<Option<Bytes>> {
    let Some(bytes) = max_size(labels)? else {
        return Ok(None);
    };
    let (label, value) = size_label(labels)?.unwrap_or((MAX_SIZE_LABEL, ""));
    if kind == Kind::View {
        return Err(Error::new(ErrorKind::InvalidArgument, "create")
            .key(key)
            .detail(format!(
                "{label}={value:?}: views are read-only and need no size; prepare instead"
            )));
    }
    Ok(Some(bytes))
}

/// The size [`MAX_SIZE_LABEL`] (or containerd's
/// [`CONTAINERD_MAX_SIZE_LABEL`]) asks for, if the label is there.
pub fn max_size(labels: &Labels) -> Result<Option<Bytes>> {
    size_label(labels)?
        .map(|(label, v)| parse_size_label(label, v))
        .transpose()
}

/// What `stat` and `walk` report about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The key (active, view) or name (committed).
    pub name: String,
    /// The committed parent, if any.
    pub parent: Option<String>,
    /// View, active or committed.
    pub kind: Kind,
    /// User labels.
    pub labels: Labels,
    /// When the snapshot was created (for committed ones: committed).
    pub created: SystemTime,
    /// When it was last changed (equal to `created` until `update`).
    pub updated: SystemTime,
}

pub use kernfmt::Bytes;

/// Space a snapshot uses on its own, excluding what its parents hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of data.
    pub size: Bytes,
    /// Number of inodes.
    pub inodes: u64,
}

/// What a backend can do. Tests and callers branch on these, never on a
/// backend's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Copy-on-write happens below the filesystem (a block device per
    /// snapshot, as with dm-thin); mounts carry a filesystem type, not a bind.
    pub block_level: bool,
    /// `usage` is exact (from the filesystem or pool) rather than estimated
    /// by walking and comparing trees.
    pub exact_usage: bool,
    /// The [`MAX_SIZE_LABEL`] label on `prepare` grows the new snapshot's
    /// device and filesystem; without this, the label is refused.
    pub max_size_label: bool,
    /// A directory that came from a parent layer can be renamed with
    /// rename(2) in a child (false for overlayfs without `redirect_dir`,
    /// which answers EXDEV so tools fall back to copying).
    pub rename_lower_dirs: bool,
    /// Committing is a metadata change only (no copy or snapshot of data).
    pub cheap_commit: bool,
    /// A snapshot prepared with [`MAX_SIZE_LABEL`] cannot hold more than
    /// it says (dm-thin: its device; btrfs with quotas: a qgroup limit;
    /// zfs: `refquota`); without this the label is refused, and a
    /// snapshot can fill the filesystem it shares with others.
    pub bounds_size: bool,
    /// `usage` counts inodes (zfs reports bytes only).
    pub counts_inodes: bool,
    /// [`crate::Snapshotter::changed_paths`] lists what changed against the
    /// parent (btrfs send), so a diff visits only that instead of
    /// comparing whole trees.
    pub lists_changes: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerds_size_label_sizes_as_ours_does() {
        let mut l = Labels::new();
        l.insert(CONTAINERD_MAX_SIZE_LABEL.into(), "64M".into());
        assert_eq!(max_size(&l).unwrap(), Some(Bytes(64 << 20)));
        // A bad value names containerd's label.
        l.insert(CONTAINERD_MAX_SIZE_LABEL.into(), "lots".into());
        let e = max_size(&l).unwrap_err().to_string();
        assert!(e.contains(CONTAINERD_MAX_SIZE_LABEL), "{e}");
        // Both at once: they must agree.
        l.insert(CONTAINERD_MAX_SIZE_LABEL.into(), "64M".into());
        l.insert(MAX_SIZE_LABEL.into(), "64M".into());
        assert_eq!(max_size(&l).unwrap(), Some(Bytes(64 << 20)));
        l.insert(MAX_SIZE_LABEL.into(), "32M".into());
        let e = max_size(&l).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("disagree"), "{e}");
        // Views refuse either.
        let mut v = Labels::new();
        v.insert(CONTAINERD_MAX_SIZE_LABEL.into(), "64M".into());
        let e = size_bound("k", Kind::View, &v).unwrap_err().to_string();
        assert!(e.contains(CONTAINERD_MAX_SIZE_LABEL), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("536870912").unwrap(), Bytes(512 << 20));
        assert_eq!(parse_size("512M").unwrap(), Bytes(512 << 20));
        assert_eq!(parse_size("512MiB").unwrap(), Bytes(512 << 20));
        assert_eq!(parse_size("1G").unwrap(), Bytes(1 << 30));
        assert_eq!(parse_size("2T").unwrap(), Bytes(2 << 40));
        assert_eq!(parse_size("4K").unwrap(), Bytes(4096));
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "12 M",
            "1g",
            "0",
            "99999999999999999999",
            "20000000T",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let mut l = Labels::new();
        assert_eq!(max_size(&l).unwrap(), None);
        l.insert(MAX_SIZE_LABEL.into(), "1G".into());
        assert_eq!(max_size(&l).unwrap(), Some(Bytes(1 << 30)));
    }
}
