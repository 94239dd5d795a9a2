//! `thinbox serve` (containerd's snapshots API on a unix socket) and
//! `thinbox containerd config` (the lines containerd needs to use it).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{engine_options, print_json};
use crate::Global;

/// `thinbox serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The unix socket containerd connects to.
    #[arg(long, default_value = daemon::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// A group that may connect too (socket mode 0660 instead of 0600).
    #[arg(long)]
    pub group: Option<String>,
    /// Where `/metrics` is served (IP:PORT, or `off`); overrides
    /// `[serve] metrics_address` (default 127.0.0.1:9437).
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<String>,
    /// Leave the root's pools to `thinbox pool monitor` (or nobody);
    /// overrides `[serve] monitor_pools` (default true).
    #[arg(long)]
    pub no_monitor: bool,
    /// Log lines as text or JSON.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: crate::logs::LogFormat,
}

/// `thinbox containerd ...`.
#[derive(Debug, Subcommand)]
pub enum ContainerdCommand {
    /// Prints the proxy-plugin lines for /etc/containerd/config.toml.
    Config {
        /// The socket `thinbox serve` listens on.
        #[arg(long, default_value = daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

fn group_id(name: &str) -> anyhow::Result<nix::unistd::Gid> {
    match nix::unistd::Group::from_name(name)? {
        Some(g) => Ok(g.gid),
        None => anyhow::bail!("--group {name:?}: no such group; create it or give an existing one"),
    }
}

/// Runs `thinbox serve`.
pub fn serve(g: &Global, a: &ServeArgs) -> anyhow::Result<()> {
    crate::logs::init(a.log_format, g.debug);
    let engine = engine_options(g);
    let config = engine.state_root()?.1.serve;
    let metrics = a.metrics_address.clone().unwrap_or(config.metrics_address);
    let opts = daemon::ServeOptions {
        monitor_pools: config.monitor_pools && !a.no_monitor,
        metrics: engine::config::parse_metrics_address(&metrics)?,
        engine,
        socket: a.socket.clone(),
        group: a.group.as_deref().map(group_id).transpose()?,
    };
    let d = daemon::Daemon::bind(&opts)?;
    let backend = d.engine().backend().to_string();
    if g.json {
        print_json(&json!({
            "socket": d.socket(),
            "root": d.engine().root(),
            "backend": backend,
            "metrics": d.metrics_address().map(|a| format!("http://{a}/metrics")),
        }))?;
    } else {
        eprintln!(
            "thinbox serve: containerd's snapshots API on {} ({backend} under {}){}",
            d.socket().display(),
            d.engine().root().display(),
            d.metrics_address().map_or(String::new(), |a| format!(
                "; metrics on http://{a}/metrics"
            ))
        );
    }
    daemon::socket::notify_ready();
    Ok(d.run()?)
}

/// The `[proxy_plugins]` table and the CRI setting for `socket`.
pub fn containerd_config(socket: &std::path::Path) -> String {
    format!(
        "# /etc/containerd/config.toml (config version 2, containerd 1.6 and later)\n\
         version = 2\n\
         \n\
         [proxy_plugins]\n  \
           [proxy_plugins.thinbox]\n    \
             type = \"snapshot\"\n    \
             address = \"{}\"\n\
         \n\
         # Kubernetes nodes: the CRI plugin's snapshotter.\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
           snapshotter = \"thinbox\"\n",
        socket.display()
    )
}

/// Runs `thinbox containerd ...`.
pub fn containerd(g: &Global, c: &ContainerdCommand) -> anyhow::Result<()> {
    match c {
        ContainerdCommand::Config { socket } => {
            let text = containerd_config(socket);
            if g.json {
                return print_json(&json!({
                    "socket": socket,
                    "proxy_plugin": { "name": "thinbox", "type": "snapshot", "address": socket },
                    "cri_snapshotter": "thinbox",
                    "toml": text,
                }));
            }
            print!("{text}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::containerd_config;

    #[test]
    fn the_config_parses_as_containerd_reads_it() {
        let text = containerd_config(std::path::Path::new("/run/x/y.sock"));
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["version"].as_integer(), Some(2));
        let p = &v["proxy_plugins"]["thinbox"];
        assert_eq!(p["type"].as_str(), Some("snapshot"));
        assert_eq!(p["address"].as_str(), Some("/run/x/y.sock"));
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert_eq!(cri["snapshotter"].as_str(), Some("thinbox"));
    }
}
