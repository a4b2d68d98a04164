"""The ``tidescale`` command: one image, several roles, each imported only when chosen.

    tidescale agent      the sidecar beside every opted-in pod
    tidescale injector   the admission webhooks
    tidescale waker      the cluster-level waker that owns zero
    tidescale status     what tidescale is doing, one line per Deployment
    tidescale explain    why a Deployment is at its count, and what comes next
    tidescale check      preflight: webhooks, waker, RBAC, API server version
    tidescale migrate    KEDA ScaledObjects -> tidescale hints
    tidescale lint FILE  check the hints of Deployment manifests (YAML or JSON)
    tidescale version

The agent is paid for in every pod, so nothing here imports more than the chosen
role needs: the commands people run (status, explain, check) load kubernetes-asyncio
only when they run, and the in-cluster roles never do.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

# role -> (module, function); the function takes the remaining argv and returns an exit code.
_ROLES: dict[str, tuple[str, str, str]] = {
    "agent": ("tidescale.agent", "main", "run the sidecar agent beside a workload"),
    "injector": ("tidescale_injector.server", "main", "serve the admission webhooks"),
    "waker": ("tidescale.waker", "main", "run the cluster-level waker"),
    "status": ("tidescale._cli_status", "main", "what tidescale is doing, one line per Deployment"),
    "explain": ("tidescale._cli_explain", "main", "why a Deployment is at its count, and what comes next"),
    "check": ("tidescale._cli_check", "main", "preflight: webhooks, waker, agent RBAC, API server version"),
    "migrate": ("tidescale._cli_migrate", "main", "KEDA ScaledObjects -> the Deployment's tidescale hints"),
    "lint": ("tidescale.lint", "main", "check the tidescale hints of Deployment manifests"),
}


def _usage() -> str:
    lines = ["usage: tidescale <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in _ROLES.items()]
    lines.append(f"  {'version':<10} print the version")
    lines += [
        "",
        "Every command has --help with examples. status, explain and check take kubectl's",
        "--kubeconfig, --context and -n.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in {"version", "--version"}:
        from importlib.metadata import version

        print(f"tidescale {version('tidescale')}")
        return 0
    if command not in _ROLES:
        print(f"tidescale: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = _ROLES[command]
    entry: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), function_name)
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main())
