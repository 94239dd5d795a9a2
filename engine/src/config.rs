//! Configuration: `/etc/thinbox/config.toml`, overridden by flags.
//!
//! Every key is optional; an absent file means the embedded default (state
//! under `/var/lib/thinbox`, backend chosen on first use). Unknown keys are
//! an error naming the key, so a typo never silently falls back to a
//! default.
//!
//! ```toml
//! root = "/var/lib/thinbox"
//! backend = "auto"            # auto | devmapper | btrfs | zfs | overlay | naive
//!
//! [devmapper]
//! pool_name = "thinbox-pool"  # dm name of the default loopback pool
//! data_size = "100G"          # sparse data file
//! metadata_size = "2G"        # sparse metadata file
//! block_size = "64K"          # 64K..1G, multiple of 64K
//! base_size = "10G"           # virtual size of every snapshot
//! fs = "ext4"                 # ext4 | xfs
//! autoextend_threshold = 80   # percent used that triggers growth
//! autoextend_percent = 20     # grow by this percent
//! free_space_floor = 0        # percent that must stay free for new devices
//! discard_blocks = true       # discard a snapshot's blocks before deleting it
//!
//! [btrfs]
//! path = "/srv/btrfs/thinbox" # an existing btrfs directory, or:
//! image_size = "20G"          # size of the sparse ROOT/btrfs.img
//!
//! [zfs]
//! dataset = "tank/thinbox"
//!
//! [run]
//! size = "10G"                # most a container's root may hold (--size)
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Where the configuration file is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/thinbox/config.toml";
/// The state root unless the configuration or `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/thinbox";

/// Sizes in the configuration: the workspace's one byte-size type, which
/// parses what people write (`20G`, `512MiB`, `64k`, `1T`, a plain number
/// of bytes) and prints in the largest exact binary unit (`20 GiB`).
pub use kernfmt::Bytes;

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Choose on first use: dm-thin when the kernel has it, else loopback btrfs.
    #[default]
    Auto,
    /// A loopback dm-thin pool under ROOT/pools.
    Devmapper,
    /// `[btrfs] path`, or a loopback btrfs filesystem in ROOT/btrfs.img.
    Btrfs,
    /// The ZFS dataset `[zfs] dataset`.
    Zfs,
    /// overlayfs directories under ROOT/snapshots.
    Overlay,
    /// Full copies under ROOT/snapshots (any filesystem; slow).
    Naive,
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Devmapper => "devmapper",
            BackendChoice::Btrfs => "btrfs",
            BackendChoice::Zfs => "zfs",
            BackendChoice::Overlay => "overlay",
            BackendChoice::Naive => "naive",
        })
    }
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<BackendChoice> {
        Ok(match s {
            "auto" => BackendChoice::Auto,
            "devmapper" => BackendChoice::Devmapper,
            "btrfs" => BackendChoice::Btrfs,
            "zfs" => BackendChoice::Zfs,
            "overlay" => BackendChoice::Overlay,
            "naive" => BackendChoice::Naive,
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "backend {other:?} is unknown: use auto, devmapper, btrfs, zfs, overlay or naive"
                    ),
                ))
            }
        })
    }
}

/// `[devmapper]`: the default loopback dm-thin pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevmapperSection {
    /// The pool's dm name (default: derived from the root's directory name).
    pub pool_name: Option<String>,
    /// Data file size.
    pub data_size: Bytes,
    /// Metadata file size.
    pub metadata_size: Bytes,
    /// Data block size.
    pub block_size: Bytes,
    /// Virtual size of the base device and so of every snapshot.
    pub base_size: Bytes,
    /// Filesystem on the base device: ext4 or xfs.
    pub fs: String,
    /// Percent used at which the monitor grows the pool.
    pub autoextend_threshold: u8,
    /// Percent the monitor grows the pool by.
    pub autoextend_percent: u8,
    /// Percent of the pool that must stay free for new thin devices.
    pub free_space_floor: u8,
    /// Discard a snapshot's blocks before deleting it, so a loopback
    /// pool's files shrink (`du`) when snapshots go.
    pub discard_blocks: bool,
}

impl Default for DevmapperSection {
    fn default() -> Self {
        DevmapperSection {
            pool_name: None,
            data_size: Bytes::gib(100),
            metadata_size: Bytes::gib(2),
            block_size: Bytes::kib(64),
            base_size: Bytes::gib(10),
            fs: "ext4".to_owned(),
            autoextend_threshold: 80,
            autoextend_percent: 20,
            free_space_floor: 0,
            discard_blocks: true,
        }
    }
}

impl DevmapperSection {
    /// The filesystem, checked.
    pub fn filesystem(&self) -> Result<thinpool::fs::Filesystem> {
        self.fs.parse().map_err(|_| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("devmapper.fs {:?} is unknown: use ext4 or xfs", self.fs),
            )
        })
    }

    /// The autoextend policy from the thresholds.
    pub fn autoextend(&self) -> Result<thinpool::pool::AutoextendPolicy> {
        if !(1..=100).contains(&self.autoextend_threshold) || self.autoextend_percent == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "devmapper.autoextend_threshold {} / autoextend_percent {}: use a threshold of 1..=100 and a percent above 0",
                    self.autoextend_threshold, self.autoextend_percent
                ),
            ));
        }
        Ok(thinpool::pool::AutoextendPolicy {
            threshold_percent: self.autoextend_threshold,
            extend_percent: self.autoextend_percent,
            ..Default::default()
        })
    }
}

/// `[btrfs]`: an existing btrfs directory, or the loopback image's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BtrfsSection {
    /// An existing directory on btrfs to keep snapshots in.
    pub path: Option<PathBuf>,
    /// Bytes of the sparse ROOT/btrfs.img made when no path is given.
    pub image_size: Bytes,
}

impl Default for BtrfsSection {
    fn default() -> Self {
        BtrfsSection {
            path: None,
            image_size: Bytes::gib(20),
        }
    }
}

/// `[zfs]`: the dataset snapshots live under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZfsSection {
    /// The parent dataset (`pool/path`).
    pub dataset: Option<String>,
}

/// `[run]`: defaults for `thinbox run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// The most a container's root may hold when `--size` is not given
    /// (default [`DEFAULT_ROOT_SIZE`]; on dm-thin the device size,
    /// `devmapper.base_size`, unless set here).
    pub size: Option<Bytes>,
}

/// A container root's size bound when neither `--size` nor `[run] size`
/// says: the dm-thin base size, so one container cannot take all of a
/// shared filesystem on any backend.
pub const DEFAULT_ROOT_SIZE: Bytes = Bytes::gib(10);

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The state root.
    pub root: Option<PathBuf>,
    /// The backend.
    pub backend: BackendChoice,
    /// `[devmapper]`.
    pub devmapper: DevmapperSection,
    /// `[btrfs]`.
    pub btrfs: BtrfsSection,
    /// `[zfs]`.
    pub zfs: ZfsSection,
    /// `[run]`.
    pub run: RunSection,
    /// `[registry]`.
    pub registry: RegistrySection,
    /// `[serve]`.
    pub serve: ServeSection,
}

/// Where `thinbox serve` answers `/metrics` unless told otherwise:
/// loopback only, as node-exporter's peers do.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9437";

/// `[serve]`: the daemon's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    /// `host:port` of the Prometheus endpoint (`/metrics`), or `"off"`.
    pub metrics_address: String,
    /// Whether serve keeps every pool of its root grown, as `thinbox pool
    /// monitor` does (one monitor per pool: a pool another process
    /// monitors is left to it).
    pub monitor_pools: bool,
}

impl Default for ServeSection {
    fn default() -> Self {
        ServeSection {
            metrics_address: DEFAULT_METRICS_ADDRESS.to_owned(),
            monitor_pools: true,
        }
    }
}

/// Parses a metrics address: `host:port` (an IP address; port 0 picks a
/// free one), or `off` for none.
pub fn parse_metrics_address(s: &str) -> Result<Option<std::net::SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "metrics address {s:?} is not IP:PORT: give one such as {DEFAULT_METRICS_ADDRESS} or [::1]:9437, or \"off\""
            ),
        )
    })
}

/// `[registry]`: how `image pull` reaches registries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Hosts (`host:port`) reached over plain http when https fails
    /// (localhost and 127.0.0.0/8 always may be).
    pub insecure: Vec<String>,
    /// Registry → mirror URLs tried in order before it
    /// (`[registry.mirrors]` `"docker.io" = ["https://mirror:5000"]`).
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// Directories with a `HOST/` directory of CA certificates each
    /// (default `/etc/containers/certs.d` and `/etc/docker/certs.d`).
    pub certs_dirs: Option<Vec<PathBuf>>,
    /// Auth files read before podman's and docker's.
    pub auth_files: Vec<PathBuf>,
    /// Layers downloaded at once.
    pub parallel: usize,
    /// Seconds to wait for an answer, or for the next bytes of one.
    pub timeout: u64,
    /// Tries after the first on a refused connection, 429 or 5xx.
    pub retries: u32,
    /// `image push` sends a blob larger than this in PATCH chunks of
    /// this size (one PUT otherwise).
    pub push_chunk_size: Bytes,
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection {
            insecure: Vec::new(),
            mirrors: Default::default(),
            certs_dirs: None,
            auth_files: Vec::new(),
            parallel: 3,
            timeout: 30,
            retries: 3,
            push_chunk_size: Bytes::mib(16),
        }
    }
}

impl Config {
    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "config {}{at}: {msg}: fix or remove it (see docs/design.md for the keys)",
                    origin.display()
                ),
            )
        })?;
        cfg.devmapper.filesystem()?;
        cfg.devmapper.autoextend()?;
        Ok(cfg)
    }

    /// Reads `path`. A missing file is the default configuration when
    /// `path` is [`DEFAULT_CONFIG`], and an error otherwise (a file named
    /// with `--config` must exist).
    pub fn load(path: &Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG) =>
            {
                Ok(Config::default())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "config file {} does not exist: create it or leave out --config",
                    path.display()
                ),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "config file {} is not UTF-8 text: write it as TOML in UTF-8",
                    path.display()
                ),
            )),
            Err(e) => Err(Error::io("cannot read config", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example packages install as /etc/thinbox/config.toml.
    const EXAMPLE: &str = include_str!("../../packaging/config.toml");

    #[test]
    fn the_packaged_example_shows_every_key_at_its_default() {
        // As shipped, all commented: the embedded default.
        assert_eq!(
            Config::parse(EXAMPLE, Path::new("example")).unwrap(),
            Config::default()
        );
        // Each "# key = value" line uncommented: still the default.
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let mut c = Config::parse(&uncommented, Path::new("uncommented")).unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new(DEFAULT_ROOT)));
        c.root = None;
        assert_eq!(c, Config::default(), "{uncommented}");
        // And every key of every section is there, defaults or examples.
        let all = serde_json::to_value(Config::default()).unwrap();
        for (key, v) in all.as_object().unwrap() {
            match v.as_object() {
                Some(section) => {
                    assert!(EXAMPLE.contains(&format!("\n[{key}]\n")), "no [{key}]");
                    for (k, v) in section {
                        let line = if v.is_object() {
                            format!("[{key}.{k}]")
                        } else {
                            format!(" {k} = ")
                        };
                        assert!(EXAMPLE.contains(&line), "no {key}.{k} in the example");
                    }
                }
                None => assert!(EXAMPLE.contains(&format!("# {key} = ")), "no {key}"),
            }
        }
    }

    #[test]
    fn metrics_addresses_parse_or_name_the_fix() {
        let d = Config::default();
        assert_eq!(
            parse_metrics_address(&d.serve.metrics_address).unwrap(),
            Some("127.0.0.1:9437".parse().unwrap())
        );
        assert_eq!(parse_metrics_address("off").unwrap(), None);
        assert_eq!(
            parse_metrics_address("[::1]:0").unwrap(),
            Some("[::1]:0".parse().unwrap())
        );
        let c = Config::parse(
            "[serve]\nmetrics_address = \"0.0.0.0:9100\"\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.serve.metrics_address, "0.0.0.0:9100");
        let e = parse_metrics_address("localhost").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(
            e.message.contains("\"localhost\"") && e.message.contains("off"),
            "{e}"
        );
    }

    #[test]
    fn sizes_parse_and_print_round_trip() {
        for (text, bytes) in [
            ("20G", 20 << 30),
            ("20GiB", 20 << 30),
            ("512m", 512 << 20),
            ("64K", 64 << 10),
            ("1T", 1 << 40),
            ("4096", 4096),
            ("1 GiB", 1 << 30),
            ("100b", 100),
        ] {
            let s: Bytes = text.parse().unwrap();
            assert_eq!(s.0, bytes, "{text}");
            assert_eq!(s.to_string().parse::<Bytes>().unwrap(), s);
        }
        assert_eq!(Bytes(3 << 20).to_string(), "3 MiB");
        assert_eq!(Bytes(1000).to_string(), "1000 bytes");
        for bad in ["", "G", "12X", "-1G", "1.5G", "99999999999T", "5iB"] {
            assert!(bad.parse::<Bytes>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.backend, BackendChoice::Auto);
        assert_eq!(c.devmapper.data_size, Bytes::gib(100));
        assert_eq!(c.btrfs.image_size, Bytes::gib(20));
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            r#"
root = "/srv/tb"
backend = "devmapper"
[devmapper]
pool_name = "tb"
data_size = "1G"
metadata_size = 67108864
block_size = "128K"
fs = "xfs"
autoextend_threshold = 70
autoextend_percent = 10
free_space_floor = 5
[btrfs]
image_size = "2G"
[zfs]
dataset = "tank/tb"
"#,
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new("/srv/tb")));
        assert_eq!(c.backend, BackendChoice::Devmapper);
        assert_eq!(c.devmapper.metadata_size, Bytes::mib(64));
        assert_eq!(c.devmapper.block_size, Bytes::kib(128));
        assert_eq!(
            c.devmapper.filesystem().unwrap(),
            thinpool::fs::Filesystem::Xfs
        );
        assert_eq!(c.devmapper.autoextend().unwrap().threshold_percent, 70);
        assert_eq!(c.zfs.dataset.as_deref(), Some("tank/tb"));
        let again = Config::parse(&toml::to_string(&c).unwrap(), Path::new("x")).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::parse("bakend = \"btrfs\"\n", Path::new("/etc/t.toml")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("bakend"), "{}", e.message);
        assert!(e.message.contains("/etc/t.toml"), "{}", e.message);
        assert!(e.message.contains("line 1"), "{}", e.message);

        let e = Config::parse("[devmapper]\ndata_sise = \"1G\"\n", Path::new("x")).unwrap_err();
        assert!(e.message.contains("data_sise"), "{}", e.message);
        let e = Config::parse("backend = \"lvm\"\n", Path::new("x")).unwrap_err();
        assert!(e.message.contains("lvm"), "{}", e.message);
        let e = Config::parse("[devmapper]\ndata_size = \"1Q\"\n", Path::new("x")).unwrap_err();
        assert!(e.message.contains("1Q"), "{}", e.message);
        let e = Config::parse("[devmapper]\nfs = \"vfat\"\n", Path::new("x")).unwrap_err();
        assert!(e.message.contains("vfat"), "{}", e.message);
    }

    #[test]
    fn missing_files() {
        assert_eq!(
            Config::load(Path::new("/nonexistent/thinbox.toml"))
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
    }
}
