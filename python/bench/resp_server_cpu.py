"""Server CPU per RESP request: sequential requests over one connection, the server's CPU time
read from /proc/PID/stat before and after (Linux only).

    python python/bench/resp_server_cpu.py --port 6380 --pid 1234 --requests 30000 --kind get

--kind ping times PING; get, GET of `bench.lookup:N` for random N below --rows (the table
lookup-bench loads, keys present); absent, the same with N at or above --rows. Works against
redis-server too (its PID and port), for the protocol floor. Prints the server's CPU time per
request (user and system) and the client-seen p50/p99. docs/benchmarks.md shows the runs.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import time


def command(*parts: bytes) -> bytes:
    out = b"*%d\r\n" % len(parts)
    for part in parts:
        out += b"$%d\r\n%s\r\n" % (len(part), part)
    return out


def cpu_ticks(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--kind", choices=["ping", "get", "absent"], default="get")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--table", default="bench.lookup")
    args = parser.parse_args()

    rng = random.Random(1)
    requests = []
    for _ in range(args.requests):
        if args.kind == "ping":
            requests.append(command(b"PING"))
        else:
            n = rng.randrange(args.rows) + (args.rows if args.kind == "absent" else 0)
            requests.append(command(b"GET", f"{args.table}:{n}".encode()))

    sock = socket.create_connection(("127.0.0.1", args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    replies = sock.makefile("rb")

    def reply() -> bytes | None:
        line = replies.readline()
        if line[:1] == b"$":
            length = int(line[1:-2])
            return replies.read(length + 2)[:-2] if length >= 0 else None
        if line[:1] == b"-":
            raise SystemExit(f"the server answered an error: {line.decode().strip()}")
        return line

    user0, sys0 = cpu_ticks(args.pid)
    times = []
    for request in requests:
        started = time.perf_counter()
        sock.sendall(request)
        value = reply()
        times.append(time.perf_counter() - started)
        if args.kind == "get" and (value is None or not value.startswith(b"{")):
            raise SystemExit(f"expected a row, got {value!r}")
        if args.kind == "absent" and value is not None:
            raise SystemExit(f"expected nil, got {value!r}")
    user1, sys1 = cpu_ticks(args.pid)
    tick = os.sysconf("SC_CLK_TCK")
    n = args.requests
    per = lambda ticks: ticks / tick / n * 1e6  # noqa: E731
    times.sort()
    print(
        f"{args.kind} on port {args.port}: server CPU {per(user1 - user0 + sys1 - sys0):.1f} us/request "
        f"(user {per(user1 - user0):.1f}, system {per(sys1 - sys0):.1f}); client-seen p50 "
        f"{times[n // 2] * 1e3:.3f} ms, p99 {times[int(n * 0.99)] * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
