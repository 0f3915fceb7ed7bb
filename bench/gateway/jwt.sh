#!/usr/bin/env bash
# make bench-gateway-jwt: what checking a JWT on every request costs the gateway.
# One release gateway (one worker thread, metrics on) in front of the shared nginx upstream
# (../shared/bench/gateway/upstream-nginx.conf, 127.0.0.1:18080) with two routes to it:
# /open (no token) and /jwt (auth = "viewer": an HS256 token checked on every request).
# wrk alternates between them REPS times (same connections, duration, machine); the medians
# are compared. Last line: jwt_rps=<> open_rps=<> jwt_cost=<1 - jwt/open>.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared/bench/gateway}
REPS=${REPS:-5}; WRK_D=${WRK_D:-8}; WRK_C=${WRK_C:-32}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk nginx >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }
cargo build --release -p proxy-gateway
work=$(mktemp -d)
mkdir -p "$work/logs" "$work/tmp"
cat > "$work/omnimesh.toml" <<TOML
[proxy-gateway]
worker_threads = 1

[proxy-gateway.listen]
http = "127.0.0.1:18190"
admin = "127.0.0.1:18191"

[proxy-gateway.auth]
hs256_key_file = "$work/jwt.key"

[proxy-gateway.upstreams]
registry = ""

[proxy-gateway.upstreams.clusters]
bench-h1 = ["127.0.0.1:18080"]

[[proxy-gateway.routes]]
match = { prefix = "/jwt" }
cluster = "bench-h1"
auth = "viewer"

[[proxy-gateway.routes]]
match = { prefix = "/" }
cluster = "bench-h1"
TOML
nginx -p "$work/" -e "$work/logs/startup.log" -c "$(realpath "$SHARED/upstream-nginx.conf")" &
upstream=$!
OMNIMESH_CONFIG="$work/omnimesh.toml" ./target/release/proxy-gateway >"$work/gateway.log" 2>&1 &
gateway=$!
trap 'kill "$gateway" "$upstream" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/18190) 2>/dev/null && [[ -s $work/jwt.key ]] && break
  sleep 0.1
done
# An HS256 token signed with the key the gateway generated (standard library only).
token=$(python3 - "$work/jwt.key" <<'PY'
import base64, hashlib, hmac, json, sys, time
key = open(sys.argv[1], "rb").read()
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=")
now = int(time.time())
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "bench", "iss": "omnimesh", "aud": "omnimesh",
                         "iat": now, "exp": now + 3600, "roles": ["viewer"]}).encode())
signing = header + b"." + claims
signature = b64(hmac.new(key, signing, hashlib.sha256).digest())
print((signing + b"." + signature).decode())
PY
)
status=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" http://127.0.0.1:18190/jwt)
[[ $status == 200 ]] || { echo "the token was not accepted ($status)" >&2; cat "$work/gateway.log" >&2; exit 1; }
status=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18190/jwt)
[[ $status == 401 ]] || { echo "/jwt without a token answered $status, not 401" >&2; exit 1; }
rps() { wrk -t1 -c"$WRK_C" -d"${WRK_D}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
wrk -t1 -c"$WRK_C" -d2s http://127.0.0.1:18190/open >/dev/null   # warm-up
open=(); jwt=()
for _ in $(seq "$REPS"); do
  open+=("$(rps http://127.0.0.1:18190/open)")
  jwt+=("$(rps -H "authorization: Bearer $token" http://127.0.0.1:18190/jwt)")
done
python3 - "${open[*]}" "${jwt[*]}" <<'PY'
import statistics, sys
open_rps = [float(x) for x in sys.argv[1].split()]
jwt_rps = [float(x) for x in sys.argv[2].split()]
o, j = statistics.median(open_rps), statistics.median(jwt_rps)
print(f"open  runs: {', '.join(f'{x:,.0f}' for x in open_rps)}")
print(f"jwt   runs: {', '.join(f'{x:,.0f}' for x in jwt_rps)}")
print(f"jwt_rps={j:.0f} open_rps={o:.0f} jwt_cost={1 - j / o:.3f}")
PY
