package client

import (
	"net"
	"testing"
	"time"

	"github.com/derpd/derpd/actors/leakcheck"
	"github.com/derpd/derpd/wire"
)

// Every way a connection can end leaves nothing behind: no reader, no
// writer, no Serve goroutine, no client actor. Each case runs on a
// server of its own, started before the snapshot, so that only the
// connection's own goroutines and actor are new.
func TestNoGoroutineOrActorOutlivesItsConnection(t *testing.T) {
	var mk wire.MeshKey
	mk[0] = 9
	cases := map[string]func(t *testing.T, s *testServer){
		"relayed, then both hang up": func(t *testing.T, s *testServer) {
			a, b := s.connect(t, clientInfo), s.connect(t, clientInfo)
			a.send(b.pub, []byte("hello"))
			if typ, body := b.readSkipping(); typ != wire.FrameRecvPacket || string(body[wire.KeyLen:]) != "hello" {
				t.Fatalf("got %v %q", typ, body)
			}
			b.send(a.pub, discoPayload(1)) // a disco packet the other way
			if typ, _ := a.readSkipping(); typ != wire.FrameRecvPacket {
				t.Fatalf("got %v", typ)
			}
			a.conn.Close()
			b.conn.Close()
		},
		"hangs up in the handshake": func(t *testing.T, s *testServer) {
			s.dial(t).conn.Close()
		},
		"a box that does not open": func(t *testing.T, s *testServer) {
			tc := s.dial(t)
			tc.sendClientInfo(wire.GenerateNodePrivate().Public(), clientInfo)
			tc.expectClosed(wire.FrameServerInfo)
		},
		"uses a mesh privilege it lacks": func(t *testing.T, s *testServer) {
			tc := s.connect(t, clientInfo)
			tc.frame(wire.FrameWatchConns, nil)
			tc.expectClosed()
		},
		"a frame too large": func(t *testing.T, s *testServer) {
			tc := s.connect(t, clientInfo)
			tc.conn.Write(wire.AppendHeader(nil, wire.FrameSendPacket, 16<<20))
			tc.expectClosed()
		},
		"closed by a mesh peer's ClosePeer": func(t *testing.T, s *testServer) {
			a := s.connect(t, clientInfo)
			m := s.connect(t, wire.ClientInfo{Version: 2, MeshKey: mk})
			m.frame(wire.FrameWatchConns, nil)
			m.frame(wire.FrameClosePeer, a.pub[:])
			a.expectClosed()
			m.conn.Close()
		},
		"a duplicate key, both gone": func(t *testing.T, s *testServer) {
			a1 := s.connect(t, clientInfo)
			a2 := s.dial(t)
			a2.priv, a2.pub = a1.priv, a1.pub
			a2.sendClientInfo(s.cfg.PublicKey, clientInfo)
			if typ, _ := a2.read(); typ != wire.FrameServerInfo {
				t.Fatalf("a2 got %v", typ)
			}
			a1.frame(wire.FramePing, []byte("i am a1!")) // claims the key back
			if typ, _ := a1.readSkipping(); typ != wire.FramePong {
				t.Fatalf("a1 got %v", typ)
			}
			a1.conn.Close()
			a2.conn.Close()
		},
		"stalled receiver cut off by the write deadline": func(t *testing.T, s *testServer) {
			snd := s.connect(t, clientInfo)
			rcv := s.connect(t, clientInfo)
			rcv.conn.(*net.TCPConn).SetReadBuffer(4096)
			big := make([]byte, wire.MaxPacketSize)
			for {
				snd.send(rcv.pub, big)
				if s.sys.Stats.WriteTimeouts.Load() > 0 {
					break
				}
			}
			// The server ends the connection on its own: the receiver
			// is not told (it reads nothing), and draining what the
			// kernel holds through its tiny window would take minutes.
			awaitCond(t, "the stalled receiver's disconnect", func() bool { return s.sys.Stats.CurrentConns.Load() == 1 })
			rcv.conn.Close()
			snd.conn.Close()
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			s := startTestServer(t, Config{MeshKey: mk, WriteTimeout: writeTimeoutForTests})
			s.syncRegistry(t) // started, and counted among the live actors
			leakcheck.Verify(t, leakcheck.System(s.sys))
			f(t, s)
		})
	}
}

// writeTimeoutForTests cuts a stalled receiver off soon, so a test that
// needs one to be cut off does not wait the default 2 s.
const writeTimeoutForTests = 200 * time.Millisecond

// awaitCond polls cond until it holds, failing the test after
// leakcheck.Wait: for state the server changes in its own time.
func awaitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(leakcheck.Wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %v", what, leakcheck.Wait)
		}
		time.Sleep(time.Millisecond)
	}
}
