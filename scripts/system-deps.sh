#!/usr/bin/env bash
# Install the system packages whose real servers channelgate's tests and demo start (Debian 12 / Ubuntu).
#
# Usage: scripts/system-deps.sh [GROUP...]      (no GROUP: all of them)
#   redis     redis-server                 nginx   nginx
#   bench     wrk                          ldap    slapd ldap-utils
#   postgres  postgresql-15 server         node    nodejs npm
#   browser   chromium                     oidc    node + `npm ci` of tests/components/oidc_provider
#   demo      curl (the demo prints curl commands; a test runs them)
#   container podman, runc, netavark, debootstrap (tests/deploy/test_container_build.py builds and runs the image)
#   python-venv  python3-venv (only when asked for by name: the Makefile's fallback when venv fails)
#
# Idempotent and fast when everything is present: apt-get runs only if a package is missing. Runs as root,
# or through sudo when available. Services are never started here; the tests start their own on free ports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OP_DIR="$ROOT/tests/components/oidc_provider"
ALL_GROUPS=(redis nginx bench ldap postgres node browser oidc demo container)

groups=("$@")
if ((${#groups[@]} == 0)); then
  groups=("${ALL_GROUPS[@]}")
fi

missing=()
want_postgres=0
want_oidc=0

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

need() {
  local package
  for package in "$@"; do
    installed "$package" || missing+=("$package")
  done
}

for group in "${groups[@]}"; do
  case "$group" in
    redis) need redis-server ;;
    nginx) need nginx ;;
    bench) need wrk ;;
    ldap) need slapd ldap-utils ;;
    postgres) [[ -x /usr/lib/postgresql/15/bin/initdb ]] || want_postgres=1 ;;
    node | oidc)
      command -v node >/dev/null || need nodejs
      command -v npm >/dev/null || need npm
      [[ "$group" == oidc ]] && want_oidc=1
      ;;
    browser) command -v chromium >/dev/null || need chromium ;;
    demo) command -v curl >/dev/null || need curl ;;
    # runc: podman's default runtime (crun) refuses these machines' hybrid cgroups; netavark, aardvark-dns and
    # iptables: the port publishing the test uses, named since recommends are not installed; the keyring: for
    # debootstrap of Debian on Ubuntu.
    container) need podman runc netavark aardvark-dns iptables debootstrap debian-archive-keyring ;;
    python-venv) need python3-venv ;;
    *)
      echo "system-deps: unknown group '$group' (known: ${ALL_GROUPS[*]} python-venv)" >&2
      exit 2
      ;;
  esac
done

if ((${#missing[@]} > 0 || want_postgres)); then
  sudo=()
  if ((EUID != 0)); then
    if ! command -v sudo >/dev/null; then
      echo "system-deps: need root (or sudo) to install: ${missing[*]} $([[ $want_postgres == 1 ]] && echo postgresql-15)" >&2
      exit 1
    fi
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -q
  if ((want_postgres)); then
    # Debian 12 ships PostgreSQL 15; where it does not exist the newest packaged server is used instead
    # (tests/components/postgres_server.py falls back to it).
    if apt-cache show postgresql-15 >/dev/null 2>&1; then
      missing+=(postgresql-15)
    else
      missing+=(postgresql)
    fi
  fi
  # Deduplicate (nodejs/npm may be asked for by both node and oidc).
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "system-deps: installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ((want_oidc)) && [[ ! -f "$OP_DIR/node_modules/oidc-provider/package.json" ]]; then
  echo "system-deps: npm ci in $OP_DIR"
  (cd "$OP_DIR" && npm ci --no-audit --no-fund)
fi
