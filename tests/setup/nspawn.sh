#!/usr/bin/env bash
# Installs what the systemd e2e suite (tests/tests/systemd_nspawn.rs) needs and builds its cached
# Debian root file system, which every test copies and boots with `systemd-nspawn -b`.
#
# Installing part: debootstrap, systemd-nspawn, dbus-daemon and busctl. Building part: the rootfs,
# built once (about a minute) from this machine's own Debian mirror (lib.sh) under
# ${BERTH_CACHE:-/var/cache/berth}/rootfs-bookworm and only marked complete after debootstrap
# succeeded, so an interrupted build is redone, not reused.
#
# Idempotent: a no-op (well under a second) when the tools and the cached rootfs are present.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CACHE="${BERTH_CACHE:-/var/cache/berth}"
ROOTFS="$CACHE/rootfs-bookworm"
STAMP="$ROOTFS/.berth-rootfs-complete"
# Bump when the package set below changes, so cached roots from an older recipe are rebuilt.
RECIPE="bookworm minbase systemd,systemd-sysv,dbus,iproute2 v1"

install_part() {
    local need=()
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
    command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus)
    command -v busctl >/dev/null 2>&1 || need+=(systemd)
    berth_apt_install "${need[@]}"
}

build_part() {
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]]; then
        return 0
    fi
    local mirror unit
    mirror="$(berth_mirror)"
    berth_say "building $ROOTFS from $mirror (about a minute)"
    mkdir -p "$CACHE"
    rm -rf "$ROOTFS" "$ROOTFS.tmp"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2 \
        bookworm "$ROOTFS.tmp" "$mirror"
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
}

berth_setup_main "$@"
