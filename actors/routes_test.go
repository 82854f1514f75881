package actors

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/derpd/derpd/wire"
)

type nopSink struct{ id int }

func (nopSink) SendPacket(p *wire.Packet, _ *Waiter) { p.Release() }

func rkey(i int) wire.NodePublic {
	var k wire.NodePublic
	k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16)
	k[31] = 0x55
	return k
}

func TestRouteTableSetLookupDelete(t *testing.T) {
	rt := NewRouteTable()
	const n = 5000
	sinks := make([]*nopSink, n)
	for i := range n {
		sinks[i] = &nopSink{id: i}
		rt.Set(&Route{Key: rkey(i), Local: sinks[i]})
	}
	if rt.Len() != n {
		t.Fatalf("Len = %d", rt.Len())
	}
	for i := range n {
		r := rt.Lookup(rkey(i))
		if r == nil || r.Local != sinks[i] {
			t.Fatalf("key %d: %+v", i, r)
		}
	}
	// Replacing keeps one entry.
	rt.Set(&Route{Key: rkey(7), Local: sinks[8]})
	if rt.Len() != n || rt.Lookup(rkey(7)).Local != sinks[8] {
		t.Fatal("replace")
	}
	for i := 0; i < n; i += 2 {
		rt.Delete(rkey(i))
	}
	rt.Delete(rkey(n + 1)) // absent: no-op
	for i := range n {
		if got := rt.Lookup(rkey(i)) != nil; got != (i%2 == 1) {
			t.Fatalf("key %d present=%v after deleting evens", i, got)
		}
	}
	count := 0
	rt.Range(func(*Route) bool { count++; return true })
	if count != n/2 || rt.Len() != n/2 {
		t.Fatalf("Range saw %d, Len %d, want %d", count, rt.Len(), n/2)
	}
	if rt.Lookup(rkey(n+5)) != nil {
		t.Fatal("lookup of a never-set key")
	}
}

// TestRouteTableChurnDoesNotGrow checks that connect/disconnect churn
// (tombstones) is cleaned by rebuilds instead of filling the table.
func TestRouteTableChurnDoesNotGrow(t *testing.T) {
	rt := NewRouteTable()
	for i := range 100_000 {
		rt.Set(&Route{Key: rkey(i), Local: nopSink{}})
		rt.Delete(rkey(i))
	}
	if size := len(rt.tab.Load().slots); size > 4*minRouteSlots {
		t.Fatalf("table grew to %d slots with at most one live key", size)
	}
}

// TestRouteTableShrinksAfterABurst: a table grown for 50,000 keys is
// rebuilt small once all but a few have left, and keeps those.
func TestRouteTableShrinksAfterABurst(t *testing.T) {
	rt := NewRouteTable()
	const n, kept = 50_000, 10
	for i := range n {
		rt.Set(&Route{Key: rkey(i), Local: nopSink{}})
	}
	for i := kept; i < n; i++ {
		rt.Delete(rkey(i))
	}
	if size := len(rt.tab.Load().slots); size > 4*minRouteSlots {
		t.Fatalf("table of %d slots once %d keys of %d are left", size, kept, n)
	}
	for i := range kept {
		if rt.Lookup(rkey(i)) == nil {
			t.Fatalf("key %d lost when the table shrank", i)
		}
	}
	if rt.Len() != kept {
		t.Fatalf("Len %d, want %d", rt.Len(), kept)
	}
}

// TestRouteTableConcurrentReaders runs lookups from many goroutines while
// one writer churns, under the race detector: readers must always see
// either no route or a complete one for the key they asked for.
func TestRouteTableConcurrentReaders(t *testing.T) {
	rt := NewRouteTable()
	const keys = 512
	stable := &nopSink{id: -1}
	for i := range keys {
		if i%2 == 0 {
			rt.Set(&Route{Key: rkey(i), Local: stable})
		}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; !stop.Load(); j++ {
				i := (j*7 + g) % keys
				r := rt.Lookup(rkey(i))
				if i%2 == 0 && (r == nil || r.Local != stable) {
					bad.Add(1) // stable keys must always be found
				}
				if r != nil && r.Key != rkey(i) {
					bad.Add(1)
				}
			}
		}()
	}
	for round := range 200 {
		for i := 1; i < keys; i += 2 {
			rt.Set(&Route{Key: rkey(i), Local: &nopSink{id: round}})
		}
		for i := 1; i < keys; i += 2 {
			rt.Delete(rkey(i))
		}
	}
	stop.Store(true)
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d inconsistent lookups", bad.Load())
	}
}

func BenchmarkRouteLookup(b *testing.B) {
	rt := NewRouteTable()
	for i := range 10_000 {
		rt.Set(&Route{Key: rkey(i), Local: nopSink{}})
	}
	k := rkey(4242)
	b.ReportAllocs()
	for b.Loop() {
		if rt.Lookup(k) == nil {
			b.Fatal()
		}
	}
}
