"""Event sources: what a trigger measures, and how.

- ``base``: the contract (Measurement, MeasurementFailure, Scope, Source, TriggerSettings).
- ``registry``: trigger type -> settings parser and field docs; ``SourcePool`` (one connection
  per broker cluster per process); ``measure_safely`` (failures become MeasurementFailure).
- ``kafka``, ``rabbitmq``: one module per source; settings, pure arithmetic and broker I/O.
  The arithmetic lives in private modules (``_kafka_lag``, ``_rabbitmq_depth``) that import
  no broker client, re-exported by the public module.

A third source adds ``sources/<name>.py`` and one entry in each table of ``registry``.
Nothing here imports aiokafka, aio-pika or httpx at import time.
"""
