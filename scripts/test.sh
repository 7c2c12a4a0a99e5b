#!/usr/bin/env bash
# The test command: builds the android-sim image and every binary, then runs every test of the
# workspace (unit, property, and end-to-end tests against the real Docker engine). Extra
# arguments go to `cargo test`, e.g. `scripts/test.sh -p e2e -- --nocapture`.
# Works from any directory. Needs Docker running and Debian's adb (`apt-get install adb`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

log() { printf '[test.sh] %s\n' "$*"; }

command -v docker >/dev/null || { echo "[test.sh] ERROR: the docker CLI is missing" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "[test.sh] ERROR: the Docker engine is not running" >&2; exit 1; }
command -v adb >/dev/null || { echo "[test.sh] ERROR: adb is missing: apt-get install adb" >&2; exit 1; }

# The end-to-end tests check the image with Debian's adb themselves, so the script's own smoke
# test is skipped here.
log "building the android-sim image"
images/build.sh --no-smoke

# End-to-end tests start the binaries as separate processes; `cargo test` alone does not build
# other packages' binaries.
log "building every binary"
cargo build --workspace --bins

log "running the tests"
exec cargo test --workspace "$@"
