"""The webhook server: HTTPS on :mod:`tidescale.httpserver`, certificate reload, probes, metrics.

Endpoints: ``POST /mutate`` (pods), ``POST /validate`` (Deployments), ``GET /healthz``,
``GET /readyz``, ``GET /metrics`` (Prometheus text). The certificate and key are files
from a mounted Secret; their modification times are polled and a changed pair is loaded
into a new SSL context that every new connection uses, so a rotated certificate takes
effect without a restart (a pair that does not load yet, e.g. half-updated, keeps the
old one in place until the next poll).

Entry point: :func:`main` (``tidescale injector``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import ssl
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tidescale import _logging
from tidescale.httpserver import HttpServer, Limits, Request, Response
from tidescale_injector import review
from tidescale_injector.bindings import BindingCheck
from tidescale_injector.config import InjectorConfig, ServerSettings, parse_settings
from tidescale_injector.patch import SKIP_REASONS

if TYPE_CHECKING:
    from tidescale.kube import KubeClient

__all__ = ["CertReloader", "Injector", "Metrics", "detect_native_sidecars", "main", "ssl_context"]

_log = logging.getLogger("tidescale.injector")

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_DURATION = "tidescale_injector_admission_duration_seconds"
# Skips a labelled pod's owner should hear about (the others are routine: not labelled, re-invocation).
_LOGGED_SKIPS = frozenset({"host-network", "no-deployment", "volume-conflict", "malformed"})


class Metrics:
    """Counters and one latency histogram, rendered as Prometheus text."""

    def __init__(self) -> None:
        self.admissions: Counter[tuple[str, str]] = Counter()
        self.injections: Counter[str] = Counter()
        self.skips: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.cert_reloads = 0
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, webhook: str, outcome: review.Outcome, seconds: float, *, native: bool) -> None:
        self.admissions[(webhook, outcome.result)] += 1
        if outcome.result == "injected":
            self.injections["native" if native else "classic"] += 1
        elif outcome.result == "skipped" and outcome.reason:
            self.skips[outcome.reason] += 1
        elif outcome.result in ("rejected", "error"):
            self.errors[outcome.result] += 1
        counts = self._buckets.setdefault(webhook, [0] * (len(_BUCKETS) + 1))
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        counts[-1] += 1
        self._sums[webhook] = self._sums.get(webhook, 0.0) + seconds

    def render(self, connections: int = 0) -> bytes:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family(
            "tidescale_injector_admissions_total",
            "counter",
            "Admission reviews answered, by webhook and result.",
        )
        for (webhook, result), n in sorted(self.admissions.items()):
            out.append(f'tidescale_injector_admissions_total{{webhook="{webhook}",result="{result}"}} {n}')
        family("tidescale_injector_injections_total", "counter", "Pods the agent was injected into, by mode.")
        for mode, n in sorted(self.injections.items()):
            out.append(f'tidescale_injector_injections_total{{mode="{mode}"}} {n}')
        family("tidescale_injector_skips_total", "counter", "Pods left without an agent, by reason.")
        for reason, n in sorted(self.skips.items()):
            out.append(f'tidescale_injector_skips_total{{reason="{reason}"}} {n}')
        family(
            "tidescale_injector_errors_total", "counter", "Malformed reviews (rejected) and internal errors."
        )
        for kind, n in sorted(self.errors.items()):
            out.append(f'tidescale_injector_errors_total{{kind="{kind}"}} {n}')
        family(
            "tidescale_injector_certificate_reloads_total", "counter", "Certificate pairs loaded after start."
        )
        out.append(f"tidescale_injector_certificate_reloads_total {self.cert_reloads}")
        family(
            "tidescale_injector_connections_total", "counter", "Connections accepted (a TLS handshake each)."
        )
        out.append(f"tidescale_injector_connections_total {connections}")
        family("tidescale_injector_admission_duration_seconds", "histogram", "Time to answer one review.")
        for webhook, counts in sorted(self._buckets.items()):
            for bound, n in zip(_BUCKETS, counts, strict=False):
                out.append(f'{_DURATION}_bucket{{webhook="{webhook}",le="{bound}"}} {n}')
            label = f'webhook="{webhook}"'
            out.append(
                f'tidescale_injector_admission_duration_seconds_bucket{{{label},le="+Inf"}} {counts[-1]}'
            )
            out.append(
                f"tidescale_injector_admission_duration_seconds_sum{{{label}}} {self._sums[webhook]:.6f}"
            )
            out.append(f"tidescale_injector_admission_duration_seconds_count{{{label}}} {counts[-1]}")
        return ("\n".join(out) + "\n").encode()


def ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context for the pair; raises ``ssl.SSLError`` / ``OSError`` when it does not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    return context


def _signature(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...] | None:
    try:
        stats = [p.stat() for p in paths]  # follows the Secret volume's ..data symlink
    except OSError:
        return None
    return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)


@dataclass(kw_only=True, slots=True)
class CertReloader:
    """Polls the certificate and key files and swaps the server's SSL context when they change."""

    server: HttpServer
    cert_file: Path
    key_file: Path
    interval: float
    metrics: Metrics
    _loaded: tuple[tuple[int, int, int], ...] | None = None
    _failed: tuple[tuple[int, int, int], ...] | None = None

    def load_initial(self) -> None:
        self._loaded = _signature((self.cert_file, self.key_file))
        self.server.ssl_context = ssl_context(self.cert_file, self.key_file)

    def check(self) -> bool:
        """Load the pair if it changed; True when a new context is in place."""
        current = _signature((self.cert_file, self.key_file))
        if current is None or current == self._loaded:
            return False
        try:
            context = ssl_context(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            if current != self._failed:  # log each broken pair once, retry every poll
                _log.warning("certificate files changed but do not load yet (%s); keeping the old ones", exc)
                self.metrics.errors["certificate"] += 1
                self._failed = current
            return False
        self.server.ssl_context = context
        self._loaded = current
        self.metrics.cert_reloads += 1
        _log.info("loaded the new certificate from %s", self.cert_file)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()


async def detect_native_sidecars(kubeconfig: Path | None, wait: float = 5.0) -> bool:
    """Whether the API server is 1.29 or newer (native sidecars on by default).

    Any failure means False: a classic sidecar container works on every version.
    """
    # The agent's thin client: one GET needs neither kubernetes-asyncio nor aiohttp in the image.
    from tidescale.kube import KubeClient, KubeConfig

    try:
        config = KubeConfig.from_kubeconfig(kubeconfig) if kubeconfig is not None else KubeConfig.in_cluster()
        async with asyncio.timeout(wait), KubeClient(config, timeout=wait) as api:
            info = await api.server_version()
        major = int(re.sub(r"\D", "", str(info.get("major"))) or 0)
        minor = int(re.sub(r"\D", "", str(info.get("minor"))) or 0)
    except Exception as exc:
        _log.warning("could not read the API server's version (%s); injecting classic sidecars", exc)
        return False
    native = (major, minor) >= (1, 29)
    _log.info("API server %s.%s: %s sidecars", major, minor, "native" if native else "classic")
    return native


class Injector:
    """The running webhook server. ``await Injector.start(...)``, then ``await injector.stop()``."""

    def __init__(
        self, settings: ServerSettings, config: InjectorConfig, *, bindings: BindingCheck | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.bindings = bindings
        """Checks a hinted Deployment's agent binding (None: no API access, no check)."""
        self.metrics = Metrics()
        self._ready = False
        self.http = HttpServer(
            {
                "/mutate": {"POST": self._mutate},
                "/validate": {"POST": self._validate},
                "/healthz": {"GET": self._healthz},
                "/readyz": {"GET": self._readyz},
                "/metrics": {"GET": self._metrics},
            },
            host=settings.host,
            port=settings.port,
            # Three of the largest reviews at once; the API server sends far smaller ones, so a
            # flood of large bodies waits for room instead of growing the heap (issue 11, item 8).
            limits=Limits(
                max_body_bytes=settings.max_body_bytes,
                max_inflight_body_bytes=settings.max_inflight_body_bytes,
                request_timeout=10.0,
            ),
        )
        self.reloader = CertReloader(
            server=self.http,
            cert_file=settings.cert_file,
            key_file=settings.key_file,
            interval=settings.cert_reload_interval,
            metrics=self.metrics,
        )
        self._reload_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, settings: ServerSettings, config: InjectorConfig, *, bindings: BindingCheck | None = None
    ) -> Injector:
        """Load the certificate (raises ``OSError``/``ssl.SSLError`` if it does not) and listen."""
        injector = cls(settings, config, bindings=bindings)
        injector.reloader.load_initial()
        await injector.http.start()
        injector._reload_task = asyncio.create_task(injector.reloader.run(), name="tidescale-cert-reload")
        injector._ready = True
        return injector

    @property
    def port(self) -> int:
        return self.http.port

    async def stop(self) -> None:
        self._ready = False
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        await self.http.stop()

    def _respond(self, webhook: str, outcome: review.Outcome, started: float) -> Response:
        self.metrics.observe(
            webhook, outcome, time.perf_counter() - started, native=self.config.native_sidecars
        )
        if outcome.result == "rejected":
            _log.warning("%s: rejected a request: %s", webhook, outcome.reason)
        elif outcome.result == "skipped" and outcome.reason in _LOGGED_SKIPS:
            _log.info(
                "%s: a labelled pod gets no agent (%s): %s",
                webhook,
                outcome.reason,
                SKIP_REASONS[outcome.reason],
            )
        return Response(status=outcome.status, body=outcome.body, content_type=outcome.content_type)

    async def _mutate(self, request: Request) -> Response:
        started = time.perf_counter()
        return self._respond("mutate", review.mutate(request.body, self.config), started)

    async def _validate(self, request: Request) -> Response:
        started = time.perf_counter()
        extra: list[str] = []
        identity = review.agent_identity(request.body) if self.bindings is not None else None
        if self.bindings is not None and identity is not None:
            warning = await self.bindings.warning(*identity)
            extra = [warning] if warning else []
        return self._respond(
            "validate", review.validate(request.body, self.config, extra_warnings=extra), started
        )

    async def _healthz(self, request: Request) -> Response:
        return Response(body=b"ok\n")

    async def _readyz(self, request: Request) -> Response:
        return Response(body=b"ok\n") if self._ready else Response(status=503, body=b"not ready\n")

    async def _metrics(self, request: Request) -> Response:
        return Response(body=self.metrics.render(self.http.connections_accepted), content_type=_TEXT)


async def _serve(settings: ServerSettings, config: InjectorConfig) -> int:
    if settings.sidecar_mode == "auto":
        native = await detect_native_sidecars(settings.kubeconfig)
        config = InjectorConfig(
            image=config.image,
            image_pull_policy=config.image_pull_policy,
            port=config.port,
            native_sidecars=native,
            strict=config.strict,
            resources=config.resources,
            excluded_namespaces=config.excluded_namespaces,
            version=config.version,
            log_level=config.log_level,
            log_format=config.log_format,
        )
    api, bindings = _binding_check(settings)
    try:
        injector = await Injector.start(settings, config, bindings=bindings)
    except (OSError, ssl.SSLError) as exc:
        _log.error("cannot serve: %s", exc)
        if api is not None:
            await api.aclose()
        return 1
    _log.info(
        "serving on %s:%d (agent image %s, %s sidecars, strict %s)",
        settings.host,
        injector.port,
        config.image,
        "native" if config.native_sidecars else "classic",
        config.strict,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _log.info("stopping")
    await injector.stop()
    if api is not None:
        await api.aclose()
    return 0


def _binding_check(settings: ServerSettings) -> tuple[KubeClient | None, BindingCheck | None]:
    """The agent-binding check over the thin client; (None, None) where there is no API access."""
    from tidescale.kube import KubeClient, KubeConfig

    try:
        kube = (
            KubeConfig.from_kubeconfig(settings.kubeconfig)
            if settings.kubeconfig
            else KubeConfig.in_cluster()
        )
    except Exception as exc:
        _log.warning("no API access (%s): hinted Deployments' agent bindings are not checked", exc)
        return None, None
    api = KubeClient(kube, timeout=2.0)

    async def allowed(namespace: str, service_account: str) -> bool:
        answer = await api.review_subject_access(
            service_account=service_account,
            namespace=namespace,
            verb="update",
            group="coordination.k8s.io",
            resource="leases",
        )
        return answer.allowed

    return api, BindingCheck(allowed, cluster_role=settings.agent_cluster_role)


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """``tidescale injector [flags]``: serve until SIGTERM. Returns the exit status."""
    env = os.environ if environ is None else environ
    try:
        # --log-level / --log-format (and their TIDESCALE_LOG_* variables): one format for every role.
        rest, log_level, log_format = _logging.split_arguments(argv, env)
        _logging.configure(level=log_level, fmt=log_format)
    except ValueError as error:
        print(f"tidescale injector: {error}", file=sys.stderr)
        return 2
    settings, config = parse_settings(rest, env)
    import uvloop

    return uvloop.run(_serve(settings, config))
