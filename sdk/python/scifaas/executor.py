"""``Executor``: a ``concurrent.futures.Executor`` whose tasks run on a scifaas endpoint.

Two background threads do all the talking, so that a thousand futures cost a handful of
requests rather than a thousand:

- the *flusher* sends submissions in batches (``POST /v1/tasks``, batch form): at most
  one POST per ``batch_interval`` unless ``batch_size`` are waiting, and at once for the
  first submission after a quiet spell;
- the *poller* follows the caller's stream of finished tasks (``GET /v1/results``,
  long-polling from a cursor taken before the first submission) and resolves the
  futures it finds there.
"""

import collections
import concurrent.futures
import logging
import threading
import time
import weakref

from .client import TERMINAL_STATES, Client, batch_body
from .errors import ScifaasError, task_failed_from_view
from .serialize import encode_arguments, function_source, source_hash
from .transport import Interrupted

__all__ = ["Executor"]

log = logging.getLogger("scifaas")

# Defaults of the tunables (each can be set per Executor).
DEFAULT_BATCH_SIZE = 256  # most tasks in one POST /v1/tasks
DEFAULT_BATCH_INTERVAL = 0.002  # least seconds between two batches that are not full
DEFAULT_POLL_TIMEOUT = 10.0  # seconds one GET /v1/results long-poll may wait
DEFAULT_RESULTS_PAGE = 1000  # most task views in one GET /v1/results answer

# Answers of the results stream that are worth retrying rather than failing futures for.
RETRYABLE_STATUSES = (408, 429)


class Executor(concurrent.futures.Executor):
    """Runs functions on ``endpoint`` (its name or id) and hands back futures.

    ``submit(fn, *args, **kwargs)`` registers ``fn`` once (cached by the function object
    and by its source) and returns a ``concurrent.futures.Future``; ``fn`` may also be
    the id of an already registered function. Arguments and results are JSON documents;
    an argument that is not raises ``TypeError`` at submit. A future whose task failed
    holds a ``TaskFailed``; ``future.task_id`` is the task's id once it was sent.

    ``batch_size``, ``batch_interval`` (seconds), ``poll_timeout`` (seconds) and
    ``results_page`` tune the batching and the results stream; see the defaults above.
    Thread-safe.
    """

    def __init__(
        self,
        endpoint,
        client=None,
        batch_size=DEFAULT_BATCH_SIZE,
        batch_interval=DEFAULT_BATCH_INTERVAL,
        poll_timeout=DEFAULT_POLL_TIMEOUT,
        results_page=DEFAULT_RESULTS_PAGE,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1, got %r" % (batch_size,))
        if batch_interval < 0:
            raise ValueError("batch_interval must not be negative, got %r" % (batch_interval,))
        if poll_timeout <= 0:
            raise ValueError("poll_timeout must be positive, got %r" % (poll_timeout,))
        self.endpoint = endpoint
        self.client = client if client is not None else Client()
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.poll_timeout = poll_timeout
        self.results_page = results_page

        self._lock = threading.Lock()
        self._flusher_wakeup = threading.Condition(self._lock)
        self._poller_wakeup = threading.Condition(self._lock)
        self._outstanding_changed = threading.Condition(self._lock)
        # Submissions not yet sent: (future, function_id, args_json, kwargs_json).
        self._queue = collections.deque()
        # Sent tasks whose result has not come: task_id -> future.
        self._running = {}
        # Results that came before the POST that created their task answered; kept only
        # while a POST is in flight (any other unknown task is someone else's).
        self._early_results = {}
        self._posts_in_flight = 0
        # When the flusher last took a batch (monotonic seconds).
        self._last_post = float("-inf")
        self._shutdown = False
        self._cursor = None
        self._flusher = None
        self._poller = None
        self._poll_conn = None
        self._start_lock = threading.Lock()

        self._register_lock = threading.Lock()
        self._ids_by_function = weakref.WeakKeyDictionary()
        self._ids_by_source = {}

    def __repr__(self):
        return "Executor(endpoint=%r, client=%r)" % (self.endpoint, self.client)

    # -- submission -------------------------------------------------------------------

    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the endpoint; answers a ``Future``."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        function_id, label = self.function_id(fn)
        args_json, kwargs_json = encode_arguments(args, kwargs, label)
        self._start()
        future = concurrent.futures.Future()
        future.task_id = None
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append((future, function_id, args_json, kwargs_json))
            if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                self._flusher_wakeup.notify()
        return future

    def function_id(self, fn):
        """``(function_id, label)`` for ``fn``, registering it on first use.

        A string is taken as the id of a registered function.
        """
        if isinstance(fn, str):
            return fn, "function %s" % fn
        label = getattr(fn, "__name__", repr(fn))
        try:
            cached = self._ids_by_function.get(fn)
        except TypeError:  # not weakly referenceable; the source cache still applies
            cached = None
        if cached is not None:
            return cached, label
        with self._register_lock:
            source = function_source(fn)
            key = source_hash(fn.__name__, source)
            function_id = self._ids_by_source.get(key)
            if function_id is None:
                function_id = self.client.register_function(source, name=fn.__name__)
                self._ids_by_source[key] = function_id
            try:
                self._ids_by_function[fn] = function_id
            except TypeError:
                pass
        return function_id, label

    def _start(self):
        """Take the results cursor and start the threads, once."""
        if self._flusher is not None:
            return
        with self._start_lock:
            if self._flusher is not None:
                return
            # The cursor is taken before anything is sent, so no result of ours can
            # finish before it.
            self._poll_conn = self.client.new_connection()
            self._cursor = self.client.results(conn=self._poll_conn)["cursor"]
            poller = threading.Thread(
                target=self._poll_loop, name="scifaas-results", daemon=True
            )
            flusher = threading.Thread(
                target=self._flush_loop, name="scifaas-submit", daemon=True
            )
            poller.start()
            flusher.start()
            self._poller = poller
            self._flusher = flusher

    # -- the flusher thread -----------------------------------------------------------

    def _flush_loop(self):
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if batch:
                    self._send(batch)
        finally:
            self.client.close()  # this thread's connection

    def _next_batch(self):
        """The next batch to send; None once shut down with nothing left to send."""
        with self._lock:
            while not self._queue and not self._shutdown:
                self._flusher_wakeup.wait()
            if not self._queue:
                # Shut down and drained: the poller may be waiting for this.
                self._poller_wakeup.notify()
                return None
            if self.batch_interval > 0 and not self._shutdown:
                # At most one POST per batch_interval under load, but the first
                # submission after a quiet spell goes at once: a lone task must not pay
                # for batching it does not need.
                deadline = self._last_post + self.batch_interval
                while len(self._queue) < self.batch_size and not self._shutdown:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._flusher_wakeup.wait(remaining)
            self._last_post = time.monotonic()
            batch = []
            while self._queue and len(batch) < self.batch_size:
                item = self._queue.popleft()
                # A future cancelled while it waited is dropped here.
                if item[0].set_running_or_notify_cancel():
                    batch.append(item)
            if batch:
                self._posts_in_flight += 1
                # The poller may have been idle: results of this batch can come before
                # its POST answers.
                self._poller_wakeup.notify()
            return batch

    def _send(self, batch):
        try:
            body = batch_body(
                self.endpoint, [(fid, args, kwargs) for _, fid, args, kwargs in batch]
            )
            task_ids = self.client.request("POST", "/v1/tasks", body)["task_ids"]
            if len(task_ids) != len(batch):
                raise ScifaasError(
                    0,
                    "bad-answer",
                    "the service answered %d task ids for %d tasks"
                    % (len(task_ids), len(batch)),
                )
        except BaseException as err:  # every future of the batch must learn why
            with self._lock:
                self._on_post_done()
            for future, *_ in batch:
                future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        finished = []
        with self._lock:
            for (future, *_), task_id in zip(batch, task_ids):
                future.task_id = task_id
                view = self._early_results.pop(task_id, None)
                if view is None:
                    self._running[task_id] = future
                else:
                    finished.append((future, view))
            self._on_post_done()
        for future, view in finished:
            resolve(future, view)
        if finished:
            with self._lock:
                self._outstanding_changed.notify_all()

    def _on_post_done(self):
        """A POST answered (or failed). Called with the lock held."""
        self._posts_in_flight -= 1
        if self._posts_in_flight == 0:
            self._early_results.clear()
        self._outstanding_changed.notify_all()

    # -- the poller thread ------------------------------------------------------------

    def _outstanding(self):
        """Whether any sent task awaits its result (or may, a POST being in flight)."""
        return bool(self._running) or self._posts_in_flight > 0

    def _poll_loop(self):
        failures = 0
        while True:
            with self._lock:
                while not self._outstanding():
                    if self._shutdown and not self._queue:
                        return
                    self._poller_wakeup.wait()
                cursor = self._cursor
            try:
                page = self.client.results(
                    after=cursor,
                    timeout=self.poll_timeout,
                    max=self.results_page,
                    conn=self._poll_conn,
                )
                failures = 0
            except Interrupted:
                return
            except ScifaasError as err:
                if 400 <= err.status < 500 and err.status not in RETRYABLE_STATUSES:
                    # The stream refuses us (token revoked, say): no future can resolve.
                    log.error("scifaas: the results stream failed: %s", err)
                    self._fail_running(err)
                    continue
                failures += 1
                self._back_off(failures, err)
                continue
            except Exception as err:  # connection lost, service restarting
                failures += 1
                self._back_off(failures, err)
                continue
            self._on_results(page)

    def _on_results(self, page):
        finished = []
        with self._lock:
            self._cursor = page.get("cursor", self._cursor)
            for view in page.get("tasks") or ():
                if view.get("state") not in TERMINAL_STATES:
                    continue
                task_id = view.get("task_id")
                future = self._running.pop(task_id, None)
                if future is not None:
                    finished.append((future, view))
                elif self._posts_in_flight:
                    self._early_results[task_id] = view
        for future, view in finished:
            resolve(future, view)
        if finished:
            with self._lock:
                self._outstanding_changed.notify_all()

    def _fail_running(self, err):
        with self._lock:
            futures = list(self._running.values())
            self._running.clear()
            self._outstanding_changed.notify_all()
        for future in futures:
            future.set_exception(err)

    def _back_off(self, failures, err):
        delay = min(5.0, 0.05 * 2 ** min(failures, 10))
        log.warning(
            "scifaas: the results stream failed (%s); retrying in %.2f s", err, delay
        )
        time.sleep(delay)

    # -- shutdown ---------------------------------------------------------------------

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop taking submissions; send what is queued (or, with ``cancel_futures``,
        cancel it). With ``wait``, return once every sent task's future is resolved and
        the background threads have stopped."""
        cancelled = []
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                cancelled = [item[0] for item in self._queue]
                self._queue.clear()
            self._flusher_wakeup.notify_all()
            self._poller_wakeup.notify_all()
        for future in cancelled:
            future.cancel()
        if not wait or self._flusher is None:
            return
        self._flusher.join()
        with self._lock:
            while self._outstanding():
                self._outstanding_changed.wait()
        # The poller may be inside a long-poll that no longer matters.
        self._poll_conn.interrupt()
        with self._lock:
            self._poller_wakeup.notify_all()
        self._poller.join()
        self._poll_conn.close()


def resolve(future, view):
    """Settle ``future`` from its task's terminal view."""
    if view.get("state") == "success":
        future.set_result(view.get("result"))
    else:
        future.set_exception(task_failed_from_view(view))
