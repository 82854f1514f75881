//go:build race

package wire

// raceEnabled: the race detector makes sync.Pool drop items at random (to
// shake out reuse bugs), so allocation counts mean nothing under it.
const raceEnabled = true
