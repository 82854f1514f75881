package wire

import (
	"bytes"
	"testing"
)

// FuzzReader feeds arbitrary bytes to the frame reader the way a server
// reads an untrusted client: headers, then bodies read or skipped.
func FuzzReader(f *testing.F) {
	f.Add(frames(f, []byte("hello"), make([]byte, 40), nil))
	f.Add(AppendHeader(nil, FrameClientInfo, 16<<20))
	f.Add([]byte{4, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := NewReader(bytes.NewReader(data), nil, MaxClientInfoLen)
		for i := 0; ; i++ {
			typ, n, err := rd.ReadHeader()
			if err != nil {
				return
			}
			if n > MaxClientInfoLen {
				t.Fatalf("header claims %d bytes past the limit", n)
			}
			switch {
			case i%2 == 0 && n <= 4096:
				body := make([]byte, n)
				if err := rd.ReadFull(body); err != nil {
					return
				}
			case typ == FrameSendPacket && n >= KeyLen && n-KeyLen <= MaxPacketSize:
				if _, err := rd.ReadKey(); err != nil {
					return
				}
				p := NewPacket(int(n) - KeyLen)
				err := rd.ReadFull(p.Payload())
				if err == nil && len(p.RecvFrame()) != HeaderLen+int(n) {
					t.Fatalf("frame of %d bytes from a %d-byte body", len(p.RecvFrame()), n)
				}
				p.Release()
				if err != nil {
					return
				}
			default:
				if err := rd.Discard(int(n)); err != nil {
					return
				}
			}
		}
	})
}

// FuzzParseClientInfo checks that no body crashes the parser and that
// anything accepted really came sealed from the key it names.
func FuzzParseClientInfo(f *testing.F) {
	srv := NodePrivate{1: 1, 31: 64}
	cl := NodePrivate{2: 2, 31: 64}
	good := clientInfoBody(nil, cl, srv.Public(), `{"version":2,"CanAckPings":true}`)
	f.Add(good)
	f.Add(clientInfoBody(nil, cl, srv.Public(), `{"meshKey":""}`))
	f.Add(good[:60])
	f.Fuzz(func(t *testing.T, body []byte) {
		key, _, err := ParseClientInfo(body, srv)
		if err != nil {
			return
		}
		if _, err := Open(nil, body[KeyLen:], key, srv); err != nil {
			t.Fatalf("accepted a ClientInfo that does not open: %v", err)
		}
		if key.IsZero() {
			t.Fatal("accepted the zero key")
		}
	})
}
