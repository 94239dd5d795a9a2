//! Unit tests of [`super`] (container).

use super::*;

fn report(t: Termination, timed_out: bool, full: bool, ev: CgroupEvents) -> ExitReason {
    let shortage = full.then_some(Shortage::Filesystem);
    ExitReport::new(t, timed_out, shortage, ev, true).reason
}

#[test]
fn a_full_pool_is_told_from_a_full_filesystem() {
    let failed = Termination::Exited { code: 1 };
    let ev = CgroupEvents::default();
    let r = ExitReport::new(failed, false, Some(Shortage::Pool), ev, true);
    assert_eq!((r.reason, r.root_full), (ExitReason::PoolFull, true));
    let r = ExitReport::new(failed, false, Some(Shortage::Filesystem), ev, true);
    assert_eq!(r.reason, ExitReason::RootDeviceFull);
    // Its own root at its size is told from the shared filesystem.
    let r = ExitReport::new(failed, false, Some(Shortage::OwnSize), ev, true);
    assert_eq!((r.reason, r.root_full), (ExitReason::RootSizeReached, true));
    assert_eq!(
        serde_json::to_value(ExitReason::RootSizeReached).unwrap(),
        "root_size_reached"
    );
    // A container that succeeded is not blamed on the pool.
    let ok = Termination::Exited { code: 0 };
    let r = ExitReport::new(ok, false, Some(Shortage::Pool), ev, true);
    assert_eq!(r.reason, ExitReason::Exited);
    assert_eq!(
        serde_json::to_value(ExitReason::PoolFull).unwrap(),
        "pool_full"
    );
}

#[test]
fn the_most_telling_reason_wins() {
    let ok = Termination::Exited { code: 0 };
    let failed = Termination::Exited { code: 1 };
    let killed = Termination::Signaled { signal: 9 };
    let none = CgroupEvents::default();
    let oom = CgroupEvents {
        oom_kills: 1,
        ..none
    };
    let pids = CgroupEvents {
        pids_limit_hits: 3,
        ..none
    };
    assert_eq!(report(ok, false, false, none), ExitReason::Exited);
    assert_eq!(report(failed, false, false, none), ExitReason::Exited);
    assert_eq!(report(killed, false, false, none), ExitReason::Signaled);
    assert_eq!(report(killed, false, false, oom), ExitReason::OomKilled);
    // A child was OOM-killed but the container still succeeded: it exited.
    assert_eq!(report(ok, false, false, oom), ExitReason::Exited);
    assert_eq!(report(failed, false, false, pids), ExitReason::PidsLimitHit);
    assert_eq!(report(killed, true, false, pids), ExitReason::PidsLimitHit);
    assert_eq!(report(killed, true, false, none), ExitReason::TimedOut);
    assert_eq!(
        report(failed, false, true, pids),
        ExitReason::RootDeviceFull
    );
    assert_eq!(report(killed, true, true, none), ExitReason::RootDeviceFull);
    assert_eq!(report(ok, false, true, none), ExitReason::Exited);
    // Old kernels: no OOM counter; SIGKILL after hitting the limit is OOM.
    let old_kernel = CgroupEvents {
        memory_limit_hits: 12,
        ..none
    };
    assert_eq!(
        report(killed, false, false, old_kernel),
        ExitReason::OomKilled
    );
    let counted = CgroupEvents {
        oom_kills_counted: true,
        ..old_kernel
    };
    assert_eq!(report(killed, false, false, counted), ExitReason::Signaled);
}

#[test]
fn reports_serialize_with_snake_case_reasons() {
    let r = ExitReport::new(
        Termination::Signaled { signal: 9 },
        false,
        None,
        CgroupEvents {
            oom_kills: 1,
            memory_limit_hits: 5,
            pids_limit_hits: 0,
            oom_kills_counted: true,
        },
        true,
    );
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["reason"], "oom_killed");
    assert_eq!(v["exit_code"], 137);
    assert_eq!(v["termination"]["kind"], "signaled");
    assert_eq!(v["events"]["oom_kills"], 1);
    let back: ExitReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
}

#[test]
fn init_status_round_trips() {
    for t in [
        Termination::Exited { code: 3 },
        Termination::Signaled { signal: 15 },
    ] {
        assert_eq!(Termination::decode(&t.encode()), Some(t));
    }
    assert_eq!(Termination::decode("X1"), None);
    assert_eq!(Termination::decode(""), None);
}

#[test]
fn child_errors_keep_their_kind() {
    let e = Error::new(ErrorKind::ExecutableNotFound, "executable \"x\" not found");
    let back = ChildError::decode(&ChildError::encode(&e)).into_error();
    assert_eq!(back.kind(), ErrorKind::ExecutableNotFound);
    assert!(back.to_string().contains("not found"));
    let e = Error::new(ErrorKind::Start, "pivot_root");
    assert_eq!(
        ChildError::decode(&ChildError::encode(&e))
            .into_error()
            .kind(),
        ErrorKind::Start
    );
}
