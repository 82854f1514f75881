package main

// The debug pages' framework.
//
// Every page under /debug/ has two views of one value: HTML for a person
// and JSON (?format=json) for a tool, so that what a script reads is what
// an operator sees. A page is one registration, made from an init
// function in the file that computes the page's value:
//
//	func init() {
//		registerDebugPage(debugPage{
//			Path:        "/debug/flows",
//			Title:       "Flows",
//			Description: "the busiest source and destination pairs right now",
//			Data: func(s *server, r *http.Request) (any, error) {
//				return s.flowsView(r.Context())
//			},
//			Body: `<table><tr><th>from</th><th>to</th><th class="n">packets/s</th></tr>
//	{{range .Flows}}<tr><td>{{peerLink .Src}}</td><td>{{peerLink .Dst}}</td><td class="n">{{.Rate}}</td></tr>{{end}}
//	</table>`,
//		})
//	}
//
// Data runs once per request. Its value is written with encoding/json for
// ?format=json (give it json tags) and is dot of Body, an html/template
// fragment that the framework puts inside the common layout: the title as
// <h1>, links back to the index and to the JSON view, and the one style
// sheet (debugStyle), which the Content-Security-Policy admits by its hash,
// so a page can carry no style or script of its own. To answer with a
// status other than 500 (a bad query parameter, an unknown key), return
// debugError(status, ...) from Data. The page is listed on the /debug/
// index with its Description and is served only to clients allowed into
// /debug (see debugAdmit): registering it is all there is to do.
//
// Functions available in Body, besides html/template's own:
//
//	peerLink KEY   a link to /debug/peer?key=KEY showing KEY (a
//	               wire.NodePublic, or its "nodekey:…" string); nothing
//	               for a zero or empty key
//	peerURL KEY    the address alone, for links of your own
//	debugURL PATH  PATH, keeping ?debugkey= for a visitor who came in with it
//	ago TIME       "3m12s ago", nothing for the zero time
//	dur DURATION   a duration rounded for reading
//	bytes N        N bytes in KiB, MiB, … (any integer type)
//
// and the style sheet's classes: n (numbers, right-aligned), up and down
// (green and red), muted, and error.
//
// Endpoints that are not pages (a stream, a profile, the Prometheus
// exposition) register with registerDebugEndpoint, for a line on the
// index and a route.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/derpd/derpd/wire"
)

// debugPage is one page under /debug/: see the top of this file.
type debugPage struct {
	Path        string // served exactly: "/debug/flows" (the index is "/debug/")
	Title       string // the <h1>, and the link text on the index
	Description string // one line on the index
	Data        func(s *server, r *http.Request) (any, error)
	Body        string // html/template executed with Data's value as dot

	tmpl *template.Template
}

// debugEndpoint is a route under /debug/ that is not a page: it writes
// its own response.
type debugEndpoint struct {
	Path        string // a ServeMux pattern: "/debug/varz", "/debug/pprof/"
	Description string // one line on the index; empty keeps it off the index
	Handler     func(s *server, w http.ResponseWriter, r *http.Request)
}

// The registrations, made by init functions before main runs and read-only
// after, so they need no lock.
var (
	debugPages     = map[string]*debugPage{}
	debugEndpoints = map[string]*debugEndpoint{}
)

// registerDebugPage adds a page. Mistakes (a path outside /debug/, one
// taken twice, a template that does not parse) panic: they are found by
// the first test that runs, not by an operator.
func registerDebugPage(p debugPage) {
	checkDebugPath(p.Path)
	if p.Title == "" || p.Description == "" || p.Data == nil {
		panic("debug page " + p.Path + ": Title, Description and Data are required")
	}
	layout := template.Must(template.New("layout").Funcs(debugFuncs(nil)).Parse(debugLayout))
	p.tmpl = template.Must(layout.New("body").Parse(p.Body)).Lookup("layout")
	debugPages[p.Path] = &p
}

// registerDebugEndpoint adds a route that writes its own response.
func registerDebugEndpoint(e debugEndpoint) {
	checkDebugPath(e.Path)
	if e.Handler == nil {
		panic("debug endpoint " + e.Path + ": no handler")
	}
	debugEndpoints[e.Path] = &e
}

func checkDebugPath(path string) {
	if !strings.HasPrefix(path, "/debug/") {
		panic("debug route " + path + " is outside /debug/")
	}
	if debugPages[path] != nil || debugEndpoints[path] != nil {
		panic("debug route " + path + " registered twice")
	}
}

// debugError makes Data's error answer with status instead of 500.
func debugError(status int, format string, args ...any) error {
	return &debugStatusError{status: status, msg: fmt.Sprintf(format, args...)}
}

type debugStatusError struct {
	status int
	msg    string
}

func (e *debugStatusError) Error() string { return e.msg }

// debugStyle is the debug pages' one style sheet, inline and admitted by
// its hash (debugCSP), so no page can load anything else.
const debugStyle = "body{font-family:sans-serif;margin:1em 2em}" +
	"nav{margin-bottom:1em}nav a{margin-right:1em}" +
	"table{border-collapse:collapse;margin-bottom:1em}" +
	"td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}" +
	"th{background:#f4f4f4}.n{text-align:right;font-variant-numeric:tabular-nums}" +
	".down,.error{color:#b00}.up{color:#070}small,.muted{color:#555}" +
	"a.key{font-family:monospace;font-size:90%}"

// debugCSP is the pages' Content-Security-Policy: the browser headers'
// policy, which loads nothing, plus the one style sheet by its hash.
var debugCSP = func() string {
	sum := sha256.Sum256([]byte(debugStyle))
	return contentSecurityPolicy + "; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}()

const debugLayout = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}} · derpd</title>
<style>{{style}}</style>
</head><body>
<nav><a href="{{debugURL "/debug/"}}">debug index</a><a href="{{.JSONURL}}">JSON</a><span class="muted">{{.Host}} · {{.Now.Format "2006-01-02 15:04:05 MST"}}</span></nav>
<h1>{{.Title}}</h1>
{{if .Error}}<p class="error">{{.Error}}</p>{{else}}{{template "body" .Data}}{{end}}
</body></html>
`

// debugLayoutData is dot of the layout.
type debugLayoutData struct {
	Title   string
	JSONURL string
	Host    string
	Now     time.Time
	Error   string
	Data    any
}

// debugFuncs are the functions pages may use. r is the request being
// answered (nil while parsing): links keep its debug key if it came in
// with one, so a visitor admitted by key can follow them.
func debugFuncs(r *http.Request) template.FuncMap {
	keep := ""
	if r != nil && debugAdmissionOf(r) == debugByKey {
		keep = r.URL.Query().Get("debugkey")
	}
	withKey := func(path string, q url.Values) string {
		if p, query, ok := strings.Cut(path, "?"); ok {
			path = p
			if q == nil {
				q, _ = url.ParseQuery(query)
			}
		}
		if keep != "" {
			if q == nil {
				q = url.Values{}
			}
			q.Set("debugkey", keep)
		}
		if len(q) == 0 {
			return path
		}
		return path + "?" + q.Encode()
	}
	peerURL := func(k any) string {
		ks := keyText(k)
		if ks == "" {
			return ""
		}
		return withKey("/debug/peer", url.Values{"key": {ks}})
	}
	return template.FuncMap{
		"style":    func() template.CSS { return template.CSS(debugStyle) },
		"debugURL": func(path string) string { return withKey(path, nil) },
		"peerURL":  peerURL,
		"peerLink": func(k any) template.HTML {
			ks := keyText(k)
			if ks == "" {
				return ""
			}
			// Tables show the start of the key, as logs do, and the whole
			// key on hover and in the link.
			shown := ks
			if hex, ok := strings.CutPrefix(ks, "nodekey:"); ok && len(hex) > 12 {
				shown = "nodekey:" + hex[:12] + "…"
			}
			return template.HTML(`<a class="key" title="` + template.HTMLEscapeString(ks) + `" href="` +
				template.HTMLEscapeString(peerURL(k)) + `">` + template.HTMLEscapeString(shown) + `</a>`)
		},
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return roundForReading(time.Since(t)).String() + " ago"
		},
		"dur":   func(d time.Duration) string { return roundForReading(d).String() },
		"bytes": humanBytes,
	}
}

// keyText is a key as the pages show it, "" for none.
func keyText(k any) string {
	switch k := k.(type) {
	case nil:
		return ""
	case wire.NodePublic:
		if k.IsZero() {
			return ""
		}
		return k.String()
	case *wire.NodePublic:
		if k == nil || k.IsZero() {
			return ""
		}
		return k.String()
	case string:
		return k
	case fmt.Stringer:
		return k.String()
	}
	return fmt.Sprint(k)
}

// roundForReading keeps about three significant digits: "1.23s", "4m5s",
// "850µs".
func roundForReading(d time.Duration) time.Duration {
	for _, unit := range []time.Duration{time.Hour, time.Minute, time.Second, time.Millisecond, time.Microsecond} {
		if d >= unit || d <= -unit {
			switch unit {
			case time.Hour, time.Minute:
				return d.Round(time.Second)
			default:
				return d.Round(unit / 100)
			}
		}
	}
	return d
}

func humanBytes(n any) string {
	var f float64
	switch v := reflect.ValueOf(n); {
	case v.CanInt():
		f = float64(v.Int())
	case v.CanUint():
		f = float64(v.Uint())
	case v.CanFloat():
		f = v.Float()
	default:
		return fmt.Sprint(n)
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for ; (f >= 1024 || f <= -1024) && i < len(units)-1; i++ {
		f /= 1024
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", f)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// wantsJSON reports whether r asked for the JSON view.
func wantsJSON(r *http.Request) bool { return r.URL.Query().Get("format") == "json" }

// jsonURL is r's own address with format=json, every other parameter kept.
func jsonURL(r *http.Request) string {
	q := r.URL.Query()
	q.Set("format", "json")
	return r.URL.Path + "?" + q.Encode()
}

// servePage answers one request for p.
func (s *server) servePage(p *debugPage, w http.ResponseWriter, r *http.Request) {
	v, err := p.Data(s, r)
	status := http.StatusOK
	if err != nil {
		status = http.StatusInternalServerError
		var se *debugStatusError
		if errors.As(err, &se) {
			status = se.status
		}
	}
	if wantsJSON(r) {
		setBrowserHeaders(w.Header())
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if err != nil {
			v = map[string]string{"error": err.Error()}
		}
		b, jerr := json.MarshalIndent(v, "", "  ")
		if jerr != nil {
			http.Error(w, "encoding "+p.Path+": "+jerr.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(status)
		w.Write(append(b, '\n'))
		return
	}
	host, _ := os.Hostname()
	d := debugLayoutData{Title: p.Title, JSONURL: jsonURL(r), Host: host, Now: time.Now(), Data: v}
	if err != nil {
		d.Error = err.Error()
	}
	// Rendered whole before anything is sent, so a template that fails
	// half-way answers 500, not half a page.
	t := template.Must(p.tmpl.Clone()).Funcs(debugFuncs(r))
	var buf bytes.Buffer
	if terr := t.Execute(&buf, d); terr != nil {
		http.Error(w, "rendering "+p.Path+": "+terr.Error(), http.StatusInternalServerError)
		return
	}
	setBrowserHeaders(w.Header())
	w.Header().Set("Content-Security-Policy", debugCSP)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// debugIndexEntry is one line of the index.
type debugIndexEntry struct {
	Path        string `json:"path"`
	Title       string `json:"title,omitempty"`
	Description string `json:"description"`
	JSON        string `json:"json,omitempty"` // the page's JSON view
}

// debugIndex is /debug/: what this server is, and every page and
// endpoint there is.
type debugIndex struct {
	Uptime      string            `json:"uptime"`
	UptimeS     int64             `json:"uptime_s"`
	Version     string            `json:"version"`
	Machine     string            `json:"machine"`
	TLSHostname string            `json:"tls_hostname"`
	MeshKey     bool              `json:"mesh_key"`
	ServerKey   string            `json:"server_key"`
	DebugAddr   string            `json:"debug_addr,omitempty"`
	DebugAllow  []string          `json:"debug_allow,omitempty"`
	Pages       []debugIndexEntry `json:"pages"`
	Endpoints   []debugIndexEntry `json:"endpoints"`
}

func (s *server) debugIndexView() *debugIndex {
	host, _ := os.Hostname()
	up := time.Since(s.started)
	v := &debugIndex{
		Uptime: up.Round(time.Second).String(), UptimeS: int64(up.Seconds()),
		Version: version(), Machine: host, TLSHostname: s.opts.hostname,
		DebugAddr: s.opts.debugAddr,
		Pages:     []debugIndexEntry{}, Endpoints: []debugIndexEntry{},
	}
	if s.clientCfg != nil {
		v.MeshKey = !s.clientCfg.MeshKey.IsZero()
		v.ServerKey = s.clientCfg.PublicKey.String()
	}
	for _, p := range s.debugAllow {
		v.DebugAllow = append(v.DebugAllow, p.String())
	}
	for _, p := range debugPages {
		if p.Path != "/debug/" {
			v.Pages = append(v.Pages, debugIndexEntry{Path: p.Path, Title: p.Title, Description: p.Description, JSON: p.Path + "?format=json"})
		}
	}
	for _, e := range debugEndpoints {
		if e.Description != "" {
			v.Endpoints = append(v.Endpoints, debugIndexEntry{Path: e.Path, Description: e.Description})
		}
	}
	sort.Slice(v.Pages, func(i, j int) bool { return v.Pages[i].Path < v.Pages[j].Path })
	sort.Slice(v.Endpoints, func(i, j int) bool { return v.Endpoints[i].Path < v.Endpoints[j].Path })
	return v
}

func init() {
	registerDebugPage(debugPage{
		Path:        "/debug/",
		Title:       "derpd debug",
		Description: "this index",
		Data:        func(s *server, r *http.Request) (any, error) { return s.debugIndexView(), nil },
		Body: `<table>
<tr><th>Uptime</th><td>{{.Uptime}}</td></tr>
<tr><th>Version</th><td>{{.Version}}</td></tr>
<tr><th>Machine</th><td>{{.Machine}}</td></tr>
<tr><th>TLS hostname</th><td>{{.TLSHostname}}</td></tr>
<tr><th>Mesh key</th><td>{{.MeshKey}}</td></tr>
<tr><th>Server key</th><td><small>{{.ServerKey}}</small></td></tr>
{{with .DebugAddr}}<tr><th>Debug listener</th><td>{{.}}</td></tr>{{end}}
{{with .DebugAllow}}<tr><th>-debug-allow</th><td>{{range .}}{{.}} {{end}}</td></tr>{{end}}
</table>
<h2>Pages</h2>
<table><tr><th>page</th><th>what it shows</th><th></th></tr>
{{range .Pages}}<tr><td><a href="{{debugURL .Path}}">{{.Title}}</a><br><small>{{.Path}}</small></td><td>{{.Description}}</td><td><a href="{{debugURL .JSON}}">JSON</a></td></tr>
{{end}}</table>
<h2>For tools</h2>
<table><tr><th>endpoint</th><th>what it gives</th></tr>
{{range .Endpoints}}<tr><td><a href="{{debugURL .Path}}">{{.Path}}</a></td><td>{{.Description}}</td></tr>
{{end}}</table>
`,
	})
}
