#!/usr/bin/env bash
# Installs what the systemd e2e suite (tests/tests/systemd_nspawn.rs) needs and builds its cached
# Debian root file system, which every test copies and boots with `systemd-nspawn -b`.
#
# Idempotent: a no-op (well under a second) when the tools and the cached rootfs are present.
# The rootfs is built once (about a minute) under ${BERTH_CACHE:-/var/cache/berth}/rootfs-bookworm and
# only marked complete after debootstrap succeeded, so an interrupted build is redone, not reused.
set -euo pipefail

CACHE="${BERTH_CACHE:-/var/cache/berth}"
ROOTFS="$CACHE/rootfs-bookworm"
STAMP="$ROOTFS/.berth-rootfs-complete"
# Bump when the package set below changes, so cached roots from an older recipe are rebuilt.
RECIPE="bookworm minbase systemd,systemd-sysv,dbus,iproute2 v1"

need_pkgs=()
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v systemd-nspawn >/dev/null || need_pkgs+=(systemd-container)
command -v dbus-daemon >/dev/null || need_pkgs+=(dbus)
command -v busctl >/dev/null || need_pkgs+=(systemd)
if ((${#need_pkgs[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]]; then
    exit 0
fi

mkdir -p "$CACHE"
rm -rf "$ROOTFS" "$ROOTFS.tmp"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2 \
    bookworm "$ROOTFS.tmp" http://deb.debian.org/debian
# Units a test container never needs and that slow its boot or wait on hardware it does not have.
for unit in systemd-networkd-wait-online.service getty@.service console-getty.service \
    systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer; do
    ln -sf /dev/null "$ROOTFS.tmp/etc/systemd/system/$unit"
done
# An empty machine-id lets systemd generate a fresh one per container boot.
: >"$ROOTFS.tmp/etc/machine-id"
apt-get -o RootDir="$ROOTFS.tmp" clean >/dev/null 2>&1 || true
rm -rf "$ROOTFS.tmp"/var/lib/apt/lists/* "$ROOTFS.tmp"/var/cache/apt/*.bin
echo "$RECIPE" >"$ROOTFS.tmp/.berth-rootfs-complete"
mv "$ROOTFS.tmp" "$ROOTFS"
