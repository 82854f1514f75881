package interop

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
)

// §9.1: /derp without Upgrade is 426 with upstream's body.
func TestDerpWithoutUpgradeIs426(t *testing.T) {
	srv := start(t, harness.Options{})
	res, err := http.Get("http://" + srv.Addr() + "/derp")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusUpgradeRequired || strings.TrimSpace(string(body)) != "DERP requires connection upgrade" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
}

// §9.2 and §9.5: the exact 101 response, then ServerKey with the magic and
// the same key as the header.
func TestUpgradeResponseAndServerKey(t *testing.T) {
	srv := start(t, harness.Options{})
	pub := toWire(serverKey(t, srv))
	head, br, _ := harness.RawUpgradeResponse(t, srv,
		"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: dErP\r\nConnection: Upgrade\r\n\r\n")
	want := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\nDerp-Public-Key: " +
		pub.UntypedHexString() + "\r\n\r\n"
	if head != want {
		t.Fatalf("upgrade response\n got %q\nwant %q", head, want)
	}
	frame := make([]byte, 5+40)
	if _, err := io.ReadFull(br, frame); err != nil {
		t.Fatal(err)
	}
	wantFrame := append([]byte{0x01, 0, 0, 0, 40, 0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91}, pub[:]...)
	if !bytes.Equal(frame, wantFrame) {
		t.Fatalf("ServerKey frame %x\nwant %x", frame, wantFrame)
	}
}

// §9.3 and §9.4: with fast start the first bytes are the ServerKey frame,
// and a ClientInfo pipelined with the request is honoured.
func TestFastStartWithPipelinedClientInfo(t *testing.T) {
	srv := start(t, harness.Options{})
	pub := toWire(serverKey(t, srv))
	rc := harness.DialRaw(t, srv, true)
	rc.Server = pub
	// The request is already out; pipeline ClientInfo and a ping before
	// reading anything.
	rc.Write(rc.ClientInfoFrame(`{"version":2,"CanAckPings":true}`))
	rc.Frame(wire.FramePing, []byte("pipeline"))
	typ, body := rc.ReadFrame()
	if typ != wire.FrameServerKey || len(body) != 40 {
		t.Fatalf("first frame %v of %d bytes, want ServerKey of 40", typ, len(body))
	}
	if typ, _ := rc.ReadFrame(); typ != wire.FrameServerInfo {
		t.Fatalf("second frame %v, want ServerInfo", typ)
	}
	for {
		typ, body := rc.ReadFrame()
		if typ == wire.FrameKeepAlive {
			continue
		}
		if typ != wire.FramePong || string(body) != "pipeline" {
			t.Fatalf("got %v %q, want the pong for the pipelined ping", typ, body)
		}
		break
	}
}

// §9.7: ServerInfo opens with the server's key and says version 2.
func TestServerInfoOpensAndSaysVersion2(t *testing.T) {
	srv := start(t, harness.Options{})
	rc := harness.DialRaw(t, srv, false)
	rc.ReadServerKey()
	rc.Write(rc.ClientInfoFrame(`{"version":2,"CanAckPings":true}`))
	typ, body := rc.ReadFrame()
	if typ != wire.FrameServerInfo {
		t.Fatalf("got %v", typ)
	}
	plain, err := wire.Open(nil, body, rc.Server, rc.Priv)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(plain), `"version":2`) {
		t.Fatalf("ServerInfo JSON %s", plain)
	}
}

// §9.8, §9.9 and bad input: every malformed handshake is closed without
// ServerInfo, and the server keeps relaying for others.
func TestBadHandshakesAreClosedAndHarmless(t *testing.T) {
	srv := start(t, harness.Options{})
	cases := map[string]func(rc *harness.RawConn){
		"box does not open": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			other := wire.GenerateNodePrivate()
			body := wire.Seal(append([]byte(nil), rc.Pub[:]...), []byte(`{"version":2}`), other, rc.Server)
			rc.Frame(wire.FrameClientInfo, body)
		},
		"not ClientInfo first": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			rc.Frame(wire.FrameSendPacket, make([]byte, 40))
		},
		"too short": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			rc.Frame(wire.FrameClientInfo, make([]byte, 55))
		},
		"too long": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			rc.Write(wire.AppendHeader(nil, wire.FrameClientInfo, 256<<10+1))
		},
		"16 MiB claim": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			rc.Write(wire.AppendHeader(nil, wire.FrameClientInfo, 16<<20))
		},
		"invalid JSON": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			rc.Write(rc.ClientInfoFrame(`{"version":`))
		},
		"empty meshKey": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			rc.Write(rc.ClientInfoFrame(`{"version":2,"meshKey":""}`))
		},
		"truncated header": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			rc.Write([]byte{0x02, 0x00})
			rc.Conn.(interface{ CloseWrite() error }).CloseWrite()
		},
		"truncated ClientInfo": func(rc *harness.RawConn) {
			rc.ReadServerKey()
			f := rc.ClientInfoFrame(`{"version":2}`)
			rc.Write(f[:len(f)/2])
			rc.Conn.(interface{ CloseWrite() error }).CloseWrite()
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			rc := harness.DialRaw(t, srv, false)
			f(rc)
			rc.ExpectClosed(wire.FrameServerInfo)
		})
	}
	a, b := connect(t, srv), connect(t, srv)
	if err := a.Send(b.Pub, []byte("still relaying")); err != nil {
		t.Fatal(err)
	}
	b.ExpectPacket(t, a.Pub, []byte("still relaying"))
}

// §9.9: Go's JSON rules: "canackpings" is as good as "CanAckPings".
func TestClientInfoKeysAreCaseInsensitive(t *testing.T) {
	srv := start(t, harness.Options{})
	rc := harness.DialRaw(t, srv, false)
	rc.Handshake(`{"version":2,"canackpings":true,"SomethingNew":[1,2]}`)
}
