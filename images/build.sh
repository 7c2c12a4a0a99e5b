#!/usr/bin/env bash
# Builds appliance/android-sim:latest (a static android-sim binary in a FROM scratch image)
# and smoke-tests it with Debian's adb: boot property, activities, two containers, concurrent
# shells, the stream handshake. Idempotent; works from any directory.
#
#   images/build.sh              build, verify, smoke-test
#   images/build.sh --no-smoke   build and verify the binary only
#
# Environment: IMAGE (default appliance/android-sim:latest), SMOKE_ADB_PORT (15555),
# SMOKE_STREAM_PORT (18000), SMOKE_ADB_SERVER_PORT (15037, a private adb server so that
# any adb server already running on 5037 is left alone).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
image="${IMAGE:-appliance/android-sim:latest}"
target="$(uname -m)-unknown-linux-gnu"
smoke=1
case "${1:-}" in
  "") ;;
  --no-smoke) smoke=0 ;;
  *) echo "usage: $0 [--no-smoke]" >&2; exit 2 ;;
esac

log() { printf '[build.sh] %s\n' "$*"; }
die() { printf '[build.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# --- static binary ----------------------------------------------------------------------
# A separate target dir keeps these RUSTFLAGS from invalidating the main build cache.
# --target matters too: with it, RUSTFLAGS apply only to the binary, not to proc macros.
log "building android-sim for $target (static)"
(
  cd "$repo"
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$repo/target/static" \
    cargo build --release -p android-sim --target "$target"
)
binary="$repo/target/static/$target/release/android-sim"
[[ -x "$binary" ]] || die "expected binary at $binary"
description="$(file -b "$binary")"
case "$description" in
  *"statically linked"* | *"static-pie linked"*) log "binary is static: $description" ;;
  *) die "binary is not static: $description" ;;
esac

# --- image ------------------------------------------------------------------------------
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$here/android-sim/Dockerfile" "$context/Dockerfile"
cp "$binary" "$context/android-sim"
# Symbols are no use in a scratch image without a debugger; stripping the copy saves about
# 0.4 MB and leaves the cached build untouched.
if command -v strip >/dev/null; then strip "$context/android-sim"; fi
log "building image $image"
# Output is shown only on failure: the legacy builder (no buildx here) prints a deprecation
# banner on every run.
if ! out="$(docker build -q -t "$image" "$context" 2>&1)"; then
  printf '%s\n' "$out" >&2
  die "docker build failed"
fi

# --- smoke test -------------------------------------------------------------------------
if [[ "$smoke" == 1 ]]; then
  command -v adb >/dev/null || die "adb is missing: install Debian's adb (apt-get install adb)"
  adb_port="${SMOKE_ADB_PORT:-15555}"
  stream_port="${SMOKE_STREAM_PORT:-18000}"
  server_port="${SMOKE_ADB_SERVER_PORT:-15037}"
  names=(android-sim-smoke-1 android-sim-smoke-2)
  serials=("127.0.0.1:$adb_port" "127.0.0.1:$((adb_port + 1))")
  remove_containers() { docker rm -f "${names[@]}" >/dev/null 2>&1 || true; }
  trap 'remove_containers; adb -P "$server_port" kill-server >/dev/null 2>&1 || true; rm -rf "$context"' EXIT
  remove_containers # leftovers of an interrupted run

  adb -P "$server_port" start-server >/dev/null 2>&1
  for i in 0 1; do
    docker run -d --name "${names[$i]}" \
      -p "$((adb_port + i)):5555" -p "$((stream_port + i)):8000" \
      -e SIM_BOOT_SECONDS=2 -e "SIM_MODEL=smoke-$i" "$image" >/dev/null
  done
  started=$SECONDS

  sh_() { timeout 20 adb -P "$server_port" -s "$1" shell "$2"; }
  for serial in "${serials[@]}"; do
    # Docker's port proxy accepts before the container listens; retry until adb sees it.
    for _ in $(seq 1 50); do
      timeout 10 adb -P "$server_port" connect "$serial" | grep -q "connected to" && break
      sleep 0.2
    done
    timeout 20 adb -P "$server_port" -s "$serial" wait-for-device \
      || die "$serial never came online"
  done

  first="$(sh_ "${serials[0]}" "getprop sys.boot_completed")"
  [[ "$first" == 0 ]] || die "sys.boot_completed was '$first' before the 2 s boot delay"
  log "sys.boot_completed=0 during boot"
  for _ in $(seq 1 50); do
    [[ "$(sh_ "${serials[0]}" "getprop sys.boot_completed")" == 1 ]] && break
    sleep 0.2
  done
  [[ "$(sh_ "${serials[0]}" "getprop sys.boot_completed")" == 1 ]] || die "boot never completed"
  log "sys.boot_completed=1 after $((SECONDS - started)) s"

  [[ "$(sh_ "${serials[0]}" "pm clear com.example.game")" == Success ]] || die "pm clear"
  sh_ "${serials[0]}" "am start -W -n com.example.game/.MainActivity" | grep -q "Starting: Intent" \
    || die "am start"
  focus="$(sh_ "${serials[0]}" "dumpsys window | grep mCurrentFocus")"
  [[ "$focus" == *"com.example.game/.MainActivity"* ]] || die "foreground query gave '$focus'"
  log "pm clear, am start -n, dumpsys window | grep mCurrentFocus: ok"

  # Eight concurrent shells spread over both containers.
  outputs="$(mktemp -d -p "$context")"
  for i in $(seq 0 7); do
    sh_ "${serials[$((i % 2))]}" "echo shell-$i && getprop ro.product.model" >"$outputs/$i" &
  done
  wait
  for i in $(seq 0 7); do
    expected="$(printf 'shell-%s\nsmoke-%s' "$i" "$((i % 2))")"
    [[ "$(cat "$outputs/$i")" == "$expected" ]] || die "concurrent shell $i gave '$(cat "$outputs/$i")'"
  done
  log "8 concurrent shells on 2 containers: ok"

  exec 3<>"/dev/tcp/127.0.0.1/$stream_port"
  printf 'HELLO smoke\n' >&3
  IFS= read -r -t 5 reply <&3 || die "no answer from the stream port"
  exec 3<&-
  [[ "$reply" == "OK 720x1280@30 dpi=320" ]] || die "stream answered '$reply'"
  log "stream handshake: $reply"
fi

log "image $image: $(docker image inspect -f '{{.Id}}' "$image")"
