"""Turns the benchmark's measurements into the markdown table README shows."""
import argparse
import platform
import statistics
import subprocess
from collections import defaultdict

p = argparse.ArgumentParser()
p.add_argument("runs")
for name in ["rounds", "requests", "clients", "streams", "cached_upstream", "cold_upstream", "cold_requests",
             "coalesced", "distinct", "cached_rss", "ceiling_rss", "fill", "fill_rss",
             "fill_distinct_rss"]:
    p.add_argument("--" + name.replace("_", "-"), type=int, required=True)
a = p.parse_args()

runs = defaultdict(list)
for line in open(a.runs):
    name, rps, p50, p99, data = (line.rstrip("\n").split("\t") + [""])[:5]
    runs[name.rsplit("-", 1)[0]].append((float(rps), float(p50), float(p99)))


def med(name, i):
    return statistics.median(r[i] for r in runs[name])


cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
rows = [("bare tonic server (ceiling)", "ceiling"), ("usermeta, cached GetMyMetadata", "usermeta-cached"),
        ("usermeta, cached Check (Envoy ext_authz)", "check-cached"),
        ("stand-in userinfo, called directly", "zitadel-direct"), ("usermeta, cold path (cache off)", "usermeta-cold")]
print(f"Machine: {cpu or platform.processor()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores; "
      f"h2load -c {a.clients} -m {a.streams} -t 1, {a.requests} requests a run (cold path and direct: -c 1 -m 1, "
      f"{a.cold_requests // a.rounds} requests), "
      f"median of {a.rounds} alternating rounds.\n")
print("| load | req/s | p50 ms | p99 ms |")
print("|---|---:|---:|---:|")
for label, name in rows:
    if name not in runs:  # results from before Check was measured
        continue
    print(f"| {label} | {med(name, 0):.0f} | {med(name, 1):.3f} | {med(name, 2):.3f} |")
ratio = med("usermeta-cached", 0) / med("ceiling", 0)
p99_ratio = med("usermeta-cached", 2) / med("ceiling", 2)
cold_added = med("usermeta-cold", 1) - med("zitadel-direct", 1)
# Both GetMyMetadata and Check runs use the cached instance.
total_cached = a.rounds * a.requests * (2 if "check-cached" in runs else 1)
print()
print("| measure | value | target |")
print("|---|---:|---|")
# Rounds alternate, so round i of each load ran side by side: their ratios show how much the machine drifted.
paired = [u[0] / c[0] for u, c in zip(runs["usermeta-cached"], runs["ceiling"])]
print(f"| usermeta cached / ceiling, req/s | {ratio:.2f} | >= 0.80 |")
print(f"| the same, lowest and highest of the {len(paired)} rounds | {min(paired):.2f} to {max(paired):.2f} | |")
print(f"| usermeta cached / ceiling, p99 | {p99_ratio:.2f}x | <= 1.5x |")
print(f"| cold path median added over the stand-in called directly | {cold_added:.3f} ms | <= 0.3 ms |")
print(f"| upstream calls per 1000 cached requests | {1000 * a.cached_upstream / total_cached:.3f} | |")
print(f"| upstream calls per 1000 cold requests | {1000 * a.cold_upstream / a.cold_requests:.0f} | |")
print(f"| userinfo calls for 100 concurrent first requests with one new token | {a.coalesced} | 1 |")
print(f"| userinfo calls for 20 distinct tokens x 400 requests within one TTL | {a.distinct} | <= 20 |")
print(f"| peak RSS, ceiling | {a.ceiling_rss / 1024:.1f} MiB | |")
print(f"| peak RSS, usermeta after the runs above | {a.cached_rss / 1024:.1f} MiB | |")
print(f"| peak RSS, usermeta with {a.fill} cached tokens of one user | {a.fill_rss / 1024:.1f} MiB | <= 64 MiB |")
print(f"| peak RSS, usermeta with {a.fill} cached tokens of {a.fill} users | {a.fill_distinct_rss / 1024:.1f} MiB | "
      f"<= 64 MiB |")
