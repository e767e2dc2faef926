"""kvlog's web console: a Starlette app served by uvicorn in its own process under the
supervisor (role ``console``), talking to the broker only through kvlog's clients
(:class:`kvlog.Admin`, a group-less :class:`kvlog.Consumer`), exactly as the CLI does.

Modules: ``listen`` (the ``console_listen`` setting), ``view`` (what each page shows,
gathered from the clients), ``records`` (a record's key/value as text, JSON or hex),
``app`` (routes, CSRF), ``server`` (the process: socket, uvicorn, stop).

This package's ``__init__`` stays import-light: workers/config.py imports ``listen``.
"""
