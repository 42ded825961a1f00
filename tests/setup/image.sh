#!/usr/bin/env bash
# Installs what the berth-image suites need: libostree (headers to build the ostree crate, the
# CLI the tests check with), attr (setfattr for xattrs on the base tree), gnupg (signing test)
# and e2fsprogs (chattr, to remove a test sysroot whose deployment OSTree made immutable).
#
# libostree-dev must match the installed libostree-1-1 exactly; berth_apt_install (lib.sh)
# takes it from the release the installed libostree came from.
#
# Idempotent: a no-op when every tool is present. Install only; nothing is built.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

install_part() {
    local need=()
    command -v ostree >/dev/null 2>&1 || need+=(ostree)
    command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
    pkg-config --exists ostree-1 2>/dev/null || need+=(libostree-dev)
    command -v setfattr >/dev/null 2>&1 || need+=(attr)
    command -v gpg >/dev/null 2>&1 && command -v gpg-agent >/dev/null 2>&1 || need+=(gnupg)
    command -v chattr >/dev/null 2>&1 || need+=(e2fsprogs)
    berth_apt_install "${need[@]}"

    # The ostree crate is built for the libostree 2022.7 API (feature v2022_7).
    pkg-config --atleast-version=2022.7 ostree-1 ||
        berth_die "libostree $(pkg-config --modversion ostree-1) is older than 2022.7, the API the ostree crate is built for"
}

berth_setup_main "$@"
