"""The scifaas worker: runs Python functions for a scifaas manager, one task at a time.

Standard library only, Python >= 3.8, so that any container with ``python3`` can run it.

The manager talks to this program over its stdin and stdout in frames::

    u32 header_len | u32 body_len   (big-endian)
    header: UTF-8 JSON
    body:   raw bytes

Manager -> worker: header ``{"op": "task", "task_id", "fn_hash", "fn_name",
"source_len"}``; body = the function's source (``source_len`` bytes, 0 when this worker
already has ``fn_hash``) followed by the payload JSON ``{"args": [...], "kwargs": {...}}``.

Worker -> manager: ``{"op": "ready", "pid", "python"}`` once at start, then one
``{"op": "result", "task_id", "ok", "stdout", "stderr", "exec_start", "exec_end",
"error"?: {"kind", "type", "message", "traceback"}}`` per task; its body is the result
JSON (empty on failure). Times are integer microseconds since the Unix epoch.

The manager either runs ``python3 -u scifaas_worker.py`` or, where it cannot place a file
(inside a container), ``python3 -u -c "import sys;exec(compile(sys.stdin.buffer.read(N),
'scifaas_worker.py','exec'))"`` followed by this script's N bytes on stdin.
"""

import sys

if sys.version_info < (3, 8):
    sys.stderr.write(
        "the scifaas worker needs Python >= 3.8; %s is %s\n"
        % (sys.executable, sys.version.split()[0])
    )
    sys.exit(2)

import io
import json
import linecache
import os
import struct
import time
import traceback
import types

#: Most characters of stdout (and, separately, stderr) kept per task.
CAPTURE_LIMIT = 1 << 20
#: A header larger than this means the stream is out of sync.
MAX_HEADER_LEN = 16 << 20

_PREFIX = struct.Struct(">II")

# The C unpickler alone: the `pickle` module around it takes ~2 ms to import, at every
# worker start, for nothing the payloads' plain data needs.
try:
    from _pickle import loads as _unpickle
except ImportError:  # an interpreter without the C accelerator
    from pickle import loads as _unpickle
_dumps_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_dumps_result = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_now_ns = time.time_ns
_encode_str = json.encoder.encode_basestring

# The per-call work of json.loads and JSONEncoder.encode is most of what a warm no-op task
# costs this worker: loads guesses the encoding of bytes and skips whitespace with a
# regular expression around the C scanner, and encode builds a new C encoder for every
# value. So the C scanner and one C encoder are made once, and the rare inputs they do
# not take (leading or trailing whitespace, a JSON error to report) go the usual way.
_scan_once = json.scanner.make_scanner(json.JSONDecoder())
_result_markers = {}
try:
    _encode_value = json.encoder.c_make_encoder(
        _result_markers,
        json.JSONEncoder().default,
        _encode_str,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
except (AttributeError, TypeError):  # no C accelerator, or another signature
    _encode_value = None


def _encode_header_text(text):
    # errors="replace": a lone surrogate printed by a function must not make the header
    # undecodable for the manager.
    return text.encode("utf-8", "replace")


def _loads(data):
    """``json.loads(data)`` for the UTF-8 JSON of frames: the same values and errors."""
    text = data.decode("utf-8", "surrogatepass") if isinstance(data, bytes) else data
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


def _dumps_value(value):
    """``_dumps_result(value)``, with the encoder made once."""
    if _encode_value is None or isinstance(value, str):
        return _dumps_result(value)
    try:
        return "".join(_encode_value(value, 0))
    except BaseException:
        # An encoder stopped midway still marks the containers it was inside.
        _result_markers.clear()
        raise


class ProtocolError(Exception):
    """The manager sent something this worker cannot make sense of; fatal."""


class TaskFailure(Exception):
    """A task failed before or after its function ran; carries the error document."""

    def __init__(self, kind, type_name, message, tb=None):
        super().__init__(message)
        self.error = {"kind": kind, "type": type_name, "message": message, "traceback": tb}


class Capture(io.TextIOBase):
    """A text stream that keeps at most ``limit`` characters and counts the rest."""

    # Libraries that look before they print (progress bars, loggers) expect these.
    encoding = "utf-8"
    errors = "strict"

    def __init__(self, limit=CAPTURE_LIMIT):
        super().__init__()
        self._limit = limit
        self._reset()

    def _reset(self):
        self._parts = []
        self._room = self._limit
        self._dropped = 0

    def take(self):
        """What was written since the last ``take``, and start afresh.

        One pair of captures serves every task: making a stream per task costs more than
        a no-op task itself, and output that a function's leftover handler (a logger set
        up in an earlier call) writes lands in the task that is running, not nowhere.
        """
        text = self.getvalue()
        self._reset()
        return text

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        n = len(s)
        if n <= self._room:
            self._parts.append(s)
            self._room -= n
        else:
            if self._room > 0:
                self._parts.append(s[: self._room])
            self._dropped += n - max(self._room, 0)
            self._room = 0
        return n

    def getvalue(self):
        text = "".join(self._parts)
        if self._dropped:
            text += "\n[scifaas: %d more characters were not kept]\n" % self._dropped
        return text


def type_name(exc_type):
    """The name a researcher knows an exception class by: builtins bare, others qualified."""
    module = getattr(exc_type, "__module__", None)
    name = getattr(exc_type, "__qualname__", None) or exc_type.__name__
    if module in (None, "builtins", "__main__") or module.startswith("scifaas_fn_"):
        return name
    return "%s.%s" % (module, name)


def format_exception(exc, skip_frames=0):
    """The traceback of ``exc`` without its first ``skip_frames`` frames (the worker's)."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


class FunctionCache:
    """Compiled functions by hash, so a warm call neither compiles nor executes source."""

    def __init__(self):
        self._functions = {}

    def __contains__(self, fn_hash):
        return fn_hash in self._functions

    def get(self, fn_hash, fn_name, source):
        fn = self._functions.get(fn_hash)
        if fn is not None:
            return fn
        if source is None:
            raise TaskFailure(
                "function-definition",
                "UnknownFunction",
                "this worker does not have function %r (hash %s) and no source was sent"
                % (fn_name, fn_hash),
            )
        fn = self._define(fn_hash, fn_name, source)
        self._functions[fn_hash] = fn
        return fn

    @staticmethod
    def _define(fn_hash, fn_name, source_bytes):
        try:
            source = source_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TaskFailure(
                "function-definition",
                "UnicodeDecodeError",
                "the source of %r is not valid UTF-8: %s" % (fn_name, e),
            )
        module_name = "scifaas_fn_" + "".join(c for c in fn_hash[:16] if c.isalnum())
        filename = "<scifaas function %s>" % fn_name
        # Registered so that tracebacks show the user's source lines; mtime None keeps
        # linecache.checkcache from discarding an entry with no file behind it.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            code = compile(source, filename, "exec")
        except SyntaxError as e:
            raise TaskFailure(
                "function-definition",
                type_name(type(e)),
                "the source of %r does not compile: %s" % (fn_name, e),
                "".join(traceback.format_exception_only(type(e), e)),
            )
        # A real module in sys.modules, so that pickle, dataclasses and typing find the
        # classes and functions the source defines.
        module = types.ModuleType(module_name)
        module.__file__ = filename
        sys.modules[module_name] = module
        try:
            exec(code, module.__dict__)
        except BaseException as e:
            del sys.modules[module_name]
            raise TaskFailure(
                "function-definition",
                type_name(type(e)),
                "defining %r raised %s: %s" % (fn_name, type_name(type(e)), e),
                format_exception(e, skip_frames=1),
            )
        fn = module.__dict__.get(fn_name)
        if fn is None or not callable(fn):
            del sys.modules[module_name]
            what = "a function" if fn is None else "a callable"
            raise TaskFailure(
                "function-definition",
                "NameError",
                "source does not define %s named %r" % (what, fn_name),
            )
        return fn


def decode_payload(payload, pickled=False):
    """``(args, kwargs)`` from the payload; an empty payload means no arguments.

    The payload is JSON, or with ``pickled`` the same values re-encoded by the manager as
    a pickle of plain data (lists, dicts, str, int, float, bool, None), which loads many
    times faster than Python's JSON scanner reads large strings and numbers.
    """
    if not payload:
        return (), {}
    if pickled:
        try:
            doc = _unpickle(payload)
        except Exception as e:
            raise TaskFailure(
                "serialization",
                type_name(type(e)),
                "the manager's pickle of the payload is unreadable: %s" % e,
            )
    else:
        try:
            doc = _loads(payload)
        except (ValueError, UnicodeDecodeError) as e:
            raise TaskFailure(
                "serialization", type_name(type(e)), "the payload is not valid JSON: %s" % e
            )
    if not isinstance(doc, dict):
        raise TaskFailure(
            "serialization",
            "TypeError",
            'the payload must be a JSON object {"args": [...], "kwargs": {...}}, got %s'
            % type(doc).__name__,
        )
    args = doc.get("args")
    kwargs = doc.get("kwargs")
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise TaskFailure(
            "serialization",
            "TypeError",
            'the payload\'s "args" must be a list and "kwargs" an object',
        )
    return args, kwargs


def encode_result(fn_name, value):
    """The result's JSON bytes, or a serialization failure naming what could not be encoded."""
    try:
        return _dumps_value(value).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as e:
        detail = str(e)
        if detail.startswith("Out of range float"):
            detail += " (NaN or Infinity)"
        raise TaskFailure(
            "serialization",
            type_name(type(e)),
            "the result of %r could not be encoded as JSON: %s" % (fn_name, detail),
        )


class Worker:
    """Reads task frames from ``reader`` and writes result frames to the fd ``out_fd``."""

    def __init__(self, reader, out_fd):
        self._reader = reader
        self._out_fd = out_fd
        self.functions = FunctionCache()
        self._out, self._err = Capture(), Capture()

    def send(self, header, body=b""):
        self.send_head(_encode_header_text(_dumps_compact(header)), body)

    def send_head(self, head, body):
        """Writes a frame whose header is already encoded."""
        data = memoryview(_PREFIX.pack(len(head), len(body)) + head + body)
        while data:
            data = data[os.write(self._out_fd, data) :]

    def read_exact(self, n):
        data = self._reader.read(n)
        if data is None or len(data) != n:
            return None
        return data

    def read_frame(self):
        """``(header, body)``, or None at a clean end of input."""
        prefix = self._reader.read(8)
        if not prefix:
            return None
        if len(prefix) != 8:
            raise ProtocolError("input ended inside a frame prefix")
        header_len, body_len = _PREFIX.unpack(prefix)
        if header_len > MAX_HEADER_LEN:
            raise ProtocolError("frame header of %d bytes is over the limit" % header_len)
        head = self.read_exact(header_len)
        body = self.read_exact(body_len)
        if head is None or body is None:
            raise ProtocolError("input ended inside a frame")
        try:
            header = _loads(head)
        except ValueError as e:
            raise ProtocolError("frame header is not JSON: %s" % e)
        if not isinstance(header, dict):
            raise ProtocolError("frame header is not a JSON object")
        return header, body

    def serve(self):
        """Answers tasks until the manager closes our input."""
        self.send(
            {
                "op": "ready",
                "pid": os.getpid(),
                "python": "%d.%d.%d" % sys.version_info[:3],
            }
        )
        while True:
            frame = self.read_frame()
            if frame is None:
                return
            header, body = frame
            if header.get("op") != "task":
                raise ProtocolError("unexpected frame op %r" % header.get("op"))
            self.send_head(*self.run_task(header, body))

    def run_task(self, header, body):
        """``(result header, encoded; result body)`` for one task frame; never raises for
        the task."""
        task_id = header.get("task_id")
        fn_name = header.get("fn_name", "")
        source_len = header.get("source_len", 0)
        if not isinstance(source_len, int) or not 0 <= source_len <= len(body):
            raise ProtocolError("source_len %r does not fit the body" % (source_len,))
        out, err = self._out, self._err
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        exec_start = exec_end = 0
        result = b""
        error = None
        try:
            fn = self.functions.get(
                header.get("fn_hash", ""), fn_name, body[:source_len] if source_len else None
            )
            args, kwargs = decode_payload(
                body[source_len:] if source_len else body,
                header.get("payload_format") == "pickle",
            )
            exec_start = _now_ns()
            try:
                value = fn(*args, **kwargs)
            except BaseException as e:
                exec_end = _now_ns()
                # SystemExit and KeyboardInterrupt too: a function must not end the worker.
                raise TaskFailure(
                    "function-exception", type_name(type(e)), str(e), format_exception(e, 1)
                )
            exec_end = _now_ns()
            result = encode_result(fn_name, value)
        except TaskFailure as failure:
            error = failure.error
        finally:
            sys.stdout, sys.stderr = saved
        if not exec_start:
            exec_start = exec_end = _now_ns()
        if error is not None:
            result = b""
        # Written out here: the JSON encoder's set-up for this dict costs more than a
        # no-op task. The same JSON as encoding the dict would give.
        head = (
            '{"op":"result","task_id":%s,"ok":%s,"stdout":%s,"stderr":%s,'
            '"exec_start":%d,"exec_end":%d%s}'
            % (
                _encode_str(task_id) if type(task_id) is str else _dumps_compact(task_id),
                "true" if error is None else "false",
                _encode_str(out.take()),
                _encode_str(err.take()),
                exec_start // 1000,
                exec_end // 1000,
                "" if error is None else ',"error":' + _dumps_compact(error),
            )
        )
        return _encode_header_text(head), result


def take_protocol_streams():
    """Moves the protocol onto private fds and points fds 0 and 1 elsewhere.

    Returns ``(reader, out_fd)``. Afterwards fd 1 is a copy of fd 2, so whatever a
    function prints, even from C, goes to the manager's log and not into the protocol
    stream; fd 0 is /dev/null, so a function that reads stdin sees an end of input
    instead of eating frames.
    """
    out_fd = os.dup(1)
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    # When bootstrapped with `-c exec(sys.stdin.buffer.read(N))`, that buffered reader
    # may hold bytes read ahead of the script: they are the first frames, so carry them
    # over. A non-blocking peek returns them without waiting for more.
    os.set_blocking(0, False)
    try:
        ahead = stdin.peek(1) or b""
    except (BlockingIOError, ValueError):
        ahead = b""
    finally:
        os.set_blocking(0, True)
    if ahead:
        stdin.read(len(ahead))
    in_fd = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull, "r")
    raw = io.FileIO(in_fd, "rb")
    if ahead:
        raw = _Prepended(ahead, raw)
    return io.BufferedReader(raw, buffer_size=1 << 16), out_fd


class _Prepended(io.RawIOBase):
    """A raw stream that yields ``head`` and then reads from the raw stream ``rest``."""

    def __init__(self, head, rest):
        super().__init__()
        self._head = memoryview(head)
        self._rest = rest

    def readable(self):
        return True

    def readinto(self, buf):
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(buf)


def main():
    reader, out_fd = take_protocol_streams()
    try:
        Worker(reader, out_fd).serve()
    except BrokenPipeError:
        # The manager went away; there is nobody left to tell.
        os._exit(0)
    except ProtocolError as e:
        sys.stderr.write("scifaas worker: protocol error: %s\n" % e)
        sys.exit(3)


if __name__ == "__main__":
    main()
