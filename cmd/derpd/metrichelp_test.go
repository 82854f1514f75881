package main

import (
	"bufio"
	"strings"
	"testing"
)

func TestWithHelp(t *testing.T) {
	in := "# TYPE derp_accepts counter\nderp_accepts 3\n" +
		"# HELP derp_watchers its own words\n# TYPE derp_watchers gauge\nderp_watchers 0\n" +
		"# TYPE no_such_family gauge\nno_such_family 1\n"
	var out strings.Builder
	if err := withHelp(&out, strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	want := "# HELP derp_accepts " + metricHelp["derp_accepts"] + "\n# TYPE derp_accepts counter\nderp_accepts 3\n" +
		"# HELP derp_watchers its own words\n# TYPE derp_watchers gauge\nderp_watchers 0\n" +
		"# TYPE no_such_family gauge\nno_such_family 1\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	if got := escapeHelp("a\\b\nc"); got != `a\\b\nc` {
		t.Errorf("escapeHelp = %q", got)
	}
}

// Every family a running server writes has a HELP line (promtool, in
// the interop suite, checks the rest of the exposition, with a mesh up).
func TestEveryMetricFamilyHasHelp(t *testing.T) {
	p := startInProcess(t)
	_, body := getBody(t, p.debugBase+"/debug/varz")
	helped := map[string]bool{}
	families := 0
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[0] == "#" && f[1] == "HELP":
			helped[f[2]] = true
		case len(f) >= 3 && f[0] == "#" && f[1] == "TYPE":
			families++
			if !helped[f[2]] {
				t.Errorf("%s has no HELP line: add one to metricHelp", f[2])
			}
		}
	}
	if families < 50 {
		t.Errorf("only %d metric families written:\n%s", families, body)
	}
}
