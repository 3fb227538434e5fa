#!/bin/sh
# Installs sluice-cni into the host's CNI binary directory, atomically: the
# binary is copied to a temporary file in the same directory and renamed over
# the old one, so a runtime that executes the plugin meanwhile runs either the
# old or the new binary, never a half-written file.
#
# Usage: install-cni.sh [SOURCE] [BIN_DIR]
#   SOURCE   the sluice-cni binary   (default: /usr/local/bin/sluice-cni, or $SLUICE_CNI_SOURCE)
#   BIN_DIR  the host's CNI bin dir  (default: /opt/cni/bin, or $CNI_BIN_DIR)
# Meant for an init container with the host's BIN_DIR mounted.
set -eu

src="${1:-${SLUICE_CNI_SOURCE:-/usr/local/bin/sluice-cni}}"
dir="${2:-${CNI_BIN_DIR:-/opt/cni/bin}}"

if [ ! -f "$src" ] || [ ! -x "$src" ]; then
    echo "install-cni: $src is not an executable file" >&2
    exit 1
fi
mkdir -p "$dir"
tmp="$dir/.sluice-cni.tmp.$$"
trap 'rm -f "$tmp"' EXIT INT TERM
cp "$src" "$tmp"
chmod 0755 "$tmp"
# The new binary must run before it replaces the old one.
if ! out=$(CNI_COMMAND=VERSION "$tmp" </dev/null); then
    echo "install-cni: $src does not answer VERSION: $out" >&2
    exit 1
fi
sync "$tmp" 2>/dev/null || true
mv -f "$tmp" "$dir/sluice-cni"
trap - EXIT INT TERM
echo "install-cni: installed $dir/sluice-cni ($out)"
