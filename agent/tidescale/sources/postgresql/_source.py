"""PostgreSQL query results: the I/O, over one asyncpg connection per server, database and login.

asyncpg rather than psycopg 3: a first measurement with asyncpg adds 3.7 MiB to the agent, where
importing psycopg (with its binary wheel) alone adds 10.7 MiB (bench/results/source_import.md);
and asyncpg is asyncio-native, with no libpq to install.

Each measurement: BEGIN READ ONLY; the query prepared once per connection (its result columns
checked then, before it ever runs); a cursor fetching two rows at most; COMMIT. The session has
``statement_timeout`` set to the trigger's timeout (the client waits 2 s more) and
``default_transaction_read_only`` on, so a query runs read-only and bounded on the server,
whatever the client does. A failure mid-exchange
(a timeout, a lost connection) drops the connection; the next measurement opens a new one.
A batch (:meth:`PostgreSQLSource.measure_many`, the waker's poll) runs its queries one after the
other on the one connection: about three round trips per trigger plus each query's own time.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from tidescale.credentials import Credentials
from tidescale.errors import BrokerAuthFailed, BrokerUnreachable, SourceError, SourceNotFound, SourceTimeout
from tidescale.sources._secret_read import read_secret
from tidescale.sources.base import Measurement, MeasurementFailure, Scope, TriggerSettings, within_timeout
from tidescale.sources.postgresql._answer import check_columns, number_of, postgresql_measurement
from tidescale.sources.postgresql._settings import PostgreSQLSettings

__all__ = ["PostgreSQLSource"]

CLIENT_GRACE = 2.0
"""Seconds the client waits past the trigger's timeout (the server's statement_timeout) before it
gives up on a measurement: connecting and BEGIN come before the statement's own clock starts."""
_PREPARED_PER_CONNECTION = 64
"""Most prepared statements kept per connection (one per distinct query)."""


class PostgreSQLSource:
    """A connection to one PostgreSQL database as one user; runs any trigger's query there."""

    def __init__(self, settings: PostgreSQLSettings, *, credentials: Credentials | None = None) -> None:
        self._connection_settings = settings
        self._credentials = credentials
        """Given (by the waker): the password (and username); no *-env or *-file is read then."""
        self._connection: Any = None
        self._prepared: OrderedDict[str, Any] = OrderedDict()
        self._lock = asyncio.Lock()
        self._closed = False
        self.queries = 0
        """Queries run so far."""

    @property
    def _where(self) -> str:
        s = self._connection_settings
        return f"PostgreSQL at {s.host}:{s.port} (database {s.database!r})"

    async def measure(self, settings: TriggerSettings, scope: Scope) -> Measurement:
        """Scope does not matter: a query's answer is the same from every pod."""
        s = _postgresql(settings)
        number = await within_timeout(
            self._run(s),
            trigger=s.name,
            seconds=s.timeout + CLIENT_GRACE,
            waiting_for=f"{self._where} for the query of trigger {s.name!r}",
            advice="check the query's plan and the server's load, or raise timeout",
        )
        return postgresql_measurement(number, s, time.monotonic())

    async def measure_many(
        self, settings: Iterable[TriggerSettings]
    ) -> dict[PostgreSQLSettings, Measurement | MeasurementFailure]:
        """Every trigger's query, one after the other on this connection. Never raises a SourceError."""
        results: dict[PostgreSQLSettings, Measurement | MeasurementFailure] = {}
        for s in dict.fromkeys(_postgresql(x) for x in settings):
            try:
                results[s] = await self.measure(s, Scope.GROUP)
            except SourceError as exc:
                results[s] = MeasurementFailure(trigger=s.name, error=str(exc), taken_at=time.monotonic())
        return results

    def forget(self, settings: TriggerSettings) -> None:
        """Nothing is kept per trigger (a prepared statement is per query and bounded in number)."""

    async def close(self) -> None:
        self._closed = True
        await self._drop()

    async def _run(self, settings: PostgreSQLSettings) -> float:
        import asyncpg

        async with self._lock:
            if self._closed:
                raise SourceError("the PostgreSQL source is closed")
            try:
                connection = await self._open()
                async with connection.transaction(readonly=True, isolation="read_committed"):
                    statement = await self._statement(connection, settings.query)
                    cursor = await statement.cursor()
                    rows = await cursor.fetch(2)
                self.queries += 1
                return number_of(rows)
            except SourceError:
                raise
            except asyncpg.QueryCanceledError as exc:  # statement_timeout (an "operator intervention")
                raise _postgres_error(self._where, settings, exc) from exc
            except (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError) as exc:
                await self._drop()
                raise BrokerUnreachable(
                    f"lost the connection to {self._where} ({exc}): check that the server is up"
                ) from exc
            except asyncpg.PostgresError as exc:
                raise _postgres_error(self._where, settings, exc) from exc
            except (OSError, asyncpg.InterfaceError, ConnectionError) as exc:
                await self._drop()
                raise BrokerUnreachable(
                    f"lost the connection to {self._where} ({exc or type(exc).__name__}): check host, port, "
                    "that the server is up, and network policies"
                ) from exc
            except BaseException:
                await self._drop()  # cancelled (a timeout) mid-exchange: the connection's state is unknown
                raise

    async def _statement(self, connection: Any, query: str) -> Any:
        statement = self._prepared.get(query)
        if statement is None:
            statement = await connection.prepare(query)
            check_columns([(a.name, a.type.name) for a in statement.get_attributes()])
            self._prepared[query] = statement
            if len(self._prepared) > _PREPARED_PER_CONNECTION:
                self._prepared.popitem(last=False)
        else:
            self._prepared.move_to_end(query)
        return statement

    async def _open(self) -> Any:
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        import asyncpg

        s = self._connection_settings
        try:
            self._connection = await asyncpg.connect(
                host=s.host,
                port=s.port,
                user=self._user(),
                password=self._password(),
                database=s.database,
                ssl=self._ssl(),
                timeout=s.timeout,
                statement_cache_size=0,  # the source keeps its own prepared statements
                server_settings={
                    # The server cancels a slow query itself (and says so) before the client gives
                    # up (CLIENT_GRACE later), and the connection stays usable.
                    "statement_timeout": str(max(1, int(s.timeout * 1000))),
                    "default_transaction_read_only": "on",
                    "application_name": "tidescale",
                },
            )
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            raise BrokerAuthFailed(
                f"{self._where} refused the login of user {self._user()!r} ({exc}): check username and the "
                "password source (and pg_hba.conf)"
            ) from exc
        except asyncpg.InvalidCatalogNameError as exc:
            raise SourceNotFound(f"{self._where} has no such database ({exc}): check database") from exc
        except ssl.SSLCertVerificationError as exc:
            raise BrokerAuthFailed(
                f"the TLS certificate of {self._where} is not trusted ({exc.verify_message}): check "
                "tls-ca-file"
            ) from exc
        except (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError) as exc:
            raise BrokerUnreachable(f"{self._where} is not accepting connections ({exc})") from exc
        except asyncpg.PostgresError as exc:
            raise SourceError(f"{self._where} refused the connection: {exc}") from exc
        except (OSError, asyncpg.InterfaceError, ConnectionError) as exc:
            raise BrokerUnreachable(
                f"cannot reach {self._where} ({exc or type(exc).__name__}): check host and port, that the "
                "server listens there, and network policies"
            ) from exc
        except TimeoutError as exc:
            raise SourceTimeout(f"{self._where} did not accept a connection within {s.timeout:g}s") from exc
        self._prepared.clear()
        return self._connection

    def _ssl(self) -> Any:
        s = self._connection_settings
        if s.tls_ca_file is None:
            return s.sslmode
        try:
            context = ssl.create_default_context(cafile=s.tls_ca_file)
        except OSError as exc:
            raise BrokerAuthFailed(f"cannot load tls-ca-file for {self._where} ({exc.strerror})") from exc
        context.check_hostname = s.sslmode == "verify-full"
        return context

    def _user(self) -> str:
        if self._credentials is not None:
            return self._credentials.get("username") or self._connection_settings.username
        return self._connection_settings.username

    def _password(self) -> str | None:
        if self._credentials is not None:
            return self._credentials.require("password")
        s = self._connection_settings
        return read_secret(s.password_env, s.password_file)

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._prepared.clear()
        if connection is not None:
            connection.terminate()  # not close(): a dead server must not hold up the next measurement


def _postgresql(settings: TriggerSettings) -> PostgreSQLSettings:
    if not isinstance(settings, PostgreSQLSettings):
        raise TypeError(f"PostgreSQLSource cannot measure {type(settings).__name__}")
    return settings


def _postgres_error(where: str, settings: PostgreSQLSettings, exc: Any) -> SourceError:
    """A server error of the query, by SQLSTATE class, named for the person who wrote the query."""
    import asyncpg

    message = f"{where} failed trigger {settings.name!r}'s query: {type(exc).__name__}: {exc}"
    if isinstance(exc, asyncpg.QueryCanceledError):
        return SourceTimeout(
            f"{message} (statement_timeout is the trigger's timeout, {settings.timeout:g}s): make the query "
            "cheaper, or raise timeout"
        )
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return SourceError(f"{message}: the query must only read (it runs in a READ ONLY transaction)")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return BrokerAuthFailed(f"{message}: grant the user read access to what the query reads")
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
        return SourceNotFound(f"{message}: check the query's table names and the database")
    return SourceError(message)
