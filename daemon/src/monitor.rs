//! The pool monitor inside `thinbox serve`: every pool of the root that
//! thinbox made is kept grown past its autoextend threshold, as `thinbox
//! pool monitor NAME` keeps one, by the same engine call
//! ([`engine::Pools::monitor`]) on a thread of its own per pool.
//!
//! The root's pools are listed again every [`RESCAN`], so a pool made
//! while serve runs is monitored too, and a monitor that ended (its pool
//! destroyed, or another process holding the pool's monitor lock) is
//! retried then. Each failure is logged once until it changes. Adopted
//! pools are their owner's to grow and are left alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::pools::PoolKind;
use engine::{EngineOptions, ErrorKind};

/// How often the root's pools are listed again.
pub const RESCAN: Duration = Duration::from_secs(10);
/// A check of each pool at least this often, besides its dm events.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// The running monitors; [`PoolMonitors::stop`] ends them.
#[derive(Debug)]
pub struct PoolMonitors {
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
}

impl PoolMonitors {
    /// Starts monitoring the pools of `opts`' root.
    pub fn start(opts: EngineOptions) -> PoolMonitors {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let supervisor = std::thread::Builder::new()
            .name("thinbox-monitor".into())
            .spawn(move || supervise(&opts, &flag))
            .map_err(|e| tracing::warn!("cannot start the pool monitor: {e}"))
            .ok();
        PoolMonitors { stop, supervisor }
    }

    /// Stops every monitor and waits for them (each notices within a
    /// second: the watch's tick).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.supervisor.take() {
            let _ = s.join();
        }
    }
}

impl Drop for PoolMonitors {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A pool's monitor thread, and the last failure logged for the pool.
#[derive(Default)]
struct Watched {
    thread: Option<JoinHandle<Result<(), engine::Error>>>,
    last_failure: Option<String>,
}

fn supervise(opts: &EngineOptions, stop: &Arc<AtomicBool>) {
    let mut watched: BTreeMap<String, Watched> = BTreeMap::new();
    let mut listing_failure = None;
    while !stop.load(Ordering::SeqCst) {
        match opts.pools().and_then(|p| {
            let names = p.names()?;
            Ok((p, names))
        }) {
            Ok((pools, names)) => {
                listing_failure = None;
                for name in names {
                    let w = watched.entry(name.clone()).or_default();
                    reap(&name, w);
                    if w.thread.is_some() {
                        continue;
                    }
                    match pools.record(&name) {
                        Ok(rec) if rec.kind == PoolKind::Adopted => continue,
                        Ok(_) => {}
                        Err(_) => continue, // destroyed meanwhile
                    }
                    w.thread = spawn(opts.clone(), name, Arc::clone(stop));
                }
            }
            Err(e) => {
                let text = e.to_string();
                if listing_failure.as_ref() != Some(&text) {
                    tracing::warn!("pool monitor: cannot list the root's pools: {text}");
                    listing_failure = Some(text);
                }
            }
        }
        let until = Instant::now() + RESCAN;
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for (name, mut w) in watched {
        if let Some(t) = w.thread.take() {
            finished(&name, &mut w, t.join());
        }
    }
}

/// Collects a monitor thread that ended.
fn reap(name: &str, w: &mut Watched) {
    if w.thread.as_ref().is_some_and(|t| t.is_finished()) {
        let t = w.thread.take().expect("checked above");
        finished(name, w, t.join());
    }
}

fn finished(name: &str, w: &mut Watched, outcome: std::thread::Result<Result<(), engine::Error>>) {
    let text = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(e)) if e.kind == ErrorKind::InUse => {
            // Someone else keeps it grown: say so once, look again later.
            format!("pool {name}: {e}")
        }
        Ok(Err(e)) => format!("pool {name}: the monitor stopped: {e}"),
        Err(_) => format!("pool {name}: the monitor panicked"),
    };
    if w.last_failure.as_ref() != Some(&text) {
        tracing::warn!("{text}; retrying in {}s", RESCAN.as_secs());
        w.last_failure = Some(text);
    }
}

fn spawn(
    opts: EngineOptions,
    name: String,
    stop: Arc<AtomicBool>,
) -> Option<JoinHandle<Result<(), engine::Error>>> {
    let failed_name = name.clone();
    std::thread::Builder::new()
        .name(format!("monitor-{name}"))
        .spawn(move || {
            let pools = opts.pools()?;
            let mut started = false;
            pools.monitor(&name, &stop, INTERVAL, false, &mut |c| {
                if !started {
                    let used = c
                        .status
                        .data
                        .as_ref()
                        .map_or("unknown".into(), |d| format!("{}%", d.used_percent));
                    tracing::info!(
                        pool = name.as_str(),
                        "monitoring pool {name}: data {used} used, grown by {}% at {}%",
                        c.status.autoextend_percent,
                        c.status.autoextend_threshold
                    );
                    started = true;
                }
                if let Some(to) = c.extended_data_to {
                    tracing::info!(
                        pool = name.as_str(),
                        "extended pool {name}'s data to {to} bytes"
                    );
                }
                if let Some(to) = c.extended_metadata_to {
                    tracing::info!(
                        pool = name.as_str(),
                        "extended pool {name}'s metadata to {to} bytes"
                    );
                }
                if c.needs_attention() {
                    tracing::warn!(
                        pool = name.as_str(),
                        "pool {name} is in mode {}: run `thinbox pool check {name}`",
                        c.status.mode
                    );
                }
            })?;
            Ok(())
        })
        .map_err(|e| tracing::warn!("pool {failed_name}: cannot start its monitor: {e}"))
        .ok()
}
