package actors

import "github.com/derpd/derpd/wire"

// RecvRate is the per-client receive rate limit (upstream's -rate-config):
// a token bucket of bytes read, filled at BytesPerSec up to Burst. A
// connection short of tokens stops reading until it has them, so TCP
// pushes back on the sender; nothing is dropped. Mesh peers are exempt.
type RecvRate struct {
	BytesPerSec uint64
	Burst       uint64
}

// MinRecvBurst is the smallest bucket: one largest frame body, so that
// every frame can be paid for at once.
const MinRecvBurst = wire.MaxRecvFrameBody

// NormalizedRecvRate applies upstream's rules: no rate means no limit
// (nil), and the burst is raised to MinRecvBurst.
func NormalizedRecvRate(bytesPerSec, burst uint64) *RecvRate {
	if bytesPerSec == 0 {
		return nil
	}
	return &RecvRate{BytesPerSec: bytesPerSec, Burst: max(burst, MinRecvBurst)}
}
