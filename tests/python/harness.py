"""Process harness for the Python interop tests, mirroring tests/src/lib.rs.

Each process runs in its own directory on free ports, logs stdout and stderr to a file there,
is waited on until it is ready, and is killed by kill() (SIGKILL) or at the end of its fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

STARTUP_TIMEOUT = 60.0
CLI_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
TAIL_LINES = 40

# Local HTTP calls must not go through a proxy configured in the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tcp_accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def http_request(method: str, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """Sends one request without a body; returns (status, body) for any status."""
    request = urllib.request.Request(url, method=method)
    try:
        with _HTTP.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def retry_if_port_taken(start: Callable[[], None]) -> None:
    """Runs start() up to three times while it fails because a free port was taken meanwhile."""
    for attempt in range(1, 4):
        try:
            start()
            return
        except RuntimeError as err:
            if attempt == 3 or "in use" not in str(err):
                raise


class Process:
    """A child process whose output goes to a log file; killed by kill() or respawned."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / f"{name.replace(' ', '-')}.log"
        self.log_path.write_text("")
        self.starts = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.respawn()

    def respawn(self) -> None:
        self.kill()
        self.starts += 1
        with self.log_path.open("a") as log:
            log.write(f"=== {self.name} start #{self.starts}: {' '.join(self.argv)} ===\n")
            log.flush()
            self.popen = subprocess.Popen(
                self.argv, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if ready():
                return
            if self.popen is None or self.popen.poll() is not None:
                code = None if self.popen is None else self.popen.returncode
                raise RuntimeError(
                    f"{self.name} exited with {code} before {what}; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"timed out after {timeout}s waiting for {what} ({self.name}); last lines of "
                    f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL (a crash), then reap."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.kill()
            self.popen.wait()
            self.popen = None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; kills and raises if the process does not exit in time."""
        if self.popen is None:
            raise RuntimeError(f"{self.name} is not running")
        popen, self.popen = self.popen, None
        popen.terminate()
        try:
            return popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
            raise RuntimeError(f"{self.name} did not exit within {timeout}s of SIGTERM:\n"
                               f"{self.log_tail()}") from None


class Service:
    """`unitable serve` in a temporary data dir, plus its command-line client."""

    def __init__(self, bin_path: str, workdir: Path, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, anonymous: bool = True):
        self.bin = bin_path
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)

        def start() -> None:
            self.grpc_port = free_port()
            self.http_port = free_port()
            while self.http_port == self.grpc_port:
                self.http_port = free_port()
            self.grpc_url = f"http://127.0.0.1:{self.grpc_port}"
            self.http_addr = f"127.0.0.1:{self.http_port}"
            argv = [bin_path, "serve", "--data-dir", str(self.data_dir),
                    "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
                    "--http-addr", self.http_addr,
                    *(["--allow-anonymous"] if anonymous else []), *args]
            self.process = Process("unitable serve", argv, workdir, env)
            self._wait_healthy()

        retry_if_port_taken(start)

    def _healthy(self) -> bool:
        try:
            status, _ = http_request("GET", f"http://{self.http_addr}/healthz", timeout=1.0)
        except OSError:
            return False
        return status == 200

    def _wait_healthy(self) -> None:
        self.process.wait_until(f"GET http://{self.http_addr}/healthz to answer 200", self._healthy)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Runs `unitable --server GRPC_URL ARGS...`; with check=True a failure raises with stderr."""
        result = subprocess.run(
            [self.bin, "--server", self.grpc_url, *args], cwd=self.workdir,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if check and result.returncode != 0:
            raise AssertionError(
                f"`unitable {' '.join(args)}` exited with {result.returncode}\n"
                f"stderr:\n{result.stderr}\nstdout:\n{result.stdout}")
        return result

    def kill(self) -> None:
        """SIGKILL the server (a crash); restart() brings it back."""
        self.process.kill()

    def stop(self) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        return self.process.stop()

    def restart(self) -> None:
        """Kill (SIGKILL) if running, start again on the same data dir and ports, wait healthy."""
        self.process.respawn()
        self._wait_healthy()

    def log(self) -> str:
        return self.process.log()


class Moto:
    """moto_server: a local S3 endpoint that accepts any credentials."""

    def __init__(self, bin_path: str, workdir: Path):
        def start() -> None:
            self.port = free_port()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            self.process = Process(
                "moto_server", [bin_path, "-H", "127.0.0.1", "-p", str(self.port)], workdir)
            self.process.wait_until(f"moto_server to accept connections on {self.port}",
                                    lambda: tcp_accepts(self.port))

        retry_if_port_taken(start)

    def create_bucket(self, name: str) -> None:
        status, body = http_request("PUT", f"{self.endpoint}/{name}")
        if status != 200:
            raise RuntimeError(f"creating bucket {name} failed with HTTP {status}: {body!r}")


class Kafka:
    """Apache Kafka (KRaft) on loopback: `nodes` combined broker+controller nodes laid out and
    formatted by scripts/kafka/start.sh, each run (and killed on kill()) by this harness.
    kill(i) and restart(i) keep the node's ports and data."""

    READY_LINE = "Kafka Server started"

    def __init__(self, kafka_home: str, workdir: Path, nodes: int = 1):
        self.kafka_home = kafka_home
        self.workdir = workdir
        scripts = Path(__file__).resolve().parents[2] / "scripts" / "kafka"
        self._node_script = str(scripts / "node.sh")
        env = {**os.environ, "KAFKA_HOME": kafka_home}
        done = subprocess.run(
            ["bash", str(scripts / "start.sh"), "--nodes", str(nodes), "--init-only", str(workdir)],
            env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/kafka/start.sh --init-only failed: {done.stderr}")
        values = dict(line.split("=", 1) for line in
                      (workdir / "cluster.env").read_text().splitlines() if "=" in line)
        self.bootstrap = values["KAFKA_BOOTSTRAP"]
        self.processes: list[Process] = []
        self._offsets: list[int] = []
        for node in range(1, nodes + 1):
            self._offsets.append(self._log_size(node))
            self.processes.append(Process(
                f"kafka node {node}", ["bash", self._node_script, "run", str(workdir), str(node)],
                workdir, {"KAFKA_HOME": kafka_home}))
        for i in range(nodes):
            self._wait_ready(i)

    def _server_log(self, node: int) -> Path:
        return self.workdir / f"node-{node}" / "logs" / "server.log"

    def _log_size(self, node: int) -> int:
        try:
            return self._server_log(node).stat().st_size
        except FileNotFoundError:
            return 0

    def _wait_ready(self, i: int) -> None:
        log, offset = self._server_log(i + 1), self._offsets[i]

        def ready() -> bool:
            try:
                with open(log, "rb") as f:
                    f.seek(offset)
                    return self.READY_LINE.encode() in f.read()
            except FileNotFoundError:
                return False

        self.processes[i].wait_until(f"kafka node {i + 1} to log '{self.READY_LINE}'", ready,
                                     timeout=2 * STARTUP_TIMEOUT)

    def kill(self, i: int | None = None) -> None:
        """SIGKILLs node i (0-based), or every node."""
        for process in self.processes if i is None else [self.processes[i]]:
            process.kill()

    def restart(self, i: int) -> None:
        self._offsets[i] = self._log_size(i + 1)
        self.processes[i].respawn()
        self._wait_ready(i)


def _postgres_bindir() -> Path:
    """PostgreSQL's programs: PG_BINDIR (scripts/test exports it), else the newest
    /usr/lib/postgresql/*/bin (Debian's package)."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (no PG_BINDIR or /usr/lib/postgresql/*/bin); "
                           "scripts/test installs Debian's postgresql package")
    return found[-1].parent


class Postgres:
    """PostgreSQL with logical decoding on (`wal_level=logical`, for Debezium), trust
    authentication for superuser `unitable`, on a free loopback port. PostgreSQL refuses to run
    as root: as root the server runs as the `postgres` user (Debian's package creates it)."""

    def __init__(self, workdir: Path):
        self.bindir = _postgres_bindir()
        self.workdir = workdir
        # The server user must reach its directory: pytest's own temporary tree is private to
        # the user running the tests, so the data lives in a directory of its own.
        self.home = Path(tempfile.mkdtemp(prefix="unitable-postgres-"))
        os.chmod(self.home, 0o755)
        self.data = self.home / "pgdata"
        root = os.geteuid() == 0
        self._as_server = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if root else []
        if root:
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.home)], check=True)
        done = subprocess.run(
            [*self._as_server, str(self.bindir / "initdb"), "-A", "trust", "-U", "unitable", "-E", "UTF8",
             "--no-sync", "-D", str(self.data)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")

        def start() -> None:
            self.port = free_port()
            self.process = Process("postgres", [
                *self._as_server, str(self.bindir / "postgres"), "-D", str(self.data),
                "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.home}", "-c", "fsync=off",
                "-c", "wal_level=logical", "-c", "max_replication_slots=4",
                "-c", "max_wal_senders=4", "-c", "timezone=UTC"], workdir)
            self.process.wait_until(f"postgres to accept connections on {self.port}",
                                    lambda: tcp_accepts(self.port))

        retry_if_port_taken(start)

    def sql(self, statements: str) -> str:
        """Runs SQL with psql (stops at the first error); returns its unaligned output."""
        done = subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "unitable",
             "-d", "postgres", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", statements],
            capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"psql failed: {done.stderr}")
        return done.stdout

    def kill(self) -> None:
        self.process.kill()
        shutil.rmtree(self.home, ignore_errors=True)


class KafkaConnect:
    """Kafka Connect in standalone mode running one connector: the Connect runtime from
    `debezium_home`/connect, plugins from `debezium_home`/plugin (scripts/lib/debezium-deps.sh
    fetches both), offsets in a file in `workdir`, the REST API on a free port."""

    def __init__(self, debezium_home: str, workdir: Path, bootstrap: str,
                 connector: dict[str, str]):
        self.rest_port = free_port()
        worker = {
            "bootstrap.servers": bootstrap,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "offset.storage.file.filename": str(workdir / "connect.offsets"),
            "offset.flush.interval.ms": "1000",
            "plugin.path": f"{debezium_home}/plugin",
            "listeners": f"http://127.0.0.1:{self.rest_port}",
        }
        (workdir / "worker.properties").write_text(
            "".join(f"{k}={v}\n" for k, v in worker.items()))
        (workdir / "connector.properties").write_text(
            "".join(f"{k}={v}\n" for k, v in connector.items()))
        (workdir / "log4j2.properties").write_text(
            "rootLogger.level=INFO\nrootLogger.appenderRef.out.ref=out\n"
            "appender.out.type=Console\nappender.out.name=out\n"
            "appender.out.layout.type=PatternLayout\n"
            "appender.out.layout.pattern=[%d] %p %m (%c)%n\n")
        java = f"{os.environ['JAVA_HOME']}/bin/java" if os.environ.get("JAVA_HOME") else "java"
        self.process = Process(
            "kafka connect", [java, "-Xmx512m",
                              f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}",
                              "-cp", f"{debezium_home}/connect/*",
                              "org.apache.kafka.connect.cli.ConnectStandalone",
                              str(workdir / "worker.properties"), str(workdir / "connector.properties")],
            workdir)

    def wait_running(self, name: str, timeout: float = 120.0) -> None:
        """Waits until the REST API says connector `name` and its task run."""
        def running() -> bool:
            try:
                status, body = http_request(
                    "GET", f"http://127.0.0.1:{self.rest_port}/connectors/{name}/status", timeout=2)
            except OSError:
                return False
            if status != 200:
                return False
            import json
            state = json.loads(body)
            tasks = state.get("tasks", [])
            if any(t.get("state") == "FAILED" for t in tasks):
                raise RuntimeError(f"connector {name} failed: {state}")
            return state["connector"]["state"] == "RUNNING" and tasks and \
                all(t.get("state") == "RUNNING" for t in tasks)

        self.process.wait_until(f"connector {name} to run", running, timeout=timeout)

    def kill(self) -> None:
        self.process.kill()


def murmur2(data: bytes) -> int:
    """The Java Kafka client's murmur2 (seed 0x9747b28c), as the doc's Partitioning section says."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    n = len(data) // 4
    for i in range(n):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = data[4 * n:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def consume_topic(bootstrap: str, topic: str, partitions: int, group: str) -> list:
    """Every record of `topic` (partitions 0..partitions-1) from offset 0 to its end, read by a
    plain confluent-kafka consumer, in partition order then offset order per partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records, eof = [], set()
    while len(eof) < partitions:
        msg = consumer.poll(15.0)
        assert msg is not None, f"timed out reading {topic}"
        if msg.error():
            assert msg.error().code() == -191, msg.error()  # _PARTITION_EOF
            eof.add(msg.partition())
            continue
        records.append(msg)
    consumer.close()
    return records
