"""Tests of the report's chart generator: `python3 -m unittest test_report` in this directory (scripts/check-book.sh
runs it). The charts are drawn from the numbers of the shape table, and redrawing them changes nothing else."""
import contextlib
import io
import os
import tempfile
import unittest

import report

TABLE = """Machine: test.

| shape | ceiling req/s | GetMyMetadata req/s | of ceiling | ceiling p50 / p99 ms | GetMyMetadata p50 / p99 ms | p99 ratio | Check req/s | of ceiling | Check ceiling req/s | of Check ceiling | Check p50 / p99 ms | Check ceiling p50 / p99 ms | rounds' req/s ratio, low to high |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| c1 m1 | 100 | 97 | 0.97 | 1 / 2 | 1 / 2 | 1.11x | 96 | 0.96 | 95 | 1.01 | 1 / 2 | 1 / 2 | 0.93 to 1.01 |
| c64 m16 | 100 | 94 | 0.94 | 1 / 2 | 1 / 2 | 1.04x | 111 | 1.11 | 87 | 1.28 | 1 / 2 | 1 / 2 | 0.91 to 0.99 |

| load | req/s |
|---|---:|
| other | 1 |
"""


class ChartTest(unittest.TestCase):
    def test_a_bar_per_shape_and_the_target_as_a_line(self):
        chart = report.ratio_chart("t", ["c1 m1", "c64 m16"], [0.97, 1.28], 0.85)
        self.assertEqual(chart.splitlines(), [
            "```mermaid",
            "xychart-beta",
            '    title "t"',
            '    x-axis "load shape (h2load clients, streams)" ["c1 m1", "c64 m16"]',
            '    y-axis "ratio to the ceiling" 0 --> 1.4',
            "    bar [0.97, 1.28]",
            "    line [0.85, 0.85]",
            "```",
        ])

    def test_the_axis_leaves_room_above_the_target_and_the_bars(self):
        self.assertIn("0 --> 1.3", report.ratio_chart("t", ["a"], [0.5], 0.9))

    def test_the_rows_come_from_the_shape_table(self):
        self.assertEqual(report.shape_rows(TABLE), [("c1 m1", 0.97, 1.01), ("c64 m16", 0.94, 1.28)])

    def test_charts_go_right_after_the_shape_table_and_redrawing_is_stable(self):
        drawn = report.with_charts(TABLE)
        self.assertEqual(report.with_charts(drawn), drawn)
        before, after = drawn.split(report.CHARTS_BEGIN)
        self.assertTrue(before.endswith("| 0.91 to 0.99 |\n\n"))
        self.assertIn("bar [0.97, 0.94]", after)  # GetMyMetadata / ceiling
        self.assertIn("bar [1.01, 1.28]", after)  # Check / Check ceiling
        self.assertIn("line [0.90, 0.90]", after)
        self.assertIn("line [0.85, 0.85]", after)
        self.assertTrue(after.split(report.CHARTS_END)[1].startswith("\n\n| load | req/s |"))
        self.assertEqual(drawn.replace(drawn[drawn.index(report.CHARTS_BEGIN):drawn.index("| load")], ""),
                         TABLE)

    def test_a_report_draws_its_charts_from_its_measurements(self):
        loads = {"ceiling@c1m1": 100, "usermeta-cached@c1m1": 93, "check-cached@c1m1": 90, "check-ceiling@c1m1": 100,
                 "token-source": 30, "userinfo-same-tool": 80, "zitadel-direct": 10, "usermeta-cold": 5,
                 "usermeta-serial": 9, "v1-list": 7, "v1-set": 7, "v2-list": 6, "v2-set": 6}
        with tempfile.NamedTemporaryFile("w", suffix=".tsv") as runs:
            for name, rps in loads.items():
                for round_ in (1, 2):
                    runs.write(f"{name}-{round_}\t{rps}\t0.1\t0.2\t\t1000\t0\n")
            runs.flush()
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                report.report([runs.name, "--shapes", "1:1", "--token-requests", "1000", "--propagation",
                               '{"samples": 3, "p50_ms": 0.4, "p99_ms": 2.7, "max_ms": 3.1}', "--rounds", "2",
                               "--requests", "1000", "--clients", "1", "--streams", "1", "--cold-requests", "10",
                               "--management-requests", "10", "--coalesced", "1", "--distinct", "20",
                               "--cached-rss", "1024", "--ceiling-rss", "1024", "--cold-rss", "1024", "--fill", "10",
                               "--fill-rss", "1024", "--fill-distinct-rss", "1024"])
        printed = out.getvalue()
        self.assertEqual(report.with_charts(printed), printed)
        self.assertIn("bar [0.93]", printed)
        self.assertIn("bar [0.90]", printed)

    def test_results_md_holds_the_charts_of_its_own_numbers(self):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
        with open(path) as f:
            results = f.read()
        self.assertEqual(report.with_charts(results), results,
                         "RESULTS.md's charts differ from its shape table: python3 report.py --charts-into RESULTS.md")


if __name__ == "__main__":
    unittest.main()
