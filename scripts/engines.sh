#!/usr/bin/env bash
# Makes sure every engine the test suites need is up, starting (and on a fresh Debian machine,
# installing) whatever is missing, then prints the variables the tests read:
#
#   eval "$(scripts/engines.sh)"       # exports ONEPHASE_TEST_* into this shell
#
# Idempotent and quick when everything already runs: each engine is probed first and touched
# only if it does not answer. Status goes to stderr; only `export` lines go to stdout.
#
# Engines: PostgreSQL, a primary with two streaming replicas (scripts/pg-replica.sh, on
# 5434-5436), a second PostgreSQL cluster of the project's own with prepared
# transactions enabled (the lab's two-phase commit scenario; `pg_createcluster` on 127.0.0.1:5433,
# so the shared server is never reconfigured), Redis, NATS with JetStream, RabbitMQ (restarted with the machine's own
# commands when down, installed from Debian's packages when absent), etcd 3.4 (Debian's
# etcd-server, run on loopback) and tansu, a Kafka-compatible broker (`cargo install tansu
# --features dynostore`, run with in-memory storage on 127.0.0.1:9092).
#
# A variable already set in the environment (say ONEPHASE_TEST_POSTGRES_URL pointing at another
# host) is respected: that engine is never started here, and the tests check that it answers.
#
# Installing needs root and apt-get; everything else runs as any user.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Data and logs of the engines this script starts (outside target/, which `cargo clean` empties).
state_dir=${ONEPHASE_ENGINES_DIR:-${TMPDIR:-/tmp}/onephase-engines}
mkdir -p "$state_dir"

TANSU_VERSION=0.6.0

script_name=engines
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

# port_open HOST PORT: true when something accepts a TCP connection within a second.
port_open() { timeout 1 bash -c ">/dev/tcp/$1/$2" 2>/dev/null; }

# wait_for NAME SECONDS CHECK...: runs CHECK every half second until it succeeds or time runs out.
wait_for() {
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || die "$name did not come up within ${seconds}s (logs: $state_dir)"
    sleep 0.5
  done
}

started=()

# --- PostgreSQL ---------------------------------------------------------------------------
pg_url_default="postgres://postgres@127.0.0.1:5432/test"
pg_ok() { psql "${ONEPHASE_TEST_POSTGRES_URL:-$pg_url_default}" -Atqc 'SELECT 1' >/dev/null 2>&1; }
ensure_postgres() {
  if [[ -n ${ONEPHASE_TEST_POSTGRES_URL:-} ]]; then
    pg_ok || die "ONEPHASE_TEST_POSTGRES_URL=$ONEPHASE_TEST_POSTGRES_URL does not answer"
    return
  fi
  pg_ok && return
  if ! command -v pg_ctlcluster >/dev/null; then
    install_packages postgresql postgresql-client
  fi
  local version
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -1)
  [[ -n $version ]] || die "PostgreSQL is installed but has no cluster in /etc/postgresql"
  if ! port_open 127.0.0.1 5432; then
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2
    started+=(postgresql)
    wait_for PostgreSQL 30 port_open 127.0.0.1 5432
  fi
  if ! pg_ok; then
    # A fresh Debian cluster asks for passwords over TCP; the tests use trust on loopback,
    # as the project's machines do.
    local hba=/etc/postgresql/$version/main/pg_hba.conf
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      say "allowing trust authentication on loopback in $hba"
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
      pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
      sleep 1
    fi
    if ! psql -h 127.0.0.1 -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'test'" postgres | grep -q 1; then
      say "creating database test"
      psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE test' postgres >&2
    fi
  fi
  pg_ok || die "PostgreSQL runs but $pg_url_default does not answer"
}

# --- PostgreSQL with prepared transactions -------------------------------------------------
# The lab's two-phase commit scenario needs `max_prepared_transactions > 0`, which a default
# server (and the shared one) has at 0. A cluster of its own on another port, made once.
pg2pc_url_default="postgres://postgres@127.0.0.1:5433/postgres"
pg2pc_ok() {
  local prepared
  prepared=$(psql "${ONEPHASE_TEST_POSTGRES_2PC_URL:-$pg2pc_url_default}" -Atqc 'SHOW max_prepared_transactions' 2>/dev/null) || return 1
  [[ $prepared =~ ^[0-9]+$ ]] && ((prepared > 0))
}
ensure_postgres_2pc() {
  if [[ -n ${ONEPHASE_TEST_POSTGRES_2PC_URL:-} ]]; then
    pg2pc_ok || die "ONEPHASE_TEST_POSTGRES_2PC_URL=$ONEPHASE_TEST_POSTGRES_2PC_URL does not answer, or has max_prepared_transactions = 0"
    return
  fi
  pg2pc_ok && return
  port_open 127.0.0.1 5433 &&
    die "something listens on 127.0.0.1:5433 but is not a PostgreSQL with max_prepared_transactions > 0 (set ONEPHASE_TEST_POSTGRES_2PC_URL to one)"
  command -v pg_createcluster >/dev/null ||
    die "pg_createcluster (Debian's postgresql-common) is needed to make the prepared-transactions cluster; or set ONEPHASE_TEST_POSTGRES_2PC_URL to a server with max_prepared_transactions > 0"
  local version
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -1)
  [[ -n $version ]] || die "PostgreSQL is installed but has no version in /etc/postgresql"
  if [[ ! -d /etc/postgresql/$version/onephase2pc ]]; then
    [[ $(id -u) == 0 ]] || die "need root to create the PostgreSQL cluster $version/onephase2pc"
    say "creating PostgreSQL cluster $version/onephase2pc on 127.0.0.1:5433 (max_prepared_transactions = 64)"
    pg_createcluster "$version" onephase2pc --port 5433 \
      -o max_prepared_transactions=64 -o max_connections=200 \
      -- --auth-host=trust --auth-local=trust >&2
  fi
  say "starting PostgreSQL cluster $version/onephase2pc"
  pg_ctlcluster --skip-systemctl-redirect "$version" onephase2pc start >&2
  started+=(postgresql-2pc)
  wait_for "PostgreSQL (prepared transactions)" 30 pg2pc_ok
}

# --- PostgreSQL primary and streaming replicas --------------------------------------------
# The replica suites pause, delay and promote replicas: a primary (5434) and two replicas
# (5435, 5436) of the project's own, made by scripts/pg-replica.sh.
pg_replicas_default="postgres://postgres@127.0.0.1:5434/postgres,postgres://postgres@127.0.0.1:5435/postgres,postgres://postgres@127.0.0.1:5436/postgres"
ensure_postgres_replicas() {
  if [[ -n ${ONEPHASE_TEST_POSTGRES_REPLICAS:-} ]]; then return; fi
  "$repo/scripts/pg-replica.sh" all || die "the PostgreSQL replica clusters could not be made"
}

# --- Redis --------------------------------------------------------------------------------
ensure_redis() {
  if [[ -n ${ONEPHASE_TEST_REDIS_URL:-} ]]; then return; fi
  port_open 127.0.0.1 6379 && return
  command -v redis-server >/dev/null || install_packages redis-server
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2
  started+=(redis)
  wait_for Redis 20 port_open 127.0.0.1 6379
}

# --- NATS with JetStream ------------------------------------------------------------------
nats_js_ok() {
  local info
  # shellcheck disable=SC2016 # the inner shell expands $line
  info=$(timeout 1 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222; read -r line <&3; echo "$line"' 2>/dev/null) || return 1
  [[ $info == *'"jetstream":true'* ]]
}
ensure_nats() {
  if [[ -n ${ONEPHASE_TEST_NATS_URL:-} ]]; then return; fi
  nats_js_ok && return
  port_open 127.0.0.1 4222 && die "a NATS server runs on 127.0.0.1:4222 without JetStream; restart it with -js"
  command -v nats-server >/dev/null || install_packages nats-server
  say "starting NATS with JetStream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l "$state_dir/nats-server.log" >&2
  started+=(nats)
  wait_for "NATS JetStream" 20 nats_js_ok
}

# --- RabbitMQ -----------------------------------------------------------------------------
ensure_rabbitmq() {
  if [[ -n ${ONEPHASE_TEST_AMQP_URL:-} ]]; then return; fi
  port_open 127.0.0.1 5672 && return
  command -v rabbitmq-server >/dev/null || install_packages rabbitmq-server
  say "starting RabbitMQ"
  rabbitmq-server -detached >&2
  started+=(rabbitmq)
  wait_for RabbitMQ 90 port_open 127.0.0.1 5672
}

# --- etcd ---------------------------------------------------------------------------------
etcd_ok() { curl -fsS --max-time 1 http://127.0.0.1:2379/health 2>/dev/null | grep -q '"health":"true"'; }
ensure_etcd() {
  if [[ -n ${ONEPHASE_TEST_ETCD_URL:-} ]]; then return; fi
  etcd_ok && return
  command -v curl >/dev/null || install_packages curl ca-certificates
  command -v etcd >/dev/null || install_packages etcd-server
  port_open 127.0.0.1 2379 && die "something listens on 127.0.0.1:2379 but is not a healthy etcd"
  say "starting etcd on 127.0.0.1:2379"
  # etcd 3.4 refuses to start on architectures other than amd64 and ppc64le unless this
  # variable names the architecture; Debian builds it for more.
  ETCD_UNSUPPORTED_ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64) \
    setsid nohup etcd --name onephase-test --data-dir "$state_dir/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster onephase-test=http://127.0.0.1:2380 \
    >"$state_dir/etcd.log" 2>&1 </dev/null &
  started+=(etcd)
  wait_for etcd 30 etcd_ok
}

# --- Kafka-compatible broker (tansu) ------------------------------------------------------
ensure_kafka() {
  if [[ -n ${ONEPHASE_TEST_KAFKA_BROKERS:-} ]]; then return; fi
  port_open 127.0.0.1 9092 && return
  local tansu
  tansu=$(command -v tansu || true)
  if [[ -z $tansu && -x ${CARGO_HOME:-$HOME/.cargo}/bin/tansu ]]; then
    tansu=${CARGO_HOME:-$HOME/.cargo}/bin/tansu
  fi
  if [[ -z $tansu ]]; then
    command -v cargo >/dev/null || die "cargo is needed to build the tansu broker"
    command -v cc >/dev/null || install_packages build-essential
    say "building the tansu broker $TANSU_VERSION (cargo install, several minutes, once per machine)"
    cargo install --locked --quiet tansu --version "$TANSU_VERSION" --features dynostore >&2
    tansu=${CARGO_HOME:-$HOME/.cargo}/bin/tansu
  fi
  say "starting tansu on 127.0.0.1:9092 (in-memory storage)"
  setsid nohup "$tansu" broker --storage-engine memory://tansu/ \
    --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    >"$state_dir/tansu.log" 2>&1 </dev/null &
  started+=(tansu)
  wait_for tansu 30 port_open 127.0.0.1 9092
}

ensure_postgres
ensure_postgres_2pc
ensure_postgres_replicas
ensure_redis
ensure_nats
ensure_rabbitmq
ensure_etcd
ensure_kafka

if ((${#started[@]})); then
  say "started: ${started[*]}"
else
  say "every engine was already up"
fi

cat <<EOF
export ONEPHASE_TEST_POSTGRES_URL=${ONEPHASE_TEST_POSTGRES_URL:-$pg_url_default}
export ONEPHASE_TEST_POSTGRES_2PC_URL=${ONEPHASE_TEST_POSTGRES_2PC_URL:-$pg2pc_url_default}
export ONEPHASE_TEST_POSTGRES_REPLICAS=${ONEPHASE_TEST_POSTGRES_REPLICAS:-$pg_replicas_default}
export ONEPHASE_TEST_REDIS_URL=${ONEPHASE_TEST_REDIS_URL:-redis://127.0.0.1:6379}
export ONEPHASE_TEST_NATS_URL=${ONEPHASE_TEST_NATS_URL:-nats://127.0.0.1:4222}
export ONEPHASE_TEST_AMQP_URL=${ONEPHASE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export ONEPHASE_TEST_ETCD_URL=${ONEPHASE_TEST_ETCD_URL:-http://127.0.0.1:2379}
export ONEPHASE_TEST_KAFKA_BROKERS=${ONEPHASE_TEST_KAFKA_BROKERS:-127.0.0.1:9092}
EOF
