//! Logs of the long-running commands (`serve`, `pool monitor`) through
//! `tracing` to stderr: levels always, colours only on a terminal, no
//! timestamp under systemd (the journal stamps each line), or one JSON
//! object per line with `--log-format json`. `THINBOX_LOG` filters
//! (`info` by default; `--debug` is `debug`).

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `LEVEL target: message`, for people and the journal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`).
    Json,
}

/// Starts logging; the first call wins (`--debug` set one up already).
pub fn init(format: LogFormat, debug: bool) {
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        EnvFilter::try_from_env("THINBOX_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => {
            let terminal = nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
            let builder = builder.with_ansi(terminal);
            // systemd sets JOURNAL_STREAM for a unit whose stderr is the journal.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                builder.without_time().try_init()
            } else {
                builder.try_init()
            }
        }
    };
}
