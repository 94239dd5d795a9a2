//! The CLI's [`Observer`]: engine events as spinners and per-layer bars on
//! stderr when it is a terminal and not `--json`; the backend choice and
//! lock waits (naming the holder, terminal or not) as one line each.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use engine::{Event, Observer};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::print::human;

/// Turns engine events into terminal output.
#[derive(Debug)]
pub struct Progress {
    bars: Option<MultiProgress>,
    current: Mutex<Option<ProgressBar>>,
    downloads: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress {
    /// Bars and spinners only when `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        Progress {
            bars: (enabled && terminal).then(MultiProgress::new),
            current: Mutex::new(None),
            downloads: Mutex::new(HashMap::new()),
        }
    }

    fn start(&self, template: &str, message: String) {
        let Some(multi) = &self.bars else {
            return;
        };
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut c) = self.current.lock() {
            if let Some(old) = c.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    fn finish(&self, suffix: Option<&str>) {
        let Ok(mut c) = self.current.lock() else {
            return;
        };
        if let Some(bar) = c.take() {
            match suffix {
                Some(s) => {
                    let msg = bar.message();
                    bar.finish_with_message(format!("{msg}: {s}"));
                }
                None => bar.finish_and_clear(),
            }
        }
    }

    /// A spinner with `message` until the returned guard drops, for work
    /// the CLI itself waits on (a diff).
    pub fn spinner(&self, message: impl Into<String>) -> Spinner<'_> {
        self.start("{spinner} {msg} ({elapsed})", message.into());
        Spinner(self)
    }
}

/// Clears its spinner when dropped.
#[derive(Debug)]
pub struct Spinner<'a>(&'a Progress);

impl Drop for Spinner<'_> {
    fn drop(&mut self) {
        self.0.finish(None);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Ok(mut c) = self.current.lock() {
            if let Some(bar) = c.take() {
                bar.abandon();
            }
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

impl Observer for Progress {
    fn event(&self, event: &Event) {
        match event {
            Event::BackendChosen {
                backend,
                root,
                reason,
                record,
                config,
            } => {
                self.finish(None);
                eprintln!(
                    "thinbox: using the {backend} backend under {}: {reason} (recorded in {}; set `backend` in {} for another root)",
                    root.display(),
                    record.display(),
                    config.display()
                );
            }
            Event::Warning { message } => {
                self.finish(None);
                eprintln!("thinbox: warning: {message}");
            }
            Event::RootUnbounded { why } => {
                self.finish(None);
                eprintln!("thinbox: note: this container's root has no size bound: {why}");
            }
            Event::WaitingForLock { path, holder } => {
                // Said off a terminal too: a silent wait looks like a hang.
                self.finish(None);
                eprintln!(
                    "thinbox: waiting for another thinbox process{} holding {}",
                    holder
                        .as_ref()
                        .map(|h| format!(", {h},"))
                        .unwrap_or_default(),
                    path.display()
                );
            }
            Event::MakingPool { pool, dir } => self.start(
                "{spinner} {msg} ({elapsed})",
                format!("making loopback thin-pool {pool} in {}", dir.display()),
            ),
            Event::Mkfs { fs, on, size } => self.start(
                "{spinner} {msg} ({elapsed})",
                match size {
                    Some(s) => format!("making a {s} {fs} filesystem in {}", on.display()),
                    None => format!("making a {fs} filesystem in {}", on.display()),
                },
            ),
            Event::Mounting { path } => {
                if let Ok(c) = self.current.lock() {
                    if let Some(bar) = c.as_ref() {
                        bar.set_message(format!("mounting {}", path.display()));
                    }
                }
            }
            Event::StepDone => self.finish(None),
            Event::Layer {
                index,
                count,
                digest,
                size,
            } => self.start(
                "{spinner} {msg}",
                format!(
                    "layer {}/{count} {} ({})",
                    index + 1,
                    short(digest),
                    human(*size)
                ),
            ),
            Event::LayerDone { reused } => {
                self.finish(Some(if *reused { "already present" } else { "done" }))
            }
            Event::Download { digest, size } => {
                let Some(multi) = &self.bars else { return };
                let bar = multi.add(ProgressBar::new(*size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_message(format!("fetching {}", short(digest)));
                if let Ok(mut d) = self.downloads.lock() {
                    d.insert(digest.clone(), bar);
                }
            }
            Event::Downloading { digest, bytes } => {
                if let Some(bar) = self
                    .downloads
                    .lock()
                    .ok()
                    .and_then(|d| d.get(digest).cloned())
                {
                    bar.set_position(*bytes);
                }
            }
            Event::DownloadDone { digest, ok } => {
                if let Some(bar) = self
                    .downloads
                    .lock()
                    .ok()
                    .and_then(|mut d| d.remove(digest))
                {
                    if *ok {
                        bar.finish_with_message(format!("fetched {}", short(digest)));
                    } else {
                        bar.abandon_with_message(format!("failed {}", short(digest)));
                    }
                }
            }
            _ => {}
        }
    }
}
