//! Metrics and logs through the real binary: `thinbox metrics` and
//! `--textfile` checked by Debian's `promtool`; `thinbox serve`'s
//! `/metrics` on its default loopback address, a taken port refused at
//! start, JSON log lines; and in the VM, Debian's real `prometheus`
//! scraping serve on a dm-thin root and answering a PromQL query for the
//! pool's fill that matches `pool status`.
#![forbid(unsafe_code)]

mod cli_support;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cli_support::{http_get, metric as value, Reap, Root};
use integration::harness::{self, KernelTest};
use integration::need::Need;

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new(
            "metrics_command_passes_promtool",
            metrics_command_passes_promtool,
        )
        .needs(&[Need::Root, Need::Loop, Need::Btrfs]),
        KernelTest::new(
            "serve_metrics_on_the_default_address",
            serve_metrics_on_the_default_address,
        )
        .needs(&[Need::Root, Need::Loop, Need::Btrfs]),
        KernelTest::new(
            "prometheus_reads_a_pools_fill_from_serve",
            prometheus_reads_a_pools_fill_from_serve,
        )
        .needs(&[Need::Root, Need::Loop, Need::DmThin])
        .timeout(Duration::from_secs(600)),
    ])
}

/// `promtool check metrics` of `text`; panics with its words if it objects.
#[track_caller]
fn promtool_accepts(text: &str) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn metrics_command_passes_promtool() {
    let root = Root::new();
    root.ok(&["snapshot", "prepare", "a"]);
    root.ok(&["snapshot", "commit", "base", "a"]);
    root.ok(&["snapshot", "prepare", "b", "base"]);
    root.ok(&["snapshot", "view", "v", "base"]);
    // Containers: one exited by itself, one killed at its timeout.
    cli_support::busybox_image(&root, "bb:1");
    root.ok(&["run", "--name", "done", "bb:1", "--", "true"]);
    let r = root.run(&[
        "run",
        "--name",
        "slow",
        "--timeout",
        "1",
        "bb:1",
        "--",
        "sleep",
        "60",
    ]);
    assert_ne!(r.code, 0, "{r:?}");

    let text = root.ok(&["metrics"]);
    promtool_accepts(&text);
    for (series, n) in [
        // The containers' roots are active snapshots too.
        (r#"thinbox_snapshots{client="thinbox",kind="active"}"#, 3.0),
        (r#"thinbox_containers{reason="exited",state="exited"}"#, 1.0),
        (
            r#"thinbox_containers{reason="timed_out",state="exited"}"#,
            1.0,
        ),
        // base, and the image's layer.
        (
            r#"thinbox_snapshots{client="thinbox",kind="committed"}"#,
            2.0,
        ),
        (r#"thinbox_snapshots{client="thinbox",kind="view"}"#, 1.0),
        (
            r#"thinbox_snapshots{client="containerd",kind="active"}"#,
            0.0,
        ),
        (r#"thinbox_collect_failed{part="snapshots"}"#, 0.0),
        (r#"thinbox_collect_failed{part="pools"}"#, 0.0),
        (r#"thinbox_collect_failed{part="containers"}"#, 0.0),
    ] {
        assert_eq!(value(&text, series), n, "{series}");
    }

    // The textfile collector's file: the same families, whole, 0644.
    let dir = root.path().join("textfiles");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("thinbox.prom");
    root.ok(&["metrics", "--textfile", file.to_str().unwrap()]);
    let written = std::fs::read_to_string(&file).unwrap();
    promtool_accepts(&written);
    assert_eq!(
        value(
            &written,
            r#"thinbox_snapshots{client="thinbox",kind="committed"}"#
        ),
        2.0
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "a temporary file was left"
    );

    // A name node-exporter would not read is refused, naming the fix.
    let bad = dir.join("thinbox.txt");
    let line = root.fails(&["metrics", "--textfile", bad.to_str().unwrap()], 2);
    assert!(
        line.contains("thinbox.txt") && line.contains(".prom"),
        "{line}"
    );
    assert!(!bad.exists());
}

/// A started `thinbox serve --json`: the child and its start line.
struct Served {
    child: Reap,
    start: serde_json::Value,
    stderr: std::path::PathBuf,
}

fn start_serve(root: &Root, socket: &Path, extra: &[&str]) -> Served {
    let stderr = root.path().join(format!(
        "serve-{}.log",
        socket.file_stem().unwrap().to_string_lossy()
    ));
    let mut args = vec!["--json", "serve", "--socket", socket.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut child = Reap(
        root.command(&args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    // The start object, read as far as its end (the daemon keeps stdout).
    let start = serde_json::Deserializer::from_reader(child.0.stdout.take().unwrap())
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(|v| v.ok())
        .unwrap_or_else(|| {
            panic!(
                "no start object from serve; stderr: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
    Served {
        child,
        start,
        stderr,
    }
}

/// `http://ADDR/metrics` → `ADDR`.
fn address(start: &serde_json::Value) -> String {
    let url = start["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("{start}"));
    url.strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{url}"))
        .to_owned()
}

fn stop(child: &mut Child) -> i32 {
    cli_support::sigterm(child);
    child.wait().unwrap().code().unwrap_or(-1)
}

fn serve_metrics_on_the_default_address() {
    let root = Root::new();
    root.ok(&["snapshot", "prepare", "a"]);
    let socket = root.path().join("thinbox.sock");
    let mut served = start_serve(&root, &socket, &["--log-format", "json"]);
    assert_eq!(
        served.start["metrics"], "http://127.0.0.1:9437/metrics",
        "{}",
        served.start
    );
    let addr = address(&served.start);

    let (code, head, body) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    promtool_accepts(&body);
    assert_eq!(
        value(
            &body,
            r#"thinbox_snapshots{client="thinbox",kind="active"}"#
        ),
        1.0
    );
    // Every verb has its latency series from the first scrape.
    for verb in ["prepare", "commit", "remove", "cleanup"] {
        assert_eq!(
            value(
                &body,
                &format!(r#"thinbox_operation_duration_seconds_count{{verb="{verb}"}}"#)
            ),
            0.0
        );
    }
    assert_eq!(http_get(&addr, "/").0, 404);

    // A second daemon on the same address is refused at start, naming the
    // setting, and leaves no socket behind.
    let other = Root::new();
    let other_socket = other.path().join("other.sock");
    let line = other.fails(&["serve", "--socket", other_socket.to_str().unwrap()], 4);
    assert!(
        line.contains("127.0.0.1:9437") && line.contains("metrics_address"),
        "{line}"
    );
    assert!(!other_socket.exists());
    assert!(
        !other.path().join("backend.toml").exists(),
        "a refused start chose a backend"
    );
    let line = other.fails(
        &[
            "serve",
            "--socket",
            other_socket.to_str().unwrap(),
            "--metrics-address",
            "localhost",
        ],
        2,
    );
    assert!(
        line.contains("\"localhost\"") && line.contains("off"),
        "{line}"
    );
    // `off` serves none.
    let mut quiet = start_serve(&other, &other_socket, &["--metrics-address", "off"]);
    assert!(quiet.start["metrics"].is_null(), "{}", quiet.start);
    assert_eq!(stop(&mut quiet.child.0), 0);

    // SIGTERM: the daemon logs its stop as one JSON object per line.
    assert_eq!(stop(&mut served.child.0), 0);
    let log = std::fs::read_to_string(&served.stderr).unwrap();
    let stopping = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stopping"))
        })
        .unwrap_or_else(|| panic!("no JSON stop line in:\n{log}"));
    assert_eq!(stopping["level"], "INFO", "{stopping}");
    assert!(!socket.exists());
    assert!(TcpStream::connect(&addr).is_err(), "{addr} still answers");

    // Text logs off a terminal carry no colour codes.
    let mut text = start_serve(&root, &socket, &["--metrics-address", "127.0.0.1:0"]);
    assert_eq!(stop(&mut text.child.0), 0);
    let log = std::fs::read_to_string(&text.stderr).unwrap();
    assert!(log.contains("INFO") && log.contains("stopping"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes off a terminal: {log:?}"
    );
}

/// A TCP port free just now on the loopback address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `query` through Prometheus' HTTP API: the first result's value, once
/// there is one.
fn promql(prometheus: &str, query: &str) -> Option<f64> {
    let mut encoded = String::new();
    for b in query.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let (code, head, body) = http_get(prometheus, &format!("/api/v1/query?query={encoded}"));
    assert_eq!(code, 200, "{query}: {head}\n{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{query}: {v}");
    let first = v["data"]["result"].get(0)?;
    first["value"][1].as_str()?.parse().ok()
}

fn prometheus_reads_a_pools_fill_from_serve() {
    // The default dm-thin backend, whose base filesystem crosses a (silly)
    // 1% threshold, so opening the root grows the pool once.
    let root = Root::with_config(
        "[devmapper]\ndata_size = \"256M\"\nmetadata_size = \"64M\"\nbase_size = \"128M\"\nautoextend_threshold = 1\nautoextend_percent = 50\n",
    );
    root.ok(&["snapshot", "prepare", "a"]);
    let pool = format!(
        "{}-pool",
        root.path().file_name().unwrap().to_string_lossy()
    );
    let socket = root.path().join("thinbox.sock");
    let mut served = start_serve(&root, &socket, &["--metrics-address", "127.0.0.1:0"]);
    let addr = address(&served.start);
    let (code, _, scrape) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    promtool_accepts(&scrape);
    let labels = format!(r#"{{pool="{pool}"}}"#);
    assert_eq!(
        value(
            &scrape,
            &format!(r#"thinbox_pool_mode{{mode="rw",pool="{pool}"}}"#)
        ),
        1.0
    );
    assert!(
        value(
            &scrape,
            &format!(r#"thinbox_pool_autoextends_total{{device="data",pool="{pool}"}}"#)
        ) >= 1.0,
        "{scrape}"
    );
    assert!(
        value(
            &scrape,
            &format!("thinbox_pool_metadata_used_bytes{labels}")
        ) > 0.0
    );

    // Debian's prometheus scraping it every second.
    let work = root.path().join("prometheus");
    std::fs::create_dir(&work).unwrap();
    let config = work.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: thinbox\n    static_configs:\n      - targets: [\"{addr}\"]\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let log = work.join("prometheus.log");
    let _prometheus = Reap(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus (scripts/setup.sh installs Debian's)"),
    );
    let fill_query =
        format!("thinbox_pool_data_used_bytes{labels} / thinbox_pool_data_size_bytes{labels}");
    let started = Instant::now();
    let fill = loop {
        // Up, then ready (503 while its storage opens), then scraped once.
        let ready = TcpStream::connect(&web).is_ok() && http_get(&web, "/-/ready").0 == 200;
        let answer = if ready {
            promql(&web, &fill_query)
        } else {
            None
        };
        if let Some(f) = answer {
            break f;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "prometheus gave no fill in 300 s; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let status = root.json(&["pool", "status", &pool]);
    let used = status["data"]["used_bytes"].as_f64().unwrap();
    let total = status["data"]["total_bytes"].as_f64().unwrap();
    assert!(used > 0.0, "{status}");
    assert!(
        (fill - used / total).abs() < 1e-9,
        "prometheus says {fill}, pool status {used}/{total}"
    );
    assert_eq!(
        promql(
            &web,
            &format!(r#"thinbox_pool_mode{{pool="{pool}",mode="rw"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(promql(&web, r#"up{job="thinbox"}"#), Some(1.0));
    assert_eq!(stop(&mut served.child.0), 0);
}
