#!/usr/bin/env bash
# Installs what the local stack needs and the machine may lack: PostgreSQL 15
# server headers and pgvector (built from Debian's own source package, because
# bookworm ships no pgvector), and any Debian package named as an argument
# (scripts/test: chromium). Idempotent: each step is skipped when done.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { printf '\033[1;34m[keel]\033[0m %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    $SUDO apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ! -x "$PG_BIN/postgres" ]; then
  log "installing PostgreSQL 15 server"
  apt_install postgresql-15 postgresql-contrib
fi

sharedir=$("$PG_BIN/pg_config" --sharedir)
if [ ! -f "$sharedir/extension/vector.control" ]; then
  log "building pgvector from Debian's source package (bookworm has no binary)"
  if ! dpkg -s postgresql-server-dev-15 >/dev/null 2>&1; then
    apt_install postgresql-server-dev-15 build-essential dpkg-dev
  fi
  # A private sources list so the machine's own apt configuration is untouched.
  apt_dir=$(mktemp -d)
  echo "deb-src http://deb.debian.org/debian trixie main" >"$apt_dir/trixie-src.list"
  apt_opts=(-o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$apt_dir/trixie-src.list" -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  $SUDO apt-get "${apt_opts[@]}" update -qq >/dev/null
  build_dir=$(mktemp -d)
  (cd "$build_dir" && apt-get "${apt_opts[@]}" source --download-only -qq pgvector >/dev/null \
    && dpkg-source -x --no-check pgvector_*.dsc src >/dev/null \
    && cd src && make -s PG_CONFIG="$PG_BIN/pg_config" >/dev/null 2>&1 \
    && $SUDO make -s install PG_CONFIG="$PG_BIN/pg_config" >/dev/null)
  rm -rf "$apt_dir" "$build_dir"
  log "pgvector $(grep default_version "$sharedir/extension/vector.control" | cut -d"'" -f2) installed"
fi

for package in "$@"; do
  if ! dpkg -s "$package" >/dev/null 2>&1; then
    log "installing $package"
    apt_install "$package"
  fi
done
