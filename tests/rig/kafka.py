"""Apache Kafka for the rig: one KRaft process that is both broker and controller.

Clients (pods included) reach it on the node address; the controller listener stays
on loopback because only the broker itself talks to it. Topics are not created on
first use (``auto.create.topics.enable=false``): a test names the topics it needs,
so a typo shows up as an unknown topic instead of an empty one.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.rig.certs import CertificateAuthority, KeyPair
from tests.rig.network import Network
from tests.rig.paths import kafka_classpath
from tests.rig.processes import Managed, RigStartError, Supervisor, free_port, port_open, run_tool, wait_until

T = TypeVar("T")

NODE_ID = 1
# A small heap and the serial collector: the machine has two cores shared with
# builds and other tests, and a test broker holds little data.
BROKER_JVM = ("-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true")
# Tools are short-lived: the C1 compiler alone starts them sooner.
TOOL_JVM = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")

_LOG4J = """\
log4j.rootLogger={level}, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.Target=System.err
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n
"""
# Kafka 4 also touches log4j2 at start; without a file it prints a configuration error.
_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_ERR
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = out
"""
# Every request the broker completes, one line each (header with api key and client id), in a file
# of its own: how a benchmark counts each client's broker requests (Kafka's request logger; the
# broker logs through reload4j, so this is log4j 1 syntax).
_LOG4J_REQUESTS = """\
log4j.logger.kafka.request.logger=DEBUG, requests
log4j.additivity.kafka.request.logger=false
log4j.appender.requests=org.apache.log4j.FileAppender
log4j.appender.requests.File={path}
log4j.appender.requests.layout=org.apache.log4j.PatternLayout
log4j.appender.requests.layout.ConversionPattern=%d{{ISO8601}} %m%n
"""


SCRAM_USERS = {
    "SCRAM-SHA-256": ("scram256-user", "scram256-secret-1"),
    "SCRAM-SHA-512": ("scram512-user", "scram512-secret-1"),
}
"""Created by Kafka's own storage tool (``--add-scram``), each user for its mechanism only, so a
client that negotiates the other mechanism fails."""
PLAIN_USER, PLAIN_PASSWORD = "plain-user", "plain-secret-1"
"""A SASL PLAIN user of the SASL_SSL listener (a JAAS ``user_`` entry)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class KafkaAuth:
    """The broker's authenticated listeners: SASL_SSL (PLAIN and SCRAM users above) and SSL with
    client certificates required, both serving a certificate of the rig's own CA."""

    sasl_ssl_port: int
    ssl_port: int
    ca: CertificateAuthority
    server: KeyPair


class KafkaToolError(RuntimeError):
    """One of Kafka's command-line tools failed; the message carries its output."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupRow:
    """One row of ``kafka-consumer-groups --describe``; ``None`` where the tool prints ``-``."""

    topic: str
    partition: int
    current_offset: int | None
    log_end_offset: int
    lag: int | None
    consumer_id: str | None
    host: str | None  # the member's address, without the leading "/" Java prints
    client_id: str | None


def _kafka_uuid() -> str:
    # Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _run_in_own_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Runs a coroutine to completion on a fresh loop in a worker thread.

    The fixtures are synchronous while many tests run inside an event loop already;
    a thread of its own lets both call the same helpers.
    """

    async def runner() -> T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, runner()).result()


def _optional_int(text: str, column: str, line: str) -> int | None:
    if text == "-":
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise KafkaToolError(f"column {column} is {text!r}, expected an integer or '-', in: {line}") from exc


def _optional_text(text: str) -> str | None:
    return None if text == "-" else text


def parse_group_table(output: str) -> list[GroupRow]:
    """Rows of the consumer-group tool's ``--describe`` table (empty if it printed none)."""
    rows: list[GroupRow] = []
    header: list[str] | None = None
    for line in output.splitlines():
        fields = line.split()
        if fields[:2] == ["GROUP", "TOPIC"]:
            header = fields
            continue
        if header is None or not fields:
            continue
        if len(fields) != len(header):
            raise KafkaToolError(f"expected {len(header)} columns {header}, got: {line}")
        cell = dict(zip(header, fields, strict=True))
        log_end = _optional_int(cell["LOG-END-OFFSET"], "LOG-END-OFFSET", line)
        if log_end is None:
            raise KafkaToolError(f"no log-end offset in: {line}")
        host = _optional_text(cell["HOST"])
        rows.append(
            GroupRow(
                topic=cell["TOPIC"],
                partition=int(cell["PARTITION"]),
                current_offset=_optional_int(cell["CURRENT-OFFSET"], "CURRENT-OFFSET", line),
                log_end_offset=log_end,
                lag=_optional_int(cell["LAG"], "LAG", line),
                consumer_id=_optional_text(cell["CONSUMER-ID"]),
                host=host.lstrip("/") if host is not None else None,
                client_id=_optional_text(cell["CLIENT-ID"]),
            )
        )
    return rows


@dataclass(kw_only=True, slots=True)
class Kafka:
    """A running single-node Kafka started by :meth:`start`; stopped with the supervisor."""

    host: str
    port: int
    controller_port: int
    cluster_id: str
    directory: Path
    classpath: str
    process: Managed
    start_seconds: float  # from launch to a broker that answers metadata requests
    auth: KafkaAuth | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """The SASL_SSL listener (TLS with the rig CA, then PLAIN or SCRAM)."""
        assert self.auth is not None
        return f"{self.host}:{self.auth.sasl_ssl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        """The SSL listener that requires a client certificate of the rig CA."""
        assert self.auth is not None
        return f"{self.host}:{self.auth.ssl_port}"

    @classmethod
    def start(
        cls,
        supervisor: Supervisor,
        network: Network,
        run_dir: Path,
        *,
        timeout: float = 120.0,
        request_log: bool = False,
    ) -> Kafka:
        """Formats and starts the broker; returns once it answers metadata requests.

        ``request_log``: the broker writes every request it completes to :attr:`request_log_file`
        (Kafka's request logger at DEBUG), for a benchmark that counts requests per client id.
        """
        began = time.monotonic()
        classpath = kafka_classpath()
        directory = run_dir / "kafka"
        directory.mkdir(parents=True, exist_ok=True)
        host = network.node_address
        port = free_port(host)
        controller_port = free_port("127.0.0.1")
        cluster_id = _kafka_uuid()
        auth = _make_auth(directory / "tls", host)
        properties = directory / "server.properties"
        properties.write_text(_server_properties(host, port, controller_port, directory / "data", auth))
        for level in ("INFO", "WARN"):
            text = _LOG4J.format(level=level)
            if request_log and level == "INFO":
                text += _LOG4J_REQUESTS.format(path=directory / "requests.log")
            (directory / f"log4j-{level}.properties").write_text(text)
            (directory / f"log4j2-{level}.properties").write_text(_LOG4J2.format(level=level.lower()))

        format_log = run_dir / "logs" / "kafka-format.log"
        format_log.parent.mkdir(parents=True, exist_ok=True)
        with format_log.open("ab") as out:
            formatted = subprocess.run(
                [
                    *_java(classpath, directory, "WARN", TOOL_JVM),
                    "kafka.tools.StorageTool",
                    "format",
                    # One argument: a random id may start with "-", which would read as a flag.
                    f"--cluster-id={cluster_id}",
                    "--config",
                    str(properties),
                    # SCRAM credentials exist before the broker starts, made by Kafka's own tool.
                    *(
                        f"--add-scram={mechanism}=[name={user},password={password}]"
                        for mechanism, (user, password) in SCRAM_USERS.items()
                    ),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        if formatted.returncode != 0:
            tail = "\n".join(format_log.read_text(errors="replace").splitlines()[-20:])
            raise RigStartError(f"kafka storage format failed ({formatted.returncode}):\n{tail}")

        process = supervisor.start(
            "kafka",
            [*_java(classpath, directory, "INFO", BROKER_JVM), "kafka.Kafka", str(properties)],
            cwd=directory,
        )
        kafka = cls(
            host=host,
            port=port,
            controller_port=controller_port,
            cluster_id=cluster_id,
            directory=directory,
            classpath=classpath,
            process=process,
            start_seconds=0.0,
            auth=auth,
        )
        remaining = max(1.0, timeout - (time.monotonic() - began))
        wait_until(
            f"kafka listening on {kafka.bootstrap}",
            lambda: port_open(host, port),
            timeout=remaining,
            process=process,
        )
        remaining = max(1.0, timeout - (time.monotonic() - began))
        wait_until(
            "kafka answering metadata requests",
            kafka._answers_metadata,
            timeout=remaining,
            process=process,
            interval=0.5,
        )
        kafka.start_seconds = time.monotonic() - began
        return kafka

    def _answers_metadata(self) -> bool:
        async def describe() -> bool:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            await admin.start()
            try:
                cluster = await admin.describe_cluster()
            finally:
                await admin.close()
            return any(broker["node_id"] == NODE_ID for broker in cluster["brokers"])

        return _run_in_own_loop(describe)

    def run_tool(self, main_class: str, *args: str, timeout: float = 60.0) -> str:
        """Runs one of Kafka's command-line tools (by main class) and returns its standard output."""
        return run_tool(
            [*_java(self.classpath, self.directory, "WARN", TOOL_JVM), main_class, *args],
            what=f"{main_class} {' '.join(args)}",
            error=KafkaToolError,
            timeout=timeout,
        )

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Creates ``name`` and returns once the broker serves it."""

        async def create() -> None:
            from aiokafka.admin import AIOKafkaAdminClient, NewTopic

            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                response = await admin.create_topics(
                    [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
                )
                for topic, code, *_ in response.topic_errors:
                    if code != 0:
                        raise KafkaToolError(f"creating topic {topic!r} failed with Kafka error code {code}")
                # Leaders are elected shortly after creation; wait so the first produce does not bounce.
                deadline = time.monotonic() + 30
                while True:
                    described = await admin.describe_topics([name])
                    parts = described[0]["partitions"] if described else []
                    if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
                        return
                    if time.monotonic() > deadline:
                        raise KafkaToolError(f"topic {name!r} has no leader for every partition after 30s")
                    await asyncio.sleep(0.1)
            finally:
                await admin.close()

        _run_in_own_loop(create)

    def consumer_groups_describe(self, group: str) -> list[GroupRow]:
        """Kafka's own view of ``group``: its consumer-group tool's ``--describe`` table."""
        output = self.run_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            self.bootstrap,
            "--describe",
            "--group",
            group,
        )
        # The tool exits 0 even when it fails (an unknown group, say) and says so on stdout.
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        if errors:
            raise KafkaToolError(f"describing consumer group {group!r}: {errors[0]}")
        return parse_group_table(output)

    @property
    def request_log_file(self) -> Path:
        """Where a broker started with ``request_log=True`` writes its requests."""
        return self.directory / "requests.log"

    def open_listeners(self) -> list[str]:
        """The broker's listeners ("host:port") that still accept connections: none after stop."""
        ends = ((self.host, self.port), ("127.0.0.1", self.controller_port))
        return [f"{host}:{port}" for host, port in ends if port_open(host, port)]

    def stop(self) -> None:
        self.process.stop()

    def start_again(self, supervisor: Supervisor, *, timeout: float = 120.0) -> None:
        """After :meth:`stop`: the same broker again (same port, cluster id and data), for tests
        of a broker outage; returns once it answers metadata requests."""
        if self.process.alive():
            raise KafkaToolError(f"kafka (pid {self.process.pid}) is still running: stop it first")
        self.process = supervisor.start(
            "kafka",
            [
                *_java(self.classpath, self.directory, "INFO", BROKER_JVM),
                "kafka.Kafka",
                str(self.directory / "server.properties"),
            ],
            cwd=self.directory,
        )
        wait_until(
            "kafka answering metadata requests again",
            self._answers_metadata,
            timeout=timeout,
            process=self.process,
            interval=0.5,
        )


def _java(classpath: str, directory: Path, level: str, jvm: tuple[str, ...]) -> list[str]:
    return [
        "java",
        *jvm,
        f"-Dlog4j.configuration=file:{directory / f'log4j-{level}.properties'}",
        f"-Dlog4j2.configurationFile={directory / f'log4j2-{level}.properties'}",
        "-cp",
        classpath,
    ]


def _make_auth(directory: Path, host: str) -> KafkaAuth:
    ca = CertificateAuthority.create(directory, common_name="tidescale-rig-kafka-ca")
    server = ca.issue_serving_cert("kafka", dns_names=("localhost",), ip_addresses=(host,))
    # Kafka's PEM keystore: the (unencrypted PKCS#8) key followed by the certificate chain.
    (directory / "keystore.pem").write_bytes(server.key_file.read_bytes() + server.cert_pem)
    return KafkaAuth(sasl_ssl_port=free_port(host), ssl_port=free_port(host), ca=ca, server=server)


def _auth_properties(auth: KafkaAuth) -> dict[str, str]:
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    plain = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{PLAIN_USER}="{PLAIN_PASSWORD}";'
    )
    tls = {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(auth.ca.directory / "keystore.pem"),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(auth.ca.cert_file),
    }
    settings = {
        f"listener.name.{name}.{key}": value for name in ("sasl_ssl", "ssl") for key, value in tls.items()
    }
    settings.update(
        {
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": plain,
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.ssl.ssl.client.auth": "required",
        }
    )
    return settings


def _server_properties(
    host: str, port: int, controller_port: int, data: Path, auth: KafkaAuth | None = None
) -> str:
    listeners = f"PLAINTEXT://{host}:{port}"
    if auth is not None:
        listeners += f",SASL_SSL://{host}:{auth.sasl_ssl_port},SSL://{host}:{auth.ssl_port}"
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        # A static quorum of one: no --standalone bootstrap step to get wrong.
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller_port}",
        "listeners": f"{listeners},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT"
        ),
        "log.dirs": str(data),
        "auto.create.topics.enable": "false",
        # One broker: every internal topic has one replica, and few partitions so the
        # first consumer group does not wait for fifty of them.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        # Tests join groups one after another; the default 3 s delay would only slow them.
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        **(_auth_properties(auth) if auth is not None else {}),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())
