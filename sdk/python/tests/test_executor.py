"""``Executor`` against the real service and a local endpoint."""

import concurrent.futures
import threading
import time

import pytest

from scifaas import Executor, TaskFailed

RESULT_TIMEOUT = 60


def square(x):
    return x * x


def add(a, b=0, *, scale=1):
    return (a + b) * scale


def nap(seconds, value=None):
    import time

    time.sleep(seconds)
    return value


def fail(message):
    raise ValueError(message)


@pytest.fixture
def executor(client, endpoint):
    ex = Executor(endpoint, client=client)
    yield ex
    ex.shutdown(wait=True)


def test_submit_returns_a_future_with_the_result(executor):
    future = executor.submit(square, 7)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=RESULT_TIMEOUT) == 49
    assert future.task_id
    assert executor.client.get_task(future.task_id)["result"] == 49


def test_map_of_200_tasks_keeps_order(executor):
    started = time.monotonic()
    results = list(executor.map(square, range(200), timeout=RESULT_TIMEOUT))
    assert results == [i * i for i in range(200)]
    # Registered once, whatever the number of submissions.
    assert executor.function_id(square) == executor.function_id(square)
    print("200 tasks through map in %.3f s" % (time.monotonic() - started))


def test_map_with_several_iterables(executor):
    assert list(executor.map(add, [1, 2, 3], [10, 20, 30], timeout=RESULT_TIMEOUT)) == [11, 22, 33]


def test_map_timeout(executor):
    results = executor.map(nap, [3], timeout=0.5)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(results)


def test_kwargs(executor):
    assert executor.submit(add, 1, b=2, scale=10).result(timeout=RESULT_TIMEOUT) == 30
    assert executor.submit(add, a=5).result(timeout=RESULT_TIMEOUT) == 5


def test_futures_resolve_as_results_stream_in(executor):
    fast = [executor.submit(square, i) for i in range(5)]
    slow = executor.submit(nap, 3, "slow")
    order = []
    for future in concurrent.futures.as_completed(fast + [slow], timeout=RESULT_TIMEOUT):
        order.append(future)
        if len(order) == len(fast):
            # Every fast future resolved while the slow task still runs.
            assert not slow.done()
    assert order[-1] is slow
    assert sorted(f.result() for f in fast) == [0, 1, 4, 9, 16]
    assert slow.result() == "slow"


def test_a_non_json_argument_is_a_type_error(executor):
    with pytest.raises(TypeError, match="not JSON-serializable"):
        executor.submit(square, {1, 2})
    with pytest.raises(TypeError, match="keyword argument 'scale'"):
        executor.submit(add, 1, scale=object())


def test_a_failed_task_gives_task_failed(executor):
    future = executor.submit(fail, "no luck")
    err = future.exception(timeout=RESULT_TIMEOUT)
    assert isinstance(err, TaskFailed)
    assert err.type_name == "ValueError" and err.message == "no luck"
    assert err.task_id == future.task_id
    assert "raise ValueError(message)" in err.traceback
    with pytest.raises(TaskFailed):
        future.result()


def test_submit_by_function_id(executor, client):
    function_id = client.register_function(square)
    assert executor.submit(function_id, 9).result(timeout=RESULT_TIMEOUT) == 81


def test_submissions_from_many_threads(executor):
    futures = {}
    lock = threading.Lock()

    def submit_some(offset):
        for i in range(offset, offset + 25):
            future = executor.submit(add, i, i)
            with lock:
                futures[i] = future

    threads = [threading.Thread(target=submit_some, args=(t * 25,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(futures) == 200
    for i, future in futures.items():
        assert future.result(timeout=RESULT_TIMEOUT) == 2 * i


def test_shutdown_waits_for_outstanding_futures(client, endpoint):
    ex = Executor(endpoint, client=client)
    future = ex.submit(nap, 1.5, "done")
    started = time.monotonic()
    ex.shutdown(wait=True)
    assert future.done()
    assert future.result() == "done"
    assert time.monotonic() - started >= 0.5
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_shutdown_cancels_unsent_futures(client, endpoint):
    ex = Executor(endpoint, client=client, batch_size=1000, batch_interval=30)
    # The first submission after a quiet spell goes at once; the next batch may not go
    # before 30 s have passed.
    first = ex.submit(square, 3)
    assert first.result(timeout=RESULT_TIMEOUT) == 9
    futures = [ex.submit(square, i) for i in range(3)]
    started = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 10
    assert all(f.cancelled() for f in futures)


def test_submissions_are_batched(client, endpoint):
    ex = Executor(endpoint, client=client, batch_interval=0.2)
    posts = []
    send = ex._send
    ex._send = lambda batch: (posts.append(len(batch)), send(batch))
    futures = [ex.submit(square, i) for i in range(50)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [i * i for i in range(50)]
    ex.shutdown()
    # The first went alone; the other 49 waited for the interval and went together.
    assert sum(posts) == 50 and len(posts) <= 3, posts


def test_context_manager(client, endpoint):
    with Executor(endpoint, client=client) as ex:
        futures = [ex.submit(square, i) for i in range(10)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(10)]
