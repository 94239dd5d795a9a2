//! Reading a live pool's thin ids without opening it: no lock, no
//! reconciliation, no record touched (for `thinbox doctor`).

use super::*;

/// Thin ids and usage in the live pool `dm_name`'s metadata, read with
/// `thin_ls` from a metadata snapshot held for the call.
pub fn live_thin_usage(deps: &Deps, dm_name: &str) -> Result<Vec<ThinUsage>> {
    let r = (|| {
        let table = deps
            .dm
            .table(dm_name)?
            .first()
            .map(PoolTable::from_target)
            .transpose()?
            .ok_or_else(|| {
                Error::new(ErrorKind::NotFound {
                    name: dm_name.to_owned(),
                })
            })?;
        let (path, devnum) = match table.metadata {
            DevRef::Num(n) => (devnode_of(n)?, n),
            DevRef::Path(p) => {
                let n = crate::loopdev::devnum_of(&p)?;
                (p, n)
            }
        };
        if deps.dm.message(dm_name, "reserve_metadata_snap").is_err() {
            // One left held (a crash, another tool): release and retry.
            let _ = deps.dm.message(dm_name, "release_metadata_snap");
            deps.dm.message(dm_name, "reserve_metadata_snap")?;
        }
        let listed = deps.tools.list(
            MetaDev {
                path: &path,
                devnum,
            },
            true,
        );
        let released = deps.dm.message(dm_name, "release_metadata_snap");
        let v = listed?;
        released?;
        Ok(v)
    })();
    r.map_err(|e: Error| e.op("read thin ids").device(dm_name.to_owned()))
}
