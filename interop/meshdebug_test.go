package interop

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/derpd/derpd/interop/harness"
)

// meshLinkView is one link of /debug/mesh.
type meshLinkView struct {
	Peer         string           `json:"peer"`
	Answered     bool             `json:"answered"`
	State        string           `json:"state"`
	LastError    string           `json:"last_error"`
	PeerKey      string           `json:"peer_key"`
	Keys         int              `json:"keys"`
	Sessions     int              `json:"sessions"`
	ForwardedOut int64            `json:"forwarded_out"`
	ForwardedIn  int64            `json:"forwarded_in"`
	QueueDepth   int              `json:"queue_depth"`
	Dropped      map[string]int64 `json:"dropped"`
	RTTMillis    float64          `json:"rtt_ms"`
}

// meshView is derpd's /debug/mesh?format=json, the parts tests read.
type meshView struct {
	Links   []meshLinkView `json:"links"`
	Inbound []struct {
		Key         string `json:"key"`
		Watching    bool   `json:"watching"`
		ForwardedIn int64  `json:"forwarded_in"`
	} `json:"inbound"`
	DNS *struct {
		Answer    []string `json:"answer"`
		LastError string   `json:"last_error"`
	} `json:"dns"`
	RemoteKeys int `json:"remote_keys"`
}

func meshDebug(t *testing.T, srv *harness.Server) *meshView {
	t.Helper()
	res, err := srv.HTTPClient().Get(srv.BaseURL() + "/debug/mesh?format=json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("/debug/mesh: %s", res.Status)
	}
	var v meshView
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return &v
}

// linkTo returns srv's link whose name starts with host, or a zero
// view (empty Peer) if it has none.
func linkTo(t *testing.T, srv *harness.Server, host string) meshLinkView {
	t.Helper()
	for _, l := range meshDebug(t, srv).Links {
		if strings.HasPrefix(l.Peer, host) {
			return l
		}
	}
	return meshLinkView{}
}
