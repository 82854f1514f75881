package mesh

import (
	"bytes"
	"testing"

	"github.com/derpd/derpd/actors"
	"github.com/derpd/derpd/wire"
	"github.com/rs/zerolog"
)

// FuzzLinkFrames feeds a link session whatever a hostile or broken peer
// might send after the handshake. The session must never panic, never
// read past what a frame claims, and report an update only for a
// PeerPresent or PeerGone of at least a key's length, with that key.
func FuzzLinkFrames(f *testing.F) {
	k := testKey(1)
	var seed []byte
	seed = wire.AppendHeader(seed, wire.FramePeerPresent, 51)
	seed = append(append(seed, k[:]...), make([]byte, 19)...)
	seed = wire.AppendHeader(seed, wire.FramePeerGone, 33)
	seed = append(append(seed, k[:]...), 1)
	seed = wire.AppendHeader(seed, wire.FramePong, 8)
	seed = append(seed, 0, 0, 0, 0, 0, 0, 0, 1)
	seed = wire.AppendHeader(seed, wire.FrameHealth, 4)
	seed = append(seed, "oops"...)
	f.Add(seed)
	f.Add(wire.AppendHeader(nil, wire.FramePeerPresent, 31))
	f.Add(wire.AppendHeader(nil, wire.FramePeerGone, 1<<30))
	f.Add([]byte{0x09, 0, 0})
	sys := actors.NewSystem(zerolog.Nop())
	f.Fuzz(func(t *testing.T, b []byte) {
		s := &session{clock: sys.Clock, log: zerolog.Nop()}
		rd := wire.NewReader(bytes.NewReader(b), nil, maxLinkFrame)
		for {
			typ, n, err := rd.ReadHeader()
			if err != nil {
				return
			}
			u, ok, err := s.readFrame(rd, typ, n)
			if err != nil {
				return
			}
			if ok && ((typ != wire.FramePeerPresent && typ != wire.FramePeerGone) || n < wire.KeyLen) {
				t.Fatalf("update %+v from a %v of %d bytes", u, typ, n)
			}
			if ok && u.Present != (typ == wire.FramePeerPresent) {
				t.Fatalf("update %+v from a %v", u, typ)
			}
		}
	})
}
