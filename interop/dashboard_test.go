package interop

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/derpd/derpd/interop/harness"
)

// dashboard is what the tests read of docs/grafana/derpd.json.
type dashboard struct {
	UID           string           `json:"uid"`
	Title         string           `json:"title"`
	SchemaVersion int              `json:"schemaVersion"`
	Panels        []dashboardPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"` // a string, or {"query": …}
		} `json:"list"`
	} `json:"templating"`
}

type dashboardPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *struct{ UID string }    `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"` // a collapsed row's
}

// dashboardQuery is one PromQL expression and the panel it draws.
type dashboardQuery struct{ Panel, Expr string }

func dashboardPath() string {
	return filepath.Join(harness.ModuleDir(), "..", "docs", "grafana", "derpd.json")
}

// loadDashboard reads the dashboard strictly: a field the model above
// does not know is fine, JSON that does not parse is not.
func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath())
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s is not well-formed: %v", dashboardPath(), err)
	}
	return &d
}

func (d *dashboard) allPanels() []dashboardPanel {
	var out []dashboardPanel
	var walk func([]dashboardPanel)
	walk = func(ps []dashboardPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

func (d *dashboard) queries() []dashboardQuery {
	var out []dashboardQuery
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			out = append(out, dashboardQuery{p.Title, tg.Expr})
		}
	}
	return out
}

// variableQueries are the template variables' PromQL (label_values and
// the like), which name metrics too.
func (d *dashboard) variableQueries() []string {
	var out []string
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		switch q := v.Query.(type) {
		case string:
			out = append(out, q)
		case map[string]any:
			if s, ok := q["query"].(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promLabelList = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent     = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	labelValues   = regexp.MustCompile(`label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)`)
)

// promKeywords are PromQL's words that are not metric names.
var promKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true,
}

// metricNames returns the metric names a PromQL expression reads: what
// is left of it without strings, label matchers, ranges, label lists,
// functions (an identifier before a parenthesis), keywords and numbers.
func metricNames(expr string) []string {
	if m := labelValues.FindStringSubmatch(expr); m != nil {
		return []string{m[1]}
	}
	e := promStrings.ReplaceAllString(expr, " ")
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	e = promLabelList.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(e, -1) {
		word := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || promKeywords[strings.ToLower(word)] {
			continue
		}
		if loc[0] > 0 && (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9' || e[loc[0]-1] == '.') {
			continue // the exponent or unit of a number: 1e3, 5m
		}
		out = append(out, word)
	}
	return out
}

func TestMetricNamesOfAQuery(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (instance, reason) (rate(derp_packets_dropped{instance=~"$instance",reason!="x"}[$__rate_interval]))`: "derp_packets_dropped",
		`histogram_quantile(0.99, sum by (le) (rate(derp_buffered_write_frames_bucket[5m])))`:                         "derp_buffered_write_frames_bucket",
		`sum(derpd_mesh_link_state{state="up"}) or vector(0)`:                                                         "derpd_mesh_link_state",
		`derp_bytes_sent / on(instance) group_left derp_current_connections > 1e3`:                                    "derp_bytes_sent derp_current_connections",
		`label_values(derp_current_connections, instance)`:                                                            "derp_current_connections",
	} {
		if got := strings.Join(metricNames(expr), " "); got != want {
			t.Errorf("metricNames(%s) = %q, want %q", expr, got, want)
		}
	}
}

// The Grafana dashboard in docs/ is well-formed, every panel is placed
// and has a query, and every metric its queries read is one a busy derpd
// node exports (the queries themselves run against a real Prometheus in
// TestPrometheusScrapesDebugListener).
func TestGrafanaDashboardUsesExportedMetrics(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		t.Errorf("dashboard lacks uid, title or schemaVersion: %q %q %d", d.UID, d.Title, d.SchemaVersion)
	}
	ids := map[int]bool{}
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %d %q: no title or a bad place %+v", p.ID, p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the dashboard's data source variable", p.Title)
		}
	}
	used := map[string][]string{}
	for _, q := range d.queries() {
		names := metricNames(q.Expr)
		if len(names) == 0 {
			t.Errorf("panel %q: no metric in %s", q.Panel, q.Expr)
		}
		for _, n := range names {
			used[n] = append(used[n], q.Panel)
		}
	}
	for _, q := range d.variableQueries() {
		for _, n := range metricNames(q) {
			used[n] = append(used[n], "variable")
		}
	}

	b := startBusyRegion(t, 2)
	exported := map[string]bool{}
	for series := range mustParse(t, b.varz(t)) {
		name, _, _ := strings.Cut(series, "{")
		exported[name] = true
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !exported[n] {
			t.Errorf("the dashboard reads %s (panels %q), which derpd does not export", n, used[n])
		}
	}
	t.Logf("%d queries read %d metrics", len(d.queries()), len(names))
}

func mustParse(t *testing.T, body string) map[string]float64 {
	t.Helper()
	m, err := harness.ParseMetrics(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
