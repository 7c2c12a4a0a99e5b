#!/usr/bin/env bash
# Brings up a working appliance on this machine: an array controller and several board daemons
# running android-sim containers on the local Docker engine, a demo deployment, and the commands
# to claim an instance and watch its stream. Ctrl-C stops everything and removes its containers.
#
#   deploy/appliance-up.sh            start (state kept in .appliance/)
#   deploy/appliance-up.sh --reset    forget the previous state first
#
# Environment: APPLIANCE_BOARDS (default 3), APPLIANCE_POOL (default 6).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.appliance"
boards=${APPLIANCE_BOARDS:-3}
pool=${APPLIANCE_POOL:-6}
controller_port=7200
if [ "${1:-}" = "--reset" ]; then rm -rf "$state"; fi
mkdir -p "$state"

say() { printf '\033[1m%s\033[0m\n' "$*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

say "building the android-sim image and the binaries (first time: a few minutes)"
"$root/images/build.sh" --no-smoke >/dev/null
(cd "$root" && cargo build --quiet -p array-controller -p board-daemon)
bin="$root/target/debug"

pids=()
cleanup() {
  trap - INT TERM EXIT
  say "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for i in $(seq 1 "$boards"); do
    ids=$(docker ps -aq --filter "label=appliance.board=demo-board-$i")
    [ -n "$ids" ] && docker rm -f $ids >/dev/null
  done
  say "stopped; state kept in $state"
}
trap cleanup INT TERM EXIT

"$bin/array-controller" --config "$root/deploy/examples/controller.toml" --data-dir "$state/controller" \
  --listen "127.0.0.1:$controller_port" >"$state/controller.log" 2>&1 &
pids+=($!)
url="http://127.0.0.1:$controller_port"
for _ in $(seq 1 50); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.2; done
op=$(cat "$state/controller/operator-token")
broker=$(cat "$state/controller/broker-token")

join=$(curl -sf -X POST -H "Authorization: Bearer $op" -H 'content-type: application/json' -d '{"ttl_s":600}' \
  "$url/v1/join-tokens" | json 'd["token"]')
cpus=$(nproc)
for i in $(seq 1 "$boards"); do
  "$bin/board-daemon" --board-id "demo-board-$i" --data-dir "$state/board-$i" --listen "127.0.0.1:$((7300 + i))" \
    --cpus "$(( (i - 1) % cpus ))" --host-ports "$((21000 + i * 100))-$((21099 + i * 100))" \
    --controller-url "$url" --join-token "$join" --advertise-address 127.0.0.1 >"$state/board-$i.log" 2>&1 &
  pids+=($!)
done

curl -sf -X PUT -H "Authorization: Bearer $op" -H 'content-type: application/json' "$url/v1/deployments/demo-game" -d "{
  \"game\": \"demo-game\", \"version\": \"1.0\",
  \"images\": {\"x86_64\": \"appliance/android-sim:latest\", \"aarch64\": \"appliance/android-sim:latest\"},
  \"profile\": {\"millicores\": 500, \"memory_mib\": 256},
  \"launch\": \"com.example.demogame/.MainActivity\",
  \"env\": {\"SIM_BOOT_SECONDS\": \"3\"},
  \"pool_size\": $pool
}" >/dev/null

say "waiting for $pool instances to boot Android"
ready=0
for _ in $(seq 1 120); do
  ready=$(curl -sf -H "Authorization: Bearer $op" "$url/v1/deployments/demo-game" | json 'd["instances"].get("ready", 0)')
  [ "$ready" -ge "$pool" ] && break
  sleep 1
done

cat <<INFO

  controller   $url            (log: $state/controller.log)
  operator     export OP=$op
  broker       export BROKER=$broker
  boards       $(curl -sf -H "Authorization: Bearer $op" "$url/v1/boards" | json '" ".join(b["id"] + "(" + b["state"] + ")" for b in d)')
  deployment   demo-game: $ready of $pool instances ready

  Claim an instance for a player (the same key always returns the same instance):
    curl -s -X POST -H "Authorization: Bearer $broker" -H 'content-type: application/json' \\
      -d '{"deployment":"demo-game","key":"player-1"}' $url/v1/claims

  Connect to its stream (put the claim's ports.stream in PORT) and read a few frames:
    exec 3<>/dev/tcp/127.0.0.1/PORT; echo 'HELLO player-1' >&3; head -c 300 <&3; exec 3<&-

  End the session (the instance is recreated and comes back ready):
    curl -s -X DELETE -H "Authorization: Bearer $broker" $url/v1/claims/player-1

  Watch every state change as it happens:
    curl -sN -H "Authorization: Bearer $op" $url/v1/events

  Ctrl-C stops the appliance.
INFO
wait
