package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/wire"
)

// RawConn speaks DERP by hand, for the inputs a well-behaved client never
// sends. It uses derpd's wire package only to build frames; what the
// server sends back is checked against the spec's byte layouts.
type RawConn struct {
	tb     testing.TB
	Conn   net.Conn
	br     *bufio.Reader
	Priv   wire.NodePrivate
	Pub    wire.NodePublic
	Server wire.NodePublic // from the ServerKey frame
}

// DialRaw connects and performs the HTTP upgrade. With fastStart the
// request carries Derp-Fast-Start: 1 and no HTTP response is read.
func DialRaw(tb testing.TB, srv *Server, fastStart bool) *RawConn {
	tb.Helper()
	return DialRawHeaders(tb, srv, fastStart)
}

// DialRawHeaders is DialRaw with extra request header lines, each
// "Name: value" (as Ideal-Node, which Tailscale clients send when the
// server is not the first node of its region).
func DialRawHeaders(tb testing.TB, srv *Server, fastStart bool, headers ...string) *RawConn {
	tb.Helper()
	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	priv := wire.GenerateNodePrivate()
	rc := &RawConn{tb: tb, Conn: c, br: bufio.NewReader(c), Priv: priv, Pub: priv.Public()}
	req := "GET /derp HTTP/1.1\r\nHost: " + srv.Addr() + "\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
	for _, h := range headers {
		req += h + "\r\n"
	}
	if fastStart {
		req += "Derp-Fast-Start: 1\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		tb.Fatal(err)
	}
	if !fastStart {
		c.SetReadDeadline(time.Now().Add(Wait))
		res, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			tb.Fatalf("reading upgrade response: %v", err)
		}
		if res.StatusCode != http.StatusSwitchingProtocols {
			tb.Fatalf("upgrade answered %s", res.Status)
		}
	}
	return rc
}

// ReadServerKey reads the ServerKey frame.
func (rc *RawConn) ReadServerKey() {
	rc.tb.Helper()
	typ, body := rc.ReadFrame()
	if typ != wire.FrameServerKey {
		rc.tb.Fatalf("first frame %v, want ServerKey", typ)
	}
	k, err := wire.ParseServerKey(body)
	if err != nil {
		rc.tb.Fatal(err)
	}
	rc.Server = k
}

// ClientInfoFrame builds a whole ClientInfo frame with the given JSON.
func (rc *RawConn) ClientInfoFrame(js string) []byte {
	body := wire.Seal(append([]byte(nil), rc.Pub[:]...), []byte(js), rc.Priv, rc.Server)
	return append(wire.AppendHeader(nil, wire.FrameClientInfo, uint32(len(body))), body...)
}

// Handshake reads ServerKey, sends ClientInfo and requires ServerInfo.
func (rc *RawConn) Handshake(js string) {
	rc.tb.Helper()
	rc.ReadServerKey()
	rc.Write(rc.ClientInfoFrame(js))
	typ, body := rc.ReadFrame()
	if typ != wire.FrameServerInfo {
		rc.tb.Fatalf("after ClientInfo got %v, want ServerInfo", typ)
	}
	if _, err := wire.ParseServerInfo(body, rc.Server, rc.Priv); err != nil {
		rc.tb.Fatalf("ServerInfo: %v", err)
	}
}

// Write sends raw bytes.
func (rc *RawConn) Write(b []byte) {
	rc.tb.Helper()
	rc.Conn.SetWriteDeadline(time.Now().Add(Wait))
	if _, err := rc.Conn.Write(b); err != nil {
		rc.tb.Fatalf("write: %v", err)
	}
}

// Frame sends one frame.
func (rc *RawConn) Frame(t wire.FrameType, body []byte) {
	rc.tb.Helper()
	rc.Write(append(wire.AppendHeader(nil, t, uint32(len(body))), body...))
}

// Sync proves that nothing is queued for this connection: it pings and
// requires the pong to be the next frame.
func (rc *RawConn) Sync() {
	rc.tb.Helper()
	rc.Frame(wire.FramePing, []byte("raw-sync"))
	if typ, body := rc.ReadFrame(); typ != wire.FramePong || string(body) != "raw-sync" {
		rc.tb.Fatalf("got %v %x before the pong", typ, body)
	}
}

// ReadFrame reads one frame, failing the test on error.
func (rc *RawConn) ReadFrame() (wire.FrameType, []byte) {
	rc.tb.Helper()
	typ, body, err := rc.TryReadFrame()
	if err != nil {
		rc.tb.Fatalf("read frame: %v", err)
	}
	return typ, body
}

// TryReadFrame reads one frame.
func (rc *RawConn) TryReadFrame() (wire.FrameType, []byte, error) {
	rc.Conn.SetReadDeadline(time.Now().Add(Wait))
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(rc.br, hdr[:]); err != nil {
		return 0, nil, err
	}
	typ, n := wire.ParseHeader(hdr[:])
	if n > 1<<20 {
		return typ, nil, fmt.Errorf("frame claims %d bytes", n)
	}
	body := make([]byte, n)
	_, err := io.ReadFull(rc.br, body)
	return typ, body, err
}

// ExpectClosed reads until the server closes the connection; a frame of
// one of the unwanted types before that fails the test.
func (rc *RawConn) ExpectClosed(unwanted ...wire.FrameType) {
	rc.tb.Helper()
	for {
		typ, _, err := rc.TryReadFrame()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				rc.tb.Fatal("server did not close the connection")
			}
			return
		}
		for _, u := range unwanted {
			if typ == u {
				rc.tb.Fatalf("got %v before the connection closed", typ)
			}
		}
	}
}

// ReadHTTP reads an HTTP response from the raw connection.
func (rc *RawConn) ReadHTTP() (*http.Response, string) {
	rc.tb.Helper()
	rc.Conn.SetReadDeadline(time.Now().Add(Wait))
	res, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		rc.tb.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// RawUpgradeResponse sends req verbatim and returns the raw bytes of the
// response head, for byte-exact checks.
func RawUpgradeResponse(tb testing.TB, srv *Server, req string) (head string, rest *bufio.Reader, conn net.Conn) {
	tb.Helper()
	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	io.WriteString(c, req)
	c.SetReadDeadline(time.Now().Add(Wait))
	br := bufio.NewReader(c)
	var b bytes.Buffer
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			tb.Fatalf("reading response head: %v (so far %q)", err, b.String())
		}
		b.WriteString(line)
		if line == "\r\n" {
			return b.String(), br, c
		}
		if !strings.HasSuffix(line, "\r\n") {
			tb.Fatalf("line without CRLF: %q", line)
		}
	}
}
