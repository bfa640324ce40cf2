"""The config's floor: what every section builder and feature builds on, importing no feature.

- ``values``: durations, sizes, ``${ENV}`` interpolation;
- ``reader``: ``Node``/``Report``, the cursor over raw YAML that reports ``key.path: message``;
- ``model``: the frozen section objects; ``errors``: ``ConfigError``;
- ``core`` and ``routes``: the builders of the sections every gateway has;
- ``effective``: the config as printable data, secrets masked.

Each feature's section builder sits beside the feature (``gateway/<feature>/schema.py``); the
whole config (``gateway.config_model``) is assembled and loaded by ``gateway.config_schema``.
"""
