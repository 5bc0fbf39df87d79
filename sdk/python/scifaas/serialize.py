"""How functions and their arguments travel: functions as Python source, arguments and
results as JSON documents.

Every Rust component treats both as opaque bytes; the Python worker at the far end
compiles the source once per function hash and calls the function by name with the
decoded ``args`` and ``kwargs``.
"""

import ast
import hashlib
import inspect
import json
import keyword
import textwrap

__all__ = [
    "function_source",
    "source_hash",
    "dumps",
    "encode_arguments",
]

JSON_TYPES = "dict, list, tuple, str, int, float (finite), bool or None"


def dumps(document, what="value"):
    """Encode ``document`` as compact UTF-8 JSON.

    Raises ``TypeError`` naming ``what`` when the document is not JSON: an object JSON
    cannot express, a NaN or infinite float, a circular reference.
    """
    try:
        text = json.dumps(
            document, allow_nan=False, ensure_ascii=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as err:
        raise TypeError(
            "%s is not JSON-serializable (%s); scifaas passes arguments and results as "
            "JSON documents made of %s" % (what, err, JSON_TYPES)
        ) from None
    return text.encode("utf-8")


def encode_arguments(args, kwargs, fn_name="the function"):
    """Encode positional and keyword arguments as two JSON byte strings.

    On failure the ``TypeError`` names the offending argument (``argument 2 of f``,
    ``keyword argument 'x' of f``) rather than the whole argument list.
    """
    args = list(args)
    kwargs = dict(kwargs)
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(
                "keyword argument names of %s must be strings, got %r" % (fn_name, key)
            )
    try:
        args_json = dumps(args)
    except TypeError:
        for index, value in enumerate(args):
            dumps(value, "argument %d of %s" % (index + 1, fn_name))
        raise
    try:
        kwargs_json = dumps(kwargs)
    except TypeError:
        for key, value in kwargs.items():
            dumps(value, "keyword argument %r of %s" % (key, fn_name))
        raise
    return args_json, kwargs_json


def function_source(fn, name=None):
    """The Python source that defines ``fn`` under ``name`` (default: ``fn.__name__``).

    The source comes from ``inspect.getsource``, dedented, with any decorators removed
    (they ran here; the worker must define the plain function). When ``name`` differs
    from the function's own name, an alias line binds ``name`` to it, because the worker
    calls the name the function was registered under.

    Raises ``ValueError`` for what cannot travel as source: lambdas, functions whose
    source is not available (defined in a REPL or with ``exec``), and closures, whose
    enclosing variables would be missing at the far end.
    """
    # A decorator made with functools.wraps leads back to the function it wraps.
    fn = inspect.unwrap(fn) if callable(fn) else fn
    if not callable(fn) or not hasattr(fn, "__code__"):
        raise TypeError("expected a Python function, got %r" % (fn,))
    own_name = fn.__name__
    if own_name == "<lambda>":
        raise ValueError(
            "a lambda cannot be registered: define it with `def NAME(...)` so the worker "
            "can call it by name"
        )
    free = fn.__code__.co_freevars
    if free:
        raise ValueError(
            "function %r uses variables of an enclosing scope (%s); a registered function "
            "must be self-contained: pass them as arguments or define them inside it"
            % (own_name, ", ".join(free))
        )
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError) as err:
        raise ValueError(
            "the source of function %r is not available (%s); define it in a file, or "
            "register its source text with register_function(source, name=...)"
            % (own_name, err)
        ) from None
    source = strip_decorators(textwrap.dedent(source), own_name)
    name = own_name if name is None else name
    check_name(name)
    if name != own_name:
        source = "%s\n\n%s = %s\n" % (source.rstrip("\n"), name, own_name)
    return source


def strip_decorators(source, name):
    """``source`` from the ``def`` line of function ``name`` on."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError("the source of function %r does not parse: %s" % (name, err))
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef):
            raise ValueError(
                "function %r is a coroutine (async def); register a plain function" % name
            )
        if isinstance(node, ast.FunctionDef):
            # Since Python 3.8 a FunctionDef's lineno is its `def` line, not its first
            # decorator's.
            lines = source.splitlines(keepends=True)
            return "".join(lines[node.lineno - 1 :])
    raise ValueError("the source of %r defines no function" % name)


def check_name(name):
    """Raise ``ValueError`` unless ``name`` can be called as a Python function name."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(
            "function name %r is not a Python identifier; the worker calls the function "
            "by this name" % (name,)
        )


def source_hash(name, source):
    """A content hash of a function's name and source (hex): the registration cache key."""
    digest = hashlib.sha256()
    digest.update(name.encode("utf-8"))
    digest.update(b"\0")
    digest.update(source.encode("utf-8"))
    return digest.hexdigest()
