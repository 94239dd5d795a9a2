//! The container's process: exit codes and signals, the init that reaps
//! and forwards, bad input, runc's own bundle, terminals.

use super::*;

pub(super) fn exit_codes_and_signals() {
    let root = Rootfs::new();
    let (report, _) = root.sh(root.builder(), "exit 7");
    assert_eq!(report.reason, ExitReason::Exited);
    assert_eq!(report.termination, Termination::Exited { code: 7 });
    assert_eq!(report.exit_code, 7);
    // A signal from inside the namespace to a child: its shell reports 128+15.
    let (report, _) = root.sh(root.builder(), "sh -c 'kill -TERM $$'; exit $?");
    assert_eq!(report.exit_code, 143, "{report:?}");
    // SIGKILL from outside kills pid 1: the report says signalled, 137.
    let container = start(root.builder(), &["/bin/sleep", "1000"]);
    container.signal(Signal::SIGKILL).unwrap();
    let report = container.wait().unwrap();
    assert_eq!(report.reason, ExitReason::Signaled, "{report:?}");
    assert_eq!(report.termination, Termination::Signaled { signal: 9 });
    assert_eq!(report.exit_code, 137);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["termination"]["signal"], 9);
    assert_clean(&report);
}

pub(super) fn init_reaps_zombies_and_forwards_signals() {
    let root = Rootfs::new();
    // An orphan exits while its parent is gone: init (pid 1) must reap it.
    let (report, log) = root.sh(
        root.builder().init(true),
        "(sleep 0.2 &) ; sleep 1; echo self=$$; for s in /proc/[0-9]*/stat; do cut -d' ' -f1-3 $s; done",
    );
    assert_eq!(report.exit_code, 0, "{log}");
    assert!(
        log.contains("self=2"),
        "the process is not pid 2 under init: {log}"
    );
    let zombies: Vec<&str> = log.lines().filter(|l| l.ends_with(" Z")).collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}\n{log}");
    // The process under init dies of its own signal and the report says so.
    let (report, _) = root.sh(root.builder().init(true), "kill -TERM $$");
    assert_eq!(
        report.termination,
        Termination::Signaled { signal: 15 },
        "{report:?}"
    );
    assert_eq!(report.exit_code, 143);
    // A signal sent to the container reaches the process through init.
    let container = start(root.builder().init(true), &["/bin/sleep", "1000"]);
    std::thread::sleep(Duration::from_millis(300));
    container.signal(Signal::SIGTERM).unwrap();
    let report = container.wait().unwrap();
    assert_eq!(
        report.termination,
        Termination::Signaled { signal: 15 },
        "{report:?}"
    );
    assert_eq!(report.reason, ExitReason::Signaled);
    assert_clean(&report);
}

pub(super) fn bad_input_fails_before_or_tears_down() {
    let root = Rootfs::new();
    let rt = Runtime::detect().unwrap();
    let name = unique_name("bad");
    let cgroup_exists = |name: &str| {
        let h = rt.hierarchies();
        h.v1.values()
            .chain(h.v2.iter())
            .any(|m| m.join("thinbox").join(name).exists())
    };
    // A program that is not in the container: reported, nothing left.
    let config = root
        .builder()
        .id(&name)
        .args(["no-such-program"])
        .build()
        .unwrap();
    let e = rt.start(&config).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound, "{e}");
    assert!(e.to_string().contains("no-such-program"), "{e}");
    assert!(!cgroup_exists(&name), "cgroup left after a failed start");
    // CPUs that do not exist: refused before anything starts.
    let config = root
        .builder()
        .id(&name)
        .cpuset_cpus(CpuList([4000].into()))
        .args(["/bin/true"])
        .build()
        .unwrap();
    let e = rt.start(&config).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("4000"), "{e}");
    assert!(!cgroup_exists(&name));
    // An io throttle on a device that does not exist.
    let config = root
        .builder()
        .id(&name)
        .io_throttle(DevNum::new(4000, 4000), ThrottleKind::WriteBps, 1 << 20)
        .args(["/bin/true"])
        .build()
        .unwrap();
    let e = rt.start(&config).unwrap_err();
    assert!(e.to_string().contains("4000:4000"), "{e}");
    // A cwd that does not exist: the step is named and the container torn down.
    let config = root
        .builder()
        .id(&name)
        .cwd("/nowhere")
        .args(["/bin/true"])
        .build()
        .unwrap();
    let e = rt.start(&config).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Start);
    assert!(e.to_string().contains("working directory"), "{e}");
    assert!(!cgroup_exists(&name));
}

/// A bundle made by `runc spec` (read-only root, runc's mounts, masked
/// paths and resources) runs unchanged but for the process, plus a sysctl
/// and a bind mount whose source is relative to the bundle.
pub(super) fn runc_spec_bundle_runs() {
    use integration::fixtures::run;
    let tree = Rootfs::new();
    let bundle = tree.path.parent().unwrap().to_owned();
    run("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
    let path = bundle.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["root"]["readonly"], true);
    v["process"]["terminal"] = false.into();
    v["process"]["args"] = serde_json::json!([
        "/bin/sh", "-c",
        "exec >/result/log 2>&1; hostname; cat /proc/sys/net/ipv4/ip_forward; cat /proc/self/oom_score_adj; touch /x && echo WROTE_ROOT; echo ok"
    ]);
    v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
    v["process"]["oomScoreAdj"] = 500.into();
    v["linux"]["cgroupsPath"] = format!("/thinbox/{}", unique_name("runc-spec")).into();
    v["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/result", "type": "bind", "source": "result", "options": ["rbind", "rw"]
    }));
    fs::create_dir_all(bundle.join("result")).unwrap();
    fs::write(&path, v.to_string()).unwrap();
    let config = ContainerConfig::from_bundle(&bundle).unwrap();
    let report = Runtime::detect().unwrap().run(&config).unwrap();
    let log = fs::read_to_string(bundle.join("result/log")).unwrap_or_default();
    assert_eq!(report.exit_code, 0, "{report:?} {log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "runc", "{log}");
    assert_eq!(lines[1], "1", "the sysctl was not set: {log}");
    assert_eq!(lines[2], "500", "oom_score_adj was not set: {log}");
    assert!(
        !log.contains("WROTE_ROOT"),
        "the read-only root took a write: {log}"
    );
    assert_eq!(lines.last(), Some(&"ok"), "{log}");
    assert_clean(&report);
}

/// SIGTERM delivered to the waiting thread reaches the container's process.
pub(super) fn signals_are_forwarded_while_waiting() {
    let root = Rootfs::new();
    // Blocked from the start, so an early signal waits for the signalfd
    // instead of killing the test process.
    let mut usr1 = nix::sys::signal::SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    usr1.thread_block().unwrap();
    let container = start(root.builder().init(true), &["/bin/sleep", "1000"]).forward_signals(true);
    let waiter = nix::sys::pthread::pthread_self();
    let sender = std::thread::spawn(move || {
        // Thread-directed, so it lands on the waiting thread, which reads it
        // from its signalfd.
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            if nix::sys::pthread::pthread_kill(waiter, Signal::SIGUSR1).is_err() {
                break;
            }
        }
    });
    let report = container.wait().unwrap();
    drop(sender);
    assert_eq!(
        report.termination,
        Termination::Signaled {
            signal: Signal::SIGUSR1 as i32
        },
        "{report:?}"
    );
    assert!(!report.timed_out);
    assert_clean(&report);
}

pub(super) fn terminal_gives_the_process_a_pty() {
    let root = Rootfs::new();
    let mut container = start(
        root.builder().terminal(true),
        &[
            "/bin/sh",
            "-c",
            "test -t 0 && test -t 1 && echo STDIO_IS_A_TTY; read line; echo got:$line",
        ],
    );
    let master = std::fs::File::from(container.take_terminal().expect("a pty master"));
    let mut writer = master.try_clone().unwrap();
    use std::io::{Read, Write};
    writer.write_all(b"hello\n").unwrap();
    let mut out = Vec::new();
    let mut reader = master;
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // EIO: every holder of the slave end has exited.
            Err(_) => break,
        }
    }
    let report = container.wait().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(report.exit_code, 0, "{report:?} {out}");
    assert!(out.contains("STDIO_IS_A_TTY"), "{out}");
    assert!(out.contains("got:hello"), "{out}");
    assert_clean(&report);
}
