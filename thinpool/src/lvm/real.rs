//! lvm2 and `wipefs` run as commands; only JSON reports and exit status are read.

use std::path::{Path, PathBuf};

use super::{
    parse_lvs, parse_pvs, parse_vgs, probe, run, signatures, DeviceUse, LvChange, LvExtend, LvRow,
    LvmControl, PvInfo, ThinPoolSpec, VgInfo, LV_COLUMNS, VG_COLUMNS,
};
use crate::error::Result;

/// The real lvm2 commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealLvm;

fn paths(devs: &[PathBuf]) -> Vec<String> {
    devs.iter().map(|d| d.display().to_string()).collect()
}

fn run_with(tool: &str, fixed: &[&str], more: &[String]) -> Result<String> {
    let mut args: Vec<&str> = fixed.to_vec();
    args.extend(more.iter().map(String::as_str));
    run(tool, &args)
}

impl LvmControl for RealLvm {
    fn signatures(&self, dev: &Path) -> Result<Vec<String>> {
        signatures(dev)
    }

    fn device_use(&self, dev: &Path) -> Result<DeviceUse> {
        let pvs = self.pvs()?;
        probe(dev, &pvs)
    }

    fn wipe(&self, dev: &Path) -> Result<()> {
        let d = dev.display().to_string();
        run("wipefs", &["-a", &d]).map(drop)
    }

    fn pvcreate(&self, devs: &[PathBuf]) -> Result<()> {
        run_with("pvcreate", &["-y"], &paths(devs)).map(drop)
    }

    fn pvremove(&self, devs: &[PathBuf]) -> Result<()> {
        run_with("pvremove", &["-y"], &paths(devs)).map(drop)
    }

    fn pvs(&self) -> Result<Vec<PvInfo>> {
        parse_pvs(&run(
            "pvs",
            &["--reportformat", "json", "-o", "pv_name,vg_name"],
        )?)
    }

    fn vgcreate(&self, vg: &str, devs: &[PathBuf]) -> Result<()> {
        run_with("vgcreate", &[vg], &paths(devs)).map(drop)
    }

    fn vgremove(&self, vg: &str) -> Result<()> {
        run("vgremove", &["-y", "-f", vg]).map(drop)
    }

    fn vg(&self, vg: &str) -> Result<Option<VgInfo>> {
        let out = run(
            "vgs",
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                VG_COLUMNS,
            ],
        )?;
        Ok(parse_vgs(&out)?.into_iter().find(|v| v.name == vg))
    }

    fn create_thin_pool(&self, s: &ThinPoolSpec) -> Result<()> {
        run(
            "lvcreate",
            &[
                "-y",
                "--type",
                "thin-pool",
                "-n",
                &s.lv,
                "-l",
                &s.data_extents.to_string(),
                "--poolmetadatasize",
                &format!("{}k", s.metadata.0.div_ceil(1024)),
                "-c",
                &format!("{}k", s.chunk.bytes().0 >> 10),
                "-Z",
                if s.zero { "y" } else { "n" },
                &s.vg,
            ],
        )
        .map(drop)
    }

    fn lvs(&self, vg: &str) -> Result<Vec<LvRow>> {
        let out = run("lvs", &["--reportformat", "json", "-o", LV_COLUMNS])?;
        Ok(parse_lvs(&out)?
            .into_iter()
            .filter(|r| r.vg_name == vg)
            .collect())
    }

    fn lvchange(&self, lv: &str, change: &LvChange) -> Result<()> {
        run_with(
            "lvchange",
            &[],
            &[change.args(), vec![lv.to_owned()]].concat(),
        )
        .map(drop)
    }

    fn lvextend(&self, lv: &str, extend: LvExtend) -> Result<()> {
        run_with(
            "lvextend",
            &["-y"],
            &[extend.args(), vec![lv.to_owned()]].concat(),
        )
        .map(drop)
    }

    fn lvremove(&self, lv: &str) -> Result<()> {
        run("lvremove", &["-y", lv]).map(drop)
    }
}
