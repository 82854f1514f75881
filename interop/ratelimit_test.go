package interop

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/derpd/derpd/interop/harness"
)

// §3.8: with -rate-config, a client sending faster than its limit is read
// from more slowly; its packets are delayed, never dropped, and the waits
// are counted. Mesh peers are exempt. SIGHUP reloads the file. The same
// against upstream derper.
func TestRateConfigWaitsNeverDrops(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "rate.json")
	write := func(s string) {
		if err := os.WriteFile(conf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"PerClientRateLimitBytesPerSec": 400000, "PerClientRateBurstBytes": 1000}`)
	meshKey := harness.MeshKeyHex()
	srv := start(t, harness.Options{MeshKey: meshKey, Args: []string{"-rate-config", conf}})
	srv.WaitMetric(t, "derp_rate_limit_per_client_bytes_per_second", 400000)
	if got := srv.Metric(t, "derp_rate_limit_per_client_burst_bytes"); got != 65568 {
		t.Fatalf("burst %v, want 1000 raised to 65568", got)
	}

	a, b := connect(t, srv), connect(t, srv)
	// 30 packets of 16 KiB: about 0.5 MB, so a second and more at 400 kB/s
	// once the 64 KiB bucket is spent.
	send := func(from *harness.Client) {
		t.Helper()
		for i := range 30 {
			p := bytes.Repeat([]byte{byte(i)}, 16<<10)
			binary.BigEndian.PutUint32(p, uint32(i))
			if err := from.Send(b.Pub, p); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 30 {
			got := b.RecvPacket(t)
			if got.Source != from.Pub || binary.BigEndian.Uint32(got.Data) != uint32(i) {
				t.Fatalf("packet %d: %d from %v", i, binary.BigEndian.Uint32(got.Data), got.Source)
			}
		}
	}
	send(a)
	waited := srv.Metric(t, "derp_rate_limit_per_client_waited")
	if waited == 0 {
		t.Fatal("a client sending 0.5 MB at a 400 kB/s limit never waited")
	}

	// A mesh peer sends the same without waiting.
	m := connect(t, srv, harness.WithMeshKey(meshKey))
	send(m)
	if got := srv.Metric(t, "derp_rate_limit_per_client_waited"); got != waited {
		t.Fatalf("waits went from %v to %v for a mesh peer's packets, which are exempt", waited, got)
	}

	// SIGHUP: the new file is read and applies to the connections there.
	write(`{"PerClientRateLimitBytesPerSec": 0}`)
	if err := srv.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	srv.WaitMetric(t, "derp_rate_limit_per_client_bytes_per_second", 0)
	send(a)
	if got := srv.Metric(t, "derp_rate_limit_per_client_waited"); got != waited {
		t.Fatalf("waits went from %v to %v with the limit lifted", waited, got)
	}
	dropped := srv.Metric(t, `derp_packets_dropped{reason="queue_tail",kind="other"}`) + srv.Metric(t, `derp_packets_dropped{reason="queue_head",kind="other"}`)
	if dropped != 0 {
		t.Fatalf("%v packets dropped", dropped)
	}
}
