//! Adoption: a thin-pool someone else made (with dmsetup, or with lvcreate)
//! is refused when it is not a thin-pool or is someone else's, adopted when
//! allowed, used, released (never destroyed) and reopened.

use integration::fixtures::{run, temp_dir, try_run, unique_name};
use thinpool::pool::{Monitor, Pool};
use thinpool::ErrorKind;

use crate::support::*;

pub fn adopt_existing_pool() {
    use integration::fixtures::{sparse_file, LoopDevice};
    let tmp = temp_dir();
    let (meta_file, data_file) = (tmp.path().join("meta"), tmp.path().join("data"));
    sparse_file(&meta_file, 16 * MIB);
    sparse_file(&data_file, 256 * MIB);
    let meta = LoopDevice::attach(&meta_file);
    let data = LoopDevice::attach(&data_file);
    let pool_name = unique_name("pool");
    let linear = unique_name("linear");
    struct Remove(Vec<String>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for n in self.0.iter().rev() {
                try_run("dmsetup", &["remove", "--force", n]);
            }
        }
    }
    let table = format!(
        "0 {} thin-pool {} {} 128 0 0",
        256 * MIB / 512,
        meta.as_str(),
        data.as_str()
    );
    run("dmsetup", &["create", &pool_name, "--table", &table]);
    let mut guard = Remove(vec![pool_name.clone()]);
    run(
        "dmsetup",
        &[
            "create",
            &linear,
            "--table",
            &format!("0 2048 linear {} 0", data.as_str()),
        ],
    );
    guard.0.push(linear.clone());
    let deps = deps();

    let err = Pool::adopt(&deps, &linear, &tmp.path().join("x.db"), false).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NotAThinPool { .. }),
        "{err}"
    );
    assert!(!tmp.path().join("x.db").exists());

    // Someone else's pool (transaction id moved, a thin id in it) is refused...
    run("dmsetup", &["message", &pool_name, "0", "create_thin 5"]);
    run(
        "dmsetup",
        &["message", &pool_name, "0", "set_transaction_id 0 3"],
    );
    let err = Pool::adopt(&deps, &pool_name, &tmp.path().join("a.db"), false).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::OwnedElsewhere {
                transaction_id: 3,
                ..
            }
        ),
        "{err}"
    );
    // ...unless allowed; its thin ids are then reported as unknown.
    let mut pool = Pool::adopt(&deps, &pool_name, &tmp.path().join("a.db"), true).unwrap();
    assert_eq!(pool.reconciliation().unknown_ids.len(), 1);
    assert_eq!(pool.reconciliation().unknown_ids[0].get(), 5);
    pool.create_thin("mine", THIN_SIZE).unwrap();
    let dev = pool.activate("mine").unwrap();
    write_at(&dev, 0, b"adopted");
    assert_eq!(pool.status().unwrap().usage().unwrap().transaction_id.0, 4);
    // Adopted pools are released, not destroyed.
    assert!(matches!(
        Pool::open_adopted(&deps, &tmp.path().join("a.db"))
            .unwrap()
            .reconciliation()
            .unknown_ids
            .len(),
        1
    ));
    pool.shutdown().unwrap();
    assert!(dm_exists(&pool_name), "the adopted pool stays");
    assert!(!dm_exists(&format!("{pool_name}-mine")));
    let pool = Pool::open_adopted(&deps, &tmp.path().join("a.db")).unwrap();
    assert_eq!(read_at(&pool.activate("mine").unwrap(), 0, 7), b"adopted");
    let err = pool.destroy().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unsupported { .. }), "{err}");
    run("dmsetup", &["remove", &format!("{pool_name}-mine")]);
    drop(guard);
}

/// A thin-pool LV someone else made with lvcreate: adopted by its LVM name
/// (a linear LV and a missing LV are refused), used, released and reopened.
pub fn adopt_lvm_pool() {
    let tmp = temp_dir();
    let (disk, vg, _guard, _) = lvm_setup(tmp.path());
    run("pvcreate", &["-y", &disk]);
    run("vgcreate", &[&vg, &disk]);
    run("lvcreate", &["-y", "-n", "lin", "-L", "16m", &vg]);
    run(
        "lvcreate",
        &["-y", "--type", "thin-pool", "-n", "pool", "-L", "256m", &vg],
    );
    let deps = deps();
    let x = tmp.path().join("x.db");
    let err = Pool::adopt_lvm(&deps, &vg, "lin", &x, false).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NotAThinPool { .. }),
        "{err}"
    );
    let err = Pool::adopt_lvm(&deps, &vg, "nope", &x, false).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!x.exists());

    let store = tmp.path().join("a.db");
    let mut pool = Pool::adopt_lvm(&deps, &vg, "pool", &store, false).unwrap();
    assert_eq!(pool.name(), format!("{vg}-pool"));
    assert_eq!(
        pool.monitor().unwrap(),
        Monitor::Watch,
        "adopted: thinbox watches"
    );
    pool.create_thin("mine", THIN_SIZE).unwrap();
    let dev = pool.activate("mine").unwrap();
    write_at(&dev, 0, b"adopted lvm");
    pool.snapshot("mine", "snap").unwrap();
    pool.shutdown().unwrap();
    assert!(dm_exists(&format!("{vg}-pool")), "the adopted pool stays");
    assert!(!dm_exists(&format!("{vg}-pool-mine")));

    let pool = Pool::open_adopted(&deps, &store).unwrap();
    assert!(
        pool.reconciliation().is_clean(),
        "{:?}",
        pool.reconciliation()
    );
    assert_eq!(
        kernel_thin_ids(pool.name(), pool.metadata_device().path),
        vec![0, 1]
    );
    let err = pool.destroy().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unsupported { .. }), "{err}");
    let mut pool = Pool::open_adopted(&deps, &store).unwrap();
    assert_eq!(
        read_at(&pool.activate("snap").unwrap(), 0, 11),
        b"adopted lvm"
    );
    pool.delete_thin("snap").unwrap();
    pool.delete_thin("mine").unwrap();
    pool.shutdown().unwrap();
}
