#!/usr/bin/env bash
# Installs what berth-image disk and the QEMU first-boot suite (tests/tests/qemu_firstboot.rs)
# need on the host: QEMU (TCG works everywhere; KVM is used where /dev/kvm can run the guest),
# qemu-img for qcow2, dosfstools and mtools to build the EFI system partition without mounting,
# e2fsprogs (mke2fs -d, debugfs) for the ext4 partitions, OVMF to boot the disk through its own
# bootloader, and netcat (OpenBSD's) as the per-connection relay behind QEMU's guestfwd.
#
# Idempotent: a no-op when every tool is present.
set -euo pipefail

need=()
# Installed together: qemu-system-x86 pins the qemu-utils version it works with, and apt removes
# a qemu-utils from another release (e.g. a backport) when it installs qemu-system-x86 alone.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-img >/dev/null 2>&1; then
    need+=(qemu-system-x86 qemu-utils)
fi
command -v mkfs.fat >/dev/null 2>&1 || need+=(dosfstools)
command -v mcopy >/dev/null 2>&1 || need+=(mtools)
command -v mke2fs >/dev/null 2>&1 || need+=(e2fsprogs)
command -v nc.openbsd >/dev/null 2>&1 || need+=(netcat-openbsd)
[[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ]] || need+=(ovmf)

if ((${#need[@]})); then
    echo "tests/setup/qemu.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v qemu-img >/dev/null && command -v qemu-system-x86_64 >/dev/null || {
    echo "tests/setup/qemu.sh: qemu-img or qemu-system-x86_64 still missing" >&2
    exit 1
}
