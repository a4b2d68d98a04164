"""The people-facing commands without a cluster: status and explain from objects, check's judgements,
the log formats, lint's wiring checks, and that the in-cluster roles never load the CLI's client."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tidescale import _logging
from tidescale._cli_check import (
    check_agent_binding,
    check_version,
    check_waker,
    check_webhooks_registered,
    judge_injection,
    judge_validation,
)
from tidescale._cli_explain import explain_text, parse_what_if, replay
from tidescale._cli_status import render_table, rows
from tidescale._cli_view import format_age, view_of
from tidescale.hints import parse_hints
from tidescale.lint import file_findings, lint_text, workload_findings

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


HINTS = {
    "tidescale.io/kafka.bootstrap-servers": "kafka:9092",
    "tidescale.io/kafka.consumer-group": "billing",
    "tidescale.io/kafka.topic": "orders",
    "tidescale.io/kafka.lag-threshold": "100",
    "tidescale.io/max-replicas": "6",
    "tidescale.io/scale-down-stabilization": "5m",
}


def status(**extra: Any) -> str:
    body = {
        "leader": "orders-abc-1",
        "leaseTransitions": 2,
        "replicas": {"current": 3, "desired": 3},
        "triggers": {"kafka": {"value": 300, "target": 100, "active": True}},
        "pods": {},
        "lastChange": {
            "at": stamp(40),
            "from": 1,
            "to": 3,
            "reason": "lag 300 over threshold 100 on kafka: 1 -> 3",
        },
        **extra,
    }
    return json.dumps(body)


def deployment(
    annotations: dict[str, str] | None = None,
    *,
    replicas: int = 3,
    labels: dict[str, str] | None = None,
    labelled: bool = True,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "orders",
            "namespace": "shop",
            "creationTimestamp": stamp(7200),
            "annotations": {**HINTS, "tidescale.io/status": status()} if annotations is None else annotations,
            "labels": labels or {},
        },
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {
                    "labels": {"app": "orders", **({"tidescale.io/inject": "true"} if labelled else {})}
                }
            },
        },
        "status": {"readyReplicas": replicas},
    }


LEASE = {
    "metadata": {"name": "tidescale-orders", "namespace": "shop"},
    "spec": {
        "holderIdentity": "orders-abc-1",
        "renewTime": stamp(1) + "",
        "leaseDurationSeconds": 15,
        "leaseTransitions": 2,
    },
}


def event(reason: str, message: str, seconds_ago: float, count: int = 1) -> dict[str, Any]:
    return {
        "involvedObject": {"kind": "Deployment", "name": "orders"},
        "reason": reason,
        "message": message,
        "type": "Normal",
        "count": count,
        "lastTimestamp": stamp(seconds_ago),
    }


# ---------------------------------------------------------------- status


def test_a_status_row_shows_replicas_triggers_leader_and_the_last_change_with_its_reason() -> None:
    view = view_of(deployment(), lease=LEASE, events=[])
    table = rows([view], NOW, wide=False, all_namespaces=True)
    assert table[0] == [
        "NAMESPACE",
        "NAME",
        "REPLICAS",
        "TRIGGERS",
        "LEADER",
        "PARKED",
        "LAST CHANGE",
        "WHY",
        "AGE",
    ]
    assert table[1] == [
        "shop",
        "orders",
        "3/3",
        "kafka=300/100",
        "orders-abc-1",
        "no",
        "1->3 40s ago",
        "lag 300 over threshold 100 on kafka: 1 -> 3",
        "2h",
    ]


def test_replicas_read_spec_slash_the_leaders_desired_count() -> None:
    annotations = {**HINTS, "tidescale.io/status": status(replicas={"current": 3, "desired": 5})}
    view = view_of(deployment(annotations), lease=LEASE, events=[])
    assert rows([view], NOW, wide=False, all_namespaces=False)[1][1] == "3/5"


def test_an_expired_lease_shows_no_leader_and_a_parked_deployment_shows_its_epoch() -> None:
    record = {"epoch": 7, "state": "parked", "parkedAt": stamp(300)}
    annotations = {**HINTS, "tidescale.io/park-record": json.dumps(record), "tidescale.io/park-epoch": "7"}
    stale = {**LEASE, "spec": {**LEASE["spec"], "renewTime": stamp(600)}}
    view = view_of(
        deployment(annotations, replicas=0, labels={"tidescale.io/park": "parked"}), lease=stale, events=[]
    )
    row = rows([view], NOW, wide=True, all_namespaces=False)[1]
    assert row[1] == "0/0"
    assert row[3] == "<none: at zero>"
    assert row[4] == "parked (epoch 7, 5m)"
    assert row[8] == "parked"  # STATE in -o wide


def test_a_newer_event_than_the_status_is_the_last_change() -> None:
    woke = event("Woken", "kafka lag 12 is active: 0 -> 2", seconds_ago=5)
    view = view_of(deployment(), lease=LEASE, events=[event("Scaled", "old: 4 -> 3", 900), woke])
    assert view.last_change is not None
    assert (view.last_change.before, view.last_change.after, view.last_change.source) == (0, 2, "event Woken")


def test_an_unreadable_status_annotation_is_reported_not_fatal() -> None:
    view = view_of(deployment({**HINTS, "tidescale.io/status": "{nope"}), lease=None, events=[])
    assert view.status is None
    assert view.status_problem is not None
    assert "not JSON" in view.status_problem
    assert rows([view], NOW, wide=True, all_namespaces=False)[1][8] == "error"


def test_the_table_pads_columns_like_kubectl() -> None:
    text = render_table([["NAME", "REPLICAS"], ["orders", "3/3"], ["a", "10/10"]])
    assert text.splitlines() == ["NAME     REPLICAS", "orders   3/3", "a        10/10"]


@given(st.integers(min_value=0, max_value=10**8))
def test_ages_are_short_and_grow_with_time(seconds: int) -> None:
    text = format_age(seconds)
    assert len(text) <= 6
    assert text[-1] in "smhd"


# ---------------------------------------------------------------- explain


def test_explain_names_each_trigger_the_last_change_and_what_comes_next() -> None:
    view = view_of(
        deployment(), lease=LEASE, events=[event("Scaled", "lag 300 over threshold 100 on kafka: 1 -> 3", 40)]
    )
    text = explain_text(view, wall=NOW)
    lines = text.splitlines()
    assert lines[0] == "shop/orders: 3 replica(s), 3 ready; leader orders-abc-1 (lease transitions 2)"
    assert "  kafka  lag 300 / 100 -> wants 3, active" in lines
    assert any(line.startswith("Last change: 1->3 40s ago") for line in lines)
    assert any(line.startswith("Next: ") and "stays at 3" in line for line in lines)
    assert "Park: not parked" in lines


def test_what_if_replays_the_policy_with_other_values_and_scales_up_for_more_lag() -> None:
    view = view_of(deployment(), lease=LEASE, events=[])
    text = explain_text(view, wall=NOW, what_if={"kafka": 550.0})
    assert "What if kafka=550: 3 -> 6" in text.splitlines()
    assert "(offline replay of policy.decide; history rebuilt from the last change" in text


def test_what_if_less_lag_is_held_by_the_scale_down_window_of_the_last_change() -> None:
    view = view_of(deployment(), lease=LEASE, events=[])
    result = replay(view, parse_hints(HINTS), wall=NOW, overrides={"kafka": 0.0})
    # The change to 3 was 40 s ago: the 5 m scale-down window still holds 3.
    assert result.desired == 3
    assert result.capped_by is not None
    assert "scale-down stabilization" in result.capped_by


def test_what_if_with_an_unknown_trigger_names_the_known_ones() -> None:
    view = view_of(deployment(), lease=LEASE, events=[])
    with pytest.raises(ValueError, match="this Deployment's triggers are kafka"):
        explain_text(view, wall=NOW, what_if={"rabbit": 1.0})


def test_explain_says_when_the_pod_template_is_not_labelled_and_when_hints_are_broken() -> None:
    annotations = {**HINTS, "tidescale.io/cooldown": "300"}
    text = explain_text(view_of(deployment(annotations, labelled=False), lease=None, events=[]), wall=NOW)
    assert "lacks the label tidescale.io/inject" in text
    assert "NO LEADER" in text
    assert "did you mean '300s'?" in text


def test_what_if_parsing_accepts_numbers_and_error_and_refuses_the_rest() -> None:
    assert parse_what_if("kafka=500, refunds=error") == {"kafka": 500.0, "refunds": None}
    for bad in ("kafka", "kafka=", "=3", "kafka=lots", "kafka=-1"):
        with pytest.raises(ValueError, match="--what-if"):
            parse_what_if(bad)


@given(
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), st.integers(0, 10**9), min_size=1)
)
def test_what_if_parsing_round_trips_any_names_and_values(values: dict[str, int]) -> None:
    text = ",".join(f"{k}={v}" for k, v in values.items())
    assert parse_what_if(text) == {k: float(v) for k, v in values.items()}


# ---------------------------------------------------------------- check


def test_versions_from_1_29_run_native_sidecars_and_older_ones_warn() -> None:
    assert check_version({"major": "1", "minor": "37", "gitVersion": "v1.37.2"}).outcome == "ok"
    old = check_version({"major": "1", "minor": "28+", "gitVersion": "v1.28.9-eks"})
    assert old.outcome == "warn"
    assert "classic sidecar" in old.detail


def test_missing_webhooks_fail_and_registered_ones_say_where_they_call() -> None:
    hook = {
        "name": "inject.tidescale.io",
        "clientConfig": {"service": {"namespace": "ts", "name": "inj", "path": "/mutate"}},
    }
    checks = check_webhooks_registered([{"metadata": {"name": "tidescale"}, "webhooks": [hook]}], [])
    assert [c.outcome for c in checks] == ["ok", "fail"]
    assert "service ts/inj:443/mutate" in checks[0].detail
    assert "validate.tidescale.io" in checks[1].what


def test_a_dry_run_pod_without_the_agent_fails_the_injection_check() -> None:
    injected = {"spec": {"initContainers": [{"name": "tidescale-agent"}], "containers": [{"name": "probe"}]}}
    assert judge_injection(injected, None).outcome == "ok"
    assert "native" in judge_injection(injected, None).detail
    assert judge_injection({"spec": {"containers": [{"name": "probe"}]}}, None).outcome == "fail"
    assert judge_injection(None, "forbidden").outcome == "warn"


def test_the_validation_check_needs_tidescales_warning() -> None:
    assert judge_validation(["tidescale.io/cooldown is '300': ..."], None).outcome == "ok"
    assert judge_validation([], None).outcome == "fail"


def test_the_waker_leads_only_with_a_recently_renewed_lease() -> None:
    lease = {
        "metadata": {"namespace": "tidescale"},
        "spec": {"holderIdentity": "w-1", "renewTime": stamp(3), "leaseDurationSeconds": 15},
    }
    assert check_waker([lease], name="tidescale-waker", now=NOW).outcome == "ok"
    expired = {**lease, "spec": {**lease["spec"], "renewTime": stamp(60)}}
    assert check_waker([expired], name="tidescale-waker", now=NOW).outcome == "fail"
    assert check_waker([], name="tidescale-waker", now=NOW).outcome == "fail"


def test_an_unbound_service_account_fails_with_the_exact_rolebinding_command() -> None:
    dep = deployment()
    dep["spec"]["template"]["spec"] = {"serviceAccountName": "billing"}
    binding = {
        "metadata": {"name": "tidescale-agent"},
        "roleRef": {"kind": "ClusterRole", "name": "tidescale-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "shop"}],
    }
    missing = check_agent_binding([binding], [dep], namespace="shop", role="tidescale-agent")
    assert missing.outcome == "fail"
    assert missing.fix == (
        "kubectl create rolebinding tidescale-agent --clusterrole=tidescale-agent "
        "--serviceaccount=shop:billing -n shop"
    )
    binding["subjects"].append({"kind": "ServiceAccount", "name": "billing", "namespace": "shop"})
    assert check_agent_binding([binding], [dep], namespace="shop", role="tidescale-agent").outcome == "ok"
    assert check_agent_binding([], [], namespace="shop", role="tidescale-agent").outcome == "warn"


# ---------------------------------------------------------------- logs


def log_line(fmt: str, **extra: Any) -> str:
    stream = io.StringIO()
    _logging.configure(level="debug", fmt=fmt, static={"namespace": "shop", "pod": "orders-1"}, stream=stream)
    try:
        logging.getLogger("tidescale.test").info("scaled %s", "orders", extra=extra)
    finally:
        _logging.configure(level="warning", fmt="text")
    return stream.getvalue()


def test_json_logs_are_one_object_a_line_with_the_context_fields() -> None:
    text = log_line("json", trigger="kafka", deployment="orders")
    assert text.count("\n") == 1
    line = json.loads(text)
    assert line["msg"] == "scaled orders"
    assert line["level"] == "info"
    assert (line["namespace"], line["deployment"], line["pod"], line["trigger"]) == (
        "shop",
        "orders",
        "orders-1",
        "kafka",
    )
    assert line["time"].endswith("Z")


def test_text_logs_carry_the_same_fields_for_people() -> None:
    text = log_line("text", trigger="kafka")
    assert " INFO tidescale.test: scaled orders namespace=shop pod=orders-1 trigger=kafka" in text


def test_a_bad_log_level_or_format_is_named() -> None:
    with pytest.raises(ValueError, match="log level 'loud'"):
        _logging.configure(level="loud")
    with pytest.raises(ValueError, match="log format 'xml'"):
        _logging.configure(fmt="xml")


def test_log_flags_are_taken_out_of_a_commands_arguments() -> None:
    rest, level, fmt = _logging.split_arguments(
        ["--port", "8443", "--log-level", "debug", "--log-format=text"], {"TIDESCALE_LOG_LEVEL": "warning"}
    )
    assert (rest, level, fmt) == (["--port", "8443"], "debug", "text")
    assert _logging.split_arguments([], {"TIDESCALE_LOG_LEVEL": "warning"})[1] == "warning"


# ---------------------------------------------------------------- lint


def messages(obj: dict[str, Any]) -> list[str]:
    return [f.message for f in workload_findings(obj) if f.severity == "warning"]


def test_lint_warns_when_the_pod_template_lacks_the_inject_label() -> None:
    assert any("pod template lacks the label" in m for m in messages(deployment(HINTS, labelled=False)))


def test_lint_warns_when_the_label_is_on_the_deployment_instead_of_the_template() -> None:
    dep = deployment(HINTS, labelled=False, labels={"tidescale.io/inject": "true"})
    assert any("is on the Deployment, not on its pod template" in m for m in messages(dep))


def test_lint_warns_about_hints_on_the_pod_template() -> None:
    dep = deployment(HINTS)
    dep["spec"]["template"]["metadata"]["annotations"] = {"tidescale.io/max-replicas": "4"}
    assert any("on the pod template (tidescale.io/max-replicas) are ignored" in m for m in messages(dep))


def test_lint_warns_about_hints_on_a_statefulset() -> None:
    sts = {**deployment(HINTS), "kind": "StatefulSet"}
    assert any("StatefulSet" in m for m in messages(sts))


def test_lint_warns_about_a_labelled_deployment_without_a_trigger() -> None:
    assert any("declares no trigger" in m for m in messages(deployment({"tidescale.io/max-replicas": "4"})))
    assert messages(deployment(HINTS)) == []


def test_lint_suggests_turning_off_the_token_for_workloads_that_do_not_need_the_api() -> None:
    notes = [f.message for f in workload_findings(deployment(HINTS)) if f.severity == "note"]
    assert any("automountServiceAccountToken: false" in n for n in notes)
    dep = deployment(HINTS)
    dep["spec"]["template"]["spec"] = {"automountServiceAccountToken": False}
    assert [f for f in workload_findings(dep) if f.severity == "note"] == []


def test_lint_warns_about_an_hpa_or_scaled_object_in_the_same_file() -> None:
    hpa = {
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "orders"}},
    }
    so = {
        "kind": "ScaledObject",
        "metadata": {"name": "orders-so", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"name": "orders"}},
    }
    found = [str(f) for _, f in file_findings([deployment(HINTS), hpa, so])]
    assert any("HorizontalPodAutoscaler orders in this file also scales it" in f for f in found)
    assert any("ScaledObject orders-so in this file also scales it" in f for f in found)


def test_lint_reports_hint_errors_with_the_bare_number_suggestion() -> None:
    text = json.dumps(deployment({**HINTS, "tidescale.io/cooldown": "300"}))
    lines, checked = lint_text(text, origin="orders.yaml")
    assert checked == 1
    assert any(
        line.startswith("orders.yaml: deployment shop/orders: error: tidescale.io/cooldown") for line in lines
    )
    assert any("did you mean '300s'?" in line for line in lines)


# ---------------------------------------------------------------- imports


def test_the_agent_role_and_the_dispatcher_never_import_kubernetes_asyncio() -> None:
    code = (
        "import sys, tidescale.cli, tidescale.agent, tidescale.waker, tidescale_injector.server\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('kubernetes_asyncio', 'aiohttp', 'yaml')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_has_help_with_examples() -> None:
    for command in ("status", "explain", "check", "migrate", "lint"):
        result = subprocess.run(
            [sys.executable, "-m", "tidescale.cli", command, "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, command
        assert "examples:" in result.stdout, command
        if command in ("status", "explain", "check"):
            for flag in ("--kubeconfig", "--context", "-n NAMESPACE"):
                assert flag in result.stdout, (command, flag)


def test_what_if_uses_the_history_the_leader_persisted() -> None:
    from tidescale._policy_state import encode
    from tidescale.policy import History, Recommendation

    hints = parse_hints(HINTS)
    wall = NOW.timestamp()
    # The leader saw 5 replicas recommended 60 s ago: the 5 m scale-down window holds 5 even at lag 0.
    persisted = History(
        recommendations=(Recommendation(at=wall - 60, replicas=5),), seeded=True, last_active=wall
    )
    annotations = {
        **HINTS,
        "tidescale.io/status": status(replicas={"current": 5, "desired": 5}),
        "tidescale.io/policy-state": encode(persisted, hints=hints, now=wall, wall=wall),
    }
    view = view_of(deployment(annotations, replicas=5), lease=LEASE, events=[])
    result = replay(view, hints, wall=NOW, overrides={"kafka": 0.0})
    assert result.history_source.startswith("persisted by the leader")
    assert result.desired == 5


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@given(
    status_body=st.dictionaries(
        st.sampled_from(["leader", "replicas", "triggers", "lastChange", "heldBy", "updatedAt", "dryRun"]),
        _JSON,
    ),
    record=_JSON,
    epoch=st.text(max_size=4),
)
@example(status_body={}, record=None, epoch="\u00b9")  # a digit to str.isdigit, not to int()
def test_status_and_explain_survive_whatever_is_in_the_annotations(
    status_body: dict[str, Any], record: Any, epoch: str
) -> None:
    annotations = {
        **HINTS,
        "tidescale.io/status": json.dumps(status_body),
        "tidescale.io/park-record": json.dumps(record),
        "tidescale.io/park-epoch": epoch,
    }
    view = view_of(deployment(annotations), lease=LEASE, events=[])
    for wide in (False, True):
        assert all(
            isinstance(cell, str) for row in rows([view], NOW, wide=wide, all_namespaces=True) for cell in row
        )
    assert view.as_json(NOW)["deployment"] == "orders"
    assert explain_text(view, wall=NOW).startswith("shop/orders: ")
