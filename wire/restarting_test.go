package wire

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"
	"time"
)

// TestWriteRestarting pins the Restarting frame's layout: type 0x15, an
// 8-byte body of reconnect-in then try-for, each a big-endian count of
// milliseconds, which is how Tailscale's client reads it
// (derp.ServerRestartingMessage).
func TestWriteRestarting(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	if err := w.WriteRestarting(2*time.Second, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	want := []byte{0x15, 0, 0, 0, 8, 0, 0, 0x07, 0xd0, 0, 0, 0x27, 0x10}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("Restarting frame %x, want %x", buf.Bytes(), want)
	}
}

// TestRestartingDurationsSaturate: what does not fit the field is sent
// as its nearest value, never wrapped around (a wrapped try-for would
// tell a client to give up at once).
func TestRestartingDurationsSaturate(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want uint32
	}{
		{0, 0},
		{-time.Second, 0},
		{1500 * time.Microsecond, 1}, // whole milliseconds, rounded down
		{math.MaxUint32 * time.Millisecond, math.MaxUint32},
		{(math.MaxUint32 + 1) * time.Millisecond, math.MaxUint32},
		{math.MaxInt64, math.MaxUint32},
	} {
		var buf bytes.Buffer
		w := NewWriter(&buf, 0)
		w.WriteRestarting(c.d, c.d)
		w.Flush()
		b := buf.Bytes()
		if typ, n := ParseHeader(b); typ != FrameRestarting || n != RestartingLen || len(b) != HeaderLen+RestartingLen {
			t.Fatalf("%v: header %v/%d, %d bytes", c.d, typ, n, len(b))
		}
		body := b[HeaderLen:]
		if in, tryFor := binary.BigEndian.Uint32(body[0:4]), binary.BigEndian.Uint32(body[4:8]); in != c.want || tryFor != c.want {
			t.Errorf("%v sent as %d and %d ms, want %d", c.d, in, tryFor, c.want)
		}
	}
}
