#!/usr/bin/env bash
# Installs dbus-daemon for the rpm-ostree suite (tests/tests/rpmostree.rs), whose daemon double
# runs on a private bus that each test starts with its own configuration.
#
# Idempotent: a no-op when dbus-daemon is present. Install only; nothing is built.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

install_part() {
    local need=()
    command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus)
    berth_apt_install "${need[@]}"
}

berth_setup_main "$@"
