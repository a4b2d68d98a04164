"""``tidescale status [-n NS | -A] [DEPLOYMENT] [-o wide|json|yaml]``: what tidescale is doing, as a table.

From the API only: the Deployments that carry hints or the inject label, their
leader's ``tidescale.io/status`` annotation, the park label and record, the agents'
Leases and the Events about them. Nothing is asked of the agents themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tidescale._cli_kube import Api, add_kube_arguments, connect
from tidescale._cli_view import DeploymentView, format_age, is_tidescale, view_of
from tidescale.errors import KubeNotFound, TidescaleError

__all__ = ["fetch_views", "main", "render_table"]

EXAMPLES = """\
examples:
  # every tidescale Deployment of the current namespace
  tidescale status

  # one Deployment, in another namespace, with every column
  tidescale status -n shop orders -o wide

  # the whole cluster, as JSON for scripts
  tidescale status -A -o json

  # another cluster of your kubeconfig
  tidescale status --context prod-eu -n shop
"""

_WHY_WIDTH = 60


def _lease_name(deployment: str) -> str:
    return f"tidescale-{deployment}"[:253]


async def fetch_views(api: Api, *, namespace: str | None, name: str | None) -> list[DeploymentView]:
    """The views of one Deployment, of a namespace's tidescale Deployments, or (namespace None) of all."""
    if name is not None:
        assert namespace is not None
        deployment = await api.get(
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            what=f"get deployment {namespace}/{name}",
        )
        deployments = [deployment]
    else:
        path = (
            "/apis/apps/v1/deployments"
            if namespace is None
            else f"/apis/apps/v1/namespaces/{namespace}/deployments"
        )
        deployments = [d for d in await api.items(path, what="list deployments") if is_tidescale(d)]
    if not deployments:
        return []
    namespaces = sorted({str((d.get("metadata") or {}).get("namespace") or "default") for d in deployments})

    async def leases_and_events(ns: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
        leases, events = await asyncio.gather(
            api.items(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", what=f"list leases in {ns}"),
            api.items(
                f"/api/v1/namespaces/{ns}/events",
                what=f"list events in {ns}",
                params={"fieldSelector": "involvedObject.kind=Deployment"},
            ),
        )
        return ns, leases, events

    gathered = await asyncio.gather(*(leases_and_events(ns) for ns in namespaces))
    leases = {
        (ns, str((lease.get("metadata") or {}).get("name"))): lease
        for ns, found, _ in gathered
        for lease in found
    }
    events: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for ns, _, found in gathered:
        for event in found:
            involved = event.get("involvedObject") or event.get("regarding") or {}
            events.setdefault((ns, str(involved.get("name"))), []).append(event)
    views = []
    for deployment in deployments:
        metadata = deployment.get("metadata") or {}
        ns, dep = str(metadata.get("namespace") or "default"), str(metadata.get("name"))
        views.append(
            view_of(deployment, lease=leases.get((ns, _lease_name(dep))), events=events.get((ns, dep), []))
        )
    return sorted(views, key=lambda v: (v.namespace, v.name))


def _leader_words(view: DeploymentView, now: datetime) -> str:
    if view.lease_live(now):
        return str(view.lease_holder)
    if view.spec_replicas == 0:
        return "<none: at zero>"
    return "<none>"


def _replicas(view: DeploymentView) -> str:
    desired = view.desired if view.desired is not None else view.spec_replicas
    return f"{view.spec_replicas}/{desired}"


def _triggers(view: DeploymentView) -> str:
    return ",".join(t.short() for t in view.triggers) or ("<no status>" if view.status is None else "<none>")


def _last(view: DeploymentView, now: datetime) -> tuple[str, str]:
    change = view.last_change
    if change is None:
        return "<none>", ""
    age = f" {format_age((now - change.at).total_seconds())} ago" if change.at else ""
    return f"{change.arrow()}{age}", change.reason


def _state(view: DeploymentView) -> str:
    if view.state:
        return view.state
    if view.status_problem:
        return "error"
    if view.park_label:
        return {"parked": "parked", "requested": "parking", "watching": "parking"}.get(
            view.park_label, view.park_label
        )
    if view.dry_run:
        return "dry-run"
    return "-" if view.status is None else "scaling"


def rows(
    views: Sequence[DeploymentView], now: datetime, *, wide: bool, all_namespaces: bool
) -> list[list[str]]:
    header = ["NAME", "REPLICAS", "TRIGGERS", "LEADER", "PARKED", "LAST CHANGE", "WHY", "AGE"]
    if wide:
        header += ["STATE", "HELD BY", "UPDATED", "READY", "LABELLED"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    table = [header]
    for view in views:
        last, why = _last(view, now)
        if not wide and len(why) > _WHY_WIDTH:
            why = why[: _WHY_WIDTH - 3] + "..."
        row = [
            view.name,
            _replicas(view),
            _triggers(view),
            _leader_words(view, now),
            view.parked_words(now),
            last,
            why or "-",
            format_age((now - view.created).total_seconds()) if view.created else "<unknown>",
        ]
        if wide:
            updated = format_age((now - view.updated).total_seconds()) + " ago" if view.updated else "-"
            row += [
                _state(view),
                view.held_by or "-",
                updated,
                str(view.ready_replicas),
                "yes" if view.labelled else "NO",
            ]
        if all_namespaces:
            row.insert(0, view.namespace)
        table.append(row)
    return table


def render_table(table: Sequence[Sequence[str]]) -> str:
    """Columns padded as kubectl pads them: three spaces between, the last column unpadded."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def render(
    views: Sequence[DeploymentView], now: datetime, *, output: str | None, all_namespaces: bool
) -> str:
    if output in ("json", "yaml"):
        payload = [view.as_json(now) for view in views]
        if output == "json":
            import json

            return json.dumps(payload, indent=2)
        import yaml

        return yaml.safe_dump(payload, sort_keys=False).rstrip()
    return render_table(rows(views, now, wide=output == "wide", all_namespaces=all_namespaces))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tidescale status",
        description="What tidescale is doing: one line per scaled Deployment, from the API only.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("deployment", nargs="?", help="one Deployment (default: every tidescale Deployment)")
    parser.add_argument(
        "-o", "--output", choices=("wide", "json", "yaml"), help="more columns, or JSON / YAML"
    )
    add_kube_arguments(parser, all_namespaces=True)
    args = parser.parse_args(argv)
    if args.all_namespaces and args.deployment:
        parser.error("a DEPLOYMENT name needs one namespace: drop -A or use -n")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    namespace: str | None = args.namespace
    try:
        async with await connect(args) as api:
            namespace = None if args.all_namespaces else api.target.namespace
            views = await fetch_views(api, namespace=namespace, name=args.deployment)
    except KubeNotFound:
        print(
            f"tidescale status: deployment {args.deployment!r} not found in namespace {namespace}",
            file=sys.stderr,
        )
        return 1
    except TidescaleError as error:
        print(f"tidescale status: {error}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    if not views and args.output not in ("json", "yaml"):
        where = "any namespace" if args.all_namespaces else f"namespace {namespace}"
        print(f"No tidescale Deployments in {where}.", file=sys.stderr)
        return 0
    print(render(views, now, output=args.output, all_namespaces=bool(args.all_namespaces)))
    return 0
