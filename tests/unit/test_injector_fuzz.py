"""Fuzz: generated malformed AdmissionReviews never crash a handler or get a 5xx, and every
patch the mutating handler produces applies cleanly (jsonpatch) to the pod it was made for.

"Never crash" includes the handlers' own safety net: an exception inside a handler becomes
a 200 whose result is ``error`` (fail open), so the test requires zero such results too.

A seeded generator (reproducible, fast) mutates valid pod and Deployment reviews: values
of the wrong type, dropped fields, awkward keys (``~``, ``/``, unicode), nulls where
arrays belong, truncated or corrupted bytes.
"""

from __future__ import annotations

import base64
import copy
import random
from collections import Counter
from typing import Any

import jsonpatch
import orjson

from tests.unit.test_patch import make_pod
from tests.unit.test_review import deployment, deployment_request, pod_request
from tidescale_injector.config import AGENT_NAME, InjectorConfig
from tidescale_injector.review import mutate, validate

CASES = 12_000
CONFIGS = (
    InjectorConfig(image="tidescale:fuzz", version="0", native_sidecars=True),
    InjectorConfig(image="tidescale:fuzz", version="0", native_sidecars=False, strict=True),
)
KEYS = [
    "a",
    "tidescale.io/inject",
    "x~y",
    "a/b",
    "~1",
    "/",
    "",
    "é",
    "tidescale.io/agent-cpu-request",
    "\u0000",
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(10 if depth < 3 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-(2**63), 2**63)
    if choice == 3:
        return rng.random() * 1e6
    if choice == 4:
        return rng.choice(["", "true", "Always", "10m", "64Gi", "-", "~", "/", "x" * 5000, "\u2603"])
    if choice == 5:
        return rng.choice(KEYS)
    if choice == 6:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))
    if choice == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found.extend(paths(child, (*prefix, key)))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(paths(child, (*prefix, index)))
    return found


def parent_of(root: Any, path: tuple[Any, ...]) -> Any:
    node = root
    for step in path[:-1]:
        node = node[step]
    return node


def mutate_tree(rng: random.Random, root: dict[str, Any]) -> None:
    for _ in range(rng.randrange(1, 4)):
        candidates = [p for p in paths(root) if p]
        if not candidates:
            return
        path = rng.choice(candidates)
        parent = parent_of(root, path)
        action = rng.randrange(4)
        if action == 0:
            parent[path[-1]] = random_value(rng)
        elif action == 1:
            del parent[path[-1]]
        elif action == 2 and isinstance(parent[path[-1]], dict):
            parent[path[-1]][rng.choice(KEYS)] = random_value(rng)
        elif isinstance(parent[path[-1]], list):
            parent[path[-1]].append(random_value(rng))


def plausible_pod(rng: random.Random) -> dict[str, Any]:
    """A pod the injector accepts, with the shapes that make patches tricky."""
    extra: dict[str, Any] = {}
    if rng.random() < 0.5:
        extra["initContainers"] = rng.choice([None, [], [{"name": "init", "image": "i"}]])
    if rng.random() < 0.5:
        extra["volumes"] = rng.choice([None, [], [{"name": "v", "emptyDir": {}}]])
    if rng.random() < 0.5:
        extra["automountServiceAccountToken"] = rng.choice([True, False])
    pod = make_pod(**extra)
    if rng.random() < 0.5:
        pod["metadata"]["annotations"] = {
            rng.choice(KEYS): str(random_value(rng)) for _ in range(rng.randrange(4))
        }
    return pod


def case(rng: random.Random) -> tuple[bytes, dict[str, Any] | None]:
    """One review body, and the pod it carries (for checking patches) when it parses."""
    kind = rng.randrange(10)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64))), None
    if kind <= 3:
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": pod_request(plausible_pod(rng)),
        }
    elif kind <= 7:
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": pod_request(plausible_pod(rng)),
        }
        mutate_tree(rng, review)
    else:
        annotations = {
            rng.choice(["tidescale.io/max-replicas", "tidescale.io/x", "other", "tidescale.io/status"]): "3"
        }
        request = deployment_request(
            deployment(annotations), rng.choice(["CREATE", "UPDATE"]), deployment({})
        )
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
        mutate_tree(rng, review)
    body = orjson.dumps(review, option=orjson.OPT_NON_STR_KEYS)
    if rng.random() < 0.05:
        body = body[: rng.randrange(len(body))]
    request = review.get("request")
    obj = request.get("object") if isinstance(request, dict) else None
    return body, obj if isinstance(obj, dict) else None


def test_ten_thousand_malformed_reviews_never_raise_in_a_handler_never_5xx_and_every_patch_applies() -> None:
    rng = random.Random(20261128)
    results: Counter[str] = Counter()
    for _ in range(CASES):
        body, pod = case(rng)
        config = rng.choice(CONFIGS)
        for handler in (mutate, validate):
            outcome = handler(body, config)
            assert outcome.status in (200, 400), (outcome.status, body[:300])
            results[f"{handler.__name__}:{outcome.result}"] += 1
            if outcome.status != 200:
                continue
            response = orjson.loads(outcome.body)["response"]
            assert isinstance(response["allowed"], bool)
            if "patch" in response:
                assert pod is not None
                ops = orjson.loads(base64.b64decode(response["patch"]))
                patched = jsonpatch.JsonPatch(ops).apply(copy.deepcopy(pod))
                names = [c.get("name") for c in patched["spec"].get("initContainers") or []] + [
                    c.get("name") for c in patched["spec"]["containers"]
                ]
                assert names.count(AGENT_NAME) == 1
    # A handler that raised answered 200 "error" (the fail-open net); that is a crash all the same.
    errors = {key: count for key, count in results.items() if key.endswith(":error")}
    assert not errors, f"handlers raised on {errors} reviews (see the logged tracebacks): {results}"
    # The generator must exercise every branch worth having: injections, skips, 400s, warnings.
    assert results["mutate:injected"] > 1000, results
    assert results["mutate:rejected"] > 1000, results
    assert results["mutate:skipped"] > 500, results
    assert results["validate:warned"] + results["validate:denied"] > 100, results
