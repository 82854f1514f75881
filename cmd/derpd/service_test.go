package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// unitDirectives reads derpd.service into key → values.
func unitDirectives(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open("derpd.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("malformed unit line %q", line)
		}
		out[k] = append(out[k], v)
	}
	return out
}

func TestSystemdUnitIsHardened(t *testing.T) {
	d := unitDirectives(t)
	want := map[string]string{
		"DynamicUser":           "yes",
		"StateDirectory":        "derpd",
		"AmbientCapabilities":   "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
		"NoNewPrivileges":       "yes",
		"Restart":               "on-failure",
		"ProtectSystem":         "strict",
	}
	for k, v := range want {
		if got := d[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s=%v, want %s", k, got, v)
		}
	}
	exec := strings.Join(d["ExecStart"], " ")
	for _, flag := range []string{"-c %S/derpd/", "-certdir %S/derpd/", "-log-format json"} {
		if !strings.Contains(exec, flag) {
			t.Errorf("ExecStart %q lacks %q", exec, flag)
		}
	}
	// Every flag in ExecStart must be one derpd accepts.
	fs := newFlagSet(&options{})
	for _, word := range strings.Fields(exec) {
		if name, ok := strings.CutPrefix(word, "-"); ok && fs.Lookup(name) == nil {
			t.Errorf("ExecStart uses unknown flag -%s", name)
		}
	}
}

// TestSystemdUnitVerifies runs systemd-analyze verify where the machine
// has it (the binary path in the unit is substituted with a real file).
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed on this machine; the unit's directives are checked by TestSystemdUnitIsHardened")
	}
	b, _ := os.ReadFile("derpd.service")
	dir := t.TempDir()
	self, _ := os.Executable()
	unit := strings.ReplaceAll(string(b), "/usr/local/bin/derpd", self)
	path := filepath.Join(dir, "derpd.service")
	os.WriteFile(path, []byte(unit), 0o644)
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
