"""``tidescale migrate`` on the examples of KEDA's documentation (tests/unit/data/keda, sources in its
README) and on generated ScaledObjects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tidescale._cli_migrate import main, migrate_documents, patched_manifest
from tidescale.hints import parse_hints, validate_hints

DATA = Path(__file__).parent / "data" / "keda"


def migrate_file(name: str, **options: Any) -> Any:
    return migrate_documents(list(yaml.safe_load_all((DATA / name).read_text())), **options)


def notes_of(result: Any) -> list[str]:
    return [str(note) for note in result.notes]


def test_every_example_file_names_its_source_page() -> None:
    for path in sorted(DATA.glob("*.yaml")):
        assert "https://keda.sh/docs/" in path.read_text().splitlines()[1], path.name


def test_the_kafka_example_without_auth_becomes_complete_hints_with_keda_defaults_written_out() -> None:
    result = migrate_file("kafka-no-auth.yaml")
    (migration,) = result.migrations
    assert (migration.namespace, migration.deployment) == ("default", "azure-functions-deployment")
    assert migration.annotations == {
        "tidescale.io/kafka.bootstrap-servers": "localhost:9092",
        "tidescale.io/kafka.consumer-group": "my-group",
        "tidescale.io/kafka.topic": "test-topic",
        "tidescale.io/kafka.lag-threshold": "50",
        "tidescale.io/kafka.offset-reset-policy": "latest",
        "tidescale.io/polling-interval": "30s",
        # KEDA's defaults (minReplicaCount 0, maxReplicaCount 100), not tidescale's (1, 10)
        "tidescale.io/min-replicas": "0",
        "tidescale.io/max-replicas": "100",
    }
    assert result.notes == []
    hints = parse_hints(migration.annotations)
    assert (hints.min_replicas, hints.max_replicas, hints.polling_interval) == (0, 100, 30.0)


def test_the_patch_labels_the_pod_template_and_sets_the_annotations() -> None:
    (migration,) = migrate_file("kafka-no-auth.yaml").migrations
    patch = migration.patch()
    assert patch["spec"]["template"]["metadata"]["labels"] == {"tidescale.io/inject": "true"}
    assert patch["metadata"]["annotations"] == dict(sorted(migration.annotations.items()))


def test_kafka_sasl_and_tls_in_the_scaled_object_carry_over_and_the_credentials_become_a_secret_hint() -> (
    None
):
    result = migrate_file("kafka-sasl-tls-in-scaledobject.yaml")
    (migration,) = result.migrations
    assert migration.annotations["tidescale.io/kafka.sasl"] == "plain"
    assert migration.annotations["tidescale.io/kafka.tls"] == "true"
    assert migration.annotations["tidescale.io/kafka.credentials-secret"] == "keda-kafka-secrets"
    notes = notes_of(result)
    # ca/cert/key are files for the agent: each is named with what to do instead
    for parameter, field in (("ca", "tls-ca-file"), ("cert", "tls-cert-file"), ("key", "tls-key-file")):
        assert any(f"authenticationRef: {parameter}: not carried" in n and field in n for n in notes)
    # the agent's own credentials cannot be derived: the parser's complaint is passed on
    assert any("sasl-username-env" in n for n in notes)


def test_kafka_sasl_and_tls_held_in_a_secret_are_named_as_not_carried() -> None:
    result = migrate_file("kafka-sasl-tls-in-triggerauthentication.yaml")
    (migration,) = result.migrations
    assert "tidescale.io/kafka.sasl" not in migration.annotations
    notes = notes_of(result)
    assert any("authenticationRef: sasl: not carried" in n and "keda-kafka-secrets" in n for n in notes)
    assert any("authenticationRef: tls: not carried" in n for n in notes)


def test_the_rabbitmq_amqp_example_says_the_url_lived_in_a_secret_and_set_completes_it() -> None:
    result = migrate_file("rabbitmq-amqp.yaml")
    (migration,) = result.migrations
    assert migration.annotations["tidescale.io/rabbitmq.queue"] == "testqueue"
    assert migration.annotations["tidescale.io/rabbitmq.mode"] == "queue-length"
    assert migration.annotations["tidescale.io/rabbitmq.value"] == "20"
    notes = notes_of(result)
    assert any("Secret keda-rabbitmq-secret (key host)" in n for n in notes)
    assert any(
        n.startswith("scaledobject default/rabbitmq-scaledobject: tidescale.io/rabbitmq.") for n in notes
    )
    completed = migrate_file("rabbitmq-amqp.yaml", overrides={"rabbitmq.amqp-url": "amqp://rabbitmq:5672"})
    assert validate_hints(completed.migrations[0].annotations) == ()


def test_two_rabbitmq_triggers_become_two_named_triggers_with_their_modes() -> None:
    result = migrate_file(
        "rabbitmq-http-messagerate-and-queuelength.yaml",
        overrides={
            "rabbitmq-0.management-url": "http://rabbitmq:15672",
            "rabbitmq-1.management-url": "http://rabbitmq:15672",
        },
    )
    (migration,) = result.migrations
    annotations = migration.annotations
    assert annotations["tidescale.io/rabbitmq-0.type"] == "rabbitmq"
    assert annotations["tidescale.io/rabbitmq-0.mode"] == "queue-length"
    assert annotations["tidescale.io/rabbitmq-1.mode"] == "message-rate"
    assert annotations["tidescale.io/rabbitmq-1.value"] == "100"
    hints = parse_hints(annotations)
    assert [t.name for t in hints.triggers] == ["rabbitmq-0", "rabbitmq-1"]


def test_use_regex_becomes_a_queue_pattern_with_its_operation() -> None:
    result = migrate_file("rabbitmq-http-regex.yaml", overrides={"rabbitmq.management-url": "http://r:15672"})
    annotations = result.migrations[0].annotations
    assert annotations["tidescale.io/rabbitmq.queue-pattern"] == "^.*incoming$"
    assert annotations["tidescale.io/rabbitmq.operation"] == "max"
    assert "tidescale.io/rabbitmq.queue" not in annotations
    assert validate_hints(annotations) == ()


def test_a_host_url_loses_its_credentials_and_gives_its_vhost() -> None:
    so = scaled_object(
        triggers=[
            {
                "type": "rabbitmq",
                "metadata": {"host": "http://guest:secret@rabbit:15672/api-prefix/orders", "queueName": "q"},
            }
        ]
    )
    result = migrate_documents([so])
    annotations = result.migrations[0].annotations
    assert annotations["tidescale.io/rabbitmq.management-url"] == "http://rabbit:15672/api-prefix"
    assert annotations["tidescale.io/rabbitmq.vhost"] == "orders"
    assert "secret" not in str(annotations)
    assert any("credentials removed" in n for n in notes_of(result))


def scaled_object(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"name": "orders"}, **spec},
    }


KAFKA = {"type": "kafka", "metadata": {"bootstrapServers": "k:9092", "consumerGroup": "g", "topic": "t"}}


def test_fields_without_a_counterpart_are_each_named_with_why() -> None:
    so = scaled_object(
        initialCooldownPeriod=60,
        advanced={"restoreToOriginalReplicaCount": True, "scalingModifiers": {"target": "5"}},
        triggers=[{**KAFKA, "metadata": {**KAFKA["metadata"], "version": "1.0.0", "unsafeSsl": "true"}}],
    )
    notes = notes_of(migrate_documents([so]))
    for field in (
        "spec.initialCooldownPeriod",
        "spec.advanced.restoreToOriginalReplicaCount",
        "spec.advanced.scalingModifiers",
        "spec.triggers[0].metadata.version",
        "spec.triggers[0].metadata.unsafeSsl",
    ):
        matching = [n for n in notes if f": {field}: not carried: " in n]
        assert matching, f"{field} not reported in {notes}"
        assert len(matching[0].split("not carried: ", 1)[1]) > 10  # a reason, not just a word


def test_scaling_modifiers_and_fallback_behavior_carry_over_with_the_formula_renamed_to_our_triggers() -> (
    None
):
    so = scaled_object(
        advanced={
            "scalingModifiers": {
                "formula": "(orderLag + payLag) / 2",
                "target": "50",
                "activationTarget": "5",
                "metricType": "AverageValue",
            }
        },
        fallback={"failureThreshold": 3, "replicas": 6, "behavior": "currentReplicasIfHigher"},
        triggers=[
            {**KAFKA, "name": "orderLag"},
            {**KAFKA, "name": "payLag", "metadata": {**KAFKA["metadata"], "topic": "payments"}},
        ],
    )
    annotations = migrate_documents([so]).migrations[0].annotations
    assert annotations["tidescale.io/scaling-modifiers-formula"] == "(orderlag + paylag) / 2"
    assert annotations["tidescale.io/scaling-modifiers-target"] == "50"
    assert annotations["tidescale.io/scaling-modifiers-activation-target"] == "5"
    assert annotations["tidescale.io/fallback-behavior"] == "currentReplicasIfHigher"
    assert annotations["tidescale.io/fallback-failure-interval"] == "10s"
    assert validate_hints(annotations) == ()


def test_a_trigger_of_another_type_and_a_non_deployment_target_are_refused_by_name() -> None:
    notes = notes_of(migrate_documents([scaled_object(triggers=[{"type": "external", "metadata": {}}])]))
    assert any("'external': tidescale migrates KEDA's" in n for n in notes)
    stateful = scaled_object()
    stateful["spec"]["scaleTargetRef"] = {"kind": "StatefulSet", "name": "db"}
    result = migrate_documents([stateful])
    assert result.migrations == []
    assert any("tidescale scales Deployments only" in n for n in notes_of(result))


def test_hpa_behaviour_becomes_stabilization_policies_and_select() -> None:
    behavior = {
        "scaleUp": {
            "stabilizationWindowSeconds": 30,
            "selectPolicy": "Min",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 50, "periodSeconds": 60},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 120,
            "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}],
        },
    }
    so = scaled_object(advanced={"horizontalPodAutoscalerConfig": {"behavior": behavior}}, triggers=[KAFKA])
    hints = parse_hints(migrate_documents([so]).migrations[0].annotations)
    assert hints.scale_up.stabilization == 30.0
    assert hints.scale_up.select == "min"
    assert [str(p) for p in hints.scale_up.policies] == ["4 pods/15s", "50%/1m"]
    assert hints.scale_down.stabilization == 120.0
    assert [str(p) for p in hints.scale_down.policies] == ["10%/1m"]


def test_keda_pause_annotations_become_tidescale_pause_hints() -> None:
    so = scaled_object(triggers=[KAFKA])
    so["metadata"]["annotations"] = {"autoscaling.keda.sh/paused-replicas": "2"}
    hints = parse_hints(migrate_documents([so]).migrations[0].annotations)
    assert hints.paused
    assert hints.paused_replicas == 2


def test_dry_run_adds_the_dry_run_hint() -> None:
    result = migrate_documents([scaled_object(triggers=[KAFKA])], dry_run=True)
    assert parse_hints(result.migrations[0].annotations).dry_run


@settings(max_examples=150, deadline=None)
@given(
    polling=st.integers(min_value=1, max_value=3600),
    cooldown=st.integers(min_value=0, max_value=86400),
    low=st.integers(min_value=0, max_value=50),
    span=st.integers(min_value=0, max_value=50),
    lag=st.integers(min_value=1, max_value=10**6),
)
def test_any_plain_kafka_scaled_object_migrates_to_hints_the_agent_parses_with_the_same_numbers(
    polling: int, cooldown: int, low: int, span: int, lag: int
) -> None:
    so = scaled_object(
        pollingInterval=polling,
        cooldownPeriod=cooldown,
        minReplicaCount=low,
        maxReplicaCount=max(1, low + span),
        triggers=[{**KAFKA, "metadata": {**KAFKA["metadata"], "lagThreshold": str(lag)}}],
    )
    result = migrate_documents([so])
    hints = parse_hints(result.migrations[0].annotations)
    assert (hints.polling_interval, hints.cooldown) == (float(polling), float(cooldown))
    assert (hints.min_replicas, hints.max_replicas) == (low, max(1, low + span))
    assert [n for n in notes_of(result) if "not carried" in n] == []


def test_manifest_mode_patches_the_deployment_in_the_same_file_and_drops_the_keda_objects() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"template": {"metadata": {"labels": {"app": "orders"}}}},
    }
    auth = {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication", "metadata": {"name": "a"}}
    result = migrate_documents([deployment, scaled_object(triggers=[KAFKA]), auth])
    manifest, missing = patched_manifest(result)
    assert missing == []
    (patched,) = manifest
    assert patched["spec"]["template"]["metadata"]["labels"] == {
        "app": "orders",
        "tidescale.io/inject": "true",
    }
    assert patched["metadata"]["annotations"]["tidescale.io/kafka.topic"] == "t"
    assert deployment["metadata"].get("annotations") is None  # the input is not changed


def test_the_command_exits_0_when_all_is_carried_1_with_notes_and_2_on_unreadable_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(DATA / "kafka-no-auth.yaml")]) == 0
    out = capsys.readouterr().out
    assert "kubectl patch deployment azure-functions-deployment -n default --type merge" in out
    assert yaml.safe_load(out)["metadata"]["annotations"]["tidescale.io/kafka.topic"] == "test-topic"
    assert main([str(DATA / "rabbitmq-amqp.yaml")]) == 1
    assert "note: scaledobject default/rabbitmq-scaledobject" in capsys.readouterr().err
    assert main([str(DATA / "rabbitmq-amqp.yaml"), "--set", "rabbitmq.amqp-url=amqp://r:5672"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    assert main([str(bad)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert main([str(DATA / "kafka-no-auth.yaml"), "--set", "nonsense"]) == 2


def test_value_metric_type_carries_when_every_trigger_reads_value_and_is_named_when_mixed() -> None:
    value = {**KAFKA, "metricType": "Value"}
    same = migrate_documents([scaled_object(triggers=[value])]).migrations[0].annotations
    assert same["tidescale.io/metric-type"] == "Value"
    mixed = migrate_documents(
        [
            scaled_object(
                triggers=[value, {**KAFKA, "name": "other", "metadata": {**KAFKA["metadata"], "topic": "u"}}]
            )
        ]
    )
    assert "tidescale.io/metric-type" not in mixed.migrations[0].annotations
    assert any("spec.triggers[*].metricType: not carried" in n for n in notes_of(mixed))


@pytest.mark.parametrize(
    "trigger",
    [
        {"type": "rabbitmq", "metadata": {"host": "amqps://rabbit:5671", "queueName": "q"}},
        {**KAFKA, "metadata": {**KAFKA["metadata"], "tls": "enable"}},
    ],
)
def test_tls_material_of_a_trigger_authentication_names_the_agents_file_and_the_wakers_key(
    trigger: dict[str, Any],
) -> None:
    refs = [{"parameter": p, "name": "broker-tls", "key": p} for p in ("ca", "cert", "key", "keyPassword")]
    auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "tls-auth", "namespace": "shop"},
        "spec": {"secretTargetRef": refs},
    }
    so = scaled_object(triggers=[{**trigger, "authenticationRef": {"name": "tls-auth"}}])
    notes = notes_of(migrate_documents([auth, so]))
    expected = {
        "ca": ("tls-ca-file", "ca.crt"),
        "cert": ("tls-cert-file", "tls.crt"),
        "key": ("tls-key-file", "tls.key"),
        "keyPassword": ("tls-key-password-file", "tls.key-password"),
    }
    for parameter, (field, key) in expected.items():
        (note,) = [n for n in notes if f"authenticationRef: {parameter}: not carried" in n]
        assert f"{trigger['type']}.{field}" in note
        assert f"key {key} of the Secret named by credentials-secret" in note


def _keda_object(*triggers: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "worker", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"name": "worker"}, "triggers": list(triggers)},
    }


def _hints_of(*triggers: dict[str, Any]) -> dict[str, str]:
    result = migrate_documents([_keda_object(*triggers)])
    annotations = dict(result.migrations[0].annotations)
    assert validate_hints(annotations) == ()
    return annotations


def test_a_keda_redis_list_and_a_redis_stream_with_lag_become_valid_redis_triggers() -> None:
    hints = _hints_of(
        {
            "type": "redis",
            "metadata": {"address": "redis:6379", "listName": "jobs", "activationListLength": "2"},
        },
        {
            "type": "redis-streams",
            "metadata": {
                "host": "redis",
                "port": "6380",
                "stream": "s",
                "consumerGroup": "g",
                "lagCount": "7",
            },
        },
    )
    assert hints["tidescale.io/redis-0.list"] == "jobs"
    assert hints["tidescale.io/redis-0.value"] == "5"
    assert hints["tidescale.io/redis-0.activation-value"] == "2"
    assert hints["tidescale.io/redis-1.address"] == "redis:6380"
    assert (hints["tidescale.io/redis-1.stream-metric"], hints["tidescale.io/redis-1.value"]) == ("lag", "7")


def test_a_keda_postgresql_trigger_keeps_its_query_and_refuses_a_connection_string() -> None:
    metadata = {
        "host": "pg",
        "port": "5432",
        "dbName": "orders",
        "userName": "reader",
        "sslmode": "require",
        "query": "SELECT count(*) FROM jobs",
        "targetQueryValue": "10",
        "passwordFromEnv": "PG_PASSWORD",
    }
    hints = _hints_of({"type": "postgresql", "metadata": metadata})
    assert hints["tidescale.io/postgresql.query"] == "SELECT count(*) FROM jobs"
    assert hints["tidescale.io/postgresql.password-env"] == "PG_PASSWORD"
    result = migrate_documents([_keda_object({"type": "postgresql", "metadata": {"connectionFromEnv": "X"}})])
    assert any("connection string carries the password" in note for note in notes_of(result))


def test_a_keda_cron_trigger_carries_every_field() -> None:
    metadata = {
        "start": "0 8 * * *",
        "end": "0 18 * * *",
        "timezone": "Europe/Berlin",
        "desiredReplicas": "4",
    }
    hints = _hints_of({"type": "cron", "metadata": metadata})
    assert hints["tidescale.io/cron.desired-replicas"] == "4"
    assert hints["tidescale.io/cron.timezone"] == "Europe/Berlin"


def test_a_prometheus_trigger_carries_every_field_and_the_bearer_secret_becomes_credentials_secret() -> None:
    auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "prom-auth", "namespace": "shop"},
        "spec": {"secretTargetRef": [{"parameter": "bearerToken", "name": "prom-secret", "key": "token"}]},
    }
    trigger = {
        "type": "prometheus",
        "authenticationRef": {"name": "prom-auth"},
        "metadata": {
            "serverAddress": "http://prometheus.monitoring:9090",
            "query": "sum(rate(http_requests_total[2m]))",
            "threshold": "100",
            "activationThreshold": "5",
            "ignoreNullValues": "false",
            "customHeaders": "X-Client-Id=cid",
            "cortexOrgID": "team-a",
            "metricName": "http_requests_total",
            "authModes": "bearer",
            "timeout": "2000",
            "unsafeSsl": "true",
        },
    }
    result = migrate_documents([scaled_object(triggers=[trigger]), auth])
    annotations = result.migrations[0].annotations
    assert {k: v for k, v in annotations.items() if k.startswith("tidescale.io/prometheus.")} == {
        "tidescale.io/prometheus.server-address": "http://prometheus.monitoring:9090",
        "tidescale.io/prometheus.query": "sum(rate(http_requests_total[2m]))",
        "tidescale.io/prometheus.threshold": "100",
        "tidescale.io/prometheus.activation-threshold": "5",
        "tidescale.io/prometheus.ignore-null-values": "false",
        "tidescale.io/prometheus.custom-headers": "X-Client-Id=cid,X-Scope-OrgID=team-a",
        "tidescale.io/prometheus.auth-mode": "bearer",
        "tidescale.io/prometheus.credentials-secret": "prom-secret",
        "tidescale.io/prometheus.timeout": "2000ms",
    }
    notes = notes_of(result)
    assert any("unsafeSsl" in n and "not supported" in n for n in notes)
    assert any("bearer-token-env or bearer-token-file" in n for n in notes)
    # With the agent's token source added (migrate --set), the hints are valid.
    assert validate_hints({**annotations, "tidescale.io/prometheus.bearer-token-env": "TOKEN"}) == ()


def test_a_nats_jetstream_trigger_carries_every_field_and_prefers_the_account_id() -> None:
    trigger = {
        "type": "nats-jetstream",
        "metadata": {
            "natsServerMonitoringEndpoint": "nats.nats.svc.cluster.local:8222",
            "account": "ORDERS",
            "accountID": "ACSJ3PUBLICKEY",
            "stream": "mystream",
            "consumer": "pull_consumer",
            "lagThreshold": "10",
            "activationLagThreshold": "15",
            "useHttps": "false",
        },
    }
    result = migrate_documents([scaled_object(triggers=[trigger])])
    annotations = result.migrations[0].annotations
    assert {k: v for k, v in annotations.items() if k.startswith("tidescale.io/nats-jetstream.")} == {
        "tidescale.io/nats-jetstream.monitoring-endpoint": "nats.nats.svc.cluster.local:8222",
        "tidescale.io/nats-jetstream.account": "ACSJ3PUBLICKEY",
        "tidescale.io/nats-jetstream.stream": "mystream",
        "tidescale.io/nats-jetstream.consumer": "pull_consumer",
        "tidescale.io/nats-jetstream.lag-threshold": "10",
        "tidescale.io/nats-jetstream.activation-lag-threshold": "15",
        "tidescale.io/nats-jetstream.use-https": "false",
    }
    assert [n for n in notes_of(result) if "metadata" in n or "authenticationRef" in n] == []
    assert validate_hints(annotations) == ()


def trigger_authentication(name: str, targets: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"secretTargetRef": targets},
    }


def test_an_aws_sqs_trigger_carries_its_fields_and_its_key_secret_becomes_credentials_secret() -> None:
    sqs = {
        "type": "aws-sqs-queue",
        "authenticationRef": {"name": "aws"},
        "metadata": {
            "queueURL": "https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
            "queueLength": "10",
            "activationQueueLength": "1",
            "awsRegion": "eu-west-1",
            "scaleOnDelayed": "true",
            "identityOwner": "operator",
        },
    }
    auth = trigger_authentication(
        "aws",
        [
            {"parameter": "awsAccessKeyID", "name": "sqs", "key": "AWS_ACCESS_KEY_ID"},
            {"parameter": "awsSecretAccessKey", "name": "sqs", "key": "AWS_SECRET_ACCESS_KEY"},
        ],
    )
    result = migrate_documents([scaled_object(triggers=[sqs]), auth])
    (migration,) = result.migrations
    annotations = migration.annotations
    assert annotations["tidescale.io/aws-sqs.queue-url"] == sqs["metadata"]["queueURL"]
    assert annotations["tidescale.io/aws-sqs.queue-length"] == "10"
    assert annotations["tidescale.io/aws-sqs.activation-queue-length"] == "1"
    assert annotations["tidescale.io/aws-sqs.scale-on-delayed"] == "true"
    assert annotations["tidescale.io/aws-sqs.credentials-secret"] == "sqs"
    notes = notes_of(result)
    assert any("identityOwner" in n and "no operator identity" in n for n in notes)
    assert any("the agent needs an access key" in n for n in notes)
    completed = {
        **annotations,
        "tidescale.io/aws-sqs.access-key-id-env": "AWS_ACCESS_KEY_ID",
        "tidescale.io/aws-sqs.secret-access-key-env": "AWS_SECRET_ACCESS_KEY",
    }
    assert validate_hints(completed) == ()


def test_an_azure_queue_trigger_carries_its_fields_and_says_what_to_add() -> None:
    queue = {
        "type": "azure-queue",
        "metadata": {
            "queueName": "orders",
            "queueLength": "8",
            "queueLengthStrategy": "visibleonly",
            "connectionFromEnv": "STORAGE_CONNECTION",
            "cloud": "AzureChinaCloud",
        },
    }
    result = migrate_documents([scaled_object(triggers=[queue])])
    (migration,) = result.migrations
    annotations = migration.annotations
    assert annotations["tidescale.io/azure-queue.queue-length-strategy"] == "visible-only"
    assert annotations["tidescale.io/azure-queue.connection-string-env"] == "STORAGE_CONNECTION"
    assert any("account-name to the connection string's AccountName" in n for n in notes_of(result))
    completed = {**annotations, "tidescale.io/azure-queue.account-name": "ordersstore"}
    assert validate_hints(completed) == ()
    settings = parse_hints(completed).triggers[0]
    assert settings.endpoint == "https://ordersstore.queue.core.chinacloudapi.cn"  # type: ignore[attr-defined]
