#!/usr/bin/env bash
# Brings up the whole appliance on this machine: a session broker, two regions (east, west)
# with one rack each (an array controller registered to the broker, and board daemons running
# android-sim containers on the local Docker engine), a demo game kept warm in both regions,
# a demo tenant and its API key, and the commands to place a player and watch its stream.
# Ctrl-C stops everything and removes its containers.
#
#   deploy/appliance-up.sh            start (state kept in .appliance/)
#   deploy/appliance-up.sh --reset    forget the previous state first
#
# Environment: APPLIANCE_BOARDS_PER_RACK (default 2), APPLIANCE_WARM (warm instances per
# region, default 2), APPLIANCE_TIMEOUT (seconds to wait for warm instances, default 300),
# APPLIANCE_STATE (the state directory, default .appliance/ in the repository).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="${APPLIANCE_STATE:-$root/.appliance}"
boards_per_rack=${APPLIANCE_BOARDS_PER_RACK:-2}
warm=${APPLIANCE_WARM:-2}
warm_timeout=${APPLIANCE_TIMEOUT:-300}
game=demo-game
tenant=demo

broker_port=7100
broker="http://127.0.0.1:$broker_port"
# One rack per region: rack id, region, controller port, and its uplink RTTs (ms) to the
# regions' probes (its own region close, the other far).
racks=(east-1 west-1)
declare -A region=([east-1]=east [west-1]=west)
declare -A controller_port=([east-1]=7200 [west-1]=7201)
declare -A uplinks=([east-1]="east=2 west=35" [west-1]="west=2 east=35")

case "${1:-}" in
  "") ;;
  --reset) rm -rf "$state" ;;
  *) echo "usage: $0 [--reset]" >&2; exit 2 ;;
esac
mkdir -p "$state"

say() { printf '\033[1m%s\033[0m\n' "$*"; }
die() {
  printf '\033[1;31merror: %s\033[0m\n' "$1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    printf -- '---- last lines of %s ----\n' "$2" >&2
    tail -n 20 "$2" >&2
    printf -- '---- end of %s ----\n' "$2" >&2
  fi
  exit 1
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# Every board id (their containers carry the Docker label appliance.board=<id>).
board_ids=()
for rack in "${racks[@]}"; do
  for b in $(seq 1 "$boards_per_rack"); do board_ids+=("$rack-board-$b"); done
done
remove_containers() {
  for id in "${board_ids[@]}"; do
    docker ps -aq --filter "label=appliance.board=$id" | xargs -r docker rm -f >/dev/null || true
  done
}

command -v python3 >/dev/null || die "python3 is needed (JSON)"
command -v curl >/dev/null || die "curl is needed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is it running? may this user use it?)"
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
all_ports=("$broker_port")
for rack in "${racks[@]}"; do all_ports+=("${controller_port[$rack]}"); done
for i in $(seq 1 "${#board_ids[@]}"); do all_ports+=($((7300 + i))); done
for port in "${all_ports[@]}"; do
  if port_in_use "$port"; then
    die "127.0.0.1:$port is already in use (another appliance-up.sh still running?)"
  fi
done

say "building the android-sim image and the binaries (first time: a few minutes)"
"$root/images/build.sh" --no-smoke >"$state/build.log" 2>&1 || die "images/build.sh failed" "$state/build.log"
(cd "$root" && cargo build --quiet -p session-broker -p array-controller -p board-daemon)
bin="$root/target/debug"

# Processes we started: pid -> name and log, so a death names its log.
pids=()
declare -A proc_name=() proc_log=()
start() { # start NAME LOG PROGRAM ARGS...
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  pids+=($!)
  proc_name[$!]=$name
  proc_log[$!]=$log
}
check_alive() {
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "${proc_name[$pid]} (pid $pid) exited" "${proc_log[$pid]}"
  done
}
# wait_for SECONDS WHAT LOG COMMAND...: runs COMMAND every half second until it succeeds; fails
# naming LOG when it does not within SECONDS or when one of our processes died.
wait_for() {
  local seconds=$1 what=$2 log=$3
  shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    check_alive
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not happen within ${seconds}s; see $log" "$log"
    sleep 0.5
  done
}

cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  say "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  remove_containers
  say "stopped; state kept in $state"
  exit "$rc"
}
trap 'exit 130' INT
trap 'exit 143' TERM
trap cleanup EXIT
remove_containers # leftovers of a run that was killed without its cleanup

# curl against the broker with the operator token; the answer's body on stdout, and on an error
# status the body on stderr and a non-zero exit.
api() { # api METHOD PATH [BODY]
  local out code
  out=$(mktemp)
  code=$(curl -sS -o "$out" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $op" \
    -H 'content-type: application/json' ${3:+-d "$3"} "$broker$2") || { rm -f "$out"; return 1; }
  if [ "${code:0:1}" != 2 ]; then
    echo "$1 $2 answered $code: $(cat "$out")" >&2
    rm -f "$out"
    return 1
  fi
  cat "$out"
  rm -f "$out"
}

# --- session broker ---------------------------------------------------------------------------
say "starting the session broker on $broker"
start broker "$state/broker.log" "$bin/session-broker" --listen "127.0.0.1:$broker_port" --data-dir "$state/broker"
wait_for 30 "the broker answering on $broker/healthz" "$state/broker.log" curl -sf "$broker/healthz"
wait_for 10 "the broker writing its operator token" "$state/broker.log" test -s "$state/broker/operator-token"
op=$(cat "$state/broker/operator-token")
for r in east west; do
  api PUT "/v1/regions/$r" "{\"description\": \"demo region $r\"}" >/dev/null || die "cannot create region $r" "$state/broker.log"
done

# --- racks: a controller registered to the broker, and its board daemons -------------------
cpus=$(nproc)
nboards=${#board_ids[@]}
board_cpus() { # board_cpus INDEX (0-based): a share of this machine's CPUs, e.g. "2,3" or "0"
  local i=$1
  if [ "$cpus" -ge "$nboards" ]; then
    local per=$((cpus / nboards)) list="" c
    for c in $(seq $((i * per)) $((i * per + per - 1))); do list="$list${list:+,}$c"; done
    echo "$list"
  else
    echo $((i % cpus))
  fi
}
b=0
for rack in "${racks[@]}"; do
  say "starting rack $rack (region ${region[$rack]}) with $boards_per_rack boards"
  url="http://127.0.0.1:${controller_port[$rack]}"
  credential=$(api POST "/v1/racks/$rack/credential" | json 'd["credential"]') \
    || die "cannot get a broker credential for rack $rack" "$state/broker.log"
  uplink_flags=()
  for u in ${uplinks[$rack]}; do uplink_flags+=(--uplink "$u"); done
  log="$state/$rack.log"
  start "controller $rack" "$log" "$bin/array-controller" --config "$root/deploy/examples/controller.toml" \
    --rack-id "$rack" --data-dir "$state/$rack" --listen "127.0.0.1:${controller_port[$rack]}" \
    --broker-url "$broker" --broker-credential "$credential" --region "${region[$rack]}" \
    "${uplink_flags[@]}" --site-label "site=$rack"
  wait_for 30 "controller $rack answering on $url/healthz" "$log" curl -sf "$url/healthz"
  wait_for 10 "controller $rack writing its operator token" "$log" test -s "$state/$rack/operator-token"
  rack_op=$(cat "$state/$rack/operator-token")
  join=$(curl -sf -X POST -H "Authorization: Bearer $rack_op" -H 'content-type: application/json' \
    -d '{"ttl_s":600}' "$url/v1/join-tokens" | json 'd["token"]') || die "cannot create a join token on $rack" "$log"
  for n in $(seq 1 "$boards_per_rack"); do
    id="$rack-board-$n"
    start "board daemon $id" "$state/$id.log" "$bin/board-daemon" --board-id "$id" --data-dir "$state/$id" \
      --listen "127.0.0.1:$((7301 + b))" --cpus "$(board_cpus "$b")" \
      --host-ports "$((21100 + b * 100))-$((21199 + b * 100))" \
      --controller-url "$url" --join-token "$join" --advertise-address 127.0.0.1
    b=$((b + 1))
  done
done

# --- catalog: the demo game, its warm targets, a tenant ------------------------------------
say "creating the game $game, its warm targets and the tenant $tenant"
# A version belongs to an existing game, and a game's current_version must name an existing
# version: create the game, then its version, then make that version current.
if ! api GET "/v1/games/$game" >/dev/null 2>&1; then
  api PUT "/v1/games/$game" '{"name": "Demo game"}' >/dev/null || die "cannot create the game $game" "$state/broker.log"
fi
api PUT "/v1/games/$game/versions/1.0" '{
  "images": {"x86_64": "appliance/android-sim:latest", "aarch64": "appliance/android-sim:latest"},
  "profile": {"millicores": 500, "memory_mib": 256},
  "launch": "com.example.demogame/.MainActivity",
  "env": {"SIM_BOOT_SECONDS": "3"}
}' >/dev/null || die "cannot create version 1.0 of $game" "$state/broker.log"
api PUT "/v1/games/$game" '{"name": "Demo game", "current_version": "1.0"}' >/dev/null \
  || die "cannot make version 1.0 current for $game" "$state/broker.log"
for r in east west; do
  api PUT "/v1/games/$game/warm-targets/$r" "{\"warm\": $warm}" >/dev/null \
    || die "cannot set the warm target of $game in $r" "$state/broker.log"
done
if ! api GET /v1/tenants | json "'$tenant' in [t['id'] for t in d]" | grep -q True; then
  api POST /v1/tenants "{\"id\": \"$tenant\", \"name\": \"Demo platform\"}" >/dev/null \
    || die "cannot create the tenant $tenant" "$state/broker.log"
fi
# A key is shown once: keep it, and make a new one only when the kept one was revoked or lost.
key_file="$state/tenant-key"
if [ -s "$key_file" ] && api GET /v1/tenants \
  | json "'$(cut -d' ' -f1 "$key_file")' in next(t['keys'] for t in d if t['id'] == '$tenant')" | grep -q True; then
  key=$(cut -d' ' -f2 "$key_file")
else
  key_answer=$(api POST "/v1/tenants/$tenant/keys") || die "cannot create an API key for $tenant" "$state/broker.log"
  key=$(echo "$key_answer" | json 'd["key"]')
  (umask 077 && echo "$(echo "$key_answer" | json 'd["id"]') $key" >"$key_file")
fi

# --- wait until the racks are online and the warm instances ready --------------------------
racks_online() {
  api GET /v1/racks | python3 -c "
import json, sys
racks = {r['id']: r for r in json.load(sys.stdin)}
sys.exit(0 if all(racks.get(r, {}).get('state') == 'online' for r in sys.argv[1:]) else 1)" "${racks[@]}"
}
say "waiting for the racks to register with the broker"
wait_for 60 "racks ${racks[*]} online at the broker" "$state/${racks[0]}.log" racks_online

warm_ready() { # every region has at least $warm warm instances of the game
  api GET /v1/racks | python3 -c "
import json, sys
warm = {}
for r in json.load(sys.stdin):
    warm[r['region']] = warm.get(r['region'], 0) + r['games'].get('$game', {}).get('warm', 0)
sys.exit(0 if all(warm.get(r, 0) >= $warm for r in ('east', 'west')) else 1)"
}
say "waiting for $warm warm instances of $game per region (Android boots in each container)"
deadline=$((SECONDS + warm_timeout))
until warm_ready; do
  check_alive
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "the racks as the broker sees them:" >&2
    api GET /v1/racks | json '"\n".join("  %s: %s, games %s" % (r["id"], r["state"], r["games"]) for r in d)' >&2 || true
    die "the warm instances were not ready within ${warm_timeout}s; see the controller logs $state/{east-1,west-1}.log and the board logs $state/*-board-*.log" \
      "$state/${racks[0]}-board-1.log"
  fi
  sleep 1
done

# --- where everything is ---------------------------------------------------------------------
rack_lines=$(api GET /v1/racks | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    warm = r["games"].get(sys.argv[1], {}).get("warm", 0)
    print("  rack         %s (region %s): %s, %s, %d warm, %d spare slots"
          % (r["id"], r["region"], r["state"], r["controller_url"], warm, r["spare_slots"]))' "$game")
board_lines=""
for rack in "${racks[@]}"; do
  rack_op=$(cat "$state/$rack/operator-token")
  board_lines="$board_lines  boards       $rack: $(curl -sf -H "Authorization: Bearer $rack_op" \
    "http://127.0.0.1:${controller_port[$rack]}/v1/boards" | json '" ".join(b["id"] + "(" + b["state"] + ")" for b in d)')
"
done
session='{"game":"'$game'","player":{"id":"player-1","rtt_ms":{"east":15,"west":60}}}'
# A key of this run: the state (and so a previous run's sessions) may be kept.
idempotency_key="player-1-$(date +%Y%m%d-%H%M%S)"
cat <<INFO

  broker       $broker            (log: $state/broker.log)
  operator     export OP=$op
  tenant key   export KEY=$key    (tenant $tenant)
$rack_lines
${board_lines}  logs         $state/{broker,east-1,west-1}.log, $state/<board>.log

  Place a player (the same Idempotency-Key always answers with the same session):
    S=\$(curl -s -X POST -H "Authorization: Bearer $key" -H 'content-type: application/json' \\
      -H 'Idempotency-Key: $idempotency_key' -d '$session' $broker/v1/sessions); echo "\$S"

  Connect to its stream and read a few frames (their headers; each carries 1 KiB of payload):
    read -r ID HOST PORT TOKEN < <(echo "\$S" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["id"], s["endpoint"]["host"], s["endpoint"]["stream_port"], s["token"])'); exec 3<>/dev/tcp/\$HOST/\$PORT; echo "HELLO \$TOKEN" >&3; head -c 3300 <&3 | grep -aoE '^OK .*|FRAME [0-9]+ [0-9]+ [0-9]+'; exec 3<&-

  Why the session went where it went:
    curl -s -H "Authorization: Bearer $key" $broker/v1/sessions/\$ID/explain; echo

  End the session (its instance is recreated and comes back warm):
    curl -s -X DELETE -H "Authorization: Bearer $key" $broker/v1/sessions/\$ID; echo

  The racks as the broker sees them:
    curl -s -H "Authorization: Bearer $op" $broker/v1/racks; echo

  Ctrl-C stops the appliance.
INFO

# Run until Ctrl-C; if one of the processes dies, say which and stop the rest.
while true; do
  wait -n 2>/dev/null || true
  check_alive
done
