"""``Client``: the service's REST API (``/v1``) as Python calls."""

import os
import threading
import time
import urllib.parse

from .container import container_document
from .errors import TaskPending, task_failed_from_view
from .serialize import check_name, dumps, encode_arguments, function_source
from .transport import Connection

__all__ = ["Client", "DEFAULT_URL", "TERMINAL_STATES", "default_url", "default_token"]

DEFAULT_URL = "http://127.0.0.1:8470"

TERMINAL_STATES = frozenset(("success", "failed", "cancelled"))

# The longest single long-poll `get_result` asks for; a longer timeout is several polls.
MAX_WAIT_PER_POLL = 60.0


def default_url():
    """``$SCIFAAS_URL``, else ``http://127.0.0.1:8470``."""
    return os.environ.get("SCIFAAS_URL") or DEFAULT_URL


def default_token():
    """``$SCIFAAS_TOKEN``, else the admin token of a local service
    (``$SCIFAAS_HOME/service/admin-token``, ``SCIFAAS_HOME`` defaulting to
    ``~/.scifaas``), else None."""
    token = os.environ.get("SCIFAAS_TOKEN")
    if token:
        return token.strip()
    home = os.environ.get("SCIFAAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".scifaas"
    )
    try:
        with open(os.path.join(home, "service", "admin-token")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def quote(segment):
    """One URL path segment."""
    return urllib.parse.quote(str(segment), safe="")


def seconds(value):
    """A duration for a query string: whole seconds as an integer, else milliseconds
    precision."""
    value = max(0.0, float(value))
    if value == int(value):
        return str(int(value))
    return ("%.3f" % value).rstrip("0").rstrip(".")


class Client:
    """A researcher's (or admin's) handle on a scifaas service.

    ``url`` defaults to ``$SCIFAAS_URL`` (else ``http://127.0.0.1:8470``), ``token`` to
    ``$SCIFAAS_TOKEN`` (else the local service's admin-token file). ``timeout`` bounds
    each wait for the service, in seconds (long-polls add the time they ask for).

    Each thread gets its own keep-alive connection, so a ``Client`` can be shared by
    threads.
    """

    def __init__(self, url=None, token=None, timeout=60.0):
        self.url = (url or default_url()).rstrip("/")
        self.token = token if token is not None else default_token()
        self.timeout = timeout
        # Fail on a malformed URL here, not at the first call.
        Connection(self.url, self.token)
        self._local = threading.local()

    def __repr__(self):
        return "Client(url=%r)" % self.url

    # -- plumbing -------------------------------------------------------------------

    def connection(self):
        """This thread's keep-alive connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = Connection(self.url, self.token)
        return conn

    def new_connection(self):
        """A connection of its own, for a thread that must be able to interrupt it."""
        return Connection(self.url, self.token)

    def request(self, method, path, body=None, timeout=None, conn=None, **kwargs):
        """One call to the service; ``body`` is a JSON-able document or bytes.

        Answers the decoded JSON document; raises ``ScifaasError`` (or ``TaskFailed`` /
        ``TaskTimeout`` for the invoke trigger) for an error answer.
        """
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = dumps(body, "the request body")
        conn = conn or self.connection()
        return conn.request(
            method,
            path,
            body=body,
            timeout=self.timeout if timeout is None else timeout,
            **kwargs,
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- service, users ---------------------------------------------------------------

    def health(self):
        """``{"status": "ok", "version": ...}``; needs no token."""
        return self.request("GET", "/v1/health")

    def create_token(self, user):
        """A new token for ``user`` (created if new). Needs the admin token."""
        return self.request("POST", "/v1/tokens", {"user": user})["token"]

    # -- functions ------------------------------------------------------------------

    def register_function(self, fn, name=None, description=None, container=None):
        """Register ``fn`` and answer its ``function_id``.

        ``fn`` is a Python function (sent as its source, decorators removed) or the
        source text itself, then with ``name`` saying which function it defines.
        ``container`` (a ``scifaas.Container`` or a dict ``{type, image, options?}``)
        makes every run of it happen inside that container; without one, it runs in the
        endpoint's default container, if the endpoint has one. Registering again makes
        a new id (functions are immutable).
        """
        if container is not None:
            container = container_document(container)
        if isinstance(fn, str):
            if name is None:
                raise ValueError("registering source text needs name= (the function to call)")
            check_name(name)
            source = fn
        else:
            source = function_source(fn, name)
            name = name or fn.__name__
            if description is None and fn.__doc__:
                description = fn.__doc__.strip()
        body = {"name": name, "source": source}
        if description is not None:
            body["description"] = description
        if container is not None:
            body["container"] = container
        return self.request("POST", "/v1/functions", body)["function_id"]

    def get_function(self, function_id):
        """``{function_id, name, source, description, container, created_at}``."""
        return self.request("GET", "/v1/functions/" + quote(function_id))

    # -- endpoints ------------------------------------------------------------------

    def create_endpoint(self, name):
        """Register an endpoint: ``{endpoint_id, name, agent_token}``."""
        return self.request("POST", "/v1/endpoints", {"name": name})

    def list_endpoints(self):
        """The caller's endpoints, as a list of endpoint views."""
        return self.request("GET", "/v1/endpoints")["endpoints"]

    def get_endpoint(self, name_or_id):
        """One endpoint's view: ``{endpoint_id, name, connected, managers, workers, ...}``."""
        return self.request("GET", "/v1/endpoints/" + quote(name_or_id))

    # -- tasks ------------------------------------------------------------------------

    def run(self, *args, endpoint, function_id, **kwargs):
        """Start ``function_id(*args, **kwargs)`` on ``endpoint``; answers the task id
        at once (fetch the result with ``get_result``)."""
        args_json, kwargs_json = encode_arguments(args, kwargs, "function %s" % (function_id,))
        body = b"".join(
            (
                b'{"endpoint":',
                dumps(endpoint, "endpoint"),
                b',"function_id":',
                dumps(function_id, "function_id"),
                b',"args":',
                args_json,
                b',"kwargs":',
                kwargs_json,
                b"}",
            )
        )
        return self.request("POST", "/v1/tasks", body)["task_ids"][0]

    def batch_run(self, endpoint, tasks):
        """Start many tasks on ``endpoint`` in one call; answers their ids in order.

        Each task is ``(function_id, args)``, ``(function_id, args, kwargs)`` or a dict
        ``{"function_id", "args", "kwargs"}``.
        """
        body = batch_body(endpoint, [task_triple(task) for task in tasks])
        return self.request("POST", "/v1/tasks", body)["task_ids"]

    def get_task(self, task_id, wait=None):
        """The task view ``{task_id, state, result?, error?, stdout, stderr,
        transitions, timing, ...}``. With ``wait`` (seconds) the service answers once
        the task is terminal or that time has passed."""
        path = "/v1/tasks/" + quote(task_id)
        timeout = self.timeout
        if wait is not None and wait > 0:
            path += "?wait=" + seconds(wait)
            timeout += wait
        return self.request("GET", path, timeout=timeout)

    def get_tasks(self, task_ids):
        """Many task views in one call: ``{"tasks": {id: view}, "unknown": [ids]}``."""
        return self.request("POST", "/v1/tasks/status", {"task_ids": list(task_ids)})

    def get_result(self, task_id, timeout=None):
        """The task's result.

        Raises ``TaskPending`` when it has not finished (after waiting up to ``timeout``
        seconds for it, if given) and ``TaskFailed`` when it failed.
        """
        if timeout is None or timeout <= 0:
            return result_of(self.get_task(task_id))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            view = self.get_task(task_id, wait=min(max(remaining, 0.001), MAX_WAIT_PER_POLL))
            if view.get("state") in TERMINAL_STATES or deadline - time.monotonic() <= 0:
                return result_of(view)

    def invoke(self, endpoint, function_id, document, timeout=None, with_task_id=False):
        """Call ``function_id(document)`` on ``endpoint`` and wait for its result (the
        HTTP trigger).

        Raises ``TaskFailed`` when the function raised or the task failed, and
        ``TaskTimeout`` (a ``TimeoutError`` carrying ``task_id``) when no result came
        within ``timeout`` seconds (the service's default: 30). With ``with_task_id``
        the answer is ``(result, task_id)``.
        """
        path = "/v1/endpoints/%s/functions/%s/invoke" % (quote(endpoint), quote(function_id))
        wait = 30.0
        if timeout is not None:
            path += "?timeout=" + seconds(timeout)
            wait = timeout
        result, headers = self.request(
            "POST",
            path,
            dumps(document, "the invoke document"),
            timeout=self.timeout + wait,
            want_headers=True,
        )
        if with_task_id:
            return result, headers.get("X-Scifaas-Task-Id")
        return result

    def results(self, after=None, timeout=None, max=None, conn=None):
        """One page of the caller's finished tasks: ``{"cursor", "tasks": [views]}``,
        oldest first, those finished after ``after``. Without ``after`` it answers the
        current cursor and no tasks; with ``timeout`` it waits up to that long for the
        first."""
        query = []
        if after is not None:
            query.append("after=" + quote(after))
        wait = 0.0
        if timeout is not None and timeout > 0:
            query.append("timeout=" + seconds(timeout))
            wait = timeout
        if max is not None:
            query.append("max=%d" % max)
        path = "/v1/results" + ("?" + "&".join(query) if query else "")
        return self.request("GET", path, timeout=self.timeout + wait, conn=conn)


def result_of(view):
    """The result of a task view; ``TaskPending`` / ``TaskFailed`` when it has none."""
    state = view.get("state")
    if state == "success":
        return view.get("result")
    if state in TERMINAL_STATES:
        raise task_failed_from_view(view)
    raise TaskPending(view.get("task_id"), state)


def task_triple(task):
    """``(function_id, args, kwargs)`` from the forms ``batch_run`` accepts."""
    if isinstance(task, dict):
        return task["function_id"], task.get("args") or (), task.get("kwargs") or {}
    if isinstance(task, (tuple, list)) and len(task) in (2, 3):
        function_id, args = task[0], task[1]
        kwargs = task[2] if len(task) == 3 else {}
        return function_id, args or (), kwargs or {}
    raise TypeError(
        "a task is (function_id, args), (function_id, args, kwargs) or a dict with "
        "function_id, args and kwargs; got %r" % (task,)
    )


def batch_body(endpoint, triples):
    """The ``POST /v1/tasks`` batch document for ``(function_id, args, kwargs)``
    triples, as bytes. Arguments already encoded as JSON bytes are spliced in as they
    are, so the executor encodes each argument list once, at submit."""
    parts = [b'{"endpoint":', dumps(endpoint, "endpoint"), b',"tasks":[']
    for index, (function_id, args, kwargs) in enumerate(triples):
        if not isinstance(args, (bytes, bytearray)) or not isinstance(
            kwargs, (bytes, bytearray)
        ):
            args, kwargs = encode_arguments(args, kwargs, "function " + str(function_id))
        if index:
            parts.append(b",")
        parts.append(b'{"function_id":')
        parts.append(dumps(function_id, "function_id"))
        parts.append(b',"args":')
        parts.append(args)
        if kwargs != b"{}":
            parts.append(b',"kwargs":')
            parts.append(kwargs)
        parts.append(b"}")
    parts.append(b"]}")
    return b"".join(parts)
