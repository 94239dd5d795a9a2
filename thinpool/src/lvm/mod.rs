//! lvm2 and util-linux as thinbox drives them for direct-lvm pools, behind
//! the [`LvmControl`] seam: [`RealLvm`] runs the commands and reads only
//! their machine-readable output (`pvs`/`vgs`/`lvs --reportformat json`,
//! `wipefs --json`) and exit status, never their English messages;
//! [`FakeLvm`] models PVs, VGs and thin-pool LVs in memory (activating pools
//! in a [`crate::dm::FakeDm`]) so the pool logic is tested without root.
//!
//! Needs lvm2 with thin support and `--reportformat json` (2.02.158+) and
//! util-linux 2.29+ for `wipefs --json`.

mod device;
mod fake;
mod real;

pub use device::{probe, DeviceUse};
pub use fake::FakeLvm;
pub use real::RealLvm;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::units::{BlockSize, Bytes};

/// Runs a tool; returns stdout, or a [`ErrorKind::ToolFailed`] error
/// ([`ErrorKind::NotRoot`] without running it for a non-root caller: lvm2
/// and wipefs on block devices need root).
pub(crate) fn run(tool: &str, args: &[&str]) -> Result<String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::new(ErrorKind::NotRoot).op("run lvm2"));
    }
    let out = Command::new(tool)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::ToolMissing {
                    tool: tool.to_owned(),
                }
            } else {
                ErrorKind::Io
            };
            Error::new(kind).with_source(e)
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(Error::new(ErrorKind::ToolFailed {
            tool: format!("{tool} {}", args.join(" ")),
            status: out.status.code(),
        })
        .with_source(std::io::Error::other(stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Deserialize)]
struct WipefsReport {
    #[serde(default)]
    signatures: Vec<WipefsSignature>,
}

#[derive(Deserialize)]
struct WipefsSignature {
    #[serde(rename = "type")]
    kind: String,
}

/// Signatures (partition tables, filesystems, PV labels) found on a device.
pub fn signatures(dev: &Path) -> Result<Vec<String>> {
    let d = dev.to_str().unwrap_or_default();
    let out = run("wipefs", &["--json", "--no-act", d]).map_err(|e| e.path(dev))?;
    parse_wipefs(&out)
}

/// Parses `wipefs --json` output (empty output: no signatures).
pub fn parse_wipefs(out: &str) -> Result<Vec<String>> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let r: WipefsReport =
        serde_json::from_str(out).map_err(|e| Error::parse("wipefs report", out, e.to_string()))?;
    Ok(r.signatures.into_iter().map(|s| s.kind).collect())
}

/// `{"report": [{"<section>": [rows]}]}`, the shape of every lvm2 JSON report.
#[derive(Deserialize)]
struct Report<T> {
    report: Vec<std::collections::BTreeMap<String, Vec<T>>>,
}

fn parse_report<T: serde::de::DeserializeOwned>(
    what: &'static str,
    section: &str,
    out: &str,
) -> Result<Vec<T>> {
    let r: Report<T> =
        serde_json::from_str(out).map_err(|e| Error::parse(what, out, e.to_string()))?;
    Ok(r.report
        .into_iter()
        .flat_map(|mut s| s.remove(section).unwrap_or_default())
        .collect())
}

/// One row of `lvs --reportformat json -o lv_name,vg_name,lv_attr,lv_dm_path,seg_monitor,lv_profile,lv_when_full`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct LvRow {
    /// LV name.
    pub lv_name: String,
    /// VG name.
    pub vg_name: String,
    /// Attribute string (`twi-a-t---` for an active thin pool).
    pub lv_attr: String,
    /// `/dev/mapper/...` path of the LV's top dm device.
    pub lv_dm_path: String,
    /// `monitored`, `not monitored` or empty (dmeventd's view).
    #[serde(default)]
    pub seg_monitor: String,
    /// The metadata profile attached to the LV, if any.
    #[serde(default)]
    pub lv_profile: String,
    /// `error` or `queue` for thin pools: what writes do when the pool is full.
    #[serde(default)]
    pub lv_when_full: String,
}

impl LvRow {
    /// True for a thin-pool LV (attribute `t` in the first position).
    pub fn is_thin_pool(&self) -> bool {
        self.lv_attr.starts_with('t')
    }

    /// True when the LV is active (attribute `a` in the fifth position).
    pub fn is_active(&self) -> bool {
        self.lv_attr.as_bytes().get(4) == Some(&b'a')
    }

    /// True when dmeventd monitors the LV.
    pub fn is_monitored(&self) -> bool {
        self.seg_monitor == "monitored"
    }

    /// The dm name of the LV.
    pub fn dm_name(&self) -> &str {
        self.lv_dm_path.trim_start_matches("/dev/mapper/")
    }
}

/// The columns [`LvRow`] reads.
pub const LV_COLUMNS: &str =
    "lv_name,vg_name,lv_attr,lv_dm_path,seg_monitor,lv_profile,lv_when_full";

/// Parses an `lvs --reportformat json` report.
pub fn parse_lvs(out: &str) -> Result<Vec<LvRow>> {
    parse_report("lvs report", "lv", out)
}

/// A volume group, from `vgs --reportformat json --units b --nosuffix -o vg_name,vg_extent_size,vg_extent_count,vg_free_count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgInfo {
    /// Its name.
    pub name: String,
    /// The size of one physical extent.
    pub extent_size: Bytes,
    /// Extents in the VG.
    pub extent_count: u64,
    /// Extents not allocated to any LV.
    pub free_count: u64,
}

#[derive(Deserialize)]
struct VgRow {
    vg_name: String,
    vg_extent_size: String,
    vg_extent_count: String,
    vg_free_count: String,
}

/// The columns [`VgInfo`] reads.
pub const VG_COLUMNS: &str = "vg_name,vg_extent_size,vg_extent_count,vg_free_count";

/// Parses a `vgs --reportformat json --units b --nosuffix` report.
pub fn parse_vgs(out: &str) -> Result<Vec<VgInfo>> {
    let rows: Vec<VgRow> = parse_report("vgs report", "vg", out)?;
    let num = |field: &str, v: &str| -> Result<u64> {
        v.trim_end_matches('B')
            .parse()
            .map_err(|_| Error::parse("vgs report", v, format!("{field} is not a number")))
    };
    rows.into_iter()
        .map(|r| {
            Ok(VgInfo {
                extent_size: Bytes(num("vg_extent_size", &r.vg_extent_size)?),
                extent_count: num("vg_extent_count", &r.vg_extent_count)?,
                free_count: num("vg_free_count", &r.vg_free_count)?,
                name: r.vg_name,
            })
        })
        .collect()
}

/// A physical volume, from `pvs --reportformat json -o pv_name,vg_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvInfo {
    /// The device.
    pub device: PathBuf,
    /// The VG it belongs to, if any.
    pub vg: Option<String>,
}

#[derive(Deserialize)]
struct PvRow {
    pv_name: String,
    vg_name: String,
}

/// Parses a `pvs --reportformat json -o pv_name,vg_name` report.
pub fn parse_pvs(out: &str) -> Result<Vec<PvInfo>> {
    let rows: Vec<PvRow> = parse_report("pvs report", "pv", out)?;
    Ok(rows
        .into_iter()
        .map(|r| PvInfo {
            device: PathBuf::from(r.pv_name),
            vg: Some(r.vg_name).filter(|v| !v.is_empty()),
        })
        .collect())
}

/// A thin-pool LV to create (`lvcreate --type thin-pool`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinPoolSpec {
    /// The VG.
    pub vg: String,
    /// The pool LV's name.
    pub lv: String,
    /// Data size in extents.
    pub data_extents: u64,
    /// Metadata LV size.
    pub metadata: Bytes,
    /// Chunk (data block) size.
    pub chunk: BlockSize,
    /// Zero newly provisioned chunks.
    pub zero: bool,
}

impl ThinPoolSpec {
    /// The data and metadata sizes for percentages of `vg` (Docker's
    /// dm.thinp_percent and dm.thinp_metapercent): data rounded down to
    /// whole extents, metadata to whole extents but at least one, and at
    /// least 2 MiB (lvm2's minimum for thin-pool metadata). Refuses a VG too
    /// small for either, or percentages that do not fit in it (lvm2 also
    /// keeps a spare metadata LV of the same size).
    pub fn from_percent(
        vg: &VgInfo,
        lv: &str,
        data_percent: u8,
        metadata_percent: u8,
        chunk: BlockSize,
        zero: bool,
    ) -> Result<ThinPoolSpec> {
        let bad = |reason: String| {
            Error::parse(
                "lvm pool percentages",
                &format!("{data_percent}% data, {metadata_percent}% metadata"),
                reason,
            )
        };
        if data_percent == 0
            || metadata_percent == 0
            || u16::from(data_percent) + 2 * u16::from(metadata_percent) > 100
        {
            return Err(bad(
                "use 1..=100 each, with data + twice metadata (lvm keeps a spare) at most 100"
                    .to_owned(),
            ));
        }
        let pct = |p: u8| (u128::from(vg.extent_count) * u128::from(p) / 100) as u64;
        let data_extents = pct(data_percent);
        let min_meta_extents = (Bytes::mib(2).0).div_ceil(vg.extent_size.0.max(1));
        let meta_extents = pct(metadata_percent).max(min_meta_extents).max(1);
        if data_extents == 0 || data_extents + 2 * meta_extents > vg.free_count {
            return Err(bad(format!(
                "volume group {} has {} free extents of {}: use a bigger device or other percentages",
                vg.name, vg.free_count, vg.extent_size
            )));
        }
        Ok(ThinPoolSpec {
            vg: vg.name.clone(),
            lv: lv.to_owned(),
            data_extents,
            metadata: Bytes(meta_extents * vg.extent_size.0),
            chunk,
            zero,
        })
    }
}

/// An `lvchange` of a thin-pool LV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LvChange {
    /// `-ay`.
    Activate,
    /// `-an`.
    Deactivate,
    /// `--metadataprofile NAME`.
    Profile(String),
    /// `--monitor y|n` (dmeventd monitoring).
    Monitor(bool),
    /// `--errorwhenfull y|n` (the pool's `error_if_no_space`).
    ErrorWhenFull(bool),
    /// `--refresh`: lvm2 reloads the active pool's table, its low-water
    /// mark from the profile (attaching a profile alone reloads nothing).
    Refresh,
}

impl LvChange {
    /// The `lvchange` arguments before the LV.
    pub fn args(&self) -> Vec<String> {
        let yn = |b: bool| if b { "y" } else { "n" }.to_owned();
        match self {
            LvChange::Activate => vec!["-ay".into()],
            LvChange::Deactivate => vec!["-an".into()],
            LvChange::Profile(p) => vec!["--metadataprofile".into(), p.clone()],
            LvChange::Monitor(b) => vec!["--monitor".into(), yn(*b)],
            LvChange::ErrorWhenFull(b) => vec!["--errorwhenfull".into(), yn(*b)],
            LvChange::Refresh => vec!["--refresh".into()],
        }
    }
}

/// An `lvextend` of a thin-pool LV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvExtend {
    /// Grow the data LV by this percentage of its size (`-l +N%LV`).
    DataPercent(u8),
    /// Grow the data LV by this much (`-L +N`, rounded up to extents).
    DataBy(Bytes),
    /// Grow the metadata LV by this much (`--poolmetadatasize +N`).
    Metadata(Bytes),
}

impl LvExtend {
    /// The `lvextend` arguments before the LV.
    pub fn args(&self) -> Vec<String> {
        match self {
            LvExtend::DataPercent(p) => vec!["-l".into(), format!("+{p}%LV")],
            LvExtend::DataBy(b) => vec!["-L".into(), format!("+{}k", b.0.div_ceil(1024))],
            LvExtend::Metadata(b) => vec![
                "--poolmetadatasize".into(),
                format!("+{}k", b.0.div_ceil(1024)),
            ],
        }
    }
}

/// The lvm2 (and `wipefs`) operations a direct-lvm pool needs. `lv` is
/// `VG/LV`. Each call is one command; a failed call changes nothing lvm2
/// did not commit.
pub trait LvmControl: Send + Sync + std::fmt::Debug {
    /// Signatures (partition tables, filesystems, PV labels) on a device.
    fn signatures(&self, dev: &Path) -> Result<Vec<String>>;
    /// What a device is used for ([`probe`] on the live system).
    fn device_use(&self, dev: &Path) -> Result<DeviceUse>;
    /// Erases every signature on a device (`wipefs -a`).
    fn wipe(&self, dev: &Path) -> Result<()>;
    /// Makes PVs (`pvcreate`).
    fn pvcreate(&self, devs: &[PathBuf]) -> Result<()>;
    /// Removes PV labels (`pvremove`).
    fn pvremove(&self, devs: &[PathBuf]) -> Result<()>;
    /// All PVs.
    fn pvs(&self) -> Result<Vec<PvInfo>>;
    /// Makes a VG (`vgcreate`).
    fn vgcreate(&self, vg: &str, devs: &[PathBuf]) -> Result<()>;
    /// Removes a VG and every LV in it (`vgremove -f`).
    fn vgremove(&self, vg: &str) -> Result<()>;
    /// One VG, or `None`.
    fn vg(&self, vg: &str) -> Result<Option<VgInfo>>;
    /// Makes a thin-pool LV with its metadata LV (`lvcreate --type thin-pool`).
    fn create_thin_pool(&self, spec: &ThinPoolSpec) -> Result<()>;
    /// The LVs of a VG (empty when there is no such VG).
    fn lvs(&self, vg: &str) -> Result<Vec<LvRow>>;
    /// `lvchange`.
    fn lvchange(&self, lv: &str, change: &LvChange) -> Result<()>;
    /// `lvextend`.
    fn lvextend(&self, lv: &str, extend: LvExtend) -> Result<()>;
    /// `lvremove`.
    fn lvremove(&self, lv: &str) -> Result<()>;
}

/// The LV `vg/lv` through `lvm`, or a [`ErrorKind::NotFound`] error.
pub fn lv(lvm: &dyn LvmControl, vg: &str, lv: &str) -> Result<LvRow> {
    lvm.lvs(vg)?
        .into_iter()
        .find(|r| r.lv_name == lv)
        .ok_or_else(|| {
            Error::new(ErrorKind::NotFound {
                name: format!("{vg}/{lv}"),
            })
        })
}

/// The LVM profile file thinbox writes for a pool.
pub fn profile_path(dir: &Path, vg: &str, lv: &str) -> PathBuf {
    dir.join(format!("{}.profile", profile_name(vg, lv)))
}

/// The profile's name (`--metadataprofile NAME`).
pub fn profile_name(vg: &str, lv: &str) -> String {
    format!("thinbox-{vg}-{lv}")
}

/// The profile's text: autoextend threshold and percent.
pub fn profile_text(threshold: u8, percent: u8) -> String {
    format!(
        "activation {{\n\tthin_pool_autoextend_threshold={threshold}\n\tthin_pool_autoextend_percent={percent}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wipefs() {
        assert!(parse_wipefs("").unwrap().is_empty());
        let out = r#"{
           "signatures": [
              {"device": "vda", "offset": "0x218", "type": "LVM2_member", "uuid": "x", "label": null},
              {"device": "vda", "offset": "0x1fe", "type": "dos", "uuid": null, "label": null}
           ]
        }"#;
        assert_eq!(parse_wipefs(out).unwrap(), vec!["LVM2_member", "dos"]);
        assert!(parse_wipefs("{").is_err());
    }

    #[test]
    fn parses_lvs() {
        let out = r#"{
          "report": [
              {
                  "lv": [
                      {"lv_name":"pool", "vg_name":"tb", "lv_attr":"twi-a-tz--", "lv_dm_path":"/dev/mapper/tb-pool"}
                  ]
              }
          ]
        }"#;
        let v = parse_lvs(out).unwrap();
        assert_eq!(v.len(), 1);
        assert!(v[0].is_thin_pool());
        assert_eq!(v[0].dm_name(), "tb-pool");
    }

    #[test]
    fn profile() {
        let t = profile_text(80, 20);
        assert!(t.contains("thin_pool_autoextend_threshold=80"));
        assert!(t.contains("thin_pool_autoextend_percent=20"));
        assert_eq!(
            profile_path(Path::new("/etc/lvm/profile"), "vg", "p"),
            PathBuf::from("/etc/lvm/profile/thinbox-vg-p.profile")
        );
    }

    #[test]
    fn parses_vgs_and_pvs() {
        let out = r#"{"report": [{"vg": [
            {"vg_name":"tb", "vg_extent_size":"4194304", "vg_extent_count":"255", "vg_free_count":"228"}
        ]}]}"#;
        let v = parse_vgs(out).unwrap();
        assert_eq!(
            v,
            vec![VgInfo {
                name: "tb".into(),
                extent_size: Bytes::mib(4),
                extent_count: 255,
                free_count: 228
            }]
        );
        assert!(parse_vgs(r#"{"report": [{"vg": [{"vg_name":"x", "vg_extent_size":"big", "vg_extent_count":"1", "vg_free_count":"1"}]}]}"#).is_err());
        let out = r#"{"report": [{"pv": [
            {"pv_name":"/dev/vda", "vg_name":"tb"}, {"pv_name":"/dev/vdb", "vg_name":""}
        ]}]}"#;
        let p = parse_pvs(out).unwrap();
        assert_eq!(p[0].vg.as_deref(), Some("tb"));
        assert_eq!(p[1].vg, None);
        assert_eq!(p[1].device, PathBuf::from("/dev/vdb"));
    }

    #[test]
    fn percentages_become_extents() {
        let vg = VgInfo {
            name: "tb".into(),
            extent_size: Bytes::mib(4),
            extent_count: 255,
            free_count: 255,
        };
        let chunk = BlockSize::from_bytes(Bytes::kib(512)).unwrap();
        let s = ThinPoolSpec::from_percent(&vg, "pool", 95, 1, chunk, false).unwrap();
        assert_eq!(s.data_extents, 242);
        assert_eq!(s.metadata, Bytes::mib(8));
        // Metadata never below lvm2's 2 MiB minimum, even in big extents.
        let big = VgInfo {
            extent_size: Bytes::kib(512),
            extent_count: 100,
            free_count: 100,
            ..vg.clone()
        };
        let s = ThinPoolSpec::from_percent(&big, "pool", 50, 1, chunk, false).unwrap();
        assert_eq!(s.metadata, Bytes::mib(2));
        for (d, m) in [(0, 1), (50, 0), (90, 10)] {
            let e = ThinPoolSpec::from_percent(&vg, "pool", d, m, chunk, false).unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Parse { .. }), "{e}");
        }
        let full = VgInfo {
            free_count: 10,
            ..vg.clone()
        };
        let e = ThinPoolSpec::from_percent(&full, "pool", 50, 1, chunk, false).unwrap_err();
        assert!(e.to_string().contains("10 free extents"), "{e}");
    }

    #[test]
    fn change_and_extend_arguments() {
        assert_eq!(LvChange::Monitor(true).args(), ["--monitor", "y"]);
        assert_eq!(
            LvChange::ErrorWhenFull(false).args(),
            ["--errorwhenfull", "n"]
        );
        assert_eq!(
            LvChange::Profile("p".into()).args(),
            ["--metadataprofile", "p"]
        );
        assert_eq!(LvExtend::DataPercent(20).args(), ["-l", "+20%LV"]);
        assert_eq!(LvExtend::DataBy(Bytes::gib(1)).args(), ["-L", "+1048576k"]);
        assert_eq!(
            LvExtend::Metadata(Bytes::mib(3)).args(),
            ["--poolmetadatasize", "+3072k"]
        );
        let row = LvRow {
            lv_attr: "twi-a-tz--".into(),
            seg_monitor: "monitored".into(),
            ..LvRow::default()
        };
        assert!(row.is_thin_pool() && row.is_active() && row.is_monitored());
    }
}
