"""Fixtures that start real processes for the Python interop tests.

The processes and their helpers live in harness.py (a mirror of the Rust harness in
tests/src/lib.rs). Executables come from the environment that scripts/test exports:
UNITABLE_BIN (required), KAFKA_HOME and MOTO_SERVER_BIN (for the fixtures that need them).
When a test fails, its report shows the tail of each process's log.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import pytest

from harness import Kafka, Moto, Postgres, Process, Service

_PROCESSES = pytest.StashKey[list[Process]]()


def _executable(var: str, hint: str) -> str:
    """The executable named by environment variable `var`; stops the whole run if missing."""
    path = os.environ.get(var, "")
    if not path:
        pytest.exit(f"{var} is not set; {hint}", returncode=pytest.ExitCode.USAGE_ERROR)
    if not os.access(path, os.X_OK):
        pytest.exit(f"{var}={path} is not an executable file; {hint}",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    return path


def track(node: pytest.Item, process: Process) -> None:
    """Registers a process whose log tail goes into the test's failure report."""
    node.stash.setdefault(_PROCESSES, []).append(process)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for process in item.stash.get(_PROCESSES, []):
            report.sections.append(
                (f"{process.name} log ({process.log_path}), last lines", process.log_tail()))


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def unitable_bin() -> str:
    return _executable("UNITABLE_BIN", "run scripts/test, which builds unitable and exports it")


@pytest.fixture(scope="session")
def moto_server_bin() -> str:
    return _executable("MOTO_SERVER_BIN", "run scripts/test, which installs moto_server into the test venv")


@pytest.fixture(scope="session")
def kafka_home() -> str:
    home = os.environ.get("KAFKA_HOME", "")
    if not home or not os.path.isfile(os.path.join(home, ".complete")):
        pytest.exit(f"KAFKA_HOME={home!r} is not a Kafka install; run scripts/test, which installs "
                    "Apache Kafka into its cache", returncode=pytest.ExitCode.USAGE_ERROR)
    return home


@pytest.fixture
def start_service(unitable_bin: str, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[Callable[..., Service]]:
    """A factory: start_service(*serve_args, env=None, anonymous=True) -> Service; all are
    killed afterwards. anonymous=False starts the server without --allow-anonymous."""
    started: list[Service] = []

    def start(*args: str, env: dict[str, str] | None = None, anonymous: bool = True) -> Service:
        service = Service(unitable_bin, tmp_path_factory.mktemp("service"), args, env, anonymous)
        started.append(service)
        track(request.node, service.process)
        return service

    yield start
    for service in started:
        service.kill()


@pytest.fixture
def service(start_service: Callable[..., Service]) -> Service:
    """`unitable serve` with default flags in a fresh data dir."""
    return start_service()


@pytest.fixture
def moto(moto_server_bin: str, tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[Moto]:
    """A moto S3 endpoint; use moto.endpoint with any credentials, region us-east-1."""
    server = Moto(moto_server_bin, tmp_path_factory.mktemp("moto"))
    track(request.node, server.process)
    yield server
    server.process.kill()


@pytest.fixture
def kafka(kafka_home: str, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Kafka]:
    """A one-node Apache Kafka cluster; use kafka.bootstrap as bootstrap.servers."""
    cluster = Kafka(kafka_home, tmp_path_factory.mktemp("kafka"))
    for process in cluster.processes:
        track(request.node, process)
    yield cluster
    cluster.kill()


@pytest.fixture
def postgres(tmp_path_factory: pytest.TempPathFactory,
             request: pytest.FixtureRequest) -> Iterator[Postgres]:
    """PostgreSQL with wal_level=logical (for Debezium); postgres.sql(...) runs statements."""
    server = Postgres(tmp_path_factory.mktemp("postgres"))
    track(request.node, server.process)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def debezium_home() -> str:
    """Debezium's PostgreSQL connector and Kafka Connect, as scripts/lib/debezium-deps.sh lays
    them out."""
    path = os.environ.get("DEBEZIUM_HOME", "")
    if not path or not os.path.isfile(os.path.join(path, ".complete")):
        pytest.exit(f"DEBEZIUM_HOME={path!r} is not a Debezium install; run scripts/test, which "
                    "fetches it", returncode=pytest.ExitCode.USAGE_ERROR)
    return path
