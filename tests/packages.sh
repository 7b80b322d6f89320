#!/usr/bin/env bash
# The Debian packages, checked the way an operator meets them: build both with
# cargo-deb, run lintian (no error and no warning; overrides are explained in
# controller/debian/lintian-overrides and agent/debian/lintian-overrides), then make a
# fresh Debian root with mmdebstrap and, inside it, install, reinstall, remove and purge
# them, checking files, conffiles, the system user, the units, `--version`, the man
# pages and the shell completions at each step.
#
# Needs cargo-deb, lintian and mmdebstrap (.ci/run installs them), root for the chroot
# (sudo is used when not root), and the Debian mirror the host's apt uses.
# Usage: bash tests/packages.sh [--keep]   (--keep leaves the root for a look)
set -euo pipefail
cd "$(dirname "$0")/.."

keep=no
[ "${1:-}" = "--keep" ] && keep=yes

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
fail() { echo "packages.sh: FAIL: $*" >&2; exit 1; }
step() { echo "== packages: $*"; }

work=$(mktemp -d /tmp/metalbus-packages.XXXXXX)
root="$work/root"
serve_pid=
cleanup() {
  if [ -n "$serve_pid" ]; then as_root kill -TERM "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  if [ "$keep" = yes ]; then echo "root kept at $root"; else as_root rm -rf "$work"; fi
}
trap cleanup EXIT

step "cargo deb -p metalbus, cargo deb -p metalbus-agent"
controller_deb=$(cargo deb -p metalbus | tail -n 1)
agent_deb=$(cargo deb -p metalbus-agent | tail -n 1)
[ -f "$controller_deb" ] && [ -f "$agent_deb" ] || fail "cargo deb printed no package path"
version=$(dpkg-deb -f "$controller_deb" Version)
upstream=${version%-*}

step "lintian"
# --fail-on: an error or a warning fails; info tags are printed for the record.
lintian --fail-on error,warning --display-info "$controller_deb" "$agent_deb"

# What the packages depend on, without versions or alternatives: the root gets exactly
# these (and man-db, to read the pages), so a missing Depends fails the install below.
depends=$(for deb in "$controller_deb" "$agent_deb"; do dpkg-deb -f "$deb" Depends; echo; done |
  tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/ //g' | grep -v '^$' | sort -u | paste -sd, -)
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
step "mmdebstrap --variant=minbase $suite (with $depends,man-db)"
as_root mmdebstrap --quiet --variant=minbase --include="$depends,man-db" "$suite" "$root"

as_root cp "$controller_deb" "$root/tmp/metalbus.deb"
as_root cp "$agent_deb" "$root/tmp/metalbus-agent.deb"
# Inside the root, with a clean environment: what a login shell on the box would have.
in_root() {
  as_root env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 MANWIDTH=100 \
    chroot "$root" "$@"
}
exists() { as_root test -e "$root$1" || as_root test -L "$root$1"; }
must_exist() { for f in "$@"; do exists "$f" || fail "$f is missing"; done; }
must_not_exist() { for f in "$@"; do ! exists "$f" || fail "$f is still there"; done; }
enabled() { as_root systemctl --root="$root" is-enabled "$1" 2>/dev/null || true; }

packaged_files=(
  /usr/bin/metalbus
  /usr/bin/metalbus-agent
  /usr/lib/systemd/system/metalbus.service
  /usr/lib/systemd/system/metalbus-backup.service
  /usr/lib/systemd/system/metalbus-backup.timer
  /usr/lib/systemd/system/metalbus-agent.service
  /etc/metalbus/controller.toml
  /etc/metalbus/agent.toml
  /etc/metalbus/steps.d/demo-step
  /etc/metalbus/steps.d/write-image
  /usr/share/metalbus/monitoring/metalbus.rules.yml
  /usr/share/metalbus/monitoring/grafana-dashboard.json
  /usr/share/man/man1/metalbus.1.gz
  /usr/share/man/man1/metalbus-serve.1.gz
  /usr/share/man/man1/metalbus-backup.1.gz
  /usr/share/man/man1/metalbus-agent.1.gz
  /usr/share/man/man1/metalbus-agent-run.1.gz
  /usr/share/bash-completion/completions/metalbus
  /usr/share/bash-completion/completions/metalbus-agent
  /usr/share/zsh/vendor-completions/_metalbus
  /usr/share/zsh/vendor-completions/_metalbus-agent
  /usr/share/fish/vendor_completions.d/metalbus.fish
  /usr/share/fish/vendor_completions.d/metalbus-agent.fish
  /usr/share/doc/metalbus/copyright
  /usr/share/doc/metalbus/OPERATIONS.md
  /usr/share/doc/metalbus-agent/copyright
)
conffiles=(
  /etc/metalbus/controller.toml
  /etc/metalbus/agent.toml
  /etc/metalbus/steps.d/demo-step
  /etc/metalbus/steps.d/write-image
)

installed_checks() {
  must_exist "${packaged_files[@]}"
  local listed
  listed=$(in_root dpkg-query -W -f='${Conffiles}\n' metalbus metalbus-agent)
  for f in "${conffiles[@]}"; do
    grep -q "^ $f " <<<"$listed" || fail "$f is not a conffile: $listed"
  done
  [ "$(as_root stat -c %a "$root/etc/metalbus/steps.d/write-image")" = 755 ] ||
    fail "write-image is not executable"

  # The system user: no login, no home of its own, the store's directory as home.
  local user
  user=$(in_root getent passwd metalbus) || fail "no user metalbus"
  IFS=: read -r _ _ uid gid _ home shell <<<"$user"
  [ "$uid" -lt 1000 ] || fail "metalbus is not a system user: $user"
  [ "$home" = /var/lib/metalbus ] || fail "metalbus's home is $home"
  [ "$shell" = /usr/sbin/nologin ] || fail "metalbus's shell is $shell"
  [ "$(in_root getent group metalbus | cut -d: -f3)" = "$gid" ] || fail "no group metalbus"

  # Units enabled the Debian way (deb-systemd-helper): the daemons yes, the backup
  # timer no (the operator turns it on).
  [ "$(enabled metalbus.service)" = enabled ] || fail "metalbus.service is $(enabled metalbus.service)"
  [ "$(enabled metalbus-agent.service)" = enabled ] ||
    fail "metalbus-agent.service is $(enabled metalbus-agent.service)"
  [ "$(enabled metalbus-backup.timer)" = disabled ] ||
    fail "metalbus-backup.timer is $(enabled metalbus-backup.timer)"
  must_exist /etc/systemd/system/multi-user.target.wants/metalbus.service \
    /etc/systemd/system/multi-user.target.wants/metalbus-agent.service

  [ "$(in_root metalbus --version)" = "metalbus $upstream" ] || fail "metalbus --version: $(in_root metalbus --version)"
  [ "$(in_root metalbus-agent --version)" = "metalbus-agent $upstream" ] ||
    fail "metalbus-agent --version: $(in_root metalbus-agent --version)"

  local page
  page=$(in_root man -P cat metalbus 2>&1) || fail "man metalbus: $page"
  grep -q 'metalbus-serve(1)' <<<"$page" || fail "man metalbus lists no subcommands: $page"
  grep -q '/etc/metalbus/controller.toml' <<<"$page" || fail "man metalbus has no FILES: $page"
  page=$(in_root man -P cat metalbus-nodes-manage 2>&1) || fail "man metalbus-nodes-manage: $page"
  grep -q -- '--plan' <<<"$page" || fail "man metalbus-nodes-manage has no --plan: $page"
  page=$(in_root man -P cat metalbus-agent 2>&1) || fail "man metalbus-agent: $page"
  grep -q 'enroll.token' <<<"$page" || fail "man metalbus-agent has no FILES: $page"

  in_root bash -c '. /usr/share/bash-completion/completions/metalbus &&
    . /usr/share/bash-completion/completions/metalbus-agent &&
    complete -p metalbus && complete -p metalbus-agent' >/dev/null ||
    fail "the bash completions do not load"
}

step "install both packages into the fresh root"
in_root dpkg -i /tmp/metalbus.deb /tmp/metalbus-agent.deb
installed_checks

step "restore a store as root, then run the packaged controller as user metalbus"
# The schema-1 fixture stands in for a backup; its key files are copied the way
# docs/OPERATIONS.md says (owned by metalbus, 0600).
fixture=tests/fixtures/store-schema1
owner="$(in_root id -u metalbus):$(in_root id -g metalbus)"
as_root install -d -o "${owner%:*}" -g "${owner#*:}" -m 0700 "$root/var/lib/metalbus"
for f in identity.key admin.token enroll.token; do
  as_root install -o "${owner%:*}" -g "${owner#*:}" -m 0600 "$fixture/$f" "$root/var/lib/metalbus/$f"
done
as_root cp "$fixture/metalbus.redb" "$root/tmp/backup.redb"
in_root metalbus restore /tmp/backup.redb --data-dir /var/lib/metalbus
mode=$(as_root stat -c %u:%g:%a "$root/var/lib/metalbus/metalbus.redb")
[ "$mode" = "$owner:600" ] || fail "the restored store is $mode (uid:gid:mode), not $owner:600"
read -r mqtt_port http_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
# Not through as_root: a function run with & is a subshell, and $! would be its pid.
sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot --userspec=metalbus:metalbus "$root" \
  metalbus serve --config /etc/metalbus/controller.toml \
  --mqtt-listen "127.0.0.1:$mqtt_port" --http-listen "127.0.0.1:$http_port" >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; fail "metalbus serve exited"; }
  sleep 0.5
done
listed=$(in_root metalbus nodes list --api "http://127.0.0.1:$http_port" -o json) ||
  { cat "$work/serve.log" >&2; fail "metalbus nodes list failed"; }
want=$(python3 -c 'import json,sys; print(sorted(n["name"] for n in json.load(open(sys.argv[1]))["nodes"]))' "$fixture/expected.json")
got=$(python3 -c 'import json,sys; print(sorted(n["name"] for n in json.load(sys.stdin)))' <<<"$listed")
[ "$want" = "$got" ] || fail "the restored store lists $got, the fixture had $want"
kill -TERM "$serve_pid"
wait "$serve_pid" || { cat "$work/serve.log" >&2; serve_pid=; fail "metalbus serve did not stop cleanly"; }
serve_pid=
as_root rm -rf "$root/var/lib/metalbus"

step "reinstall (the upgrade path of the maintainer scripts); an edited conffile is kept"
echo "# edited by the operator" | as_root tee -a "$root/etc/metalbus/controller.toml" >/dev/null
in_root dpkg -i /tmp/metalbus.deb /tmp/metalbus-agent.deb
installed_checks
as_root grep -q "edited by the operator" "$root/etc/metalbus/controller.toml" ||
  fail "the edited controller.toml was replaced on upgrade"

# What a running box would have: a store, a backup, an enrolled agent and its token.
as_root install -d -o "$(in_root id -u metalbus)" -m 0700 "$root/var/lib/metalbus"
as_root touch "$root/var/lib/metalbus/metalbus.redb"
as_root install -d -m 0700 "$root/var/lib/metalbus-backups" "$root/var/lib/metalbus-agent"
as_root touch "$root/var/lib/metalbus-backups/metalbus-20261129T030000Z.redb"
as_root touch "$root/var/lib/metalbus-agent/credential.json" "$root/etc/metalbus/enroll.token"

step "remove: the programs go, the configuration and the data stay"
in_root dpkg -r metalbus metalbus-agent
must_not_exist /usr/bin/metalbus /usr/bin/metalbus-agent /usr/lib/systemd/system/metalbus.service \
  /usr/share/man/man1/metalbus.1.gz
must_exist "${conffiles[@]}" /var/lib/metalbus/metalbus.redb /var/lib/metalbus-agent/credential.json
in_root getent passwd metalbus >/dev/null || fail "remove deleted the user"

step "purge: everything the packages made goes; backups stay"
in_root dpkg -P metalbus metalbus-agent
must_not_exist /etc/metalbus /var/lib/metalbus /var/lib/metalbus-agent
! in_root getent passwd metalbus >/dev/null || fail "purge left the user metalbus"
! in_root getent group metalbus >/dev/null || fail "purge left the group metalbus"
left=$(as_root find "$root/etc/systemd" "$root/usr/lib/systemd" "$root/var/lib/systemd" \
  "$root/usr/share/man" "$root/usr/share/doc" "$root/usr/share/metalbus" -name '*metalbus*' 2>/dev/null || true)
[ -z "$left" ] || fail "purge left: $left"
must_exist /var/lib/metalbus-backups/metalbus-20261129T030000Z.redb
in_root dpkg-query -W metalbus metalbus-agent >/dev/null 2>&1 && fail "dpkg still knows the packages"

step "ok: $(basename "$controller_deb") and $(basename "$agent_deb")"
