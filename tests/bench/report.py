"""Goals, BENCHMARKS.md and the gnuplot plots for bench.py."""

import contextlib
import datetime
import math
import os
import platform
import shutil
import statistics
import subprocess
from pathlib import Path

from procs import run_tool

SCENARIO_TITLES = {
    1: "Fan-out 3 to HTTP/1.1 nginx downstreams",
    2: "Fan-out 3 to h2c nghttpd downstreams",
    3: "Latency added above the slowest downstream (20, 40, 60 ms)",
    4: "CPU per downstream call against fan-out width",
    5: "Memory per request in flight",
    6: "Deadline precision (downstreams that never answer)",
    7: "Cancellation latency after a failed call",
    8: "The physical limit: nginx CPU per exchange",
}


def percentile(values, q):
    """Return the nearest-rank percentile q of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def median_of(rows, key):
    """Return the median of rows[i][key] over the rounds with a number."""
    values = [row[key] for row in rows
              if isinstance(row.get(key), (int, float))]
    return statistics.median(values) if values else None


def fmt(value, digits=2, unit=""):
    if value is None:
        return "-"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}f}{unit}"


# ---------------------------------------------------------------------------
# Goals and the report


class Goal:
    def __init__(self, goal_id, text):
        self.goal_id = goal_id
        self.text = text
        self.met = None
        self.measured = "not measured"
        self.shortfall = ""

    def at_most(self, value, limit, measured, unit=""):
        """Evaluate the goal value <= limit."""
        self.measured = measured
        self.met = value <= limit
        if not self.met:
            self.shortfall = by_how_much(value, limit, unit, "above")

    def at_least(self, value, limit, measured, unit=""):
        """Evaluate the goal value >= limit."""
        self.measured = measured
        self.met = value >= limit
        if not self.met:
            self.shortfall = by_how_much(value, limit, unit, "below")


def by_how_much(value, limit, unit, side):
    """Describe the distance of a missed goal from its target."""
    text = f"{fmt(abs(value - limit), 3)}{unit}"
    if limit and unit != "%":
        text += f" ({abs(value / limit - 1) * 100:.0f}%)"
    return f"{text}: {fmt(value, 3)}{unit}, {side} the target of " \
        f"{fmt(limit, 3)}{unit}"


class Report:
    """The medians, goals and BENCHMARKS.md of one benchmark run.

    goal_notes maps goal ids to the lead's explanation of a missed goal;
    root is the repository and tutti_bin the measured binary, for the
    versions section.
    """

    def __init__(self, bench, goal_notes, root, tutti_bin):
        self.bench = bench
        self.results = bench.results
        self.gateways = [g.name for g in bench.gateways]
        self.goal_notes = goal_notes
        self.root = root
        self.tutti_bin = tutti_bin

    def rows(self, key, gateway):
        return self.results.get((key, gateway), [])

    def med(self, key, gateway, field):
        return median_of(self.rows(key, gateway), field)

    def na(self, scenario, gateway):
        rows = self.results.get((f"na-s{scenario}", gateway))
        return rows[0]["reason"] if rows else None

    # -- goals -----------------------------------------------------------

    def best_peer(self, key, field, lowest):
        values = [(self.med(key, g, field), g) for g in self.gateways
                  if g != "tutti"]
        values = [(v, g) for v, g in values if v is not None]
        if not values:
            return None, None
        return min(values) if lowest else max(values)

    def added_latency(self, gateway, field):
        """Return the median over rounds of the gateway's percentile minus
        the direct percentile of the same round."""
        rows = self.rows("s3", gateway)
        direct = self.rows("s3", "direct")
        diffs = [row[field] - base[field] for row, base in zip(rows, direct)
                 if row.get(field) is not None
                 and base.get(field) is not None]
        return statistics.median(diffs) if diffs else None

    def evaluate_goals(self):
        goals = []
        for scenario in (1, 2):
            key = f"s{scenario}"
            cpu = Goal(f"{key}-cpu", f"S{scenario}: tutti CPU per request "
                       "<= 0.7x the best peer")
            rps = Goal(f"{key}-rps", f"S{scenario}: tutti requests per "
                       "second >= 1.3x the best peer")
            tutti_cpu = self.med(key, "tutti", "cpu_ms_per_req")
            peer_cpu, peer = self.best_peer(key, "cpu_ms_per_req", True)
            if tutti_cpu is not None and peer_cpu:
                ratio = tutti_cpu / peer_cpu
                cpu.at_most(ratio, 0.7, f"{ratio:.2f}x {peer} "
                            f"({tutti_cpu * 1000:.1f} against "
                            f"{peer_cpu * 1000:.1f} us)", "x")
            tutti_rps = self.med(key, "tutti", "rps")
            peer_rps, peer = self.best_peer(key, "rps", False)
            if tutti_rps is not None and peer_rps:
                ratio = tutti_rps / peer_rps
                rps.at_least(ratio, 1.3, f"{ratio:.2f}x {peer} "
                             f"({tutti_rps:,.0f} against {peer_rps:,.0f})",
                             "x")
            goals += [cpu, rps]

        for field, limit, goal_id in (("p99", 0.5, "s3-p99"),
                                      ("p99.9", 1.5, "s3-p999")):
            goal = Goal(goal_id, f"S3: latency added by tutti at {field} "
                        f"<= {limit} ms")
            added = self.added_latency("tutti", field)
            if added is not None:
                goal.at_most(added, limit, f"{added:.3f} ms", " ms")
            goals.append(goal)

        goal = Goal("s4-flat", "S4: tutti CPU per call within 20% from "
                    "width 4 to 32")
        per_call = [self.med(f"s4-{w}", "tutti", "cpu_us_per_call")
                    for w in (4, 8, 16, 32)
                    if w in self.bench.s4_widths]
        per_call = [v for v in per_call if v is not None]
        if len(per_call) >= 2 and min(per_call) > 0:
            spread = max(per_call) / min(per_call) - 1
            goal.at_most(spread * 100, 20, f"{spread * 100:.0f}% "
                         f"({min(per_call):.2f} to {max(per_call):.2f} us)",
                         "%")
        goals.append(goal)

        complete = Goal("s5-complete", "S5: tutti answers every held request")
        vs_go = Goal("s5-vs-go", "S5: tutti RSS per request in flight <= "
                     "half of Go's")
        under = Goal("s5-32k", "S5: tutti RSS per request in flight "
                     "< 32 KiB")
        rows = self.rows("s5", "tutti")
        if rows:
            missing = max(row["held"] - row["ok"] for row in rows)
            held = rows[0]["held"]
            complete.measured = (f"{held - missing} of {held} answered "
                                 "200 in the worst round")
            complete.met = missing == 0
            if missing:
                complete.shortfall = (f"{missing} of {held} requests not "
                                      "answered 200")
            kib = self.med("s5", "tutti", "kib_per_request")
            go_kib = self.med("s5", "go", "kib_per_request")
            if go_kib:
                ratio = kib / go_kib
                vs_go.at_most(ratio, 0.5, f"{ratio:.2f}x Go ({kib:.1f} "
                              f"against {go_kib:.1f} KiB)", "x")
            under.measured = f"{kib:.1f} KiB"
            under.met = kib < 32
            if not under.met:
                under.shortfall = by_how_much(kib, 32, " KiB", "not below")
        goals += [complete, vs_go, under]

        p99 = Goal("s6-p99", "S6: p99 of (response time - deadline) "
                   "<= 2 ms")
        early = Goal("s6-early", "S6: no response before the deadline")
        late_p99 = self.med("s6", "tutti", "late_p99")
        if late_p99 is not None:
            p99.at_most(late_p99, 2.0, f"{late_p99:.3f} ms", " ms")
            lowest = min(row["late_min"] for row in self.rows("s6", "tutti"))
            early.measured = f"earliest {lowest:.3f} ms after the deadline"
            early.met = lowest >= 0
            if not early.met:
                early.shortfall = f"a response came {-lowest:.3f} ms early"
        goals += [p99, early]

        goal = Goal("s7-p99", "S7: tutti p99 cancel latency <= 2 ms")
        rows = self.rows("s7", "tutti")
        cancel = self.med("s7", "tutti", "cancel_p99")
        if cancel is not None:
            goal.at_most(cancel, 2.0, f"{cancel:.3f} ms", " ms")
        elif rows:
            goal.measured = "tutti never cancelled"
            goal.met = False
            goal.shortfall = "no cancel event for the slow calls"
        goals.append(goal)

        goal = Goal("s8-limit", "S8: tutti CPU per request <= 1.25x "
                    "(width + 1) x nginx's CPU per exchange")
        ratio = self.limit_ratio("tutti")
        if ratio is not None:
            goal.at_most(ratio, 1.25, f"{ratio:.2f}x the limit", "x")
        goals.append(goal)
        return goals

    def limit_ratio(self, gateway):
        nginx = self.med("s8", "nginx", "cpu_ms_per_req")
        cpu = self.med("s1", gateway, "cpu_ms_per_req")
        if not nginx or cpu is None:
            return None
        return cpu / (4 * nginx)

    # -- tables ----------------------------------------------------------

    def cell(self, scenario, gateway, key, field, digits=2, scale=1.0):
        reason = self.na(scenario, gateway)
        if reason is not None:
            return "n/a"
        value = self.med(key, gateway, field)
        return fmt(value * scale if value is not None else None, digits)

    def table(self, header, rows):
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    def section_throughput(self, scenario):
        key = f"s{scenario}"
        rows = []
        for g in self.gateways:
            rows.append([g] + [
                self.cell(scenario, g, key, "rps", 0),
                self.cell(scenario, g, key, "p50", 3),
                self.cell(scenario, g, key, "p99", 3),
                self.cell(scenario, g, key, "p99.9", 3),
                self.cell(scenario, g, key, "cpu_ms_per_req", 4),
                self.cell(scenario, g, key, "peak_rss_mib", 1),
                self.cell(scenario, g, key, "errors", 0)])
        return self.table(["gateway", "requests/s", "p50 ms", "p99 ms",
                           "p99.9 ms", "CPU s / 1000 req", "peak RSS MiB",
                           "errors"], rows)

    def section_s3(self):
        rows = []
        direct = self.rows("s3", "direct")
        if direct:
            rows.append(["direct to the 60 ms downstream"] + [
                fmt(median_of(direct, f), 3) for f in ("p50", "p99", "p99.9")]
                + ["-", "-", "-", "-", fmt(median_of(direct, "errors"), 0)])
        for g in self.gateways:
            added = [self.added_latency(g, f) for f in ("p50", "p99",
                                                        "p99.9")]
            rows.append([g] + [self.cell(3, g, "s3", f, 3)
                               for f in ("p50", "p99", "p99.9")]
                        + [fmt(a, 3) for a in added]
                        + [self.cell(3, g, "s3", "cpu_ms_per_req", 4),
                           self.cell(3, g, "s3", "errors", 0)])
        main = self.table(["gateway", "p50 ms", "p99 ms", "p99.9 ms",
                           "added p50 ms", "added p99 ms", "added p99.9 ms",
                           "CPU s / 1000 req", "errors"], rows)
        sweep_rows = []
        for g in self.gateways:
            for rate in self.bench.s3_sweep:
                key = f"s3-sweep-{rate}"
                if not self.rows(key, g):
                    continue
                sweep_rows.append([g, str(rate)] + [
                    fmt(self.med(key, g, f), 3)
                    for f in ("p50", "p99", "p99.9")]
                    + [fmt(self.med(key, g, "errors"), 0)])
        sweep = self.table(["gateway", "offered rps", "p50 ms", "p99 ms",
                            "p99.9 ms", "errors"], sweep_rows)
        return main + "\n\nOffered-load sweep:\n\n" + sweep

    def section_s4(self):
        widths = self.bench.s4_widths
        rows = []
        for g in self.gateways:
            rows.append([g] + [
                fmt(self.med(f"s4-{w}", g, "cpu_us_per_call"), 2)
                for w in widths])
        per_call = self.table(["gateway"] + [f"width {w}" for w in widths],
                              rows)
        rows = []
        for g in self.gateways:
            rows.append([g] + [fmt(self.med(f"s4-{w}", g, "rps"), 0)
                               for w in widths])
        rps = self.table(["gateway"] + [f"width {w}" for w in widths], rows)
        return ("CPU microseconds per downstream call:\n\n" + per_call
                + "\n\nRequests per second:\n\n" + rps)

    def section_s5(self):
        rows = []
        for g in self.gateways:
            rows.append([g] + [
                self.cell(5, g, "s5", "held", 0),
                self.cell(5, g, "s5", "ok", 0),
                self.cell(5, g, "s5", "idle_rss_mib", 1),
                self.cell(5, g, "s5", "peak_rss_mib", 1),
                self.cell(5, g, "s5", "kib_per_request", 2),
                self.cell(5, g, "s5", "max", 0)])
        return self.table(["gateway", "held", "answered 200", "idle RSS MiB",
                           "peak RSS MiB", "KiB per request",
                           "slowest ms"], rows)

    def section_s6(self):
        rows = []
        for g in self.gateways:
            rows.append([g] + [self.cell(6, g, "s6", f, 3) for f in (
                "late_min", "late_p50", "late_p99", "late_p99.9",
                "late_max")] + [self.cell(6, g, "s6", "errors", 0)])
        return self.table(["gateway", "min ms", "p50 ms", "p99 ms",
                           "p99.9 ms", "max ms", "errors"], rows)

    def section_s7(self):
        rows = []
        for g in self.gateways:
            if self.na(7, g) is not None:
                rows.append([g] + ["n/a"] * 8)
                continue
            data = self.rows("s7", g)
            never = bool(data) and all(row["never_cancels"] for row in data)
            rows.append([g] + [
                "never cancels" if never else
                self.cell(7, g, "s7", "cancel_p50", 3),
                "never cancels" if never else
                self.cell(7, g, "s7", "cancel_p99", 3),
                self.cell(7, g, "s7", "cancel_max", 3),
                str(sum(row["requests"] for row in data)),
                str(sum(row["cancelled"] for row in data)),
                str(sum(row["before_sent"] for row in data)),
                str(sum(row["completed"] for row in data)),
                str(sum(row["unsent"] for row in data))])
        return self.table(["gateway", "p50 ms", "p99 ms", "max ms",
                           "requests", "slow calls cancelled",
                           "of which before the request was sent",
                           "slow calls run to the end",
                           "slow calls not seen by faultd"], rows)

    def section_s8(self):
        nginx = self.med("s8", "nginx", "cpu_ms_per_req")
        lines = []
        if nginx:
            lines.append(f"nginx alone: {nginx * 1000:.2f} us CPU per "
                         f"exchange at "
                         f"{self.med('s8', 'nginx', 'rps'):,.0f} requests/s."
                         f" The limit for scenario 1 (width 3) is 4 x that, "
                         f"{4 * nginx * 1000:.2f} us per request.\n")
        rows = []
        for g in self.gateways:
            ratio = self.limit_ratio(g)
            cpu = self.med("s1", g, "cpu_ms_per_req")
            rows.append([g, fmt(cpu * 1000 if cpu is not None else None, 2),
                         fmt(ratio, 2)])
        lines.append(self.table(["gateway", "S1 CPU us per request",
                                 "x the limit"], rows))
        return "\n".join(lines)

    # -- the document ----------------------------------------------------

    def write(self, out_dir, plot_prefix):
        """Write out_dir/BENCHMARKS.md and return its path and the goals."""
        goals = self.evaluate_goals()
        parts = self.intro_lines()
        parts += self.results_lines(plot_prefix)
        parts += self.goal_lines(goals)
        parts += self.command_lines()
        evaluated = [goal for goal in goals if goal.met is not None]
        met = sum(1 for goal in evaluated if goal.met)
        parts += ["", f"goal-check: {met} of {len(evaluated)} goals met"]
        path = out_dir / "BENCHMARKS.md"
        path.write_text("\n".join(parts) + "\n")
        return path, goals

    def intro_lines(self):
        bench = self.bench
        parts = [
            "# Benchmarks",
            "",
            f"Generated by `{bench.command_line}` on "
            f"{datetime.date.today().isoformat()}: "
            f"{bench.rounds} round(s), each scenario run against every "
            f"gateway in turn within a round "
            f"(gateway order {', '.join(self.gateways)}). "
            f"Each number is the median over the rounds. "
            f"Load runs last {bench.duration} s "
            f"({bench.short_duration} s for each point of the scenario 3 "
            f"sweep and each fan-out width of scenario 4), after a "
            f"{bench.warmup_s} s warm-up in scenarios 1 to 4.",
            "",
            "## Machine",
            "",
        ]
        parts += [f"- {line}" for line in machine_lines(bench)]
        parts += ["", "## Versions", ""]
        parts += [f"- {line}"
                  for line in version_lines(self.root, self.tutti_bin)]
        notes = [f"- skipped {name}: {reason}"
                 for name, reason in bench.skipped.items()]
        notes += [f"- {note}" for note in bench.notes]
        for (key, gateway), rows in sorted(self.results.items()):
            if key.startswith("na-s"):
                notes.append(f"- {gateway} is n/a in scenario "
                             f"{key[len('na-s'):]}: {rows[0]['reason']}")
        if notes:
            parts += ["", "## Notes", ""] + notes
        return parts

    def scenario_sections(self):
        """Return (scenario, result key, render function, method text)."""
        bench = self.bench
        slowest = bench.s3_delays[-1]
        return [
            (1, "s1", lambda: self.section_throughput(1),
             f"wrk, {bench.wrk_connections} connections, three calls to "
             "three nginx over HTTP/1.1 keep-alive."),
            (2, "s2", lambda: self.section_throughput(2),
             f"wrk, {bench.wrk_connections} connections, three calls to "
             "one nghttpd over h2c."),
            (3, "s3", self.section_s3,
             f"loadgen at {bench.s3_rate} requests/s, three calls to faultd "
             f"answering after {', '.join(map(str, bench.s3_delays))} ms. "
             "Added latency is the gateway's percentile minus the same "
             f"percentile of loadgen sent straight to the {slowest} ms "
             "downstream in the same round. Latency counts from each "
             "request's scheduled send time. A round has "
             f"{bench.s3_rate * bench.duration:,} requests, so its p99.9 "
             f"rests on the slowest "
             f"{max(1, bench.s3_rate * bench.duration // 1000)} of them. "
             "The added columns are medians of the per-round differences, "
             "so they need not equal the difference of the medians shown."),
            (4, "s4-1", self.section_s4,
             f"wrk, {bench.wrk_connections} connections, calls spread over "
             "the three nginx."),
            (5, "s5", self.section_s5,
             f"loadgen --hold {bench.s5_hold}: one request per connection, "
             f"all sent at once, one {bench.s5_scheme}:// call to faultd "
             f"answering after {bench.s5_delay_ms} ms. KiB per request is "
             "(peak RSS - idle RSS) / held requests, RSS summed over the "
             "gateway's processes and sampled every 20 ms until loadgen "
             "ends, so the peak includes the connections after their "
             "responses, which loadgen keeps open."),
            (6, "s6", self.section_s6,
             f"loadgen at {bench.s6_rate} requests/s, three calls to faultd "
             f"that never answer, deadline {bench.s6_deadline_ms} ms. "
             "Columns: response time minus the deadline, from loadgen's "
             "per-request samples, each the median of its per-round value "
             "(the goal's earliest response is the minimum over all "
             "rounds). With few samples a round's p99.9 is its maximum."),
            (7, "s7", self.section_s7,
             "One call answers 500 at once, and two would take 2 s. "
             "Requests are sent one at a time. Cancel latency is faultd's "
             "`cancel` event of a slow call minus the `response` event of "
             "the failing call. When the gateway drops a slow call while "
             "its connection is still being set up, the connection closes "
             "before the request arrives, and faultd's `conn_close` event "
             "of that connection gives the sample instead. Each column is "
             "a median over the rounds on its own, so the counts need not "
             "add up."),
            (8, "s8", self.section_s8,
             f"wrk, {bench.wrk_connections} connections, straight to one "
             "nginx downstream."),
        ]

    def results_lines(self, plot_prefix):
        bench = self.bench
        ran = {key[0] for key in self.results}
        parts = ["", "## Results"]
        for scenario, key, render, how in self.scenario_sections():
            if key in ran:
                parts += ["", f"### S{scenario}. "
                          f"{SCENARIO_TITLES[scenario]}", "", how, "",
                          render()]
        ir = self.rows("ir", "tutti")
        if ir:
            parts += ["", "### Instructions per request (callgrind)", "",
                      f"tutti, scenario 1 fan-out, one worker, requests "
                      f"sent one at a time: "
                      f"**{ir[0]['ir_per_req']:,.0f}** instructions "
                      f"(Ir) per request, from the callgrind counters over "
                      f"{ir[0]['requests']} requests after "
                      f"{bench.callgrind_counts[0]} warm-up requests.",
                      "",
                      "glibc's memset clears large blocks with `rep stosb`, "
                      "which callgrind counts once per byte, so the "
                      "zeroing of libmicrohttpd's connection memory pool "
                      "after each request weighs far more in this count "
                      "than in CPU time. The count is for comparing "
                      "commits, not for comparing with the CPU figures."]
        if bench.plots:
            parts += ["", "## Plots", ""]
            for title, name in bench.plots:
                parts += [f"![{title}]({plot_prefix}{name})", ""]
        return parts

    def goal_lines(self, goals):
        parts = ["", "## Goals", "",
                 "Computed from the medians above. The benchmark never "
                 "fails on them.", ""]
        status = {True: "met", False: "missed", None: "not measured"}
        rows = [[goal.text, goal.measured, status[goal.met]]
                for goal in goals]
        parts.append(self.table(["goal", "measured", "result"], rows))
        missed = [goal for goal in goals if goal.met is False]
        if missed:
            parts += ["", "### Missed goals", ""]
        for goal in missed:
            note = self.goal_notes.get(goal.goal_id)
            parts.append(f"- **{goal.text}**: missed by {goal.shortfall}.")
            if note:
                parts.append("  - Cause, from a profile taken when the "
                             f"goal was last missed (not from this run): "
                             f"{note}")
            else:
                parts.append("  - No profile of this miss is recorded yet "
                             f"(GOAL_NOTES[\"{goal.goal_id}\"] in "
                             "tests/bench/bench.py).")
        if self.bench.failures:
            parts += ["", "## Failed steps", ""]
            parts += [f"- {failure.splitlines()[0]}"
                      for failure in self.bench.failures]
        return parts

    def command_lines(self):
        parts = ["", "## Commands", "",
                 "Each gateway got a bench config file (JSON), and tutti's "
                 "configuration is made from it. The first command of each "
                 "kind, as run:", ""]
        parts += [f"- {kind}: `{cmd}`"
                  for kind, cmd in sorted(self.bench.commands.items())]
        return parts


def machine_lines(bench):
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    debian = ""
    with contextlib.suppress(OSError):
        debian = "Debian " + Path("/etc/debian_version").read_text().strip()
    lines = [
        f"CPU: {model}, {os.cpu_count()} CPUs online",
        f"Memory: {mem_kib / 1024 / 1024:.1f} GiB",
        f"System: {debian}, Linux {platform.release()}",
        f"Open files limit (RLIMIT_NOFILE): {bench.nofile}",
    ]
    if bench.pin["gateway"]:
        lines.append("Pinning (taskset): each gateway on CPU 1 with one "
                     "worker; wrk, loadgen, nginx, nghttpd and faultd on "
                     "CPU 0. callgrind ran tutti on CPU 1 too.")
    else:
        lines.append("Pinning: none (CPUs 0 and 1 are not both available "
                     "to this process).")
    lines.append("CPU per request: utime + stime from /proc/PID/stat, "
                 "summed over the gateway's process tree, before and after "
                 "the load, divided by the completed requests.")
    return lines


def version_lines(root, tutti_bin):
    def first_line(cmd):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return "not found"
        text = (done.stdout + done.stderr).strip()
        return text.splitlines()[0] if text else "unknown"

    commit = first_line(["git", "-C", str(root), "rev-parse", "--short",
                         "HEAD"])
    dirty = first_line(["git", "-C", str(root), "status", "--porcelain",
                        "--untracked-files=no"])
    return [
        f"tutti: {first_line([str(tutti_bin), '--version'])}, commit "
        f"{commit}{' with local changes' if dirty not in ('unknown', '') else ''}",
        f"go: {first_line(['go', 'version'])}",
        f"node: {first_line(['node', '--version'])}",
        f"nginx: {first_line(['nginx', '-v'])}",
        f"nginx Lua module: {dpkg_version('libnginx-mod-http-lua')}",
        f"nghttpd: {first_line(['nghttpd', '--version'])}",
        f"wrk: {first_line(['wrk', '-v'])}",
        f"valgrind: {first_line(['valgrind', '--version'])}",
        f"gnuplot: {first_line(['gnuplot', '--version'])}",
        f"cc: {first_line(['cc', '--version'])}",
    ]


def dpkg_version(package):
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "not installed"


# ---------------------------------------------------------------------------
# Plots


def make_plots(bench, report, out_dir, work):
    """Write the PNG plots with gnuplot and return (title, file name)
    pairs."""
    plots = []
    gateways = report.gateways
    if shutil.which("gnuplot") is None:
        bench.skipped["plots"] = "gnuplot not found"
        return plots

    def write_data(name, rows):
        path = work / name
        path.write_text("\n".join(" ".join(str(v) for v in row)
                                  for row in rows) + "\n")
        return path

    def run_gnuplot(script, name):
        script_path = work / (name + ".gp")
        script_path.write_text(script)
        run_tool(["gnuplot", str(script_path)], 60, "gnuplot")
        return name

    slowest = bench.s3_delays[-1]
    series = []
    for g in gateways:
        rows = []
        for rate in bench.s3_sweep:
            values = [report.med(f"s3-sweep-{rate}", g, f)
                      for f in ("p50", "p99", "p99.9")]
            if None in values:
                continue
            # Latency above the slowest downstream, clamped because a log
            # scale needs values above 0.
            rows.append([rate] + [max(v - slowest, 0.01) for v in values])
        if rows:
            series.append((g, write_data(f"sweep-{g}.dat", rows)))
    if series:
        panels = []
        for column, label in ((2, "p50"), (3, "p99"), (4, "p99.9")):
            lines = ", ".join(
                f"'{path}' using 1:{column} with linespoints title '{g}'"
                for g, path in series)
            panels.append(f"set title '{label}'\nplot {lines}\n")
        script = (
            "set terminal pngcairo size 1500,500 font ',10'\n"
            f"set output '{out_dir / 'latency-vs-load.png'}'\n"
            "set multiplot layout 1,3 title 'S3: latency above the "
            f"slowest ({slowest} ms) downstream against offered load'\n"
            "set logscale xy\nset grid\nset key top left\n"
            f"set xrange [{min(bench.s3_sweep) * 0.8:g}:"
            f"{max(bench.s3_sweep) * 1.25:g}]\n"
            f"set xtics ({', '.join(map(str, bench.s3_sweep))})\n"
            "set xlabel 'offered load (requests/s, log scale)'\n"
            f"set ylabel 'latency - {slowest} ms (ms, log scale)'\n"
            + "".join(panels) + "unset multiplot\n")
        run_gnuplot(script, "latency-vs-load")
        plots.append(("Latency percentiles against offered load",
                      "latency-vs-load.png"))

    series = []
    for g in gateways:
        rows = []
        for width in bench.s4_widths:
            per_req = report.med(f"s4-{width}", g, "cpu_ms_per_req")
            if per_req is not None:
                rows.append([width, per_req * 1000, per_req * 1000 / width])
        if rows:
            series.append((g, write_data(f"fanout-{g}.dat", rows)))
    if series:
        panels = []
        for column, label in ((2, "CPU per request (us)"),
                              (3, "CPU per downstream call (us)")):
            lines = ", ".join(
                f"'{path}' using 1:{column} with linespoints title '{g}'"
                for g, path in series)
            panels.append(f"set ylabel '{label}'\nplot {lines}\n")
        script = (
            "set terminal pngcairo size 1200,500 font ',10'\n"
            f"set output '{out_dir / 'cpu-vs-fanout.png'}'\n"
            "set multiplot layout 1,2 title 'S4: gateway CPU against "
            "fan-out width (wrk, 50 connections)'\n"
            "set logscale x 2\nset grid\nset key top left\n"
            "set xlabel 'fan-out width (calls per request)'\n"
            "set yrange [0:*]\n"
            + "".join(panels) + "unset multiplot\n")
        run_gnuplot(script, "cpu-vs-fanout")
        plots.append(("CPU per request against fan-out width",
                      "cpu-vs-fanout.png"))
    return plots
