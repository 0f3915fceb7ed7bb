#!/usr/bin/env python3
"""Sets core-engine's numbers (ours.json) against OpenSSL and numpy (baseline.json)
measured in the same run, and prints a markdown table of ratios (> 1: we are faster).

  python3 compare.py ours.json baseline.json
"""
import json, sys

ours = json.load(open(sys.argv[1]))
base = json.load(open(sys.argv[2]))
np_ = base.get("numpy", {})
ossl = base.get("openssl", {})

def numpy_s(key):
    return np_[key]["median_s"]

rows = []
def row(what, our, baseline_name, theirs, ratio, floor=None):
    """A floor's row, or without a floor a context row (plain ratio, no verdict)."""
    if floor is None:
        rows.append(f"| {what} | {our} | {baseline_name}: {theirs} | {ratio:.2f}× | — | — |")
        return
    ok = "yes" if ratio >= floor else "NO"
    rows.append(f"| {what} | {our} | {baseline_name}: {theirs} | **{ratio:.2f}×** | ≥ {floor} | {ok} |")

bulk = ours["seal_in_place_aes256gcm_16KiB_1core_bytes_per_s"]
ossl_gcm = ossl["aes-256-gcm x1"]["16384"]
row("AES-256-GCM bulk sealing in place, 16 KiB buffers, 1 core", f"{bulk/1e6:,.0f} MB/s",
    "openssl speed -evp aes-256-gcm", f"{ossl_gcm/1e6:,.0f} MB/s", bulk / ossl_gcm, 1.5)
# Context, no floor: sealing the way Encrypt does, against the same baseline.
seal = ours["seal_aes256gcm_16KiB_1core_bytes_per_s"]
row("AES-256-GCM sealing as Encrypt does (random nonce, new buffer), 16 KiB, 1 core",
    f"{seal/1e6:,.0f} MB/s", "openssl speed -evp aes-256-gcm", f"{ossl_gcm/1e6:,.0f} MB/s",
    seal / ossl_gcm)
# Context, no floor: the streams' chunked encryption in process (64 MiB in 64 KiB pieces,
# 16 KiB chunks), sealing and opening, against the same baseline.
for key, what in (("stream_seal_64MiB_1core_bytes_per_s", "sealing"),
                  ("stream_open_64MiB_1core_bytes_per_s", "opening")):
    if key in ours:
        row(f"Chunked encryption in process (the streams' crypto), {what}, 64 MiB in 64 KiB "
            "pieces, 1 core", f"{ours[key]/1e6:,.0f} MB/s", "openssl speed -evp aes-256-gcm",
            f"{ossl_gcm/1e6:,.0f} MB/s", ours[key] / ossl_gcm)

# The two RPCs' rounds alternate (Echo, Encrypt, Echo, …), so that a slow spell of the
# machine falls on both.
echo = ours["rpc_echo_1KiB_64_in_flight_per_s"]
enc = ours["rpc_encrypt_1KiB_64_in_flight_per_s"]
row("Encrypt RPC, 1 KiB, 1 item, 64 in flight", f"{enc:,.0f} req/s",
    "Echo RPC, same size, same server, rounds alternating", f"{echo:,.0f} req/s", enc / echo, 0.8)

batch = ours["rpc_encrypt_64x1KiB_8_in_flight_items_per_s"]
# In-process sealing timed in rounds alternating with the RPC's (since the Zen 4's 2026-11-27
# run); older results have only the `seal` part's figure.
alongside = ours.get("seal_aes256gcm_1KiB_1core_items_per_s_alongside_rpc")
inproc = alongside or ours["seal_aes256gcm_1KiB_1core_items_per_s"]
row("Encrypt RPC, 64 × 1 KiB items per call, 8 in flight", f"{batch:,.0f} items/s",
    "in-process sealing of 1 KiB items as Encrypt does (64 per batch, envelopes), 1 core"
    + (", in rounds alternating with the RPC's" if alongside else ""),
    f"{inproc:,.0f} items/s", batch / inproc, 0.5)

# Context, no floor: the batched Encrypt's work and bytes over bare loopback sockets (one
# connection per core; no HTTP/2, protobuf or async runtime), rounds alternating with the
# RPC's: the ceiling of any Encrypt RPC on this machine with the client on the same cores.
bare = ours.get("bare_socket_encrypt_64x1KiB_8_in_flight_items_per_s")
if bare is not None:
    row("Encrypt's work and bytes over bare loopback sockets, 64 × 1 KiB per request, 8 in "
        "flight (the ceiling for the row above)", f"{bare:,.0f} items/s",
        "in-process sealing, as above", f"{inproc:,.0f} items/s", bare / inproc)

# Context, no floor: the transport alone at the batched call's size (an Echo of 64 KiB,
# no crypto) counted as 1 KiB items, against the same in-process sealing.
echo64 = ours.get("rpc_echo_64KiB_8_in_flight_per_s")
if echo64 is not None:
    row("Echo RPC of 64 KiB, 8 in flight (no crypto: the transport's ceiling for the row above), "
        "as 1 KiB items", f"{echo64 * 64:,.0f} items/s", "in-process sealing, as above",
        f"{inproc:,.0f} items/s", echo64 * 64 / inproc)

# Context, no floor: the batched Decrypt of 64 ciphertexts against in-process opening
# of 64 ciphertexts as Decrypt opens them, rounds alternating (since the seventeenth session).
decrypt = ours.get("rpc_decrypt_64x1KiB_8_in_flight_items_per_s")
opened = ours.get("open_aes256gcm_1KiB_1core_items_per_s_alongside_rpc")
if decrypt is not None and opened is not None:
    row("Decrypt RPC, 64 × 1 KiB items per call, 8 in flight", f"{decrypt:,.0f} items/s",
        "in-process opening of 1 KiB ciphertexts as Decrypt does (strict base64, opened in "
        "place), 1 core, in rounds alternating with the RPC's", f"{opened:,.0f} items/s",
        decrypt / opened)

# Context, no floor: one EncryptStream call (64 MiB in 64 KiB pieces), then one
# DecryptStream call of its output, against the bytes an Echo of 64 KiB carries each way
# with 8 calls in flight.
stream = ours.get("rpc_encrypt_stream_64MiB_bytes_per_s")
if stream is not None and echo64 is not None:
    row("EncryptStream, 64 MiB in 64 KiB pieces, one call", f"{stream/1e6:,.0f} MB/s",
        "Echo RPC of 64 KiB, 8 in flight", f"{echo64 * 65536 / 1e6:,.0f} MB/s",
        stream / (echo64 * 65536))
decrypt_stream = ours.get("rpc_decrypt_stream_64MiB_bytes_per_s")
if decrypt_stream is not None and echo64 is not None:
    row("DecryptStream of that ciphertext, piece for piece, one call",
        f"{decrypt_stream/1e6:,.0f} MB/s", "Echo RPC of 64 KiB, 8 in flight",
        f"{echo64 * 65536 / 1e6:,.0f} MB/s", decrypt_stream / (echo64 * 65536))

# Ours over the same values in huge pages (as numpy allocates) and in ordinary pages:
# the lower of the two is held to the floor.
mv_huge = ours["mean_variance_GB_per_s"]
mv = min(mv_huge, ours.get("mean_variance_small_pages_GB_per_s", mv_huge))
bw = max(v["GB_per_s"] for k, v in np_.items() if isinstance(v, dict) and k.startswith("mem_read_1GiB"))
pairs = ours.get("mean_variance_pairs")
if pairs:
    # The floor on the pairs measured seconds apart (since 2026-11-27's eighteenth
    # session); the rounds' medians, minutes apart, follow for context.
    spread = lambda key: "–".join(f"{f(p[key] for p in pairs):.1f}" for f in (min, max))
    row(f"Analyze mean + variance, {ours['n']:,} f64 (lower of huge / 4 KiB pages), in {len(pairs)} "
        f"pairs with the baseline seconds apart: median of the pairs' ratios",
        f"{spread('mean_variance_GB_per_s')} GB/s",
        "memory read bandwidth (numpy, best of sum/ddot over 1 GiB)",
        f"{spread('mem_read_GB_per_s')} GB/s", ours["mean_variance_paired_ratio"], 0.8)
row(f"Analyze mean + variance, {ours['n']:,} f64 (lower of huge / 4 KiB pages: {mv_huge:.1f} / "
    f"{ours.get('mean_variance_small_pages_GB_per_s', mv_huge):.1f})"
    + (", the rounds' medians, minutes from numpy's" if pairs else ""), f"{mv:.2f} GB/s",
    "memory read bandwidth (numpy, best of sum/ddot)", f"{bw:.2f} GB/s", mv / bw,
    None if pairs else 0.8)

q = ours["quantiles_5_s"]
nq = numpy_s("percentile_10M_f64 q=[1,25,50,75,99] (linear)")
row(f"5 exact quantiles, {ours['n']:,} f64", f"{q*1e3:.0f} ms",
    "numpy.percentile", f"{nq*1e3:.0f} ms", nq / q, 2.0)

s = ours["sort_f64_s"]
ns = numpy_s("sort_10M_f64 (np.sort, quicksort/introsort)")
row(f"sort {ours['n']:,} f64 ({ours['threads']} threads)", f"{s*1e3:.0f} ms",
    "numpy.sort", f"{ns*1e3:.0f} ms", ns / s, 1.5)
# Context, no floor: the Compute RPC's sort (a sorted copy into a new vector).
s_compute = ours.get("sort_f64_compute_s")
if s_compute is not None:
    row(f"sort {ours['n']:,} f64 into a new vector (the Compute RPC's sort)",
        f"{s_compute*1e3:.0f} ms", "numpy.sort", f"{ns*1e3:.0f} ms", ns / s_compute)

side = ours["matmul_side"]
g = ours["matmul_GFLOP_per_s"]
key = f"matmul_{side}x{side}_f64 threads=2"
if key in np_:
    ng = np_[key]["GFLOP_per_s"]
    row(f"matmul {side}² f64 (2 threads)", f"{g:.1f} GFLOP/s",
        "numpy @ (OpenBLAS, 2 threads)", f"{ng:.1f} GFLOP/s", g / ng, 0.9)

print(f"machine: {base.get('machine', {})}\n")
print("| what | core-engine | baseline | ratio | floor | meets |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
