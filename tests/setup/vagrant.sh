#!/usr/bin/env bash
# Installs what the Vagrant checks need (image-builder/tests/disk_vagrant.rs): Debian's vagrant
# with its libvirt provider plugin, so that `vagrant validate` checks the top-level Vagrantfile's
# libvirt settings too, and tar for `berth-image vagrant-box`. Nothing is started: the checks
# validate and package, they do not boot VMs.
#
# Idempotent: a no-op when the tools are present. Install only; nothing is built.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

install_part() {
    local need=()
    command -v vagrant >/dev/null 2>&1 || need+=(vagrant)
    dpkg-query -W -f='${Status}' vagrant-libvirt 2>/dev/null | grep -q "ok installed" || need+=(vagrant-libvirt)
    command -v tar >/dev/null 2>&1 || need+=(tar)
    berth_apt_install "${need[@]}"
}

berth_setup_main "$@"
