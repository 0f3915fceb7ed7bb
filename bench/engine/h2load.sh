#!/usr/bin/env bash
# make bench-engine-h2load: the batched Encrypt RPC driven by h2load (nghttp2, written in C)
# instead of a tonic client, to see what the server alone spends per call.
# One release core-engine on 127.0.0.1:18200 (a fresh SQLite key store), one key; h2load
# posts pre-encoded gRPC requests (64 × 1 KiB items to Encrypt, their 64 ciphertexts to
# Decrypt, and a 64 KiB Echo for comparison)
# for H2LOAD_D seconds. Prints calls/s, items/s and the server's CPU time per call (from
# /proc/<pid>/stat, user + system), and for Encrypt what the server alone would answer on
# every core against the in-process sealing of the last `make bench-engine`, if there was one.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/lib.sh
H2LOAD_D=${H2LOAD_D:-5}; H2LOAD_C=${H2LOAD_C:-2}; H2LOAD_M=${H2LOAD_M:-16}
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
cargo build --release -p core-engine
work=$(mktemp -d)
export OMNIMESH_CORE_ENGINE__LISTEN__GRPC=127.0.0.1:18200
export OMNIMESH_CORE_ENGINE__KEYS__DATABASE_URL="sqlite://$work/engine.db"
export OMNIMESH_CORE_ENGINE__KEYS__MASTER_KEY_FILE="$work/master.key"
# No controller here: record no key-change events.
export OMNIMESH_CORE_ENGINE__AUDIT__CONTROLLER=""
./target/release/core-engine >"$work/engine.log" 2>&1 &
engine=$!
trap 'kill "$engine" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
wait_for_port 18200 || { cat "$work/engine.log" >&2; exit 1; }
# gRPC frames of omnimesh.engine.v1 messages, encoded by hand (field numbers from
# proto/omnimesh/engine/v1): CreateKeyRequest{name}, EncryptRequest{key_name, items},
# EchoRequest{payload}.
python3 - "$work" <<'PY'
import struct, sys
def varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out += bytes([low | 0x80])
        else:
            return out + bytes([low])
def field(number, payload):
    return bytes([number << 3 | 2]) + varint(len(payload)) + payload
def frame(message):
    return b"\0" + struct.pack(">I", len(message)) + message
name = field(1, b"bench")
item = field(1, b"\x5a" * 1024)
open(f"{sys.argv[1]}/create.bin", "wb").write(frame(name))
open(f"{sys.argv[1]}/encrypt64.bin", "wb").write(frame(name + field(3, item) * 64))
open(f"{sys.argv[1]}/echo64k.bin", "wb").write(frame(field(1, b"\x5a" * 65536)))
PY
url=http://127.0.0.1:18200/omnimesh.engine.v1.Engine
grpc=(-H content-type:application/grpc -H te:trailers)
h2load -n 1 -c 1 "${grpc[@]}" -d "$work/create.bin" "$url/CreateKey" | grep -q "1 succeeded" \
  || { echo "CreateKey failed" >&2; exit 1; }
# A Decrypt request of 64 real ciphertexts: one Encrypt answer (nghttp saves it), its
# EncryptResult.ciphertext fields (2) as DecryptItem.ciphertext (1) in
# DecryptRequest{key_name, items (2)}.
nghttp "${grpc[@]}" -d "$work/encrypt64.bin" "$url/Encrypt" >"$work/encrypted.bin"
python3 - "$work" <<'PY'
import struct, sys
work = sys.argv[1]
data = open(f"{work}/encrypted.bin", "rb").read()
message = data[5:5 + struct.unpack(">I", data[1:5])[0]]
def varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i
def fields(buf):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        value, i = varint(buf, i)
        if key & 7 == 2:
            yield key >> 3, buf[i:i + value]
            i += value
def field(number, payload):
    out, n = b"", len(payload)
    while n > 0x7F:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return bytes([number << 3 | 2]) + out + bytes([n]) + payload
ciphertexts = [dict(fields(result)).get(2) for number, result in fields(message) if number == 1]
assert len(ciphertexts) == 64 and all(c and c.startswith(b"omnimesh:v1:") for c in ciphertexts), \
    "the Encrypt answer did not carry 64 ciphertexts"
request = field(1, b"bench") + b"".join(field(2, field(1, c)) for c in ciphertexts)
open(f"{work}/decrypt64.bin", "wb").write(b"\0" + struct.pack(">I", len(request)) + request)
PY
cpu() { awk '{print $14 + $15}' "/proc/$engine/stat"; }
for call in Encrypt:encrypt64.bin Decrypt:decrypt64.bin Echo:echo64k.bin; do
  method=${call%%:*}; body=${call#*:}
  before=$(cpu)
  out=$(h2load -D "$H2LOAD_D" -c "$H2LOAD_C" -m "$H2LOAD_M" -t 1 "${grpc[@]}" -d "$work/$body" "$url/$method")
  after=$(cpu)
  grep -q " 0 failed, 0 errored" <<<"$out" || { echo "$out" >&2; exit 1; }
  done_calls=$(grep -oP 'requests: \d+ total, \d+ started, \K\d+(?= done)' <<<"$out")
  python3 - "$method" "$done_calls" "$H2LOAD_D" "$before" "$after" "$(getconf CLK_TCK)" "$(nproc)" <<'PY'
import json, pathlib, sys
method, calls, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
before, after, tck, cores = map(float, sys.argv[4:])
cpu_s = (after - before) / tck
per_call = cpu_s / calls
print(f"{method}: {calls / seconds:,.0f} calls/s = {64 * calls / seconds:,.0f} (1 KiB items)/s; "
      f"server CPU {cpu_s / seconds:.2f} cores, {per_call * 1e6:.0f} µs per call")
# What the server alone would answer with every core to itself (the client elsewhere),
# against the in-process sealing of the last `make bench-engine` on this machine.
ours = pathlib.Path("target/bench-engine/ours.json")
if method == "Encrypt" and ours.exists():
    sealing = json.loads(ours.read_text()).get("seal_aes256gcm_1KiB_1core_items_per_s")
    if sealing:
        items = cores * 64 / per_call
        print(f"  server alone on {cores:.0f} cores: {items:,.0f} items/s = {items / sealing:.2f}x "
              f"the in-process sealing of {ours} ({sealing:,.0f} items/s)")
PY
done
