// containerd's own snapshotter conformance suite (snapshots/testsuite, from
// Debian's golang-github-containerd-containerd-dev) run against
// `thinbox serve` through containerd's proxy client, the path containerd
// itself takes to a proxy plugin. Each case starts a daemon on a fresh
// root. Built in GOPATH mode by integration::containerd_suite.
//
// Environment: THINBOX_BIN (the thinbox binary), THINBOX_SUITE_BACKEND
// (btrfs, overlay, naive, devmapper, zfs; THINBOX_SUITE_FS ext4 or xfs for
// devmapper) and, for btrfs,
// THINBOX_SUITE_BTRFS (a directory on a btrfs filesystem the caller made:
// each case's subvolumes live below it, so a case leaves no mount behind);
// for zfs, THINBOX_SUITE_ZFS (a parent dataset, one child per case). What
// a case leaves active (a loopback pool, mounts, a dataset) is taken down
// after its daemon stops.
package thinboxsuite

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func newSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	bin := os.Getenv("THINBOX_BIN")
	state := filepath.Join(root, "thinbox")
	config, err := writeConfig(root)
	if err != nil {
		return nil, nil, err
	}
	socket := filepath.Join(root, "thinbox.sock")
	log, err := os.Create(filepath.Join(root, "serve.log"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, "--root", state, "--config", config, "serve", "--socket", socket,
		// Cases run side by side: each its own metrics port.
		"--metrics-address", "127.0.0.1:0")
	cmd.Stdout = log
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(120 * time.Second)
	// Up once a connection is taken, not once the file exists: a refusal
	// then says why, with serve's log (which the case's cleanup removes).
	var lastErr error
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			break
		} else {
			lastErr = err
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(filepath.Join(root, "serve.log"))
			return nil, nil, fmt.Errorf("thinbox serve exited (%v): %s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			out, _ := os.ReadFile(filepath.Join(root, "serve.log"))
			return nil, nil, fmt.Errorf("thinbox serve took no connection on %s in 120 s (%v): %s", socket, lastErr, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Dialled as containerd dials a proxy plugin (services/server).
	conn, err := grpc.Dial(dialer.DialAddress(socket),
		grpc.WithInsecure(),
		grpc.WithContextDialer(dialer.ContextDialer))
	if err != nil {
		cmd.Process.Kill()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "thinbox")
	stop := func() error {
		conn.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				out, _ := os.ReadFile(filepath.Join(root, "serve.log"))
				return fmt.Errorf("thinbox serve: %v: %s", err, out)
			}
		case <-time.After(120 * time.Second):
			cmd.Process.Kill()
			return fmt.Errorf("thinbox serve did not stop within 120 s of SIGTERM")
		}
		// The suite removes the root: take down what the backend left
		// active (devices and mounts outlive the daemon, as they must).
		return teardown(state)
	}
	return sn, stop, nil
}

var cases int64

// caseName names the case's pool or dataset, unique in the run and
// named as fixtures::sweep recognises what a killed run left.
func caseName(n int64) string {
	return fmt.Sprintf("thinbox-test-%d-c%d", os.Getpid(), n)
}

// teardown unmounts what is mounted under state, removes the case's dm
// devices (thins before the pool), detaches its loop devices and destroys
// its zfs dataset.
func teardown(state string) error {
	config, err := os.ReadFile(filepath.Join(filepath.Dir(state), "config.toml"))
	if err != nil {
		return err
	}
	info, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, line := range strings.Split(string(info), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], state) {
			mounts = append(mounts, f[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if exec.Command("umount", m).Run() != nil {
			exec.Command("umount", "-l", m).Run()
		}
	}
	for _, line := range strings.Split(string(config), "\n") {
		if strings.HasPrefix(line, "pool_name = ") {
			v := strings.TrimPrefix(line, "pool_name = ")
			pool := strings.Trim(v, `"`)
			for round := 0; round < 3; round++ {
				out, _ := exec.Command("dmsetup", "ls").Output()
				var devs []string
				for _, l := range strings.Split(string(out), "\n") {
					f := strings.Fields(l)
					if len(f) > 0 && (f[0] == pool || strings.HasPrefix(f[0], pool+"-")) {
						devs = append(devs, f[0])
					}
				}
				if len(devs) == 0 {
					break
				}
				sort.Slice(devs, func(i, j int) bool { return len(devs[i]) > len(devs[j]) })
				for _, d := range devs {
					exec.Command("dmsetup", "remove", "--force", d).Run()
				}
			}
		}
		if strings.HasPrefix(line, "dataset = ") {
			v := strings.TrimPrefix(line, "dataset = ")
			if out, err := exec.Command("zfs", "destroy", "-r", strings.Trim(v, `"`)).CombinedOutput(); err != nil {
				return fmt.Errorf("zfs destroy: %v: %s", err, out)
			}
		}
	}
	out, _ := exec.Command("losetup", "-a").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if dev, rest, ok := strings.Cut(l, ":"); ok && strings.Contains(rest, state) {
			exec.Command("losetup", "-d", dev).Run()
		}
	}
	return nil
}

// writeConfig writes the case's config file: the backend, and where a
// btrfs or zfs case keeps its snapshots.
func writeConfig(root string) (string, error) {
	backend := os.Getenv("THINBOX_SUITE_BACKEND")
	text := fmt.Sprintf("backend = %q\n", backend)
	n := atomic.AddInt64(&cases, 1)
	switch backend {
	case "btrfs":
		dir := filepath.Join(os.Getenv("THINBOX_SUITE_BTRFS"), fmt.Sprintf("case-%d", n))
		if err := os.MkdirAll(dir, 0700); err != nil {
			return "", err
		}
		text += fmt.Sprintf("[btrfs]\npath = %q\n", dir)
	case "zfs":
		dataset := fmt.Sprintf("%s/%s", os.Getenv("THINBOX_SUITE_ZFS"), caseName(n))
		if out, err := exec.Command("zfs", "create", dataset).CombinedOutput(); err != nil {
			return "", fmt.Errorf("zfs create %s: %v: %s", dataset, err, out)
		}
		text += fmt.Sprintf("[zfs]\ndataset = %q\n", dataset)
	case "devmapper":
		// A small loopback pool per case; THINBOX_SUITE_FS picks ext4 or
		// xfs (which needs 300 MB at least).
		fs := os.Getenv("THINBOX_SUITE_FS")
		base := "64M"
		if fs == "xfs" {
			base = "320M"
		}
		text += fmt.Sprintf("[devmapper]\npool_name = %q\ndata_size = \"2G\"\nbase_size = %q\n", caseName(n)+"-pool", base)
		if fs != "" {
			text += fmt.Sprintf("fs = %q\n", fs)
		}
	}
	path := filepath.Join(root, "config.toml")
	return path, os.WriteFile(path, []byte(text), 0600)
}

func TestThinbox(t *testing.T) {
	testsuite.SnapshotterSuite(t, "thinbox", newSnapshotter)
}

// TestThinboxErrors sends what a client must not, and checks the errdefs
// code containerd reads back and that nothing was left half-made.
func TestThinboxErrors(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "testsuite")
	dir, err := os.MkdirTemp("", "thinbox-errors-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sn, stop, err := newSnapshotter(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	// A committed base and an active child.
	if _, err := sn.Prepare(ctx, "base-active", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "child", "base"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.View(ctx, "look", "base"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		call func() error
		is   func(error) bool
	}{
		{"UnknownParent", func() error { _, err := sn.Prepare(ctx, "orphan", "no-such-parent"); return err }, errdefs.IsNotFound},
		{"DuplicateKey", func() error { _, err := sn.Prepare(ctx, "child", "base"); return err }, errdefs.IsAlreadyExists},
		{"DuplicateName", func() error { _, err := sn.Prepare(ctx, "base", ""); return err }, errdefs.IsAlreadyExists},
		{"DotDotKey", func() error { _, err := sn.Prepare(ctx, "a/../escape", "base"); return err }, errdefs.IsInvalidArgument},
		{"NulKey", func() error { _, err := sn.Prepare(ctx, "nul\x00key", "base"); return err }, errdefs.IsInvalidArgument},
		{"NulLabel", func() error {
			_, err := sn.Prepare(ctx, "labelled", "base", snapshots.WithLabels(map[string]string{"bad\x00name": "v"}))
			return err
		}, errdefs.IsInvalidArgument},
		{"ActiveParent", func() error { _, err := sn.Prepare(ctx, "grandchild", "child"); return err }, errdefs.IsInvalidArgument},
		{"CommitView", func() error { return sn.Commit(ctx, "from-view", "look") }, errdefs.IsFailedPrecondition},
		{"RemoveWithChildren", func() error { return sn.Remove(ctx, "base") }, errdefs.IsFailedPrecondition},
		{"StatMissing", func() error { _, err := sn.Stat(ctx, "missing"); return err }, errdefs.IsNotFound},
		{"RemoveMissing", func() error { return sn.Remove(ctx, "missing") }, errdefs.IsNotFound},
		{"MountsMissing", func() error { _, err := sn.Mounts(ctx, "missing"); return err }, errdefs.IsNotFound},
		{"UpdateParent", func() error {
			_, err := sn.Update(ctx, snapshots.Info{Name: "child", Parent: "other"}, "parent")
			return err
		}, errdefs.IsInvalidArgument},
	}
	for _, c := range cases {
		c := c
		t.Run("Refuses"+c.name, func(t *testing.T) {
			err := c.call()
			if err == nil || !c.is(err) {
				t.Fatalf("got %v, want the errdefs code of %s", err, c.name)
			}
		})
	}
	// Nothing half-made: exactly the four snapshots made above.
	var names []string
	if err := sn.Walk(ctx, func(ctx context.Context, i snapshots.Info) error {
		names = append(names, i.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	if fmt.Sprint(names) != "[base child look]" {
		t.Fatalf("after the refusals: %v", names)
	}
	// Each refusal counted on serve's /metrics by verb and errdefs code.
	scrape := metrics(t, dir)
	for _, series := range []string{
		`thinbox_operation_errors_total{code="not_found",verb="prepare"} 1`,
		`thinbox_operation_errors_total{code="already_exists",verb="prepare"} 2`,
		`thinbox_operation_errors_total{code="invalid_argument",verb="prepare"} 4`,
		`thinbox_operation_errors_total{code="failed_precondition",verb="commit"} 1`,
		`thinbox_operation_errors_total{code="failed_precondition",verb="remove"} 1`,
		`thinbox_operation_errors_total{code="not_found",verb="stat"} 1`,
		`thinbox_operation_errors_total{code="not_found",verb="remove"} 1`,
		`thinbox_operation_errors_total{code="not_found",verb="mounts"} 1`,
		`thinbox_operation_errors_total{code="invalid_argument",verb="update"} 1`,
	} {
		if !strings.Contains(scrape, "\n"+series+"\n") {
			t.Errorf("no %q in serve's metrics:\n%s", series, scrape)
		}
	}
}

// metrics scrapes the /metrics of the daemon whose log is in dir: its
// address from the start line ("...; metrics on http://ADDR/metrics").
func metrics(t *testing.T, dir string) string {
	t.Helper()
	log, err := os.ReadFile(filepath.Join(dir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, found := strings.Cut(string(log), "metrics on ")
	if !found {
		t.Fatalf("no metrics address in serve.log: %s", log)
	}
	url, _, _ := strings.Cut(after, "\n")
	resp, err := http.Get(strings.TrimSpace(url))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %d %s", url, err, resp.StatusCode, body)
	}
	return string(body)
}
