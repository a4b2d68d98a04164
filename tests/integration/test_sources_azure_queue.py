"""Our Azure Queue numbers against Azurite's own answers, on the rig's real Azurite.

Azurite verifies Shared Key signatures and SAS tokens, so refused credentials are tested here.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from tests.rig.azurite import ACCOUNT, KEY, Azurite
from tests.rig.processes import free_port
from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceNotFound
from tidescale.sources.azure_queue._settings import AzureQueueSettings, parse_azure_queue_settings
from tidescale.sources.azure_queue._source import AzureQueueSource
from tidescale.sources.base import Measurement, MeasurementFailure, Scope

pytestmark = pytest.mark.rig

KEY_ENV = "TIDESCALE_TEST_AZURE_KEY"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(KEY_ENV, KEY)
    return {"account-key-env": KEY_ENV}


def settings_for(
    azurite: Azurite, queue: str, credential: dict[str, str], **extra: str
) -> AzureQueueSettings:
    raw = {"queue-name": queue, "account-name": ACCOUNT, "endpoint": azurite.endpoint, **credential, **extra}
    return parse_azure_queue_settings("az", raw)


def new_queue(azurite: Azurite) -> str:
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    azurite.create_queue(name)
    return name


async def measure(settings: AzureQueueSettings, credentials: Credentials | None = None) -> Measurement:
    source = AzureQueueSource(settings, credentials=credentials)
    try:
        return await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()


async def test_all_counts_what_azurite_reports_and_visible_only_what_its_peek_returns(
    azurite: Azurite, key: dict[str, str]
) -> None:
    queue = new_queue(azurite)
    azurite.put(queue, [f"m{n}" for n in range(7)])
    assert azurite.receive(queue, 3) == 3  # invisible for 10 minutes
    approximate, peeked = azurite.approximate_count(queue), azurite.peek_count(queue)
    assert (approximate, peeked) == (7, 4)  # the setup took

    everything = await measure(settings_for(azurite, queue, key))
    assert everything.value == approximate
    assert everything.detail == {"approximate": approximate}
    assert everything.active
    visible = await measure(settings_for(azurite, queue, key, **{"queue-length-strategy": "visible-only"}))
    assert visible.value == peeked
    assert visible.detail == {"visible": peeked}


async def test_visible_only_falls_back_to_the_approximate_count_from_32_visible_messages(
    azurite: Azurite, key: dict[str, str]
) -> None:
    queue = new_queue(azurite)
    azurite.put(queue, [f"m{n}" for n in range(40)])
    assert azurite.peek_count(queue) == 32
    measured = await measure(settings_for(azurite, queue, key, **{"queue-length-strategy": "visibleonly"}))
    assert measured.value == azurite.approximate_count(queue) == 40


async def test_an_empty_queue_reads_zero_and_activation_is_a_strict_bound(
    azurite: Azurite, key: dict[str, str]
) -> None:
    queue = new_queue(azurite)
    empty = await measure(settings_for(azurite, queue, key))
    assert (empty.value, empty.active) == (0.0, False)
    azurite.put(queue, ["a", "b"])
    at_bound = await measure(settings_for(azurite, queue, key, **{"activation-queue-length": "2"}))
    assert (at_bound.value, at_bound.active) == (2.0, False)


async def test_a_missing_queue_is_source_not_found_naming_it(azurite: Azurite, key: dict[str, str]) -> None:
    with pytest.raises(SourceNotFound, match="no queue 'never-made'"):
        await measure(settings_for(azurite, "never-made", key))


async def test_a_wrong_account_key_is_refused_by_azurite_as_broker_auth_failed(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = new_queue(azurite)
    monkeypatch.setenv(KEY_ENV, base64.b64encode(b"not the account key, 32 bytes ..").decode())
    with pytest.raises(BrokerAuthFailed, match="refused our credentials"):
        await measure(settings_for(azurite, queue, {"account-key-env": KEY_ENV}))


async def test_a_sas_token_is_accepted_and_a_tampered_one_refused(
    azurite: Azurite, tmp_path: Path, key: dict[str, str]
) -> None:
    queue = new_queue(azurite)
    azurite.put(queue, ["a", "b", "c"])
    sas = tmp_path / "sas"
    sas.write_text(azurite.account_sas())
    measured = await measure(settings_for(azurite, queue, {"sas-token-file": str(sas)}))
    assert measured.value == azurite.approximate_count(queue) == 3
    sas.write_text(azurite.account_sas().replace("sp=rp", "sp=rwdlacup"))  # rights changed after signing
    with pytest.raises(BrokerAuthFailed, match="refused our credentials"):
        await measure(settings_for(azurite, queue, {"sas-token-file": str(sas)}))


async def test_a_connection_string_and_the_wakers_secret_are_used(
    azurite: Azurite, tmp_path: Path, key: dict[str, str]
) -> None:
    queue = new_queue(azurite)
    azurite.put(queue, ["a", "b", "c", "d"])
    (tmp_path / "connection").write_text(azurite.connection_string)
    files = {"connection-string-file": str(tmp_path / "connection")}
    assert (await measure(settings_for(azurite, queue, files))).value == 4
    secret = Credentials.of("team-a", "azure", {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    assert (await measure(settings_for(azurite, queue, key), credentials=secret)).value == 4
    only_key = Credentials.of("team-a", "azure", {"AZURE_STORAGE_KEY": KEY})
    assert (await measure(settings_for(azurite, queue, key), credentials=only_key)).value == 4
    elsewhere = azurite.connection_string.replace(azurite.endpoint, "http://169.254.169.254/x")
    (tmp_path / "connection").write_text(elsewhere)
    steered = settings_for(azurite, queue, files)
    source = AzureQueueSource(steered)
    with pytest.raises(BrokerAuthFailed, match="QueueEndpoint other than the hints' endpoint"):
        await source.measure(steered, Scope.GROUP)
    assert source.requests == 0  # refused before any connection
    await source.close()
    lacking = Credentials.of("team-a", "azure", {"password": "x"})
    with pytest.raises(BrokerAuthFailed, match="has none of the keys AZURE_STORAGE_CONNECTION_STRING"):
        await measure(settings_for(azurite, queue, key), credentials=lacking)


async def test_a_server_that_is_down_is_broker_unreachable(azurite: Azurite, key: dict[str, str]) -> None:
    closed = f"http://{azurite.host}:{free_port(azurite.host)}/{ACCOUNT}"
    settings = parse_azure_queue_settings(
        "az", {"queue-name": "jobs", "account-name": ACCOUNT, "endpoint": closed, **key}
    )
    with pytest.raises(BrokerUnreachable, match="cannot reach Azure Queue service"):
        await measure(settings)


async def test_a_batch_measures_each_queue_and_a_missing_queue_fails_alone(
    azurite: Azurite, key: dict[str, str]
) -> None:
    queues = [new_queue(azurite) for _ in range(6)]
    for count, queue in enumerate(queues):
        azurite.put(queue, [f"m{n}" for n in range(count)])
    batch = [settings_for(azurite, q, key) for q in queues]
    missing = settings_for(azurite, "not-there", key)
    source = AzureQueueSource(batch[0])
    try:
        found = await source.measure_many([*batch, missing, batch[0]])
    finally:
        await source.close()
    assert source.requests == len(queues) + 1
    for queue, settings in zip(queues, batch, strict=True):
        measured = found[settings]
        assert isinstance(measured, Measurement)
        assert measured.value == azurite.approximate_count(queue)
    failure = found[missing]
    assert isinstance(failure, MeasurementFailure)
    assert "no queue 'not-there'" in failure.error
