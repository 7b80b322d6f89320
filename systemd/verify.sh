#!/usr/bin/env bash
# Verify the Metalbus systemd units with `systemd-analyze verify`.
#
# Usage: bash systemd/verify.sh [UNIT_FILE...]
#   With no arguments, verifies every unit here: metalbus.service,
#   metalbus-agent.service, metalbus-backup.service and metalbus-backup.timer.
#   Exits non-zero if systemd-analyze fails or prints anything at all (it
#   reports most mistakes, such as an unknown key or a bad value, as a warning
#   and still exits 0).
#
# How: `systemd-analyze verify` checks that each ExecStart= binary exists, and
# /usr/bin/metalbus is not installed on a build machine. So the units are
# checked with --root against a throwaway root that holds:
#   - the unit files, copied byte for byte to etc/systemd/system/;
#   - an empty executable stub at each ExecStart= path (only /usr/bin/metalbus
#     and /usr/bin/metalbus-agent are accepted, so a mistyped path fails);
#   - a copy of this machine's /usr/lib/systemd/system, so that
#     network-online.target, multi-user.target etc. resolve.
# The unit files themselves are not changed. systemd does not need to be
# running (PID 1) for this; only the systemd-analyze binary is needed. On
# Debian it comes from the `systemd` package.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vendor_units=/usr/lib/systemd/system

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify.sh: systemd-analyze not found; install it (Debian/Ubuntu: apt-get install systemd)" >&2
    exit 2
fi
if [[ ! -d "$vendor_units" ]]; then
    echo "verify.sh: $vendor_units is missing; the systemd package is not fully installed" >&2
    exit 2
fi

if [[ $# -gt 0 ]]; then
    units=("$@")
else
    units=("$here/metalbus.service" "$here/metalbus-agent.service" "$here/metalbus-backup.service" "$here/metalbus-backup.timer")
fi

root="$(mktemp -d "${TMPDIR:-/tmp}/metalbus-verify.XXXXXX")"
trap 'rm -rf -- "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -R "$vendor_units" "$root/usr/lib/systemd/system"

# A deterministic environment: no caller-set unit path or debug logging.
unset SYSTEMD_UNIT_PATH
export SYSTEMD_LOG_LEVEL=info SYSTEMD_LOG_COLOR=0

echo "verify.sh: $(systemd-analyze --version | head -n 1)"
echo "verify.sh: temporary root $root"

for unit in "${units[@]}"; do
    if [[ ! -f "$unit" ]]; then
        echo "verify.sh: no such unit file: $unit" >&2
        exit 2
    fi
    name="$(basename -- "$unit")"
    if [[ -e "$root/etc/systemd/system/$name" ]]; then
        echo "verify.sh: two units named $name given" >&2
        exit 2
    fi
    cp -- "$unit" "$root/etc/systemd/system/$name"
    echo "verify.sh: copied $unit -> <root>/etc/systemd/system/$name (unchanged)"

    # ExecStart= may start with the prefixes - @ : + ! ; the path follows them.
    # Only the Metalbus binaries get a stub, so a typo in the path still fails.
    while read -r exe; do
        case "$exe" in
            /usr/bin/metalbus | /usr/bin/metalbus-agent) ;;
            *)
                echo "FAIL $unit: ExecStart binary $exe is not /usr/bin/metalbus or /usr/bin/metalbus-agent" >&2
                exit 1
                ;;
        esac
        if [[ ! -e "$root$exe" ]]; then
            mkdir -p "$(dirname -- "$root$exe")"
            printf '#!/bin/sh\nexit 0\n' >"$root$exe"
            chmod 0755 "$root$exe"
            echo "verify.sh: stub executable <root>$exe (ExecStart of $name)"
        fi
    done < <(sed -n 's/^ExecStart=[-@:+!]*\([^[:space:]]*\).*/\1/p' "$unit")
done

failed=0
for unit in "${units[@]}"; do
    name="$(basename -- "$unit")"
    status=0
    output="$(systemd-analyze verify --recursive-errors=yes --man=no \
        --root="$root" "$name" 2>&1)" || status=$?
    # Report problems against the real file (line numbers are unchanged).
    output="${output//"$root/etc/systemd/system/$name"/$unit}"
    if [[ $status -ne 0 || -n "$output" ]]; then
        echo "FAIL $unit (systemd-analyze exit status $status)"
        [[ -n "$output" ]] && printf '%s\n' "$output" | sed 's/^/    /'
        failed=1
    else
        echo "ok   $unit"
    fi
done

if [[ $failed -ne 0 ]]; then
    echo "verify.sh: unit verification failed" >&2
    exit 1
fi
echo "verify.sh: all ${#units[@]} unit(s) verified"
