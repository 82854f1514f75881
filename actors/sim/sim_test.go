package sim

import (
	"flag"
	"os"
	"runtime"
	"sync"
	"testing"

	cmap "github.com/orcaman/concurrent-map"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "run only this seed (0: run -seeds seeds from -first)")
	seedsFlag = flag.Int("seeds", 250, "how many seeds TestSim runs")
	firstFlag = flag.Uint64("first", 1, "the first seed TestSim runs")
	traceFlag = flag.Bool("simtrace", false, "with -seed: print the whole trace")
)

func TestMain(m *testing.M) {
	// Each node is an actor system, and protoactor gives each one a
	// process registry of 1024 concurrent maps of SHARD_COUNT shards:
	// 32,768 Go maps, most of a short run's time and memory. A simulated
	// node holds a few dozen actors, touched only by its run's goroutine,
	// so one shard (one lock) per map will do. (It must be set before the
	// first map is made, and stay.)
	cmap.SHARD_COUNT = 1
	os.Exit(m.Run())
}

// TestSim runs the whole-relay simulation for many seeds, or for the one
// -seed names (docs/testing.md, "Whole-relay simulation").
func TestSim(t *testing.T) {
	if *seedFlag != 0 {
		cfg := ConfigFor(*seedFlag)
		if *traceFlag {
			cfg.Trace = func(line string) { t.Log(line) }
		}
		res, err := Run(cfg)
		t.Log(res)
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	n := *seedsFlag
	if testing.Short() {
		n = min(n, 50)
	}
	// Runs share nothing, so they go on every core; each run is
	// single-threaded and its own seed decides everything in it.
	var (
		mu                  sync.Mutex
		delivered, peerGone int64
		faults              = make(map[string]int)
		failed              error
		failedSeed          uint64
		next                = *firstFlag
		wg                  sync.WaitGroup
	)
	end := *firstFlag + uint64(n)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				seed := next
				next++
				stop := seed >= end || (failed != nil && seed > failedSeed)
				mu.Unlock()
				if stop {
					return
				}
				res, err := Run(ConfigFor(seed))
				mu.Lock()
				if err != nil && (failed == nil || seed < failedSeed) {
					// Report the lowest failing seed, so that the report
					// does not depend on which worker got there first.
					failed, failedSeed = err, seed
				}
				delivered += res.Delivered
				peerGone += res.PeerGone
				for k, v := range res.Faults {
					faults[k] += v
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failed != nil {
		t.Fatal(failed)
	}
	t.Logf("%d seeds from %d: %d packets delivered, %d PeerGone, faults %v", n, *firstFlag, delivered, peerGone, faults)
}

// TestSimReproduces: a seed's run is a function of the seed: two runs
// give the same trace, and different seeds different traces.
func TestSimReproduces(t *testing.T) {
	for _, seed := range []uint64{3, 17, 101} {
		a, errA := Run(ConfigFor(seed))
		b, errB := Run(ConfigFor(seed))
		if (errA == nil) != (errB == nil) || a.Trace != b.Trace || a.String() != b.String() {
			t.Fatalf("seed %d ran twice differently:\n%v (%v)\n%v (%v)", seed, a, errA, b, errB)
		}
		if other, _ := Run(ConfigFor(seed + 1)); other.Trace == a.Trace {
			t.Fatalf("seeds %d and %d ran alike: trace %016x", seed, seed+1, a.Trace)
		}
	}
}
