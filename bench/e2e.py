"""End-to-end benchmark: webhook -> JetStream -> PostgreSQL, every process separate.

    python bench/e2e.py                       # every scenario (make bench)
    python bench/e2e.py array100 single       # some of them
    python bench/e2e.py --scale 0.2 array100  # smaller totals / durations
    python bench/e2e.py --table               # print the README table from bench/results

Starts nats-server and PostgreSQL (the embedded ones, on free ports, in a temporary
directory), then per scenario: empties the stream and the tables, starts `sluice run`
as its own process against them, runs `sluice publish` as another process, and waits
until every event the publisher had acknowledged is committed. Measured:

- end-to-end events/s: distinct events stored / (last commit - first POST). The last
  commit is exact: PostgreSQL runs with track_commit_timestamp, so each row's
  pg_xact_commit_timestamp(xmin) is when its transaction committed;
- webhook latency p50/p99: per request, as the publisher timed it;
- accept-to-stored freshness p50/p99: commit timestamp - received_at (set by ingress
  when it accepted the request), over every stored row;
- CPU seconds and peak RSS per process group (sluice, nats-server, postgres with its
  backends, the load client), sampled with psutil from the first POST to the last commit;
- nothing lost: rows stored == distinct valid events the publisher got a 2xx for.

Rate-driven scenarios (`half`, `overload`) take their rate from this run's `array100`
capacity, or from --capacity.

`--nats-cluster 3` runs NATS as the embedded 3-node cluster (`sluice dev cluster`'s code)
with SLUICE_STREAM_REPLICAS=3 instead of one nats-server; nats-server CPU and RSS are then
the three nodes' sum. With `--ingress N --workers M` it compares 1 vs 3 NATS nodes and
1 vs 2 workers (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `sluice` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
import httpx

from bench._support import RESULTS, BenchNats, BenchPostgres, Sampler, machine, write_result
from sluice.edges.embedded import EmbeddedNatsCluster

READY_LINE = re.compile(r"metrics:\s+GET\s+(http://\S+)/metrics")
STALL_SECONDS = 60.0  # no new rows for this long while waiting: give up


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    batch: int = 100
    total: int | None = None
    duration: float | None = None
    rate_factor: float | None = None  # x the measured capacity (events/s)
    concurrency: int = 8
    duplicates: float = 0.0
    invalid: float = 0.0
    nats_sync: str = "always"
    env: dict[str, str] = field(default_factory=dict)
    publish_args: tuple[str, ...] = ()  # more `sluice publish` flags


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("array100", "arrays of 100, as fast as possible", total=600_000, concurrency=32),
        Scenario("array1000", "arrays of 1,000", batch=1000, total=600_000, concurrency=8),
        # 64 connections: with 32, each POST waits out JetStream's fsync (group commit),
        # and ~1.4 of the 2 cores are used; 64 fill them (bench/README.md, session 3).
        Scenario("single", "one event per POST", batch=1, total=60_000, concurrency=64),
        Scenario(
            "array100-worst",
            "arrays of 100, a new user and video on every event, timestamps over an hour",
            total=600_000,
            concurrency=32,
            publish_args=("--worst-case",),
        ),
        Scenario(
            "dup5",
            "arrays of 100, 5% exact re-sends",
            total=600_000,
            duplicates=0.05,
            concurrency=32,
        ),
        Scenario(
            "half",
            "arrays of 100 at half of capacity",
            rate_factor=0.5,
            duration=30,
            concurrency=16,
        ),
        Scenario(
            "overload",
            "arrays of 100 offered at 2x capacity",
            rate_factor=2.0,
            duration=30,
            concurrency=64,
        ),
        Scenario(
            "overload1000",
            "arrays of 1,000 offered at 2x capacity",
            batch=1000,
            rate_factor=2.0,
            duration=30,
            concurrency=16,
        ),
        Scenario(
            "array100-sync-default",
            "arrays of 100, NATS sync_interval default (not fsync per write)",
            total=600_000,
            concurrency=32,
            nats_sync="default",
        ),
        Scenario(
            "half-sync-default",
            "half, NATS sync_interval default: how much of the latency tail is fsync",
            rate_factor=0.5,
            duration=30,
            concurrency=16,
            nats_sync="default",
        ),
        Scenario(
            "single-sync-default",
            "one event per POST, NATS sync_interval default",
            batch=1,
            total=60_000,
            concurrency=64,
            nats_sync="default",
        ),
    ]
}


# --------------------------------------------------------------------------- servers


class Servers:
    def __init__(self, root: Path, sync: str, nats_nodes: int = 1) -> None:
        self.nats: BenchNats | EmbeddedNatsCluster
        if nats_nodes > 1:
            if sync != "always":
                raise SystemExit(f"--nats-cluster runs sync_interval always only, not {sync}")
            self.nats = EmbeddedNatsCluster(root / "nats-cluster", size=nats_nodes)
        else:
            self.nats = BenchNats(root / f"nats-{sync}", sync=sync)
        self.nats_nodes = nats_nodes
        self.postgres = BenchPostgres(root / f"pg-{sync}")
        self.nats_url = self.nats.start()
        try:
            self.database_url = self.postgres.start()
        except BaseException:
            self.nats.stop()
            raise

    @property
    def nats_pids(self) -> tuple[int, ...]:
        if isinstance(self.nats, EmbeddedNatsCluster):
            return tuple(self.nats.pids())
        assert self.nats.pid is not None
        return (self.nats.pid,)

    def stop(self) -> None:
        try:
            self.postgres.stop()
        finally:
            self.nats.stop()

    def reset(self) -> None:
        """An empty stream and empty tables (the schema stays)."""
        asyncio.run(self._reset())

    async def _reset(self) -> None:
        import nats
        import nats.js.errors

        nc = await nats.connect(self.nats_url.split(","))
        try:
            for stream in ("EVENTS", "EVENTS_HISTORY") if self.nats_nodes > 1 else ("EVENTS",):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()
        conn = await asyncpg.connect(self.database_url)
        try:
            tables = [
                r[0]
                for r in await conn.fetch(
                    "SELECT quote_ident(tablename) FROM pg_tables"
                    " WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
                )
            ]
            if tables:
                await conn.execute(f"TRUNCATE {', '.join(tables)}")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()


# --------------------------------------------------------------------------- sluice


class SluiceProcess:
    """One `sluice run --role ...` process, against the bench's servers."""

    def __init__(
        self, servers: Servers, log_path: Path, env: dict[str, str], *, role: str = "all"
    ) -> None:
        full_env = {
            **os.environ,
            "NATS_URL": servers.nats_url,
            "DATABASE_URL": servers.database_url,
            "SLUICE_STREAM_REPLICAS": str(servers.nats_nodes),
            "SLUICE_HTTP_PORT": "0",
            "LOG_LEVEL": "WARNING",
            **env,
            "SLUICE_ROLE": role,
        }
        self.role = role
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "run"],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = ""
        self._pump: threading.Thread | None = None

    def wait_ready(self, timeout: float = 90) -> None:
        """Until the process announces its HTTP URL (it is serving then)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if match := READY_LINE.search(line):
                self.log_path.write_text("".join(lines))
                self.url = match.group(1)
                self._pump = threading.Thread(target=self._copy_output, daemon=True)
                self._pump.start()
                return
            if time.monotonic() > deadline:
                break
        self.proc.kill()
        raise RuntimeError(f"sluice run --role {self.role} did not start:\n" + "".join(lines[-40:]))

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("a") as log:
            for line in self.proc.stdout:
                log.write(line)

    def processed(self) -> int:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            int(float(v))
            for v in re.findall(r"^events_processed_total\{[^}]*\} (\S+)$", text, re.M)
        )

    def signal_stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=5)
        return code


@dataclass(frozen=True)
class Topology:
    """How sluice runs: one `all` process (ingress == 0), or `ingress` processes of role
    ingress sharing one port (SLUICE_HTTP_REUSE_PORT) plus `workers` of role worker."""

    ingress: int = 0
    workers: int = 1
    nats_nodes: int = 1  # > 1: an embedded NATS cluster, streams on that many replicas

    @property
    def split(self) -> bool:
        return self.ingress > 0

    def label(self) -> str:
        nats = f", {self.nats_nodes} NATS nodes" if self.nats_nodes > 1 else ""
        if not self.split:
            return "1 all" + nats
        workers = f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        return f"{self.ingress} ingress + {workers}{nats}"

    def suffix(self) -> str:
        nats = f"-nats{self.nats_nodes}" if self.nats_nodes > 1 else ""
        return (f"-{self.ingress}i{self.workers}w" if self.split else "") + nats


class Sluice:
    """sluice as the topology says: started, measured by its workers' metrics, stopped
    (ingress first, so nothing accepted is left behind, then the workers)."""

    def __init__(
        self, servers: Servers, work: Path, name: str, env: dict[str, str], topology: Topology
    ) -> None:
        self.topology = topology
        self.ingress: list[SluiceProcess] = []
        self.workers: list[SluiceProcess] = []
        try:
            if not topology.split:
                one = SluiceProcess(servers, work / f"{name}.sluice.log", env, role="all")
                self.ingress.append(one)
                self.workers.append(one)
                one.wait_ready()
                self.url = one.url
                return
            # The first worker alone first: it creates the stream's consumers (and would
            # migrate a new database); then everything else at once.
            first = SluiceProcess(servers, work / f"{name}.worker0.log", env, role="worker")
            self.workers.append(first)
            first.wait_ready()
            for i in range(1, topology.workers):
                self.workers.append(
                    SluiceProcess(servers, work / f"{name}.worker{i}.log", env, role="worker")
                )
            port = free_port()
            shared = {**env, "SLUICE_HTTP_PORT": str(port), "SLUICE_HTTP_REUSE_PORT": "1"}
            for i in range(topology.ingress):
                self.ingress.append(
                    SluiceProcess(servers, work / f"{name}.ingress{i}.log", shared, role="ingress")
                )
            for proc in self.processes:
                if not proc.url:
                    proc.wait_ready()
            self.url = self.ingress[0].url
        except BaseException:
            self.stop(timeout=10)
            raise

    @property
    def processes(self) -> list[SluiceProcess]:
        return list(dict.fromkeys([*self.ingress, *self.workers]))

    def pids(self, role: str | None = None) -> tuple[int, ...]:
        procs = (
            self.processes if role is None else self.ingress if role == "ingress" else self.workers
        )
        return tuple(p.proc.pid for p in procs)

    def processed(self) -> int:
        return sum(w.processed() for w in self.workers)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the ingress processes, wait for them, then the workers; the worst code."""
        codes = [0]
        for group in (self.ingress, [w for w in self.workers if w not in self.ingress]):
            for proc in group:
                proc.signal_stop()
            codes += [proc.wait_stopped(timeout) for proc in group]
        return max(codes, key=abs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- measuring


async def stored_facts(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS stored,
                   extract(epoch FROM min(received_at)) AS first_received,
                   extract(epoch FROM max(pg_xact_commit_timestamp(xmin))) AS last_commit,
                   count(DISTINCT xmin::text) AS transactions,
                   percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM
                       pg_xact_commit_timestamp(xmin) - received_at)) AS freshness
            FROM events
            """
        )
        dead = await conn.fetchval("SELECT count(*) FROM dead_letters")
    finally:
        await conn.close()
    assert row is not None
    freshness = row["freshness"] or [None, None]
    return {
        "stored": row["stored"],
        "transactions": row["transactions"],
        "dead_letters": dead,
        "first_received": float(row["first_received"] or 0),
        "last_commit": float(row["last_commit"] or 0),
        "freshness_ms": {
            "p50": None if freshness[0] is None else round(freshness[0] * 1000, 1),
            "p99": None if freshness[1] is None else round(freshness[1] * 1000, 1),
        },
    }


def wait_stored(sluice: Sluice, expected: int) -> int:
    last, last_change = -1, time.monotonic()
    while True:
        try:
            done = sluice.processed()
        except httpx.HTTPError:
            done = last
        if done >= expected:
            return done
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            return done
        time.sleep(0.05)


PY_SPY = Path(sys.executable).parent / "py-spy"


def run_scenario(
    scenario: Scenario,
    servers: Servers,
    work: Path,
    *,
    scale: float,
    capacity: float | None,
    extra_env: dict[str, str],
    profile: bool = False,
    topology: Topology = Topology(),
) -> dict[str, Any]:
    servers.reset()
    env = {**scenario.env, **extra_env}
    sluice = Sluice(servers, work, scenario.name, env, topology)
    summary_path = work / f"{scenario.name}.publish.json"
    cmd = [
        sys.executable,
        "-m",
        "sluice.cli",
        "publish",
        "--url",
        f"{sluice.url}/webhook",
        "--batch",
        str(scenario.batch),
        "--concurrency",
        str(scenario.concurrency),
        "--duplicates",
        str(scenario.duplicates),
        "--invalid",
        str(scenario.invalid),
        "--seed",
        "1",
        "--progress",
        "5",
        "--json",
        str(summary_path),
        *scenario.publish_args,
    ]
    rate = None
    if scenario.total is not None:
        cmd += ["--total", str(max(scenario.batch, int(scenario.total * scale)))]
    if scenario.duration is not None:
        cmd += ["--duration", str(max(5.0, scenario.duration * scale))]
    if scenario.rate_factor is not None:
        if capacity is None:
            raise SystemExit(
                f"{scenario.name}: needs a capacity (run array100 first or --capacity)"
            )
        rate = capacity * scenario.rate_factor
        cmd += ["--rate", str(round(rate))]
    print(
        f"== {scenario.name} [{topology.label()}]: {scenario.about}"
        + (f" ({rate:,.0f} events/s)" if rate else "")
    )
    sampler: Sampler | None = None
    publisher: subprocess.Popen[str] | None = None
    try:
        publisher = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert servers.postgres.pid is not None
        groups: dict[str, int | tuple[int, ...]] = {
            "sluice": sluice.pids(),
            "nats": servers.nats_pids,
            "postgres": servers.postgres.pid,
            "client": publisher.pid,
        }
        if topology.split:
            groups["sluice_ingress"] = sluice.pids("ingress")
            groups["sluice_worker"] = sluice.pids("worker")
        sampler = Sampler(groups)
        sampler.start()
        profilers = []
        for proc in sluice.processes if profile else []:
            out_path = work / f"{scenario.name}.{proc.log_path.stem.split('.')[-1]}.pyspy.txt"
            profiler = subprocess.Popen(
                [
                    str(PY_SPY),
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "-o",
                    str(out_path),
                    "-p",
                    str(proc.proc.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            profilers.append((profiler, out_path))
        out, _ = publisher.communicate()
        print(out, end="")
        published = json.loads(summary_path.read_text())
        expected = published["expected_stored"]
        processed = wait_stored(sluice, expected)
        usage = sampler.stop()
        sampler = None
        for profiler, out_path in profilers:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
            print(f"   py-spy profile: {out_path}")
        facts = asyncio.run(stored_facts(servers.database_url))
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()  # the run failed: leave no load client behind
            publisher.wait()
        if sampler is not None:
            sampler.stop()
        exit_code = sluice.stop()
    span = facts["last_commit"] - published["first_post_at"]
    result = {
        "scenario": asdict(scenario),
        "scale": scale,
        "offered_rate": rate,
        "sluice_env": env,
        "topology": asdict(topology),
        "events_per_s": round(facts["stored"] / span, 1) if span > 0 else None,
        "span_s": round(span, 3),
        "webhook_latency_ms": published["latency_ms"],
        "freshness_ms": facts["freshness_ms"],
        "stored": facts["stored"],
        "expected_stored": expected,
        "processed_metric": processed,
        "nothing_lost": facts["stored"] == expected and facts["dead_letters"] == 0,
        "transactions": facts["transactions"],
        "dead_letters": facts["dead_letters"],
        "publisher": published,
        "usage": {name: asdict(u) for name, u in usage.items()},
        "sluice_exit_code": exit_code,
    }
    print(
        f"   -> {result['events_per_s']:,} events/s end to end; stored {facts['stored']:,}"
        f" of {expected:,}; webhook p50/p99 {published['latency_ms']['p50']}/"
        f"{published['latency_ms']['p99']} ms; freshness p50/p99 "
        f"{facts['freshness_ms']['p50']}/{facts['freshness_ms']['p99']} ms; "
        + ", ".join(
            f"{n} {u.cpu_seconds:.1f} cpu-s {u.peak_rss_mb:.0f} MB" for n, u in usage.items()
        ),
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- table


def table(results_dir: Path = RESULTS, pattern: str = "*.json") -> str:
    rows = [
        "| date | scenario | events | events/s e2e | webhook p50 / p99 ms | freshness p50 / p99 ms"
        " | CPU s sluice / nats / pg / client | peak RSS MB sluice / nats / pg max / client"
        " | 429+503 | lost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(results_dir.glob(pattern)):
        r = json.loads(path.read_text())
        if "scenario" not in r:
            continue
        u = r["usage"]
        lat, fresh = r["webhook_latency_ms"], r["freshness_ms"]
        lost = r["expected_stored"] - r["stored"]
        rate = f"{r['events_per_s']:,.0f}" if r["events_per_s"] else "-"
        if r.get("offered_rate"):
            rate += f" (offered {r['offered_rate']:,.0f})"
        cpu = " / ".join(str(u[g]["cpu_seconds"]) for g in ("sluice", "nats", "postgres", "client"))
        name = path.stem[11:]
        if r.get("topology", {}).get("ingress") or r.get("topology", {}).get("nats_nodes", 1) > 1:
            name += f" [{Topology(**r['topology']).label()}]"
        rows.append(
            f"| {path.name[:10]} | {name} | {r['stored']:,} | {rate} "
            f"| {lat['p50']} / {lat['p99']} | {fresh['p50']} / {fresh['p99']} | {cpu} "
            f"| {u['sluice']['peak_rss_mb']:.0f} / {u['nats']['peak_rss_mb']:.0f} / "
            f"{u['postgres']['peak_rss_mb']:.0f} / {u['client']['peak_rss_mb']:.0f} "
            f"| {r['publisher']['throttled']:,} | {lost if lost else 'none'} |"
        )
    return "\n".join(rows)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} [all]")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply totals and durations")
    parser.add_argument("--capacity", type=float, default=None, help="events/s for rate scenarios")
    parser.add_argument(
        "--env", action="append", default=[], help="K=V for sluice run (repeatable)"
    )
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the sluice process (kept in the work dir)"
    )
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    parser.add_argument("--table-glob", default="*.json", help="which result files --table shows")
    parser.add_argument(
        "--ingress",
        type=int,
        default=0,
        help="run sluice as this many --role ingress processes on one port (SO_REUSEPORT)"
        " plus --workers worker processes; 0 (default): one process of role all",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (with --ingress)")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="override the scenarios' connection count"
    )
    parser.add_argument(
        "--nats-cluster",
        type=int,
        choices=(1, 3, 5),
        default=1,
        help="NATS nodes: 3 or 5 run the embedded cluster, streams on as many replicas [1]",
    )
    args = parser.parse_args()
    if args.table:
        print(table(args.results, args.table_glob))
        return
    if args.ingress < 0 or args.workers < 1:
        parser.error("--ingress must be >= 0 and --workers >= 1")
    topology = Topology(args.ingress, args.workers, args.nats_cluster)
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    if args.profile and not PY_SPY.exists():
        parser.error(f"--profile needs py-spy: {PY_SPY.parent / 'pip'} install py-spy")
    extra_env = dict(item.split("=", 1) for item in args.env)
    facts = machine()
    print(f"machine: {facts['cpu']}, {facts['cores']} cores; {facts['versions']}")
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    capacity = args.capacity
    by_sync: dict[str, list[Scenario]] = {}
    for name in names:
        scenario = SCENARIOS[name]
        if args.concurrency is not None:
            scenario = replace(scenario, concurrency=args.concurrency)
        by_sync.setdefault(scenario.nats_sync, []).append(scenario)
    try:
        for sync, scenarios in by_sync.items():
            servers = Servers(work, sync, topology.nats_nodes)
            try:
                for scenario in scenarios:
                    result = run_scenario(
                        scenario,
                        servers,
                        work,
                        scale=args.scale,
                        capacity=capacity,
                        extra_env=extra_env,
                        profile=args.profile,
                        topology=topology,
                    )
                    result["machine"] = facts
                    if scenario.name == "array100" and capacity is None:
                        capacity = result["events_per_s"]
                    tag = topology.suffix() + (f"-{args.tag}" if args.tag else "")
                    path = write_result(scenario.name + tag, result, args.results)
                    print(f"   written to {path}")
            finally:
                servers.stop()
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
