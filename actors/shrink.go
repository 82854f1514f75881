package actors

// Go maps never give memory back: a map that once held 50,000 entries
// keeps the buckets for 50,000 after every one is deleted, for as long as
// the map lives. The registry's and the flows actor's maps live as long
// as the process, so a burst of clients would set their size for good
// (the soak of issue 11 kept 11 MiB of empty flow-map buckets). Shrink is
// how they come back: a map that has fallen far below the largest it has
// been since it was built is copied into a fresh one, sized for what it
// holds now, and the old buckets go to the collector.

// Tuning of Shrink.
const (
	// ShrinkMinPeak is the peak below which a map is never copied: a map
	// of a thousand entries costs some tens of KiB, not worth a copy.
	ShrinkMinPeak = 1024
	// ShrinkFactor is how far below its peak a map must fall to be
	// copied. A quarter means a copy of n entries follows at least 3n
	// deletions since the peak, so copying costs O(1) per deletion
	// amortized, and a map that hovers near one size is never copied
	// back and forth.
	ShrinkFactor = 4
)

// MapPeak is the largest a map has been since it was last built: the
// size its buckets were grown for. Keep one beside each map that Shrink
// looks after; the zero value is a map just made.
type MapPeak int

// Shrink notes m's size in peak and returns m, or, when m has fallen
// below 1/ShrinkFactor of a peak of at least ShrinkMinPeak, a fresh copy
// of m (and peak starts over at its size). Call it after every change of
// m's size, insertions included, and assign the result back: on the
// paths that insert it is one comparison, and it never allocates unless
// it copies.
func Shrink[M ~map[K]V, K comparable, V any](m M, peak *MapPeak) M {
	n := len(m)
	if n > int(*peak) {
		*peak = MapPeak(n)
		return m
	}
	if int(*peak) < ShrinkMinPeak || n*ShrinkFactor >= int(*peak) {
		return m
	}
	fresh := make(M, n)
	for k, v := range m {
		fresh[k] = v
	}
	*peak = MapPeak(n)
	return fresh
}
