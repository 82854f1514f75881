package harness

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// MeshView is what the tests read of derpd's /debug/mesh?format=json.
type MeshView struct {
	Links   []MeshLink `json:"links"`
	Inbound []struct {
		Key         string `json:"key"`
		Addr        string `json:"addr"`
		Watching    bool   `json:"watching"`
		ForwardedIn int64  `json:"forwarded_in"`
	} `json:"inbound"`
	DNS *struct {
		Answer    []string `json:"answer"`
		LastError string   `json:"last_error"`
	} `json:"dns"`
	RemoteKeys int `json:"remote_keys"`
}

// MeshLink is one link of a MeshView.
type MeshLink struct {
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

// GetMeshView fetches base + /debug/mesh?format=json with c.
func GetMeshView(c *http.Client, base string) (*MeshView, error) {
	res, err := c.Get(base + "/debug/mesh?format=json")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return nil, fmt.Errorf("%s/debug/mesh: %s", base, res.Status)
	}
	var v MeshView
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		return nil, fmt.Errorf("%s/debug/mesh: %v", base, err)
	}
	return &v, nil
}
