#!/usr/bin/env bash
# Builds the box the top-level Vagrantfile boots, from this checkout: the test OS
# (tests/setup/testos.sh, cached) with berth layered on by `berth-image commit` (the agent and
# its unit, the profiles, the image defaults of tests/testos/layer/berth-config.yaml, and the
# stand-in program behind every Fedora 21 daemon), deployed into a disk by `berth-image disk`
# and packed by `berth-image vagrant-box`.
#
#   sudo tests/testos/vagrant/build-box.sh berth.box
#
# Needs root: libostree writes the disk's sysroot in bare mode. Binaries are the workspace's
# debug builds with their debug info stripped (tests/src/qemu.rs layers the same way).
set -euo pipefail

OUT="${1:?usage: build-box.sh OUT.box}"
HERE="$(cd "$(dirname "$0")" && pwd)"
TOP="$(cd "$HERE/../../.." && pwd)"
REPO="${BERTH_CACHE:-/var/cache/berth}/testos/repo"
BASE=berth-testos/x86_64/base
REF=berth-testos/x86_64/vagrant

bash "$TOP/tests/setup/testos.sh"
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
strip --strip-debug -o "$WORK/berth-agent" "$BIN/berth-agent"
strip --strip-debug -o "$WORK/berth-standin" "$BIN/berth-standin"
mkdir "$WORK/units"
cp configs/systemd/berth-agent.service configs/systemd/50-berth.preset "$WORK/units/"

add=(--add-file "$TOP/tests/testos/layer/berth-config.yaml:/usr/share/berth/config.yaml")
for daemon in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet docker; do
    add+=(--add-file "$WORK/berth-standin:/usr/bin/$daemon")
done
"$BIN/berth-image" commit --repo "$REPO" --base "$BASE" --ref "$REF" \
    --agent "$WORK/berth-agent" --units "$WORK/units" --profiles configs/profiles "${add[@]}" \
    >/dev/null
"$BIN/berth-image" disk --repo "$REPO" --ref "$REF" --osname berth-testos \
    --out "$WORK/disk.raw" --karg systemd.journald.forward_to_console=1 >/dev/null
"$BIN/berth-image" vagrant-box --disk "$WORK/disk.raw" --out "$OUT"
echo "build-box.sh: $OUT (add it with: vagrant box add --name berth/testos $OUT)" >&2
