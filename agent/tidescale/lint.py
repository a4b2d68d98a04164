"""``tidescale lint FILE...``: check the tidescale hints of Deployment manifests, and how they are wired.

Reads YAML (several documents per file, or a ``List``) or JSON and reports, per workload:

- every problem of the hints (errors), as the agent's parser sees them;
- wiring that makes hints do nothing (warnings): hints on a Deployment whose pod
  template lacks the inject label, the label on the Deployment instead of its pod
  template, hints on the pod template instead of the Deployment, hints or the label on
  a StatefulSet, a labelled Deployment with no trigger, and a Deployment that an HPA or
  a KEDA ScaledObject of the same file also scales;
- advice (notes, never a failure): ``automountServiceAccountToken: false`` for a
  workload whose own containers do not call the API (the agent gets its own token).

Exit status: 1 when there is any error or warning, 0 when clean, 2 when a file cannot
be read. ``-`` reads standard input. :func:`workload_findings` is also what the
validating webhook warns with, so ``kubectl apply`` and ``lint`` say the same things.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tidescale.hints import AGENT_OWNED, PREFIX, parse_hints, validate_hints

__all__ = ["Finding", "file_findings", "lint_text", "main", "workload_findings"]

INJECT_LABEL = "tidescale.io/inject"
Severity = Literal["error", "warning", "note"]

EXAMPLES = """\
examples:
  tidescale lint deploy/orders.yaml
  helm template my-app ./chart | tidescale lint -
  kubectl get deploy -n shop -o yaml | tidescale lint -
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


def _documents(text: str) -> Iterator[Any]:
    import yaml  # only the CLI pays for it

    for document in yaml.safe_load_all(text):
        if isinstance(document, dict) and document.get("kind") == "List":
            yield from document.get("items") or []
        else:
            yield document


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _hints(annotations: Mapping[str, Any]) -> dict[str, str]:
    """The annotations under the prefix that are hints (not what tidescale writes itself)."""
    return {
        str(k): str(v)
        for k, v in annotations.items()
        if str(k).startswith(PREFIX)
        and str(k)[len(PREFIX) :] not in AGENT_OWNED
        and not str(k)[len(PREFIX) :].startswith("park-")
        and str(k)[len(PREFIX) :] not in ("state", "policy-state", "injected")
    }


def workload_findings(obj: Mapping[str, Any]) -> list[Finding]:
    """The wiring problems of one Deployment or StatefulSet (not its hint values). Pure, never raises."""
    try:
        return _workload_findings(obj)
    except Exception as exc:  # the webhook calls this: a bug here must not block an apply
        return [
            Finding(severity="note", message=f"tidescale could not check this workload's wiring ({exc!r})")
        ]


def _workload_findings(obj: Mapping[str, Any]) -> list[Finding]:
    kind = str(obj.get("kind") or "Deployment")
    metadata = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    template = _mapping(spec.get("template"))
    template_meta = _mapping(template.get("metadata"))
    pod_spec = _mapping(template.get("spec"))
    hints = _hints(_mapping(metadata.get("annotations")))
    labelled = _mapping(template_meta.get("labels")).get(INJECT_LABEL) == "true"
    label_on_object = INJECT_LABEL in _mapping(metadata.get("labels"))
    template_hints = sorted(_hints(_mapping(template_meta.get("annotations"))))
    findings: list[Finding] = []
    if kind == "StatefulSet":
        if hints or labelled or label_on_object:
            findings.append(
                Finding(
                    severity="warning",
                    message="tidescale scales Deployments only: on a StatefulSet the hints and the inject "
                    "label do nothing (no agent leads it, nothing scales it)",
                )
            )
        return findings
    if kind != "Deployment":
        return findings
    if label_on_object and not labelled:
        findings.append(
            Finding(
                severity="warning",
                message=f"the label {INJECT_LABEL} is on the Deployment, not on its pod template: move it to "
                "spec.template.metadata.labels (the injector sees pods), or no agent is injected",
            )
        )
    if template_hints:
        findings.append(
            Finding(
                severity="warning",
                message=f"tidescale hints on the pod template ({', '.join(template_hints)}) are ignored: "
                "put them on the Deployment's own metadata.annotations",
            )
        )
    if hints and not labelled and not label_on_object:
        findings.append(
            Finding(
                severity="warning",
                message="tidescale hints are set but the pod template lacks the label "
                f'{INJECT_LABEL}: "true", so no agent will be injected and nothing will scale',
            )
        )
    if labelled and not validate_hints(hints) and not parse_hints(hints).triggers:
        findings.append(
            Finding(
                severity="warning",
                message="the pod template is labelled for tidescale but the Deployment declares no trigger "
                "(tidescale.io/<trigger>.<field>): the agents run and never scale",
            )
        )
    if (labelled or hints) and pod_spec.get("automountServiceAccountToken") is not False:
        findings.append(
            Finding(
                severity="note",
                message="if this workload's own containers do not call the Kubernetes API, set "
                "spec.template.spec.automountServiceAccountToken: false; the injected agent still gets its "
                "own projected token",
            )
        )
    return findings


def _scalers(documents: Sequence[Any]) -> dict[tuple[str, str], list[str]]:
    """(namespace, Deployment) -> the HPAs and ScaledObjects of the file that target it."""
    found: dict[tuple[str, str], list[str]] = {}
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        kind = document.get("kind")
        if kind not in ("HorizontalPodAutoscaler", "ScaledObject"):
            continue
        target = _mapping(_mapping(document.get("spec")).get("scaleTargetRef"))
        if str(target.get("kind") or "Deployment") != "Deployment" or not target.get("name"):
            continue
        metadata = _mapping(document.get("metadata"))
        namespace = str(metadata.get("namespace") or "default")
        found.setdefault((namespace, str(target["name"])), []).append(f"{kind} {metadata.get('name', '?')}")
    return found


def _involved(document: Mapping[str, Any]) -> bool:
    """Hints, or the inject label on the Deployment or its pod template."""
    metadata = _mapping(document.get("metadata"))
    template_meta = _mapping(_mapping(_mapping(document.get("spec")).get("template")).get("metadata"))
    return (
        bool(_hints(_mapping(metadata.get("annotations"))))
        or INJECT_LABEL in _mapping(metadata.get("labels"))
        or INJECT_LABEL in _mapping(template_meta.get("labels"))
    )


def file_findings(documents: Sequence[Any]) -> list[tuple[str, Finding]]:
    """(workload, finding) for every workload of one file, hint problems included."""
    scalers = _scalers(documents)
    out: list[tuple[str, Finding]] = []
    for document in documents:
        if not isinstance(document, Mapping) or document.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        metadata = _mapping(document.get("metadata"))
        namespace = str(metadata.get("namespace") or "default")
        name = str(metadata.get("name", "?"))
        where = f"{str(document['kind']).lower()} {namespace}/{name}"
        annotations = {str(k): str(v) for k, v in _mapping(metadata.get("annotations")).items()}
        if document.get("kind") == "Deployment":
            out += [(where, Finding(severity="error", message=str(p))) for p in validate_hints(annotations)]
        findings = workload_findings(document)
        if document.get("kind") == "Deployment" and _involved(document):
            for scaler in scalers.get((namespace, name), []):
                findings.append(
                    Finding(
                        severity="warning",
                        message=f"{scaler} in this file also scales it: two autoscalers fight over "
                        "spec.replicas; delete it once tidescale runs (docs/migrating.md)",
                    )
                )
        out += [(where, finding) for finding in findings]
    return out


def lint_text(text: str, *, origin: str) -> tuple[list[str], int]:
    """Problems (errors and warnings, one line each; notes too, marked) and the workloads checked."""
    documents = list(_documents(text))
    checked = sum(
        1 for d in documents if isinstance(d, Mapping) and d.get("kind") in ("Deployment", "StatefulSet")
    )
    lines = [f"{origin}: {where}: {finding}" for where, finding in file_findings(documents)]
    return lines, checked


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tidescale lint",
        description=(__doc__ or "").splitlines()[0].split(": ", 1)[-1],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", help="manifest files (YAML or JSON), or - for standard input")
    parser.add_argument("--no-notes", action="store_true", help="leave out advice (notes); problems only")
    args = parser.parse_args(argv)
    lines: list[str] = []
    checked = 0
    for path in args.files:
        try:
            text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
            found, count = lint_text(text, origin=path)
        except (OSError, UnicodeDecodeError) as error:
            print(f"tidescale lint: cannot read {path}: {error}", file=sys.stderr)
            return 2
        except Exception as error:  # yaml's errors: not worth importing yaml at module level to name them
            print(f"tidescale lint: {path} is not valid YAML or JSON: {error}", file=sys.stderr)
            return 2
        lines += found
        checked += count
    problems = [line for line in lines if ": note: " not in line]
    for line in lines if not args.no_notes else problems:
        print(line)
    print(f"{checked} workload(s) checked, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0
