"""``Client`` against the real service and a local endpoint."""

import functools
import uuid

import pytest

from scifaas import Client, ScifaasError, TaskFailed, TaskPending, TaskTimeout

RESULT_TIMEOUT = 60


def add(a, b=0):
    return a + b


def describe(document):
    """Echoes what it got, with the keys sorted."""
    return {"keys": sorted(document), "n": len(document)}


def divide(a, b):
    return a / b


def nap(seconds, value=None):
    import time

    time.sleep(seconds)
    return value


def chatty(x):
    print("hello from the worker", x)
    return x


def twice(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return 2 * fn(*args, **kwargs)

    return wrapper


@twice
def decorated(x):
    return x + 1


@pytest.fixture(scope="module")
def fn_ids(client):
    return {
        fn.__name__: client.register_function(fn)
        for fn in (add, describe, divide, nap, chatty, decorated)
    }


def test_health(client):
    assert client.health()["status"] == "ok"


def test_register_run_and_get_result(client, endpoint, fn_ids):
    task_id = client.run(2, 3, endpoint=endpoint, function_id=fn_ids["add"])
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) == 5
    view = client.get_task(task_id)
    assert view["task_id"] == task_id
    assert view["state"] == "success"
    assert view["result"] == 5
    states = [t["state"] for t in view["transitions"]]
    assert states[0] == "received" and states[-1] == "success"


def test_run_with_kwargs_and_structured_documents(client, endpoint, fn_ids):
    task_id = client.run([1, 2], endpoint=endpoint, function_id=fn_ids["add"], b=[3])
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) == [1, 2, 3]
    task_id = client.run({"é": None, "z": [1.5]}, endpoint=endpoint, function_id=fn_ids["describe"])
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) == {"keys": ["z", "é"], "n": 2}


def test_batch_run(client, endpoint, fn_ids):
    task_ids = client.batch_run(
        endpoint,
        [(fn_ids["add"], [i], {"b": 10}) for i in range(5)] + [(fn_ids["add"], (7, 1))],
    )
    assert len(task_ids) == 6 and len(set(task_ids)) == 6
    results = [client.get_result(t, timeout=RESULT_TIMEOUT) for t in task_ids]
    assert results == [10, 11, 12, 13, 14, 8]
    status = client.get_tasks(task_ids + [str(uuid.uuid4())])
    assert set(status["tasks"]) == set(task_ids)
    assert len(status["unknown"]) == 1


def test_registered_source_has_no_decorator_and_runs_plain(client, endpoint, fn_ids):
    function = client.get_function(fn_ids["decorated"])
    assert function["name"] == "decorated"
    assert function["source"].startswith("def decorated(x):")
    task_id = client.run(1, endpoint=endpoint, function_id=fn_ids["decorated"])
    # The decorator ran here, not there: the worker runs the plain function.
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) == 2


def test_register_under_another_name(client, endpoint):
    function_id = client.register_function(add, name="plus", description="adds")
    assert client.get_function(function_id)["description"] == "adds"
    task_id = client.run(4, 5, endpoint=endpoint, function_id=function_id)
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) == 9


def test_register_source_text(client, endpoint):
    function_id = client.register_function("def square(x):\n    return x * x\n", name="square")
    assert client.invoke(endpoint, function_id, 12) == 144


def test_invoke(client, endpoint, fn_ids):
    assert client.invoke(endpoint, fn_ids["describe"], {"a": 1, "b": 2}) == {"keys": ["a", "b"], "n": 2}
    result, task_id = client.invoke(endpoint, fn_ids["describe"], {"c": 1}, with_task_id=True)
    assert result == {"keys": ["c"], "n": 1}
    assert client.get_task(task_id)["state"] == "success"


def test_invoke_of_a_raising_function_is_task_failed(client, endpoint, fn_ids):
    with pytest.raises(TaskFailed) as failed:
        client.invoke(endpoint, fn_ids["describe"], 5)
    err = failed.value
    assert err.kind == "function-exception"
    assert err.type_name == "TypeError"
    assert "not iterable" in err.message
    assert err.task_id
    assert "describe" in err.traceback
    assert client.get_task(err.task_id)["state"] == "failed"


def test_a_raising_function_gives_task_failed_with_the_remote_traceback(client, endpoint, fn_ids):
    task_id = client.run(1, 0, endpoint=endpoint, function_id=fn_ids["divide"])
    with pytest.raises(TaskFailed) as failed:
        client.get_result(task_id, timeout=RESULT_TIMEOUT)
    err = failed.value
    assert err.task_id == task_id
    assert err.kind == "function-exception"
    assert err.type_name == "ZeroDivisionError"
    assert "division by zero" in err.message
    assert "Traceback" in err.traceback and "return a / b" in err.traceback
    text = str(err)
    assert "Remote traceback" in text and "return a / b" in text
    view = client.get_task(task_id)
    assert view["state"] == "failed" and view["error"]["type"] == "ZeroDivisionError"


def test_get_result_of_an_unfinished_task_is_pending(client, endpoint, fn_ids):
    task_id = client.run(3, "late", endpoint=endpoint, function_id=fn_ids["nap"])
    with pytest.raises(TaskPending) as pending:
        client.get_result(task_id)
    assert pending.value.task_id == task_id
    with pytest.raises(TaskPending):
        client.get_result(task_id, timeout=0.5)
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) == "late"


def test_invoke_timeout_names_the_task_which_goes_on(client, endpoint, fn_ids):
    with pytest.raises(TaskTimeout) as timed_out:
        client.invoke(endpoint, fn_ids["nap"], 3, timeout=1)
    assert isinstance(timed_out.value, TimeoutError)
    task_id = timed_out.value.task_id
    assert task_id
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) is None


def test_stdout_is_captured(client, endpoint, fn_ids):
    task_id = client.run("x", endpoint=endpoint, function_id=fn_ids["chatty"])
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) == "x"
    assert "hello from the worker x" in client.get_task(task_id)["stdout"]


def test_unknown_ids_are_404(client, endpoint):
    unknown = str(uuid.uuid4())
    for call in (
        lambda: client.get_function(unknown),
        lambda: client.get_task(unknown),
        lambda: client.run(1, endpoint=endpoint, function_id=unknown),
        lambda: client.get_endpoint("no-such-endpoint-" + unknown),
    ):
        with pytest.raises(ScifaasError) as err:
            call()
        assert err.value.status == 404
        assert err.value.code == "not-found"


def test_a_bad_token_is_401(stack):
    stranger = Client(stack.url, token="not-a-token")
    with pytest.raises(ScifaasError) as err:
        stranger.list_endpoints()
    assert err.value.status == 401
    assert err.value.code == "unauthorized"
    anonymous = Client(stack.url, token="")
    anonymous.token = None
    with pytest.raises(ScifaasError) as err:
        anonymous.connection().request("GET", "/v1/endpoints")
    assert err.value.status == 401
    assert anonymous.health()["status"] == "ok"


def test_another_user_cannot_see_the_first_users_task(client, stack, endpoint, fn_ids):
    task_id = client.run(1, 1, endpoint=endpoint, function_id=fn_ids["add"])
    assert client.get_result(task_id, timeout=RESULT_TIMEOUT) == 2
    other = Client(stack.url, token=client.create_token("other-" + uuid.uuid4().hex[:8]))
    for call in (lambda: other.get_task(task_id), lambda: other.get_result(task_id)):
        with pytest.raises(ScifaasError) as err:
            call()
        assert err.value.status == 404
    status = other.get_tasks([task_id])
    assert status["tasks"] == {} and status["unknown"] == [task_id]


def test_only_an_admin_creates_tokens(client, stack):
    other = Client(stack.url, token=client.create_token("user-" + uuid.uuid4().hex[:8]))
    with pytest.raises(ScifaasError) as err:
        other.create_token("someone-else")
    assert 400 <= err.value.status < 500


def test_endpoints(client, endpoint):
    view = client.get_endpoint(endpoint)
    assert view["name"] == endpoint
    assert view["connected"] is True
    assert view["managers"]
    assert client.get_endpoint(view["endpoint_id"])["name"] == endpoint
    assert endpoint in [e["name"] for e in client.list_endpoints()]

    name = "made-" + uuid.uuid4().hex[:8]
    made = client.create_endpoint(name)
    assert made["name"] == name and made["endpoint_id"] and made["agent_token"]
    assert client.get_endpoint(name)["connected"] is False
    with pytest.raises(ScifaasError) as err:
        client.create_endpoint(name)
    assert err.value.status == 409 and err.value.code == "conflict"


def test_results_stream(client, endpoint, fn_ids):
    cursor = client.results()["cursor"]
    assert client.results()["tasks"] == []
    task_id = client.run(20, 22, endpoint=endpoint, function_id=fn_ids["add"])
    seen = {}
    for _ in range(30):
        page = client.results(after=cursor, timeout=2)
        cursor = page["cursor"]
        seen.update((view["task_id"], view) for view in page["tasks"])
        if task_id in seen:
            break
    assert seen[task_id]["result"] == 42


def test_a_connection_is_kept_alive_between_calls(client):
    client.health()
    conn = client.connection()
    sock = conn._conn.sock
    assert sock is not None
    for _ in range(5):
        client.list_endpoints()
    assert conn._conn.sock is sock
