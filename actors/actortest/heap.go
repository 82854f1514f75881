package actortest

import "runtime"

// HeapInuse collects garbage and returns the bytes in in-use heap spans
// (runtime.MemStats.HeapInuse): what a map's buckets, freed or not, are
// counted in. Two collections, so that what the first one's finalizers
// and sweeps released is gone too. For memory tests, which compare it
// before and after a load with generous margins, never for timing.
func HeapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// MiB renders a byte count for a test's log.
func MiB(n uint64) float64 { return float64(n) / (1 << 20) }

// Above is how far after is above before, zero if it is not.
func Above(after, before uint64) uint64 {
	if after > before {
		return after - before
	}
	return 0
}
