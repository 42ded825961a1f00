#!/usr/bin/env bash
# Builds the box the top-level Vagrantfile boots, from this checkout: the test OS
# (tests/setup/testos.sh, cached) with berth layered on (tests/testos/layer/layer.sh), deployed
# into a disk by `berth-image disk` and packed by `berth-image vagrant-box`.
#
#   sudo tests/testos/vagrant/build-box.sh berth.box
#
# Needs root: libostree writes the disk's sysroot in bare mode. Binaries are the workspace's
# debug builds with their debug info stripped.
set -euo pipefail

OUT="${1:?usage: build-box.sh OUT.box}"
HERE="$(cd "$(dirname "$0")" && pwd)"
TOP="$(cd "$HERE/../../.." && pwd)"
REPO="${BERTH_CACHE:-/var/cache/berth}/testos/repo"
REF=berth-testos/x86_64/vagrant

# Its progress goes to stderr: stdout is the box summary.
bash "$TOP/tests/setup/testos.sh" >&2
cd "$TOP"
cargo build --quiet -p berth-image -p berth-agent --bins
cargo build --quiet -p berth-e2e --bin berth-standin
BIN="${CARGO_TARGET_DIR:-$TOP/target}/debug"

WORK="$(mktemp -d)"
cleanup() {
    # libostree marks deployment roots immutable.
    chattr -R -i "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
BERTH_BIN_DIR="$BIN" bash "$TOP/tests/testos/layer/layer.sh" "$REPO" "$REF" >/dev/null
"$BIN/berth-image" disk --repo "$REPO" --ref "$REF" --osname berth-testos \
    --out "$WORK/disk.raw" --karg systemd.journald.forward_to_console=1 >/dev/null
"$BIN/berth-image" vagrant-box --disk "$WORK/disk.raw" --out "$OUT"
echo "build-box.sh: $OUT (add it with: vagrant box add --name berth/testos $OUT)" >&2
