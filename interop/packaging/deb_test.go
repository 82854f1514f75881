package packaging

import (
	"bufio"
	"compress/gzip"
	"debug/elf"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The package's files: path in the archive → mode and owner, as
// dpkg-deb --contents lists them. Directories leading to them are
// implied; a file not listed here fails the test, so nothing lands on an
// operator's host unnoticed.
var debFiles = map[string]string{
	"./usr/bin/derpd":                        "-rwxr-xr-x root/root",
	"./usr/lib/systemd/system/derpd.service": "-rw-r--r-- root/root",
	"./usr/lib/sysusers.d/derpd.conf":        "-rw-r--r-- root/root",
	"./etc/derpd/":                           "drwxr-xr-x root/root",
	"./etc/derpd/derpd.env":                  "-rw-r--r-- root/root",
	"./usr/share/doc/derpd/copyright":        "-rw-r--r-- root/root",
	"./usr/share/doc/derpd/changelog.gz":     "-rw-r--r-- root/root",
	"./usr/share/doc/derpd/README.Debian":    "-rw-r--r-- root/root",
	"./usr/share/man/man8/derpd.8.gz":        "-rw-r--r-- root/root",
	"./usr/share/lintian/overrides/derpd":    "-rw-r--r-- root/root",
}

// lintianAllowed are the tags lintian may report, each with the reason it
// is left (docs/operators-guide.md lists them too). Anything else,
// pedantic and informational tags included, fails the test.
var lintianAllowed = map[string]string{
	// derpd's hardening is the unit's; an init.d script would run it
	// without any of it, as root.
	"I: package-supports-alternative-init-but-no-init.d-script": "no init.d script, on purpose",
}

// TestDeb builds the .deb with `make deb`, as an operator would, and
// checks what dpkg would install, what lintian says of it, and what its
// maintainer scripts do. It never installs the package.
func TestDeb(t *testing.T) {
	skipUnlessDerpd(t)
	t.Parallel()
	needTool(t, "make", "make")
	dpkgDeb := needTool(t, "dpkg-deb", "dpkg")
	lintian := needTool(t, "lintian", "lintian")
	analyze := needTool(t, "systemd-analyze", "systemd")

	deb := buildDeb(t)

	// The control file.
	field := func(name string) string {
		return strings.TrimSpace(run(t, "", nil, dpkgDeb, "--field", deb, name))
	}
	version := field("Version")
	arch := strings.TrimSpace(run(t, "", nil, "dpkg", "--print-architecture"))
	for name, want := range map[string]string{"Package": "derpd", "Architecture": arch, "Section": "net", "Priority": "optional"} {
		if got := field(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if got := field("Depends"); got != "adduser" {
		// adduser is the postinst's fallback where systemd-sysusers is
		// missing; nothing else is needed by a static binary.
		t.Errorf("Depends: %q, want adduser alone", got)
	}
	if filepath.Base(deb) != "derpd_"+version+"_"+arch+".deb" {
		t.Errorf("the package is %s, want it named for its version %s", filepath.Base(deb), version)
	}
	info := run(t, "", nil, dpkgDeb, "--info", deb)
	for _, script := range []string{"postinst", "prerm", "postrm", "conffiles", "md5sums"} {
		if !regexp.MustCompile(`(?m)^\s+\d+ bytes,\s+\d+ lines\s+\*?\s+` + script + `\b`).MatchString(info) {
			t.Errorf("dpkg-deb --info lists no %s:\n%s", script, info)
		}
	}

	// The files, their modes and owners.
	listed := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "", nil, dpkgDeb, "--contents", deb)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb --contents: odd line %q", line)
		}
		listed[f[5]] = f[0] + " " + f[1]
	}
	for path, want := range debFiles {
		if got, ok := listed[path]; !ok {
			t.Errorf("the package lacks %s", path)
		} else if got != want {
			t.Errorf("%s is %s, want %s", path, got, want)
		}
	}
	for path, got := range listed {
		if _, ok := debFiles[path]; !ok && !strings.HasPrefix(got, "d") {
			t.Errorf("the package installs %s (%s), which the test does not know", path, got)
		}
		// The state directory is systemd's (StateDirectory=): with
		// DynamicUser= it moves a /var/lib/derpd it finds into
		// /var/lib/private, out from under dpkg.
		if strings.HasPrefix(path, "./var/") {
			t.Errorf("the package installs %s; the state directory is made by systemd", path)
		}
	}

	root := t.TempDir()
	run(t, "", nil, dpkgDeb, "--extract", deb, root)
	control := t.TempDir()
	run(t, "", nil, dpkgDeb, "--control", deb, control)

	t.Run("binary", func(t *testing.T) {
		bin := filepath.Join(root, "usr/bin/derpd")
		if got := strings.TrimSpace(run(t, "", nil, bin, "-version")); got != version {
			t.Errorf("derpd -version prints %q, want the package's version %q", got, version)
		}
		// Static, so that the same binary runs in the FROM-scratch image.
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("/usr/bin/derpd asks for a dynamic loader: built with cgo?")
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("/usr/bin/derpd needs shared libraries %v", libs)
		}
	})

	t.Run("unit", func(t *testing.T) {
		unitPath := filepath.Join(root, "usr/lib/systemd/system/derpd.service")
		packaged := readUnit(t, unitPath)
		source := readUnit(t, filepath.Join(repoRoot(), "cmd/derpd/derpd.service"))
		// The packaged unit is the checked-in one, run from /usr/bin.
		exec := strings.Join(packaged["ExecStart"], " ")
		if !strings.HasPrefix(exec, "/usr/bin/derpd ") {
			t.Errorf("ExecStart=%s, want /usr/bin/derpd, where the package puts it", exec)
		}
		for k, vs := range source {
			for i, v := range vs {
				source[k][i] = strings.ReplaceAll(v, "/usr/local/bin/derpd", "/usr/bin/derpd")
			}
		}
		for k := range mergeKeys(source, packaged) {
			if !slices.Equal(source[k], packaged[k]) {
				t.Errorf("%s: packaged %q, checked in %q", k, packaged[k], source[k])
			}
		}
		// The unit reads the package's environment file, and runs as the
		// package's user.
		if got := packaged["EnvironmentFile"]; len(got) != 1 || got[0] != "-/etc/derpd/derpd.env" {
			t.Errorf("EnvironmentFile=%v, want -/etc/derpd/derpd.env", got)
		}
		conffiles, _ := os.ReadFile(filepath.Join(control, "conffiles"))
		if strings.TrimSpace(string(conffiles)) != "/etc/derpd/derpd.env" {
			t.Errorf("conffiles: %q, want /etc/derpd/derpd.env alone (an edited file survives upgrades)", conffiles)
		}
		sysusers, _ := os.ReadFile(filepath.Join(root, "usr/lib/sysusers.d/derpd.conf"))
		if got := packaged["User"]; len(got) != 1 || !regexp.MustCompile(`(?m)^u `+got[0]+` `).Match(sysusers) {
			t.Errorf("User=%v, but sysusers.d/derpd.conf makes:\n%s", got, sysusers)
		}
		if got := packaged["StateDirectory"]; len(got) != 1 || got[0] != "derpd" {
			t.Errorf("StateDirectory=%v: postrm purges /var/lib/derpd", got)
		}
		// systemd's own check, with the extracted binary for ExecStart.
		b, _ := os.ReadFile(unitPath)
		check := filepath.Join(t.TempDir(), "derpd.service")
		os.WriteFile(check, []byte(strings.ReplaceAll(string(b), "/usr/bin/derpd", filepath.Join(root, "usr/bin/derpd"))), 0o644)
		if out, err := runErr("", nil, analyze, "verify", check); err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})

	t.Run("environment file", func(t *testing.T) {
		// Every setting commented out: the file's settings win over
		// Environment= in drop-ins, so a live one would silently undo an
		// operator's drop-in.
		b, _ := os.ReadFile(filepath.Join(root, "etc/derpd/derpd.env"))
		for _, line := range strings.Split(string(b), "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				t.Errorf("derpd.env sets %q; every line should be a comment", l)
			}
		}
		unit, _ := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/derpd.service"))
		for _, v := range []string{"DERPD_HOSTNAME", "DERPD_FLAGS"} {
			if !strings.Contains(string(b), "#"+v+"=") || !strings.Contains(string(unit), v) {
				t.Errorf("%s should be shown in derpd.env and read by the unit", v)
			}
		}
	})

	t.Run("docs", func(t *testing.T) {
		changelog := gunzip(t, filepath.Join(root, "usr/share/doc/derpd/changelog.gz"))
		if first, _, _ := strings.Cut(changelog, "\n"); !strings.HasPrefix(first, "derpd ("+version+") ") {
			t.Errorf("the changelog begins %q, want an entry for %s", first, version)
		}
		copyright, _ := os.ReadFile(filepath.Join(root, "usr/share/doc/derpd/copyright"))
		for _, want := range []string{"Copyright: ", "the derpd authors", "License: none", "not granted a\n licence"} {
			if !strings.Contains(string(copyright), want) {
				t.Errorf("the copyright file lacks %q:\n%s", want, copyright)
			}
		}
		if man := gunzip(t, filepath.Join(root, "usr/share/man/man8/derpd.8.gz")); !strings.Contains(man, ".TH DERPD 8") {
			t.Errorf("derpd.8 is no manual page:\n%s", man)
		}
	})

	t.Run("maintainer scripts", func(t *testing.T) { checkMaintainerScripts(t, control) })

	t.Run("lintian", func(t *testing.T) {
		// --fail-on none: the verdict is read from the tags, all of them.
		out := run(t, "", nil, lintian, "--fail-on", "none", "--display-info", "--pedantic", "--show-overrides", deb)
		overridden := false
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			m := regexp.MustCompile(`^([A-Z]): derpd(?: [a-z]+)?: (\S+)`).FindStringSubmatch(line)
			if m == nil {
				continue
			}
			tag := m[1] + ": " + m[2]
			if tag == "O: statically-linked-binary" {
				overridden = true
				continue
			}
			if _, ok := lintianAllowed[tag]; !ok {
				t.Errorf("lintian: %s", line)
			}
		}
		if !overridden {
			t.Errorf("lintian did not report its override of statically-linked-binary; is the binary still static, the override still read?\n%s", out)
		}
	})
}

// buildDeb runs `make deb` into a directory of the test's own, so that
// parallel runs and the engineers' own builds do not meet, and returns
// the path of the package.
func buildDeb(t *testing.T) string {
	t.Helper()
	dist := t.TempDir()
	args := []string{"deb", "DIST=" + dist}
	if email, _ := runErr(repoRoot(), nil, "git", "config", "user.email"); strings.TrimSpace(email) == "" {
		// The Makefile takes the maintainer from git; a CI checkout may
		// have no identity.
		args = append(args, "DEB_MAINTAINER=derpd CI <ci@derpd.invalid>")
	}
	run(t, repoRoot(), nil, "make", args...)
	debs, _ := filepath.Glob(filepath.Join(dist, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v, want one .deb", debs)
	}
	return debs[0]
}

// readUnit reads a unit file into key → values, in order.
func readUnit(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
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
			t.Fatalf("%s: malformed line %q", path, line)
		}
		out[k] = append(out[k], v)
	}
	return out
}

func mergeKeys(ms ...map[string][]string) map[string]bool {
	keys := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			keys[k] = true
		}
	}
	return keys
}

func gunzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return string(b)
}
