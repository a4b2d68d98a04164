"""AdmissionReview v1 in, AdmissionReview v1 out: the two webhooks' logic, without the HTTP.

``mutate`` answers pod CREATE with the patch from :mod:`tidescale_injector.patch`;
``validate`` answers Deployment CREATE/UPDATE with the hint problems from
:func:`tidescale.hints.validate_hints`, as warnings or (strict mode) a denial.

Both take the raw request body and return an :class:`Outcome` (HTTP status + body +
what happened, for the metrics). Neither raises: a body that is not an
AdmissionReview gets a 400 with a message; a bug in our own code lets the object
through unchanged (the webhooks fail open, like their failurePolicy).
"""

from __future__ import annotations

import base64
import fnmatch
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from tidescale.errors import HintError, HintsInvalid
from tidescale.hints import AGENT_OWNED, PREFIX, validate_hints
from tidescale.lint import workload_findings
from tidescale_injector.config import InjectorConfig
from tidescale_injector.patch import INJECT_LABEL, build_patch

__all__ = [
    "MAX_REVIEW_BYTES",
    "MAX_REVIEW_CONTAINERS",
    "AdmissionRequest",
    "AdmissionResponse",
    "AdmissionReview",
    "GroupVersionKind",
    "HintValidator",
    "Outcome",
    "Result",
    "agent_identity",
    "mutate",
    "validate",
]

_log = logging.getLogger(__name__)

# The API server caps a request body at 3 MiB; an UPDATE review carries the object twice.
MAX_REVIEW_BYTES = 8 * 2**20
# JSON objects and arrays a review may hold (counted as "{" and "[" bytes, strings included, before
# parsing). A parsed empty list costs ~70 bytes, so 8 MiB of "[]," would become ~200 MiB of Python
# objects; this bound keeps any body's parse under ~25 MiB. A real review has one per ~30-60 bytes.
MAX_REVIEW_CONTAINERS = 300_000
_MAX_UID = 256

Result = Literal["injected", "skipped", "allowed", "warned", "denied", "rejected", "error"]
HintValidator = Callable[[Mapping[str, str]], tuple[HintError, ...]]


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class AdmissionRequest(TypedDict, total=False):
    uid: str
    kind: GroupVersionKind
    resource: Mapping[str, str]
    subResource: str
    name: str
    namespace: str
    operation: str
    userInfo: Mapping[str, Any]
    object: Mapping[str, Any] | None
    oldObject: Mapping[str, Any] | None
    dryRun: bool


class _Status(TypedDict):
    code: int
    reason: str
    message: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[_Status]
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]
    warnings: NotRequired[list[str]]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: str
    response: AdmissionResponse


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """The HTTP answer, and what happened: ``result``, plus ``reason`` when skipped or rejected."""

    status: int
    body: bytes
    result: Result
    reason: str | None = None
    content_type: str = "application/json"


def _reject(message: str, status: int = 400) -> Outcome:
    return Outcome(
        status=status,
        body=f"bad AdmissionReview: {message}\n".encode(),
        result="rejected",
        reason=message,
        content_type="text/plain; charset=utf-8",
    )


def _answer(response: AdmissionResponse, result: Result, reason: str | None = None) -> Outcome:
    review: AdmissionReview = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }
    return Outcome(status=200, body=orjson.dumps(review), result=result, reason=reason)


def _parse(body: bytes) -> AdmissionRequest | str:
    """The request inside a review, or what is wrong with the review."""
    if len(body) > MAX_REVIEW_BYTES:
        return f"body of {len(body)} bytes exceeds {MAX_REVIEW_BYTES}"
    containers = body.count(b"{") + body.count(b"[")
    if containers > MAX_REVIEW_CONTAINERS:
        return f"{containers} JSON objects and arrays exceed {MAX_REVIEW_CONTAINERS}"
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    if not isinstance(review, dict):
        return "not a JSON object"
    if review.get("apiVersion") != "admission.k8s.io/v1" or review.get("kind") != "AdmissionReview":
        return "expected apiVersion admission.k8s.io/v1, kind AdmissionReview"
    request = review.get("request")
    if not isinstance(request, dict):
        return "no request"
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > _MAX_UID:
        return "request.uid missing or not a short string"
    kind = request.get("kind")
    if not isinstance(kind, dict) or not all(
        isinstance(kind.get(k), str) for k in ("group", "version", "kind")
    ):
        return "request.kind missing or not a group/version/kind"
    operation = request.get("operation")
    if not isinstance(operation, str):
        return "request.operation missing"
    if operation in ("CREATE", "UPDATE") and not isinstance(request.get("object"), dict):
        return f"request.object missing for {operation}"
    if request.get("oldObject") is not None and not isinstance(request.get("oldObject"), dict):
        return "request.oldObject is not an object"
    namespace = request.get("namespace", "")
    if not isinstance(namespace, str):
        return "request.namespace is not a string"
    return request  # type: ignore[return-value]  # checked field by field above


def _is(request: AdmissionRequest, group: str, version: str, kind: str) -> bool:
    gvk = request["kind"]
    return gvk["group"] == group and gvk["version"] == version and gvk["kind"] == kind


def mutate(body: bytes, config: InjectorConfig) -> Outcome:
    """Pods CREATE: the patch that injects the agent, or the pod unchanged."""
    request = _parse(body)
    if isinstance(request, str):
        return _reject(request)
    uid = request["uid"]
    try:
        if not _is(request, "", "v1", "Pod") or request.get("subResource"):
            return _answer({"uid": uid, "allowed": True}, "skipped", "not-a-pod")
        if request["operation"] != "CREATE":
            return _answer({"uid": uid, "allowed": True}, "skipped", "not-create")
        if request.get("namespace", "") in config.excluded_namespaces:
            return _answer({"uid": uid, "allowed": True}, "skipped", "excluded-namespace")
        injection = build_patch(request.get("object"), config)
        warnings = [f"tidescale: {w}" for w in injection.warnings]
        if injection.skipped is not None:
            response: AdmissionResponse = {"uid": uid, "allowed": True}
            return _answer(response, "skipped", injection.skipped)
        response = {
            "uid": uid,
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(orjson.dumps(injection.ops)).decode("ascii"),
        }
        if warnings:
            response["warnings"] = warnings
        return _answer(response, "injected")
    except Exception:
        _log.exception("mutating review %s failed; letting the pod through unchanged", uid)
        return _answer({"uid": uid, "allowed": True}, "error", "internal")


def _hints(annotations: Mapping[str, Any]) -> dict[str, str]:
    """The annotations under our prefix that are hints (not the agent's own)."""
    out: dict[str, str] = {}
    for key, value in annotations.items():
        if not isinstance(key, str) or not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :]
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in AGENT_OWNED):
            continue
        out[key] = value
    return out


def _annotations(obj: object) -> Mapping[str, Any] | None:
    """The object's annotations; None when they are not a map of strings."""
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        return None
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return None
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, Mapping) or not all(isinstance(v, str) for v in annotations.values()):
        return None
    return annotations


def _template_labelled(obj: Mapping[str, Any]) -> bool:
    template = (obj.get("spec") or {}).get("template") if isinstance(obj.get("spec"), Mapping) else None
    metadata = template.get("metadata") if isinstance(template, Mapping) else None
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(INJECT_LABEL) == "true"


def agent_identity(body: bytes) -> tuple[str, str] | None:
    """(namespace, ServiceAccount) of the pods of a hinted Deployment being created or updated: whose
    agent permissions the webhook checks (``bindings.BindingCheck``). None for anything else."""
    try:
        request = _parse(body)
        if isinstance(request, str) or not _is(request, "apps", "v1", "Deployment"):
            return None
        if request.get("subResource") or request["operation"] not in ("CREATE", "UPDATE"):
            return None
        obj = request.get("object") or {}
        annotations = _annotations(obj)
        if not annotations or not _hints(annotations):
            return None
        template = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        account = template.get("serviceAccountName") or template.get("serviceAccount") or "default"
        namespace = request.get("namespace") or (obj.get("metadata") or {}).get("namespace")
        if not isinstance(account, str) or not isinstance(namespace, str) or not namespace:
            return None
        return namespace, account
    except Exception:  # odd shapes are validate()'s to report; here they only mean "no check"
        return None


def validate(
    body: bytes,
    config: InjectorConfig,
    validator: HintValidator = validate_hints,
    *,
    extra_warnings: Sequence[str] = (),
) -> Outcome:
    """Deployments CREATE/UPDATE: hint problems as warnings, or a denial in strict mode.
    ``extra_warnings`` (a missing agent binding) are added whenever the Deployment has hints."""
    request = _parse(body)
    if isinstance(request, str):
        return _reject(request)
    uid = request["uid"]
    try:
        return _validate(request, config, validator, extra_warnings)
    except Exception:
        _log.exception("validating review %s failed; letting the Deployment through", uid)
        return _answer(
            {
                "uid": uid,
                "allowed": True,
                "warnings": ["tidescale could not check these hints (internal error)"],
            },
            "error",
            "internal",
        )


def _validate(
    request: AdmissionRequest, config: InjectorConfig, validator: HintValidator, extra: Sequence[str]
) -> Outcome:
    uid = request["uid"]
    if not _is(request, "apps", "v1", "Deployment") or request.get("subResource"):
        return _answer({"uid": uid, "allowed": True}, "skipped", "not-a-deployment")
    if request["operation"] not in ("CREATE", "UPDATE"):
        return _answer({"uid": uid, "allowed": True}, "skipped", "not-create-or-update")
    obj = request.get("object") or {}
    annotations = _annotations(obj)
    old_annotations = _annotations(request.get("oldObject"))
    if annotations is None or old_annotations is None:
        return _reject("metadata.annotations is not a map of strings")
    hints = _hints(annotations)
    # The wiring checks `tidescale lint` makes too (label placement, no trigger, ...): one wording.
    wiring = [f.message for f in workload_findings(obj) if f.severity == "warning"]
    if not hints and not wiring:
        return _answer({"uid": uid, "allowed": True}, "allowed")
    problems = validator(hints) if hints else ()
    warnings = [str(p) for p in problems] + wiring + (list(extra) if hints else [])
    # Strict mode refuses new or changed bad hints, never an unrelated update (a rollout,
    # the agent's status annotation) of a Deployment whose hints were already there.
    changed = request["operation"] == "CREATE" or hints != _hints(old_annotations)
    if problems and config.strict and changed:
        response: AdmissionResponse = {
            "uid": uid,
            "allowed": False,
            "status": {"code": 422, "reason": "Invalid", "message": str(HintsInvalid(problems))},
            "warnings": warnings,
        }
        return _answer(response, "denied")
    if warnings:
        return _answer({"uid": uid, "allowed": True, "warnings": warnings}, "warned")
    return _answer({"uid": uid, "allowed": True}, "allowed")
