# One image, three roles: `tidescale agent | injector | waker`.
# Builder: installs tidescale and its dependencies into a virtual environment.
# Final: the slim Python base plus that environment; no compilers, no pip caches,
# a numeric non-root user, and nothing written outside /tmp (read-only root works).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/tidescale
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY sidecar-injector ./sidecar-injector
# The base dependencies only: what the agent, the injector and the waker import. The CLI's own
# (kubernetes-asyncio, PyYAML: the `cli` extra) stay out of the image.
RUN /opt/tidescale/bin/pip install --no-compile . \
 && /opt/tidescale/bin/python -m compileall -q /opt/tidescale/lib \
 && /opt/tidescale/bin/pip uninstall -y pip setuptools

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="tidescale" \
      org.opencontainers.image.description="Event-driven autoscaling for Kubernetes from inside the workload" \
      org.opencontainers.image.source="https://github.com/tidescale/tidescale" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tidescale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/tidescale /opt/tidescale
USER 65532:65532
ENTRYPOINT ["tidescale"]
CMD ["--help"]
