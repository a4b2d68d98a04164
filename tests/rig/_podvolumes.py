"""A pod's volumes as files on this machine, one folder per volume, before its containers start."""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.rig._podenv import field_ref, resource_field

Json = dict[str, Any]
Fetch = Callable[[str, str], Awaitable[Json | None]]
RequestToken = Callable[[str | None, int], Awaitable[str]]  # (audience, expirationSeconds) -> token


class VolumeError(RuntimeError):
    """A volume's source is missing (the kubelet keeps the pod in ContainerCreating)."""


def _write(root: Path, relative: str, content: bytes, mode: int | None) -> None:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    target.chmod(mode if mode is not None else 0o644)


def _object_files(obj: Json) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    secret = obj.get("kind") == "Secret"
    for key, value in (obj.get("data") or {}).items():
        files[key] = base64.b64decode(value) if secret else value.encode()
    for key, value in (obj.get("binaryData") or {}).items():
        files[key] = base64.b64decode(value)
    return files


async def _keyed(
    root: Path, kind: str, source: Json, fetch: Fetch, default_mode: int | None, name_key: str = "name"
) -> None:
    name = source[name_key]
    obj = await fetch(kind, name)
    if obj is None:
        if source.get("optional"):
            return
        raise VolumeError(f"{kind[:-1]} {name!r} not found")
    files = _object_files(obj)
    items = source.get("items")
    if not items:
        for key, content in files.items():
            _write(root, key, content, default_mode)
        return
    for item in items:
        if item["key"] not in files:
            if source.get("optional"):
                continue
            raise VolumeError(f"{kind[:-1]} {name!r} has no key {item['key']!r}")
        _write(root, item["path"], files[item["key"]], item.get("mode", default_mode))


def _downward(root: Path, pod: Json, items: list[Json], default_mode: int | None) -> None:
    containers = {
        c["name"]: c for c in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    }
    for item in items:
        if "fieldRef" in item:
            value = field_ref(pod, item["fieldRef"]["fieldPath"])
        else:
            ref = item["resourceFieldRef"]
            value = resource_field(containers[ref["containerName"]], ref)
        _write(root, item["path"], value.encode(), item.get("mode", default_mode))


async def materialize(
    pod: Json, folder: Path, *, fetch: Fetch, request_token: RequestToken
) -> dict[str, Path]:
    """Writes every volume of ``pod`` under ``folder``; returns volume name -> host path to mount."""
    paths: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            host = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                host.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (local and instant)
            paths[name] = host
            continue
        root = folder / name
        root.mkdir(parents=True, exist_ok=True)
        paths[name] = root
        if "emptyDir" in volume:
            root.chmod(0o777)
        elif "secret" in volume:
            source = volume["secret"]
            await _keyed(root, "secrets", source, fetch, source.get("defaultMode"), "secretName")
        elif "configMap" in volume:
            source = volume["configMap"]
            await _keyed(root, "configmaps", source, fetch, source.get("defaultMode"))
        elif "downwardAPI" in volume:
            source = volume["downwardAPI"]
            _downward(root, pod, source.get("items") or [], source.get("defaultMode"))
        elif "projected" in volume:
            mode = volume["projected"].get("defaultMode")
            for part in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in part:
                    token_source = part["serviceAccountToken"]
                    token = await request_token(
                        token_source.get("audience"), int(token_source.get("expirationSeconds", 3600))
                    )
                    _write(root, token_source["path"], token.encode(), mode)
                elif "configMap" in part:
                    await _keyed(root, "configmaps", part["configMap"], fetch, mode)
                elif "secret" in part:
                    await _keyed(root, "secrets", part["secret"], fetch, mode)
                elif "downwardAPI" in part:
                    _downward(root, pod, part["downwardAPI"].get("items") or [], mode)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise VolumeError(f"volume {name!r} of kind {kinds} is not supported by the rig's pod runner")
    return paths


def mount_script(mounts: list[tuple[Path, str, bool]], argv: list[str], workdir: str) -> str:
    """Shell text run inside a fresh private mount namespace: bind each volume, then exec the command."""
    import shlex

    lines = ["set -e"]
    for source, target, read_only in mounts:
        lines.append(f"mount --bind {shlex.quote(os.fspath(source))} {shlex.quote(target)}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
    lines.append(f"cd {shlex.quote(workdir)}")
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines)
