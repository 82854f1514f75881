#!/bin/sh
# stage.sh DIR VERSION MAINTAINER: writes into DIR the package's files that
# are made rather than checked in (the Makefile's deb target runs it;
# nfpm.yaml takes the rest from cmd/derpd/packaging):
#
#   derpd.service   cmd/derpd/derpd.service as the package installs it:
#                   ExecStart names /usr/bin/derpd, and the comment on
#                   installing by hand gives way to one on the package
#   changelog.gz    a one-entry Debian changelog for VERSION, dated at the
#                   commit (SOURCE_DATE_EPOCH)
#   copyright       copyright with the years of the project's history
#   derpd.8.gz      the manual page
#
# Compressed as lintian wants: gzip -9, without name or time stamp.
set -eu
dir=$1 version=$2 maintainer=$3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"

{
	cat <<'HEADER'
# systemd unit for derpd, installed by the derpd package. It starts only
# once enabled: sudo systemctl enable --now derpd. Set the host name and
# flags in /etc/derpd/derpd.env; see /usr/share/doc/derpd/README.Debian.

HEADER
	# Everything after the first blank line: the unit without its
	# install-by-hand comment.
	sed -e '1,/^$/d' -e 's|/usr/local/bin/derpd|/usr/bin/derpd|g' "$here/../derpd.service"
} >"$dir/derpd.service"

epoch=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct HEAD 2>/dev/null || date +%s)}
commit=$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)
{
	printf 'derpd (%s) unstable; urgency=medium\n\n' "$version"
	printf '  * Built from commit %s of\n    https://github.com/derpd/derpd.\n\n' "$commit"
	printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$epoch")"
} | gzip -9 -n >"$dir/changelog.gz"

# From the year of the first commit to that of this one.
last=$(date -u -d "@$epoch" +%Y)
first=$(TZ=UTC git -C "$here" log --reverse --format=%cd --date=format-local:%Y HEAD 2>/dev/null | head -n 1)
years=${first:-$last}
[ "$years" = "$last" ] || years=$years-$last
sed "s/@YEARS@/$years/" "$here/copyright" >"$dir/copyright"

gzip -9 -n <"$here/derpd.8" >"$dir/derpd.8.gz"
