#!/usr/bin/env bash
# Installs what berth-image disk and the QEMU first-boot suite (tests/tests/qemu_firstboot.rs)
# need on the host: QEMU (TCG works everywhere; KVM is used where /dev/kvm can run the guest),
# qemu-img for qcow2, dosfstools and mtools to build the EFI system partition without mounting,
# e2fsprogs (mke2fs -d, debugfs) for the ext4 partitions, OVMF to boot the disk through its own
# bootloader, and netcat (OpenBSD's) as the per-connection relay behind QEMU's guestfwd.
#
# QEMU's packages must come from one release: qemu-utils from bookworm-backports (as some machine
# images carry it) breaks bookworm's qemu-system-x86, so berth_apt_install (lib.sh) takes
# qemu-system-x86 from the release the installed qemu-utils came from, enabling bookworm-backports
# from the machine's own mirror when that is where it came from.
#
# Idempotent: a no-op when every tool is present. Install only; nothing is built.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

install_part() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
    command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
    command -v mkfs.fat >/dev/null 2>&1 || need+=(dosfstools)
    command -v mcopy >/dev/null 2>&1 || need+=(mtools)
    command -v mke2fs >/dev/null 2>&1 && command -v debugfs >/dev/null 2>&1 || need+=(e2fsprogs)
    command -v nc.openbsd >/dev/null 2>&1 || need+=(netcat-openbsd)
    [[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ]] || need+=(ovmf)

    berth_apt_install "${need[@]}"
    qemu-system-x86_64 --version >/dev/null && qemu-img --version >/dev/null ||
        berth_die "qemu-system-x86_64 or qemu-img does not run after the install"
}

berth_setup_main "$@"
