//! Unit tests of [`super`] (config).

use super::*;

fn rootfs() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn builder_starts_from_runc_defaults() {
    let dir = rootfs();
    let c = ContainerConfig::builder(dir.path())
        .args(["/bin/true"])
        .memory_limit(Bytes::mib(64))
        .pids_limit(16)
        .build()
        .unwrap();
    let p = c.spec.process().as_ref().unwrap();
    assert_eq!(p.no_new_privileges(), Some(true));
    let caps = p
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert_eq!(
        caps,
        [
            Capability::AuditWrite,
            Capability::Kill,
            Capability::NetBindService
        ]
        .into()
    );
    let linux = c.spec.linux().as_ref().unwrap();
    assert!(linux
        .masked_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/kcore".to_owned()));
    assert!(linux
        .readonly_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/sys".to_owned()));
    for t in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ] {
        assert!(c.has_namespace(t));
    }
    assert!(!c.has_namespace(LinuxNamespaceType::User));
    let r = c.resources().unwrap();
    assert_eq!(r.memory.limit, Some(Bytes::mib(64)));
    assert_eq!(r.pids, Some(Max::Limit(16)));
    assert!(c.cgroup_path.as_path().starts_with("thinbox"));
}

#[test]
fn capabilities_convert_to_the_caps_crate() {
    assert_eq!(
        to_caps(Capability::SysAdmin).unwrap(),
        caps::Capability::CAP_SYS_ADMIN
    );
    assert_eq!(
        to_caps(Capability::NetBindService).unwrap(),
        caps::Capability::CAP_NET_BIND_SERVICE
    );
}

#[test]
fn a_missing_rootfs_is_refused_before_start() {
    let e = ContainerConfig::builder("/nonexistent/thinbox-rootfs")
        .args(["/bin/true"])
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rootfs);
    assert!(e.to_string().contains("/nonexistent/thinbox-rootfs"), "{e}");
    let e = ContainerConfig::builder("relative")
        .args(["x"])
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
}

#[test]
fn empty_args_are_refused() {
    let dir = rootfs();
    let e = ContainerConfig::builder(dir.path())
        .args(Vec::<String>::new())
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("process.args"), "{e}");
}

fn write_bundle(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let mut v = serde_json::to_value(Spec::default()).unwrap();
    v["root"]["path"] = "rootfs".into();
    v["process"]["args"] = serde_json::json!(["/bin/echo", "hi"]);
    edit(&mut v);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
}

#[test]
fn bundles_load_relative_to_their_directory() {
    let dir = rootfs();
    write_bundle(dir.path(), |v| {
        v["linux"]["resources"]["pids"] = serde_json::json!({"limit": 10});
        v["linux"]["cgroupsPath"] = "/mine/c1".into();
    });
    let c = ContainerConfig::from_bundle(dir.path()).unwrap();
    assert_eq!(c.rootfs, dir.path().join("rootfs"));
    assert_eq!(c.args(), ["/bin/echo", "hi"]);
    assert_eq!(c.resources().unwrap().pids, Some(Max::Limit(10)));
    assert_eq!(c.cgroup_path.as_path(), Path::new("mine/c1"));
}

#[test]
fn an_unknown_namespace_is_a_clear_error() {
    let dir = rootfs();
    write_bundle(dir.path(), |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "bogus"}));
    });
    let e = ContainerConfig::from_bundle(dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("namespace"), "{e}");

    write_bundle(dir.path(), |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "time"}));
    });
    let e = ContainerConfig::from_bundle(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains("time namespace is not supported"),
        "{e}"
    );
}

#[test]
fn unsupported_sections_are_refused_by_name() {
    let dir = rootfs();
    write_bundle(dir.path(), |v| {
        v["linux"]["devices"] =
            serde_json::json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]);
    });
    let e = ContainerConfig::from_bundle(dir.path()).unwrap_err();
    assert!(e.to_string().contains("linux.devices"), "{e}");
    write_bundle(dir.path(), |v| {
        v["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]});
    });
    let e = ContainerConfig::from_bundle(dir.path()).unwrap_err();
    assert!(e.to_string().contains("hooks"), "{e}");
    write_bundle(dir.path(), |v| {
        v["linux"]["sysctl"] = serde_json::json!({"../../etc/passwd": "x"});
    });
    let e = ContainerConfig::from_bundle(dir.path()).unwrap_err();
    assert!(e.to_string().contains("sysctl"), "{e}");
}

#[test]
fn bad_uid_maps_are_refused() {
    let dir = rootfs();
    let mk = |maps: serde_json::Value| {
        write_bundle(dir.path(), |v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "user"}));
            v["linux"]["uidMappings"] = maps;
            v["linux"]["gidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        });
        ContainerConfig::from_bundle(dir.path())
    };
    let e = mk(serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 0}])).unwrap_err();
    assert!(e.to_string().contains("size 0"), "{e}");
    let e = mk(serde_json::json!([
        {"containerID": 0, "hostID": 1000, "size": 10},
        {"containerID": 5, "hostID": 5000, "size": 10}
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
    let e = mk(serde_json::json!([])).unwrap_err();
    assert!(e.to_string().contains("needs uid mappings"), "{e}");
    mk(serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}])).unwrap();
}

#[test]
fn a_missing_bundle_says_what_to_pass() {
    let e = ContainerConfig::from_bundle("/nonexistent/bundle").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rootfs);
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn inheritable_and_ambient_capabilities_start_empty() {
    let dir = rootfs();
    let c = ContainerConfig::builder(dir.path())
        .args(["/bin/true"])
        .user(65534, 65534)
        .build()
        .unwrap();
    let caps = c
        .spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    assert_eq!(
        caps.inheritable().clone().unwrap_or_default(),
        HashSet::new()
    );
    assert_eq!(caps.ambient().clone().unwrap_or_default(), HashSet::new());
    assert!(
        caps.bounding()
            .as_ref()
            .is_some_and(|b| b.contains(&Capability::NetBindService)),
        "the bounding set keeps the defaults"
    );
}
