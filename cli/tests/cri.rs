//! A Kubernetes node's path through thinbox: Debian's containerd with its
//! CRI plugin set to `snapshotter = "thinbox"` (the lines `thinbox
//! containerd config` prints), driven over the CRI API (`k8s-cri`'s
//! runtime.v1 client) the way the kubelet drives it: RunPodSandbox on a
//! sandbox image built here and imported into the `k8s.io` namespace,
//! CreateContainer, StartContainer, the container's output in its CRI log,
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox; 20
//! pods at once. The pods use the host's network, as kube-proxy's and the
//! CNI agents' own pods do, so no CNI plugin is involved.
#![forbid(unsafe_code)]

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cli_support::{busybox_spec, serve, Containerd, Root};
use integration::fixtures::{run, temp_dir};
use integration::harness::{self, KernelTest};
use integration::need::Need;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, ImageStatusRequest, LinuxContainerConfig,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    VersionRequest,
};
use snapshotter::image::write;
use tonic::transport::{Channel, Endpoint, Uri};

/// The pods started at once.
const PODS: usize = 20;
/// The sandbox ("pause") image the CRI plugin is configured with.
const SANDBOX_IMAGE: &str = "docker.io/thinbox/pause:1";
/// The image each pod's container runs.
const APP_IMAGE: &str = "docker.io/library/busybox:1";

fn main() -> ExitCode {
    let tests = vec![KernelTest::new("pods_on_btrfs", pods_on_btrfs)
        .needs(&[Need::Root, Need::Loop, Need::Btrfs])
        .timeout(Duration::from_secs(900))];
    harness::main(&tests)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The snapshots containerd made, as `thinbox snapshot ls --json` shows
/// them: (name, kind).
fn containerd_snapshots(root: &Root) -> Vec<(String, String)> {
    root.json(&["snapshot", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["made_by"] == "containerd")
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// containerd's config: the proxy plugin and the CRI setting exactly as
/// `thinbox containerd config` prints them, then what a node sets for
/// itself (the sandbox image, the streaming server on loopback, CNI's
/// directories in the test's own). `restrict_oom_score_adj`: these
/// machines withhold CAP_SYS_RESOURCE, without which the kernel refuses the
/// sandbox's -998; clamped, it is containerd's own score (as a node inside
/// a user namespace runs it).
fn node_config(root: &Root, socket: &Path, dir: &Path) -> String {
    let snippet = root.ok(&["containerd", "config", "--socket", s(socket)]);
    let ours = &snippet[snippet
        .find("[proxy_plugins]")
        .expect("the proxy plugin table")..];
    assert!(
        ours.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd]"),
        "the CRI setting: {snippet}"
    );
    format!(
        "{ours}\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
           sandbox_image = \"{SANDBOX_IMAGE}\"\n  \
           stream_server_address = \"127.0.0.1\"\n  \
           stream_server_port = \"0\"\n  \
           restrict_oom_score_adj = true\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  \
           bin_dir = \"{d}/cni/bin\"\n  \
           conf_dir = \"{d}/cni/net.d\"\n",
        d = dir.display()
    )
}

/// A channel to containerd's socket, as the kubelet dials it.
async fn channel(sock: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(sock.clone())
        }))
        .await
        .expect("a CRI channel to containerd's socket")
}

/// A pod's sandbox config: host network, its logs under `logs/pod-N`.
fn sandbox_config(n: usize, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("pod-{n}"),
            uid: format!("thinbox-test-uid-{n}"),
            namespace: "thinbox-test".into(),
            attempt: 0,
        }),
        // A pod on the host's network has the host's name, as the kubelet
        // leaves it.
        hostname: String::new(),
        log_directory: s(&logs.join(format!("pod-{n}"))).to_owned(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One pod, as the kubelet starts it: its sandbox, then one container that
/// prints a line and writes a file into its root, run to its exit. Returns
/// (sandbox id, container id) and the container's CRI log.
async fn start_pod(
    mut rt: RuntimeServiceClient<Channel>,
    n: usize,
    logs: PathBuf,
) -> (String, String, String) {
    let config = sandbox_config(n, &logs);
    std::fs::create_dir_all(&config.log_directory).unwrap();
    let sandbox = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox pod-{n}: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let container = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "hello".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: APP_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo pod {n} > /written && echo hello from pod {n}"),
                ],
                log_path: "hello.log".into(),
                linux: Some(LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer pod-{n}: {e}"))
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer pod-{n}: {e}"));
    let started = Instant::now();
    loop {
        let status = rt
            .container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.state == ContainerState::ContainerExited as i32 {
            assert_eq!(status.exit_code, 0, "pod-{n}'s container: {status:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "pod-{n}'s container never exited: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(Path::new(&config.log_directory).join("hello.log"))
        .unwrap_or_default();
    (sandbox, container, log)
}

/// The kubelet's teardown of a pod: the container stopped and removed,
/// then the sandbox.
async fn remove_pod(mut rt: RuntimeServiceClient<Channel>, sandbox: String, container: String) {
    rt.stop_container(StopContainerRequest {
        container_id: container.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(RemoveContainerRequest {
        container_id: container,
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sandbox,
    })
    .await
    .unwrap();
}

/// Waits until `done` holds (containerd removes snapshots in the
/// background, from its garbage collector).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(120), "{what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pods_on_btrfs() {
    let root = Root::with_config("backend = \"btrfs\"\n[btrfs]\nimage_size = \"4G\"\n");
    let socket = root.path().join("thinbox.sock");
    let _daemon = serve(&root, &socket);
    let dir = root.path().join("containerd");
    let ctd = Containerd::start_with_cri(&dir, &node_config(&root, &socket, &dir));

    // The sandbox image: busybox sleeping, built here (no registry to pull
    // registry.k8s.io/pause from), and the app image, both imported into
    // the CRI plugin's namespace and unpacked by thinbox.
    let mut pause = busybox_spec(SANDBOX_IMAGE);
    pause.config.cmd = vec!["/bin/sleep".into(), "86400".into()];
    for (spec, file) in [(pause, "pause.tar"), (busybox_spec(APP_IMAGE), "app.tar")] {
        let tar = root.path().join(file);
        write::docker_tar(&spec, &tar).unwrap();
        let o = ctd
            .ctr_command_in(
                "k8s.io",
                &["images", "import", "--snapshotter", "thinbox", s(&tar)],
            )
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ctr -n k8s.io images import: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            ctd.log()
        );
    }
    let layers = containerd_snapshots(&root);
    assert!(
        layers
            .iter()
            .any(|(name, kind)| name.starts_with("@containerd/k8s.io/") && kind == "committed"),
        "the images' layer, unpacked by thinbox in k8s.io: {layers:?}"
    );

    let logs = root.path().join("pod-logs");
    let rt_tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sock = ctd.sock.clone();
    let pods = rt_tokio.block_on(async {
        let ch = channel(sock).await;
        let mut rt = RuntimeServiceClient::new(ch.clone());
        let version = rt
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .expect("the CRI plugin answers runtime.v1")
            .into_inner();
        assert_eq!(version.runtime_name, "containerd", "{version:?}");
        // The CRI plugin learns of imported images from containerd's
        // events: wait until it sees both, as a node would after a pull.
        let mut images = ImageServiceClient::new(ch.clone());
        let started = Instant::now();
        for image in [SANDBOX_IMAGE, APP_IMAGE] {
            loop {
                let status = images
                    .image_status(ImageStatusRequest {
                        image: Some(ImageSpec {
                            image: image.into(),
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if status.image.is_some() {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the CRI plugin never saw {image}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let started = (0..PODS)
            .map(|n| tokio::spawn(start_pod(rt.clone(), n, logs.clone())))
            .collect::<Vec<_>>();
        let mut pods = Vec::new();
        for (n, task) in started.into_iter().enumerate() {
            let (sandbox, container, log) = task.await.unwrap_or_else(|e| {
                panic!(
                    "pod-{n}: {e}\ncontainerd's log:\n{}",
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                )
            });
            // The CRI log format: TIMESTAMP STREAM TAG LINE.
            assert!(
                log.lines()
                    .any(|l| l.ends_with(&format!(" stdout F hello from pod {n}"))),
                "pod-{n}'s CRI log: {log:?}"
            );
            pods.push((sandbox, container));
        }
        pods
    });

    // Every pod's sandbox and container root is a snapshot thinbox made
    // for containerd, in k8s.io, and the container's write is in its own.
    let active: Vec<_> = containerd_snapshots(&root)
        .into_iter()
        .filter(|(name, kind)| name.starts_with("@containerd/k8s.io/") && kind == "active")
        .collect();
    assert_eq!(
        active.len(),
        2 * PODS,
        "a sandbox and a container root per pod: {active:?}"
    );
    for (n, (_, container)) in pods.iter().enumerate() {
        let (name, _) = active
            .iter()
            .find(|(name, _)| name.ends_with(&format!("/{container}")))
            .unwrap_or_else(|| panic!("container {container}'s snapshot in {active:?}"));
        let look = temp_dir();
        root.ok(&["snapshot", "mounts", name, "--mount", s(look.path())]);
        let written = std::fs::read_to_string(look.path().join("written"));
        run("umount", &[s(look.path())]);
        assert_eq!(
            written.ok(),
            Some(format!("pod {n}\n")),
            "pod-{n}'s write in its snapshot {name}"
        );
    }

    // The kubelet's teardown, all pods at once: every root thinbox made
    // for them goes; the images' layers stay.
    let sock = ctd.sock.clone();
    rt_tokio.block_on(async {
        let rt = RuntimeServiceClient::new(channel(sock).await);
        let removals = pods
            .into_iter()
            .map(|(sandbox, container)| tokio::spawn(remove_pod(rt.clone(), sandbox, container)))
            .collect::<Vec<_>>();
        for task in removals {
            task.await.expect("a pod's removal");
        }
    });
    eventually("the pods' snapshots removed", || {
        !containerd_snapshots(&root)
            .iter()
            .any(|(_, kind)| kind == "active")
    });
    assert!(
        containerd_snapshots(&root)
            .iter()
            .any(|(_, kind)| kind == "committed"),
        "the images' layers kept"
    );
    ctd.stop();
}
