#!/usr/bin/env bash
# A PostgreSQL primary and streaming replicas of the project's own, for the replica suites:
#
#   scripts/pg-replica.sh              # primary on 5434, replicas on 5435 and 5436
#   scripts/pg-replica.sh standby 5436 # (re)make the replica on 5436 a streaming standby
#
# The clusters are Debian clusters (`pg_createcluster`) of the newest installed version:
# `onephase_primary` (127.0.0.1:5434), `onephase_replica` (5435, the one the lag tests pause
# and delay) and `onephase_promote` (5436, the one the failover test promotes). A replica is
# a `pg_basebackup -R` of the primary. Idempotent and quick when all three run as they should:
# a replica that was promoted, or stopped following the primary, is made again from a fresh
# base backup (about a second for the small test cluster). The shared server on 5432 is never
# touched. Needs root (the clusters belong to the postgres user). Status goes to stderr.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
script_name=pg-replica
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

PRIMARY_PORT=5434
declare -A STANDBY_NAMES=([5435]=onephase_replica [5436]=onephase_promote)

command -v pg_createcluster >/dev/null ||
  die "pg_createcluster (Debian's postgresql-common) is needed for the replica clusters"
version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -1)
[[ -n $version ]] || die "PostgreSQL is installed but has no version in /etc/postgresql"
bin=/usr/lib/postgresql/$version/bin

# sql PORT QUERY: one value from the cluster on PORT, or nothing when it does not answer.
sql() { psql "postgres://postgres@127.0.0.1:$1/postgres" -Atqc "$2" 2>/dev/null; }

wait_until() {
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || die "$what within ${seconds}s (logs: /var/log/postgresql)"
    sleep 0.3
  done
}

answers() { [[ $(sql "$1" 'SELECT 1') == 1 ]]; }
in_recovery() { [[ $(sql "$1" 'SELECT pg_is_in_recovery()') == t ]]; }
streaming() { [[ $(sql "$1" "SELECT status FROM pg_stat_wal_receiver") == streaming ]]; }

ensure_primary() {
  if answers $PRIMARY_PORT && ! in_recovery $PRIMARY_PORT; then return; fi
  [[ $(id -u) == 0 ]] || die "need root to create or start the PostgreSQL cluster $version/onephase_primary"
  if [[ ! -d /etc/postgresql/$version/onephase_primary ]]; then
    say "creating PostgreSQL cluster $version/onephase_primary on 127.0.0.1:$PRIMARY_PORT"
    # wal_keep_size keeps enough WAL for a replica whose replay a test paused; no slot, so a
    # replica removed for good never fills the disk.
    pg_createcluster "$version" onephase_primary --port $PRIMARY_PORT \
      -o wal_level=replica -o max_wal_senders=10 \
      -o wal_keep_size=512MB -o max_connections=200 \
      -- --auth-host=trust --auth-local=trust >&2
  fi
  say "starting PostgreSQL cluster $version/onephase_primary"
  pg_ctlcluster --skip-systemctl-redirect "$version" onephase_primary start >&2 ||
    die "the primary did not start (log: /var/log/postgresql/postgresql-$version-onephase_primary.log)"
  wait_until "the primary on $PRIMARY_PORT did not answer" 30 answers $PRIMARY_PORT
  in_recovery $PRIMARY_PORT && die "the cluster on $PRIMARY_PORT is a standby; drop it (pg_dropcluster --stop $version onephase_primary) and run this again"
  return 0
}

# ensure_standby PORT: a streaming standby of the primary on PORT, made again if it is not one.
ensure_standby() {
  local port=$1 name=${STANDBY_NAMES[$1]:-}
  [[ -n $name ]] || die "no replica cluster is defined for port $port (5435 or 5436)"
  if answers "$port" && in_recovery "$port" && streaming "$port"; then return; fi
  [[ $(id -u) == 0 ]] || die "need root to make the replica $version/$name"
  if [[ ! -d /etc/postgresql/$version/$name ]]; then
    say "creating PostgreSQL cluster $version/$name on 127.0.0.1:$port"
    pg_createcluster "$version" "$name" --port "$port" \
      -o hot_standby=on -o max_connections=200 \
      -- --auth-host=trust --auth-local=trust >&2
  fi
  local data
  data=$(sed -n "s/^data_directory *= *'\(.*\)'.*/\1/p" "/etc/postgresql/$version/$name/postgresql.conf")
  [[ -n $data && $data == /var/lib/postgresql/* ]] || die "cannot find the data directory of $name"
  say "making $name a streaming replica of 127.0.0.1:$PRIMARY_PORT (base backup)"
  pg_ctlcluster --skip-systemctl-redirect "$version" "$name" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$data"
  install -d -o postgres -g postgres -m 700 "$data"
  runuser -u postgres -- "$bin/pg_basebackup" -h 127.0.0.1 -p $PRIMARY_PORT -U postgres \
    -D "$data" -R -X stream -c fast >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start >&2
  wait_until "the replica on $port did not start streaming" 30 streaming "$port"
}

case ${1:-all} in
  all)
    ensure_primary
    ensure_standby 5435
    ensure_standby 5436
    ;;
  standby)
    [[ -n ${2:-} ]] || die "usage: $0 standby PORT"
    ensure_primary
    ensure_standby "$2"
    ;;
  *) die "usage: $0 [all | standby PORT]" ;;
esac
