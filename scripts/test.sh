#!/usr/bin/env bash
# The whole test suite, with every engine: the README's second command, and what CI runs.
#
#   scripts/test.sh                 # lints, then every test tier, every engine mandatory
#   scripts/test.sh -E 'test(kafka)'  # extra arguments go to `cargo nextest run`
#
# On a fresh Debian machine (as root) it first installs what the build needs (a C toolchain
# for SQLite and librdkafka, protoc for etcd-client, faketime, stress-ng, iproute2, promtool,
# Node.js for the TypeScript example, Chromium for the dashboard's browser test, valgrind for
# the instruction-count guard),
# cargo-nextest, and the engines (scripts/engines.sh). After the tests, the crash tests run
# again under stress-ng on every core. The torture tests make network namespaces, so the suite
# runs as root (CI does). ONEPHASE_SKIP_LINT=1 skips rustfmt, clippy and rustdoc.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
script_name="test"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
started=$SECONDS

command -v cargo >/dev/null || die "cargo is not installed: install Rust from https://rustup.rs"
if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
  install_packages build-essential
fi
command -v pkg-config >/dev/null || install_packages pkg-config
if ! command -v protoc >/dev/null || [[ ! -e /usr/include/google/protobuf/descriptor.proto ]]; then
  install_packages protobuf-compiler libprotobuf-dev
fi
# faketime skews the clocks of the rate-limit tests' worker processes; stress-ng starves the
# crash tests of CPU; ip (iproute2) makes the torture tests' network namespaces.
command -v faketime >/dev/null || install_packages faketime
command -v stress-ng >/dev/null || install_packages stress-ng
command -v ip >/dev/null || install_packages iproute2
# promtool checks and unit-tests the Prometheus alert rules in deploy/.
command -v promtool >/dev/null || install_packages prometheus
# The OpenAPI document is checked by the ecosystem's reference validator (Python's
# openapi-spec-validator), in a virtual environment of its own, made once.
tools_dir=${ONEPHASE_ENGINES_DIR:-${TMPDIR:-/tmp}/onephase-engines}/tools
validator=$tools_dir/venv/bin/openapi-spec-validator
if [[ ! -x $validator ]]; then
  command -v python3 >/dev/null || install_packages python3
  python3 -c 'import venv, ensurepip' 2>/dev/null || install_packages python3-venv
  say "installing openapi-spec-validator (once)"
  mkdir -p "$tools_dir"
  python3 -m venv "$tools_dir/venv" >&2
  "$tools_dir/venv/bin/pip" install --quiet --disable-pip-version-check openapi-spec-validator >&2
fi
export ONEPHASE_OPENAPI_VALIDATOR=$validator
# The quickstarts in examples/ run end to end (crates/cli/tests/examples.rs): Python with its
# requirements in a virtual environment of its own, TypeScript built from its lock file.
examples_venv=$tools_dir/examples-venv
if ! cmp -s examples/python/requirements.txt "$examples_venv/requirements.txt" 2>/dev/null; then
  say "installing the Python example's requirements"
  rm -rf "$examples_venv"
  python3 -m venv "$examples_venv" >&2
  "$examples_venv/bin/pip" install --quiet --disable-pip-version-check \
    -r examples/python/requirements.txt >&2
  cp examples/python/requirements.txt "$examples_venv/requirements.txt"
fi
export ONEPHASE_EXAMPLES_PYTHON=$examples_venv/bin/python
command -v npm >/dev/null || install_packages nodejs npm
say "building the TypeScript example"
(cd examples/typescript && npm ci --no-audit --no-fund --loglevel=error >&2 && npm run --silent build >&2)
export ONEPHASE_EXAMPLES_NODE=$(command -v node)
# The dashboard's browser test (crates/cli/tests/browser.rs): Debian's Chromium, driven by
# Playwright's library from the test's lock file (it never downloads a browser of its own).
command -v chromium >/dev/null || install_packages chromium
(cd crates/cli/tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2)
export ONEPHASE_CHROMIUM=$(command -v chromium)
export ONEPHASE_BROWSER_NODE=$ONEPHASE_EXAMPLES_NODE
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked --quiet cargo-nextest >&2
fi

# An assignment, so that a failure of the script stops this one (set -e).
engine_env=$("$repo/scripts/engines.sh")
eval "$engine_env"
export ONEPHASE_REQUIRE_ENGINES=1

if [[ ${ONEPHASE_SKIP_LINT:-0} != 1 ]]; then
  say "rustfmt"
  cargo fmt --all --check
  say "clippy"
  cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
  say "rustdoc"
  RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet
fi

say "tests (every engine required)"
cargo nextest run --workspace --all-features --profile ci "$@"
if (($# == 0)); then
  # The crash tests again, with a competing load on every core: a guarantee that holds only
  # when the machine is idle depends on timing, and the torture tests exist to find that.
  say "crash tests under CPU starvation (stress-ng, $(($(nproc) * 2)) workers)"
  stress-ng --cpu "$(($(nproc) * 2))" --timeout 0 --quiet &
  stress=$!
  trap 'kill "$stress" 2>/dev/null || true' EXIT
  cargo nextest run --workspace --all-features --profile ci \
    -E 'binary(crash) | binary(saga_crash) | binary(webhook_crash)'
  kill "$stress"
  wait "$stress" 2>/dev/null || true
  trap - EXIT
  say "doc tests"
  cargo test --workspace --all-features --doc --quiet
  say "instruction counts of the hot paths (callgrind, against bench/instructions.json)"
  scripts/instructions.sh >&2
  say "deployment files: alert rules (promtool), systemd unit (systemd-analyze)"
  promtool check rules deploy/prometheus/onephase-rules.yml >&2
  (cd deploy/prometheus && promtool test rules onephase-rules.test.yml >&2)
  if command -v systemd-analyze >/dev/null; then
    unit_dir=$(mktemp -d)
    sed "s#/usr/local/bin/onephase#$repo/target/debug/onephase#g" deploy/onephase.service \
      >"$unit_dir/onephase.service"
    systemd-analyze verify "$unit_dir/onephase.service"
    rm -rf "$unit_dir"
  fi
fi
say "passed in $((SECONDS - started)) s"
