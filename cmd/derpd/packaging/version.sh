#!/bin/sh
# Prints the version of what this checkout builds, in a form that is a
# valid Debian version (and, with ~ and + replaced, a Docker tag):
#
#   1.2.3                       HEAD is tag v1.2.3 (v1.2.3-rc1 gives 1.2.3~rc1,
#                               which Debian sorts before 1.2.3)
#   1.2.3+git20250102.0123456789ab
#                               commits after v1.2.3: sorts after 1.2.3
#                               and before 1.2.4
#   0.0.0~git20250102.0123456789ab
#                               no tag yet: sorts before any release
#
# The date is the commit's (UTC), so the same commit always gives the same
# version, and later commits sort later. A tree with uncommitted changes to
# tracked files gets +dirty, as Go marks such builds: a package must not
# pass for the commit it was not built from.
set -eu
cd "$(dirname "$0")"
if ! hash=$(git rev-parse --short=12 HEAD 2>/dev/null); then
	# A source tree without its history (an exported tarball).
	echo 0.0.0~unknown
	exit 0
fi
date=$(TZ=UTC git log -1 --date=format-local:%Y%m%d --format=%cd HEAD)
if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null); then
	base=$(printf '%s\n' "${tag#v}" | sed 's/-/~/')
	if [ "$(git rev-parse "$tag^{commit}")" = "$(git rev-parse HEAD)" ]; then
		version=$base
	else
		version=$base+git$date.$hash
	fi
else
	version=0.0.0~git$date.$hash
fi
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
	version=$version+dirty
fi
echo "$version"
