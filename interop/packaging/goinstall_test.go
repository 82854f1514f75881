package packaging

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

// madeUpVersion is a version the module never had: the binary can know it
// only from the module it was built from.
const madeUpVersion = "v0.42.0"

// TestGoInstallReportsVersion serves the main module, as the working tree
// has it, at madeUpVersion from a file-based GOPROXY, installs
// cmd/derpd@madeUpVersion from it the way the operator's guide says, and
// checks that -version prints that version. Everything else comes from
// this machine's module cache (as a second proxy), then its usual proxy,
// so nothing of the made-up version reaches the real module cache.
func TestGoInstallReportsVersion(t *testing.T) {
	skipUnlessDerpd(t)
	t.Parallel()
	needTool(t, "git", "git")
	const modPath = "github.com/derpd/derpd"
	proxy := t.TempDir()
	serveModule(t, proxy, modPath, madeUpVersion, repoRoot())

	goEnv := func(name string) string { return strings.TrimSpace(run(t, "", nil, "go", "env", name)) }
	upstream := goEnv("GOPROXY")
	cache := filepath.Join(goEnv("GOMODCACHE"), "cache", "download")
	work := t.TempDir()
	bin := filepath.Join(work, "bin")
	env := []string{
		"GOPROXY=file://" + proxy + ",file://" + cache + "," + upstream,
		// No checksum database: the made-up version is in none, and
		// `go install module@version` checks every dependency against
		// it, not against the module's go.sum, which from a module cache
		// of its own (below) means fetching the database's tiles over
		// the network on every run. The dependencies come from this
		// machine's module cache, checked when they were downloaded.
		"GOSUMDB=off", "GOPRIVATE=", "GONOPROXY=",
		"GOBIN=" + bin,
		// A module cache of the test's own, so the made-up version does
		// not outlive it in the machine's; -modcacherw lets t.TempDir
		// remove it. -trimpath keeps the compiled dependencies' cache
		// keys free of that directory, so a second run finds them built.
		"GOMODCACHE=" + filepath.Join(work, "modcache"),
		"GOFLAGS=-modcacherw -trimpath",
		"GOWORK=off", "GOTOOLCHAIN=local",
	}
	run(t, work, env, "go", "install", modPath+"/cmd/derpd@"+madeUpVersion)
	if got := strings.TrimSpace(run(t, "", nil, filepath.Join(bin, "derpd"), "-version")); got != madeUpVersion {
		t.Errorf("derpd installed at %s prints -version %q", madeUpVersion, got)
	}
}

// serveModule lays out, under proxy, what a module proxy serves for
// modPath at version: the list, .info, .mod and .zip (GOPROXY protocol).
// The zip holds the files git would commit from dir (tracked and
// untracked ones, not the ignored), minus nested modules such as interop.
func serveModule(t *testing.T, proxy, modPath, version, dir string) {
	t.Helper()
	esc, err := module.EscapePath(modPath)
	if err != nil {
		t.Fatal(err)
	}
	at := filepath.Join(proxy, filepath.FromSlash(esc), "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(at, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("list", []byte(version+"\n"))
	info, _ := json.Marshal(map[string]any{"Version": version, "Time": time.Now().UTC().Format(time.RFC3339)})
	write(version+".info", info)
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	write(version+".mod", gomod)

	var files []modzip.File
	for _, p := range strings.Split(run(t, dir, nil, "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"), "\x00") {
		if p == "" {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, p)); err != nil {
			continue // deleted in the working tree, not yet in git
		}
		files = append(files, treeFile{dir: dir, path: p})
	}
	f, err := os.Create(filepath.Join(at, version+".zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Create leaves out files in nested modules (interop has its own
	// go.mod), as the go command does.
	if err := modzip.Create(f, module.Version{Path: modPath, Version: version}, files); err != nil {
		t.Fatal(err)
	}
}

// treeFile is a file of the working tree, for modzip.Create.
type treeFile struct{ dir, path string }

func (f treeFile) Path() string                 { return f.path }
func (f treeFile) Lstat() (os.FileInfo, error)  { return os.Lstat(filepath.Join(f.dir, f.path)) }
func (f treeFile) Open() (io.ReadCloser, error) { return os.Open(filepath.Join(f.dir, f.path)) }
