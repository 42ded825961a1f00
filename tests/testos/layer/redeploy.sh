#!/bin/sh
# berth-test-redeploy.service: stage a new deployment of the booted commit and reboot into it.
set -eu
rm /etc/berth-test-redeploy
booted=$(ostree admin status | sed -n 's/^\* [^ ]* \([0-9a-f]\{64\}\)\.[0-9]*.*/\1/p')
[ -n "$booted" ] || { echo "berth-test: no booted deployment in ostree admin status" >&2; exit 1; }
echo "berth-test: staging a new deployment of $booted"
ostree admin deploy --stage --os=berth-testos "$booted"
systemctl --no-block reboot
