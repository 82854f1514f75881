package interop

import (
	"os"
	"testing"

	"github.com/derpd/derpd/interop/harness"
	"github.com/derpd/derpd/wire"
	"go4.org/mem"
	"tailscale.com/types/key"
)

// TestMain removes the server binaries the suite built.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.RemoveBinaries()
	os.Exit(code)
}

func start(t *testing.T, opts harness.Options) *harness.Server {
	t.Helper()
	return harness.Start(t, opts)
}

func connect(t *testing.T, srv *harness.Server, opts ...harness.ClientOption) *harness.Client {
	t.Helper()
	return harness.Connect(t, srv, key.NodePrivate{}, opts...)
}

func toWire(k key.NodePublic) wire.NodePublic { return wire.NodePublic(k.Raw32()) }

func fromWire(k wire.NodePublic) key.NodePublic { return key.NodePublicFromRaw32(mem.B(k[:])) }

// disco returns a payload shaped like a Tailscale disco message.
func disco(tag byte) []byte {
	b := make([]byte, 100)
	copy(b, "TS\xf0\x9f\x92\xac")
	b[99] = tag
	return b
}

// serverKey reads a running server's public key.
func serverKey(t *testing.T, srv *harness.Server) key.NodePublic {
	t.Helper()
	k, err := srv.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
