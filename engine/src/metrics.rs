//! Prometheus metrics of one state root: its pools (space, mode, events,
//! extensions), its snapshots by kind and client, its containers by state
//! and exit reason. [`StateCollector`] reads them afresh at each scrape,
//! taking no lock (as `pool status` and `snapshot ls` do), so `thinbox
//! serve` exports them beside its own operation metrics and `thinbox
//! metrics` writes them for node-exporter's textfile collector.
//!
//! The exposition is Prometheus' text format 0.0.4 (the `prometheus`
//! crate): node-exporter's textfile collector and `promtool check metrics`
//! read that format, not OpenMetrics (docs/design.md).

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::clients::Client;
use crate::containers::Containers;
use crate::error::{Error, ErrorKind, Result};
use crate::options::EngineOptions;
use crate::pools::Pools;

/// The modes a pool's `thinbox_pool_mode` has a series for.
pub const POOL_MODES: [&str; 5] = ["rw", "out_of_data_space", "ro", "fail", "inactive"];

/// The state metrics of one root, read at each collection.
#[derive(Debug)]
pub struct StateCollector {
    opts: EngineOptions,
    families: Families,
    /// One collection at a time: each resets and refills the families.
    collecting: Mutex<()>,
}

#[derive(Debug)]
struct Families {
    pool_info: IntGaugeVec,
    data_used: IntGaugeVec,
    data_size: IntGaugeVec,
    metadata_used: IntGaugeVec,
    metadata_size: IntGaugeVec,
    low_water_mark: IntGaugeVec,
    mode: IntGaugeVec,
    needs_check: IntGaugeVec,
    below_floor: IntGaugeVec,
    dm_events: IntCounterVec,
    extensions: IntCounterVec,
    snapshots: IntGaugeVec,
    containers: IntGaugeVec,
    collect_failed: IntGaugeVec,
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric definition")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric definition")
}

impl Families {
    fn new() -> Families {
        let pool = &["pool"];
        Families {
            pool_info: gauge(
                "thinbox_pool_info",
                "A pool thinbox knows: its kind (loopback, lvm, adopted) and dm device.",
                &["pool", "kind", "dm_name"],
            ),
            data_used: gauge(
                "thinbox_pool_data_used_bytes",
                "Data space the pool's thin devices use.",
                pool,
            ),
            data_size: gauge(
                "thinbox_pool_data_size_bytes",
                "The pool's data device.",
                pool,
            ),
            metadata_used: gauge(
                "thinbox_pool_metadata_used_bytes",
                "Metadata space in use.",
                pool,
            ),
            metadata_size: gauge(
                "thinbox_pool_metadata_size_bytes",
                "The pool's metadata device.",
                pool,
            ),
            low_water_mark: gauge(
                "thinbox_pool_low_water_mark_bytes",
                "Free data space below which the kernel raises an event.",
                pool,
            ),
            mode: gauge(
                "thinbox_pool_mode",
                "1 for the pool's mode (rw, out_of_data_space, ro, fail, inactive), 0 for the others.",
                &["pool", "mode"],
            ),
            needs_check: gauge(
                "thinbox_pool_needs_check",
                "1 when the metadata needs thin_check before the pool can be written.",
                pool,
            ),
            below_floor: gauge(
                "thinbox_pool_below_free_space_floor",
                "1 when less than the pool's free-space floor is free (new thin devices are refused).",
                pool,
            ),
            dm_events: counter(
                "thinbox_pool_dm_events_total",
                "Events the pool's dm device raised (low-water crossings, mode changes) since it was made.",
                pool,
            ),
            extensions: counter(
                "thinbox_pool_autoextends_total",
                "Times thinbox grew the pool's data or metadata device.",
                &["pool", "device"],
            ),
            snapshots: gauge(
                "thinbox_snapshots",
                "Snapshots by kind (active, view, committed) and client (thinbox, containerd).",
                &["kind", "client"],
            ),
            containers: gauge(
                "thinbox_containers",
                "Containers by state, and by exit reason once exited.",
                &["state", "reason"],
            ),
            collect_failed: gauge(
                "thinbox_collect_failed",
                "1 when reading a part (pools, snapshots, containers) failed at this scrape (the log says why).",
                &["part"],
            ),
        }
    }

    fn gauges(&self) -> [&IntGaugeVec; 12] {
        [
            &self.pool_info,
            &self.data_used,
            &self.data_size,
            &self.metadata_used,
            &self.metadata_size,
            &self.low_water_mark,
            &self.mode,
            &self.needs_check,
            &self.below_floor,
            &self.snapshots,
            &self.containers,
            &self.collect_failed,
        ]
    }

    fn all(&self) -> Vec<&dyn Collector> {
        let counters: [&dyn Collector; 2] = [&self.dm_events, &self.extensions];
        self.gauges()
            .into_iter()
            .map(|g| g as &dyn Collector)
            .chain(counters)
            .collect()
    }

    fn reset(&self) {
        for g in self.gauges() {
            g.reset();
        }
        self.dm_events.reset();
        self.extensions.reset();
    }
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl StateCollector {
    /// The collector of the root `opts` names.
    pub fn new(opts: EngineOptions) -> StateCollector {
        StateCollector {
            opts,
            families: Families::new(),
            collecting: Mutex::new(()),
        }
    }

    fn pools(&self) -> Result<()> {
        let f = &self.families;
        let Some(root) = self.opts.used_root()? else {
            return Ok(());
        };
        // A root on a host without dm-thin has no pools, nor the seams.
        if !root.join("pools").exists() {
            return Ok(());
        }
        let pools = Pools::for_engine(&root, &self.opts)?;
        for name in pools.names()? {
            let r = pools.status(&name)?;
            let p = [name.as_str()];
            f.pool_info
                .with_label_values(&[name.as_str(), &r.kind.to_string(), &r.dm_name])
                .set(1);
            if let Some(d) = r.data {
                f.data_used.with_label_values(&p).set(as_i64(d.used_bytes));
                f.data_size.with_label_values(&p).set(as_i64(d.total_bytes));
            }
            if let Some(m) = r.metadata {
                f.metadata_used
                    .with_label_values(&p)
                    .set(as_i64(m.used_bytes));
                f.metadata_size
                    .with_label_values(&p)
                    .set(as_i64(m.total_bytes));
            }
            if let (Some(lwm), Some(bs)) = (r.low_water_mark, r.block_size) {
                f.low_water_mark
                    .with_label_values(&p)
                    .set(as_i64(lwm.saturating_mul(bs)));
            }
            let mode = pool_mode(&r.mode);
            for m in POOL_MODES {
                f.mode
                    .with_label_values(&[name.as_str(), m])
                    .set(i64::from(m == mode));
            }
            f.needs_check
                .with_label_values(&p)
                .set(i64::from(r.needs_check));
            f.below_floor
                .with_label_values(&p)
                .set(i64::from(r.below_floor));
            if let Some(n) = r.dm_events {
                f.dm_events.with_label_values(&p).inc_by(u64::from(n));
            }
            let n = pools.extensions(&name)?;
            f.extensions
                .with_label_values(&[name.as_str(), "data"])
                .inc_by(n.data);
            f.extensions
                .with_label_values(&[name.as_str(), "metadata"])
                .inc_by(n.metadata);
        }
        Ok(())
    }

    fn snapshots(&self) -> Result<()> {
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        // Every kind and client has a series, zero included, so a query
        // over them never meets a missing one.
        for kind in ["active", "view", "committed"] {
            for client in [Client::Thinbox, Client::Containerd] {
                counts.insert((kind, client.as_str()), 0);
            }
        }
        if let Some(reader) = self.opts.read_snapshots()? {
            reader.walk(&[], &mut |i| {
                let kind = match i.kind {
                    snapshotter::Kind::Active => "active",
                    snapshotter::Kind::View => "view",
                    snapshotter::Kind::Committed => "committed",
                };
                *counts
                    .entry((kind, Client::of(&i.name).as_str()))
                    .or_default() += 1;
                Ok(())
            })?;
        }
        for ((kind, client), n) in counts {
            self.families
                .snapshots
                .with_label_values(&[kind, client])
                .set(n);
        }
        Ok(())
    }

    fn containers(&self) -> Result<()> {
        let Some(root) = self.opts.used_root()? else {
            return Ok(());
        };
        if !root.join("containers.db").exists() {
            return Ok(());
        }
        let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
        for c in Containers::open(&root)?.list()? {
            let reason = match &c.report {
                Some(r) => serde_json::to_value(r.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                None => String::new(),
            };
            *counts
                .entry((c.state.as_str().to_owned(), reason))
                .or_default() += 1;
        }
        for ((state, reason), n) in counts {
            self.families
                .containers
                .with_label_values(&[state.as_str(), reason.as_str()])
                .set(n);
        }
        Ok(())
    }
}

/// The mode series a pool's reported mode counts under: the kernel's
/// `Fail` (and a half-made record) as `fail`.
fn pool_mode(reported: &str) -> &'static str {
    match reported {
        "rw" => "rw",
        "out_of_data_space" => "out_of_data_space",
        "ro" => "ro",
        "inactive" => "inactive",
        _ => "fail",
    }
}

/// Reads one part of the state into the families.
type ReadPart = fn(&StateCollector) -> Result<()>;

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.families
            .all()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self
            .collecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.families.reset();
        let parts: [(&str, ReadPart); 3] = [
            ("pools", StateCollector::pools),
            ("snapshots", StateCollector::snapshots),
            ("containers", StateCollector::containers),
        ];
        for (part, read) in parts {
            let failed = match read(self) {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!("metrics: cannot read the {part}: {e}");
                    true
                }
            };
            self.families
                .collect_failed
                .with_label_values(&[part])
                .set(i64::from(failed));
        }
        self.families
            .all()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

/// A registry holding `collector` (and whatever the caller adds).
pub fn registry(collector: StateCollector) -> Result<Registry> {
    let r = Registry::new();
    register(&r, Box::new(collector))?;
    Ok(r)
}

/// Registers `c` in `r`.
pub fn register(r: &Registry, c: Box<dyn Collector>) -> Result<()> {
    r.register(c)
        .map_err(|e| Error::new(ErrorKind::Failed, format!("cannot register metrics: {e}")))
}

/// `r`'s metrics in Prometheus' text format.
pub fn encode(r: &Registry) -> Result<String> {
    TextEncoder::new()
        .encode_to_string(&r.gather())
        .map_err(|e| Error::new(ErrorKind::Failed, format!("cannot encode metrics: {e}")))
}

/// The text format's content type, for an HTTP answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes `text` to `path` as node-exporter's textfile collector needs it:
/// whole or not at all (a temporary file in the same directory, renamed).
pub fn write_textfile(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => std::path::Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".thinbox-metrics")
        .tempfile_in(dir)
        .map_err(|e| Error::io("cannot write into", dir, e))?;
    tmp.write_all(text.as_bytes())
        .map_err(|e| Error::io("cannot write", tmp.path(), e))?;
    // The collector reads files others may read: 0644, not tempfile's 0600.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("cannot set the mode of", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("cannot write", path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests;
