"""Turns the benchmark's measurements into the markdown tables README shows: one row per load, then the targets."""
import argparse
import json
import platform
import statistics
import subprocess
from collections import defaultdict

p = argparse.ArgumentParser()
p.add_argument("runs")
p.add_argument("--shapes", required=True)
p.add_argument("--token-requests", type=int, required=True)
p.add_argument("--propagation", required=True, help="bench_propagation's JSON line")
for name in ["rounds", "requests", "clients", "streams", "cold_requests", "management_requests", "coalesced", "distinct",
             "cached_rss", "ceiling_rss", "cold_rss", "fill", "fill_rss", "fill_distinct_rss"]:
    p.add_argument("--" + name.replace("_", "-"), type=int, required=True)
a = p.parse_args()

# runs.tsv: name, req/s, p50 ms, p99 ms, data bytes, requests, userinfo calls during the run.
runs = defaultdict(list)
for line in open(a.runs):
    name, rps, p50, p99, _data, requests, upstream = line.rstrip("\n").split("\t")
    runs[name.rsplit("-", 1)[0]].append((float(rps), float(p50), float(p99), int(requests), int(upstream)))


def med(name, i):
    return statistics.median(r[i] for r in runs[name])


def per_1000(name):
    return 1000 * sum(r[4] for r in runs[name]) / sum(r[3] for r in runs[name])


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                     text=True).stdout.strip()
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
shapes = [tuple(int(x) for x in shape.split(":")) for shape in a.shapes.split()]
print(f"Machine: {cpu or platform.processor()}, {cores} cores; usermeta in its default configuration (no RUST_LOG), without the request budget toward ZITADEL. "
      f"Cached loads: h2load -c C -m M -t 1 at each shape, {a.requests} requests a run ({a.requests // 5} at c1 m1); "
      f"source TOKEN and the cached userinfo path beside it: bench_load (a token per request) -c {a.clients} "
      f"-m {a.streams}, {a.token_requests} requests a run; cold path and direct: one request at a time, a new token each, "
      f"{a.cold_requests} requests a run (`crates/usermeta-bench/src/bin/bench_cold.rs`); management loads: the "
      f"cached loads' h2load settings, {a.management_requests} requests a run, v1 and v2 in the same rounds; "
      f"medians of {a.rounds} alternating rounds.\n")

NA = "–"
# One row per load shape: the ceiling, cached GetMyMetadata, cached Check and the Check ceiling (the bare server
# answering Check with usermeta's answer), medians of the alternating rounds.
print("| shape | ceiling req/s | GetMyMetadata req/s | of ceiling | ceiling p50 / p99 ms | GetMyMetadata p50 / p99 ms "
      "| p99 ratio | Check req/s | of ceiling | Check ceiling req/s | of Check ceiling | Check p50 / p99 ms "
      "| Check ceiling p50 / p99 ms | rounds' req/s ratio, low to high |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
shape_targets = []
for c, m in shapes:
    s = f"@c{c}m{m}"
    ceil, um, ck, ck_ceil = "ceiling" + s, "usermeta-cached" + s, "check-cached" + s, "check-ceiling" + s
    r_um, r_ck, r_ck_own = med(um, 0) / med(ceil, 0), med(ck, 0) / med(ceil, 0), med(ck, 0) / med(ck_ceil, 0)
    p_um, p_ck = med(um, 2) / med(ceil, 2), med(ck, 2) / med(ck_ceil, 2)
    paired = [u[0] / x[0] for u, x in zip(runs[um], runs[ceil])]
    print(f"| c{c} m{m} | {med(ceil, 0):.0f} | {med(um, 0):.0f} | {r_um:.2f} | {med(ceil, 1):.3f} / {med(ceil, 2):.3f} "
          f"| {med(um, 1):.3f} / {med(um, 2):.3f} | {p_um:.2f}x | {med(ck, 0):.0f} | {r_ck:.2f} | {med(ck_ceil, 0):.0f} "
          f"| {r_ck_own:.2f} | {med(ck, 1):.3f} / {med(ck, 2):.3f} | {med(ck_ceil, 1):.3f} / {med(ck_ceil, 2):.3f} "
          f"| {min(paired):.2f} to {max(paired):.2f} |")
    shape_targets += [
        (f"c{c} m{m}: cached GetMyMetadata / ceiling, req/s", f"{r_um:.2f}", ">= 0.90", r_um >= 0.90),
        (f"c{c} m{m}: cached GetMyMetadata / ceiling, p99", f"{p_um:.2f}x", "<= 1.2x", p_um <= 1.2),
        (f"c{c} m{m}: cached Check / Check ceiling, req/s", f"{r_ck_own:.2f}", ">= 0.85", r_ck_own >= 0.85),
        (f"c{c} m{m}: cached Check / Check ceiling, p99", f"{p_ck:.2f}x", "", None),
        # For reference, no target: it measures Envoy's larger messages as much as usermeta, so the ratio the
        # bare Check server itself reaches is beside it.
        (f"c{c} m{m}: cached Check / GetMyMetadata's ceiling, req/s (for reference: Check's messages are larger; "
         f"the Check ceiling itself reaches {med(ck_ceil, 0) / med(ceil, 0):.2f})", f"{r_ck:.2f}", "", None),
    ]
upstream_um = sum(r[4] for c, m in shapes for r in runs[f"usermeta-cached@c{c}m{m}"])
print()

ceiling = med(f"ceiling@c{a.clients}m{a.streams}", 0) if f"ceiling@c{a.clients}m{a.streams}" in runs else None
rows = [
    ("bare tonic server (ceiling), every shape", None, NA, mib(a.ceiling_rss)),
    ("usermeta, cached GetMyMetadata and Check, every shape", None, f"{upstream_um} calls in all", mib(a.cached_rss)),
    ("usermeta, GetMyMetadata source TOKEN (a new JWT each, validated locally; ZITADEL calls: every request the "
     "stand-in received)", "token-source", f"{per_1000('token-source'):.3f} ({sum(r[4] for r in runs['token-source'])} "
     "in all)", "(own instance)"),
    ("usermeta, cached GetMyMetadata source USERINFO, same tool and shape as TOKEN", "userinfo-same-tool",
     f"{per_1000('userinfo-same-tool'):.3f}", "(cached instance)"),
    ("stand-in userinfo, called directly (new token each)", "zitadel-direct", NA, NA),
    ("usermeta, cold path (new token each)", "usermeta-cold", f"{per_1000('usermeta-cold'):.0f}",
     mib(a.cold_rss)),
    ("usermeta, cached GetMyMetadata, one at a time (cold path's tool)", "usermeta-serial",
     f"{per_1000('usermeta-serial'):.3f}", "(cached instance)"),
]
print("| load | req/s | p50 ms | p99 ms | req/s of ceiling | upstream calls per 1000 requests | peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|")
for label, name, upstream, rss in rows:
    if name is None:
        print(f"| {label} | (above) | | | | {upstream} | {rss} |")
        continue
    rps = med(name, 0)
    of_ceiling = f"{rps / ceiling:.2f}" if ceiling and name in ("token-source", "userinfo-same-tool") else NA
    print(f"| {label} | {rps:.0f} | {med(name, 1):.3f} | {med(name, 2):.3f} | {of_ceiling} | {upstream} | {rss} |")
for api in ("v1", "v2"):
    for rpc, what in (("list", "ListMetadata"), ("set", "SetMetadata")):
        name = f"{api}-{rpc}"
        print(f"| usermeta, {api} management API: an admin's {what} (each call reaches ZITADEL) | {med(name, 0):.0f} | "
              f"{med(name, 1):.3f} | {med(name, 2):.3f} | {NA} | {NA} | (own instance) |")
print(f"| usermeta with {a.fill} cached tokens of one user | | | | | | {mib(a.fill_rss)} |")
print(f"| usermeta with {a.fill} cached tokens of {a.fill} users | | | | | | {mib(a.fill_distinct_rss)} |")

cold_added = med("usermeta-cold", 1) - med("zitadel-direct", 1)
distinct_tokens = 20
token_calls = sum(r[4] for r in runs["token-source"])
propagation = json.loads(a.propagation)
targets = shape_targets + [
    ("ZITADEL calls during the source TOKEN loads (keys cached in the warm-up)", str(token_calls), "0",
     token_calls == 0),
    ("cold path median added over the stand-in called directly", f"{cold_added:.3f} ms", "<= 0.3 ms",
     cold_added <= 0.3),
    ("of it, a cached call's gRPC round trip (one at a time, same tool)", f"{med('usermeta-serial', 1):.3f} ms",
     "", None),
    ("userinfo calls for 100 concurrent first requests with one new token", str(a.coalesced), "1",
     a.coalesced == 1),
    (f"userinfo calls for {distinct_tokens} distinct tokens x 400 requests within one TTL", str(a.distinct),
     f"<= {distinct_tokens}", a.distinct <= distinct_tokens),
    (f"peak RSS with {a.fill} cached tokens of one user", mib(a.fill_rss), "<= 64 MiB", a.fill_rss <= 64 * 1024),
    (f"peak RSS with {a.fill} cached tokens of {a.fill} users", mib(a.fill_distinct_rss), "<= 64 MiB",
     a.fill_distinct_rss <= 64 * 1024),
    (f"a write through one of 3 replicas (Redis) served by the others: p50 / p99 / max over "
     f"{propagation['samples']} samples", f"{propagation['p50_ms']:.1f} / {propagation['p99_ms']:.1f} / "
     f"{propagation['max_ms']:.1f} ms", "p99 <= 1000 ms", propagation["p99_ms"] <= 1000),
]
print()
print("| measure | value | target | met |")
print("|---|---:|---|---|")
for measure, value, target, met in targets:
    print(f"| {measure} | {value} | {target} | {'' if met is None else ('yes' if met else '**no**')} |")
