package interop

import (
	"encoding/json"
	"html"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/derpd/derpd/interop/harness"
)

// Every page the /debug/ index lists, rendered in headless chromium on a
// node of a live region with clients: each shows its title and the
// browser refuses nothing (its one style sheet is admitted by the page's
// Content-Security-Policy, and there is nothing else to admit). A page
// added with registerDebugPage is covered without touching this test.
func TestEveryDebugPageInABrowser(t *testing.T) {
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("the page framework is derpd's")
	}
	b := startBusyRegion(t, 2)
	srv := b.node.Server
	res, err := srv.HTTPClient().Get(srv.BaseURL() + "/debug/?format=json")
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Pages []struct{ Path, Title string } `json:"pages"`
	}
	err = json.NewDecoder(res.Body).Decode(&idx)
	res.Body.Close()
	if err != nil || len(idx.Pages) == 0 {
		t.Fatalf("index: %v %+v", err, idx)
	}
	_, port, _ := net.SplitHostPort(srv.Addr())
	base := "https://" + b.node.Name + ":" + port
	resolve := "--host-resolver-rules=MAP " + b.node.Name + " 127.0.0.1"
	pages := append([]struct{ Path, Title string }{{"/debug/", "derpd debug"}}, idx.Pages...)
	for _, p := range pages {
		target := p.Path
		if p.Path == "/debug/peer" {
			// One device's page needs the device.
			target += "?key=" + url.QueryEscape(b.local[0].Pub.String())
		}
		t.Run(strings.Trim(p.Path, "/"), func(t *testing.T) {
			t.Parallel()
			dom, log := chromium(t, base+target, resolve)
			if !strings.Contains(dom, "<h1>"+html.EscapeString(p.Title)+"</h1>") {
				t.Errorf("%s: the rendered page lacks its title %q:\n%s", target, p.Title, dom)
			}
			if strings.Contains(log, "Content Security Policy") || strings.Contains(log, "Refused to") {
				t.Errorf("%s: the browser refused part of the page:\n%s", target, log)
			}
			if strings.Contains(dom, `class="error"`) {
				t.Errorf("%s: the page shows an error:\n%s", target, dom)
			}
		})
	}
}
