"""The rig's kubelet: registers a Node, binds pending pods to it and runs their containers here.

Each pod gets a network namespace and address of its own (tests/rig/network.py), its
volumes written under ``run_dir/pods/<ns>_<name>/volumes`` and bind-mounted at their
mountPath inside a private mount namespace per container, so a container sees
``/var/run/secrets/kubernetes.io/serviceaccount`` as on a node. Images map to local
commands in tests/rig/images.py. The runner lives in a thread with its own event loop
in the test process; ``stop()`` ends every container it started, by pid, and removes
every namespace it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.rig import images
from tests.rig._podapi import Api, ApiError, Json
from tests.rig._podenv import EnvError, container_env, expand, node_allocatable
from tests.rig._podprobe import run_action, wait_pid
from tests.rig._podvolumes import VolumeError, materialize, mount_script
from tests.rig.network import Network, PodNetwork

NODE_NAME = "rig-node"
BASE_PATH = f"{images.VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The kubelet backs off 10 s doubling to 5 min; the rig restarts faster so tests of
# crashing containers take seconds, with the same shape.
BACKOFF_START, BACKOFF_MAX = 1.0, 20.0
WATCH_SECONDS = 240


class PodRunnerError(RuntimeError):
    """The pod runner could not start (API server unreachable, node not registered)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(kw_only=True, slots=True)
class _Container:
    """The runtime state of one container (or init container) of a pod."""

    spec: Json
    init: bool
    sidecar: bool
    state: Json = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: Json = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    popen: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    started_event: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> Json:
        status: Json = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.popen is not None:
            status["containerID"] = f"rig://{self.popen.pid}"
        return status


class _Pod:
    """One pod bound to the node: its network, volumes, containers and status."""

    def __init__(self, runner: PodRunner, pod: Json) -> None:
        self.runner = runner
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.folder = runner.run_dir / "pods" / f"{self.namespace}_{self.name}"
        self.net: PodNetwork | None = None
        self.start_time = _now()
        self.init_done = False
        self.failed = False
        self.conditions: dict[str, Json] = {}
        spec = pod["spec"]
        self.init_containers = [
            _Container(spec=c, init=True, sidecar=c.get("restartPolicy") == "Always")
            for c in spec.get("initContainers") or []
        ]
        self.containers = [_Container(spec=c, init=False, sidecar=False) for c in spec["containers"]]
        self.mounts: dict[str, Path] = {}
        self.dirty = asyncio.Event()
        self.terminating = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.main_task: asyncio.Task[None] | None = None
        self.reporter: asyncio.Task[None] | None = None
        self.last_report: Json | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def log(self) -> logging.Logger:
        return self.runner.log

    def every_container(self) -> list[_Container]:
        return [*self.init_containers, *self.containers]

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def changed(self) -> None:
        self.dirty.set()

    # --- status -------------------------------------------------------------

    def _phase(self) -> str:
        if self.failed:
            return "Failed"
        if not self.init_done:
            return "Pending"
        policy = self.pod["spec"].get("restartPolicy", "Always")
        states = [c.state for c in self.containers]
        if all("terminated" in s for s in states):
            codes = [s["terminated"]["exitCode"] for s in states]
            if all(code == 0 for code in codes) and policy != "Always":
                return "Succeeded"
            if policy == "Never":
                return "Failed"
        if any(
            "running" in s or c.restart_count or "terminated" in s
            for s, c in zip(states, self.containers, strict=True)
        ):
            return "Running"
        return "Pending"

    def _condition(self, kind: str, ok: bool) -> Json:
        status = "True" if ok else "False"
        old = self.conditions.get(kind)
        if old is None or old["status"] != status:
            self.conditions[kind] = {"type": kind, "status": status, "lastTransitionTime": _now()}
            if kind == "Initialized" and not ok:
                self.conditions[kind]["reason"] = "ContainersNotInitialized"
            if kind in ("Ready", "ContainersReady") and not ok:
                self.conditions[kind]["reason"] = "ContainersNotReady"
        return {**self.conditions[kind], "lastProbeTime": None}

    def status(self) -> Json:
        sidecars = [c for c in self.init_containers if c.sidecar]
        containers_ready = (
            self.init_done
            and all(c.ready for c in self.containers)
            and all(c.ready for c in sidecars)
            and not self.terminating
        )
        gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []]
        reported = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}
        gates_ok = all(reported.get(g, {}).get("status") == "True" for g in gates)
        conditions = [
            self._condition("PodReadyToStartContainers", self.net is not None),
            self._condition("Initialized", self.init_done),
            self._condition("Ready", containers_ready and gates_ok),
            self._condition("ContainersReady", containers_ready),
            self._condition("PodScheduled", True),
        ]
        conditions += [reported[g] for g in gates if g in reported]
        status: Json = {
            "phase": self._phase(),
            "conditions": conditions,
            "hostIP": self.runner.node_address,
            "hostIPs": [{"ip": self.runner.node_address}],
            "startTime": self.start_time,
            "qosClass": (self.pod.get("status") or {}).get("qosClass", "BestEffort"),
            "initContainerStatuses": [c.status() for c in self.init_containers],
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.net is not None:
            status["podIP"] = self.net.address
            status["podIPs"] = [{"ip": self.net.address}]
        return status

    async def report_loop(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            status = self.status()
            comparable = {
                **status,
                "conditions": [{**c, "lastTransitionTime": ""} for c in status["conditions"]],
            }
            if comparable == self.last_report:
                continue
            try:
                updated = await self.runner.api.request(
                    "PATCH",
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                    body={"metadata": {"uid": self.uid}, "status": status},
                    content_type="application/merge-patch+json",
                )
            except ApiError as error:
                if error.status in (404, 409):
                    return  # the pod is gone (or replaced under the same name)
                self.log.warning("status of %s: %s", self.key, error)
                await asyncio.sleep(0.5)
                self.dirty.set()
                continue
            except Exception as error:  # the API server going away during teardown
                self.log.warning("status of %s: %r", self.key, error)
                await asyncio.sleep(0.5)
                self.dirty.set()
                continue
            self.pod = {**self.pod, "status": updated.get("status", status)}
            self.last_report = comparable

    # --- running ------------------------------------------------------------

    def view(self) -> Json:
        """The pod with the addresses the runner gave it, before any status report comes back:
        the downward API must see them in the container's very first env."""
        assert self.net is not None
        addresses = {
            "podIP": self.net.address,
            "podIPs": [{"ip": self.net.address}],
            "hostIP": self.runner.node_address,
            "hostIPs": [{"ip": self.runner.node_address}],
        }
        return {**self.pod, "status": {**(self.pod.get("status") or {}), **addresses}}

    async def fetch(self, kind: str, name: str) -> Json | None:
        try:
            return await self.runner.api.request("GET", f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def request_token(self, audience: str | None, expiration: int) -> str:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: Json = {
            "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
        }
        if audience:
            spec["audiences"] = [audience]
        review = await self.runner.api.request(
            "POST",
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(review["status"]["token"])

    async def run(self) -> None:
        self.reporter = self.spawn(self.report_loop())
        self.net = await asyncio.to_thread(self.runner.network.add_pod, f"{self.key}/{self.uid}")
        self.changed()
        while True:
            try:
                self.mounts = await materialize(
                    self.view(), self.folder / "volumes", fetch=self.fetch, request_token=self.request_token
                )
                break
            except (VolumeError, ApiError, OSError) as error:
                for c in self.every_container():
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": str(error)}}
                self.changed()
                self.log.warning("volumes of %s: %s", self.key, error)
                await asyncio.sleep(2)
        for c in self.every_container():
            c.state = {"waiting": {"reason": "PodInitializing"}}
        for c in self.init_containers:
            if c.sidecar:
                self.spawn(self.supervise(c))
                await c.started_event.wait()
                continue
            while True:
                code = await self.run_once(c)
                if code == 0:
                    break
                if self.pod["spec"].get("restartPolicy", "Always") == "Never":
                    self.failed = True
                    self.changed()
                    return
                await self.back_off(c)
        self.init_done = True
        self.changed()
        for c in self.containers:
            self.spawn(self.supervise(c))

    async def back_off(self, c: _Container) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** max(0, c.restart_count))
        c.restart_count += 1
        c.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.name}",
            }
        }
        self.changed()
        await asyncio.sleep(delay)

    async def start_process(self, c: _Container) -> subprocess.Popen[bytes] | None:
        """Starts the container's process; on a configuration error leaves it Waiting and returns None."""
        spec = c.spec
        assert self.net is not None
        try:
            c.env = await container_env(
                self.view(),
                spec,
                fetch=self.fetch,
                service_host=self.runner.api_host,
                service_port=self.runner.api_port,
            )
            base = images.lookup(spec["image"])
            argv = images.container_argv(spec["image"], spec.get("command"), spec.get("args"))
        except images.UnknownImage as error:
            c.state = {"waiting": {"reason": "ErrImagePull", "message": str(error)}}
            self.changed()
            return None
        except (EnvError, ApiError, StopIteration) as error:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
            self.changed()
            return None
        argv = [expand(a, c.env) for a in argv]
        mounts = []
        for mount in spec.get("volumeMounts") or []:
            source = self.mounts[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
            self.runner.ensure_mount_point(Path(mount["mountPath"]), is_file=source.is_file())
            mounts.append((source, mount["mountPath"], bool(mount.get("readOnly"))))
        script = mount_script(mounts, argv, spec.get("workingDir") or base.workdir)
        env = {"PATH": BASE_PATH, "HOME": "/root", **c.env}
        log = self.runner.run_dir / "logs" / f"pod_{self.namespace}_{self.name}_{c.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"--- {_now()} start {argv}\n".encode())
            out.flush()
            # Popen only forks and execs; exits are awaited on a pidfd (wait_pid).
            popen = subprocess.Popen(  # noqa: ASYNC220
                [*self.net.exec_prefix(), "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        c.popen = popen
        c.state = {"running": {"startedAt": _now()}}
        self.changed()
        return popen

    def record_exit(self, c: _Container, popen: subprocess.Popen[bytes], started_at: str) -> int:
        code = popen.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(
                popen.pid, signal.SIGKILL
            )  # whatever it left behind dies with it, as in a pid namespace
        terminated: Json = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": _now(),
            "containerID": f"rig://{popen.pid}",
        }
        if code < 0:
            terminated["signal"] = -code
        c.state = {"terminated": terminated}
        c.ready = False
        c.started = False
        self.changed()
        return int(terminated["exitCode"])

    async def run_once(self, c: _Container) -> int | None:
        """A regular init container: run to completion; None if it could not start."""
        popen = await self.start_process(c)
        if popen is None:
            await asyncio.sleep(2)
            return None
        started_at = c.state["running"]["startedAt"]
        await wait_pid(popen)
        return self.record_exit(c, popen, started_at)

    async def supervise(self, c: _Container) -> None:
        """A sidecar or regular container: run, probe, restart by the pod's policy until stopped."""
        policy = "Always" if c.sidecar else self.pod["spec"].get("restartPolicy", "Always")
        while not c.stopping:
            popen = await self.start_process(c)
            if popen is None:
                await asyncio.sleep(2)
                continue
            started_at = c.state["running"]["startedAt"]
            probes = self.spawn(self.probe(c, popen))
            await wait_pid(popen)
            probes.cancel()
            code = self.record_exit(c, popen, started_at)
            if c.stopping or policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            c.last_state = c.state
            await self.back_off(c)

    async def probe(self, c: _Container, popen: subprocess.Popen[bytes]) -> None:
        spec = c.spec
        startup = spec.get("startupProbe")
        if startup is not None and not await self.probe_until(c, popen, startup, want=True):
            return
        c.started = True
        c.started_event.set()
        self.changed()
        readiness, liveness = spec.get("readinessProbe"), spec.get("livenessProbe")
        if readiness is None:
            c.ready = True
            self.changed()
        tasks = []
        if readiness is not None:
            tasks.append(self.readiness(c, popen, readiness))
        if liveness is not None:
            tasks.append(self.liveness(c, popen, liveness))
        await asyncio.gather(*tasks)

    async def check(self, c: _Container, popen: subprocess.Popen[bytes], probe: Json) -> bool:
        assert self.net is not None
        return await run_action(
            probe,
            container=c.spec,
            pod_ip=self.net.address,
            pid=popen.pid,
            env={"PATH": BASE_PATH, **c.env},
            within=float(probe.get("timeoutSeconds", 1)),
        )

    async def probe_until(
        self, c: _Container, popen: subprocess.Popen[bytes], probe: Json, *, want: bool
    ) -> bool:
        """Startup probe: True once it succeeds; after failureThreshold failures kill the container."""
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        failures = 0
        while True:
            if await self.check(c, popen, probe) == want:
                return True
            failures += 1
            if failures >= int(probe.get("failureThreshold", 3)):
                self.log.info("%s/%s failed its startup probe; killing it", self.key, c.name)
                await self.kill(c, popen, grace=self.grace())
                return False
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def readiness(self, c: _Container, popen: subprocess.Popen[bytes], probe: Json) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        successes = failures = 0
        while True:
            if await self.check(c, popen, probe):
                successes, failures = successes + 1, 0
                if successes >= int(probe.get("successThreshold", 1)) and not c.ready:
                    c.ready = True
                    self.changed()
            else:
                successes, failures = 0, failures + 1
                if failures >= int(probe.get("failureThreshold", 3)) and c.ready:
                    c.ready = False
                    self.changed()
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def liveness(self, c: _Container, popen: subprocess.Popen[bytes], probe: Json) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        failures = 0
        while True:
            if await self.check(c, popen, probe):
                failures = 0
            else:
                failures += 1
                if failures >= int(probe.get("failureThreshold", 3)):
                    self.log.info("%s/%s failed its liveness probe; restarting it", self.key, c.name)
                    await self.kill(c, popen, grace=self.grace())
                    return
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    def grace(self) -> float:
        meta = self.pod["metadata"]
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    async def kill(self, c: _Container, popen: subprocess.Popen[bytes], *, grace: float) -> None:
        """SIGTERM to the container's process, SIGKILL to its whole group after ``grace`` seconds."""
        if popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGTERM)
        if await wait_pid(popen, max(grace, 0.0)) is None:
            self.log.info("%s/%s outlived its grace period; SIGKILL", self.key, c.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            await wait_pid(popen)

    async def stop(self, grace: float) -> None:
        """Stops every container: regular ones first, then sidecars in reverse order, within ``grace``."""
        self.terminating = True
        self.changed()
        if self.main_task is not None:
            self.main_task.cancel()
        deadline = time.monotonic() + grace
        for c in self.every_container():
            c.stopping = True
        regular = [c for c in self.containers + [i for i in self.init_containers if not i.sidecar]]
        await self.pre_stop(regular, deadline)
        await asyncio.gather(*(self.kill_container(c, deadline) for c in regular))
        for c in reversed([i for i in self.init_containers if i.sidecar]):
            await self.pre_stop([c], deadline)
            await self.kill_container(c, deadline)
        for task in list(self.tasks):
            if task is not self.reporter:
                task.cancel()

    async def pre_stop(self, containers: list[_Container], deadline: float) -> None:
        async def one(c: _Container) -> None:
            hook = (c.spec.get("lifecycle") or {}).get("preStop")
            if hook is None or c.popen is None or c.popen.poll() is not None:
                return
            await self.check(c, c.popen, {**hook, "timeoutSeconds": max(0.0, deadline - time.monotonic())})

        await asyncio.gather(*(one(c) for c in containers))

    async def kill_container(self, c: _Container, deadline: float) -> None:
        if c.popen is not None:
            await self.kill(c, c.popen, grace=deadline - time.monotonic())

    def live_pids(self) -> list[int]:
        return [c.popen.pid for c in self.every_container() if c.popen is not None and c.popen.poll() is None]


class PodRunner:
    """Stands in for the kubelet of one node, ``rig-node``, against the rig's API server."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        server: str,
        network: Network,
        run_dir: Path,
        node_name: str = NODE_NAME,
        stop_grace: float = 10.0,
        bind_pending: bool = True,
    ) -> None:
        url = urllib.parse.urlsplit(server)
        self.kubeconfig = kubeconfig
        self.api_host = url.hostname or network.node_address
        self.api_port = url.port or 443
        self.network = network
        self.node_address = network.node_address
        self.run_dir = run_dir
        self.node_name = node_name
        self.stop_grace = stop_grace
        # Only one runner per API server may play the scheduler; a second one runs only
        # the pods that name its node.
        self.bind_pending = bind_pending
        self.pods: dict[str, _Pod] = {}
        self.api: Api
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._created_paths: list[Path] = []
        self._binding: set[str] = set()
        self.log = logging.getLogger(f"tidescale.rig.podrunner.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "logs" / "pod-runner.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)

    # --- lifecycle of the runner --------------------------------------------

    def start(self, timeout: float = 30.0) -> PodRunner:
        """Starts the runner's thread and returns once its Node is registered."""
        self._thread = threading.Thread(target=self._thread_main, name="rig-pod-runner", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._failure is not None:
            self.stop()
            raise PodRunnerError(f"pod runner did not register node {self.node_name}: {self._failure!r}")
        return self

    def stop(self) -> None:
        """Ends every container it started (by pid) and removes every pod namespace it made."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=self.stop_grace + 30)
        self._remove_mount_points()

    def pod_pids(self) -> dict[str, list[int]]:
        """``namespace/name`` -> pids of the pod's live container processes (for tests)."""
        return {pod.key: pod.live_pids() for pod in list(self.pods.values())}

    def pod_netns(self) -> dict[str, str]:
        """``namespace/name`` -> the network namespace the runner made for the pod (for tests)."""
        return {pod.key: pod.net.namespace for pod in list(self.pods.values()) if pod.net is not None}

    def log_path(self, namespace: str, name: str, container: str) -> Path:
        return self.run_dir / "logs" / f"pod_{namespace}_{name}_{container}.log"

    def ensure_mount_point(self, path: Path, *, is_file: bool) -> None:
        """Creates a missing mount point on this machine, remembered so ``stop`` removes it."""
        if path.exists():
            return
        missing = [p for p in [path, *path.parents] if not p.exists()]
        for p in reversed(missing):
            if p == path and is_file:
                p.touch()
            else:
                p.mkdir(exist_ok=True)
            self._created_paths.append(p)

    def _remove_mount_points(self) -> None:
        for p in reversed(self._created_paths):
            with contextlib.suppress(OSError):
                p.unlink() if p.is_file() else p.rmdir()
        self._created_paths.clear()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:
            self._failure = error
            self.log.exception("pod runner failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.api = await Api.from_kubeconfig(self.kubeconfig)
        try:
            await self._register_node()
            self._ready.set()
            tasks = [asyncio.create_task(self._watch_pods()), asyncio.create_task(self._heartbeat())]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(self._end_pod(pod, delete=False) for pod in list(self.pods.values())))
        finally:
            await self.api.close()

    # --- the node -----------------------------------------------------------

    def _node_status(self) -> Json:
        now = _now()
        condition = {"lastHeartbeatTime": now, "lastTransitionTime": now}
        allocatable = node_allocatable()
        return {
            "capacity": allocatable,
            "allocatable": allocatable,
            "addresses": [
                {"type": "InternalIP", "address": self.node_address},
                {"type": "Hostname", "address": self.node_name},
            ],
            "conditions": [
                {**condition, "type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "the rig's pod runner is posting ready status"},
                {**condition, "type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},  # noqa: E501
                {**condition, "type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure"},  # noqa: E501
                {**condition, "type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "rig", "systemUUID": "rig", "bootID": "rig",
                "kernelVersion": platform.release(), "osImage": "tidescale rig",
                "containerRuntimeVersion": "rig://1", "kubeletVersion": "v0.0.0-rig",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }  # fmt: skip

    async def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        try:
            await self.api.request("POST", "/api/v1/nodes", body=node)
        except ApiError as error:
            if error.status != 409:
                raise
        await self._post_node_status()
        await self._renew_lease()

    async def _post_node_status(self) -> None:
        await self.api.request(
            "PATCH",
            f"/api/v1/nodes/{self.node_name}/status",
            body={"status": self._node_status()},
            content_type="application/merge-patch+json",
        )

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": _micro_now()}
        try:
            await self.api.request(
                "PATCH", path, body={"spec": spec}, content_type="application/merge-patch+json"
            )
        except ApiError as error:
            if error.status != 404:
                raise
            await self.api.request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": self.node_name}, "spec": spec},
            )  # fmt: skip

    async def _heartbeat(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(10)
            beats += 1
            try:
                await self._renew_lease()
                if beats % 6 == 0:
                    await self._post_node_status()
            except Exception as error:
                self.log.warning("node heartbeat: %r", error)

    # --- pods ---------------------------------------------------------------

    async def _watch_pods(self) -> None:
        while True:
            try:
                listing = await self.api.request("GET", "/api/v1/pods")
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self._on_pod(pod)
                for uid, gone in list(self.pods.items()):
                    if uid not in seen:
                        self._on_deleted(gone.pod)
                version = listing["metadata"]["resourceVersion"]
                while True:
                    query = {
                        "resourceVersion": version,
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": WATCH_SECONDS,
                    }
                    async for event in self.api.watch("/api/v1/pods", query=query):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise ApiError("WATCH", "/api/v1/pods", int(obj.get("code", 500)), str(obj))
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._on_pod(obj)
                        elif event["type"] == "DELETED":
                            self._on_deleted(obj)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.log.warning("pod watch: %r; listing again", error)
                await asyncio.sleep(1)

    def _on_pod(self, pod: Json) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        deleting = meta.get("deletionTimestamp") is not None
        if not spec.get("nodeName"):
            ours = spec.get("schedulerName", "default-scheduler") == "default-scheduler"
            if self.bind_pending and not deleting and ours and uid not in self._binding:
                self._binding.add(uid)
                asyncio.get_running_loop().create_task(self._bind(pod))
            return
        if spec["nodeName"] != self.node_name:
            return
        running = self.pods.get(uid)
        if running is None:
            phase = (pod.get("status") or {}).get("phase")
            if deleting:
                asyncio.get_running_loop().create_task(self._delete_now(pod))
                return
            if phase in ("Succeeded", "Failed"):
                return
            running = _Pod(self, pod)
            self.pods[uid] = running
            self.log.info("pod %s/%s: starting", meta["namespace"], meta["name"])
            running.main_task = running.spawn(running.run())
            return
        running.pod = {**pod, "status": running.pod.get("status")}
        if deleting and not running.terminating:
            self.log.info("pod %s: deleted, grace %.0fs", running.key, running.grace())
            asyncio.get_running_loop().create_task(self._end_pod(running, delete=True))

    def _on_deleted(self, pod: Json) -> None:
        running = self.pods.get(pod["metadata"]["uid"])
        if running is not None and not running.terminating:
            self.log.info("pod %s: removed outright; stopping its containers", running.key)
            asyncio.get_running_loop().create_task(self._end_pod(running, delete=False))

    async def _bind(self, pod: Json) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            await self.api.request(
                "POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body=binding
            )
        except ApiError as error:
            self.log.warning("binding %s/%s: %s", meta["namespace"], meta["name"], error)
        finally:
            self._binding.discard(meta["uid"])

    async def _delete_now(self, pod: Json) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            await self.api.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    async def _end_pod(self, pod: _Pod, *, delete: bool) -> None:
        grace = pod.grace() if delete else min(pod.grace(), self.stop_grace)
        try:
            await pod.stop(grace)
            if delete:
                await self._delete_now(pod.pod)
        finally:
            for task in list(pod.tasks):
                task.cancel()
            await asyncio.gather(*pod.tasks, return_exceptions=True)
            await asyncio.to_thread(self.network.remove_pod, f"{pod.key}/{pod.uid}")
            self.pods.pop(pod.uid, None)
            self.log.info("pod %s: stopped", pod.key)
