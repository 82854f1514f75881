package interop

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
)

// chromium renders a page the way an operator's browser would and returns
// the document as it ended up, and what the browser logged (a refused
// style or script shows up there).
func chromium(t *testing.T, url string, flags ...string) (dom, log string) {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("pages shown to people are tested in a real browser: install Debian's chromium (.ci/run does): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu",
		// The region's CA is the test's own; the page is what is tested.
		"--ignore-certificate-errors", "--enable-logging=stderr", "--v=0",
		"--user-data-dir="+t.TempDir())
	cmd.Args = append(append(cmd.Args, flags...), "--dump-dom", url)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// /debug/mesh in a browser: the page renders the live links (state, the
// peer's key, the peer's own link to us), and the browser applies its
// style sheet: the page's Content-Security-Policy admits it by hash.
func TestMeshDebugPageInABrowser(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("/debug/mesh is derpd's")
	}
	r := newRegion(t, harness.Derpd, harness.Derpd).startAll()
	n1, n2 := r.Nodes[0], r.Nodes[1]
	waitLinks(t, n1.Server, map[string]string{r.MeshWith()[:strings.Index(r.MeshWith(), ",")]: "self", strings.Split(r.MeshWith(), ",")[1]: "up"})
	// By name, as an operator would browse to it: the server refuses TLS
	// for any other name.
	_, port, _ := net.SplitHostPort(n1.Addr())
	dom, log := chromium(t, "https://"+n1.Name+":"+port+"/debug/mesh", "--host-resolver-rules=MAP "+n1.Name+" 127.0.0.1")
	peerKey := serverKey(t, n2.Server).String()
	for _, want := range []string{"<h1>Mesh</h1>", n2.Name, `class="up">up</td>`, `class="down">self</td>`, peerKey, "Peers' links to us"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q:\n%s", want, dom)
		}
	}
	if strings.Count(dom, peerKey) < 2 {
		t.Errorf("node 2's key should show on its link and on its link to us:\n%s", dom)
	}
	if strings.Contains(log, "Content Security Policy") || strings.Contains(log, "Refused to") {
		t.Errorf("the browser refused part of the page:\n%s", log)
	}
}
