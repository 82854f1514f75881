// Package fuzztest is what derpd's fuzz targets share: the seed corpus
// files under each package's testdata/fuzz, and an in-memory connection
// (Pipe, Listener) over which a target feeds a server arbitrary bytes and
// half-closes, as a client's TCP stack would. It is used only by tests.
package fuzztest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// WriteEnv names the environment variable that makes CheckSeeds write
// the seed files instead of checking them.
const WriteEnv = "DERPD_WRITE_CORPUS"

// CheckSeeds keeps testdata/fuzz/<target>/seed-<name> equal to the seeds
// a package's generator builds, so the committed corpus is always the one
// its code describes. With DERPD_WRITE_CORPUS=1 it (re)writes them;
// otherwise a missing or different file fails the test. Files that are
// not seeds (crashers go test -fuzz wrote, kept as regression tests) are
// left alone. Each seed is the argument list of one call of the target.
func CheckSeeds(t *testing.T, target string, seeds map[string][]any) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	write := os.Getenv(WriteEnv) == "1"
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	names := make([]string, 0, len(seeds))
	for name := range seeds {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if strings.ContainsAny(name, `/\ `) {
			t.Fatalf("seed name %q: use a plain file name", name)
		}
		path := filepath.Join(dir, "seed-"+name)
		want := Marshal(seeds[name]...)
		if write {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is missing or stale; regenerate with %s=1 go test -run '^TestFuzzSeeds$' .", path, WriteEnv)
		}
	}
}

// Marshal encodes the arguments of one fuzz call in Go's corpus file
// format ("go test fuzz v1", then one typed literal per line). Only the
// types derpd's targets take are supported.
func Marshal(vals ...any) []byte {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, v := range vals {
		switch v := v.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		case bool, int, int64, uint16, uint32, uint64:
			fmt.Fprintf(&b, "%T(%v)\n", v, v)
		case byte:
			fmt.Fprintf(&b, "byte(%q)\n", v)
		default:
			panic(fmt.Sprintf("fuzztest: no corpus encoding for %T", v))
		}
	}
	return b.Bytes()
}
