package actors_test

import (
	"reflect"
	"runtime"
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/actors/actortest"
)

// A map is copied only when it has fallen below a quarter of a peak of at
// least ShrinkMinPeak, keeps every entry when it is, and starts its peak
// over at its new size.
func TestShrinkCopiesOnlyFarBelowThePeak(t *testing.T) {
	m := map[int]int{}
	var peak actors.MapPeak
	for i := range 4000 {
		m[i] = i
		m = actors.Shrink(m, &peak)
	}
	if peak != 4000 {
		t.Fatalf("peak %d after 4000 insertions", peak)
	}
	copies := 0
	for i := range 4000 {
		before := m
		delete(m, i)
		if m = actors.Shrink(m, &peak); !sameMap(m, before) {
			copies++
			if got := len(m); got != 4000-i-1 || int(peak) != got || got*actors.ShrinkFactor >= 4000 {
				t.Fatalf("copied at %d entries, peak now %d", got, peak)
			}
			for k := i + 1; k < 4000; k++ {
				if m[k] != k {
					t.Fatalf("entry %d lost in the copy", k)
				}
			}
		}
	}
	// 4000 → below 1000 (copied once); below ShrinkMinPeak from there on.
	if copies != 1 {
		t.Fatalf("%d copies while emptying a map of 4000, want 1", copies)
	}

	small := map[int]int{}
	var smallPeak actors.MapPeak
	for i := range actors.ShrinkMinPeak - 1 {
		small[i] = i
		small = actors.Shrink(small, &smallPeak)
	}
	before := small
	clear(small)
	if small = actors.Shrink(small, &smallPeak); !sameMap(small, before) {
		t.Fatal("a map that never reached ShrinkMinPeak was copied")
	}
}

// Churn around one size never copies: the map must fall to a quarter.
func TestShrinkLeavesAMapAtSteadySizeAlone(t *testing.T) {
	m := map[int]int{}
	var peak actors.MapPeak
	for i := range 10_000 {
		m[i] = i
		m = actors.Shrink(m, &peak)
	}
	start := m
	for i := 10_000; i < 200_000; i++ {
		delete(m, i-10_000)
		m = actors.Shrink(m, &peak)
		m[i] = i
		m = actors.Shrink(m, &peak)
	}
	if !sameMap(m, start) {
		t.Fatal("a map churning at 10,000 entries was copied")
	}
}

// TestShrinkGivesTheBucketsBack is the measurement the helper exists for:
// a map of 50,000 entries emptied one deletion at a time keeps its
// buckets without Shrink, and gives them back with it.
func TestShrinkGivesTheBucketsBack(t *testing.T) {
	const n = 50_000
	fill := func() map[[32]byte]*[64]byte {
		m := make(map[[32]byte]*[64]byte)
		for i := range n {
			m[[32]byte{byte(i), byte(i >> 8), byte(i >> 16)}] = new([64]byte)
		}
		return m
	}
	baseline := actortest.HeapInuse()

	plain := fill()
	for k := range plain {
		delete(plain, k)
	}
	plainAbove := actortest.Above(actortest.HeapInuse(), baseline)
	runtime.KeepAlive(plain)
	plain = nil

	baseline = actortest.HeapInuse()
	shrunk := fill()
	var peak actors.MapPeak
	shrunk = actors.Shrink(shrunk, &peak)
	for k := range shrunk {
		delete(shrunk, k)
		shrunk = actors.Shrink(shrunk, &peak)
	}
	shrunkAbove := actortest.Above(actortest.HeapInuse(), baseline)
	runtime.KeepAlive(shrunk)

	t.Logf("heap in use above the baseline after emptying a map of %d: %.2f MiB without Shrink, %.2f MiB with it",
		n, actortest.MiB(plainAbove), actortest.MiB(shrunkAbove))
	// Without Shrink the buckets for 50,000 entries of 40 bytes (about
	// 2.5 MiB) stay; with it, at most the last copy's (under 1,024
	// entries, some tens of KiB). 1 MiB of slack for the runtime.
	if shrunkAbove > 1<<20 {
		t.Fatalf("%.2f MiB above the baseline after the map was emptied with Shrink, want under 1 MiB", actortest.MiB(shrunkAbove))
	}
}

// sameMap reports whether a and b are one map, not a copy.
func sameMap[M ~map[K]V, K comparable, V any](a, b M) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}
