//! An in-memory device-mapper with just enough of the thin-pool target to
//! test pool logic without root: devices with live/inactive tables and
//! suspension, thin-pool metadata (thin ids, transaction id, data usage) kept
//! per metadata device across pool removal the way the on-disk metadata
//! survives, the pool messages, status lines, and open counts.
//!
//! Faults: [`FakeDm::fail_next`] makes the next matching call return an
//! error; [`FakeDm::crash_at`] makes it panic before or after taking effect,
//! which models a process killed at that point (tests catch the panic and
//! "restart" by reopening).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{check_dm_name, DmControl, DmInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::status::{DiscardMode, NoSpacePolicy, PoolMode, PoolStatus, PoolUsage, ThinStatus};
use crate::table::{DevNum, DevRef, PoolTable, TargetLine, ThinTable};
use crate::units::{DataBlocks, MetaBlocks, Sectors, TransactionId};

/// When an injected crash happens relative to the call it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashWhen {
    /// Before the call takes effect.
    Before,
    /// After the call took effect, before it returns.
    After,
}

const FAKE_MAJOR: u32 = 253;

#[derive(Debug, Clone)]
struct Dev {
    devnum: DevNum,
    live: Option<Vec<TargetLine>>,
    inactive: Option<Vec<TargetLine>>,
    suspended: bool,
    external_opens: u32,
    deferred_remove: bool,
    event_nr: u32,
}

#[derive(Debug, Clone, Default)]
struct Meta {
    txn: u64,
    /// thin id -> data blocks it maps
    thins: BTreeMap<u32, u64>,
    used_data: u64,
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<String, Dev>,
    next_minor: u32,
    metadata: BTreeMap<String, Meta>,
    fail: Vec<(String, ErrorKind)>,
    crash: Vec<(String, CrashWhen)>,
    calls: Vec<String>,
    no_thin_target: bool,
    events: u64,
    armed_at: u64,
}

/// The fake. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeDm {
    state: Arc<Mutex<State>>,
}

fn kernel(errno: i32, device: &str) -> Error {
    let kind = match errno {
        libc::EBUSY => ErrorKind::Busy {
            device: device.to_owned(),
        },
        libc::ENXIO => ErrorKind::NotFound {
            name: device.to_owned(),
        },
        libc::EEXIST => ErrorKind::NameTaken {
            name: device.to_owned(),
        },
        e => ErrorKind::Kernel { errno: Some(e) },
    };
    Error::new(kind)
        .device(device)
        .with_source(std::io::Error::from_raw_os_error(errno))
}

impl FakeDm {
    /// An empty fake.
    pub fn new() -> FakeDm {
        FakeDm::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that injected a crash panicked while holding the lock; the
        // state is still what the "kernel" would have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next call whose description contains `pattern` fails with `kind`.
    /// Descriptions look like `message create_thin 3`, `suspend NAME`,
    /// `resume NAME`, `load NAME thin-pool`, `create NAME`, `remove NAME`.
    pub fn fail_next(&self, pattern: &str, kind: ErrorKind) {
        self.lock().fail.push((pattern.to_owned(), kind));
    }

    /// The next call matching `pattern` panics, before or after taking effect.
    pub fn crash_at(&self, pattern: &str, when: CrashWhen) {
        self.lock().crash.push((pattern.to_owned(), when));
    }

    /// Pretends the kernel has no thin-pool target.
    pub fn without_thin_target(&self) {
        self.lock().no_thin_target = true;
    }

    /// Every call made so far, as descriptions.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Thin ids present in the pool metadata on `metadata_dev`.
    pub fn thin_ids(&self, metadata_dev: &str) -> Vec<u32> {
        self.lock()
            .metadata
            .get(metadata_dev)
            .map(|m| m.thins.keys().copied().collect())
            .unwrap_or_default()
    }

    /// (thin id, mapped blocks) in the metadata on `metadata_dev`.
    pub fn thin_usage(&self, metadata_dev: &str) -> Vec<(u32, u64)> {
        self.lock()
            .metadata
            .get(metadata_dev)
            .map(|m| m.thins.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    /// Copies the metadata on `from` to `to`, as `thin_repair` writes it.
    pub fn copy_metadata(&self, from: &str, to: &str) {
        let mut st = self.lock();
        let m = st.metadata.get(from).cloned().unwrap_or_default();
        st.metadata.insert(to.to_owned(), m);
    }

    /// Simulates a writer opening (mounting) the device.
    pub fn open(&self, name: &str) {
        if let Some(d) = self.lock().devices.get_mut(name) {
            d.external_opens += 1;
        }
    }

    /// Simulates the writer closing it; completes a deferred removal.
    pub fn close(&self, name: &str) {
        let mut st = self.lock();
        if let Some(d) = st.devices.get_mut(name) {
            d.external_opens = d.external_opens.saturating_sub(1);
        }
        reap_deferred(&mut st);
    }

    /// Simulates writes that provision `blocks` new data blocks in a thin device.
    pub fn provision(&self, thin: &str, blocks: u64) -> Result<()> {
        let mut st = self.lock();
        let t = live_thin(&st, thin)?;
        let (meta_key, total) = pool_of(&st, &t.pool)?;
        let m = st
            .metadata
            .get_mut(&meta_key)
            .expect("pool metadata exists");
        if m.used_data + blocks > total {
            return Err(kernel(libc::ENOSPC, thin));
        }
        m.used_data += blocks;
        *m.thins.entry(t.id.get()).or_default() += blocks;
        let free = total - m.used_data;
        let pool_name = resolve(&st, &t.pool).expect("pool resolved above");
        let lwm = pool_table(&st, &pool_name)?.low_water_mark.get();
        if free < lwm {
            // The kernel raises a table event when free space crosses the low-water mark.
            st.events += 1;
            if let Some(d) = st.devices.get_mut(&pool_name) {
                d.event_nr += 1;
            }
        }
        Ok(())
    }

    fn enter(&self, desc: String) -> Result<Option<CrashWhen>> {
        let mut st = self.lock();
        st.calls.push(desc.clone());
        if let Some(i) = st.fail.iter().position(|(p, _)| desc.contains(p.as_str())) {
            let (_, kind) = st.fail.remove(i);
            return Err(Error::new(kind).device(desc));
        }
        let crash = st
            .crash
            .iter()
            .position(|(p, _)| desc.contains(p.as_str()))
            .map(|i| st.crash.remove(i).1);
        drop(st);
        if crash == Some(CrashWhen::Before) {
            panic!("injected crash before {desc}");
        }
        Ok(crash)
    }

    fn leave<T>(desc: &str, crash: Option<CrashWhen>, r: Result<T>) -> Result<T> {
        if crash == Some(CrashWhen::After) && r.is_ok() {
            panic!("injected crash after {desc}");
        }
        r
    }

    fn with<T>(&self, desc: String, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let crash = self.enter(desc.clone())?;
        let r = f(&mut self.lock());
        Self::leave(&desc, crash, r)
    }
}

fn resolve(st: &State, r: &DevRef) -> Option<String> {
    let want = match r {
        DevRef::Num(n) => *n,
        DevRef::Path(p) => {
            let s = p.to_str()?;
            if let Some(name) = s.strip_prefix("/dev/mapper/") {
                return st.devices.contains_key(name).then(|| name.to_owned());
            }
            let minor = s.strip_prefix("/dev/dm-")?.parse().ok()?;
            DevNum {
                major: FAKE_MAJOR,
                minor,
            }
        }
    };
    st.devices
        .iter()
        .find(|(_, d)| d.devnum == want)
        .map(|(n, _)| n.clone())
}

fn single(v: &Option<Vec<TargetLine>>) -> Option<&TargetLine> {
    v.as_ref().and_then(|v| v.first())
}

fn pool_table(st: &State, name: &str) -> Result<PoolTable> {
    let d = st
        .devices
        .get(name)
        .ok_or_else(|| kernel(libc::ENXIO, name))?;
    let t = single(&d.live).ok_or_else(|| kernel(libc::EINVAL, name))?;
    PoolTable::from_target(t)
}

/// Metadata key and total data blocks of the pool `r` names.
fn pool_of(st: &State, r: &DevRef) -> Result<(String, u64)> {
    let name = resolve(st, r).ok_or_else(|| kernel(libc::ENODEV, &r.to_string()))?;
    let t = pool_table(st, &name)?;
    Ok((
        t.metadata.to_string(),
        t.block_size.blocks_floor(t.length).get(),
    ))
}

fn live_thin(st: &State, name: &str) -> Result<ThinTable> {
    let d = st
        .devices
        .get(name)
        .ok_or_else(|| kernel(libc::ENXIO, name))?;
    let t = single(&d.live).ok_or_else(|| kernel(libc::EINVAL, name))?;
    ThinTable::from_target(t)
}

fn thins_using(st: &State, pool: &str, id: Option<u32>) -> usize {
    st.devices
        .values()
        .filter_map(|d| single(&d.live).or(single(&d.inactive)))
        .filter_map(|t| ThinTable::from_target(t).ok())
        .filter(|t| resolve(st, &t.pool).as_deref() == Some(pool))
        .filter(|t| id.is_none_or(|i| t.id.get() == i))
        .count()
}

fn open_count(st: &State, name: &str) -> u32 {
    let d = &st.devices[name];
    d.external_opens + thins_using(st, name, None) as u32
}

impl DmControl for FakeDm {
    fn create(&self, name: &str) -> Result<DmInfo> {
        check_dm_name(name)?;
        self.with(format!("create {name}"), |st| {
            if st.devices.contains_key(name) {
                return Err(kernel(libc::EBUSY, name).op("create dm device"));
            }
            let minor = st.next_minor;
            st.next_minor += 1;
            st.devices.insert(
                name.to_owned(),
                Dev {
                    devnum: DevNum {
                        major: FAKE_MAJOR,
                        minor,
                    },
                    live: None,
                    inactive: None,
                    suspended: false,
                    external_opens: 0,
                    deferred_remove: false,
                    event_nr: 0,
                },
            );
            Ok(info(st, name))
        })
    }

    fn load(&self, name: &str, table: &[TargetLine]) -> Result<()> {
        let ty = table.first().map(|t| t.target_type.as_str()).unwrap_or("");
        self.with(format!("load {name} {ty}"), |st| {
            if !st.devices.contains_key(name) {
                return Err(kernel(libc::ENXIO, name));
            }
            for t in table {
                match t.target_type.as_str() {
                    "thin-pool" => {
                        if st.no_thin_target {
                            return Err(kernel(libc::EINVAL, name));
                        }
                        let p = PoolTable::from_target(t)?;
                        st.metadata.entry(p.metadata.to_string()).or_default();
                    }
                    "thin" => {
                        let th = ThinTable::from_target(t)?;
                        let (key, _) = pool_of(st, &th.pool)?;
                        if !st.metadata[&key].thins.contains_key(&th.id.get()) {
                            return Err(kernel(libc::ENODATA, name));
                        }
                    }
                    _ => {}
                }
            }
            st.devices.get_mut(name).expect("checked").inactive = Some(table.to_vec());
            Ok(())
        })
    }

    fn suspend(&self, name: &str) -> Result<()> {
        self.with(format!("suspend {name}"), |st| {
            let d = st
                .devices
                .get_mut(name)
                .ok_or_else(|| kernel(libc::ENXIO, name))?;
            d.suspended = true;
            Ok(())
        })
    }

    fn resume(&self, name: &str) -> Result<()> {
        self.with(format!("resume {name}"), |st| {
            let d = st
                .devices
                .get_mut(name)
                .ok_or_else(|| kernel(libc::ENXIO, name))?;
            if let Some(t) = d.inactive.take() {
                d.live = Some(t);
            }
            d.suspended = false;
            Ok(())
        })
    }

    fn remove(&self, name: &str, deferred: bool) -> Result<()> {
        self.with(format!("remove {name}"), |st| {
            if !st.devices.contains_key(name) {
                return Err(kernel(libc::ENXIO, name));
            }
            if open_count(st, name) > 0 {
                if deferred {
                    st.devices.get_mut(name).expect("checked").deferred_remove = true;
                    return Ok(());
                }
                return Err(kernel(libc::EBUSY, name));
            }
            st.devices.remove(name);
            reap_deferred(st);
            Ok(())
        })
    }

    fn message(&self, name: &str, msg: &str) -> Result<Option<String>> {
        self.with(format!("message {msg}"), |st| {
            let p = pool_table(st, name)?;
            let key = p.metadata.to_string();
            let args: Vec<&str> = msg.split_whitespace().collect();
            let num =
                |s: &str| -> Result<u64> { s.parse().map_err(|_| kernel(libc::EINVAL, name)) };
            let in_use = |st: &State, id: u32| thins_using(st, name, Some(id)) > 0;
            match args.as_slice() {
                ["create_thin", id] => {
                    let id = num(id)? as u32;
                    let m = st.metadata.get_mut(&key).expect("pool has metadata");
                    if m.thins.contains_key(&id) {
                        return Err(kernel(libc::EEXIST, name));
                    }
                    m.thins.insert(id, 0);
                }
                ["create_snap", id, origin] => {
                    let (id, origin) = (num(id)? as u32, num(origin)? as u32);
                    let m = st.metadata.get_mut(&key).expect("pool has metadata");
                    if m.thins.contains_key(&id) {
                        return Err(kernel(libc::EEXIST, name));
                    }
                    let Some(&mapped) = m.thins.get(&origin) else {
                        return Err(kernel(libc::ENODATA, name));
                    };
                    m.thins.insert(id, mapped);
                }
                ["delete", id] => {
                    let id = num(id)? as u32;
                    if in_use(st, id) {
                        return Err(kernel(libc::EBUSY, name));
                    }
                    let m = st.metadata.get_mut(&key).expect("pool has metadata");
                    let Some(mapped) = m.thins.remove(&id) else {
                        return Err(kernel(libc::ENODATA, name));
                    };
                    // Approximation: blocks not shared are freed.
                    let shared: u64 = m.thins.values().copied().max().unwrap_or(0);
                    m.used_data = m.used_data.saturating_sub(mapped.saturating_sub(shared));
                }
                ["set_transaction_id", old, new] => {
                    let (old, new) = (num(old)?, num(new)?);
                    let m = st.metadata.get_mut(&key).expect("pool has metadata");
                    if m.txn != old {
                        return Err(kernel(libc::EINVAL, name));
                    }
                    m.txn = new;
                }
                ["reserve_metadata_snap"] | ["release_metadata_snap"] => {}
                _ => return Err(kernel(libc::EINVAL, name)),
            }
            Ok(None)
        })
    }

    fn status(&self, name: &str) -> Result<Vec<TargetLine>> {
        self.with(format!("status {name}"), |st| {
            let d = st
                .devices
                .get(name)
                .ok_or_else(|| kernel(libc::ENXIO, name))?;
            let Some(t) = single(&d.live).cloned() else {
                return Ok(Vec::new());
            };
            let params = match t.target_type.as_str() {
                "thin-pool" => {
                    let p = PoolTable::from_target(&t)?;
                    let m = &st.metadata[&p.metadata.to_string()];
                    let total = p.block_size.blocks_floor(p.length).get();
                    let used_meta = 10 + m.thins.len() as u64;
                    let s = PoolStatus::Working(Box::new(PoolUsage {
                        transaction_id: TransactionId(m.txn),
                        used_meta: MetaBlocks::new(used_meta),
                        total_meta: MetaBlocks::new(4096),
                        used_data: DataBlocks::new(m.used_data),
                        total_data: DataBlocks::new(total),
                        held_root: None,
                        mode: if m.used_data >= total {
                            PoolMode::OutOfDataSpace
                        } else {
                            PoolMode::ReadWrite
                        },
                        discard: if p.features.ignore_discard {
                            DiscardMode::Ignore
                        } else if p.features.no_discard_passdown {
                            DiscardMode::NoPassdown
                        } else {
                            DiscardMode::Passdown
                        },
                        no_space: if p.features.error_if_no_space {
                            NoSpacePolicy::Error
                        } else {
                            NoSpacePolicy::Queue
                        },
                        needs_check: false,
                        metadata_low_watermark: Some(MetaBlocks::new(1024)),
                    }));
                    s.to_string()
                }
                "thin" => {
                    let th = ThinTable::from_target(&t)?;
                    let name = resolve(st, &th.pool).ok_or_else(|| kernel(libc::ENODEV, name))?;
                    let p = pool_table(st, &name)?;
                    let blocks = st.metadata[&p.metadata.to_string()]
                        .thins
                        .get(&th.id.get())
                        .copied()
                        .unwrap_or(0);
                    let mapped = p.block_size.sectors_of(DataBlocks::new(blocks))?;
                    ThinStatus::Working {
                        mapped,
                        highest_mapped: (blocks > 0).then(|| Sectors::new(mapped.get() - 1)),
                    }
                    .to_string()
                }
                _ => String::new(),
            };
            Ok(vec![TargetLine { params, ..t }])
        })
    }

    fn table(&self, name: &str) -> Result<Vec<TargetLine>> {
        self.with(format!("table {name}"), |st| {
            let d = st
                .devices
                .get(name)
                .ok_or_else(|| kernel(libc::ENXIO, name))?;
            Ok(d.live.clone().unwrap_or_default())
        })
    }

    fn info(&self, name: &str) -> Result<Option<DmInfo>> {
        self.with(format!("info {name}"), |st| {
            Ok(st.devices.contains_key(name).then(|| info(st, name)))
        })
    }

    fn list(&self) -> Result<Vec<(String, DevNum)>> {
        self.with("list".to_owned(), |st| {
            Ok(st
                .devices
                .iter()
                .map(|(n, d)| (n.clone(), d.devnum))
                .collect())
        })
    }

    fn arm_events(&self) -> Result<()> {
        self.with("arm_events".to_owned(), |st| {
            st.armed_at = st.events;
            Ok(())
        })
    }

    fn wait_events(&self, timeout: std::time::Duration) -> Result<bool> {
        let fired = self.with("wait_events".to_owned(), |st| Ok(st.events > st.armed_at))?;
        if !fired {
            // Nothing to wait for in a fake: return soon, as a timeout would.
            std::thread::sleep(timeout.min(std::time::Duration::from_millis(1)));
        }
        Ok(fired)
    }

    fn target_types(&self) -> Result<Vec<String>> {
        self.with("target_types".to_owned(), |st| {
            let mut v = vec!["linear".to_owned(), "error".to_owned()];
            if !st.no_thin_target {
                v.push("thin-pool".to_owned());
                v.push("thin".to_owned());
            }
            Ok(v)
        })
    }
}

/// Completes deferred removals whose devices are no longer open (a removed
/// thin device closes its pool).
fn reap_deferred(st: &mut State) {
    loop {
        let ready: Vec<String> = st
            .devices
            .iter()
            .filter(|(_, d)| d.deferred_remove)
            .map(|(n, _)| n.clone())
            .filter(|n| open_count(st, n) == 0)
            .collect();
        if ready.is_empty() {
            return;
        }
        for n in ready {
            st.devices.remove(&n);
        }
    }
}

fn info(st: &State, name: &str) -> DmInfo {
    let d = &st.devices[name];
    DmInfo {
        name: name.to_owned(),
        devnum: d.devnum,
        open_count: open_count(st, name),
        suspended: d.suspended || d.live.is_none(),
        live_table: d.live.is_some(),
        inactive_table: d.inactive.is_some(),
        event_nr: d.event_nr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_line(meta: &str) -> TargetLine {
        format!("0 20480 thin-pool {meta} /dev/fake-data 128 16 0")
            .parse()
            .unwrap()
    }

    #[test]
    fn pool_messages_and_status() {
        let dm = FakeDm::new();
        let info = dm.create("p").unwrap();
        assert!(!info.live_table);
        dm.load("p", &[pool_line("/dev/fake-meta")]).unwrap();
        dm.resume("p").unwrap();
        dm.message("p", "create_thin 0").unwrap();
        assert!(dm.message("p", "create_thin 0").is_err());
        dm.message("p", "create_snap 1 0").unwrap();
        dm.message("p", "set_transaction_id 0 1").unwrap();
        assert!(dm.message("p", "set_transaction_id 0 2").is_err());
        let st: PoolStatus = dm.status("p").unwrap()[0].params.parse().unwrap();
        let u = st.usage().unwrap();
        assert_eq!(u.transaction_id, TransactionId(1));
        assert_eq!(u.total_data, DataBlocks::new(160));
        assert_eq!(dm.thin_ids("/dev/fake-meta"), vec![0, 1]);

        // A thin device holds the pool open.
        let pool = dm.info("p").unwrap().unwrap().devnum;
        dm.create("t").unwrap();
        let t = ThinTable {
            length: Sectors::new(2048),
            pool: pool.into(),
            id: crate::units::ThinId::new(0).unwrap(),
            external_origin: None,
        };
        dm.load("t", &[t.to_target()]).unwrap();
        dm.resume("t").unwrap();
        assert!(dm.remove("p", false).unwrap_err().is_busy());
        assert!(dm.message("p", "delete 0").unwrap_err().is_busy());
        dm.provision("t", 3).unwrap();
        let ts: ThinStatus = dm.status("t").unwrap()[0].params.parse().unwrap();
        assert_eq!(
            ts,
            ThinStatus::Working {
                mapped: Sectors::new(384),
                highest_mapped: Some(Sectors::new(383))
            }
        );
        // Unknown thin ids refuse to load.
        dm.create("u").unwrap();
        let bad = ThinTable {
            id: crate::units::ThinId::new(9).unwrap(),
            ..t
        };
        assert!(dm.load("u", &[bad.to_target()]).is_err());
        dm.remove("u", false).unwrap();
        dm.remove("t", false).unwrap();
        dm.remove("p", false).unwrap();
        // Metadata survives the pool device.
        dm.create("p").unwrap();
        dm.load("p", &[pool_line("/dev/fake-meta")]).unwrap();
        dm.resume("p").unwrap();
        assert_eq!(dm.thin_ids("/dev/fake-meta"), vec![0, 1]);
    }

    #[test]
    fn injected_faults() {
        let dm = FakeDm::new();
        dm.fail_next("create q", ErrorKind::Injected);
        assert_eq!(dm.create("q").unwrap_err().kind(), &ErrorKind::Injected);
        dm.create("q").unwrap();
        dm.crash_at("remove q", CrashWhen::After);
        let d = dm.clone();
        assert!(std::panic::catch_unwind(move || d.remove("q", false)).is_err());
        assert!(dm.info("q").unwrap().is_none());
    }

    #[test]
    fn deferred_remove_waits_for_close() {
        let dm = FakeDm::new();
        dm.create("x").unwrap();
        dm.open("x");
        assert!(dm.remove("x", false).unwrap_err().is_busy());
        dm.remove("x", true).unwrap();
        assert!(dm.info("x").unwrap().is_some());
        dm.close("x");
        assert!(dm.info("x").unwrap().is_none());
    }
}
