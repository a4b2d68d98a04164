"""The Kafka trigger's settings: parsed from hint strings into a frozen, typed object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tidescale._values import (
    parse_bool,
    parse_choice,
    parse_duration,
    parse_int,
    parse_list,
)
from tidescale.errors import HintError
from tidescale.sources._common import (
    DEFAULT_TIMEOUT,
    check_one_secret_source,
    credentials_secret_field,
    parse_timeout,
    secret_env_field,
    secret_file_field,
    timeout_field,
    tls_file_fields,
    tls_key_password_fields,
)
from tidescale.sources._fields import (
    DRAIN_TIME_DOC,
    FieldCollector,
    FieldDoc,
    PartitionRanges,
    parse_drain_time,
    parse_env_name,
    parse_file_path,
    parse_partitions,
    parse_regex,
    parse_secret_name,
)

__all__ = ["KAFKA_FIELDS", "KafkaSettings", "parse_kafka_settings"]

SaslMechanism = Literal["none", "plain", "scram-sha-256", "scram-sha-512"]
OffsetResetPolicy = Literal["latest", "earliest"]
IsolationLevel = Literal["read-uncommitted", "read-committed"]

_SERVER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):(\d{1,5})")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True, kw_only=True, slots=True)
class KafkaSettings:
    """One Kafka trigger. Hashable: it keys the per-trigger state of a shared connection."""

    name: str
    bootstrap_servers: tuple[str, ...]
    consumer_group: str
    topics: tuple[str, ...] = ()
    """Empty: every topic the group has committed offsets for."""
    lag_threshold: int = 10
    activation_lag_threshold: int = 0
    offset_reset_policy: OffsetResetPolicy = "latest"
    allow_idle_consumers: bool = False
    exclude_persistent_lag: bool = False
    persistent_lag_window: float = 15.0
    """Seconds a committed offset must stay put for its lag to count as persistent."""
    isolation_level: IsolationLevel = "read-uncommitted"
    """read-committed: lag is what a read_committed consumer can still read (see _kafka_lag)."""
    scale_to_zero_on_invalid_offset: bool = False
    limit_to_partitions_with_lag: bool = False
    partitions: PartitionRanges | None = None
    """Only these partition numbers (of every named topic), kept as ranges; None: all."""
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_key_password_env: str | None = None
    tls_key_password_file: str | None = None
    sasl: SaslMechanism = "none"
    sasl_username_env: str | None = None
    sasl_password_env: str | None = None
    sasl_password_file: str | None = None
    credentials_secret: str | None = None
    member_client_id_pattern: str | None = None
    """Regex on the group member's client id; None: members are matched by client host == pod IP."""
    drain_time: float | None = None
    """Drain-time target in seconds; None: the threshold alone decides."""
    timeout: float = DEFAULT_TIMEOUT

    @property
    def cluster_key(self) -> tuple[object, ...]:
        """Triggers with equal keys share one connection: same brokers, same identity."""
        return (
            "kafka",
            tuple(sorted(self.bootstrap_servers)),
            self.tls,
            self.tls_ca_file,
            self.tls_cert_file,
            self.tls_key_file,
            self.tls_key_password_env,
            self.tls_key_password_file,
            self.sasl,
            self.sasl_username_env,
            self.sasl_password_env,
            self.sasl_password_file,
        )


def _parse_servers(annotation: str, value: str) -> tuple[str, ...]:
    servers = parse_list(annotation, value)
    for server in servers:
        match = _SERVER.fullmatch(server)
        if match is None or not 1 <= int(match[3]) <= 65535:
            raise HintError(
                annotation, value, 'comma-separated host:port pairs, e.g. "kafka-0:9092,kafka-1:9092"'
            )
    return servers


def _parse_group(annotation: str, value: str) -> str:
    text = value.strip()
    if not text or len(text) > 255 or any(c.isspace() for c in text):
        raise HintError(annotation, value, "a consumer group id (1 to 255 characters, no blanks)")
    return text


def _parse_topics(annotation: str, value: str) -> tuple[str, ...]:
    topics = parse_list(annotation, value)
    for topic in topics:
        if not _TOPIC.fullmatch(topic) or topic in {".", ".."}:
            raise HintError(
                annotation, value, "comma-separated topic names of letters, digits, '.', '_' and '-'"
            )
    return topics


def _parse_positive(annotation: str, value: str) -> int:
    return parse_int(annotation, value, minimum=1, maximum=10**12)


def _parse_non_negative(annotation: str, value: str) -> int:
    return parse_int(annotation, value, minimum=0, maximum=10**12)


def _parse_policy(annotation: str, value: str) -> OffsetResetPolicy:
    return "earliest" if parse_choice(annotation, value, ("latest", "earliest")) == "earliest" else "latest"


def _parse_sasl(annotation: str, value: str) -> SaslMechanism:
    choice = parse_choice(annotation, value, ("none", "plain", "scram-sha-256", "scram-sha-512"))
    mechanisms: dict[str, SaslMechanism] = {
        "none": "none",
        "plain": "plain",
        "scram-sha-256": "scram-sha-256",
        "scram-sha-512": "scram-sha-512",
    }
    return mechanisms[choice]


def _parse_isolation(annotation: str, value: str) -> IsolationLevel:
    choice = parse_choice(annotation, value, ("read-uncommitted", "read-committed"))
    return "read-committed" if choice == "read-committed" else "read-uncommitted"


def _parse_window(annotation: str, value: str) -> float:
    return parse_duration(annotation, value, minimum=1.0, maximum=86400.0)


KAFKA_FIELDS: tuple[FieldDoc, ...] = (
    FieldDoc(
        field="bootstrap-servers",
        type="list of host:port",
        default=None,
        meaning="Brokers to bootstrap from (required).",
        example="kafka-0.kafka:9092,kafka-1.kafka:9092",
    ),
    FieldDoc(
        field="consumer-group",
        type="string",
        default=None,
        meaning="The consumer group whose lag is measured (required).",
        example="orders-workers",
    ),
    FieldDoc(
        field="topic",
        type="list of topic names",
        default=None,
        meaning="Topics to measure; absent: every topic the group has committed offsets for.",
        example="orders,refunds",
    ),
    FieldDoc(
        field="lag-threshold",
        type="whole number > 0",
        default="10",
        meaning="Lag one replica is expected to handle: desired replicas = ceil(total lag / this).",
        example="50",
    ),
    FieldDoc(
        field="activation-lag-threshold",
        type="whole number >= 0",
        default="0",
        meaning="The trigger is active (wakes the workload from zero) when total lag is above this.",
        example="5",
    ),
    FieldDoc(
        field="offset-reset-policy",
        type="latest | earliest",
        default="latest",
        meaning="What the consumers do on a partition with no committed offset. latest: such a partition "
        "counts lag 1; earliest: it counts the messages still retained (log-end minus log-start; "
        "KEDA counts log-end, which includes messages retention already deleted).",
        example="earliest",
    ),
    FieldDoc(
        field="isolation-level",
        type="read-uncommitted | read-committed",
        default="read-uncommitted",
        meaning="read-committed (for transactional producers and exactly-once consumers): lag is what a "
        "read_committed consumer can still read, up to the last stable offset, leaving out transaction "
        "markers and aborted records, so a consumer that has read everything it can see reads 0. Costs "
        "one Fetch per partition leader whose partitions lag by at most 1000 offsets (their tail is "
        "read); KEDA counts up to log-end, markers included.",
        example="read-committed",
    ),
    FieldDoc(
        field="allow-idle-consumers",
        type="bool",
        default="false",
        meaning="Allow more replicas than partitions (the extra ones sit idle).",
        example="true",
    ),
    FieldDoc(
        field="exclude-persistent-lag",
        type="bool",
        default="false",
        meaning="A partition whose committed offset has not moved for persistent-lag-window counts 0 "
        "for scaling (a stuck consumer is not helped by more replicas); activation still sees its lag.",
        example="true",
    ),
    FieldDoc(
        field="persistent-lag-window",
        type="duration",
        default="15s",
        meaning="How long a committed offset must stay put for exclude-persistent-lag to call its lag "
        "persistent. The default is KEDA's effective window: KEDA compares with its previous read, at "
        "most 15 s earlier with its defaults (the HPA's metric queries). Longer than the consumers' "
        "commit interval, or they drop out of the metric between commits.",
        example="1m",
    ),
    FieldDoc(
        field="scale-to-zero-on-invalid-offset",
        type="bool",
        default="false",
        meaning="A partition with no committed offset counts lag 0 under either policy.",
        example="true",
    ),
    FieldDoc(
        field="limit-to-partitions-with-lag",
        type="bool",
        default="false",
        meaning="Cap replicas at the number of partitions with lag rather than all partitions "
        "(not with allow-idle-consumers).",
        example="true",
    ),
    FieldDoc(
        field="partitions",
        type="numbers and ranges",
        default=None,
        meaning="Measure only these partition numbers of each topic; absent: all.",
        example="0,2,10-20",
    ),
    FieldDoc(
        field="tls", type="bool", default="false", meaning="Connect to the brokers over TLS.", example="true"
    ),
    *tls_file_fields(
        peer="the brokers",
        ca_needs="needs tls",
        pair_needs="needs tls and {other}",
        directory="/etc/kafka-tls",
    ),
    *tls_key_password_fields(env_example="KAFKA_KEY_PASSWORD", file_example="/etc/kafka-tls/key-password"),
    FieldDoc(
        field="sasl",
        type="none | plain | scram-sha-256 | scram-sha-512",
        default="none",
        meaning="SASL mechanism. Credentials never go in annotations: see the sasl-* fields.",
        example="scram-sha-512",
    ),
    secret_env_field("sasl-username-env", holding="the SASL username", example="KAFKA_USERNAME"),
    secret_env_field("sasl-password-env", holding="the SASL password", example="KAFKA_PASSWORD"),
    secret_file_field(
        "sasl-password-file",
        holding="the SASL password (e.g. a mounted Secret)",
        example="/etc/kafka-sasl/password",
    ),
    credentials_secret_field(
        keys=("username", "password"),
        example="kafka-credentials",
        note=", which cannot see the pod's env or files",
        tls=True,
    ),
    FieldDoc(
        field="member-client-id-pattern",
        type="regular expression",
        default=None,
        meaning="Which group members are this pod's, by client id (whole match); absent: members whose "
        "client host is the pod's IP.",
        example="orders-worker-.*",
    ),
    DRAIN_TIME_DOC,
    timeout_field(),
)


def parse_kafka_settings(trigger: str, raw: Mapping[str, str]) -> KafkaSettings:
    """``raw`` maps field names (no prefix) to strings; raises HintsInvalid listing every problem."""
    fields = FieldCollector(trigger, raw, (doc.field for doc in KAFKA_FIELDS), kind="kafka")
    settings = KafkaSettings(
        name=trigger,
        bootstrap_servers=fields.require("bootstrap-servers", _parse_servers, ()),
        consumer_group=fields.require("consumer-group", _parse_group, ""),
        topics=fields.get("topic", _parse_topics, ()),
        lag_threshold=fields.get("lag-threshold", _parse_positive, 10),
        activation_lag_threshold=fields.get("activation-lag-threshold", _parse_non_negative, 0),
        offset_reset_policy=fields.get("offset-reset-policy", _parse_policy, "latest"),
        allow_idle_consumers=fields.get("allow-idle-consumers", parse_bool, False),
        exclude_persistent_lag=fields.get("exclude-persistent-lag", parse_bool, False),
        persistent_lag_window=fields.get("persistent-lag-window", _parse_window, 15.0),
        isolation_level=fields.get("isolation-level", _parse_isolation, "read-uncommitted"),
        scale_to_zero_on_invalid_offset=fields.get("scale-to-zero-on-invalid-offset", parse_bool, False),
        limit_to_partitions_with_lag=fields.get("limit-to-partitions-with-lag", parse_bool, False),
        partitions=fields.get("partitions", parse_partitions, None),
        tls=fields.get("tls", parse_bool, False),
        tls_ca_file=fields.get("tls-ca-file", parse_file_path, None),
        tls_cert_file=fields.get("tls-cert-file", parse_file_path, None),
        tls_key_file=fields.get("tls-key-file", parse_file_path, None),
        tls_key_password_env=fields.get("tls-key-password-env", parse_env_name, None),
        tls_key_password_file=fields.get("tls-key-password-file", parse_file_path, None),
        sasl=fields.get("sasl", _parse_sasl, "none"),
        sasl_username_env=fields.get("sasl-username-env", parse_env_name, None),
        sasl_password_env=fields.get("sasl-password-env", parse_env_name, None),
        sasl_password_file=fields.get("sasl-password-file", parse_file_path, None),
        credentials_secret=fields.get("credentials-secret", parse_secret_name, None),
        member_client_id_pattern=fields.get("member-client-id-pattern", parse_regex, None),
        drain_time=fields.get("drain-time", parse_drain_time, None),
        timeout=fields.get("timeout", parse_timeout, DEFAULT_TIMEOUT),
    )
    _check_combinations(fields, settings)
    fields.finish()
    return settings


def _check_combinations(fields: FieldCollector, s: KafkaSettings) -> None:
    if s.limit_to_partitions_with_lag and s.allow_idle_consumers:
        fields.problem(
            "limit-to-partitions-with-lag", '"false" when allow-idle-consumers is "true" (they contradict)'
        )
    for name, value in (("tls-ca-file", s.tls_ca_file), ("tls-cert-file", s.tls_cert_file)):
        if value is not None and not s.tls:
            fields.problem(name, 'to be set only together with tls: "true"')
    if s.tls_key_file is not None and not s.tls:
        fields.problem("tls-key-file", 'to be set only together with tls: "true"')
    for name in ("tls-key-password-env", "tls-key-password-file"):
        if fields.has(name) and s.tls_key_file is None:
            fields.problem(name, "to be set only together with tls-key-file (it decrypts that key)")
    check_one_secret_source(fields, "tls-key-password-env", "tls-key-password-file")
    check_one_secret_source(fields, "sasl-password-env", "sasl-password-file")
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        missing = "tls-key-file" if s.tls_key_file is None else "tls-cert-file"
        fields.problem(missing, "a value: tls-cert-file and tls-key-file go together")
    if s.sasl != "none":
        # credentials-secret is read by the waker only: the agent in the pod measures too, and
        # needs its own sources, or every poll of the agent fails to log in.
        if s.sasl_username_env is None:
            fields.problem(
                "sasl-username-env",
                f"a value when sasl is {s.sasl!r}: the agent in the pod reads the username from it "
                "(credentials-secret serves the waker only)",
            )
        if not (s.sasl_password_env or s.sasl_password_file):
            fields.problem(
                "sasl-password-file",
                f"a value (or sasl-password-env) when sasl is {s.sasl!r}: the agent in the pod reads "
                "the password from it (credentials-secret serves the waker only)",
            )
    elif any(fields.has(f) for f in ("sasl-username-env", "sasl-password-env", "sasl-password-file")):
        fields.problem(
            "sasl", "a mechanism (plain, scram-sha-256 or scram-sha-512) when SASL credentials are given"
        )
