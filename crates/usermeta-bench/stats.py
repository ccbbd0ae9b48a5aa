"""One load run (h2load's output and log) as a TSV row: req/s, p50 and p99 latency (ms), data bytes, requests."""
import re
import statistics
import sys

out, log = open(sys.argv[1]).read(), sys.argv[2]
rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
data = re.search(r"traffic: .*?\(\d+\) total, .*?headers.*?, ([\d.]+\w*B?) \((\d+)\) data", out)
requests = int(re.search(r"requests: (\d+) total", out).group(1))
latencies = sorted(int(line.split("\t")[2]) / 1000.0 for line in open(log) if line.strip())
q = statistics.quantiles(latencies, n=100, method="inclusive")
print(f"{rps:.0f}\t{q[49]:.3f}\t{q[98]:.3f}\t{data.group(2) if data else ''}\t{requests}")
