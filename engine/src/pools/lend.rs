//! Pools lent to another engine, as container-storage-setup did for
//! Docker: thinbox makes and keeps the pool (monitor, extend, check),
//! containerd's devmapper snapshotter or Docker's devicemapper driver
//! makes the thin devices in it. A hand-over records the engine in the
//! pool's record and in thinpool's store ([`thinpool::pool::Pool::lend`]),
//! and renders that engine's configuration for the pool, merged with
//! `--write` into its config file: `/etc/containerd/config.toml` through
//! `toml_edit` (comments, order and every other key kept) or
//! `/etc/docker/daemon.json` (other keys and storage options kept), the
//! file as it was copied beside it first.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Pools, RecordState};
use crate::error::{Error, ErrorKind, Result};

/// The engine a pool is lent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LentTo {
    /// containerd's devmapper snapshotter.
    Containerd,
    /// Docker's devicemapper storage driver (Docker before 25).
    Docker,
}

impl LentTo {
    /// The name thinbox uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            LentTo::Containerd => "containerd",
            LentTo::Docker => "docker",
        }
    }

    /// The engine's configuration file.
    pub fn default_config_file(self) -> PathBuf {
        PathBuf::from(match self {
            LentTo::Containerd => "/etc/containerd/config.toml",
            LentTo::Docker => "/etc/docker/daemon.json",
        })
    }
}

impl std::fmt::Display for LentTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LentTo {
    type Err = Error;
    fn from_str(s: &str) -> Result<LentTo> {
        match s {
            "containerd" => Ok(LentTo::Containerd),
            "docker" => Ok(LentTo::Docker),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("engine {s:?} is not one thinbox lends pools to: use containerd or docker"),
            )),
        }
    }
}

/// What goes into the engine's configuration besides the pool's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// containerd: `root_path` of the snapshotter's metadata.
    pub root_path: PathBuf,
    /// containerd: `base_image_size`, the size of every snapshot.
    pub base_size: kernfmt::Bytes,
    /// containerd: `fs_type` (`ext4` or `xfs`).
    pub fs: String,
    /// containerd: `discard_blocks` (give removed snapshots' blocks back).
    pub discard_blocks: bool,
    /// containerd: `async_remove`.
    pub async_remove: bool,
    /// The engine's config file to merge into.
    pub config_file: Option<PathBuf>,
    /// Merge into the config file (otherwise only render).
    pub write: bool,
}

impl Default for EngineSettings {
    fn default() -> EngineSettings {
        EngineSettings {
            root_path: PathBuf::from("/var/lib/containerd/io.containerd.snapshotter.v1.devmapper"),
            base_size: kernfmt::Bytes::gib(10),
            fs: "ext4".to_owned(),
            discard_blocks: true,
            async_remove: false,
            config_file: None,
            write: false,
        }
    }
}

/// What a hand-over did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandOver {
    /// The pool.
    pub pool: String,
    /// Who has it now (`None`: thinbox itself).
    pub lent_to: Option<LentTo>,
    /// The dm name the engine is configured with.
    pub dm_name: String,
    /// The engine's configuration for the pool (a snippet).
    pub config: Option<String>,
    /// The config file it is (or would be) merged into.
    pub config_file: Option<PathBuf>,
    /// Whether the file was changed.
    pub written: bool,
    /// The copy of the file as it was, when one was made.
    pub backup: Option<PathBuf>,
}

/// `base_image_size` as containerd reads it (go-units: binary units).
fn go_size(b: kernfmt::Bytes) -> String {
    let n = b.0;
    for (unit, shift) in [("TB", 40), ("GB", 30), ("MB", 20), ("KB", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}")
}

/// The devmapper snapshotter's table in containerd's config: version 2
/// and 3 name plugins by their full id, version 1 (a file without
/// `version`) by the short one.
fn devmapper_table(doc: &toml_edit::DocumentMut) -> &'static str {
    match doc.get("version").and_then(|v| v.as_integer()) {
        Some(v) if v >= 2 => "io.containerd.snapshotter.v1.devmapper",
        _ if doc.is_empty() => "io.containerd.snapshotter.v1.devmapper",
        _ => "devmapper",
    }
}

/// `existing` (containerd's config.toml, maybe empty) with the devmapper
/// snapshotter set up for pool `dm_name`; every other key, comment and
/// table left as it was.
pub fn merge_containerd(existing: &str, dm_name: &str, s: &EngineSettings) -> Result<String> {
    use toml_edit::{value, DocumentMut, Item, Table};
    let mut doc: DocumentMut = existing.parse().map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "containerd's config is not valid TOML ({e}): fix it, or write the snippet by hand"
            ),
        )
    })?;
    let key = devmapper_table(&doc);
    if doc.is_empty() {
        doc["version"] = value(2);
    }
    let plugins = doc.entry("plugins").or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    let plugins = plugins.as_table_like_mut().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            "containerd's config has a `plugins` key that is not a table: fix it".to_owned(),
        )
    })?;
    let dm = plugins
        .entry(key)
        .or_insert(Item::Table(Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("containerd's config has a plugins.{key:?} that is not a table: fix it"),
            )
        })?;
    dm.insert("pool_name", value(dm_name));
    dm.insert("root_path", value(s.root_path.display().to_string()));
    dm.insert("base_image_size", value(go_size(s.base_size)));
    dm.insert("fs_type", value(s.fs.as_str()));
    dm.insert("discard_blocks", value(s.discard_blocks));
    dm.insert("async_remove", value(s.async_remove));
    Ok(doc.to_string())
}

/// `existing` (Docker's daemon.json, maybe empty) with the devicemapper
/// driver on pool `/dev/mapper/DM_NAME`; other keys and storage options
/// kept in their order.
pub fn merge_docker(existing: &str, dm_name: &str) -> Result<String> {
    use serde_json::Value;
    let bad = |why: String| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("Docker's daemon.json {why}: fix it, or write the settings by hand"),
        )
    };
    let mut doc: Value = if existing.trim().is_empty() {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_str(existing).map_err(|e| bad(format!("is not valid JSON ({e})")))?
    };
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| bad("is not a JSON object".to_owned()))?;
    obj.insert("storage-driver".to_owned(), Value::from("devicemapper"));
    let opts = obj
        .entry("storage-opts")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| bad("has a storage-opts that is not a list".to_owned()))?;
    let ours = [
        ("dm.thinpooldev", format!("/dev/mapper/{dm_name}")),
        ("dm.use_deferred_removal", "true".to_owned()),
        ("dm.use_deferred_deletion", "true".to_owned()),
    ];
    for (k, v) in ours {
        let line = format!("{k}={v}");
        let prefix = format!("{k}=");
        match opts
            .iter_mut()
            .find(|o| o.as_str().is_some_and(|s| s.starts_with(&prefix)))
        {
            Some(o) => *o = Value::from(line),
            None => opts.push(Value::from(line)),
        }
    }
    let mut text = serde_json::to_string_pretty(&doc).expect("a JSON value encodes");
    text.push('\n');
    Ok(text)
}

/// Merges into `file` (or renders, when `write` is off): returns the
/// snippet for the human, and whether and where the file was backed up
/// and written. An unchanged file is not written.
fn apply(
    to: LentTo,
    dm_name: &str,
    s: &EngineSettings,
) -> Result<(String, PathBuf, bool, Option<PathBuf>)> {
    let file = s
        .config_file
        .clone()
        .unwrap_or_else(|| to.default_config_file());
    let merge = |text: &str| match to {
        LentTo::Containerd => merge_containerd(text, dm_name, s),
        LentTo::Docker => merge_docker(text, dm_name),
    };
    let snippet = match to {
        // The table alone, as a user would paste it.
        LentTo::Containerd => merge("version = 2\n")?,
        LentTo::Docker => merge("")?,
    };
    if !s.write {
        return Ok((snippet, file, false, None));
    }
    let existing = match std::fs::read_to_string(&file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("cannot read", &file, e)),
    };
    let merged = merge(existing.as_deref().unwrap_or(""))?;
    if existing.as_deref() == Some(merged.as_str()) {
        return Ok((snippet, file, false, None));
    }
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
    }
    let backup = match &existing {
        Some(old) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let b = backup_path(&file, stamp);
            std::fs::write(&b, old).map_err(|e| Error::io("cannot back up to", &b, e))?;
            Some(b)
        }
        None => None,
    };
    let mode = std::fs::metadata(&file).ok().map(|m| m.permissions());
    crate::state::write_atomic(&file, &merged)?;
    if let Some(m) = mode {
        let _ = std::fs::set_permissions(&file, m);
    }
    Ok((snippet, file, true, backup))
}

fn backup_path(file: &Path, stamp: u64) -> PathBuf {
    let name = file
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    file.with_file_name(format!("{name}.thinbox-{stamp}.bak"))
}

impl Pools {
    /// Lends pool `name` to `to` (or takes it back for thinbox, `None`),
    /// and renders (with `settings.write`, merges) the engine's config.
    /// Lending is refused while thinbox has thin devices in the pool;
    /// taking back while the pool holds any. An adopted pool is lent too:
    /// thinbox then only reports on it.
    pub fn hand_over(
        &self,
        name: &str,
        to: Option<LentTo>,
        settings: &EngineSettings,
    ) -> Result<HandOver> {
        let mut open = self.open_pool(name)?;
        match to {
            Some(t) => open.pool.lend(t.as_str())?,
            None => open.pool.take_back()?,
        }
        let mut rec = open.record.clone();
        rec.lent_to = to;
        debug_assert_eq!(rec.state, RecordState::Ready);
        self.save(&rec)?;
        let dm_name = open.pool.name().to_owned();
        let mut out = HandOver {
            pool: name.to_owned(),
            lent_to: to,
            dm_name: dm_name.clone(),
            config: None,
            config_file: None,
            written: false,
            backup: None,
        };
        if let Some(t) = to {
            let (snippet, file, written, backup) = apply(t, &dm_name, settings)?;
            out.config = Some(snippet);
            out.config_file = Some(file);
            out.written = written;
            out.backup = backup;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERD: &str = r#"# the node's containerd
version = 2
root = "/var/lib/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"

[plugins."io.containerd.snapshotter.v1.devmapper"]
  pool_name = "old-pool"
  # kept: an option thinbox does not set
  fs_options = "-E nodiscard"
"#;

    #[test]
    fn containerd_config_keeps_every_other_key() {
        let s = EngineSettings {
            base_size: kernfmt::Bytes::mib(512),
            ..EngineSettings::default()
        };
        let out = merge_containerd(CONTAINERD, "vg-pool", &s).unwrap();
        let v: toml::Value = toml::from_str(&out).unwrap();
        let dm = &v["plugins"]["io.containerd.snapshotter.v1.devmapper"];
        assert_eq!(dm["pool_name"].as_str(), Some("vg-pool"));
        assert_eq!(dm["base_image_size"].as_str(), Some("512MB"));
        assert_eq!(dm["fs_type"].as_str(), Some("ext4"));
        assert_eq!(dm["discard_blocks"].as_bool(), Some(true));
        assert_eq!(dm["async_remove"].as_bool(), Some(false));
        assert_eq!(dm["fs_options"].as_str(), Some("-E nodiscard"));
        assert_eq!(
            dm["root_path"].as_str(),
            Some("/var/lib/containerd/io.containerd.snapshotter.v1.devmapper")
        );
        assert_eq!(
            v["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"].as_str(),
            Some("registry.k8s.io/pause:3.9")
        );
        assert_eq!(
            v["grpc"]["address"].as_str(),
            Some("/run/containerd/containerd.sock")
        );
        assert!(
            out.starts_with("# the node's containerd\nversion = 2\n"),
            "{out}"
        );
        assert!(
            out.contains("# kept: an option thinbox does not set"),
            "{out}"
        );
        assert!(!out.contains("old-pool"), "{out}");
        // Merging again changes nothing.
        assert_eq!(merge_containerd(&out, "vg-pool", &s).unwrap(), out);
    }

    #[test]
    fn containerd_config_versions() {
        let s = EngineSettings::default();
        let fresh = merge_containerd("", "p", &s).unwrap();
        let v: toml::Value = toml::from_str(&fresh).unwrap();
        assert_eq!(v["version"].as_integer(), Some(2));
        assert_eq!(
            v["plugins"]["io.containerd.snapshotter.v1.devmapper"]["base_image_size"].as_str(),
            Some("10GB")
        );
        // A file without `version` is version 1: plugins by short id.
        let v1 = merge_containerd("root = \"/srv/containerd\"\n", "p", &s).unwrap();
        let v: toml::Value = toml::from_str(&v1).unwrap();
        assert_eq!(v["plugins"]["devmapper"]["pool_name"].as_str(), Some("p"));
        assert!(v.get("version").is_none());
        let err = merge_containerd("plugins = 3\n", "p", &s).unwrap_err();
        assert!(err.to_string().contains("not a table"), "{err}");
        let err = merge_containerd("[[[", "p", &s).unwrap_err();
        assert!(err.to_string().contains("not valid TOML"), "{err}");
    }

    #[test]
    fn docker_config_keeps_other_keys_and_options() {
        let old = r#"{"log-driver": "journald", "storage-driver": "overlay2",
            "storage-opts": ["dm.basesize=20G", "dm.thinpooldev=/dev/mapper/old"], "debug": true}"#;
        let out = merge_docker(old, "docker-thinpool").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["storage-driver"], "devicemapper");
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(v["debug"], true);
        assert_eq!(
            v["storage-opts"],
            serde_json::json!([
                "dm.basesize=20G",
                "dm.thinpooldev=/dev/mapper/docker-thinpool",
                "dm.use_deferred_removal=true",
                "dm.use_deferred_deletion=true"
            ])
        );
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["log-driver", "storage-driver", "storage-opts", "debug"]
        );
        assert_eq!(merge_docker(&out, "docker-thinpool").unwrap(), out);
        assert!(merge_docker("[1]", "p").is_err());
        assert!(merge_docker("", "p")
            .unwrap()
            .contains("dm.thinpooldev=/dev/mapper/p"));
    }

    #[test]
    fn writes_keep_a_backup_and_skip_no_ops() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("etc/containerd/config.toml");
        let mut s = EngineSettings {
            config_file: Some(file.clone()),
            ..EngineSettings::default()
        };
        let (_, f, written, backup) = apply(LentTo::Containerd, "p", &s).unwrap();
        assert!(!written && backup.is_none() && !f.exists(), "render only");
        s.write = true;
        let (_, _, written, backup) = apply(LentTo::Containerd, "p", &s).unwrap();
        assert!(
            written && backup.is_none(),
            "a new file has nothing to back up"
        );
        let first = std::fs::read_to_string(&file).unwrap();
        let (_, _, written, _) = apply(LentTo::Containerd, "p", &s).unwrap();
        assert!(!written, "unchanged");
        let (_, _, written, backup) = apply(LentTo::Containerd, "q", &s).unwrap();
        assert!(written);
        assert_eq!(std::fs::read_to_string(backup.unwrap()).unwrap(), first);
        assert!(std::fs::read_to_string(&file)
            .unwrap()
            .contains("pool_name = \"q\""));
    }
}
