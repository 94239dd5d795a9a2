//! `pool status`: what the kernel says of a pool (mode, space, events),
//! read without opening it, with thinbox's own settings beside it.

use thinpool::status::PoolStatus;
use thinpool::table::PoolTable;
use thinpool::BlockSize;

use super::{PoolReport, Pools, RecordState, Space};
use crate::error::Result;

impl Pools {
    /// Status of pool `name`, read from the kernel without opening it.
    pub fn status(&self, name: &str) -> Result<PoolReport> {
        let rec = self.record(name)?;
        let dm_name = rec.dm_name();
        let mut report = PoolReport {
            name: rec.name.clone(),
            kind: rec.kind,
            dm_name: dm_name.clone(),
            active: false,
            mode: "inactive".to_owned(),
            transaction_id: None,
            data: None,
            metadata: None,
            block_size: None,
            low_water_mark: None,
            needs_check: false,
            no_space_policy: None,
            autoextend_threshold: rec.autoextend_threshold,
            autoextend_percent: rec.autoextend_percent,
            free_space_floor: rec.free_space_floor,
            below_floor: false,
            lent_to: rec.lent_to,
            dm_events: None,
        };
        if rec.state == RecordState::Creating {
            report.mode = "half-made (run `thinbox pool destroy`)".to_owned();
            return Ok(report);
        }
        let dm = &self.deps.dm;
        let Some(info) = dm.info(&dm_name)? else {
            if self.damaged(name).is_some() {
                report.mode = format!("damaged (run `thinbox pool repair {name}`)");
                report.needs_check = true;
            }
            return Ok(report);
        };
        if !info.live_table {
            return Ok(report);
        }
        report.active = true;
        report.dm_events = Some(info.event_nr);
        let table = dm
            .table(&dm_name)?
            .first()
            .map(PoolTable::from_target)
            .transpose()?;
        let block = table.as_ref().map(|t| t.block_size);
        if let Some(t) = &table {
            report.block_size = Some(t.block_size.bytes().0);
            report.low_water_mark = Some(t.low_water_mark.get());
        }
        let status = dm
            .status(&dm_name)?
            .first()
            .map(|l| l.params.parse::<PoolStatus>())
            .transpose()?;
        match status {
            Some(PoolStatus::Working(u)) => {
                let bs = block.unwrap_or(BlockSize::DEFAULT).bytes().0;
                report.mode = u.mode.to_string();
                report.transaction_id = Some(u.transaction_id.0);
                report.data = Some(Space::new(u.used_data.get(), u.total_data.get(), bs));
                report.below_floor = rec.free_space_floor > 0
                    && u128::from(u.free_data().get()) * 100
                        < u128::from(u.total_data.get()) * u128::from(rec.free_space_floor);
                report.metadata = Some(Space::new(u.used_meta.get(), u.total_meta.get(), 4096));
                report.needs_check = u.needs_check;
                report.no_space_policy = Some(u.no_space.to_string());
            }
            Some(s) => report.mode = s.to_string(),
            None => {}
        }
        Ok(report)
    }
}
