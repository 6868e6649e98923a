"""What the protocol costs: leases and reports per second through a real coordinator, and the
frame codec alone, with and without the per-frame MAC of protocol version 2 (issue 12).

    python -m benchmarks.wire                      # all three parts
    python -m benchmarks.wire --part codec         # the codec only: a few seconds
    python -m benchmarks.wire --part loop          # round trips over loopback, plain vs sealed
    python -m benchmarks.wire --part wire --tasks 500000 --conns 2 --batch 64 --repeat 5

- **codec**: encode + decode of the frames a busy worker and its coordinator exchange (a lease
  request reporting ``--batch`` tasks, a leases reply with ``--batch`` leases, a renew of
  ``--batch`` leases), sealed with a ``FrameMac`` and plain, in this process. The difference is
  the MAC's whole cost per frame.
- **loop**: round trips of a lease request and its reply (``--batch`` items each) between two
  ends in this process over a TCP loopback connection, each end encoding, decoding and
  validating as a connection does; plain and sealed alternately, best of ``--repeat`` x 3. The
  MAC's cost on the protocol path alone, with the machine's other load mostly filtered out.
- **wire**: ``ajug serve`` on the ``independent`` workload (``--tasks`` trivial tasks, a file
  store in a temporary directory) and ``--conns`` simulated workers in this process, each
  asking for ``--batch`` leases and reporting the previous batch done in the same request, as
  fast as the coordinator answers (nothing is computed or stored). Leases/s and reports/s
  between the first reply and the last. Both sides of each connection pay for the MAC here.

Compare the wire numbers of two trees (before and after the MAC) by running this file from
each: it imports and starts the ``ajug`` of the tree it lives in (``PYTHONPATH`` = that tree),
and prints which. The codec part measures "without" in the same tree (``mac=None``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ajug  # noqa: E402
from ajug.protocol import messages as m  # noqa: E402
from ajug.protocol.framing import FrameDecoder, encode_frame  # noqa: E402

try:
    from ajug.protocol.mac import FrameMac  # noqa: E402
except ImportError:  # a tree from before the MAC: the codec runs plain only
    FrameMac = None  # type: ignore[assignment,misc]

SERVING_RE = re.compile(r"serving \S+ on \S+:(\d+)")


def _key(i: int) -> str:
    return f"{i:040x}"


def sample_frames(batch: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (sender, message): what flows per ``batch`` tasks."""
    args = b"\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00K\x07\x85\x94."
    done = [[_key(i), i, {"rt": 0.001, "size": 24}] for i in range(batch)]
    return {
        "lease+report": ("client", m.lease(1, want=batch, wait_ms=1000, done=done, follow=True)),
        "leases": ("server", m.leases(1, state="run",
                                      leases=[m.lease_item(_key(i), i, 0, args)
                                              for i in range(batch)])),
        "renew": ("client", m.renew(2, [[_key(i), i] for i in range(batch)])),
        "renewed": ("server", m.renewed(2)),
    }


def bench_codec(batch: int, seconds: float) -> list[dict[str, Any]]:
    """µs per frame (encode, then decode + validate) for each sample, plain and sealed."""
    rows = []
    key = bytes(range(32))
    for name, (sender, msg) in sample_frames(batch).items():
        row: dict[str, Any] = {"frame": name, "bytes": len(encode_frame(msg))}
        for variant in ("plain", "mac"):
            if variant == "mac" and FrameMac is None:
                continue
            best = float("inf")
            deadline = time.perf_counter() + seconds / 8
            while time.perf_counter() < deadline:  # best of several timed loops
                sealed = variant == "mac"
                send = {"mac": FrameMac(key)} if sealed else {}  # a tree without MACs has no mac=
                dec = FrameDecoder(mac=FrameMac(key)) if sealed else FrameDecoder()
                n = 2000 if row["bytes"] < 2000 else 200
                t0 = time.perf_counter()
                for _ in range(n):
                    data = encode_frame(msg, **send)
                    (out,) = dec.feed(data)
                    m.validate(out, sender)  # type: ignore[arg-type]
                best = min(best, (time.perf_counter() - t0) / n)
            row[f"{variant}_us"] = best * 1e6
        if "mac_us" in row:
            row["mac_cost"] = row["mac_us"] / row["plain_us"] - 1
        rows.append(row)
    return rows


async def _loop_once(batch: int, sealed: bool, n: int) -> float:
    """Seconds per round trip (both ends in this process)."""
    frames = sample_frames(batch)
    request, reply = frames["lease+report"][1], frames["leases"][1]
    key_c2s, key_s2c = bytes(range(32)), bytes(range(32, 64))

    def codec(send_key: bytes, recv_key: bytes) -> tuple[dict[str, Any], FrameDecoder]:
        if not sealed:
            return {}, FrameDecoder()
        return {"mac": FrameMac(send_key)}, FrameDecoder(mac=FrameMac(recv_key))

    async def next_frame(reader: asyncio.StreamReader, dec: FrameDecoder) -> dict[str, Any]:
        while (msg := dec.next()) is None:
            data = await reader.read(256 * 1024)
            if not data:
                raise ConnectionError("the other end closed")
            dec.push(data)
        return msg

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seal, dec = codec(key_s2c, key_c2s)
        for _ in range(n):
            m.validate(await next_frame(reader, dec), "client")
            writer.write(encode_frame(reply, **seal))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    seal, dec = codec(key_c2s, key_s2c)
    t0 = time.perf_counter()
    for _ in range(n):
        writer.write(encode_frame(request, **seal))
        await writer.drain()
        m.validate(await next_frame(reader, dec), "server")
    elapsed = time.perf_counter() - t0
    writer.close()
    server.close()
    await server.wait_closed()
    return elapsed / n


def bench_loop(batch: int, repeat: int) -> dict[str, Any]:
    if FrameMac is None:  # a tree from before the MAC (its decoder has no next() either)
        return {}
    runner = _runner()
    times: dict[str, list[float]] = {"plain": [], "mac": []}
    for _ in range(repeat * 3):
        for variant in times:
            times[variant].append(runner(_loop_once(batch, variant == "mac", 1000)))
    best = {k: min(v) * 1e6 for k, v in times.items()}
    return {"plain_us": best["plain"], "mac_us": best["mac"],
            "mac_cost": best["mac"] / best["plain"] - 1}


def _runner() -> Any:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(port: int, token: bytes, conns: int, batch: int, tasks: int,
                 seconds: float, serve_pid: int) -> dict[str, Any]:
    from ajug.protocol.connection import open_connection

    opened = [await open_connection("127.0.0.1", port, token=token, role="worker",
                                    name=f"bench{i}") for i in range(conns)]
    cpu0, serve_cpu0 = time.process_time(), _cpu_s(serve_pid)
    stamps: list[float] = []
    counts = {"leases": 0, "reports": 0}
    stop_at = time.perf_counter() + seconds

    async def work(conn: Any) -> None:
        prev: list[list[Any]] = []
        rid = 0
        while True:
            rid += 1
            want = batch if time.perf_counter() < stop_at and counts["leases"] < tasks else 0
            conn.send(m.lease(rid, want=want, wait_ms=0, done=prev))
            await conn.drain()
            rep = await asyncio.wait_for(conn.recv(), 60)
            if rep["op"] != "leases":
                raise RuntimeError(f"{rep['op']}: {rep.get('msg')}")
            stamps.append(time.perf_counter())
            counts["reports"] += len(prev)
            counts["leases"] += len(rep["leases"])
            prev = [[x["key"], x["tok"], {"rt": 0.0, "size": 0}] for x in rep["leases"]]
            if not rep["leases"] and not want:
                return
            if not rep["leases"] and rep["state"] != "run":
                want = 0

    try:
        await asyncio.gather(*(work(c) for c in opened))
        cpu = time.process_time() - cpu0
        serve_cpu = _cpu_s(serve_pid) - serve_cpu0
    finally:
        for c in opened:
            await c.aclose()
    span = stamps[-1] - stamps[0]
    n = counts["leases"]
    return {"span_s": span, "leases": n, "reports": counts["reports"],
            "leases_per_s": n / span, "reports_per_s": counts["reports"] / span,
            # CPU per lease (granted, and reported back): less disturbed by other load than rates
            "coordinator_cpu_us": serve_cpu / n * 1e6, "workers_cpu_us": cpu / n * 1e6}


def bench_wire(tasks: int, conns: int, batch: int, seconds: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ajug-wire-"))
    token = secrets.token_hex(16)
    shutil.copy(REPO / "benchmarks" / "workloads" / "independent.py", tmp / "independent.py")
    env = dict(os.environ, AJUG_TOKEN=token, BENCH_N=str(tasks), PYTHONPATH=str(REPO))
    log = open(tmp / "serve.log", "w+")
    serve = subprocess.Popen(
        [sys.executable, "-m", "ajug", "serve", "independent.py", "--port", "0", "--stay"],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 600
        while not (found := SERVING_RE.search((tmp / "serve.log").read_text())):
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ajug serve did not start: {(tmp / 'serve.log').read_text()}")
            time.sleep(0.05)
        return asyncio.run(_drive(int(found.group(1)), token.encode(), conns, batch, tasks,
                                  seconds, serve.pid))
    finally:
        serve.terminate()
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("codec", "loop", "wire", "all"), default="all")
    ap.add_argument("--tasks", type=int, default=200_000, help="wire: tasks in the graph")
    ap.add_argument("--conns", type=int, default=2, help="wire: simulated workers")
    ap.add_argument("--batch", type=int, default=64, help="leases asked / reported per request")
    ap.add_argument("--seconds", type=float, default=8.0, help="wire: longest run; codec: time")
    ap.add_argument("--repeat", type=int, default=3, help="wire: runs, median reported")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    o = ap.parse_args(argv)
    out: dict[str, Any] = {"ajug": str(Path(ajug.__file__).parent), "mac": FrameMac is not None,
                           "load": os.getloadavg()}
    print(f"ajug from {out['ajug']} ({'with' if out['mac'] else 'without'} frame MACs), "
          f"load {out['load'][0]:.2f}")
    if o.part in ("codec", "all"):
        out["codec"] = bench_codec(o.batch, o.seconds)
        print(f"codec, {o.batch} items per frame: µs per frame (encode + decode + validate)")
        for r in out["codec"]:
            mac = (f"{r['mac_us']:8.1f} µs sealed  (+{r['mac_cost']:.1%})" if "mac_us" in r
                   else "")
            print(f"  {r['frame']:<13} {r['bytes']:6d} B  {r['plain_us']:8.1f} µs plain  {mac}")
    if o.part in ("loop", "all") and (loop := bench_loop(o.batch, o.repeat)):
        out["loop"] = loop
        print(f"loop, {o.batch} items per request and per reply: {loop['plain_us']:.1f} µs per "
              f"round trip plain, {loop['mac_us']:.1f} µs sealed (+{loop['mac_cost']:.1%}), "
              f"best of {3 * o.repeat}")
    if o.part in ("wire", "all"):
        runs = [bench_wire(o.tasks, o.conns, o.batch, o.seconds) for _ in range(o.repeat)]
        out["wire"] = runs
        keys = ("leases_per_s", "reports_per_s", "coordinator_cpu_us", "workers_cpu_us")
        med = {k: statistics.median(r[k] for r in runs) for k in keys}
        out["wire_median"] = med
        each = ", ".join(f"{r['leases_per_s']:,.0f}" for r in runs)
        print(f"wire, {o.conns} connections, batches of {o.batch}: "
              f"{med['leases_per_s']:,.0f} leases/s, {med['reports_per_s']:,.0f} reports/s "
              f"(median of {len(runs)}; leases/s each: {each}); CPU per lease: coordinator "
              f"{med['coordinator_cpu_us']:.2f} µs, simulated workers {med['workers_cpu_us']:.2f} µs")
    out["load_after"] = os.getloadavg()
    if o.json:
        o.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
