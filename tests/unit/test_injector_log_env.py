"""The chart's ``logLevel`` (and the log format) reach the agent: the injector passes its own
TIDESCALE_LOG_LEVEL / TIDESCALE_LOG_FORMAT on in the injected container's environment."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from tidescale_injector.config import AGENT_NAME, parse_settings
from tidescale_injector.patch import build_patch

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "generateName": "web-7d9f8c6b5-",
        "namespace": "shop",
        "labels": {"app": "web", "tidescale.io/inject": "true", "pod-template-hash": "7d9f8c6b5"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-7d9f8c6b5",
                "controller": True,
                "uid": "u",
            }
        ],
    },
    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
}


def agent_env(environ: dict[str, str]) -> dict[str, str]:
    _, config = parse_settings(["--agent-image", "tidescale:test"], environ)
    pod = jsonpatch.JsonPatch(list(build_patch(POD, config).ops)).apply(copy.deepcopy(POD))
    spec = pod["spec"]
    (agent,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == AGENT_NAME]
    return {item["name"]: item.get("value") for item in agent["env"]}


def test_the_injectors_log_level_and_format_reach_the_agent_container() -> None:
    env = agent_env({"TIDESCALE_LOG_LEVEL": "DEBUG", "TIDESCALE_LOG_FORMAT": "text"})
    assert env["TIDESCALE_LOG_LEVEL"] == "debug"
    assert env["TIDESCALE_LOG_FORMAT"] == "text"


def test_without_settings_the_agent_logs_at_info_in_its_default_format() -> None:
    env = agent_env({})
    assert env["TIDESCALE_LOG_LEVEL"] == "info"
    assert "TIDESCALE_LOG_FORMAT" not in env
