//! `thinbox-test`: builds every test binary of the workspace, runs the plain
//! ones on the host, places each real-kernel test on the host or in the VM by
//! its needs, batches the VM tests into one boot per cgroup layout, and ends
//! with `host: …`, `vm: …` and `total: N passed, N failed` lines.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{in_ci, TestListing, TestOutcome, Verdict, RESULTS_ENV};
use crate::need::{CgroupLayout, Environment, Need};
use crate::vm::{self, DiskSize, GuestImage, VmConfig, GUEST_SHARE};

/// Options of one test run.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Only tests whose name contains this.
    pub filter: Option<String>,
    /// Run only the host tests.
    pub host_only: bool,
    /// Run only the VM tests.
    pub vm_only: bool,
    /// Size of each spare disk given to VM tests that need disks.
    pub disk_size: Option<DiskSize>,
    /// Only these packages' tests (all of the workspace when empty).
    pub packages: Vec<String>,
    /// CI's smoke run: leave out the tests marked
    /// [`KernelTest::not_in_smoke`](crate::harness::KernelTest::not_in_smoke)
    /// and run the long matrices' subsets.
    pub smoke: bool,
    /// Boot this guest kernel (an ABI or its prefix, `5.10`) for the VM
    /// tests instead of the default one, and skip the matrix's lanes.
    pub kernel: Option<String>,
    /// Run only the matrix's lanes on the extra kernels.
    pub matrix_only: bool,
}

impl Options {
    /// Whether the tests run their whole matrices (`THINBOX_FULL=1`): in
    /// every run but a smoke run, unless the caller asks for it there too.
    fn full(&self) -> bool {
        !self.smoke || crate::harness::full_matrix()
    }
}

/// Passed / failed / skipped counts for one environment.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    fn count(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Passed => self.passed += 1,
            Verdict::Failed => self.failed += 1,
            Verdict::Skipped => self.skipped += 1,
        }
    }

    fn line(&self, env: &str) -> String {
        let mut line = format!("{env}: {} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            line.push_str(&format!(", {} skipped", self.skipped));
        }
        line
    }
}

/// A test executable cargo built.
#[derive(Debug, Clone)]
struct TestBinary {
    /// `package::target` for messages.
    label: String,
    exe: PathBuf,
    package_dir: PathBuf,
}

/// A real-kernel test and the binary that holds it.
#[derive(Debug, Clone)]
struct KernelCase {
    binary: TestBinary,
    listing: TestListing,
}

impl KernelCase {
    /// `PACKAGE::TARGET::TEST`.
    fn full_name(&self) -> String {
        format!("{}::{}", self.binary.label, self.listing.name)
    }

    /// Whether `name` (a test of the same binary, or `PACKAGE::TARGET::TEST`)
    /// names this case, as seen from `from`.
    fn is_named(&self, name: &str, from: &KernelCase) -> bool {
        if name.contains("::") {
            self.full_name() == name
        } else {
            self.binary.exe == from.binary.exe && self.listing.name == name
        }
    }
}

/// Takes the tests a smoke run leaves out from `cases`, returning them and
/// a problem for each whose covering test is not itself in the smoke run
/// (a rename or a second mark would otherwise leave code uncovered in CI).
fn leave_out_of_smoke(cases: &mut Vec<KernelCase>) -> (Vec<KernelCase>, Vec<String>) {
    let (left_out, kept): (Vec<KernelCase>, Vec<KernelCase>) = std::mem::take(cases)
        .into_iter()
        .partition(|c| c.listing.not_in_smoke.is_some());
    let problems = left_out
        .iter()
        .filter_map(|case| {
            let covered_by = case.listing.not_in_smoke.as_deref().unwrap_or_default();
            (!kept.iter().any(|k| k.is_named(covered_by, case))).then(|| {
                format!(
                    "{} is left out as covered by {covered_by}, which is not a test of the smoke run",
                    case.full_name()
                )
            })
        })
        .collect();
    *cases = kept;
    (left_out, problems)
}

/// Builds the test binaries, runs every test where its needs are met (host or VM), prints the summary lines and returns the exit code.
pub fn main(options: &Options) -> ExitCode {
    let started = Instant::now();
    let binaries = match build_test_binaries(&options.packages) {
        Ok(b) => b,
        Err(message) => {
            eprintln!("thinbox-test: {message}");
            println!("host: 0 passed, 1 failed\nvm: 0 passed, 0 failed\ntotal: 0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let mut plain = Vec::new();
    let mut kernel = Vec::new();
    for binary in binaries {
        match list_kernel_tests(&binary) {
            Some(listing) => kernel.extend(listing.into_iter().map(|l| KernelCase {
                binary: binary.clone(),
                listing: l,
            })),
            None => plain.push(binary),
        }
    }
    let (left_out, smoke_problems) = if options.smoke {
        leave_out_of_smoke(&mut kernel)
    } else {
        (Vec::new(), Vec::new())
    };
    let mut left_out = left_out;
    if let Some(filter) = &options.filter {
        // Matched against PACKAGE::TARGET::TEST, so a filter can pick a target.
        let matches = |c: &KernelCase| c.full_name().contains(filter.as_str());
        kernel.retain(matches);
        left_out.retain(matches);
    }

    // The matrix's lanes run on the extra kernels whenever the VM runs and
    // no one kernel was asked for.
    let matrix_cases: Vec<KernelCase> = if options.kernel.is_none() && !options.host_only {
        kernel
            .iter()
            .filter(|c| c.listing.kernel_matrix)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };

    let host_env = Environment::probe();
    let image = match &options.kernel {
        Some(wanted) => GuestImage::locate_kernel(wanted),
        None => GuestImage::locate(),
    };
    let default_kernel = match &image {
        Ok(image) => image.kernel_version.clone(),
        Err(_) => options
            .kernel
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
    };
    let guest_has_zfs = image.as_ref().map(GuestImage::has_zfs).unwrap_or(true);
    let mut on_host: Vec<KernelCase> = Vec::new();
    let mut on_vm: BTreeMap<CgroupLayout, Vec<KernelCase>> = BTreeMap::new();
    for case in kernel {
        let needs = &case.listing.needs;
        match guest_profile(needs) {
            _ if host_env.missing(needs).is_empty() => on_host.push(case),
            (layout, disks)
                if Environment::guest(layout, disks, guest_has_zfs)
                    .missing(needs)
                    .is_empty() =>
            {
                on_vm.entry(layout).or_default().push(case)
            }
            // Neither can: run it on the host, where it reports what is missing.
            _ => on_host.push(case),
        }
    }

    let mut host = Tally::default();
    let mut vm_tally = Tally::default();
    let mut per_kernel: Vec<(String, Tally)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for problem in &smoke_problems {
        host.failed += 1;
        failures.push(format!("host: smoke run: {problem}"));
    }
    if !options.vm_only && !options.matrix_only {
        for binary in &plain {
            host.add(run_plain(binary, options.filter.as_deref(), &mut failures));
        }
        if options.filter.is_none() {
            host.add(run_doc_tests(&options.packages, &mut failures));
        }
        host.add(run_kernel_on_host(&on_host, options.full(), &mut failures));
    }
    if !options.host_only {
        let mut tally = Tally::default();
        for (layout, cases) in on_vm.iter().filter(|_| !options.matrix_only) {
            tally.add(run_kernel_in_vm(
                &image,
                *layout,
                cases,
                options,
                "vm",
                &mut failures,
            ));
        }
        vm_tally.add(tally);
        if !options.matrix_only {
            per_kernel.push((default_kernel, tally));
        }
        if !matrix_cases.is_empty() {
            for (kernel, tally) in run_matrix(&matrix_cases, options, &mut failures) {
                vm_tally.add(tally);
                per_kernel.push((kernel, tally));
            }
        }
    }

    if !failures.is_empty() {
        println!("\nfailed:");
        for f in &failures {
            println!("    {f}");
        }
    }
    if !left_out.is_empty() {
        println!(
            "\nsmoke run: {} slow test(s) left to the full run (scripts/test.sh), each covered here by another:",
            left_out.len()
        );
        for case in &left_out {
            let covered_by = case.listing.not_in_smoke.as_deref().unwrap_or_default();
            println!("    {} (covered by {covered_by})", case.full_name());
        }
    }
    let mut total = host;
    total.add(vm_tally);
    println!("\nran in {:.0}s", started.elapsed().as_secs_f64());
    if !options.vm_only && !options.matrix_only {
        println!("{}", host.line(&format!("host, kernel {}", host_kernel())));
    }
    for (kernel, tally) in &per_kernel {
        println!("{}", tally.line(&format!("vm, kernel {kernel}")));
    }
    println!("{}", host.line("host"));
    println!("{}", vm_tally.line("vm"));
    println!("{}", total.line("total"));
    if total.failed == 0 && (total.skipped == 0 || !in_ci()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The cgroup layout and disk count a VM boot needs for these needs.
fn guest_profile(needs: &[Need]) -> (CgroupLayout, u8) {
    let layout = needs
        .iter()
        .find_map(|n| match n {
            Need::CgroupLayout(l) => Some(*l),
            Need::CgroupV1 => Some(CgroupLayout::V1),
            _ => None,
        })
        .unwrap_or(CgroupLayout::V2);
    let disks = needs
        .iter()
        .filter_map(|n| {
            if let Need::Disks(d) = n {
                Some(*d)
            } else {
                None
            }
        })
        .max()
        .unwrap_or(0);
    (layout, disks)
}

/// `-p A -p B`, or `--workspace` when no package is named.
fn cargo_selection(packages: &[String]) -> Vec<String> {
    if packages.is_empty() {
        return vec!["--workspace".into()];
    }
    packages
        .iter()
        .flat_map(|p| ["-p".to_owned(), p.clone()])
        .collect()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn build_test_binaries(packages: &[String]) -> Result<Vec<TestBinary>, String> {
    let selection = cargo_selection(packages);
    println!(
        "building test binaries (cargo test {} --no-run)",
        selection.join(" ")
    );
    let output = cargo()
        .arg("test")
        .args(&selection)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err("the test binaries do not build (see the errors above)".into());
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or_default());
        let package = msg["package_id"].as_str().unwrap_or_default();
        let package = package_name(package);
        binaries.push(TestBinary {
            label: format!(
                "{package}::{}",
                msg["target"]["name"].as_str().unwrap_or_default()
            ),
            exe: PathBuf::from(exe),
            package_dir: manifest.parent().map(Path::to_owned).unwrap_or_default(),
        });
    }
    binaries.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(binaries)
}

/// `path+file:///work/main/thinpool#0.1.0` or `thinpool 0.1.0 (path+…)` → `thinpool`.
fn package_name(id: &str) -> String {
    if id.contains(" (") {
        return id.split_whitespace().next().unwrap_or(id).to_owned();
    }
    if let Some((_, rest)) = id.rsplit_once('/') {
        return rest.split(['#', '@']).next().unwrap_or(rest).to_owned();
    }
    id.split_whitespace().next().unwrap_or(id).to_owned()
}

/// The kernel tests of a `harness = false` binary built on [`crate::harness`];
/// `None` for a plain libtest binary (which rejects the flag).
fn list_kernel_tests(binary: &TestBinary) -> Option<Vec<TestListing>> {
    let output = Command::new(&binary.exe)
        .arg("--thinbox-list-json")
        .current_dir(&binary.package_dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// Reads libtest's `test result:` lines from a stream, echoing everything.
fn tally_libtest_output(
    reader: impl std::io::Read,
    label: &str,
    failures: &mut Vec<String>,
) -> Tally {
    let mut tally = Tally::default();
    for line in BufReader::new(reader).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                let (Some(n), Some(kind)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<usize>() else { continue };
                match kind {
                    "passed" => tally.passed += n,
                    "failed" => tally.failed += n,
                    "ignored" => tally.skipped += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            failures.push(format!("{label}: {name}"));
        }
    }
    tally
}

fn run_plain(binary: &TestBinary, filter: Option<&str>, failures: &mut Vec<String>) -> Tally {
    println!("\n== {} (host)", binary.label);
    let mut command = Command::new(&binary.exe);
    command
        .args(filter)
        .current_dir(&binary.package_dir)
        .env("CARGO_MANIFEST_DIR", &binary.package_dir)
        .stdout(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            failures.push(format!("{}: cannot start: {e}", binary.label));
            return Tally {
                failed: 1,
                ..Tally::default()
            };
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut tally = tally_libtest_output(stdout, &binary.label, failures);
    let status = child.wait();
    if !status.as_ref().is_ok_and(|s| s.success()) && tally.failed == 0 {
        // It crashed before reporting: count the binary as one failure.
        failures.push(format!(
            "{}: test binary ended with {status:?}",
            binary.label
        ));
        tally.failed += 1;
    }
    tally
}

/// The packages among `packages` that have a library, whose doc tests
/// cargo can run (a binary-only package, like `cli`, has none). Packages
/// live in the workspace directory of their name.
fn with_library(packages: &[String]) -> Vec<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    packages
        .iter()
        .filter(|p| workspace.join(p).join("src/lib.rs").exists())
        .cloned()
        .collect()
}

fn run_doc_tests(packages: &[String], failures: &mut Vec<String>) -> Tally {
    println!("\n== doc tests (host)");
    let libraries = with_library(packages);
    if !packages.is_empty() && libraries.is_empty() {
        println!("no library among {}: no doc tests", packages.join(", "));
        return Tally::default();
    }
    let selection = cargo_selection(&libraries);
    let child = cargo()
        .arg("test")
        .args(&selection)
        .args(["--doc", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let Ok(mut child) = child else {
        failures.push("doc tests: cannot run cargo".into());
        return Tally {
            failed: 1,
            ..Tally::default()
        };
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut tally = tally_libtest_output(stdout, "doc", failures);
    if !child.wait().is_ok_and(|s| s.success()) && tally.failed == 0 {
        failures.push("doc tests: cargo test --doc failed".into());
        tally.failed += 1;
    }
    tally
}

/// The guest's results file for the `i`th binary of a boot.
fn results_file(i: usize) -> String {
    format!("results-{i}.jsonl")
}

/// Groups cases by binary, keeping the order.
fn by_binary(cases: &[KernelCase]) -> Vec<(TestBinary, Vec<String>)> {
    let mut groups: Vec<(TestBinary, Vec<String>)> = Vec::new();
    for case in cases {
        match groups.iter_mut().find(|(b, _)| b.exe == case.binary.exe) {
            Some((_, names)) => names.push(case.listing.name.clone()),
            None => groups.push((case.binary.clone(), vec![case.listing.name.clone()])),
        }
    }
    groups
}

fn read_outcomes(path: &Path) -> Vec<TestOutcome> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Counts outcomes, marking cases with none (a crashed binary or guest) failed.
fn tally_outcomes(
    env: &str,
    cases: &[KernelCase],
    outcomes: &[TestOutcome],
    missing_reason: &str,
    failures: &mut Vec<String>,
) -> Tally {
    let mut tally = Tally::default();
    for case in cases {
        let name = &case.listing.name;
        match outcomes.iter().find(|o| &o.name == name) {
            Some(o) => {
                tally.count(o.verdict);
                if o.verdict == Verdict::Failed {
                    failures.push(format!("{env}: {}::{name}", case.binary.label));
                }
            }
            None => {
                tally.failed += 1;
                failures.push(format!(
                    "{env}: {}::{name}: {missing_reason}",
                    case.binary.label
                ));
            }
        }
    }
    tally
}

fn run_kernel_on_host(cases: &[KernelCase], full: bool, failures: &mut Vec<String>) -> Tally {
    let mut tally = Tally::default();
    for (binary, names) in by_binary(cases) {
        println!("\n== {} (host kernel tests)", binary.label);
        let results = tempfile::NamedTempFile::new().expect("temporary results file");
        let mut command = Command::new(&binary.exe);
        command
            .args(&names)
            .arg("--exact")
            .current_dir(&binary.package_dir)
            .env(RESULTS_ENV, results.path());
        if full {
            command.env(crate::harness::FULL_ENV, "1");
        }
        let status = command.status();
        let outcomes = read_outcomes(results.path());
        let mine: Vec<KernelCase> = cases
            .iter()
            .filter(|c| c.binary.exe == binary.exe)
            .cloned()
            .collect();
        let reason = format!("no result (test binary ended with {status:?})");
        tally.add(tally_outcomes("host", &mine, &outcomes, &reason, failures));
    }
    tally
}

/// The host's kernel release, for the summary.
fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Runs the matrix's tests on each extra kernel `scripts/setup.sh`
/// prepared, one boot per cgroup layout they need, returning each kernel's
/// tally. In CI a matrix that was not prepared is a failure.
fn run_matrix(
    cases: &[KernelCase],
    options: &Options,
    failures: &mut Vec<String>,
) -> Vec<(String, Tally)> {
    let kernels = GuestImage::matrix_kernels();
    if kernels.is_empty() {
        println!("\nno kernel matrix prepared (scripts/setup.sh writes vm/matrix)");
        if in_ci() {
            failures.push(
                "vm: the kernel matrix: no extra kernel was prepared (run scripts/setup.sh)"
                    .to_owned(),
            );
            return vec![(
                "matrix".to_owned(),
                Tally {
                    failed: 1,
                    ..Tally::default()
                },
            )];
        }
        return Vec::new();
    }
    let mut tallies = Vec::new();
    for kernel in kernels {
        let image = GuestImage::locate_kernel(&kernel);
        let has_zfs = image.as_ref().map(GuestImage::has_zfs).unwrap_or(true);
        let env = format!("vm {kernel}");
        let mut by_layout: BTreeMap<CgroupLayout, Vec<KernelCase>> = BTreeMap::new();
        let mut tally = Tally::default();
        for case in cases {
            let (layout, disks) = guest_profile(&case.listing.needs);
            let missing = Environment::guest(layout, disks, has_zfs).missing(&case.listing.needs);
            if missing.is_empty() {
                by_layout.entry(layout).or_default().push(case.clone());
            } else {
                // Said, never silent: a kernel the matrix names must carry
                // the test (in CI this fails it).
                let verdict = if in_ci() {
                    Verdict::Failed
                } else {
                    Verdict::Skipped
                };
                tally.count(verdict);
                failures.push(format!(
                    "{env}: {}::{}: this kernel's guest lacks {missing:?}",
                    case.binary.label, case.listing.name
                ));
            }
        }
        for (layout, cases) in &by_layout {
            tally.add(run_kernel_in_vm(
                &image, *layout, cases, options, &env, failures,
            ));
        }
        tallies.push((kernel, tally));
    }
    tallies
}

fn run_kernel_in_vm(
    image: &Result<GuestImage, vm::VmError>,
    layout: CgroupLayout,
    cases: &[KernelCase],
    options: &Options,
    env_label: &str,
    failures: &mut Vec<String>,
) -> Tally {
    let disks = cases
        .iter()
        .map(|c| guest_profile(&c.listing.needs).1)
        .max()
        .unwrap_or(0);
    let kernel = image
        .as_ref()
        .map(|i| i.kernel_version.clone())
        .unwrap_or_else(|_| "?".to_owned());
    println!(
        "\n== VM boot: kernel {kernel}, cgroup {layout}, {disks} spare disk(s), {} test(s)",
        cases.len()
    );
    let image = match image {
        Ok(image) => image,
        Err(e) => {
            let verdict = if in_ci() {
                Verdict::Failed
            } else {
                Verdict::Skipped
            };
            println!("cannot boot the VM: {e}");
            let outcomes: Vec<TestOutcome> = cases
                .iter()
                .map(|c| TestOutcome {
                    name: c.listing.name.clone(),
                    verdict,
                    reason: e.to_string(),
                    seconds: 0.0,
                })
                .collect();
            return tally_outcomes(env_label, cases, &outcomes, "", failures);
        }
    };
    let share = tempfile::Builder::new()
        .prefix("thinbox-vm-")
        .tempdir()
        .expect("share directory");
    // One results file per binary: tests of the same name in two binaries
    // (`loopback_pool_lifecycle` in thinpool and cli) must not take each
    // other's outcome.
    let groups = by_binary(cases);
    let mut script = String::new();
    for (i, (binary, names)) in groups.iter().enumerate() {
        let results_in_guest = format!("{GUEST_SHARE}/{}", results_file(i));
        let quoted: Vec<String> = names.iter().map(|n| vm::shell_quote(n)).collect();
        script.push_str(&format!(
            "echo '== {} (vm, kernel {kernel}, cgroup {layout})'\ncd {} && {RESULTS_ENV}={} {} --exact {}\n",
            binary.label,
            vm::shell_quote(&binary.package_dir.to_string_lossy()),
            vm::shell_quote(&results_in_guest),
            vm::shell_quote(&binary.exe.to_string_lossy()),
            quoted.join(" ")
        ));
    }
    let test_time: u64 = cases.iter().map(|c| c.listing.timeout_secs).sum();
    let mut env = vec![];
    if let Ok(v) = std::env::var("CI") {
        env.push(("CI".to_owned(), v));
    }
    if options.full() {
        env.push((crate::harness::FULL_ENV.to_owned(), "1".to_owned()));
    }
    let config = VmConfig {
        cgroup: layout,
        disks: vec![options.disk_size.unwrap_or(DiskSize(8 << 30)); usize::from(disks)],
        timeout: Duration::from_secs(180 + test_time),
        env,
        echo_stdout: true,
        keep_paths: cases
            .iter()
            .flat_map(|c| {
                let exe_dir = c.binary.exe.parent().map(Path::to_owned);
                [Some(c.binary.package_dir.clone()), exe_dir]
            })
            .flatten()
            .collect(),
        share: Some(share.path().to_owned()),
        ..VmConfig::default()
    };
    let result = vm::run_script(image, &config, &script);
    let reason = match &result {
        Ok(out) => {
            for console in &out.kernel_panics {
                println!(
                    "the guest kernel panicked before thinbox's init ran, so it was booted again; that boot's console:"
                );
                for line in console.lines().filter(|l| l.starts_with('[')) {
                    println!("    {line}");
                }
            }
            println!(
                "(guest ran {:.0}s under {:?})",
                out.elapsed.as_secs_f64(),
                out.accel
            );
            if !out.stderr.trim().is_empty() {
                println!("guest stderr:\n{}", out.stderr.trim_end());
            }
            format!("no result from the guest (exit status {})", out.status)
        }
        Err(e) => {
            println!("VM failed: {e}");
            "the VM failed before reporting it".to_owned()
        }
    };
    let mut tally = Tally::default();
    for (i, (binary, _)) in groups.iter().enumerate() {
        let outcomes = read_outcomes(&share.path().join(results_file(i)));
        let mine: Vec<KernelCase> = cases
            .iter()
            .filter(|c| c.binary.exe == binary.exe)
            .cloned()
            .collect();
        tally.add(tally_outcomes(
            env_label, &mine, &outcomes, &reason, failures,
        ));
    }
    if tally.failed > 0 {
        if let Ok(out) = &result {
            let tail: Vec<&str> = out.dmesg.lines().rev().take(40).collect();
            println!("guest dmesg (last lines):");
            for line in tail.iter().rev() {
                println!("    {line}");
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_tests_only_for_packages_with_a_library() {
        let all: Vec<String> = ["thinpool", "cli", "engine", "no-such"]
            .map(String::from)
            .to_vec();
        assert_eq!(with_library(&all), ["thinpool", "engine"]);
        assert!(with_library(&[]).is_empty());
    }

    #[test]
    fn package_names_from_both_id_formats() {
        assert_eq!(
            package_name("path+file:///work/main/thinpool#0.1.0"),
            "thinpool"
        );
        assert_eq!(
            package_name("path+file:///work/main/cli#thinbox@0.1.0"),
            "cli"
        );
        assert_eq!(
            package_name("thinpool 0.1.0 (path+file:///work/main/thinpool)"),
            "thinpool"
        );
    }

    #[test]
    fn libtest_summaries_are_counted() {
        let out = "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ignored\n\ntest result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n";
        let mut failures = vec![];
        let t = tally_libtest_output(out.as_bytes(), "x", &mut failures);
        assert_eq!((t.passed, t.failed, t.skipped), (1, 1, 1));
        assert_eq!(failures, vec!["x: b".to_owned()]);
    }

    fn case(exe: &str, name: &str, not_in_smoke: Option<&str>) -> KernelCase {
        KernelCase {
            binary: TestBinary {
                label: format!("pkg::{exe}"),
                exe: PathBuf::from(exe),
                package_dir: PathBuf::from("pkg"),
            },
            listing: TestListing {
                name: name.to_owned(),
                needs: vec![],
                timeout_secs: 1,
                not_in_smoke: not_in_smoke.map(str::to_owned),
                kernel_matrix: false,
            },
        }
    }

    #[test]
    fn smoke_runs_leave_out_only_covered_tests() {
        let mut cases = vec![
            case("kernel", "a_loopback", None),
            case("kernel", "a_lvm", Some("a_loopback")),
            case("other", "b", Some("pkg::kernel::a_loopback")),
            // Covered by a test that is itself left out, by one of another
            // binary named without its target, by one that does not exist.
            case("kernel", "c", Some("a_lvm")),
            case("other", "d", Some("a_loopback")),
            case("kernel", "e", Some("no_such_test")),
        ];
        let (left_out, problems) = leave_out_of_smoke(&mut cases);
        let names = |v: &[KernelCase]| v.iter().map(KernelCase::full_name).collect::<Vec<_>>();
        assert_eq!(names(&cases), ["pkg::kernel::a_loopback"]);
        assert_eq!(left_out.len(), 5);
        assert_eq!(problems.len(), 3, "{problems:?}");
        for (problem, name) in problems.iter().zip(["c", "d", "e"]) {
            assert!(
                problem.contains(&format!("::{name} is left out")),
                "{problem}"
            );
        }
    }

    #[test]
    fn only_smoke_runs_run_the_matrix_subsets() {
        // THINBOX_FULL is not set for unit tests (the orchestrator sets it
        // only for kernel tests).
        assert!(Options::default().full());
        if !crate::harness::full_matrix() {
            let smoke = Options {
                smoke: true,
                ..Options::default()
            };
            assert!(!smoke.full());
        }
    }

    #[test]
    fn guest_profile_follows_needs() {
        assert_eq!(guest_profile(&[Need::DmThin]), (CgroupLayout::V2, 0));
        assert_eq!(
            guest_profile(&[Need::CgroupV1, Need::Disks(2)]),
            (CgroupLayout::V1, 2)
        );
        assert_eq!(
            guest_profile(&[Need::CgroupLayout(CgroupLayout::Hybrid)]),
            (CgroupLayout::Hybrid, 0)
        );
    }

    #[test]
    fn summary_lines_have_the_documented_form() {
        let t = Tally {
            passed: 3,
            failed: 1,
            skipped: 0,
        };
        assert_eq!(t.line("vm"), "vm: 3 passed, 1 failed");
        let t = Tally {
            passed: 3,
            failed: 0,
            skipped: 2,
        };
        assert_eq!(t.line("total"), "total: 3 passed, 0 failed, 2 skipped");
    }
}
