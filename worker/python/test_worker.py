"""Tests of the scifaas worker: real worker processes driven over their pipes.

Run with ``python3 -m pytest worker/python/test_worker.py``.
"""

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scifaas_worker.py")
sys.path.insert(0, HERE)

import scifaas_worker  # noqa: E402


def frame(header, body=b""):
    head = json.dumps(header).encode()
    return struct.pack(">II", len(head), len(body)) + head + body


class WorkerProcess:
    """A worker started the way the manager starts it, and a client of its protocol."""

    def __init__(self, bootstrap=False, early=b""):
        if bootstrap:
            with open(SCRIPT, "rb") as f:
                script = f.read()
            argv = [
                sys.executable,
                "-u",
                "-c",
                "import sys;exec(compile(sys.stdin.buffer.read(%d),"
                "'scifaas_worker.py','exec'))" % len(script),
            ]
        else:
            script = b""
            argv = [sys.executable, "-u", SCRIPT]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        # `early` frames follow the script at once, before "ready": the worker must not
        # lose what its bootstrap read ahead.
        self.proc.stdin.write(script + early)
        self.proc.stdin.flush()
        self.ready = self.read_frame()[0]
        self.next_id = 0

    def read_frame(self):
        prefix = self.proc.stdout.read(8)
        assert len(prefix) == 8, "worker closed its output; stderr: %r" % self.stderr()
        header_len, body_len = struct.unpack(">II", prefix)
        header = json.loads(self.proc.stdout.read(header_len))
        body = self.proc.stdout.read(body_len)
        assert len(body) == body_len
        return header, body

    def stderr(self):
        self.proc.kill()
        return self.proc.stderr.read()

    def send_task(self, fn_name, source, payload, fn_hash=None, send_source=True):
        self.next_id += 1
        source = textwrap.dedent(source).encode() if send_source else b""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload).encode()
        header = {
            "op": "task",
            "task_id": "t%d" % self.next_id,
            "fn_hash": fn_hash or "h-" + fn_name,
            "fn_name": fn_name,
            "source_len": len(source),
        }
        self.proc.stdin.write(frame(header, source + payload))
        self.proc.stdin.flush()
        return header["task_id"]

    def call(self, fn_name, source, args=(), kwargs=None, **options):
        payload = {"args": list(args), "kwargs": kwargs or {}}
        task_id = self.send_task(fn_name, source, payload, **options)
        header, body = self.read_frame()
        assert header["op"] == "result"
        assert header["task_id"] == task_id
        return header, body

    def close(self):
        self.proc.stdin.close()
        code = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


@pytest.fixture
def worker():
    w = WorkerProcess()
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()
    for stream in (w.proc.stdin, w.proc.stdout, w.proc.stderr):
        if not stream.closed:
            stream.close()


IDENTITY = """
def identity(x):
    return x
"""


def test_ready_names_pid_and_python(worker):
    assert worker.ready["op"] == "ready"
    assert worker.ready["pid"] == worker.proc.pid
    assert worker.ready["python"] == "%d.%d.%d" % sys.version_info[:3]


def test_function_returns_its_input_as_compact_json(worker):
    doc = {"a": [1, 2.5, None, True], "s": "h\u00e9llo"}
    header, body = worker.call("identity", IDENTITY, [doc])
    assert header["ok"] is True
    assert "error" not in header
    assert json.loads(body) == doc
    assert b" " not in body.replace(b'"h\xc3\xa9llo"', b"")
    now = time.time_ns() // 1000
    assert now - 60_000_000 < header["exec_start"] <= header["exec_end"] <= now


def test_kwargs_reach_the_function(worker):
    source = "def f(a, b=0, *, c):\n    return [a, b, c]\n"
    header, body = worker.call("f", source, [1], {"c": 3})
    assert json.loads(body) == [1, 0, 3]


def test_warm_call_needs_no_source_and_does_not_redefine(worker):
    source = """
    import itertools
    _defined = itertools.count()
    DEFINITIONS = next(_defined)
    def counted(x):
        return [x, next(_defined)]
    """
    _, first = worker.call("counted", source, [1])
    header, second = worker.call("counted", source, [2], send_source=False)
    assert header["ok"], header
    assert json.loads(first) == [1, 1]
    # Module-level state carried over: the source was executed only once.
    assert json.loads(second) == [2, 2]


def test_unknown_hash_without_source_is_a_definition_error(worker):
    header, body = worker.call("ghost", "", [], send_source=False)
    assert header["ok"] is False
    assert body == b""
    assert header["error"]["kind"] == "function-definition"
    assert header["error"]["type"] == "UnknownFunction"
    assert "'ghost'" in header["error"]["message"]


def test_prints_are_captured_and_never_reach_the_protocol_stream(worker):
    source = """
    import os, sys
    def noisy(n):
        for i in range(n):
            print("line", i)
        print("to stderr", file=sys.stderr)
        os.write(1, b"raw bytes on fd 1 that must not corrupt the stream\\n" * 100)
        os.system("echo from a child process")
        sys.__stdout__.write("original sys.stdout\\n")
        return n
    """
    header, body = worker.call("noisy", source, [2000])
    assert header["ok"], header
    assert body == b"2000"
    assert header["stdout"].startswith("line 0\nline 1\n")
    assert header["stdout"].endswith("line 1999\n")
    assert header["stderr"] == "to stderr\n"
    # The stream is still in sync for the next task.
    _, body = worker.call("identity", IDENTITY, ["after"])
    assert body == b'"after"'


def test_capture_is_capped_and_says_so(worker):
    source = """
    def flood():
        print("x" * (3 << 20))
    """
    header, _ = worker.call("flood", source)
    assert header["ok"]
    assert len(header["stdout"]) < (1 << 20) + 200
    assert "more characters were not kept" in header["stdout"]


def test_exception_returns_type_message_and_user_traceback(worker):
    source = """
    def divide(a, b):
        return helper(a, b)

    def helper(a, b):
        return a / b
    """
    header, body = worker.call("divide", source, [1, 0])
    assert header["ok"] is False
    assert body == b""
    error = header["error"]
    assert error["kind"] == "function-exception"
    assert error["type"] == "ZeroDivisionError"
    assert error["message"] == "division by zero"
    tb = error["traceback"]
    assert "in divide" in tb and "in helper" in tb
    assert "return a / b" in tb, "source lines are shown"
    assert "run_task" not in tb, "the worker's own frames are hidden"
    assert tb.rstrip().endswith("ZeroDivisionError: division by zero")


def test_exception_types_are_named_as_researchers_know_them(worker):
    source = """
    import json
    class MyError(Exception):
        pass
    def fail(kind):
        if kind == "mine":
            raise MyError("custom")
        json.loads("{")
    """
    header, _ = worker.call("fail", source, ["mine"])
    assert header["error"]["type"] == "MyError"
    header, _ = worker.call("fail", source, ["json"], send_source=False)
    assert header["error"]["type"] == "json.decoder.JSONDecodeError"


def test_sys_exit_and_stdin_reads_do_not_end_the_worker(worker):
    source = """
    import sys
    def leave(how):
        if how == "exit":
            sys.exit(7)
        return input()
    """
    header, _ = worker.call("leave", source, ["exit"])
    assert header["error"]["type"] == "SystemExit"
    assert header["error"]["message"] == "7"
    header, _ = worker.call("leave", source, ["read"], send_source=False)
    assert header["error"]["type"] == "EOFError"
    _, body = worker.call("identity", IDENTITY, [1])
    assert body == b"1"


def test_source_without_the_name_is_a_definition_error_naming_it(worker):
    header, _ = worker.call("foo", "def bar():\n    return 1\n")
    error = header["error"]
    assert error["kind"] == "function-definition"
    assert error["message"] == "source does not define a function named 'foo'"
    header, _ = worker.call("foo", "foo = 3\n", fn_hash="other")
    assert "callable named 'foo'" in header["error"]["message"]


def test_source_that_does_not_compile_is_a_definition_error(worker):
    header, _ = worker.call("broken", "def broken(:\n    pass\n")
    error = header["error"]
    assert error["kind"] == "function-definition"
    assert error["type"] == "SyntaxError"
    assert "'broken'" in error["message"]
    assert "does not compile" in error["message"]


def test_source_that_raises_at_definition_is_a_definition_error(worker):
    header, _ = worker.call("needs", "import no_such_module_here\ndef needs():\n    pass\n")
    error = header["error"]
    assert error["kind"] == "function-definition"
    assert error["type"] == "ModuleNotFoundError"
    assert "no_such_module_here" in error["message"]
    assert "line 1" in error["traceback"]
    # Not cached: the manager can send the source again.
    header, _ = worker.call("needs", "", send_source=False)
    assert header["error"]["type"] == "UnknownFunction"


@pytest.mark.parametrize(
    "expression, named",
    [("{1, 2}", "set"), ("object()", "object"), ("float('nan')", "NaN"), ("b'x'", "bytes")],
)
def test_result_that_is_not_json_is_a_serialization_error(worker, expression, named):
    source = "def bad():\n    return %s\n" % expression
    header, body = worker.call("bad", source, fn_hash="bad-" + named)
    assert body == b""
    error = header["error"]
    assert error["kind"] == "serialization"
    assert "'bad'" in error["message"]
    assert named in error["message"]


@pytest.mark.parametrize(
    "payload", [b"{not json", b"[1, 2]", b'{"args": 3}', b"\xff\xfe\x00"]
)
def test_payload_that_is_not_an_argument_document_is_a_serialization_error(worker, payload):
    worker.send_task("identity", IDENTITY, payload)
    header, body = worker.read_frame()
    assert header["ok"] is False
    assert header["error"]["kind"] == "serialization"
    assert body == b""


@pytest.mark.parametrize("payload", [b"", b"{}", b'{"args": null, "kwargs": null}'])
def test_absent_arguments_mean_none(worker, payload):
    worker.send_task("nothing", "def nothing():\n    return 'ok'\n", payload)
    header, body = worker.read_frame()
    assert body == b'"ok"', header


def test_kwargs_alone_are_enough(worker):
    worker.send_task("f", "def f(a=1, b=2):\n    return a + b\n", b'{"kwargs": {"b": 5}}')
    _, body = worker.read_frame()
    assert body == b"6"


def test_large_payload_and_result_round_trip(worker):
    big = "y" * (8 << 20)
    header, body = worker.call("identity", IDENTITY, [big])
    assert header["ok"]
    assert len(body) == len(big) + 2


def send_pickled(worker, fn_name, source, data):
    """A task whose payload the manager re-encoded as a pickle (protocol 4)."""
    worker.next_id += 1
    source = textwrap.dedent(source).encode()
    header = {
        "op": "task",
        "task_id": "t%d" % worker.next_id,
        "fn_hash": "h-" + fn_name,
        "fn_name": fn_name,
        "source_len": len(source),
        "payload_format": "pickle",
    }
    worker.proc.stdin.write(frame(header, source + data))
    worker.proc.stdin.flush()
    return worker.read_frame()


def test_a_pickled_payload_reaches_the_function(worker):
    doc = {"args": [[1, 2.5, None, True], "h\u00e9"], "kwargs": {}}
    header, body = send_pickled(
        worker, "pair", "def pair(a, b):\n    return [a, b]\n", pickle.dumps(doc, protocol=4)
    )
    assert header["ok"], header
    assert json.loads(body) == [[1, 2.5, None, True], "h\u00e9"]


@pytest.mark.parametrize(
    "data", [b"\x80\x04(garbage", pickle.dumps([1, 2], protocol=4), pickle.dumps({"args": 3})]
)
def test_a_pickled_payload_that_is_not_an_argument_document_is_a_serialization_error(
    worker, data
):
    header, body = send_pickled(worker, "identity", IDENTITY, data)
    assert header["ok"] is False
    assert header["error"]["kind"] == "serialization", header
    assert body == b""
    # The worker goes on serving.
    header, body = worker.call("identity", IDENTITY, [7])
    assert body == b"7"


def test_lone_surrogates_in_output_keep_the_header_valid(worker):
    header, _ = worker.call("odd", "def odd():\n    print('\\udc80')\n")
    assert header["ok"]
    assert header["stdout"] == "?\n"


def test_worker_exits_cleanly_at_end_of_input(worker):
    worker.call("identity", IDENTITY, [1])
    assert worker.close() == 0


def test_bootstrapped_worker_keeps_frames_sent_with_the_script():
    header = {
        "op": "task",
        "task_id": "early",
        "fn_hash": "h",
        "fn_name": "identity",
        "source_len": len(IDENTITY),
    }
    early = frame(header, IDENTITY.encode() + b'{"args": [42]}')
    w = WorkerProcess(bootstrap=True, early=early)
    assert w.ready["op"] == "ready"
    header, body = w.read_frame()
    assert header["task_id"] == "early"
    assert body == b"42"
    _, body = w.call("identity", "", [7], fn_hash="h", send_source=False)
    assert body == b"7"
    assert w.close() == 0


def test_bootstrapped_worker_serves_tasks():
    w = WorkerProcess(bootstrap=True)
    _, body = w.call("identity", IDENTITY, [[1, 2]])
    assert body == b"[1,2]"
    assert w.close() == 0


def test_capture_counts_what_it_drops():
    capture = scifaas_worker.Capture(limit=5)
    assert capture.write("abc") == 3
    assert capture.write("defg") == 4
    capture.write("h")
    assert capture.getvalue().startswith("abcde\n")
    assert "3 more characters" in capture.getvalue()
    with pytest.raises(TypeError):
        capture.write(b"bytes")
    assert capture.encoding == "utf-8"
    assert not capture.isatty()
    assert "3 more characters" in capture.take()
    assert capture.take() == ""
    capture.write("ij")
    assert capture.take() == "ij"


def test_type_name_qualifies_non_builtin_classes():
    assert scifaas_worker.type_name(KeyError) == "KeyError"
    assert scifaas_worker.type_name(json.JSONDecodeError) == "json.decoder.JSONDecodeError"


@pytest.mark.parametrize(
    "text",
    [
        b'{"args":[1,"x",{"k":[null,true,2.5]}],"kwargs":{}}',
        b' {"padded": 1} \n',
        '{"caf\u00e9": "\u2603"}'.encode(),
        b'"just a string"',
        b"[]",
    ],
)
def test_frame_json_decodes_as_json_loads_does(text):
    assert scifaas_worker._loads(text) == json.loads(text)


@pytest.mark.parametrize("text", [b"{not json", b'{"a": 1} tail', b"", b"[1,]"])
def test_frame_json_errors_are_json_loads_errors(text):
    with pytest.raises(json.JSONDecodeError) as ours:
        scifaas_worker._loads(text)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)


def test_frame_json_that_is_not_utf8_is_a_value_error():
    with pytest.raises(ValueError):
        scifaas_worker._loads(b'{"a": "\xff"}')


def test_results_encode_as_the_standard_encoder_does_and_failures_leave_it_usable():
    for value in [1, 2.5, "s\u2603", None, [1, {"a": [True, None]}], {"x": "\ud800"}, []]:
        assert scifaas_worker._dumps_value(value) == scifaas_worker._dumps_result(value)
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError):
        scifaas_worker._dumps_value(loop)
    with pytest.raises(ValueError):
        scifaas_worker._dumps_value([float("nan")])
    # A failure midway leaves nothing behind: the same list encodes fine afterwards.
    inner = [1]
    assert scifaas_worker._dumps_value([inner, inner]) == "[[1],[1]]"


def test_the_result_header_written_by_hand_is_valid_json_with_its_fields(worker):
    # Output with quotes, newlines and non-ASCII, in the header the worker writes out by
    # hand.
    source = "def talk():\n    print('say \"hi\"\\n\\u2603')\n    return 1\n"
    header, body = worker.call("talk", source)
    assert header["ok"] is True and body == b"1"
    assert header["stdout"] == 'say "hi"\n\u2603\n'
    assert set(header) == {"op", "task_id", "ok", "stdout", "stderr", "exec_start", "exec_end"}
    assert header["exec_start"] <= header["exec_end"]
