"""A hostile tenant against the waker, without a cluster: a fake API client and fake broker sources.

Each test plays one attack of issue 11 (items 1-6) and checks the defence: what the waker refuses
(with a Warning Event naming the annotation), what it never reads or sends, and that another
namespace's parked Deployment still wakes while it happens.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest

import tidescale.waker as waker_module
from tidescale.credentials import Credentials
from tidescale.errors import KubeNotFound, SourceError
from tidescale.parking import PARK_LABEL, PARK_RECORD_ANNOTATION, DeploymentSnapshot, ParkRecord, ParkState
from tidescale.sources.base import Measurement, TriggerSettings
from tidescale.sources.kafka._source import KafkaSettings
from tidescale.waker import Waker, WakerClient

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PASSWORD = "s3cr3t-of-team-a"


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def deployment(namespace: str, name: str, hints: Mapping[str, str]) -> dict[str, Any]:
    """A Deployment parked at zero (record PARKED, epoch 1) with ``hints``."""
    record = ParkRecord(
        epoch=1,
        state=ParkState.PARKED,
        requester=f"{name}-0",
        lease_transitions=0,
        requested_at=NOW,
        triggers=("kafka",),
        acked_by="waker",
        acked_at=NOW,
        parked_at=NOW,
    )
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "resourceVersion": "1",
            "uid": f"uid-{namespace}-{name}",
            "labels": {PARK_LABEL: "parked"},
            "annotations": {**hints, PARK_RECORD_ANNOTATION: record.to_json()},
        },
        "spec": {"replicas": 0},
    }


def kafka_hints(server: str, **extra: str) -> dict[str, str]:
    hints = {
        "tidescale.io/min-replicas": "0",
        "tidescale.io/kafka.bootstrap-servers": server,
        "tidescale.io/kafka.consumer-group": "workers",
        "tidescale.io/kafka.topic": "jobs",
    }
    hints.update({f"tidescale.io/kafka.{k}": v for k, v in extra.items()})
    return hints


@dataclass
class FakeClient:
    """What the waker asks of the API server, recorded; Secrets from ``secrets``."""

    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    secret_reads: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    patches: dict[tuple[str, str], list[Mapping[str, Any]]] = field(default_factory=dict)
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    fail_patch: set[tuple[str, str]] = field(default_factory=set)
    watch: Any = None

    async def get_secret_data(self, namespace: str, name: str) -> Mapping[str, Any]:
        self.secret_reads.append((namespace, name))
        if (namespace, name) not in self.secrets:
            raise KubeNotFound(f'secrets "{name}" not found')
        return self.secrets[(namespace, name)]

    async def create_event(self, involved: Mapping[str, Any], **event: Any) -> dict[str, Any]:
        self.events.append({"involved": dict(involved), **event})
        return {}

    async def patch_deployment(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        if (namespace, name) in self.fail_patch:
            raise RecursionError("a bug somewhere on this Deployment only")
        self.patches.setdefault((namespace, name), []).append(patch)
        obj = self.objects[(namespace, name)]
        replicas = (patch.get("spec") or {}).get("replicas")
        if replicas is not None:
            obj["spec"]["replicas"] = replicas
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return obj

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(namespace, name)]

    def watch_parked(self) -> AsyncGenerator[tuple[str, Any], None]:
        return cast(AsyncGenerator[tuple[str, Any], None], self.watch())

    def woken(self, namespace: str, name: str) -> bool:
        return int(self.objects[(namespace, name)]["spec"]["replicas"]) > 0

    def events_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            e for e in self.events if (e["involved"]["namespace"], e["involved"]["name"]) == (namespace, name)
        ]


class FakeSource:
    """A broker source whose behaviour is chosen by its first bootstrap host."""

    opened: list[FakeSource] = []
    running = 0
    most_running = 0

    def __init__(self, settings: TriggerSettings, credentials: Credentials | None) -> None:
        self.settings = settings
        self.credentials = credentials
        self.calls = 0
        self.release = asyncio.Event()
        FakeSource.opened.append(self)

    @property
    def host(self) -> str:
        return cast(KafkaSettings, self.settings).bootstrap_servers[0].rsplit(":", 1)[0]

    async def measure_many(self, batch: list[TriggerSettings]) -> dict[TriggerSettings, object]:
        self.calls += 1
        FakeSource.running += 1
        FakeSource.most_running = max(FakeSource.most_running, FakeSource.running)
        try:
            if self.host.startswith("blackhole"):
                await self.release.wait()
            if self.host.startswith("recursion"):
                raise RecursionError("maximum recursion depth exceeded")
            if self.host.startswith("broken"):
                raise ValueError("'x' is not a number")
            if self.host.startswith("unreachable"):
                raise SourceError("no broker")
            active = self.host.startswith("active")
            return {
                s: Measurement(
                    trigger=s.name, value=5.0 if active else 0.0, target=1.0, active=active, taken_at=0.0
                )
                for s in batch
            }
        finally:
            FakeSource.running -= 1

    def forget(self, settings: TriggerSettings) -> None:
        pass

    async def close(self) -> None:
        self.release.set()


@pytest.fixture(autouse=True)
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSource.opened, FakeSource.running, FakeSource.most_running = [], 0, 0

    def open_source(settings: TriggerSettings, *, credentials: Credentials | None = None, **_: Any) -> Any:
        return FakeSource(settings, credentials)

    monkeypatch.setattr(waker_module, "open_source", open_source)


async def _resolve(host: str, port: int) -> list[str]:
    """Every name resolves to a private address but ``metadata.evil``, which has two."""
    return ["10.213.7.9", "169.254.169.254"] if host == "metadata.evil" else ["10.213.7.8"]


def make_waker(client: FakeClient, **options: Any) -> Waker:
    options.setdefault("secret_namespaces", ("team-a", "team-b", "hostile"))
    waker = Waker(cast(WakerClient, client), identity="waker-0", clock=lambda: NOW, **options)
    waker._guard._resolve = _resolve  # no DNS in unit tests
    return waker


async def add(waker: Waker, client: FakeClient, namespace: str, name: str, hints: Mapping[str, str]) -> None:
    obj = deployment(namespace, name, hints)
    client.objects[(namespace, name)] = obj
    await waker._observe(DeploymentSnapshot.from_object(obj))


async def settle(waker: Waker) -> None:
    """Lets the queued Events and background tasks run."""
    for _ in range(20):
        await asyncio.sleep(0)
    while not waker._events.empty():
        involved, reason, message, kind = waker._events.get_nowait()
        await waker._client.create_event(involved, reason=reason, message=message, event_type=kind)


def warned(client: FakeClient, namespace: str, name: str, annotation: str) -> bool:
    return any(
        e["event_type"] == "Warning" and annotation in e["message"] for e in client.events_of(namespace, name)
    )


# -- 1: files and environment variables ------------------------------------------------------------


@pytest.mark.parametrize(
    "field_name",
    ["sasl-password-file", "sasl-password-env", "sasl-username-env", "tls-ca-file", "tls-key-file"],
)
async def test_a_trigger_naming_a_file_or_variable_is_refused_with_a_warning_and_nothing_is_read(
    field_name: str,
) -> None:
    client = FakeClient()
    waker = make_waker(client)
    value = "/var/run/secrets/kubernetes.io/serviceaccount/token" if field_name.endswith("file") else "HOME"
    extra = {"sasl": "plain", "sasl-username-env": "USER", field_name: value}
    if field_name.startswith("tls"):
        extra = {"tls": "true", "tls-cert-file": "/a", "tls-key-file": "/b", field_name: value}
    elif field_name != "sasl-password-file":
        extra["sasl-password-env"] = "PASSWORD"
    await add(waker, client, "hostile", "thief", kafka_hints("evil.hostile:9092", **extra))
    await waker.poll_once()
    await settle(waker)
    assert warned(client, "hostile", "thief", "tidescale.io/kafka." + field_name)
    assert FakeSource.opened == []
    assert client.secret_reads == []


async def test_with_a_credentials_secret_the_agents_env_and_file_fields_are_ignored_never_read() -> None:
    client = FakeClient(
        secrets={("team-a", "kafka-creds"): {"username": _b64("a"), "password": _b64(PASSWORD)}}
    )
    waker = make_waker(client)
    hints = kafka_hints(
        "active-a:9092",
        **{"sasl": "plain", "sasl-username-env": "HOME", "sasl-password-file": "/etc/passwd"},
        **{"credentials-secret": "kafka-creds"},
    )
    await add(waker, client, "team-a", "web", hints)
    await waker.poll_once()
    (source,) = FakeSource.opened
    settings = cast(KafkaSettings, source.settings)
    assert (settings.sasl_username_env, settings.sasl_password_file, settings.sasl_password_env) == (
        None,
    ) * 3
    assert source.credentials is not None
    assert source.credentials.password == PASSWORD
    assert client.woken("team-a", "web")


TLS_FILES = {
    "tls": "true",
    "tls-ca-file": "/etc/kafka-tls/ca.crt",
    "tls-cert-file": "/etc/kafka-tls/tls.crt",
    "tls-key-file": "/etc/kafka-tls/tls.key",
    "tls-key-password-file": "/etc/kafka-tls/key-password",
    "credentials-secret": "kafka-tls",
}
TLS_KEYS = {"ca.crt": "CA PEM", "tls.crt": "CERT PEM", "tls.key": "KEY PEM", "tls.key-password": "pw"}


async def test_with_a_credentials_secret_holding_the_tls_keys_tls_files_are_accepted_and_never_read() -> None:
    client = FakeClient(secrets={("team-a", "kafka-tls"): {k: _b64(v) for k, v in TLS_KEYS.items()}})
    waker = make_waker(client)
    await add(waker, client, "team-a", "web", kafka_hints("active-a:9092", **TLS_FILES))
    await waker.poll_once()
    (source,) = FakeSource.opened
    settings = cast(KafkaSettings, source.settings)
    assert (settings.tls, settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (
        True,
        None,
        None,
        None,
    )
    assert settings.tls_key_password_file is None
    assert source.credentials is not None
    assert {k: source.credentials.get(k) for k in TLS_KEYS} == TLS_KEYS
    assert client.woken("team-a", "web")


@pytest.mark.parametrize(
    ("missing", "field_name"),
    [("ca.crt", "tls-ca-file"), ("tls.key", "tls-key-file"), ("tls.key-password", "tls-key-password-file")],
)
async def test_a_tls_field_whose_key_the_secret_lacks_is_a_warning_naming_field_and_key(
    missing: str, field_name: str
) -> None:
    keys = {k: _b64(v) for k, v in TLS_KEYS.items() if k != missing}
    client = FakeClient(secrets={("team-a", "kafka-tls"): keys})
    waker = make_waker(client)
    await add(waker, client, "team-a", "web", kafka_hints("active-a:9092", **TLS_FILES))
    await waker.poll_once()
    await settle(waker)
    assert FakeSource.opened == []
    assert not client.woken("team-a", "web")
    (event,) = [e for e in client.events_of("team-a", "web") if e["reason"] == "TriggerNotPrepared"]
    assert f"key {missing!r} is missing" in event["message"]
    assert f"tidescale.io/kafka.{field_name}" in event["message"]


# -- 2: other teams' credentials --------------------------------------------------------------------


async def test_credentials_never_enter_the_environment_and_no_connection_is_shared_across_namespaces() -> (
    None
):
    client = FakeClient(
        secrets={
            ("team-a", "creds"): {"username": _b64("a"), "password": _b64(PASSWORD)},
            ("team-b", "creds"): {"username": _b64("a"), "password": _b64(PASSWORD)},
        }
    )
    waker = make_waker(client)
    before = dict(os.environ)
    same = kafka_hints(
        "idle:9092",
        **{
            "sasl": "plain",
            "sasl-username-env": "U",
            "sasl-password-env": "P",
            "credentials-secret": "creds",
        },
    )
    await add(waker, client, "team-a", "web", same)
    await add(waker, client, "team-b", "web", same)
    await add(waker, client, "hostile", "web", kafka_hints("idle:9092"))
    await waker.poll_once()
    assert dict(os.environ) == before
    assert PASSWORD not in "".join(os.environ.values())
    by_namespace = {(s.credentials.namespace if s.credentials else None) for s in FakeSource.opened}
    assert len(FakeSource.opened) == 3
    assert by_namespace == {"team-a", "team-b", None}


async def test_a_secret_of_another_namespace_cannot_be_named() -> None:
    client = FakeClient(secrets={("team-a", "creds"): {"username": _b64("a"), "password": _b64(PASSWORD)}})
    waker = make_waker(client)
    await add(waker, client, "hostile", "web", kafka_hints("idle:9092", **{"credentials-secret": "creds"}))
    await waker.poll_once()
    assert client.secret_reads == [("hostile", "creds")]
    assert all(s.credentials is None or s.credentials.namespace == "hostile" for s in FakeSource.opened)


async def test_a_secret_that_is_not_utf8_is_a_named_error_on_that_deployment_only() -> None:
    client = FakeClient(
        secrets={
            ("hostile", "creds"): {"username": _b64("u"), "password": _b64(b"\xff\xfe" + PASSWORD.encode())}
        }
    )
    waker = make_waker(client)
    await add(waker, client, "hostile", "web", kafka_hints("idle:9092", **{"credentials-secret": "creds"}))
    await add(waker, client, "team-b", "web", kafka_hints("active-b:9092"))
    await waker.poll_once()
    await settle(waker)
    assert warned(client, "hostile", "web", "the value of key 'password' is not UTF-8 text")
    assert client.woken("team-b", "web")
    assert not client.woken("hostile", "web")


async def test_nothing_sensitive_reaches_a_log_line_or_an_event(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = FakeClient(
        secrets={
            ("team-a", "good"): {"username": _b64("alice"), "password": _b64(PASSWORD)},
            ("team-a", "half"): {"username": _b64("alice")},
            ("team-a", "bad"): {"username": _b64("alice"), "password": _b64(b"\xff" + PASSWORD.encode())},
        }
    )
    waker = make_waker(client)
    for name, secret, host in (("a", "good", "broken"), ("b", "half", "idle"), ("c", "bad", "recursion")):
        await add(
            waker, client, "team-a", name, kafka_hints(f"{host}:9092", **{"credentials-secret": secret})
        )
    await waker.poll_once()
    await settle(waker)
    shown = caplog.text + repr(client.events) + repr([s.credentials for s in FakeSource.opened])
    assert client.events
    assert PASSWORD not in shown
    assert PASSWORD[1:-1] not in shown


# -- 3 and 5: failure isolation, deadlines, budgets ---------------------------------------------------


async def test_a_broker_answer_that_breaks_the_arithmetic_fails_only_its_own_deployment() -> None:
    client = FakeClient()
    waker = make_waker(client)
    await add(waker, client, "hostile", "a", kafka_hints("recursion:9092"))
    await add(waker, client, "hostile", "b", kafka_hints("broken:9092"))
    await add(waker, client, "team-b", "web", kafka_hints("active-b:9092"))
    await waker.poll_once()
    assert client.woken("team-b", "web")
    assert b"tidescale_waker_measurement_failures_total 2" in waker.metrics.render()


async def test_an_error_while_acting_on_one_deployment_backs_it_off_with_a_warning_and_spares_the_rest() -> (
    None
):
    client = FakeClient(fail_patch={("hostile", "web")})
    waker = make_waker(client)
    await add(waker, client, "hostile", "web", kafka_hints("active-h:9092"))
    await add(waker, client, "team-b", "web", kafka_hints("active-b:9092"))
    await waker.poll_once()
    await settle(waker)
    assert client.woken("team-b", "web")
    assert any(e["reason"] == "WakerError" for e in client.events_of("hostile", "web"))
    tracked = waker._tracked[("hostile", "web")]
    assert tracked.failures == 1
    assert tracked.backoff_until > 0


async def test_a_round_does_not_wait_for_blackholed_brokers_nor_start_them_twice() -> None:
    client = FakeClient()
    waker = make_waker(client, round_deadline=0.05)
    for i in range(30):
        await add(waker, client, "hostile", f"slow-{i}", kafka_hints(f"blackhole-{i}:9092", timeout="120s"))
    await add(waker, client, "team-b", "web", kafka_hints("idle-b:9092"))
    await waker.poll_once()
    assert not client.woken("team-b", "web")
    # The message arrives: the next round measures team-b again although 30 batches still hang.
    client.objects[("team-b", "web")]["metadata"]["annotations"]["tidescale.io/kafka.bootstrap-servers"] = (
        "active-b:9092"
    )
    await waker._observe(DeploymentSnapshot.from_object(client.objects[("team-b", "web")]))
    await waker.poll_once()
    assert client.woken("team-b", "web")
    hanging = [s for s in FakeSource.opened if s.host.startswith("blackhole")]
    assert sum(s.calls for s in hanging) <= 30
    assert FakeSource.most_running <= waker_module.NAMESPACE_CONCURRENCY + 1
    assert len(waker._batches) >= 1  # the stragglers go on in the background
    for source in hanging:
        source.release.set()


async def test_a_missing_secret_is_read_once_per_backoff_step_not_once_per_round() -> None:
    client = FakeClient()
    waker = make_waker(client)
    for i in range(5):
        await add(
            waker, client, "hostile", f"w{i}", kafka_hints("idle:9092", **{"credentials-secret": "nope"})
        )
    for _ in range(4):
        await waker.poll_once()
    assert client.secret_reads == [("hostile", "nope")]


async def test_a_deployment_whose_secret_is_missing_is_prepared_once_per_round_not_in_a_loop() -> None:
    client = FakeClient()
    listed = asyncio.Event()

    async def watch() -> AsyncGenerator[tuple[str, Any], None]:
        obj = deployment("hostile", "w", kafka_hints("idle:9092", **{"credentials-secret": "nope"}))
        client.objects[("hostile", "w")] = obj
        yield "ADDED", obj
        listed.set()
        await asyncio.Event().wait()

    client.watch = watch
    waker = make_waker(client, interval=0.5)
    prepares = 0
    prepare = waker._prepare

    async def counted(tracked: Any) -> None:
        nonlocal prepares
        prepares += 1
        await prepare(tracked)

    waker._prepare = counted  # type: ignore[method-assign]
    task = asyncio.create_task(waker.run())
    try:
        async with asyncio.timeout(30):
            await listed.wait()
        await asyncio.sleep(1.5)  # three rounds: a failed preparation waits for the next one
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert 1 <= prepares <= 8, prepares
    assert client.secret_reads == [("hostile", "nope")]


async def test_the_watch_and_the_poll_loop_are_restarted_after_any_error_including_recursion() -> None:
    client = FakeClient()
    listed = asyncio.Event()
    calls = 0

    async def watch() -> AsyncGenerator[tuple[str, Any], None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RecursionError("a queue-pattern deep enough")
        obj = deployment("team-b", "web", kafka_hints("active-b:9092"))
        client.objects[("team-b", "web")] = obj
        yield "ADDED", obj
        listed.set()
        await asyncio.Event().wait()

    client.watch = watch
    waker = make_waker(client, interval=0.01)
    task = asyncio.create_task(waker.run())
    try:
        async with asyncio.timeout(30):
            await listed.wait()
            while not client.woken("team-b", "web"):  # noqa: ASYNC110 - the fake client has no event to wait on
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert waker.restarts["watch"] == 1


# -- 6: broker addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "why"),
    [
        ("169.254.169.254:80", "denied network 169.254.0.0/16"),
        ("127.0.0.1:6443", "denied network 127.0.0.0/8"),
        ("[::1]:9092", "denied network ::1/128"),
        ("[::ffff:169.254.169.254]:80", "169.254.169.254 is in the denied network"),
        ("[fe80::1]:9092", "denied network fe80::/10"),
        ("metadata.evil:9092", "metadata.evil resolves to 169.254.169.254"),
        ("10.96.0.1:9092", "Kubernetes API server"),
        ("10.213.1.1:6443", "Kubernetes API server"),
    ],
)
async def test_a_broker_address_that_is_link_local_loopback_or_the_api_server_is_refused(
    server: str, why: str
) -> None:
    client = FakeClient()
    networks = waker_module.BrokerNetworks.parse(
        waker_module.DEFAULT_ALLOWED_NETWORKS,
        waker_module.DEFAULT_DENIED_NETWORKS,
        api_server=[("10.96.0.1", None), ("10.213.1.1", 6443)],
    )
    waker = make_waker(client, networks=networks)
    await add(waker, client, "hostile", "ssrf", kafka_hints(server))
    await add(
        waker, client, "team-b", "web", kafka_hints("10.213.1.1:9092")
    )  # the rig: API and broker, one host
    await waker.poll_once()
    await settle(waker)
    (event,) = [e for e in client.events_of("hostile", "ssrf") if e["reason"] == "TriggerRefused"]
    assert "tidescale.io/kafka.bootstrap-servers" in event["message"]
    assert why in event["message"]
    assert [s.host for s in FakeSource.opened] == ["10.213.1.1"]


async def test_only_the_allowed_networks_are_reached_when_the_setting_narrows_them() -> None:
    client = FakeClient()
    networks = waker_module.BrokerNetworks.parse("10.213.0.0/16", waker_module.DEFAULT_DENIED_NETWORKS)
    waker = make_waker(client, networks=networks)
    await add(waker, client, "hostile", "out", kafka_hints("192.168.1.1:9092"))
    await add(waker, client, "team-b", "in", kafka_hints("10.213.4.4:9092"))
    await waker.poll_once()
    await settle(waker)
    assert warned(client, "hostile", "out", "none of the allowed networks")
    assert [s.host for s in FakeSource.opened] == ["10.213.4.4"]


def test_every_file_and_variable_field_of_every_trigger_type_is_refused_or_cleared_for_the_waker() -> None:
    """A field a source adds later (``tls-key-password-file``, say) must not slip past the waker:
    every ``*-file`` and ``*-env`` setting of every registered trigger type is found."""
    import dataclasses
    import typing

    from tidescale._waker_guard import _credential_fields, _tls_fields
    from tidescale.sources.registry import TRIGGER_TYPES, settings_parser

    for trigger_type in TRIGGER_TYPES:
        settings_type = typing.get_type_hints(settings_parser(trigger_type))["return"]
        fields = {f.name for f in dataclasses.fields(settings_type)}
        named = {name for name in fields if name.endswith(("_file", "_env"))}
        guarded = {a for a, _ in (*_tls_fields(settings_type), *_credential_fields(settings_type))}
        if "credentials_secret" in fields:
            assert named, (
                f"{settings_type.__name__} names no file or variable: the test looks at the wrong type"
            )
        assert named == guarded, settings_type.__name__
