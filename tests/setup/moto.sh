#!/usr/bin/env bash
# Installs what the moto compatibility suite (tests/tests/moto.rs) needs: a Python venv holding
# moto's server (an independent implementation of the EC2, IAM and STS APIs that verifies SigV4
# signatures) and boto3, which tests/moto/setup.py uses to create the VPC, groups, instances and role.
#
# Idempotent: a no-op (well under a second) when the venv exists with the pinned versions. The venv
# is marked complete only after pip succeeded, so an interrupted install is redone, not reused.
# (It is built in place: a venv's scripts name its interpreter by absolute path, so it cannot be moved.)
set -euo pipefail

CACHE="${BERTH_CACHE:-/var/cache/berth}"
VENV="$CACHE/moto-venv"
STAMP="$VENV/.berth-venv-complete"
# Pinned so that every machine tests against the same moto; bump deliberately (and rerun the suite).
REQUIREMENTS="moto[server]==5.2.5 boto3==1.44.8"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQUIREMENTS" && -x "$VENV/bin/moto_server" ]]; then
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    # Debian splits venv/ensurepip out of python3.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv
    PYTHON=python3
fi

mkdir -p "$CACHE"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# shellcheck disable=SC2086 # the requirement list is split on purpose
"$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS
echo "$REQUIREMENTS" >"$STAMP"
