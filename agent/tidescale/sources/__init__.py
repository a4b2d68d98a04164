"""Event sources: what a trigger measures, and how.

- ``base``: the contract (Measurement, MeasurementFailure, Scope, Source, TriggerSettings).
- ``_kind``: what a source folder hands the registry (SourceKind: settings class, field docs,
  parser, ``open``, ``endpoints``).
- ``registry``: trigger type -> SourceKind; ``SourcePool`` (one connection per broker cluster
  per process); ``measure_safely`` (failures become MeasurementFailure).
- one folder per source (``kafka/``, ``rabbitmq/``, ...): ``__init__`` defines ``KIND`` from the
  pure ``_settings`` module; the arithmetic lives in pure private modules and the broker I/O in
  ``_source``, imported only when a connection opens.

Adding a source is a new folder plus its ``KIND`` in the registry's table (docs/sources.md).
Nothing here imports a broker client (aiokafka, aio-pika, httpx, ...) at import time.
"""
