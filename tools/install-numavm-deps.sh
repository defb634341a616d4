#!/usr/bin/env bash
# Install what tools/numavm.py needs to boot the NUMA test VM (Debian, as root):
#   qemu-system-x86    the emulator
#   linux-image-amd64  a guest kernel with 9p modules (the -cloud flavour lacks them)
#   busybox-static     virtme-ng builds the guest's initramfs from it
#   numactl            for looking around inside the guest (numactl -H)
#   virtme-ng          `vng`, which boots the host's own filesystem as the guest's root;
#                      installed for $PYTHON (default python3), the Python the tests use.
# Idempotent: installs only what is missing, so a second run takes a second. Quiet: each
# step's output is shown only if it fails.
set -euo pipefail

PYTHON=${PYTHON:-python3}
PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static numactl)
VIRTME_NG=virtme-ng==1.42  # the version tools/numavm.py was written against

quietly() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 </dev/null || rc=$?
  if [ "$rc" != 0 ]; then
    echo "install-numavm-deps: failed ($rc): $*" >&2
    cat "$log" >&2
  fi
  rm -f "$log"
  return "$rc"
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-numavm-deps: run as root to install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  quietly apt-get update -q
  # A fresh machine may still be running its own apt jobs: wait for the lock.
  quietly apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}"
fi

if ! "$PYTHON" -c 'import virtme_ng' 2>/dev/null; then
  quietly "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$VIRTME_NG"
fi
