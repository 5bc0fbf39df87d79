#!/usr/bin/env bash
# Every scifaas test: formatting and lints, the Rust tests (unit tests next to the code,
# integration tests that drive the real binary, real python3 workers and real sockets
# on loopback), then the Python tests (the worker program, the SDK against a real
# service and endpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n== %s\n' "$*"; }

step "python environment"
python=$(scripts/python-env.sh)

# As root (CI), the tests that need real containers run and must not skip: build their
# images (cached in target/test-images). Elsewhere they skip with a message.
if [ "$(id -u)" = 0 ]; then
  step "container test images"
  SCIFAAS_TEST_IMAGES=$(scripts/build-test-image.sh)
  export SCIFAAS_TEST_IMAGES SCIFAAS_REQUIRE_CONTAINERS=1

  # A real Slurm (with its PBS-compatible qsub/qstat/qdel) on emulated nodes of this
  # machine; the Slurm tests must not skip.
  step "slurm"
  SCIFAAS_SLURM_NODES=${SCIFAAS_SLURM_NODES:-3} scripts/slurm-up.sh
  export SCIFAAS_REQUIRE_SLURM=1
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --workspace --quiet

step "python tests (worker, SDK, benchmark tables)"
cargo build --quiet -p scifaas
SCIFAAS_BIN="$PWD/target/debug/scifaas" "$python" -m pytest -q worker/python sdk/python/tests bench

step "all tests passed"
