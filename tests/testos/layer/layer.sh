#!/usr/bin/env bash
# Layers berth onto the cached test OS base (tests/setup/testos.sh) with `berth-image commit`:
# the agent and its shipped unit, the profiles, the image defaults of
# tests/testos/layer/berth-config.yaml (`upgrade: false`, the EC2 endpoint), and the stand-in
# program behind every Fedora 21 daemon. With --with-test-units, also the test OS's stand-in for
# a staged upgrade (tests/testos/layer/units/, used by tests/tests/qemu_firstboot.rs).
# Prints the new commit's checksum.
#
#   tests/testos/layer/layer.sh REPO REF [--with-test-units]
#
# The workspace's binaries must be built (debug): berth-image, berth-agent, berth-standin, or
# those in $BERTH_BIN_DIR. They go in with their debug info stripped.
set -euo pipefail

REPO="${1:?usage: layer.sh REPO REF [--with-test-units]}"
REF="${2:?usage: layer.sh REPO REF [--with-test-units]}"
test_units=false
[[ "${3:-}" == --with-test-units ]] && test_units=true
TOP="$(cd "$(dirname "$0")/../../.." && pwd)"
BIN="${BERTH_BIN_DIR:-${CARGO_TARGET_DIR:-$TOP/target}/debug}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
strip --strip-debug -o "$WORK/berth-agent" "$BIN/berth-agent"
strip --strip-debug -o "$WORK/berth-standin" "$BIN/berth-standin"
mkdir "$WORK/units"
# The shipped units, without the directory's README.
cp "$TOP/configs/systemd/berth-agent.service" "$TOP/configs/systemd/50-berth.preset" "$WORK/units/"

add=(--add-file "$TOP/tests/testos/layer/berth-config.yaml:/usr/share/berth/config.yaml")
if $test_units; then
    cp "$TOP"/tests/testos/layer/units/* "$WORK/units/"
    add+=(--add-file "$TOP/tests/testos/layer/redeploy.sh:/usr/lib/berth-test/redeploy.sh")
fi
# The daemons of the Fedora 21 units (tests/src/nspawn.rs STANDINS).
for daemon in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet docker; do
    add+=(--add-file "$WORK/berth-standin:/usr/bin/$daemon")
done
"$BIN/berth-image" commit --repo "$REPO" --base berth-testos/x86_64/base --ref "$REF" \
    --agent "$WORK/berth-agent" --units "$WORK/units" --profiles "$TOP/configs/profiles" "${add[@]}"
