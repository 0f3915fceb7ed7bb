#!/usr/bin/env bash
# make bench-gateway: proxy-gateway (release, one worker thread, metrics on) against the real
# Envoy and nginx, through ../shared/bench/gateway/bench.sh, in one run on this machine.
# The gateway routes HTTP/1.1 and h2c GETs to the script's HTTP/1.1 upstream (127.0.0.1:18080)
# and gRPC-like POSTs over HTTP/2 to its h2c upstream (127.0.0.1:18082). The script's last line
# is the ratio to Envoy. Knobs of bench.sh (REPS, FULL, LAT, …) pass through.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/lib.sh
SHARED=${SHARED:-../shared/bench/gateway}
cargo build --release -p proxy-gateway
work=$(mktemp -d)
cat > "$work/omnimesh.toml" <<'TOML'
[proxy-gateway]
worker_threads = 1

[proxy-gateway.listen]
http = "127.0.0.1:18090"
admin = "127.0.0.1:18091"

[proxy-gateway.upstreams]
registry = ""

[proxy-gateway.upstreams.clusters]
bench-h1 = ["127.0.0.1:18080"]
bench-h2 = ["127.0.0.1:18082"]

[[proxy-gateway.routes]]
match = { prefix = "/" }
grpc = true
cluster = "bench-h2"

[[proxy-gateway.routes]]
match = { prefix = "/" }
cluster = "bench-h1"
TOML
OMNIMESH_CONFIG="$work/omnimesh.toml" ./target/release/proxy-gateway >"$work/gateway.log" 2>&1 &
gateway=$!
trap 'kill "$gateway" 2>/dev/null; wait "$gateway" 2>/dev/null; rm -rf "$work"' EXIT
wait_for_port 18090 || { cat "$work/gateway.log" >&2; exit 1; }
LAT=${LAT:-1} bash "$SHARED/bench.sh" 127.0.0.1:18090 127.0.0.1:18090 127.0.0.1:18090
