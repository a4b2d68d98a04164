"""``tidescale migrate FILE|-``: KEDA ScaledObjects (and their TriggerAuthentications) -> tidescale hints.

Reads YAML (several documents, or a ``List``); for every ScaledObject prints the merge
patch of its Deployment (annotations and the pod-template inject label), ready for
``kubectl patch --type merge``. With ``--manifest`` it prints the input back instead,
with each Deployment that a ScaledObject targets patched in place and the
ScaledObjects and TriggerAuthentications left out. Every field that cannot be carried
over is named, with why, on standard error; the hints produced are checked with the
same parser the agent uses, and anything still missing (a URL that lived in a Secret)
is listed there too.

Exit status: 0 when everything was carried, 1 when something was not (read the
notes), 2 when the input cannot be read. The mapping is the one in docs/keda-mapping.md.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from tidescale.hints import PREFIX, validate_hints

__all__ = ["Migration", "Note", "main", "migrate_documents"]

INJECT_LABEL = "tidescale.io/inject"
_TRIGGER_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

EXAMPLES = """\
examples:
  # print the Deployment patch for each ScaledObject of a file
  tidescale migrate keda/orders-scaledobject.yaml

  # apply it in dry-run first: tidescale decides and reports (DryRun Events), KEDA still scales
  tidescale migrate --dry-run so.yaml > patch.yaml
  kubectl patch deployment orders -n shop --type merge --patch-file patch.yaml

  # from the cluster: the live ScaledObjects and TriggerAuthentications of a namespace
  kubectl get scaledobjects,triggerauthentications -n shop -o yaml | tidescale migrate -

  # a URL that KEDA read from a Secret: give it (without credentials)
  tidescale migrate rabbitmq-so.yaml --set rabbitmq.management-url=http://rabbitmq.shop:15672

  # rewrite a manifest: Deployments patched, ScaledObjects and TriggerAuthentications dropped
  tidescale migrate --manifest app.yaml > app-tidescale.yaml
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class Note:
    """One thing a person has to know: a KEDA field not carried over, or a hint still missing."""

    where: str
    """The KEDA object, ``scaledobject shop/orders``."""
    field: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.why}"


@dataclass(kw_only=True, slots=True)
class Migration:
    """What one ScaledObject becomes: the Deployment it targets and its annotations."""

    namespace: str | None
    deployment: str
    source: str
    annotations: dict[str, str] = field(default_factory=dict)
    paused: bool = False

    def patch(self) -> dict[str, Any]:
        """The JSON merge patch of the Deployment."""
        return {
            "metadata": {"annotations": dict(sorted(self.annotations.items()))},
            "spec": {"template": {"metadata": {"labels": {INJECT_LABEL: "true"}}}},
        }


@dataclass(kw_only=True, slots=True)
class MigrateResult:
    migrations: list[Migration] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    others: list[Any] = field(default_factory=list)
    """The input documents that are neither ScaledObjects nor TriggerAuthentications, in order."""


# ---------------------------------------------------------------- reading


def _documents(text: str) -> Iterator[Any]:
    import yaml  # the CLI's own dependency; never imported by the in-cluster roles

    for document in yaml.safe_load_all(text):
        if isinstance(document, dict) and document.get("kind") == "List":
            yield from document.get("items") or []
        elif document is not None:
            yield document


def _kind(document: Any) -> str:
    return str(document.get("kind", "")) if isinstance(document, dict) else ""


def _is_keda(document: Any, kind: str) -> bool:
    return _kind(document) == kind and str(document.get("apiVersion", "")).startswith("keda.sh/")


def _meta(document: Mapping[str, Any]) -> tuple[str | None, str]:
    metadata = document.get("metadata") or {}
    namespace = metadata.get("namespace")
    return (str(namespace) if namespace else None), str(metadata.get("name") or "?")


# ---------------------------------------------------------------- the mapping


def _seconds(value: Any) -> str | None:
    """KEDA's whole seconds as a tidescale duration; None when it is not a whole number."""
    text = str(value).strip()
    return f"{int(text)}s" if text.isdigit() else None


def _boolean(value: Any) -> str:
    return "true" if str(value).strip().lower() in {"true", "1", "yes", "enable", "enabled"} else "false"


class _Builder:
    """Collects one ScaledObject's annotations and notes."""

    def __init__(self, where: str, notes: list[Note]) -> None:
        self.where = where
        self.notes = notes
        self.annotations: dict[str, str] = {}

    def set(self, name: str, value: str) -> None:
        self.annotations[PREFIX + name] = value

    def drop(self, keda_field: str, why: str) -> None:
        self.notes.append(Note(where=self.where, field=keda_field, why=f"not carried: {why}"))

    def tell(self, keda_field: str, what: str) -> None:
        self.notes.append(Note(where=self.where, field=keda_field, why=what))

    def duration(self, name: str, keda_field: str, value: Any) -> None:
        text = _seconds(value)
        if text is None:
            self.drop(keda_field, f"{value!r} is not a whole number of seconds")
        else:
            self.set(name, text)


def _scaled_object(
    document: Mapping[str, Any],
    auths: Mapping[tuple[str, str | None, str], Mapping[str, Any]],
    notes: list[Note],
) -> Migration | None:
    namespace, name = _meta(document)
    where = f"scaledobject {namespace + '/' if namespace else ''}{name}"
    build = _Builder(where, notes)
    spec = document.get("spec") or {}
    target = spec.get("scaleTargetRef") or {}
    kind = str(target.get("kind") or "Deployment")
    if kind != "Deployment" or str(target.get("apiVersion") or "apps/v1") != "apps/v1":
        build.drop(
            "spec.scaleTargetRef",
            f"the target is a {kind}: tidescale scales Deployments only (its agent runs in their pods)",
        )
        return None
    if not target.get("name"):
        build.drop("spec.scaleTargetRef.name", "missing: which Deployment to annotate")
        return None
    if target.get("envSourceContainerName"):
        build.drop(
            "spec.scaleTargetRef.envSourceContainerName",
            "the agent reads *-env fields from its own container's environment",
        )
    migration = Migration(namespace=namespace, deployment=str(target["name"]), source=where)

    if "pollingInterval" in spec:
        build.duration("polling-interval", "spec.pollingInterval", spec["pollingInterval"])
    else:
        build.tell(
            "spec.pollingInterval",
            "KEDA polled every 30s by default; tidescale polls every 1s (set tidescale.io/polling-interval "
            "to keep 30s)",
        )
    if "cooldownPeriod" in spec:
        build.duration("cooldown", "spec.cooldownPeriod", spec["cooldownPeriod"])
    if "initialCooldownPeriod" in spec:
        build.drop(
            "spec.initialCooldownPeriod",
            "a new leader counts its own start as activity, so the cooldown always runs from then",
        )
    # KEDA's defaults differ from tidescale's: write them out so the behaviour stays the same.
    build.set("min-replicas", str(spec.get("minReplicaCount", 0)))
    build.set("max-replicas", str(spec.get("maxReplicaCount", 100)))
    if "idleReplicaCount" in spec:
        if str(spec["idleReplicaCount"]) == "0":
            build.set("min-replicas", "0")
            build.tell(
                "spec.idleReplicaCount", "0 becomes tidescale.io/min-replicas 0 (the waker keeps it at zero)"
            )
        else:
            build.drop("spec.idleReplicaCount", "only 0 has a meaning here: min-replicas 0")
    triggers = spec.get("triggers") or []
    names = _trigger_names(triggers)
    _metric_type(triggers, build)
    _fallback(spec.get("fallback"), build)
    _advanced(spec.get("advanced"), _formula_renames(triggers, names), build)
    _paused(document, build, migration)

    if not triggers:
        build.tell("spec.triggers", "none: the Deployment will be labelled but nothing will scale it")
    for index, (trigger, trigger_name) in enumerate(zip(triggers, names, strict=True)):
        _trigger(trigger, trigger_name, f"spec.triggers[{index}]", namespace, auths, build)
    migration.annotations = build.annotations
    return migration


def _fallback(fallback: Any, build: _Builder) -> None:
    if not isinstance(fallback, dict):
        return
    if "failureThreshold" in fallback:
        build.set("fallback-failure-threshold", str(fallback["failureThreshold"]))
    if "replicas" in fallback:
        build.set("fallback-replicas", str(fallback["replicas"]))
    behavior = str(fallback.get("behavior") or "static")
    if behavior != "static":
        build.set("fallback-behavior", behavior)
    # KEDA counts one failure per HPA metric request (15 s) and per its own poll (30 s), tidescale
    # one per decision (1 s): this keeps the wall-clock time before the fallback the same.
    build.set("fallback-failure-interval", "10s")


def _advanced(advanced: Any, renames: Mapping[str, str], build: _Builder) -> None:
    if not isinstance(advanced, dict):
        return
    if advanced.get("restoreToOriginalReplicaCount"):
        build.drop(
            "spec.advanced.restoreToOriginalReplicaCount",
            "removing the annotations leaves the replica count where it is",
        )
    if advanced.get("scalingModifiers"):
        _scaling_modifiers(advanced["scalingModifiers"], renames, build)
    hpa = advanced.get("horizontalPodAutoscalerConfig") or {}
    if hpa.get("name"):
        build.drop("spec.advanced.horizontalPodAutoscalerConfig.name", "no HPA is created")
    behavior = hpa.get("behavior") or {}
    for direction, keda in (("up", "scaleUp"), ("down", "scaleDown")):
        rules = behavior.get(keda)
        if not isinstance(rules, dict):
            continue
        where = f"spec.advanced.horizontalPodAutoscalerConfig.behavior.{keda}"
        if "stabilizationWindowSeconds" in rules:
            build.duration(
                f"scale-{direction}-stabilization",
                f"{where}.stabilizationWindowSeconds",
                rules["stabilizationWindowSeconds"],
            )
        if rules.get("selectPolicy"):
            build.set(f"scale-{direction}-select", str(rules["selectPolicy"]).lower())
        policies = []
        for policy in rules.get("policies") or []:
            kind, value, period = (
                policy.get("type"),
                policy.get("value"),
                _seconds(policy.get("periodSeconds")),
            )
            if kind not in ("Pods", "Percent") or period is None:
                build.drop(
                    f"{where}.policies", f"{policy!r} is not a Pods or Percent policy with periodSeconds"
                )
                continue
            policies.append(f"{value}%/{period}" if kind == "Percent" else f"{value} pods/{period}")
        if policies:
            build.set(f"scale-{direction}-policies", ", ".join(policies))


def _paused(document: Mapping[str, Any], build: _Builder, migration: Migration) -> None:
    annotations = (document.get("metadata") or {}).get("annotations") or {}
    if str(annotations.get("autoscaling.keda.sh/paused", "")).lower() == "true":
        build.set("paused", "true")
        migration.paused = True
    if "autoscaling.keda.sh/paused-replicas" in annotations:
        build.set("paused-replicas", str(annotations["autoscaling.keda.sh/paused-replicas"]))
        migration.paused = True


def _scaling_modifiers(modifiers: Any, renames: Mapping[str, str], build: _Builder) -> None:
    """KEDA's formula over trigger names, rewritten to tidescale's names (a dash is ``_`` there)."""
    where = "spec.advanced.scalingModifiers"
    if not isinstance(modifiers, dict) or not modifiers.get("formula"):
        build.drop(where, "a scalingModifiers without a formula has nothing to carry")
        return

    def rename(word: re.Match[str]) -> str:
        return renames.get(word.group(0), word.group(0))

    build.set("scaling-modifiers-formula", _IDENTIFIER.sub(rename, str(modifiers["formula"])))
    for keda, hint in (
        ("target", "scaling-modifiers-target"),
        ("activationTarget", "scaling-modifiers-activation-target"),
        ("metricType", "scaling-modifiers-metric-type"),
    ):
        if keda in modifiers:
            build.set(hint, str(modifiers[keda]))


def _metric_type(triggers: Sequence[Any], build: _Builder) -> None:
    """tidescale's metric-type is one for the whole Deployment: Value when every trigger reads Value."""
    kinds = [str(t.get("metricType") or "AverageValue") for t in triggers if isinstance(t, dict)]
    if kinds and all(k == "Value" for k in kinds):
        build.set("metric-type", "Value")
    elif "Value" in kinds:
        build.drop(
            "spec.triggers[*].metricType",
            "Value on some triggers only: tidescale's metric-type applies to every trigger of a "
            "Deployment (AverageValue kept)",
        )


def _formula_renames(triggers: Sequence[Any], names: Sequence[str]) -> dict[str, str]:
    """KEDA trigger name -> the identifier the same trigger has in a tidescale formula."""
    renames = {}
    for trigger, name in zip(triggers, names, strict=True):
        given = trigger.get("name") if isinstance(trigger, dict) else None
        if isinstance(given, str) and given:
            renames[given] = name.replace("-", "_")
    return renames


def _trigger_names(triggers: Sequence[Any]) -> list[str]:
    """The trigger's own name when it is a DNS label, else its type when that is unique, else type-N."""
    types = [_source_type(t) or "trigger" for t in triggers]
    names = []
    for index, (trigger, kind) in enumerate(zip(triggers, types, strict=True)):
        given = str((trigger or {}).get("name") or "").lower() if isinstance(trigger, dict) else ""
        if given and _TRIGGER_NAME.fullmatch(given) and len(given) <= 63:
            names.append(given)
        elif types.count(kind) == 1:
            names.append(kind)
        else:
            names.append(f"{kind}-{index}")
    return names


_KEDA_TYPES: dict[str, str] = {
    "kafka": "kafka",
    "apache-kafka": "kafka",
    "rabbitmq": "rabbitmq",
    "redis": "redis",
    "redis-streams": "redis",
    "postgresql": "postgresql",
    "cron": "cron",
    "prometheus": "prometheus",
    "nats-jetstream": "nats-jetstream",
    "aws-sqs-queue": "aws-sqs",
    "azure-queue": "azure-queue",
}
"""KEDA trigger type -> tidescale trigger type."""


def _source_type(trigger: Any) -> str | None:
    kind = str(trigger.get("type", "")) if isinstance(trigger, dict) else ""
    return _KEDA_TYPES.get(kind)


def _trigger(
    trigger: Any,
    name: str,
    where: str,
    namespace: str | None,
    auths: Mapping[tuple[str, str | None, str], Mapping[str, Any]],
    build: _Builder,
) -> None:
    if not isinstance(trigger, dict):
        build.drop(where, "not a mapping")
        return
    kind = _source_type(trigger)
    if kind is None:
        known = ", ".join(sorted(_KEDA_TYPES))
        build.drop(f"{where}.type", f"{trigger.get('type')!r}: tidescale migrates KEDA's {known} triggers")
        return
    if trigger.get("type") == "apache-kafka":
        build.tell(f"{where}.type", "apache-kafka (KEDA's experimental scaler) becomes a kafka trigger")
    field_prefix = f"{name}."
    if name != kind:
        build.set(f"{name}.type", kind)
    metric_type = str(trigger.get("metricType") or "AverageValue")
    if metric_type not in ("AverageValue", "Value"):
        build.drop(f"{where}.metricType", f"{metric_type}: tidescale reads AverageValue or Value only")
    if trigger.get("useCachedMetrics"):
        build.drop(f"{where}.useCachedMetrics", "the leader measures once per interval, nothing to cache")
    metadata = {str(k): v for k, v in (trigger.get("metadata") or {}).items()}
    auth = _auth_parameters(
        trigger.get("authenticationRef"), namespace, auths, f"{where}.authenticationRef", build
    )
    if kind == "kafka":
        _kafka(metadata, auth, field_prefix, where, build)
    elif kind == "aws-sqs":
        _aws_sqs(metadata, auth, field_prefix, where, build)
    elif kind == "azure-queue":
        _azure_queue(metadata, auth, field_prefix, where, build)
    elif kind == "prometheus":
        _prometheus(metadata, auth, field_prefix, where, build)
    elif kind == "nats-jetstream":
        _nats_jetstream(metadata, auth, field_prefix, where, build)
    elif kind == "rabbitmq":
        _rabbitmq(metadata, auth, field_prefix, where, build)
    elif kind == "redis":
        _redis(metadata, auth, field_prefix, where, build, streams=trigger.get("type") == "redis-streams")
    elif kind == "postgresql":
        _postgresql(metadata, auth, field_prefix, where, build)
    else:
        _cron(metadata, field_prefix, where, build)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Param:
    """One TriggerAuthentication parameter: where its value lives."""

    secret: str | None = None
    key: str | None = None
    env: str | None = None


def _auth_parameters(
    ref: Any,
    namespace: str | None,
    auths: Mapping[tuple[str, str | None, str], Mapping[str, Any]],
    where: str,
    build: _Builder,
) -> dict[str, _Param]:
    if not isinstance(ref, dict) or not ref.get("name"):
        return {}
    kind = str(ref.get("kind") or "TriggerAuthentication")
    scope = None if kind == "ClusterTriggerAuthentication" else namespace
    auth = auths.get((kind, scope, str(ref["name"])))
    if auth is None and scope is None:
        auth = next((a for (k, _, n), a in auths.items() if k == kind and n == ref["name"]), None)
    if auth is None:
        build.drop(
            where,
            f"{kind} {ref['name']} is not in the input: give it too "
            "(kubectl get triggerauthentications -o yaml), or set the credential fields by hand",
        )
        return {}
    spec = auth.get("spec") or {}
    params: dict[str, _Param] = {}
    for item in spec.get("secretTargetRef") or []:
        params[str(item.get("parameter"))] = _Param(secret=str(item.get("name")), key=str(item.get("key")))
    for item in spec.get("env") or []:
        params[str(item.get("parameter"))] = _Param(env=str(item.get("name")))
    for other in sorted(set(spec) - {"secretTargetRef", "env"}):
        build.drop(
            f"{where} ({kind} {ref['name']}).spec.{other}",
            "tidescale reads credentials from the agent's environment or files, or (the waker) from a "
            "Secret named by credentials-secret; no pod identity, vault or config-map providers",
        )
    return params


def _plain_or_secret(metadata: Mapping[str, Any], key: str) -> str | None:
    """A parameter's literal value from the trigger's metadata (None when it only lives in a Secret)."""
    value = metadata.get(key)
    return None if value is None else str(value)


def _credentials(
    auth: Mapping[str, _Param],
    metadata: Mapping[str, Any],
    prefix: str,
    where: str,
    build: _Builder,
    *,
    env_fields: tuple[str, str],
) -> None:
    """username/password: a Secret with keys username and password -> credentials-secret (the waker);
    the agent reads them from its own environment, which migrate cannot write."""
    username, password = auth.get("username"), auth.get("password")
    user_env, password_env = env_fields
    for parameter, param in (("username", username), ("password", password)):
        if param is not None and param.env:
            build.set(f"{prefix}{user_env if parameter == 'username' else password_env}", param.env)
    secrets = {p.secret for p in (username, password) if p is not None and p.secret}
    if not secrets:
        for key, env_key in (("usernameFromEnv", user_env), ("passwordFromEnv", password_env)):
            if metadata.get(key):
                build.set(f"{prefix}{env_key}", str(metadata[key]))
        return
    secret = next(iter(secrets))
    keys_fit = (
        len(secrets) == 1
        and (username is None or username.key == "username")
        and (password is None or password.key == "password")
    )
    if keys_fit:
        build.set(f"{prefix}credentials-secret", secret)
        build.tell(
            f"{where}.authenticationRef",
            f"Secret {secret} becomes credentials-secret (read by the waker); give the agent the same "
            f"credentials with {PREFIX}{prefix}{user_env} / {password_env} (env vars of its container) "
            "or a password file",
        )
    else:
        build.drop(
            f"{where}.authenticationRef",
            "credentials-secret needs one Secret with the keys username and password; these come from "
            + ", ".join(f"{p.secret}/{p.key}" for p in (username, password) if p is not None and p.secret),
        )


_TLS_PARAMETERS = {
    "ca": ("tls-ca-file", "ca.crt"),
    "cert": ("tls-cert-file", "tls.crt"),
    "key": ("tls-key-file", "tls.key"),
    "keyPassword": ("tls-key-password-file", "tls.key-password"),
}
"""KEDA's TLS parameters -> (the agents' file field, the waker's credentials-secret key)."""


def _tls_material(auth: Mapping[str, _Param], prefix: str, where: str, build: _Builder) -> None:
    """ca, cert, key, keyPassword: files for the agents, keys of credentials-secret for the waker;
    neither can be written by migrate, so each is named with what to do."""
    for parameter, (field_name, key) in _TLS_PARAMETERS.items():
        if parameter in auth:
            build.drop(
                f"{where}.authenticationRef: {parameter}",
                f"the agent reads it from a file: mount Secret {auth[parameter].secret} in the pod and "
                f"set {PREFIX}{prefix}{field_name} to the file's path; the waker reads key {key} of the "
                "Secret named by credentials-secret",
            )


def _kafka(
    metadata: Mapping[str, Any], auth: Mapping[str, _Param], prefix: str, where: str, build: _Builder
) -> None:
    simple = {
        "bootstrapServers": "bootstrap-servers",
        "brokerList": "bootstrap-servers",
        "consumerGroup": "consumer-group",
        "topic": "topic",
        "lagThreshold": "lag-threshold",
        "activationLagThreshold": "activation-lag-threshold",
        "offsetResetPolicy": "offset-reset-policy",
        "partitionLimitation": "partitions",
    }
    flags = {
        "allowIdleConsumers": "allow-idle-consumers",
        "excludePersistentLag": "exclude-persistent-lag",
        "scaleToZeroOnInvalidOffset": "scale-to-zero-on-invalid-offset",
        "limitToPartitionsWithLag": "limit-to-partitions-with-lag",
    }
    why_not = {
        "version": "not needed: the client negotiates the protocol version with the brokers",
        "ensureEvenDistributionOfPartitions": "not supported",
        "unsafeSsl": "not supported: give the CA with tls-ca-file",
        "sasl": "",
        "tls": "",
    }
    for key, value in metadata.items():
        here = f"{where}.metadata.{key}"
        if key in simple:
            build.set(prefix + simple[key], str(value))
        elif key in flags:
            build.set(prefix + flags[key], _boolean(value))
        elif key in why_not:
            if why_not[key]:
                build.drop(here, why_not[key])
        elif key.endswith("FromEnv"):
            build.drop(here, "hints are literal values: write the value itself")
        else:
            build.drop(here, "no tidescale field for it (see docs/keda-mapping.md)")
    sasl = _plain_or_secret(metadata, "sasl")
    tls = _plain_or_secret(metadata, "tls")
    for parameter in ("sasl", "tls"):
        if parameter in auth and parameter not in metadata:
            build.drop(
                f"{where}.authenticationRef: {parameter}",
                f"its value lives in Secret {auth[parameter].secret} (key {auth[parameter].key}); write "
                f"{PREFIX}{prefix}{parameter} by hand",
            )
    if tls is not None and _boolean(tls) == "true":
        build.set(prefix + "tls", "true")
    if sasl is not None:
        mechanism = {
            "plaintext": "plain",
            "plain": "plain",
            "scram_sha256": "scram-sha-256",
            "scram_sha512": "scram-sha-512",
            "none": None,
        }
        if sasl.lower() in mechanism:
            chosen = mechanism[sasl.lower()]
            if chosen:
                build.set(prefix + "sasl", chosen)
        else:
            build.drop(f"{where}.metadata.sasl", f"{sasl!r}: oauthbearer and gssapi are not supported")
    _tls_material(auth, prefix, where, build)
    for parameter in sorted(set(auth) - {"sasl", "tls", *_TLS_PARAMETERS, "username", "password"}):
        build.drop(f"{where}.authenticationRef: {parameter}", "no tidescale field for it")
    _credentials(auth, metadata, prefix, where, build, env_fields=("sasl-username-env", "sasl-password-env"))


def _secret_credentials(
    auth: Mapping[str, _Param],
    parameters: Mapping[str, tuple[str, str]],
    prefix: str,
    where: str,
    build: _Builder,
) -> None:
    """TriggerAuthentication parameters -> the agent's ``*-env`` fields (env) and the waker's
    credentials-secret (one Secret whose keys are the ones the source documents).
    ``parameters`` maps a KEDA parameter to (our env field, the Secret key we read)."""
    secrets: set[str] = set()
    misnamed: list[str] = []
    for parameter, (env_field, key) in parameters.items():
        param = auth.get(parameter)
        if param is None:
            continue
        if param.env:
            build.set(prefix + env_field, param.env)
        if param.secret:
            secrets.add(param.secret)
            if param.key != key:
                misnamed.append(f"{param.secret}/{param.key} (key {key} expected)")
    if len(secrets) == 1 and not misnamed:
        secret = next(iter(secrets))
        build.set(prefix + "credentials-secret", secret)
        build.tell(
            f"{where}.authenticationRef",
            f"Secret {secret} becomes credentials-secret (read by the waker); give the agent the same "
            "credentials as env vars of its container and name them with the *-env fields",
        )
    elif secrets:
        build.drop(
            f"{where}.authenticationRef",
            "credentials-secret needs one Secret with the keys "
            + ", ".join(key for _, key in parameters.values())
            + "; these come from "
            + ", ".join(misnamed or sorted(secrets)),
        )


def _aws_sqs(
    metadata: Mapping[str, Any], auth: Mapping[str, _Param], prefix: str, where: str, build: _Builder
) -> None:
    simple = {
        "queueLength": "queue-length",
        "activationQueueLength": "activation-queue-length",
        "awsRegion": "aws-region",
        "awsEndpoint": "aws-endpoint",
        "awsAccessKeyIDFromEnv": "access-key-id-env",
        "awsSecretAccessKeyFromEnv": "secret-access-key-env",
    }
    flags = {"scaleOnInFlight": "scale-on-in-flight", "scaleOnDelayed": "scale-on-delayed"}
    for key, value in metadata.items():
        here = f"{where}.metadata.{key}"
        if key == "queueURL":
            if urlsplit(str(value)).scheme in ("http", "https"):
                build.set(prefix + "queue-url", str(value))
            else:
                build.drop(
                    here, "a bare queue name: write the queue URL https://sqs.<region>.amazonaws.com/..."
                )
        elif key in simple:
            build.set(prefix + simple[key], str(value))
        elif key in flags:
            build.set(prefix + flags[key], _boolean(value))
        elif key == "identityOwner":
            build.drop(
                here, "tidescale has no operator identity: the agent signs with the keys its hints name"
            )
        elif key == "awsAccessKeyID":
            build.drop(
                here, "no key in an annotation: give it to the agent as an env var (access-key-id-env)"
            )
        else:
            build.drop(here, "no tidescale field for it (see docs/keda-mapping.md)")
    _secret_credentials(
        auth,
        {
            "awsAccessKeyID": ("access-key-id-env", "AWS_ACCESS_KEY_ID"),
            "awsSecretAccessKey": ("secret-access-key-env", "AWS_SECRET_ACCESS_KEY"),
            "awsSessionToken": ("session-token-env", "AWS_SESSION_TOKEN"),
        },
        prefix,
        where,
        build,
    )
    for parameter in sorted(set(auth) - {"awsAccessKeyID", "awsSecretAccessKey", "awsSessionToken"}):
        build.drop(
            f"{where}.authenticationRef: {parameter}", "role assumption and pod identity are not supported"
        )
    if PREFIX + prefix + "access-key-id-env" not in build.annotations:
        build.tell(
            f"{where}: credentials",
            f"the agent needs an access key: set {PREFIX}{prefix}access-key-id-env and "
            "secret-access-key-env (env vars of its container) or the *-file fields",
        )


def _azure_queue(
    metadata: Mapping[str, Any], auth: Mapping[str, _Param], prefix: str, where: str, build: _Builder
) -> None:
    simple = {
        "queueName": "queue-name",
        "queueLength": "queue-length",
        "activationQueueLength": "activation-queue-length",
        "accountName": "account-name",
        "cloud": "cloud",
        "endpointSuffix": "endpoint-suffix",
        "connectionFromEnv": "connection-string-env",
    }
    for key, value in metadata.items():
        here = f"{where}.metadata.{key}"
        if key in simple:
            build.set(prefix + simple[key], str(value))
        elif key == "queueLengthStrategy":
            build.set(
                prefix + "queue-length-strategy",
                "visible-only" if str(value).lower() == "visibleonly" else "all",
            )
        elif key == "connection":
            build.drop(
                here, "no secret in an annotation: give it to the agent as an env var (connection-string-env)"
            )
        else:
            build.drop(here, "no tidescale field for it (see docs/keda-mapping.md)")
    _secret_credentials(
        auth,
        {"connection": ("connection-string-env", "AZURE_STORAGE_CONNECTION_STRING")},
        prefix,
        where,
        build,
    )
    for parameter in sorted(set(auth) - {"connection"}):
        build.drop(f"{where}.authenticationRef: {parameter}", "no tidescale field for it")
    if PREFIX + prefix + "account-name" not in build.annotations:
        build.tell(
            f"{where}: account",
            f"set {PREFIX}{prefix}account-name to the connection string's AccountName (the waker checks the "
            "address before reading any Secret, so it comes from the hints)",
        )
    if PREFIX + prefix + "connection-string-env" not in build.annotations:
        build.tell(
            f"{where}: credentials",
            f"the agent needs a credential: set {PREFIX}{prefix}connection-string-env, account-key-env or "
            "sas-token-env (env vars of its container) or a *-file field",
        )


def _split_rabbitmq_url(url: str) -> tuple[str, str | None, bool]:
    """``http://user:pw@host:15672/path/vhost`` -> (``http://host:15672/path``, ``vhost``, had credentials).
    An AMQP URL's path is its vhost too."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    had_credentials = parts.username is not None or parts.password is not None
    path = parts.path.rstrip("/") if parts.scheme in ("http", "https") else parts.path
    vhost: str | None = None
    if parts.scheme in ("http", "https"):
        base, _, last = path.rpartition("/")
        if last:
            vhost, path = unquote(last), base
    elif path.strip("/"):
        vhost, path = unquote(path.lstrip("/")), ""
    elif path == "/":
        path = ""
    return f"{parts.scheme}://{netloc}{path}", vhost, had_credentials


def _rabbitmq(
    metadata: Mapping[str, Any], auth: Mapping[str, _Param], prefix: str, where: str, build: _Builder
) -> None:
    host = _plain_or_secret(metadata, "host")
    protocol = str(metadata.get("protocol") or "auto").lower()
    use_regex = _boolean(metadata.get("useRegex", "false")) == "true"
    for key, value in metadata.items():
        here = f"{where}.metadata.{key}"
        if key == "queueName":
            build.set(prefix + ("queue-pattern" if use_regex else "queue"), str(value))
            if use_regex:
                build.tell(here, "a regular expression matched against the whole queue name (queue-pattern)")
        elif key == "vhostName":
            build.set(prefix + "vhost", str(value))
        elif key in ("value", "queueLength"):
            build.set(prefix + "value", str(value))
        elif key == "activationValue":
            build.set(prefix + "activation-value", str(value))
        elif key == "mode":
            mode = {"queuelength": "queue-length", "messagerate": "message-rate"}.get(str(value).lower())
            if mode is None:
                build.drop(here, f"{value!r} is neither QueueLength nor MessageRate")
            else:
                build.set(prefix + "mode", mode)
        elif key == "operation":
            build.set(prefix + "operation", str(value).lower())
        elif key == "excludeUnacknowledged":
            build.set(prefix + "exclude-unacknowledged", _boolean(value))
        elif key == "timeout":
            text = str(value).strip()
            if text.isdigit():
                build.set(prefix + "timeout", f"{text}ms")
            else:
                build.drop(here, f"{value!r} is not a whole number of milliseconds")
        elif key in ("host", "protocol", "useRegex", "usernameFromEnv", "passwordFromEnv"):
            continue
        elif key == "hostFromEnv":
            build.drop(
                here,
                "hints are literal: write the URL (without credentials) in "
                f"{PREFIX}{prefix}management-url, and the credentials as username-env / password-env",
            )
        elif key == "pageSize":
            build.drop(here, "not needed: a pattern reads the vhost's queues in one call")
        elif key == "unsafeSsl":
            build.drop(here, "not supported")
        else:
            build.drop(here, "no tidescale field for it (see docs/keda-mapping.md)")
    if host is None:
        where_it_is = (
            f"Secret {auth['host'].secret} (key {auth['host'].key})" if "host" in auth else "no host given"
        )
        field_name = "amqp-url" if protocol == "amqp" else "management-url"
        build.tell(
            f"{where}: host",
            f"the broker URL lives in {where_it_is}: write it without credentials in "
            f"{PREFIX}{prefix}{field_name} (the management API, http://HOST:15672, is preferred: it counts "
            "unacknowledged messages), the vhost in vhost, and the user and password in a Secret named by "
            "credentials-secret",
        )
    else:
        base, vhost, had_credentials = _split_rabbitmq_url(host)
        scheme = urlsplit(host).scheme
        if scheme in ("http", "https"):
            build.set(prefix + "management-url", base)
        elif scheme in ("amqp", "amqps"):
            build.set(prefix + "amqp-url", base)
            build.tell(
                f"{where}.metadata.host",
                "AMQP counts ready messages only; the management API (management-url) also counts "
                "unacknowledged ones",
            )
        else:
            build.drop(f"{where}.metadata.host", f"{scheme!r} is neither http(s) nor amqp(s)")
        if vhost and "vhostName" not in metadata:
            build.set(prefix + "vhost", vhost)
        if had_credentials:
            build.tell(
                f"{where}.metadata.host",
                "credentials removed from the URL: keep them in a Secret (credentials-secret, password-file)",
            )
    _tls_material(auth, prefix, where, build)
    for parameter in sorted(set(auth) - {"host", "username", "password", *_TLS_PARAMETERS}):
        build.drop(
            f"{where}.authenticationRef: {parameter}",
            "no tidescale field for it (TLS to RabbitMQ is an https:// or amqps:// URL)",
        )
    _credentials(auth, metadata, prefix, where, build, env_fields=("username-env", "password-env"))


def _password_only(
    auth: Mapping[str, _Param], metadata: Mapping[str, Any], prefix: str, where: str, build: _Builder
) -> None:
    """A password (and username) Secret -> credentials-secret (the waker); env -> password-env."""
    password = auth.get("password")
    if password is not None and password.env:
        build.set(prefix + "password-env", password.env)
    elif password is not None and password.secret:
        username = auth.get("username")
        if password.key == "password" and (username is None or username.secret == password.secret):
            build.set(prefix + "credentials-secret", password.secret)
            build.tell(
                f"{where}.authenticationRef",
                f"Secret {password.secret} becomes credentials-secret (read by the waker); give the agent "
                f"the password with {PREFIX}{prefix}password-env (an env var of its container) or "
                "password-file",
            )
        else:
            build.drop(
                f"{where}.authenticationRef",
                "credentials-secret needs the key password; this password is "
                f"{password.secret}/{password.key}",
            )
    elif metadata.get("passwordFromEnv"):
        build.set(prefix + "password-env", str(metadata["passwordFromEnv"]))
    for parameter in sorted(set(auth) - {"password", "username", "host", "port"}):
        build.drop(
            f"{where}.authenticationRef: {parameter}", "no tidescale field for it (docs/keda-mapping.md)"
        )


_REDIS_KEYS = {
    "listName": "list",
    "stream": "stream",
    "consumerGroup": "consumer-group",
    "databaseIndex": "database",
    "username": "username",
    "address": "address",
    "activationListLength": "activation-value",
    "activationLagCount": "activation-value",
}


def _redis(
    metadata: Mapping[str, Any],
    auth: Mapping[str, _Param],
    prefix: str,
    where: str,
    build: _Builder,
    *,
    streams: bool,
) -> None:
    """KEDA's redis (lists) and redis-streams triggers; the target field names the stream metric."""
    for key, value in metadata.items():
        here = f"{where}.metadata.{key}"
        if key in _REDIS_KEYS:
            build.set(prefix + _REDIS_KEYS[key], str(value))
        elif key in ("listLength", "streamLength", "pendingEntriesCount"):
            build.set(prefix + "value", str(value))
        elif key == "lagCount":
            build.set(prefix + "value", str(value))
            build.set(prefix + "stream-metric", "lag")
        elif key == "enableTLS":
            build.set(prefix + "enable-tls", _boolean(value))
        elif key in ("host", "port", "passwordFromEnv"):
            continue
        elif key in ("addressFromEnv", "hostFromEnv", "portFromEnv", "usernameFromEnv"):
            build.drop(here, f"hints are literal: write the value in {PREFIX}{prefix}address or username")
        else:
            build.drop(here, "no tidescale field for it (see docs/keda-mapping.md)")
    if "address" not in metadata and "host" in metadata:
        build.set(prefix + "address", f"{metadata['host']}:{metadata.get('port', 6379)}")
    if streams and "consumerGroup" in metadata and "lagCount" not in metadata:
        build.set(prefix + "stream-metric", "pending")
    if not streams and "listLength" not in metadata:
        build.set(prefix + "value", "5")  # KEDA's default, written out
    _password_only(auth, metadata, prefix, where, build)


_POSTGRESQL_KEYS = {
    "host": "host",
    "port": "port",
    "dbName": "database",
    "userName": "username",
    "sslmode": "sslmode",
    "query": "query",
    "targetQueryValue": "value",
    "activationTargetQueryValue": "activation-value",
}


def _postgresql(
    metadata: Mapping[str, Any], auth: Mapping[str, _Param], prefix: str, where: str, build: _Builder
) -> None:
    for key, value in metadata.items():
        here = f"{where}.metadata.{key}"
        if key in _POSTGRESQL_KEYS:
            build.set(prefix + _POSTGRESQL_KEYS[key], str(value))
        elif key == "passwordFromEnv":
            continue
        elif key in ("connection", "connectionFromEnv"):
            build.drop(
                here,
                "a connection string carries the password: give host, port, dbName, userName and sslmode, "
                "and the password in a Secret (credentials-secret, password-env)",
            )
        else:
            build.drop(here, "no tidescale field for it (see docs/keda-mapping.md)")
    for parameter, field_name in (("host", "host"), ("port", "port"), ("userName", "username")):
        if parameter in auth and parameter not in metadata:
            build.tell(
                f"{where}.authenticationRef: {parameter}",
                f"lives in a Secret: write it in {PREFIX}{prefix}{field_name} (hints are literal)",
            )
    _password_only(auth, metadata, prefix, where, build)


def _cron(metadata: Mapping[str, Any], prefix: str, where: str, build: _Builder) -> None:
    for key, value in metadata.items():
        names = {
            "start": "start",
            "end": "end",
            "timezone": "timezone",
            "desiredReplicas": "desired-replicas",
        }
        if key in names:
            build.set(prefix + names[key], str(value))
        else:
            build.drop(f"{where}.metadata.{key}", "no tidescale field for it (see docs/keda-mapping.md)")


def _prometheus(
    metadata: Mapping[str, Any], auth: Mapping[str, _Param], prefix: str, where: str, build: _Builder
) -> None:
    simple = {
        "serverAddress": "server-address",
        "query": "query",
        "threshold": "threshold",
        "activationThreshold": "activation-threshold",
        "namespace": "namespace",
        "queryParameters": "query-parameters",
    }
    why_not = {
        "metricName": "not needed: the metric is named after the trigger",
        "unsafeSsl": "not supported: give the CA with tls-ca-file",
        "awsRegion": "AWS managed Prometheus (SigV4) is not supported",
        "identityOwner": "cloud identities are not supported",
    }
    for key, value in metadata.items():
        here = f"{where}.metadata.{key}"
        if key in simple:
            build.set(prefix + simple[key], str(value))
        elif key == "ignoreNullValues":
            build.set(prefix + "ignore-null-values", _boolean(value))
        elif key in ("customHeaders", "cortexOrgID"):
            continue
        elif key == "timeout":
            text = str(value).strip()
            if text.isdigit():
                build.set(prefix + "timeout", f"{text}ms")
            else:
                build.drop(here, f"{value!r} is not a whole number of milliseconds")
        elif key in why_not:
            build.drop(here, why_not[key])
        elif key in ("authModes", "authMode"):
            continue
        else:
            build.drop(here, "no tidescale field for it (see docs/keda-mapping.md)")
    # cortexOrgID (KEDA before 2.12) is the X-Scope-OrgID header: one list with customHeaders.
    headers = [str(metadata["customHeaders"])] if metadata.get("customHeaders") else []
    if metadata.get("cortexOrgID"):
        headers.append(f"X-Scope-OrgID={metadata['cortexOrgID']}")
    if headers:
        build.set(prefix + "custom-headers", ",".join(headers))
    modes = {
        m.strip().lower() for m in str(metadata.get("authModes") or metadata.get("authMode") or "").split(",")
    }
    modes.discard("")
    for mode in sorted(modes - {"bearer", "basic"}):
        build.drop(f"{where}.metadata.authModes: {mode}", "only bearer and basic are supported")
    if "bearer" in modes:
        build.set(prefix + "auth-mode", "bearer")
        token = auth.get("bearerToken") or auth.get("token")
        if token is not None and token.env:
            build.set(prefix + "bearer-token-env", token.env)
        elif token is not None and token.secret and token.key == "token":
            build.set(prefix + "credentials-secret", token.secret)
            build.tell(
                f"{where}.authenticationRef",
                f"Secret {token.secret} becomes credentials-secret (read by the waker); give the agent the "
                f"token with {PREFIX}{prefix}bearer-token-env or bearer-token-file",
            )
        elif token is not None:
            build.drop(
                f"{where}.authenticationRef: bearerToken",
                f"credentials-secret reads the key token; this one is {token.secret}/{token.key}",
            )
    elif "basic" in modes:
        build.set(prefix + "auth-mode", "basic")
        _credentials(auth, metadata, prefix, where, build, env_fields=("username-env", "password-env"))
    if "ca" in auth:
        build.drop(
            f"{where}.authenticationRef: ca",
            f"the agent reads it from a file: mount Secret {auth['ca'].secret} in the pod and set "
            f"{PREFIX}{prefix}tls-ca-file to the file's path",
        )
    for parameter in sorted(set(auth) - {"bearerToken", "token", "username", "password", "ca"}):
        build.drop(f"{where}.authenticationRef: {parameter}", "no tidescale field for it")


def _nats_jetstream(
    metadata: Mapping[str, Any], auth: Mapping[str, _Param], prefix: str, where: str, build: _Builder
) -> None:
    simple = {
        "natsServerMonitoringEndpoint": "monitoring-endpoint",
        "stream": "stream",
        "consumer": "consumer",
        "lagThreshold": "lag-threshold",
        "activationLagThreshold": "activation-lag-threshold",
    }
    for key, value in metadata.items():
        here = f"{where}.metadata.{key}"
        if key in simple:
            build.set(prefix + simple[key], str(value))
        elif key == "useHttps":
            build.set(prefix + "use-https", _boolean(value))
        elif key in ("account", "accountID"):
            continue
        else:
            build.drop(here, "no tidescale field for it (see docs/keda-mapping.md)")
    # KEDA asks the server for accountID when given (else account) and matches either: one field here.
    account = metadata.get("accountID") or metadata.get("account")
    if account:
        build.set(prefix + "account", str(account))
    for parameter in sorted(auth):
        build.drop(
            f"{where}.authenticationRef: {parameter}",
            f"hints are literal (the monitoring endpoint has no login): write {PREFIX}{prefix}"
            f"{simple.get(parameter, parameter)} by hand",
        )


# ---------------------------------------------------------------- the whole input


def migrate_documents(
    documents: Sequence[Any], *, dry_run: bool = False, overrides: Mapping[str, str | None] | None = None
) -> MigrateResult:
    """Every ScaledObject of ``documents`` as a :class:`Migration`, with the notes. Pure.

    ``overrides`` (hint names without the prefix -> value, None to remove) complete what the
    input cannot say, e.g. a URL that lived in a Secret; they apply to every ScaledObject."""
    result = MigrateResult()
    auths: dict[tuple[str, str | None, str], Mapping[str, Any]] = {}
    for document in documents:
        for kind in ("TriggerAuthentication", "ClusterTriggerAuthentication"):
            if _is_keda(document, kind):
                namespace, name = _meta(document)
                auths[(kind, None if kind.startswith("Cluster") else namespace, name)] = document
    for document in documents:
        if _is_keda(document, "ScaledObject"):
            migration = _scaled_object(document, auths, result.notes)
            if migration is not None:
                if dry_run:
                    migration.annotations[PREFIX + "dry-run"] = "true"
                for name, value in (overrides or {}).items():
                    if value is None:
                        migration.annotations.pop(PREFIX + name, None)
                    else:
                        migration.annotations[PREFIX + name] = value
                result.migrations.append(migration)
        elif _is_keda(document, "ScaledJob"):
            namespace, name = _meta(document)
            result.notes.append(
                Note(
                    where=f"scaledjob {namespace + '/' if namespace else ''}{name}",
                    field="kind",
                    why="not carried: tidescale scales Deployments, not Jobs",
                )
            )
        elif not any(
            _is_keda(document, k) for k in ("TriggerAuthentication", "ClusterTriggerAuthentication")
        ):
            result.others.append(document)
    for migration in result.migrations:
        for problem in validate_hints(migration.annotations):
            result.notes.append(Note(where=migration.source, field=problem.annotation, why=str(problem)))
    return result


def patched_manifest(result: MigrateResult) -> tuple[list[Any], list[Migration]]:
    """The input's other documents with each targeted Deployment patched; and the migrations whose
    Deployment was not in the input."""
    by_target = {(m.namespace, m.deployment): m for m in result.migrations}
    used: set[tuple[str | None, str]] = set()
    out = []
    for document in result.others:
        if _kind(document) == "Deployment":
            namespace, name = _meta(document)
            migration = by_target.get((namespace, name)) or (
                by_target.get((None, name)) if namespace is None else None
            )
            if migration is not None:
                document = copy.deepcopy(document)
                metadata = document.setdefault("metadata", {})
                metadata.setdefault("annotations", {}).update(migration.annotations)
                template = document.setdefault("spec", {}).setdefault("template", {})
                template.setdefault("metadata", {}).setdefault("labels", {})[INJECT_LABEL] = "true"
                used.add((migration.namespace, migration.deployment))
        out.append(document)
    return out, [m for m in result.migrations if (m.namespace, m.deployment) not in used]


def _dump(documents: Sequence[Any]) -> str:
    import yaml

    return yaml.safe_dump_all(list(documents), sort_keys=False, default_flow_style=False)


def render_patches(result: MigrateResult) -> str:
    import yaml

    chunks = []
    for migration in result.migrations:
        namespace = f" -n {migration.namespace}" if migration.namespace else ""
        chunks.append(
            f"# {migration.source} -> deployment {migration.deployment}\n"
            f"# kubectl patch deployment {migration.deployment}{namespace} --type merge --patch-file FILE\n"
            + yaml.safe_dump(migration.patch(), sort_keys=False, default_flow_style=False)
        )
    return "---\n".join(chunks)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tidescale migrate",
        description=(__doc__ or "").split("\n\n")[0].split(": ", 1)[-1],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", help="YAML or JSON with ScaledObjects (and TriggerAuthentications); - for stdin"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="add tidescale.io/dry-run: the agent decides and reports, and never scales",
    )
    parser.add_argument(
        "--manifest",
        action="store_true",
        help="print the input with its Deployments patched and the KEDA objects dropped",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        help="the namespace of ScaledObjects that name none (as kubectl apply -n would place them)",
    )
    parser.add_argument(
        "--set",
        metavar="HINT=VALUE",
        action="append",
        default=[],
        help="add or replace a hint (without the tidescale.io/ prefix) in every result, e.g. "
        "rabbitmq.management-url=http://rabbitmq:15672 for a URL KEDA read from a Secret; HINT= removes it",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, str | None] = {}
    for item in args.set:
        name, equals, value = item.partition("=")
        name = name.strip().removeprefix(PREFIX)
        if not equals or not name:
            print(
                f"tidescale migrate: --set {item!r}: expected HINT=VALUE, e.g. cooldown=5m", file=sys.stderr
            )
            return 2
        overrides[name] = value or None
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()  # noqa: SIM115
    except (OSError, UnicodeDecodeError) as error:
        print(f"tidescale migrate: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    try:
        documents = list(_documents(text))
    except Exception as error:  # yaml's errors: the message says where
        print(f"tidescale migrate: {args.file} is not valid YAML or JSON: {error}", file=sys.stderr)
        return 2
    result = migrate_documents(documents, dry_run=args.dry_run, overrides=overrides)
    if not result.migrations and not result.notes:
        print(f"tidescale migrate: {args.file} holds no KEDA ScaledObject", file=sys.stderr)
        return 2
    if args.manifest:
        manifest, missing = patched_manifest(result)
        sys.stdout.write(_dump(manifest) if manifest else "")
        for migration in missing:
            result.notes.append(
                Note(
                    where=migration.source,
                    field="spec.scaleTargetRef.name",
                    why=f"deployment {migration.deployment} is not in the input: nothing was patched for it",
                )
            )
    else:
        for migration in result.migrations:
            migration.namespace = migration.namespace or args.namespace
        sys.stdout.write(render_patches(result))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    carried = sum(1 for _ in result.migrations)
    print(f"{carried} ScaledObject(s) migrated, {len(result.notes)} note(s)", file=sys.stderr)
    return (
        1 if any(n.why.startswith("not carried") or n.field.startswith(PREFIX) for n in result.notes) else 0
    )
