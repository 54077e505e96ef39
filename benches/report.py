#!/usr/bin/env python3
"""Measures idle threads and the machine's load, and renders BENCHMARKS.md, for
benches/run.sh.

    report.py idle SECONDS NAME:PID...   prints the wake-ups and CPU time of each
                                         thread of each process over SECONDS, as JSON
    report.py load SESSION               prints, every 5 s until killed, one JSON line
                                         with the CPU time that processes outside
                                         session SESSION used, and the steal time
    report.py render OUT_DIR             prints BENCHMARKS.md from run.sh's results
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- Idle measurement ----------------------------------------------------------------


def thread_snapshot(pid: int) -> dict:
    """Returns {tid: {name, voluntary, involuntary, cpu_ns}} for every thread of pid."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended between the listing and the read
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        after_name = stat.rsplit(")", 1)[1].split()
        ticks = int(after_name[11]) + int(after_name[12])  # utime + stime
        cpu_ns = ticks * 1_000_000_000 // CLOCK_TICKS
        schedstat = task / "schedstat"
        if schedstat.exists():  # nanoseconds on the CPU, where the kernel keeps them
            cpu_ns = int(schedstat.read_text().split()[0])
        threads[int(task.name)] = {
            "name": fields["Name"].strip(),
            "voluntary": int(fields["voluntary_ctxt_switches"]),
            "involuntary": int(fields["nonvoluntary_ctxt_switches"]),
            "cpu_ns": cpu_ns,
        }
    return threads


def idle(seconds: int, programs: list[str]) -> None:
    pids = {name: int(pid) for name, pid in (p.split(":") for p in programs)}
    before = {name: thread_snapshot(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    after = {name: thread_snapshot(pid) for name, pid in pids.items()}
    result = {}
    for name, pid in pids.items():
        threads = []
        for tid in sorted(set(before[name]) | set(after[name])):
            old, new = before[name].get(tid), after[name].get(tid)
            base = old or {"voluntary": 0, "involuntary": 0, "cpu_ns": 0}
            last = new or old
            if old and new:
                seen = "both"
            elif new:
                seen = "started"
            else:
                seen = "ended"
            threads.append(
                {
                    "tid": tid,
                    "name": last["name"],
                    "main": tid == pid,
                    "seen": seen,
                    "voluntary": last["voluntary"] - base["voluntary"],
                    "involuntary": last["involuntary"] - base["involuntary"],
                    "cpu_us": (last["cpu_ns"] - base["cpu_ns"]) / 1000,
                }
            )
        result[name] = {"seconds": seconds, "threads": threads}
    json.dump(result, sys.stdout, indent=2)


# --- Load from elsewhere ---------------------------------------------------------------


def process_times() -> dict[int, tuple[int, str, int]]:
    """Returns {pid: (session, name, CPU ticks)} for every process."""
    processes = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        # After the name: state, ppid, pgrp, session, ..., utime (12th), stime (13th).
        processes[int(entry.name)] = (int(fields[3]), name, int(fields[11]) + int(fields[12]))
    return processes


def cpu_ticks() -> tuple[int, int]:
    """Returns the machine's total and steal ticks from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[7]


def sample_load(session: int) -> None:
    cores = os.cpu_count() or 1
    before, (total_before, steal_before) = process_times(), cpu_ticks()
    while True:
        time.sleep(5)
        after, (total_after, steal_after) = process_times(), cpu_ticks()
        elapsed = max(total_after - total_before, 1)  # ticks over all cores
        outside: dict[str, int] = {}
        for pid, (sid, name, ticks) in after.items():
            if sid == session:
                continue
            used = ticks - before.get(pid, (sid, name, 0))[2]
            if used > 0:
                outside[name] = outside.get(name, 0) + used
        busiest = sorted(outside.items(), key=lambda item: -item[1])[:3]
        line = {
            "time": int(time.time()),
            "load": float(Path("/proc/loadavg").read_text().split()[0]),
            "outside_cores": sum(outside.values()) / elapsed * cores,
            "steal_cores": (steal_after - steal_before) / elapsed * cores,
            "busiest": [[name, ticks / elapsed * cores] for name, ticks in busiest],
        }
        print(json.dumps(line), flush=True)
        before, total_before, steal_before = after, total_after, steal_after


# --- Rendering -----------------------------------------------------------------------


def summary(values: list[float]) -> dict:
    values = sorted(values)
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": values[0],
        "max": values[-1],
        "count": len(values),
    }


def fmt(s: dict, digits: int = 1, unit: str = "") -> str:
    """Formats a summary as `median (IQR q1–q3, range min–max, n)`."""
    f = f"{{:.{digits}f}}"
    u = f" {unit}" if unit else ""
    if s["count"] == 1:
        return f"{f.format(s['median'])}{u} (one run)"
    if s["count"] < 4:  # too few runs for quartiles
        return f"{f.format(s['median'])}{u} (range {f.format(s['min'])}–{f.format(s['max'])}, n = {s['count']})"
    return (
        f"{f.format(s['median'])}{u} (IQR {f.format(s['q1'])}–{f.format(s['q3'])}, "
        f"range {f.format(s['min'])}–{f.format(s['max'])}, n = {s['count']})"
    )


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def load_criterion(out: Path, group: str, name: str) -> dict:
    """Returns the per-sample time per call in ns of one criterion benchmark."""
    base = out / "results" / "criterion" / group / name / "new"
    sample = json.loads((base / "sample.json").read_text())
    per_call = [t / i for t, i in zip(sample["times"], sample["iters"])]
    return summary(per_call)


def read_pairs(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def render(out: Path) -> None:
    machine = dict(line.split("=", 1) for line in (out / "machine.env").read_text().splitlines())
    results = out / "results"
    overhead = json.loads((results / "overhead.json").read_text())
    fanout = json.loads((results / "fanout.json").read_text())
    memory = json.loads((results / "memory.json").read_text())
    idle_result = json.loads((results / "idle.json").read_text())
    crates = {name: int(count) for name, count in read_pairs(results / "crates.txt")}
    builds: dict[str, list[float]] = {}
    for name, _run, ms in read_pairs(results / "builds.txt"):
        builds.setdefault(name, []).append(int(ms) / 1000)
    sizes = {name: (int(raw), int(stripped)) for name, raw, stripped in read_pairs(results / "sizes.txt")}
    their_memory = read_pairs(results / "redis-entra-id-memory.txt")
    their_added = summary([(int(a) - int(b)) / 1024 for b, a in their_memory])
    their_total = summary([int(a) / 1024 for _b, a in their_memory])
    their_fanout = summary([float(v[0]) for v in read_pairs(results / "redis-entra-id-fanout.txt")])
    cold: dict[str, list[float]] = {}
    for round_file in sorted((out / "cold").glob("round-*.json")):
        for entry in json.loads(round_file.read_text())["results"]:
            cold.setdefault(entry["command"], []).extend(t * 1000 for t in entry["times"])
    cold_summary = {name: summary(times) for name, times in cold.items()}
    load = [json.loads(line) for line in (out / "load.jsonl").read_text().splitlines()]

    lines: list[str] = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("redis-entraid against the `redis` crate's own Entra ID support (its `entra-id`")
    w("feature: tokio and azure_identity), measured side by side in one run of")
    w("`bash benches/run.sh` on one machine. This file is that script's output; run it")
    w("again to reproduce every figure.")
    w("")
    w("Each figure is the median, with the interquartile range (IQR) and the full range")
    w("of the repeated measurements and their number `n`. A ratio is redis-entraid's")
    w("figure divided by the other one, so below 1 favours redis-entraid.")
    w("")
    w("## Machine")
    w("")
    w(f"- {machine['nproc']} cores: {machine['cpu']}, {machine['memory']}, Linux {machine['kernel']}")
    w(f"- {machine['rustc']}; redis-server {machine['redis_server']}; {machine['python']};")
    w(f"  hyperfine {machine['hyperfine'].replace('hyperfine ', '')}; {machine['openssl']}")
    w(f"- run at {machine['date']} on commit {machine['commit']}")
    loads = [sample["load"] for sample in load]
    outside = [sample["outside_cores"] for sample in load]
    steal = [sample["steal_cores"] for sample in load]
    busy = [sample for sample in load if sample["outside_cores"] >= 0.2]
    w(
        f"- load average during the run (sampled every 5 s): median {statistics.median(loads):.1f}, "
        f"range {min(loads):.1f}–{max(loads):.1f}"
    )
    w(
        f"- CPU used by processes outside this run, in cores: median {statistics.median(outside):.2f}, "
        f"max {max(outside):.2f}; hypervisor steal: median {statistics.median(steal):.2f}, "
        f"max {max(steal):.2f}"
    )
    if busy:
        names = sorted({name for sample in busy for name, cores in sample["busiest"] if cores >= 0.1})
        w(
            f"- **other work shared the cores**: in {len(busy)} of {len(load)} samples, processes "
            f"outside this run used a fifth of a core or more (mostly {', '.join(names)}). "
            "Absolute times are noisy for that reason; the alternating runs and the ratios "
            "less so."
        )
    else:
        w("- no sample found processes outside this run using a fifth of a core or more")
    w("")

    # (1)
    cpu1 = load_criterion(out, "get_credentials", "one_thread_cpu")
    cpu2 = load_criterion(out, "get_credentials", "two_threads_cpu")
    wall1 = load_criterion(out, "get_credentials", "one_thread")
    wall2 = load_criterion(out, "get_credentials", "two_threads")
    gen = load_criterion(out, "generation", "")
    w("## 1. Cached credentials")
    w("")
    w("`EntraIdProvider::get_credentials()` (blocking) on a warm provider holding a")
    w("one-hour token; `benches/credentials.rs`, criterion, 100 samples each. Time per")
    w("call; with two threads, each thread's time per call while both call at once.")
    w("CPU time is the calling thread's (`CLOCK_THREAD_CPUTIME_ID`): waiting for a core")
    w("that other processes hold does not count in it, while contention on shared memory")
    w("does. Waiting on a lock would show in wall-clock time only, and the read path has")
    w("no lock any more (see below).")
    w("")
    w("| case | CPU time per call | wall-clock time per call |")
    w("|---|---|---|")
    w(f"| one thread | {fmt(cpu1, 1, 'ns')} | {fmt(wall1, 1, 'ns')} |")
    w(f"| two threads at once | {fmt(cpu2, 1, 'ns')} | {fmt(wall2, 1, 'ns')} |")
    w(f"| `generation()`, for reference | | {fmt(gen, 2, 'ns')} |")
    w("")
    w(
        f"Two threads against one, CPU time: {cpu2['median'] / cpu1['median']:.2f}. "
        "The redis crate has no synchronous call to compare with: its provider hands "
        "credentials only to subscribed connections."
    )
    w("")
    w("Before the read path changed (commit f8c630f; same benchmark, a separate run on")
    w("this machine under similar load), every call locked the provider's mutex and")
    w("cloned the shared token, whose reference count every caller wrote:")
    w("")
    w("| case | before (CPU) | after (CPU) | before (wall) | after (wall) |")
    w("|---|---|---|---|---|")
    w("| one thread | 83 ns | 65 ns | 108 ns | 78 ns |")
    w("| two threads | 96 ns | 63 ns | 431 ns | 196 ns |")
    w("")
    w("Now each thread keeps a private copy of the credentials it last read, checked")
    w("against the provider's generation (one atomic load) and the token's expiry; only")
    w("the first call after a renewal locks. Most of the remaining time is the clock read")
    w("for the expiry check and the allocation of the returned username.")
    w("")

    # (2)
    w("## 2. Per-command overhead")
    w("")
    w("`benches/overhead.rs`: one private redis-server; `GET` reads a 16-byte value.")
    w("Blocking: `EntraConnection` against a `redis::Connection` with a static password.")
    w("Async: a smol `MultiplexedConnection` with the smol `EntraIdProvider` against one")
    w("with a static password. Each round times 1,000 sequential commands on each")
    w("connection of a pair, alternating which goes first; the ratio is computed per")
    w("round. Times are per command, in µs.")
    w("")
    w("| pair | redis-entraid | static password | ratio |")
    w("|---|---|---|---|")
    for key, label in [
        ("blocking_ping", "blocking `PING`"),
        ("blocking_get", "blocking `GET`"),
        ("async_ping", "async `PING`"),
        ("async_get", "async `GET`"),
    ]:
        r = overhead[key]
        w(f"| {label} | {fmt(r['entraid_us'], 2)} | {fmt(r['static_us'], 2)} | {fmt(r['ratio'], 3)} |")
    w("")
    w("Absolute round-trip times on this virtual machine vary between runs of the script")
    w("by up to ten times (about 7 µs and 70 µs for a blocking `PING` in two runs), while")
    w("the ratios stayed near 1; compare the ratios, not the times across runs.")
    w("")
    w("No ratio against the redis crate's `entra-id` here: it has no blocking connection,")
    w("and its async connection is the same `MultiplexedConnection`, on tokio, with the")
    w("same re-authentication task that the smol rows use. This run does not measure it.")
    w("")

    # (3)
    a, b = fanout["async_1000"], fanout["blocking_200"]
    w("## 3. Renewal fan-out")
    w("")
    w("Time from a renewal until redis-server has counted one more `AUTH` per connection")
    w("(`INFO commandstats`, polled every millisecond). redis-entraid: `benches/fanout.rs`,")
    w("renewals by `force_refresh()`, timed from that call (including the token request")
    w("to the mock) and from the moment the provider published the new credentials.")
    w("The redis crate: `benches/redis-entra-id/src/bin/scenarios.rs`; its provider has no")
    w("forced refresh, so the mock issues 245-second tokens, which it renews every 5 s")
    w("(240 s before expiry), and the time runs from the mock's sending of the token")
    w("response. Blocking connections re-authenticate before their next command; each of")
    w("the 200 threads sends `PING` every millisecond, which adds up to 1 ms.")
    w("")
    w("| connections | from the token request | from new credentials / token response | ratio |")
    w("|---|---|---|---|")
    w(
        f"| redis-entraid, 1,000 async (smol) | {fmt(a['from_force_refresh_ms'], 1, 'ms')} | "
        f"{fmt(a['from_new_credentials_ms'], 1, 'ms')} | "
        f"{a['from_force_refresh_ms']['median'] / their_fanout['median']:.2f} from the request, "
        f"{a['from_new_credentials_ms']['median'] / their_fanout['median']:.2f} from new credentials |"
    )
    w(f"| redis crate, 1,000 async (tokio) | | {fmt(their_fanout, 1, 'ms')} | |")
    w(f"| for scale: the 1,000 smol connections each sending one `PING`, all at once | | {fmt(a['one_ping_each_ms'], 1, 'ms')} | |")
    w(
        f"| redis-entraid, 200 blocking | {fmt(b['from_force_refresh_ms'], 1, 'ms')} | "
        f"{fmt(b['from_new_credentials_ms'], 1, 'ms')} | no counterpart |"
    )
    w("")
    w("Timed from its token request, redis-entraid's figure includes one token round trip")
    w("to the mock that the redis crate's figure, timed from the token response, does not;")
    w("timed from new credentials, it leaves out the reading and parsing of the response")
    w("that the other includes. The two ratios bracket the comparison.")
    w("")

    # (4)
    w("## 4. Idle cost")
    w("")
    w("Each minimal program (`benches/minimal`, `benches/redis-entra-id`) takes a")
    w("one-hour token, authenticates one connection, sends `PING` and sleeps; all four")
    w(f"run at once. Starting 5 s after the `PING`, over {idle_result['redis-entra-id']['seconds']} s,")
    w("`benches/report.py` reads each thread's voluntary and involuntary context switches")
    w("(`/proc/<pid>/task/<tid>/status`) and CPU time (`schedstat`).")
    w("The main thread only sleeps and is listed apart. A voluntary switch is a wake-up")
    w("after blocking: a timer, a poll, a lock.")
    w("")
    w("| program | thread | wake-ups (voluntary) | involuntary | CPU time |")
    w("|---|---|---|---|---|")
    idle_totals = {}
    for name in ["blocking", "smol", "async-std", "redis-entra-id"]:
        total_wakeups, total_cpu = 0, 0.0
        for thread in idle_result[name]["threads"]:
            label = thread["name"] + (" (main)" if thread["main"] else "")
            if thread["seen"] != "both":
                label += f" ({thread['seen']} during the window)"
            w(
                f"| {name} | {label} | {thread['voluntary']} | {thread['involuntary']} | "
                f"{thread['cpu_us']:.0f} µs |"
            )
            if not thread["main"]:
                total_wakeups += thread["voluntary"]
                total_cpu += thread["cpu_us"]
        idle_totals[name] = (total_wakeups, total_cpu)
    w("")
    w("Totals without the main thread: " + "; ".join(
        f"{name} {wakeups} wake-ups, {cpu:.0f} µs" for name, (wakeups, cpu) in idle_totals.items()
    ) + ".")
    w("")

    # (5)
    w("## 5. Cold start")
    w("")
    w("Process start to the first authenticated `PING`: one token request to a mock on")
    w("loopback, one connection to redis-server. hyperfine, rounds of 10 runs per")
    w("program (after 2 warm-up runs), the programs alternating between rounds; times in")
    w("ms. redis-entraid's programs reach the mock over plain HTTP; azure_identity")
    w("accepts only HTTPS, so the redis crate's program reaches it over TLS (a")
    w("self-signed RSA-2048 certificate). The two `curl` rows show what that TLS")
    w("handshake costs with OpenSSL against the same mock, for reading the ratio.")
    w("")
    w("| program | time | ratio to the redis crate |")
    w("|---|---|---|")
    theirs = cold_summary["redis-entra-id"]["median"]
    for name in ["blocking", "smol", "async-std", "redis-entra-id", "curl-http", "curl-https"]:
        s = cold_summary[name]
        ratio = f"{s['median'] / theirs:.2f}" if name in ("blocking", "smol", "async-std") else ""
        w(f"| {name} | {fmt(s, 1, 'ms')} | {ratio} |")
    w("")
    w("Token requests per process start, from the mocks' logs: " + cold_requests(out) + ".")
    w("")

    # (6)
    w("## 6. Footprint")
    w("")
    w("Minimal programs: `benches/minimal` with one feature of redis-entraid and")
    w("`default-features = false`; `benches/redis-entra-id` (`redis` 1.8.2 with")
    w("`entra-id`, which brings tokio and azure_identity 0.31 with its default reqwest and")
    w("native-tls transport). Crates: unique name and version pairs in")
    w("`cargo tree -e normal` (the program itself included; build-only dependencies and")
    w("proc-macro crates' own build dependencies not). Build: `cargo build --release -j 2`")
    w("in a new target directory, sources already fetched, builds of the programs")
    w("alternating. Size: the release binary after `strip`.")
    w("")
    shared = {}
    for line in (results / "shared-libraries.txt").read_text().splitlines():
        name, size, *libraries = line.split()
        shared[name] = (int(size), libraries)
    w("| program | crates | ratio | clean build | ratio | stripped size | ratio | shared libraries beyond libc |")
    w("|---|---|---|---|---|---|---|---|")
    their_build = summary(builds["redis-entra-id"])
    for name in ["core", "blocking", "smol", "async-std", "redis-entra-id"]:
        build = summary(builds[name])
        stripped = sizes[name][1]
        if name == "redis-entra-id":
            crate_ratio = build_ratio = size_ratio = ""
        else:
            crate_ratio = f"{crates[name] / crates['redis-entra-id']:.2f}"
            build_ratio = f"{build['median'] / their_build['median']:.2f}"
            size_ratio = f"{stripped / sizes['redis-entra-id'][1]:.2f}"
        size, libraries = shared[name]
        library_text = f"{', '.join(libraries)} ({size / 1024 / 1024:.1f} MiB)" if libraries else "none"
        w(
            f"| {name} | {crates[name]} | {crate_ratio} | {fmt(build, 1, 's')} | {build_ratio} | "
            f"{stripped / 1024 / 1024:.2f} MiB | {size_ratio} | {library_text} |"
        )
    w("")
    w("The longest compilation units of each program's first build (`cargo build")
    w("--timings`, seconds each, under the load of the moment; units overlap on 2 jobs):")
    w("")
    for name in ["blocking", "smol", "async-std", "redis-entra-id"]:
        units = slowest_units(results / f"timings-{name}.html", 6)
        w(f"- {name}: " + ", ".join(f"{unit} {seconds:.0f} s" for unit, seconds in units))
    w("")

    # (7)
    w("## 7. Memory")
    w("")
    w("Resident memory (`VmRSS`) that starting a provider and opening 100 connections")
    w("(one `PING` each) adds to a process that already runs its runtime and has one")
    w("Redis connection, and the whole process afterwards; each case in a new process,")
    w("7 processes each. redis-entraid: `benches/memory.rs` (its process also runs the")
    w("mock endpoint on a thread); the redis crate: `scenarios memory`. The added memory")
    w("includes the code pages the provider and its HTTP and TLS stack first touch.")
    w("")
    w("| provider and connections | added | ratio | whole process |")
    w("|---|---|---|---|")
    for key, label in [("blocking", "redis-entraid blocking, 100 `EntraConnection`"), ("smol", "redis-entraid smol, 100 `MultiplexedConnection`")]:
        m = memory[key]
        w(
            f"| {label} | {fmt(m['added_mib'], 2, 'MiB')} | "
            f"{m['added_mib']['median'] / their_added['median']:.2f} | {fmt(m['process_mib'], 2, 'MiB')} |"
        )
    w(f"| redis crate, 100 `MultiplexedConnection` (tokio) | {fmt(their_added, 2, 'MiB')} | | {fmt(their_total, 2, 'MiB')} |")
    w("")

    # Targets
    blocking_ratio = max(overhead["blocking_ping"]["ratio"]["median"], overhead["blocking_get"]["ratio"]["median"])
    async_ratio = max(overhead["async_ping"]["ratio"]["median"], overhead["async_get"]["ratio"]["median"])
    w("## Targets")
    w("")
    w("| target | result | verdict |")
    w("|---|---|---|")
    w(
        f"| cached credentials in tens of nanoseconds | {cpu1['median']:.0f} ns CPU, "
        f"{wall1['median']:.0f} ns wall, one thread | {verdict(cpu1['median'] < 100)} |"
    )
    w(
        f"| two threads no slower per call than one | {cpu2['median']:.0f} ns against "
        f"{cpu1['median']:.0f} ns CPU time (within 5 % counts as no slower) | "
        f"{verdict(cpu2['median'] <= 1.05 * cpu1['median'])} |"
    )
    w(
        f"| blocking command within 2 % of a plain connection | median ratio "
        f"{overhead['blocking_ping']['ratio']['median']:.3f} (`PING`), "
        f"{overhead['blocking_get']['ratio']['median']:.3f} (`GET`) | {verdict(blocking_ratio <= 1.02)} |"
    )
    w(
        f"| async command within 2 % (the same bound, applied to the async pair) | "
        f"{overhead['async_ping']['ratio']['median']:.3f} (`PING`), "
        f"{overhead['async_get']['ratio']['median']:.3f} (`GET`) | {verdict(async_ratio <= 1.02)} |"
    )
    fan = a["from_new_credentials_ms"]["median"]
    floor = a["one_ping_each_ms"]["median"]
    w(
        f"| 1,000 connections re-authenticated within a few round trips after renewal "
        f"(read here as: within 3 times the time the same 1,000 connections take to each "
        f"complete one `PING` sent at once) | {fan:.1f} ms from new credentials against "
        f"{floor:.1f} ms for one `PING` each, {fan / floor:.1f} times; the redis crate: "
        f"{their_fanout['median']:.1f} ms from its token response | {verdict(fan <= 3 * floor)} |"
    )
    blocking_idle = idle_totals["blocking"][0]
    w(
        f"| zero wake-ups between refreshes | blocking {blocking_idle}, smol "
        f"{idle_totals['smol'][0]}, async-std {idle_totals['async-std'][0]} over "
        f"{idle_result['blocking']['seconds']} s (redis crate {idle_totals['redis-entra-id'][0]}) | "
        f"{verdict(all(idle_totals[n][0] == 0 for n in ('blocking', 'smol', 'async-std')))} |"
    )
    one_request = all(
        int(tokens) == int(starts)
        for _name, tokens, starts in read_pairs(out / "results" / "cold-token-requests.txt")
    )
    w(
        f"| first command after one identity round trip and one Redis handshake | token "
        f"requests per start: {cold_requests(out)}; blocking "
        f"{cold_summary['blocking']['median']:.1f} ms from process start, curl's single HTTP "
        f"request to the same mock {cold_summary['curl-http']['median']:.1f} ms | "
        f"{verdict(one_request)} (one request each) |"
    )
    w(
        f"| `blocking`: at most half the crates | {crates['blocking']} against "
        f"{crates['redis-entra-id']} | {verdict(crates['blocking'] * 2 <= crates['redis-entra-id'])} |"
    )
    bb = summary(builds["blocking"])["median"]
    w(
        f"| `blocking`: at most half the clean build time | {bb:.0f} s against "
        f"{their_build['median']:.0f} s | {verdict(bb * 2 <= their_build['median'])} |"
    )
    w("")
    reasons = []
    if bb * 2 > their_build["median"]:
        reasons.append(
            "Clean build time: half the crates does not halve the build, because on 2 jobs "
            "the time follows the largest crates. The `blocking` program's longest units "
            "(section 6) are the redis crate itself, which both programs compile, and its "
            "HTTP and TLS stack: ureq, rustls (also used by the redis crate's `tls-rustls`) "
            "and ring, whose C and assembly code its build script compiles. The redis "
            "crate's `entra-id` takes TLS from the system's OpenSSL, a shared library that "
            "is linked, not compiled."
        )
    if not all(idle_totals[n][0] == 0 for n in ("blocking", "smol", "async-std")):
        busy = [
            f"{name}: {thread['name']} {thread['voluntary']}"
            for name in ("blocking", "smol", "async-std")
            for thread in idle_result[name]["threads"]
            if not thread["main"] and thread["voluntary"]
        ]
        reasons.append("Idle wake-ups, by thread: " + "; ".join(busy) + ".")
    if fan > 3 * floor:
        reasons.append(
            "Fan-out: each re-authentication is one `AUTH` round trip per connection, so "
            "1,000 of them cost about what 1,000 `PING`s sent at once cost; the provider's "
            "own part is one counter increment and one wake-up per connection."
        )
    if blocking_ratio > 1.02 or async_ratio > 1.02:
        reasons.append(
            "Per-command overhead: a ratio above 1.02; compare it with the IQR of the "
            "ratios in section 2, which shows how far the rounds spread under this load."
        )
    if reasons:
        w("Reasons for the targets not met:")
        w("")
        for reason in reasons:
            w(f"- {reason}")
        w("")
    print("\n".join(lines))


def slowest_units(html: Path, count: int) -> list[tuple[str, float]]:
    """Returns the `count` longest units from a `cargo build --timings` report."""
    text = html.read_text()
    start = text.index("const UNIT_DATA = ") + len("const UNIT_DATA = ")
    units, _ = json.JSONDecoder().raw_decode(text[start:])
    units.sort(key=lambda unit: -unit["duration"])
    named = []
    for unit in units[:count]:
        label = unit["name"]
        if unit.get("target", "").strip():
            label += f" ({unit['target'].strip()})"
        named.append((label, unit["duration"]))
    return named


def cold_requests(out: Path) -> str:
    """Returns token requests per process start in the cold-start runs, per mock."""
    parts = []
    for name, tokens, starts in read_pairs(out / "results" / "cold-token-requests.txt"):
        parts.append(f"{int(tokens) / int(starts):.2f} over {name} ({tokens} for {starts} starts)")
    return ", ".join(parts)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "idle":
        idle(int(sys.argv[2]), sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "load":
        sample_load(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "render":
        render(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
