"""Our PostgreSQL numbers against psql's, on the rig's real server, and every way a query fails."""

from __future__ import annotations

import pytest

from tests.rig.postgresql import DATABASE, READER, PostgreSQL
from tests.rig.processes import Supervisor
from tidescale.credentials import Credentials, CredentialsUnusable
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound, SourceTimeout
from tidescale.sources.base import Measurement, MeasurementFailure, Scope
from tidescale.sources.postgresql._answer import QueryAnswerInvalid
from tidescale.sources.postgresql._settings import PostgreSQLSettings, parse_postgresql_settings
from tidescale.sources.postgresql._source import PostgreSQLSource

pytestmark = pytest.mark.rig

PASSWORD_ENV = "TIDESCALE_TEST_PG_PASSWORD"
QUEUED = "SELECT count(*) FROM jobs WHERE state = 'queued'"


@pytest.fixture
def reader(postgresql: PostgreSQL, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(PASSWORD_ENV, postgresql.reader_password)
    return {"username": READER, "password-env": PASSWORD_ENV}


@pytest.fixture
def superuser(postgresql: PostgreSQL, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A tenant who gave tidescale a user that can write: the READ ONLY transaction still holds."""
    monkeypatch.setenv(PASSWORD_ENV, postgresql.superuser_password)
    return {"username": "postgres", "password-env": PASSWORD_ENV}


def _settings(postgresql: PostgreSQL, login: dict[str, str], query: str, **fields: str) -> PostgreSQLSettings:
    raw = {
        "host": postgresql.host,
        "port": str(postgresql.port),
        "database": DATABASE,
        "sslmode": "disable",
        "query": query,
        "value": "10",
        **login,
        **{k.replace("_", "-"): v for k, v in fields.items()},
    }
    return parse_postgresql_settings("postgresql", raw)


async def _measure(settings: PostgreSQLSettings, credentials: Credentials | None = None) -> Measurement:
    source = PostgreSQLSource(settings, credentials=credentials)
    try:
        return await source.measure(settings, Scope.GROUP)
    finally:
        await source.close()


def _queue(postgresql: PostgreSQL, queued: int, done: int = 0) -> None:
    fill = "INSERT INTO jobs (state) SELECT %s FROM generate_series(1, %d);"
    postgresql.psql("DELETE FROM jobs;" + fill % ("'queued'", queued) + fill % ("'done'", done))


async def test_the_query_s_number_is_what_psql_answers(
    postgresql: PostgreSQL, reader: dict[str, str]
) -> None:
    _queue(postgresql, queued=23, done=5)
    measured = await _measure(_settings(postgresql, reader, QUEUED, activation_value="22"))
    assert measured.value == int(postgresql.psql(QUEUED)) == 23
    assert (measured.target, measured.active) == (10.0, True)


@pytest.mark.parametrize(
    "query",
    ["SELECT 2.5::numeric", "SELECT 7::smallint", "SELECT 0.25::float8", "SELECT 12::real", "SELECT 3"],
)
async def test_every_numeric_column_type_reads_as_its_number(
    postgresql: PostgreSQL, reader: dict[str, str], query: str
) -> None:
    measured = await _measure(_settings(postgresql, reader, query))
    assert measured.value == float(postgresql.psql(query))


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("SELECT 'many'::text", "of type text, not a number"),
        ("SELECT 1, 2", "answers 2 columns"),
        ("SELECT id FROM jobs", "more than one row"),
        ("SELECT id FROM jobs WHERE false", "no row"),
        ("SELECT NULL::bigint", "NULL"),
        ("SELECT -3", "finite number >= 0"),
        ("SELECT 'NaN'::float8", "finite number >= 0"),
    ],
)
async def test_an_answer_that_is_not_one_non_negative_number_is_refused_by_name(
    postgresql: PostgreSQL, reader: dict[str, str], query: str, words: str
) -> None:
    _queue(postgresql, queued=3)
    with pytest.raises(QueryAnswerInvalid, match=words):
        await _measure(_settings(postgresql, reader, query))


async def test_bad_sql_and_a_missing_table_are_named(postgresql: PostgreSQL, reader: dict[str, str]) -> None:
    with pytest.raises(SourceError, match="PostgresSyntaxError"):
        await _measure(_settings(postgresql, reader, "SELEC count(*) FROM jobs"))
    with pytest.raises(SourceNotFound, match="check the query's table names"):
        await _measure(_settings(postgresql, reader, "SELECT count(*) FROM nowhere"))


async def test_a_query_that_writes_is_refused_by_the_read_only_transaction_and_nothing_changes(
    postgresql: PostgreSQL, superuser: dict[str, str]
) -> None:
    _queue(postgresql, queued=4)
    deleting = "WITH gone AS (DELETE FROM jobs RETURNING 1) SELECT count(*) FROM gone"
    with pytest.raises(SourceError, match="must only read"):
        await _measure(_settings(postgresql, superuser, deleting))
    with pytest.raises(SourceError, match="multiple commands"):
        await _measure(_settings(postgresql, superuser, "SELECT 1; DELETE FROM jobs"))
    assert postgresql.psql("SELECT count(*) FROM jobs") == "4"
    # Two guards, each enough alone: the transaction is READ ONLY, and so is the session's default.
    session = "SELECT (current_setting('default_transaction_read_only') = 'on')::int"
    assert (await _measure(_settings(postgresql, superuser, session))).value == 1


async def test_a_query_longer_than_the_timeout_is_cancelled_as_a_timeout(
    postgresql: PostgreSQL, reader: dict[str, str]
) -> None:
    slow = _settings(postgresql, reader, "SELECT 1 FROM pg_sleep(30)", timeout="1s")
    with pytest.raises(SourceTimeout, match="statement_timeout"):  # the server's own cancel
        await _measure(slow)
    running = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()"
    )
    assert postgresql.psql(running) == "0"


async def test_a_table_the_user_may_not_read_is_an_authorisation_error(
    postgresql: PostgreSQL, reader: dict[str, str]
) -> None:
    postgresql.psql("CREATE TABLE IF NOT EXISTS payroll (amount int)")
    with pytest.raises(BrokerAuthFailed, match="grant the user read access"):
        await _measure(_settings(postgresql, reader, "SELECT count(*) FROM payroll"))


async def test_a_wrong_password_or_a_missing_database_is_named(
    postgresql: PostgreSQL, monkeypatch: pytest.MonkeyPatch, reader: dict[str, str]
) -> None:
    with pytest.raises(SourceNotFound, match="check database"):
        await _measure(_settings(postgresql, reader, "SELECT 1", database="nowhere"))
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    with pytest.raises(BrokerAuthFailed, match="refused the login of user 'reader'"):
        await _measure(_settings(postgresql, reader, "SELECT 1"))


async def test_the_waker_s_password_comes_from_the_secret_and_a_missing_key_is_named(
    postgresql: PostgreSQL,
) -> None:
    _queue(postgresql, queued=6)
    settings = _settings(postgresql, {"username": READER, "credentials-secret": "pg"}, QUEUED)
    secret = Credentials.of("team-a", "pg", {"password": postgresql.reader_password})
    assert (await _measure(settings, secret)).value == 6
    with pytest.raises(CredentialsUnusable, match="has no key 'password'"):
        await _measure(settings, Credentials.of("team-a", "pg", {"username": READER}))


async def test_a_server_down_is_unreachable_and_the_next_measurement_reconnects(
    postgresql: PostgreSQL, reader: dict[str, str], rig_supervisor: Supervisor
) -> None:
    _queue(postgresql, queued=2)
    settings = _settings(postgresql, reader, QUEUED, timeout="3s")
    source = PostgreSQLSource(settings)
    try:
        assert (await source.measure(settings, Scope.GROUP)).value == 2
        postgresql.stop_server()
        try:
            with pytest.raises(BrokerUnreachable, match=f"PostgreSQL at {postgresql.host}:{postgresql.port}"):
                await source.measure(settings, Scope.GROUP)
        finally:
            postgresql.start_again(rig_supervisor)
        assert (await source.measure(settings, Scope.GROUP)).value == 2
    finally:
        await source.close()


async def test_a_batch_runs_every_query_and_a_bad_one_fails_only_itself(
    postgresql: PostgreSQL, reader: dict[str, str]
) -> None:
    _queue(postgresql, queued=8, done=3)
    queries = [QUEUED, "SELECT count(*) FROM jobs WHERE state = 'done'", "SELECT count(*) FROM jobs"]
    good = [_settings(postgresql, reader, q) for q in queries]
    bad = _settings(postgresql, reader, "SELECT 'x'::text")
    source = PostgreSQLSource(good[0])
    try:
        found = await source.measure_many([*good, bad])
    finally:
        await source.close()
    values = [found[s] for s in good]
    assert [v.value for v in values if isinstance(v, Measurement)] == [
        int(postgresql.psql(q)) for q in queries
    ]
    failure = found[bad]
    assert isinstance(failure, MeasurementFailure)
    assert "of type text, not a number" in failure.error  # refused when prepared, before it ran
