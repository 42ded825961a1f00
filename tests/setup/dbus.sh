#!/usr/bin/env bash
# Installs dbus-daemon for the rpm-ostree suite (tests/tests/rpmostree.rs), whose daemon double
# runs on a private bus that each test starts with its own configuration. Idempotent.
set -euo pipefail
if ! command -v dbus-daemon >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dbus
fi
