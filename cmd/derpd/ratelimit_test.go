package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/derpd/derpd/actors"
)

func TestLoadRateConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "rate.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		body string
		want *actors.RecvRate
	}{
		{`{"PerClientRateLimitBytesPerSec": 125000, "PerClientRateBurstBytes": 1000000}`, &actors.RecvRate{BytesPerSec: 125000, Burst: 1000000}},
		{`{"PerClientRateLimitBytesPerSec": 125000}`, &actors.RecvRate{BytesPerSec: 125000, Burst: 65568}},
		{`{"PerClientRateBurstBytes": 1000000}`, nil},
		{`{}`, nil},
		{`{"PerClientRateLimitBytesPerSec": 1, "SomethingNewer": true}`, &actors.RecvRate{BytesPerSec: 1, Burst: 65568}},
	} {
		got, err := loadRateConfig(write(c.body))
		if err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		if (got == nil) != (c.want == nil) || (got != nil && *got != *c.want) {
			t.Fatalf("%s: %+v, want %+v", c.body, got, c.want)
		}
	}
	for _, bad := range []string{`{"PerClientRateLimitBytesPerSec": -1}`, `not json`} {
		if _, err := loadRateConfig(write(bad)); err == nil {
			t.Fatalf("%s: accepted", bad)
		}
	}
	if _, err := loadRateConfig(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("a missing file accepted")
	}
}
