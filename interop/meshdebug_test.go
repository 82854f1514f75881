package interop

import (
	"strings"
	"testing"

	"github.com/derpd/derpd/interop/harness"
)

func meshDebug(t *testing.T, srv *harness.Server) *harness.MeshView {
	t.Helper()
	v, err := harness.GetMeshView(srv.HTTPClient(), srv.BaseURL())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// linkTo returns srv's link whose name starts with host, or a zero
// view (empty Peer) if it has none.
func linkTo(t *testing.T, srv *harness.Server, host string) harness.MeshLink {
	t.Helper()
	for _, l := range meshDebug(t, srv).Links {
		if strings.HasPrefix(l.Peer, host) {
			return l
		}
	}
	return harness.MeshLink{}
}
