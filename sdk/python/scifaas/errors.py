"""The exceptions the SDK raises, and the mapping from the service's answers to them."""

__all__ = [
    "ScifaasError",
    "TaskFailed",
    "TaskPending",
    "TaskTimeout",
    "task_failed_from_view",
    "error_from_response",
]


class ScifaasError(Exception):
    """The service answered an HTTP error: ``status`` (404), ``code`` (the stable
    kebab-case word, ``"not-found"``) and ``message`` (its explanation). ``body`` is the
    whole decoded error document when there was one."""

    def __init__(self, status, code, message, body=None):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body

    def __reduce__(self):
        return (type(self), (self.status, self.code, self.message, self.body))

    def __str__(self):
        return "HTTP %s %s: %s" % (self.status, self.code, self.message)


class TaskFailed(Exception):
    """A task ended without a result.

    ``kind`` says who failed: ``"function-exception"`` when the function itself raised
    (then ``type_name``, ``message`` and ``traceback`` are Python's, from the worker), or
    a system failure (``"walltime"``, ``"worker-died"``, ``"manager-lost"``,
    ``"cancelled"``, ...). ``str()`` shows the remote traceback.
    """

    def __init__(self, task_id, kind, type_name, message, traceback=None):
        super().__init__(task_id, kind, type_name, message, traceback)
        self.task_id = task_id
        self.kind = kind
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self):
        head = "task %s failed (%s): %s: %s" % (
            self.task_id,
            self.kind,
            self.type_name,
            self.message,
        )
        if self.traceback:
            return "%s\n\nRemote traceback:\n%s" % (head, self.traceback.rstrip("\n"))
        return head


class TaskPending(Exception):
    """The task has not finished (yet): ``task_id`` and its current ``state``."""

    def __init__(self, task_id, state):
        super().__init__(task_id, state)
        self.task_id = task_id
        self.state = state

    def __str__(self):
        return "task %s has not finished: it is %s" % (self.task_id, self.state)


class TaskTimeout(TimeoutError):
    """A synchronous invocation got no result in time. The task goes on; fetch its
    result later with ``Client.get_result(err.task_id)``."""

    def __init__(self, task_id, message=None):
        message = message or "no result within the timeout; the task goes on"
        super().__init__(message)
        self.task_id = task_id
        self.message = message

    def __reduce__(self):
        return (type(self), (self.task_id, self.message))

    def __str__(self):
        return "task %s: %s" % (self.task_id, self.message)


def task_failed_from_view(view):
    """The ``TaskFailed`` for a terminal task view that carries no result."""
    error = view.get("error") or {}
    state = view.get("state")
    kind = error.get("kind") or ("cancelled" if state == "cancelled" else "unknown")
    return TaskFailed(
        task_id=view.get("task_id"),
        kind=kind,
        type_name=error.get("type") or error.get("type_name") or kind,
        message=error.get("message") or "task ended in state %s" % state,
        traceback=error.get("traceback"),
    )


def error_from_response(status, body, reason=""):
    """The exception for an HTTP error answer.

    The invoke trigger's ``function-exception`` (500) and ``task-failed`` (502) become
    ``TaskFailed``, its ``timeout`` (504 with a ``task_id``) becomes ``TaskTimeout``;
    everything else is a ``ScifaasError``. ``body`` is the decoded JSON document, or the
    raw text when the answer was not JSON.
    """
    if not isinstance(body, dict):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        message = (text or "").strip() or reason or "HTTP error"
        return ScifaasError(status, "http-%d" % status, message, None)
    code = body.get("error") or "http-%d" % status
    message = body.get("message") or reason or code
    task_id = body.get("task_id")
    if code in ("function-exception", "task-failed") and task_id is not None:
        kind = body.get("kind") or (
            "function-exception" if code == "function-exception" else "system"
        )
        return TaskFailed(
            task_id=task_id,
            kind=kind,
            type_name=body.get("type") or body.get("type_name") or kind,
            message=message,
            traceback=body.get("traceback"),
        )
    if code == "timeout" and task_id is not None:
        return TaskTimeout(task_id, message)
    return ScifaasError(status, code, message, body)
