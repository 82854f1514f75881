package packaging

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestVersionScheme runs cmd/derpd/packaging/version.sh, the Makefile's
// VERSION, in a throwaway repository through a project's life: commits
// before any tag, a release tag, commits after it, a release candidate,
// uncommitted changes. Every version it prints must be valid for dpkg and
// sort where the scheme says: before the first release, after the tag it
// follows, a candidate before its release.
func TestVersionScheme(t *testing.T) {
	skipUnlessDerpd(t)
	needTool(t, "git", "git")
	dpkg := needTool(t, "dpkg", "dpkg")
	script, err := os.ReadFile(filepath.Join(repoRoot(), "cmd", "derpd", "packaging", "version.sh"))
	if err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	if err := os.WriteFile(filepath.Join(repo, "version.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	git := func(date string, args ...string) string {
		t.Helper()
		env := []string{"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t",
			"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1"}
		if date != "" {
			env = append(env, "GIT_AUTHOR_DATE="+date, "GIT_COMMITTER_DATE="+date)
		}
		return strings.TrimSpace(run(t, repo, env, "git", args...))
	}
	version := func() string {
		t.Helper()
		return strings.TrimSpace(run(t, repo, []string{"GIT_CONFIG_GLOBAL=/dev/null"}, "sh", "version.sh"))
	}
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(repo, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	commit := func(date, content string) string {
		t.Helper()
		write("a.go", content)
		git("", "add", ".")
		git(date, "commit", "-q", "-m", content)
		return git("", "rev-parse", "--short=12", "HEAD")
	}

	git("", "init", "-q")
	// 23:30 in New York is the next day in UTC, which is the date used.
	h1 := commit("2025-01-02T23:30:00-05:00", "one")
	untagged := version()
	if want := "0.0.0~git20250103." + h1; untagged != want {
		t.Errorf("before any tag: %q, want %q", untagged, want)
	}
	write("notes.txt", "untracked")
	if v := version(); v != untagged {
		t.Errorf("an untracked file made the version %q, want %q still", v, untagged)
	}
	write("a.go", "changed")
	if v := version(); v != untagged+"+dirty" {
		t.Errorf("with a change to a tracked file: %q, want %q", v, untagged+"+dirty")
	}
	git("", "checkout", "-q", "--", "a.go")

	git("", "tag", "v1.2.3")
	release := version()
	if release != "1.2.3" {
		t.Errorf("at tag v1.2.3: %q, want 1.2.3", release)
	}
	h2 := commit("2025-02-03T10:00:00Z", "two")
	after := version()
	if want := "1.2.3+git20250203." + h2; after != want {
		t.Errorf("a commit after v1.2.3: %q, want %q", after, want)
	}
	git("", "tag", "v1.3.0-rc1")
	candidate := version()
	if candidate != "1.3.0~rc1" {
		t.Errorf("at tag v1.3.0-rc1: %q, want 1.3.0~rc1", candidate)
	}

	// Oldest first, as dpkg must order them.
	order := []string{untagged, untagged + "+dirty", release, after, candidate, "1.3.0"}
	valid := regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`) // no - (that would be a Debian revision), no epoch
	for i, v := range order {
		if !valid.MatchString(v) {
			t.Errorf("%q is not a Debian upstream version without revision", v)
		}
		run(t, "", nil, dpkg, "--validate-version", v)
		if i > 0 {
			if _, err := runErr("", nil, dpkg, "--compare-versions", order[i-1], "lt", v); err != nil {
				t.Errorf("dpkg sorts %q before %q, want after", v, order[i-1])
			}
		}
	}
}
