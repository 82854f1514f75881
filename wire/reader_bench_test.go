package wire

import (
	"bytes"
	"io"
	"testing"
)

// recordSource replays a stream of frames forever, at most one TLS
// record's worth (16 KiB) a read, as a tls.Conn returns them: the shape a
// busy sender's bytes have on a connection without a raw socket.
type recordSource struct {
	b   []byte
	off int
}

func (s *recordSource) Read(p []byte) (int, error) {
	n := copy(p[:min(len(p), 16<<10)], s.b[s.off:])
	s.off = (s.off + n) % len(s.b)
	return n, nil
}

// BenchmarkRelayPacketTLSRecords is BenchmarkRelayPacket with the bytes
// arriving in 16 KiB records whose boundaries fall anywhere in a frame.
func BenchmarkRelayPacketTLSRecords(b *testing.B) {
	var one bytes.Buffer
	w0 := NewWriter(&one, 0)
	w0.WriteSendPacket(NodePublic{1}, make([]byte, 1280))
	w0.Flush()
	rd := NewReader(&recordSource{b: bytes.Repeat(one.Bytes(), 97)}, nil, 1<<20)
	w := NewWriter(io.Discard, 0)
	b.ReportAllocs()
	b.SetBytes(1280)
	for b.Loop() {
		relayOne(rd, w, NodePublic{2})
		if w.Buffered() > 48<<10 {
			w.Flush()
		}
	}
}
