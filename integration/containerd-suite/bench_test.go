// The snapshotter benchmark of the containerd issue: N concurrent
// Prepare+Mounts on one committed parent, `thinbox serve` (through
// containerd's proxy client, the path containerd takes) against one of
// containerd's own snapshotters run in this process (no gRPC hop for it),
// interleaved round by round. Driven by benches/benches/serve.rs; it is
// not a test and skips unless THINBOX_BENCH_PEER is set.
//
// Environment: as the suite's (THINBOX_BIN, THINBOX_SUITE_BACKEND, ...)
// for thinbox, plus THINBOX_BENCH_PEER (overlay, btrfs, devmapper),
// THINBOX_BENCH_PEER_ROOT (the peer's root: on btrfs for btrfs),
// THINBOX_BENCH_PEER_POOL (devmapper: a thin-pool's dm name),
// THINBOX_BENCH_N (default 100) and THINBOX_BENCH_ROUNDS (default 5).
//
// With the btrfs peer each round also times the kernel's floor: N
// concurrent snapshot ioctls (containerd/btrfs's SubvolSnapshot, what
// containerd's btrfs snapshotter calls) on the same filesystem, no records
// and no RPC, so the ratio to it says what is left above the kernel.
package thinboxsuite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	bareBtrfs "github.com/containerd/btrfs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/btrfs"
	"github.com/containerd/containerd/snapshots/devmapper"
	"github.com/containerd/containerd/snapshots/overlay"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func peerSnapshotter(ctx context.Context, peer, root string) (snapshots.Snapshotter, error) {
	switch peer {
	case "overlay":
		return overlay.NewSnapshotter(root)
	case "btrfs":
		return btrfs.NewSnapshotter(root)
	case "devmapper":
		cfg := &devmapper.Config{
			RootPath:       root,
			PoolName:       os.Getenv("THINBOX_BENCH_PEER_POOL"),
			BaseImageSize:  "64MB",
			FileSystemType: "ext4",
		}
		// The type is containerd's own, unexported: set by constant.
		if os.Getenv("THINBOX_SUITE_FS") == "xfs" {
			cfg.FileSystemType = "xfs"
		}
		return devmapper.NewSnapshotter(ctx, cfg)
	}
	return nil, fmt.Errorf("THINBOX_BENCH_PEER=%q: give overlay, btrfs or devmapper", peer)
}

// parent commits a one-file layer as "parent".
func parent(ctx context.Context, sn snapshots.Snapshotter, work string) error {
	m, err := sn.Prepare(ctx, "parent-active", "")
	if err != nil {
		return err
	}
	dir := filepath.Join(work, "parent")
	if err := os.MkdirAll(dir, 0755); err != nil {
		return err
	}
	if err := mount.All(m, dir); err != nil {
		return err
	}
	werr := os.WriteFile(filepath.Join(dir, "layer"), []byte("the parent\n"), 0644)
	if err := mount.UnmountAll(dir, 0); err != nil {
		return err
	}
	if werr != nil {
		return werr
	}
	return sn.Commit(ctx, "parent", "parent-active")
}

// round prepares n children of "parent" at once, asking each one's
// mounts, and returns the wall time; then removes them (untimed).
func round(ctx context.Context, sn snapshots.Snapshotter, r, n int) (time.Duration, error) {
	errs := make(chan error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			key := fmt.Sprintf("round-%d-%d", r, i)
			if _, err := sn.Prepare(ctx, key, "parent"); err != nil {
				errs <- err
				return
			}
			if _, err := sn.Mounts(ctx, key); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		return took, err
	}
	for i := 0; i < n; i++ {
		if err := sn.Remove(ctx, fmt.Sprintf("round-%d-%d", r, i)); err != nil {
			return took, err
		}
	}
	return took, nil
}

// floorRound makes n snapshots of parent at once with the bare ioctl and
// returns the wall time; then deletes them (untimed).
func floorRound(dir, parent string, r, n int) (time.Duration, error) {
	errs := make(chan error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			dst := filepath.Join(dir, fmt.Sprintf("round-%d-%d", r, i))
			if err := bareBtrfs.SubvolSnapshot(dst, parent, false); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		return took, err
	}
	for i := 0; i < n; i++ {
		if err := bareBtrfs.SubvolDelete(filepath.Join(dir, fmt.Sprintf("round-%d-%d", r, i))); err != nil {
			return took, err
		}
	}
	return took, nil
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func TestBenchConcurrentPrepare(t *testing.T) {
	peer := os.Getenv("THINBOX_BENCH_PEER")
	if peer == "" {
		t.Skip("a benchmark: set THINBOX_BENCH_PEER (benches/benches/serve.rs does)")
	}
	n := envInt("THINBOX_BENCH_N", 100)
	rounds := envInt("THINBOX_BENCH_ROUNDS", 5)
	ctx := namespaces.WithNamespace(context.Background(), "bench")
	dir, err := os.MkdirTemp("", "thinbox-bench-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	tbRoot := filepath.Join(dir, "thinbox")
	if err := os.MkdirAll(tbRoot, 0700); err != nil {
		t.Fatal(err)
	}
	tb, stop, err := newSnapshotter(ctx, tbRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	other, err := peerSnapshotter(ctx, peer, os.Getenv("THINBOX_BENCH_PEER_ROOT"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	sides := []struct {
		name string
		sn   snapshots.Snapshotter
	}{{"thinbox", tb}, {peer, other}}
	for _, s := range sides {
		if err := parent(ctx, s.sn, filepath.Join(dir, "work-"+s.name)); err != nil {
			t.Fatalf("%s: the parent layer: %v", s.name, err)
		}
	}
	took := map[string][]time.Duration{}
	var ratios []float64
	// The btrfs peer's floor: a subvolume beside the peer's root.
	floorDir := ""
	if peer == "btrfs" {
		floorDir = filepath.Clean(os.Getenv("THINBOX_BENCH_PEER_ROOT")) + "-floor"
		if err := os.MkdirAll(floorDir, 0700); err != nil {
			t.Fatal(err)
		}
		if err := bareBtrfs.SubvolCreate(filepath.Join(floorDir, "parent")); err != nil {
			t.Fatalf("the floor's parent subvolume: %v", err)
		}
		defer func() {
			bareBtrfs.SubvolDelete(filepath.Join(floorDir, "parent"))
			os.Remove(floorDir)
		}()
		if err := os.WriteFile(filepath.Join(floorDir, "parent", "layer"), []byte("the parent\n"), 0644); err != nil {
			t.Fatal(err)
		}
	}
	var floorRatios []float64
	for r := 0; r < rounds; r++ {
		// Who goes first alternates, so neither always meets a warm cache.
		order := []int{0, 1}
		if r%2 == 1 {
			order = []int{1, 0}
		}
		var this [2]time.Duration
		for _, i := range order {
			d, err := round(ctx, sides[i].sn, r, n)
			if err != nil {
				t.Fatalf("%s, round %d: %v", sides[i].name, r, err)
			}
			this[i] = d
			took[sides[i].name] = append(took[sides[i].name], d)
		}
		ratios = append(ratios, this[0].Seconds()/this[1].Seconds())
		fmt.Printf("bench round %d: thinbox %.3fs, %s %.3fs\n", r, this[0].Seconds(), peer, this[1].Seconds())
		if floorDir != "" {
			d, err := floorRound(floorDir, filepath.Join(floorDir, "parent"), r, n)
			if err != nil {
				t.Fatalf("the floor, round %d: %v", r, err)
			}
			took["ioctl"] = append(took["ioctl"], d)
			floorRatios = append(floorRatios, this[0].Seconds()/d.Seconds())
			fmt.Printf("bench round %d: bare snapshot ioctls %.3fs\n", r, d.Seconds())
		}
	}
	if len(floorRatios) > 0 {
		sort.Float64s(floorRatios)
		fmt.Printf("bench concurrent_prepare_mounts n=%d rounds=%d thinbox/ioctl = %.3fx (bare snapshot ioctls median %.3fs; %s/ioctl %.3fx)\n",
			n, rounds, floorRatios[len(floorRatios)/2], median(took["ioctl"]).Seconds(), peer,
			median(took[peer]).Seconds()/median(took["ioctl"]).Seconds())
	}
	sort.Float64s(ratios)
	fmt.Printf("bench concurrent_prepare_mounts n=%d rounds=%d thinbox/%s = %.3fx (thinbox median %.3fs, %s median %.3fs)\n",
		n, rounds, peer, ratios[len(ratios)/2], median(took["thinbox"]).Seconds(), peer, median(took[peer]).Seconds())
	for _, s := range []string{"parent"} {
		tb.Remove(ctx, s)
		other.Remove(ctx, s)
	}
}
