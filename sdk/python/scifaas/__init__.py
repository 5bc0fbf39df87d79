"""scifaas: run Python functions on named scifaas endpoints.

    from scifaas import Client, Executor

    def add(a, b):
        return a + b

    client = Client()                       # $SCIFAAS_URL, $SCIFAAS_TOKEN
    fid = client.register_function(add)
    task = client.run(1, 2, endpoint="perlmutter", function_id=fid)
    client.get_result(task, timeout=60)     # 3

    with Executor("perlmutter", client=client) as ex:
        list(ex.map(add, range(10), range(10)))

Arguments and results are JSON documents; functions travel as their source. A function
may name the container it runs in: ``register_function(f, container=Container("bwrap",
"/srv/images/sci"))``.
"""

from .client import Client, DEFAULT_URL
from .container import Container
from .errors import ScifaasError, TaskFailed, TaskPending, TaskTimeout
from .executor import Executor

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Container",
    "DEFAULT_URL",
    "Executor",
    "ScifaasError",
    "TaskFailed",
    "TaskPending",
    "TaskTimeout",
    "__version__",
]
