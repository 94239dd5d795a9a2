//! The harness for real-kernel tests (`harness = false` test targets).
//!
//! Each test declares its [`Need`]s. Run directly (`cargo test -p integration
//! --test smoke`), a test whose needs this machine lacks is skipped with a
//! message naming them, or fails when `CI=true`. Run through `thinbox-test`
//! (scripts/test.sh), the same tests are placed on the host or in the VM by
//! their needs, and the VM ones are batched into as few boots as possible.
//!
//! Every test runs in a child process of its own (the test binary re-executed
//! with `--run-one NAME`), so a crash, a hang or a leak in one cannot take the
//! others down; a sweep removes leftovers named `thinbox-test-*` before and
//! after the run.
//!
//! Command line, compatible with what cargo passes:
//! `[FILTER...] [--exact] [--list] [--nocapture]`, plus `--thinbox-list-json`
//! (the tests and their needs, for the orchestrator) and `--run-one NAME`.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::need::{Environment, Need};

/// Environment variable: append one JSON [`TestOutcome`] per test to this file.
pub const RESULTS_ENV: &str = "THINBOX_RESULTS";

/// One real-kernel test.
#[derive(Debug, Clone, Copy)]
pub struct KernelTest {
    /// The test's name.
    pub name: &'static str,
    /// What it needs from the kernel and host.
    pub needs: &'static [Need],
    /// How long it may run.
    pub timeout: Duration,
    /// The test body; it fails by panicking.
    pub body: fn(),
    /// Left out of CI's smoke run (`thinbox-test --smoke`), naming the
    /// smoke test that covers the same code; `None` for smoke tests.
    pub not_in_smoke: Option<&'static str>,
    /// Also run on each extra kernel of the matrix (5.10, 6.12), in CI's
    /// smoke run as in the full one.
    pub kernel_matrix: bool,
}

impl KernelTest {
    /// A test needing nothing, with the default timeout.
    pub const fn new(name: &'static str, body: fn()) -> KernelTest {
        KernelTest {
            name,
            needs: &[],
            timeout: Duration::from_secs(300),
            body,
            not_in_smoke: None,
            kernel_matrix: false,
        }
    }

    /// The same test with these needs.
    pub const fn needs(mut self, needs: &'static [Need]) -> KernelTest {
        self.needs = needs;
        self
    }

    /// The same test left out of CI's smoke run: a slow duplicate whose
    /// code `covered_by` (a test of the same binary, or
    /// `PACKAGE::TARGET::TEST`) exercises in the smoke run.
    pub const fn not_in_smoke(mut self, covered_by: &'static str) -> KernelTest {
        self.not_in_smoke = Some(covered_by);
        self
    }

    /// The same test also run on every extra kernel of the matrix: one of
    /// the few that show a kernel can carry thinbox (a pool's life, an
    /// autoextension, each backend's basic case, a limited container, a
    /// SIGKILL recovery).
    pub const fn in_kernel_matrix(mut self) -> KernelTest {
        self.kernel_matrix = true;
        self
    }

    /// The same test with this timeout.
    pub const fn timeout(mut self, timeout: Duration) -> KernelTest {
        self.timeout = timeout;
        self
    }
}

/// A test as the orchestrator sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestListing {
    /// The test's name.
    pub name: String,
    /// What it needs.
    pub needs: Vec<Need>,
    /// Its timeout in seconds.
    pub timeout_secs: u64,
    /// The smoke test covering it, when CI's smoke run leaves it out.
    #[serde(default)]
    pub not_in_smoke: Option<String>,
    /// Also run on each extra kernel of the matrix.
    #[serde(default)]
    pub kernel_matrix: bool,
}

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It passed.
    Passed,
    /// It failed.
    Failed,
    /// It did not run (its environment is missing, outside CI).
    Skipped,
}

/// One test's result, as written to [`RESULTS_ENV`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestOutcome {
    /// The test's name.
    pub name: String,
    /// How it went.
    pub verdict: Verdict,
    /// Why it failed or was skipped.
    pub reason: String,
    /// How long it took.
    pub seconds: f64,
}

/// Whether `CI=true` (a missing environment is then a failure, not a skip).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The variable that asks for every point of the long matrices.
pub const FULL_ENV: &str = "THINBOX_FULL";

/// Whether `THINBOX_FULL=1`: tests with a long matrix (crash points) run
/// all of it; otherwise a subset that still covers each path through the
/// code. `thinbox-test` sets it for every test but in a `--smoke` run
/// (CI's); docs/testing.md lists the matrices.
pub fn full_matrix() -> bool {
    std::env::var(FULL_ENV).is_ok_and(|v| v == "1" || v == "true")
}

#[derive(Debug, Default)]
struct Args {
    filters: Vec<String>,
    exact: bool,
    list: bool,
    list_json: bool,
    nocapture: bool,
    run_one: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--exact" => args.exact = true,
            "--list" => args.list = true,
            "--thinbox-list-json" => args.list_json = true,
            "--nocapture" | "--no-capture" => args.nocapture = true,
            "--run-one" => args.run_one = it.next(),
            // libtest options that cargo or people pass and that mean nothing here.
            "--test-threads" | "--format" | "--color" | "-Z" | "--logfile" | "--skip" => {
                it.next();
            }
            other if other.starts_with('-') => {}
            _ => args.filters.push(arg),
        }
    }
    args
}

/// Marks the tests named in `names` [`KernelTest::in_kernel_matrix`];
/// panics on a name that is not a test, so a rename cannot drop a test
/// from the matrix unseen.
pub fn in_kernel_matrix(tests: &mut [KernelTest], names: &[&str]) {
    for name in names {
        let test = tests
            .iter_mut()
            .find(|t| t.name == *name)
            .unwrap_or_else(|| panic!("the kernel matrix names {name}, which is not a test here"));
        *test = test.in_kernel_matrix();
    }
}

/// The test binary's `main`.
pub fn main(tests: &[KernelTest]) -> ExitCode {
    let args = parse_args();
    if let Some(name) = args.run_one {
        return run_in_this_process(tests, &name);
    }
    if args.list_json {
        let listing: Vec<TestListing> = tests
            .iter()
            .map(|t| TestListing {
                name: t.name.to_owned(),
                needs: t.needs.to_vec(),
                timeout_secs: t.timeout.as_secs(),
                not_in_smoke: t.not_in_smoke.map(str::to_owned),
                kernel_matrix: t.kernel_matrix,
            })
            .collect();
        println!("{}", serde_json::to_string(&listing).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let selected: Vec<&KernelTest> = tests
        .iter()
        .filter(|t| {
            args.filters.is_empty()
                || args.filters.iter().any(|f| {
                    if args.exact {
                        t.name == f
                    } else {
                        t.name.contains(f.as_str())
                    }
                })
        })
        .collect();
    if args.list {
        for t in &selected {
            println!("{}: test", t.name);
        }
        return ExitCode::SUCCESS;
    }

    let env = Environment::probe();
    println!("\nrunning {} tests", selected.len());
    crate::fixtures::sweep();
    let mut counts = [0usize; 3];
    for test in &selected {
        let outcome = run_child(test, &env, args.nocapture);
        let label = match outcome.verdict {
            Verdict::Passed => "ok".to_owned(),
            Verdict::Failed => "FAILED".to_owned(),
            Verdict::Skipped => format!("skipped ({})", outcome.reason),
        };
        println!("test {} ... {label} ({:.1}s)", test.name, outcome.seconds);
        if outcome.verdict == Verdict::Failed {
            println!("---- {} ----\n{}", test.name, outcome.reason.trim_end());
        }
        counts[outcome.verdict as usize] += 1;
        record(&outcome);
    }
    crate::fixtures::sweep();
    let [passed, failed, skipped] = counts;
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; {skipped} ignored; 0 measured; {} filtered out\n",
        if failed == 0 { "ok" } else { "FAILED" },
        tests.len() - selected.len()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}

fn run_in_this_process(tests: &[KernelTest], name: &str) -> ExitCode {
    match tests.iter().find(|t| t.name == name) {
        Some(test) => {
            (test.body)();
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("no kernel test named {name:?}: list them with --list");
            ExitCode::from(2)
        }
    }
}

fn run_child(test: &KernelTest, env: &Environment, nocapture: bool) -> TestOutcome {
    let started = Instant::now();
    let outcome = |verdict, reason: String| TestOutcome {
        name: test.name.to_owned(),
        verdict,
        reason,
        seconds: started.elapsed().as_secs_f64(),
    };
    let missing = env.missing(test.needs);
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(Need::to_string).collect();
        let reason = format!(
            "needs {}, which this machine lacks; scripts/test.sh runs it in the VM",
            names.join(", ")
        );
        let verdict = if in_ci() {
            Verdict::Failed
        } else {
            Verdict::Skipped
        };
        return outcome(verdict, reason);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return outcome(Verdict::Failed, format!("cannot find the test binary: {e}")),
    };
    let mut command = Command::new(exe);
    command
        .args(["--run-one", test.name])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .process_group(0);
    if !nocapture {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    crate::sys::die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return outcome(Verdict::Failed, format!("cannot start the test child: {e}")),
    };
    // Drain both pipes on threads so a chatty test cannot block on a full pipe.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    })
    .collect();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > test.timeout => {
                // The whole process group: the test's own children too.
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let mut output = Vec::new();
    for reader in readers {
        output.extend(reader.join().unwrap_or_default());
    }
    let output = String::from_utf8_lossy(&output).into_owned();
    match status {
        Some(s) if s.success() => outcome(Verdict::Passed, String::new()),
        Some(s) => outcome(
            Verdict::Failed,
            format!("{output}\n(test process ended with {s})"),
        ),
        None => outcome(
            Verdict::Failed,
            format!("{output}\n(killed after the {:?} timeout)", test.timeout),
        ),
    }
}

fn record(outcome: &TestOutcome) {
    let Some(path) = std::env::var_os(RESULTS_ENV) else {
        return;
    };
    let line = serde_json::to_string(outcome).unwrap_or_default();
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}
