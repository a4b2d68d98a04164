"""The registry: trigger types, parsers, field docs, cheap import, and the per-process pool."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tidescale.errors import HintsInvalid, SourceNotFound
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, Source, TriggerSettings
from tidescale.sources.kafka._source import KafkaSettings, KafkaSource
from tidescale.sources.rabbitmq._source import RabbitMQSource
from tidescale.sources.registry import (
    TRIGGER_TYPES,
    FieldDoc,
    SourcePool,
    field_docs,
    measure_safely,
    open_source,
    settings_parser,
)

KAFKA = {"bootstrap-servers": "k:9092", "consumer-group": "g"}


def test_every_source_folder_is_registered_under_its_trigger_type() -> None:
    import importlib
    from pathlib import Path

    import tidescale.sources

    folders = [
        p.name for p in Path(tidescale.sources.__file__).parent.iterdir() if (p / "__init__.py").is_file()
    ]
    types = {importlib.import_module(f"tidescale.sources.{folder}").KIND.type_name for folder in folders}
    assert set(TRIGGER_TYPES) == types
    assert {
        "kafka",
        "rabbitmq",
        "redis",
        "postgresql",
        "cron",
        "prometheus",
        "nats-jetstream",
        "aws-sqs",
        "azure-queue",
    } <= types


@pytest.mark.parametrize("type_name", TRIGGER_TYPES)
def test_every_type_has_a_parser_and_documents_every_field_it_accepts(type_name: str) -> None:
    docs = field_docs(type_name)
    assert docs
    assert all(isinstance(d, FieldDoc) and d.meaning and d.example for d in docs)
    # Every documented field is one the parser knows, and its example is a valid value.
    parser = settings_parser(type_name)
    for doc in docs:
        annotation = f"tidescale.io/t.{doc.field}"
        try:
            parser("t", {doc.field: doc.example})
        except HintsInvalid as invalid:
            own = [str(p) for p in invalid.problems if p.annotation == annotation and p.value == doc.example]
            refused = [p for p in own if "known field" in p or ("expected a " in p and "together" not in p)]
            assert not refused


def test_a_parser_returns_settings_named_after_the_trigger() -> None:
    assert settings_parser("kafka")("orders", KAFKA).name == "orders"


def test_importing_the_registry_loads_no_broker_client() -> None:
    code = (
        "import sys, tidescale.sources.registry;"
        "import tidescale.sources.kafka._source, tidescale.sources.rabbitmq._source;"
        "import tidescale.sources.redis._source, tidescale.sources.postgresql._source;"
        "import tidescale.sources.prometheus._source, tidescale.sources.nats_jetstream._source;"
        "import tidescale.sources.aws_sqs._source, tidescale.sources.azure_queue._source;"
        "print(sorted(m for m in ('aiokafka', 'aio_pika', 'aiormq', 'httpx', 'asyncpg') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_open_source_picks_the_source_of_the_settings_type() -> None:
    assert isinstance(open_source(settings_parser("kafka")("k", KAFKA)), KafkaSource)
    rabbit = settings_parser("rabbitmq")("r", {"management-url": "http://r:15672", "queue": "q"})
    assert isinstance(open_source(rabbit, pod_ip="10.0.0.1"), RabbitMQSource)


async def test_triggers_on_one_cluster_share_one_source_until_the_last_is_released() -> None:
    pool = SourcePool()
    a = settings_parser("kafka")("a", {**KAFKA, "consumer-group": "one"})
    b = settings_parser("kafka")("b", {"bootstrap-servers": "k:9092", "consumer-group": "two"})
    other = settings_parser("kafka")("c", {**KAFKA, "bootstrap-servers": "elsewhere:9092"})
    source_a, source_b = await pool.acquire(a), await pool.acquire(b)
    assert source_a is source_b
    await pool.acquire(other)
    assert pool.open_clusters() == 2
    await pool.release(a)
    assert pool.open_clusters() == 2
    await pool.release(b)
    await pool.release(other)
    assert pool.open_clusters() == 0
    await pool.release(other)  # releasing past zero is harmless
    assert pool.open_clusters() == 0


async def test_releasing_a_trigger_forgets_its_previous_offsets() -> None:
    pool = SourcePool()
    settings = settings_parser("kafka")("a", {**KAFKA, "exclude-persistent-lag": "true"})
    keep = settings_parser("kafka")("b", KAFKA)
    source = await pool.acquire(settings)
    await pool.acquire(keep)
    assert isinstance(source, KafkaSource)
    source._previous[(settings, Scope.GROUP)] = object()  # type: ignore[assignment]
    await pool.release(settings)
    assert source._previous == {}


class _Failing:
    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        raise SourceNotFound("no topic 'x'")

    async def close(self) -> None:
        return None


async def test_a_failed_measurement_becomes_a_failure_record_not_an_exception() -> None:
    source: Source = _Failing()
    result = await measure_safely(
        source,
        KafkaSettings(name="k", bootstrap_servers=("k:1",), consumer_group="g"),
        Scope.GROUP,
        clock=lambda: 9.0,
    )
    assert result == MeasurementFailure(trigger="k", error="no topic 'x'", taken_at=9.0)


@pytest.mark.parametrize(
    ("type_name", "fields"),
    [
        ("rabbitmq", {"management-url": "http://127.0.0.1:1", "queue": "q", "timeout": "1s"}),
        (
            "prometheus",
            {"server-address": "http://127.0.0.1:1", "query": "up", "threshold": "1", "timeout": "1s"},
        ),
        (
            "nats-jetstream",
            {"monitoring-endpoint": "127.0.0.1:1", "stream": "S", "consumer": "c", "timeout": "1s"},
        ),
    ],
)
def test_a_plain_http_source_loads_no_ca_bundle(type_name: str, fields: dict[str, str]) -> None:
    """httpx's default verification loads certifi's bundle (~8 MiB of RSS with it parsed) when the
    client is made, even for an http:// URL that never uses it."""
    code = (
        "import asyncio, ssl, sys\n"
        "loaded = []\n"
        "for method in ('load_verify_locations', 'load_default_certs'):\n"
        "    original = getattr(ssl.SSLContext, method)\n"
        "    def counting(self, *a, _original=original, **k):\n"
        "        loaded.append(1)\n"
        "        return _original(self, *a, **k)\n"
        "    setattr(ssl.SSLContext, method, counting)\n"
        "from tidescale.sources.base import Scope\n"
        "from tidescale.sources.registry import measure_safely, open_source, settings_parser\n"
        f"settings = settings_parser({type_name!r})('t', {fields!r})\n"
        "source = open_source(settings, pod_ip='127.0.0.1')\n"
        "reading = asyncio.run(measure_safely(source, settings, Scope.GROUP))\n"
        "print(type(reading).__name__, len(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["MeasurementFailure", "0"]


def test_settings_made_by_a_source_folders_own_parser_find_their_kind_in_a_fresh_process() -> None:
    code = (
        "from tidescale.sources.rabbitmq._settings import parse_rabbitmq_settings\n"
        "from tidescale.sources.registry import kind_of\n"
        "settings = parse_rabbitmq_settings('r', {'management-url': 'http://r:15672', 'queue': 'q'})\n"
        "print(kind_of(settings).type_name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "rabbitmq"
