"""The SDK's own logic, without a service: function sources, argument encoding, request
bodies, the mapping of error answers to exceptions, configuration defaults."""

import concurrent.futures
import functools
import json
import math
import socket

import pytest

from scifaas import Client, Executor, ScifaasError, TaskFailed, TaskPending, TaskTimeout
from scifaas.client import batch_body, default_token, default_url, result_of, seconds
from scifaas.errors import error_from_response, task_failed_from_view
from scifaas.serialize import encode_arguments, function_source, source_hash


def shout(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@shout
@shout
def decorated(x):
    return x * 2


def plain(a, b=1):
    """Adds."""
    return a + b


def test_source_drops_decorators_and_defines_the_function():
    source = function_source(decorated)
    assert source.startswith("def decorated(x):")
    assert "@shout" not in source
    scope = {}
    exec(source, scope)
    assert scope["decorated"](4) == 8


def test_source_of_a_nested_function_is_dedented():
    def inner(v):
        import math

        return math.sqrt(v)

    source = function_source(inner)
    assert source.startswith("def inner(v):")
    scope = {}
    exec(source, scope)
    assert scope["inner"](9) == 3


def test_registering_under_another_name_binds_that_name():
    source = function_source(plain, name="plus")
    scope = {}
    exec(source, scope)
    assert scope["plus"](2, 3) == 5


def test_functions_that_cannot_travel_as_source_are_refused():
    with pytest.raises(ValueError, match="lambda"):
        function_source(lambda x: x)
    factor = 3

    def closure(x):
        return x * factor

    with pytest.raises(ValueError, match="factor"):
        function_source(closure)
    with pytest.raises(ValueError, match="identifier"):
        function_source(plain, name="not a name")
    with pytest.raises(TypeError):
        function_source(len)


def test_source_hash_depends_on_name_and_source():
    assert source_hash("f", "x") == source_hash("f", "x")
    assert source_hash("f", "x") != source_hash("g", "x")
    assert source_hash("f", "x") != source_hash("f", "y")


def test_arguments_encode_as_json():
    args, kwargs = encode_arguments((1, "é", [1.5, None], {"k": True}), {"z": (1, 2)})
    assert json.loads(args) == [1, "é", [1.5, None], {"k": True}]
    assert json.loads(kwargs) == {"z": [1, 2]}


def test_a_non_json_argument_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"argument 2 of f is not JSON-serializable"):
        encode_arguments((1, {1, 2}), {}, "f")
    with pytest.raises(TypeError, match=r"keyword argument 'when' of f"):
        encode_arguments((), {"when": object()}, "f")
    with pytest.raises(TypeError, match="JSON"):
        encode_arguments((math.nan,), {}, "f")
    loop = []
    loop.append(loop)
    with pytest.raises(TypeError, match="argument 1 of f"):
        encode_arguments((loop,), {}, "f")


def test_batch_body_splices_encoded_arguments():
    body = batch_body(
        "ep",
        [
            ("f1", b"[1,2]", b"{}"),
            ("f2", [3], {"k": "v"}),
        ],
    )
    assert json.loads(body) == {
        "endpoint": "ep",
        "tasks": [
            {"function_id": "f1", "args": [1, 2]},
            {"function_id": "f2", "args": [3], "kwargs": {"k": "v"}},
        ],
    }


def test_seconds_in_query_strings():
    assert seconds(30) == "30"
    assert seconds(2.0) == "2"
    assert seconds(0.25) == "0.25"
    assert seconds(1.0004) == "1"
    assert seconds(-1) == "0"


def test_error_answers_map_to_exceptions():
    err = error_from_response(404, {"error": "not-found", "message": "no such task"})
    assert isinstance(err, ScifaasError)
    assert (err.status, err.code, err.message) == (404, "not-found", "no such task")
    assert "404" in str(err) and "no such task" in str(err)

    err = error_from_response(
        500,
        {
            "error": "function-exception",
            "message": "division by zero",
            "type": "ZeroDivisionError",
            "traceback": "Traceback (most recent call last):\n  File x\nZeroDivisionError",
            "task_id": "t1",
        },
    )
    assert isinstance(err, TaskFailed)
    assert (err.task_id, err.kind, err.type_name) == ("t1", "function-exception", "ZeroDivisionError")
    assert "Remote traceback" in str(err) and "File x" in str(err)

    err = error_from_response(
        502, {"error": "task-failed", "message": "worker died", "type": "WorkerDied", "task_id": "t2"}
    )
    assert isinstance(err, TaskFailed) and err.kind == "system"

    err = error_from_response(504, {"error": "timeout", "message": "no result", "task_id": "t3"})
    assert isinstance(err, TaskTimeout) and isinstance(err, TimeoutError)
    assert err.task_id == "t3" and "t3" in str(err)

    err = error_from_response(502, b"<html>bad gateway</html>", "Bad Gateway")
    assert isinstance(err, ScifaasError) and err.status == 502 and "bad gateway" in err.message


def test_task_views_give_results_or_errors():
    assert result_of({"task_id": "t", "state": "success", "result": {"a": 1}}) == {"a": 1}
    assert result_of({"task_id": "t", "state": "success", "result": None}) is None
    with pytest.raises(TaskPending) as pending:
        result_of({"task_id": "t", "state": "waiting-for-nodes"})
    assert pending.value.state == "waiting-for-nodes"
    view = {
        "task_id": "t",
        "state": "failed",
        "error": {"kind": "walltime", "type": "WalltimeExceeded", "message": "ran 5 s", "traceback": None},
    }
    with pytest.raises(TaskFailed) as failed:
        result_of(view)
    assert failed.value.kind == "walltime" and failed.value.type_name == "WalltimeExceeded"
    assert task_failed_from_view({"task_id": "t", "state": "cancelled"}).kind == "cancelled"


def test_defaults_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SCIFAAS_URL", raising=False)
    monkeypatch.delenv("SCIFAAS_TOKEN", raising=False)
    monkeypatch.setenv("SCIFAAS_HOME", str(tmp_path))
    assert default_url() == "http://127.0.0.1:8470"
    assert default_token() is None
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "admin-token").write_text("admin-secret\n")
    assert default_token() == "admin-secret"
    monkeypatch.setenv("SCIFAAS_TOKEN", "env-secret")
    monkeypatch.setenv("SCIFAAS_URL", "http://example.invalid:9000")
    client = Client()
    assert client.url == "http://example.invalid:9000" and client.token == "env-secret"
    assert Client(token="given").token == "given"


def test_a_bad_url_is_refused_at_once():
    with pytest.raises(ValueError, match="ftp://x"):
        Client("ftp://x")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_service_is_a_connection_error():
    client = Client("http://127.0.0.1:%d" % free_port(), token="t", timeout=5)
    with pytest.raises(ConnectionError, match="cannot reach the scifaas service"):
        client.health()


def test_executor_checks_arguments_before_any_request():
    ex = Executor("ep", client=Client("http://127.0.0.1:%d" % free_port(), token="t"))
    with pytest.raises(TypeError, match="not JSON-serializable"):
        ex.submit("some-function-id", {1, 2})
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit("some-function-id", 1)


def test_executor_is_a_concurrent_futures_executor():
    assert issubclass(Executor, concurrent.futures.Executor)
    with pytest.raises(ValueError):
        Executor("ep", client=Client("http://127.0.0.1:1", token="t"), batch_size=0)
