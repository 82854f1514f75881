// Package packaging tests what operators install: the .deb that `make
// deb` builds (its fields, its files and their owners, lintian's verdict,
// the logic of its maintainer scripts, the unit inside it and the version
// its binary prints), the version scheme the Makefile stamps, and the
// version `go install github.com/derpd/derpd/cmd/derpd@<version>`
// reports. The container image is tested in interop/cluster, which has
// Docker. Upstream derper ships no packages, so against it
// (DERPD_INTEROP_TARGET=derper) the package skips.
package packaging

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/derpd/derpd/interop/harness"
)

// buildTimeout bounds one make or go command: the first run downloads and
// builds nfpm, later ones find it in the build cache.
const buildTimeout = 10 * time.Minute

// repoRoot is the main module's directory, which holds the Makefile.
func repoRoot() string { return filepath.Dir(harness.ModuleDir()) }

func skipUnlessDerpd(t *testing.T) {
	t.Helper()
	if harness.TargetFromEnv() != harness.Derpd {
		t.Skip("derpd's packages; upstream derper ships none")
	}
}

// needTool fails the test, naming the package to install, when a tool is
// missing: a check that is skipped proves nothing.
func needTool(t *testing.T, tool, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is needed here: install Debian's %s (.ci/run does): %v", tool, debianPackage, err)
	}
	return p
}

// run runs a command in dir with env added to the test's environment and
// returns its standard output; a failure fails the test with both
// streams.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(dir, env, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func runErr(dir string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), &cmdError{cmd: name + " " + strings.Join(args, " "), err: err, stdout: stdout.String(), stderr: stderr.String()}
	}
	return stdout.String(), nil
}

type cmdError struct {
	cmd, stdout, stderr string
	err                 error
}

func (e *cmdError) Error() string {
	return e.cmd + ": " + e.err.Error() + "\nstdout:\n" + e.stdout + "\nstderr:\n" + e.stderr
}
