"""Turns the benchmark's measurements into the markdown tables README shows: one row per load, then the targets."""
import argparse
import platform
import statistics
import subprocess
from collections import defaultdict

p = argparse.ArgumentParser()
p.add_argument("runs")
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
print(f"Machine: {cpu or platform.processor()}, {cores} cores. Cached loads: h2load -c {a.clients} -m {a.streams} "
      f"-t 1, {a.requests} requests a run; cold path and direct: one request at a time, a new token each, "
      f"{a.cold_requests} requests a run (`crates/usermeta-bench/src/bin/bench_cold.rs`); management loads: the "
      f"cached loads' h2load settings, {a.management_requests} requests a run, v1 and v2 in the same rounds; "
      f"medians of {a.rounds} alternating rounds.\n")

ceiling = med("ceiling", 0)
NA = "–"
rows = [
    ("bare tonic server (ceiling)", "ceiling", NA, mib(a.ceiling_rss)),
    ("usermeta, cached GetMyMetadata", "usermeta-cached", f"{per_1000('usermeta-cached'):.3f}", mib(a.cached_rss)),
    ("usermeta, cached Check (Envoy ext_authz)", "check-cached", f"{per_1000('check-cached'):.3f}",
     "(same instance)"),
    ("stand-in userinfo, called directly (new token each)", "zitadel-direct", NA, NA),
    ("usermeta, cold path (new token each)", "usermeta-cold", f"{per_1000('usermeta-cold'):.0f}",
     mib(a.cold_rss)),
    ("usermeta, cached GetMyMetadata, one at a time (cold path's tool)", "usermeta-serial",
     f"{per_1000('usermeta-serial'):.3f}", "(cached instance)"),
]
print("| load | req/s | p50 ms | p99 ms | req/s of ceiling | upstream calls per 1000 requests | peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|")
for label, name, upstream, rss in rows:
    rps = med(name, 0)
    of_ceiling = f"{rps / ceiling:.2f}" if name in ("ceiling", "usermeta-cached", "check-cached") else NA
    print(f"| {label} | {rps:.0f} | {med(name, 1):.3f} | {med(name, 2):.3f} | {of_ceiling} | {upstream} | {rss} |")
for api in ("v1", "v2"):
    for rpc, what in (("list", "ListMetadata"), ("set", "SetMetadata")):
        name = f"{api}-{rpc}"
        print(f"| usermeta, {api} management API: an admin's {what} (each call reaches ZITADEL) | {med(name, 0):.0f} | "
              f"{med(name, 1):.3f} | {med(name, 2):.3f} | {NA} | {NA} | (own instance) |")
print(f"| usermeta with {a.fill} cached tokens of one user | | | | | | {mib(a.fill_rss)} |")
print(f"| usermeta with {a.fill} cached tokens of {a.fill} users | | | | | | {mib(a.fill_distinct_rss)} |")

ratio = med("usermeta-cached", 0) / ceiling
p99_ratio = med("usermeta-cached", 2) / med("ceiling", 2)
cold_added = med("usermeta-cold", 1) - med("zitadel-direct", 1)
# Rounds alternate, so round i of each load ran side by side: their ratios show how much the machine drifted.
paired = [u[0] / c[0] for u, c in zip(runs["usermeta-cached"], runs["ceiling"])]
distinct_tokens = 20
targets = [
    ("usermeta cached / ceiling, req/s", f"{ratio:.2f}", ">= 0.80", ratio >= 0.80),
    (f"the same, lowest and highest of the {len(paired)} rounds", f"{min(paired):.2f} to {max(paired):.2f}", "",
     None),
    ("usermeta cached / ceiling, p99", f"{p99_ratio:.2f}x", "<= 1.5x", p99_ratio <= 1.5),
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
]
print()
print("| measure | value | target | met |")
print("|---|---:|---|---|")
for measure, value, target, met in targets:
    print(f"| {measure} | {value} | {target} | {'' if met is None else ('yes' if met else '**no**')} |")
