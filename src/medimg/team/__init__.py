"""Team mode on one machine: PostgreSQL 15 and an MLflow tracking server (`medimg stack`).

postgres.py runs the cluster, mlflow_server.py the tracking server's process,
stack.py puts both in one folder and is the `medimg stack` command. The test
fixtures (tests/conftest.py) start their servers through the same code.
"""

from medimg.errors import UserError


class StackError(UserError, RuntimeError):
    """The team stack cannot start, stop or be found (binaries, ports, folder, a dead server)."""


def url_host(host: str) -> str:
    """`host` as written in a URL: an IPv6 address needs brackets."""
    return f"[{host}]" if ":" in host else host
