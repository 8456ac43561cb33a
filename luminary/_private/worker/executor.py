"""Running pushed tasks in a worker process.

    I/O thread                               │ main thread
    push_task ─▶ ExecTask(QUEUED) ─ queue ──▶│ claim (QUEUED→RUNNING) ─ load args ─ run ─ pack
    cancel_task: QUEUED → CANCELLED          │   returns (inline, or written to the store)
                 RUNNING → SIGINT (or exit)  │ ◀── post(reply) ─────────────────────────────
    blocked in get: QUEUED tasks → BOUNCED back to their owners (so they run elsewhere)

Each ExecTask has a small lock so the two threads never both claim it.
"""
from __future__ import annotations

import ctypes
import inspect
import os
import queue
import signal
import threading
import sys
import time
import traceback

from ... import exceptions as exc
from .. import ids, procutil, serialization
from ..rpc import messages
from ..rpc.protocol import DEFERRED
from .actor import _ActorExit
from .core import ObjectLocationLost
from .execution import E as ExecState, ExecTask


def procutil_name(class_name):
    procutil.set_name(f"luminary::{class_name}")



class TaskCancelled(BaseException):
    """Raised in the running call's thread when it is cancelled."""


class TaskTimedOut(BaseException):
    """Raised in the running call's thread when it ran past its timeout_s."""


TIMEOUT_GRACE_S = 5.0    # after the interrupt, a call still running is ended with its worker


_PKG_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


def user_traceback(e):
    """The traceback of a user's exception as Ray prints it: the user's own frames (files and
    lines), none of Luminary's, then the exception; chained causes keep their own tracebacks."""
    te = traceback.TracebackException(type(e), e, e.__traceback__, compact=True)
    out = []

    def emit(te):
        if te.__cause__ is not None:
            emit(te.__cause__)
            out.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif te.__context__ is not None and not te.__suppress_context__:
            emit(te.__context__)
            out.append("\nDuring handling of the above exception, another exception occurred:\n\n")
        frames = [f for f in te.stack if not f.filename.startswith(_PKG_DIR)]
        out.extend(traceback.StackSummary.from_list(frames).format())
        out.extend(te.format_exception_only())
    try:
        emit(te)
    except Exception:  # never lose the error over its formatting
        return traceback.format_exc()
    return "".join(out)


class Executor:
    def __init__(self, core):
        self.core = core
        self.queue = queue.SimpleQueue()
        self.pending: dict[bytes, ExecTask] = {}
        self.running = None
        self.functions = {}
        self.node_ip = core.cfg.get("node_ip", "127.0.0.1")
        core.executor = self
        self.actor = None
        self.tls = threading.local()     # .task: the ExecTask this thread runs (is_canceled)
        self.omp_from_cpus = os.environ.get("LUMINARY_OMP_FROM_CPUS") == "1"
        self._omp = None
        self.calls_of = {}               # function id -> calls run here (max_calls)
        self.retire_after = None         # the call after whose reply this worker exits (max_calls)
        signal.signal(signal.SIGINT, self._on_sigint)

    def handlers(self):
        """What a worker handles beyond its core (registered by CoreWorker with the table)."""
        return {**messages.push_handlers(self.h_push_task), "cancel_task": self.h_cancel_task,
                "create_actor": self.h_create_actor}

    # --- I/O thread -------------------------------------------------------------------------------
    def h_create_actor(self, conn, spec):
        spec["tid"] = b"create-" + spec["actor_id"]
        t = ExecTask(spec, conn, conn.current_rid)
        if "path" in spec:
            known = set(sys.path)
            sys.path.extend(p for p in spec["path"] if p not in known)
        self.queue.put(t)
        return DEFERRED

    def h_push_task(self, conn, spec):
        t = ExecTask(spec, conn, conn.current_rid)
        self.pending[spec["tid"]] = t
        if "path" in spec:
            known = set(sys.path)
            for p in spec["path"]:
                if p not in known:
                    sys.path.append(p)
        if "fn" in spec:
            self.functions.setdefault(spec["fid"], spec["fn"])
        actor = self.actor
        if actor is not None:
            if actor.is_async:
                if actor.schedule(t):
                    return DEFERRED
            elif actor.threaded and "cls" not in spec:
                # straight to the group's threads: no hop through the main thread
                actor.pool_for(spec.get("group")).submit(t)
                return DEFERRED
        self.queue.put(t)
        return DEFERRED

    def _reply(self, t, reply):
        self.pending.pop(t.spec["tid"], None)
        if t.state == ExecState.FINISHED:
            self.core.events.ended(t, reply)
        if t.take_answer():
            t.conn.reply(t.rid, True, reply)
        if t is self.retire_after:
            self._retire(t)

    def _calls_used_up(self, spec):
        """Ray's ``max_calls``: this worker has now run the function that many times."""
        fid = spec["fid"]
        n = self.calls_of[fid] = self.calls_of.get(fid, 0) + 1
        return n >= spec["max_calls"]

    def _retire(self, last):
        """(I/O thread) ``max_calls`` reached and the last reply written: hand any call queued
        here back to its owner, flush, and end the process (its resources return with it)."""
        conns = {last.conn}
        for t in list(self.pending.values()):
            if t.bounce():
                self._reply(t, {"bounced": True})
                conns.add(t.conn)
        for conn in conns:
            conn._flush()
        procutil.flush_and_exit(0)

    def h_cancel_task(self, conn, p):
        t = self.pending.get(p["tid"])
        if t is None:
            return
        what = t.cancel()
        if what == "answer":
            self._reply(t, {"cancelled": True})
            return
        if what is None:
            return
        if p.get("recursive", True):
            # the tasks this call submitted (and, through their workers, theirs) are cancelled too
            self.core.submitter.feed(("cancel_children", p["tid"], bool(p.get("force"))))
        if p.get("force") and t.afut is None:
            procutil.flush_and_exit(1)
        self._interrupt(t, TaskCancelled)

    def _interrupt(self, t, exc_type):
        """Stop a running call: cancel its coroutine (async actors: it sees CancelledError), raise
        ``exc_type`` in its thread (threaded actors), or SIGINT the main thread (tasks, sync actors)."""
        if t.afut is not None:
            self.actor.loop.call_soon_threadsafe(t.afut.cancel)
            return
        ident = t.thread
        if ident is not None and ident != threading.main_thread().ident:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
            return
        os.kill(os.getpid(), signal.SIGINT)

    def arm_timeout(self, t):
        """(I/O thread) Interrupt ``t`` when its timeout_s passes."""
        self.core.io.loop.call_later(t.spec["timeout_s"], self._on_timeout, t)

    def _on_timeout(self, t):
        if not t.time_out():
            return
        self._interrupt(t, TaskTimedOut)
        self.core.io.loop.call_later(TIMEOUT_GRACE_S, self._force_timeout, t)

    def _force_timeout(self, t):
        """The call ignored the interrupt: answer it with TaskTimeoutError and end this worker."""
        if t.state != ExecState.RUNNING or t.answered:
            return
        spec = t.spec
        reply = self._error_reply(spec, self._timeout_error(spec, None), spec.get("nret", 1))
        reply["exiting"] = True
        self._reply(t, reply)
        t.conn._flush()
        procutil.flush_and_exit(1)

    @staticmethod
    def _timeout_error(spec, interrupted):
        err = exc.TaskTimeoutError(spec["name"], spec["timeout_s"])
        if interrupted is not None:
            err.__traceback__ = interrupted.__traceback__    # where the call was when time ran out
        return err

    def bounce_queued(self):
        if self.actor is not None:
            return  # an actor's calls can only run here
        for t in list(self.pending.values()):
            if t.bounce():
                self._reply(t, {"bounced": True})

    # --- main thread ----------------------------------------------------------------------------------
    def _on_sigint(self, signum, frame):
        t = self.running
        if t is not None and t.timed_out:
            raise TaskTimedOut()
        if t is not None and t.cancel_requested:
            raise TaskCancelled()
        raise KeyboardInterrupt

    def run_forever(self):
        q = self.queue
        while True:
            try:
                t = q.get()
                if "cls" in t.spec:
                    self.create_actor(t)
                    continue
                if self.actor is not None and self.actor.threaded:
                    self.actor.pool_for(t.spec.get("group")).submit(t)
                    continue
                if not self.claim(t):
                    continue
                self.running = t
                reply = self.execute(t)
                self.running = None
                t.finish()
                if "max_calls" in t.spec and self.actor is None and self._calls_used_up(t.spec):
                    reply["exiting"] = True      # the owner pushes this worker nothing more
                    self.retire_after = t
                    self.finish(t, reply)
                    threading.Event().wait()     # the I/O thread ends the process after the reply
                self.finish(t, reply)
            except (KeyboardInterrupt, TaskCancelled, TaskTimedOut):
                # a cancel that arrived just after its task finished
                self.running = None
                continue

    def _run_threaded(self, t):
        """(a thread of a threaded actor's group, see actor_executor.CallThreads)"""
        if not self.claim(t):
            return
        reply = self.execute(t)
        t.finish()
        self.finish(t, reply)

    def claim(self, t):
        """(the thread that runs ``t``) Take a queued call to run: False if it was cancelled
        first; else its task events know a call runs and its timeout is armed."""
        if not t.claim():
            return False
        events = self.core.events
        if not events.armed:
            events.running()
        if "timeout_s" in t.spec:
            self.core.io.post(self.arm_timeout, t)
        return True

    def create_actor(self, t):
        from .actor_executor import ActorRuntime
        spec = t.spec
        rt = ActorRuntime(self, spec)
        core = self.core
        core.job_id = spec.get("job", core.job_id)
        core.namespace = spec.get("namespace")
        core.current_pg = spec.get("pg")
        if spec.get("gpus"):    # the actor's devices, for its whole life (get_gpu_ids, CUDA_VISIBLE_DEVICES)
            core.gpu_ids = list(spec["gpus"])
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in core.gpu_ids)
        if self.omp_from_cpus:
            self.set_omp_threads(spec.get("ncpu", 0))
        core.current_task_name = spec.get("class_name", "actor") + ".__init__"
        core.in_actor_init = True
        try:
            rt.create(spec)
        except Exception as e:  # noqa: BLE001 - the constructor may raise anything
            tb = user_traceback(e)
            err = exc.RayTaskError(f"{spec.get('class_name', 'Actor')}.__init__", tb, e, pid=os.getpid(), ip=self.node_ip)
            self.core.io.post(self._reply_create, t, {"error": serialization.dumps_error(err),
                                                      "error_text": f"{type(e).__name__}: {e}"})
            return
        except _ActorExit as e:
            # exit_actor() in __init__: as Ray, the hooks run on the half-made instance, then
            # the actor is dead (never restarted) and its calls fail with ActorDiedError
            self._exit_in_init(t, rt, spec, e)
        finally:
            core.current_task_name = None
            core.in_actor_init = False
        self.actor = rt
        core.current_actor = rt
        procutil_name(spec.get("class_name", "actor"))
        self.core.io.post(self._reply_create, t, {"ok": True, "pid": os.getpid()})
        if rt.is_async:
            rt.run_async_forever(self.queue)

    def _exit_in_init(self, t, rt, spec, e):
        cls_name = spec.get("class_name", "Actor")
        frame_tb, inst = e.__traceback__, None
        while frame_tb is not None and inst is None:      # the instance: __init__'s ``self``
            inst = frame_tb.tb_frame.f_locals.get("self") if frame_tb.tb_frame.f_code.co_name == "__init__" else None
            frame_tb = frame_tb.tb_next
        del e, frame_tb
        rt.instance = inst
        done = threading.Event()
        timer = threading.Timer(rt.shutdown_timeout_s, done.set)
        timer.daemon = True
        timer.start()
        threading.Thread(target=lambda: (rt.run_shutdown_hooks(), done.set()), daemon=True).start()
        done.wait()
        why = RuntimeError(f"{cls_name}.__init__ called exit_actor(): the actor exited intentionally.")
        err = exc.RayTaskError(f"{cls_name}.__init__", str(why), why, pid=os.getpid(), ip=self.node_ip)
        reply = {"error": serialization.dumps_error(err), "error_text": str(why)}
        self.core.io.post(self._reply_create_and_exit, t, reply)
        threading.Event().wait()          # the I/O thread ends the process once the reply is out

    def _reply_create_and_exit(self, t, reply):
        self._reply_create(t, reply)
        t.conn._flush()
        procutil.flush_and_exit(0)

    def _reply_create(self, t, reply):
        if t.take_answer():
            t.conn.reply(t.rid, True, reply)

    def finish(self, t, reply):
        """Send the reply once the owners of refs we return know the caller holds them.

        A call that finished with values held in the reply itself, with nothing queued behind it,
        is answered from this thread straight onto the socket when the connection is idle
        (``reply_from_thread``): no hand-off to the I/O thread.  With other calls queued or
        running (pipelined tasks, a threaded actor's group), the I/O thread writes the answers,
        several per write, and the threads do not queue for the socket.  Values in the store, generators and third-party borrowers
        go through the I/O thread, which keeps their messages in order."""
        third = reply.pop("_register", None)
        if third:
            self.core.io.post(self._register_then_reply, t, reply, third)
            return
        if (DIRECT_REPLY and t.state == ExecState.FINISHED and len(self.pending) <= 1 and _inline(t.spec, reply)
                and t.take_answer()):
            tid = t.spec["tid"]
            self.pending.pop(tid, None)
            self.core.events.ended(t, reply)
            t.conn.reply_from_thread(t.rid, reply)
            return
        self.core.io.post(self._reply, t, reply)

    def _register_then_reply(self, t, reply, third):
        owner_addr = t.spec["owner"]
        by_owner = {}
        for oid, owner in third:
            by_owner.setdefault(owner, []).append(oid)
        remaining = [len(by_owner)]

        def acked(ok, res):
            remaining[0] -= 1
            if remaining[0] == 0:
                self._reply(t, reply)
        for owner, oids in by_owner.items():
            self.core.with_conn(owner, lambda c, e, oids=oids: acked(False, e) if c is None else c.request(
                "add_borrower", {"oids": oids, "addr": owner_addr}, acked))

    def set_omp_threads(self, ncpu):
        """OMP_NUM_THREADS follows the CPUs a task or actor asked for (at least 1), as in Ray,
        unless the user set it for the cluster."""
        n = str(max(1, int(ncpu or 0)))
        if n != self._omp:
            self._omp = n
            os.environ["OMP_NUM_THREADS"] = n

    def get_function(self, fid):
        fn = self.functions.get(fid)
        if isinstance(fn, bytes):
            import cloudpickle
            fn = cloudpickle.loads(fn)
            self.functions[fid] = fn
        if fn is None:
            raise exc.RaySystemError(f"function {fid.hex()} was never sent to this worker")
        return fn

    def load_args(self, spec):
        core = self.core
        kind, data = spec["args"][:2]
        if kind == "v":
            with serialization.collect_deserialized_refs() as refs:
                args, kwargs = serialization.loads_inline(data)
            if refs:
                core.register_borrowed(refs)
        else:
            args, kwargs = core.read_store_object(data, spec["args"][2:])
        resolved = spec.get("refs")
        if resolved:
            args = list(args)
            for pos, rkind, rdata, oid, owner in resolved:
                try:
                    value = core.deserialize(oid, rkind, rdata)
                except ObjectLocationLost as lost:
                    # the argument's only copy died with its node: the owner rebuilds it (lineage)
                    from .object_ref import ObjectRef
                    ref = ObjectRef(oid, owner)
                    core.recover(ref, lost)
                    value = core.get_objects([ref], None)[0]
                if isinstance(pos, int):
                    args[pos] = value
                else:
                    kwargs[pos] = value
        return args, kwargs

    def execute(self, t):
        spec = t.spec
        core = self.core
        name = spec["name"]
        core.current_task_id = spec["tid"]
        core.current_task_name = name
        self.tls.task = t
        t.thread = threading.get_ident()
        core.job_id = spec.get("job", core.job_id)
        core.assigned_resources = spec.get("res", {})
        if self.omp_from_cpus and self.actor is None:
            self.set_omp_threads(spec.get("ncpu", 1))
        if self.actor is None:
            core.current_pg = spec.get("pg")
        if "ns" in spec:
            core.namespace = spec["ns"]
        gpus = spec.get("gpus")
        if self.actor is None and (gpus or core.gpu_ids):
            core.gpu_ids = gpus or []
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in core.gpu_ids)
        nret = spec["nret"]
        start = time.perf_counter()
        actor = self.actor
        try:
            fn = actor.method(spec["method"]) if actor is not None else self.get_function(spec["fid"])
            args, kwargs = self.load_args(spec)
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            if nret in ("streaming", "dynamic"):
                return self._run_generator(t, result, nret, start)
            failed = None
            if inspect.isgenerator(result) and isinstance(nret, int) and nret != 1:
                result, failed = self._collect_static(result, nret)
            if failed is None:
                reply = self._pack(spec, result, nret)
            else:
                # values yielded before the generator raised are returned; the rest raise (as Ray)
                reply = self._error_reply(spec, failed, nret)
                done = [self._store(spec, ids.object_id(spec["tid"], i + 1), v, reply, i) for i, v in enumerate(result)]
                reply["rets"] = done + reply["rets"][len(result):]
            if actor is not None:
                actor.after_call()
        except _ActorExit:
            actor.exit()
        except TaskTimedOut as e:
            reply = self._error_reply(spec, self._timeout_error(spec, e), nret)
        except TaskCancelled:
            reply = {"cancelled": True}
        except KeyboardInterrupt:
            if t.cancel_requested:
                reply = {"cancelled": True}
            else:
                reply = self._error_reply(spec, KeyboardInterrupt("interrupted"), nret)
        except Exception as e:  # noqa: BLE001 - user code may raise anything
            reply = self._error_reply(spec, e, nret)
        finally:
            core.current_task_id = None
            core.current_task_name = None
        reply["dur"] = time.perf_counter() - start
        return reply

    def _collect_static(self, gen, nret):
        """The values of a generator task with a static num_returns, and the exception it raised
        before yielding them all (None when it yielded enough).  As Ray: once ``nret`` values are
        there, more values or an exception after them are only reported, not raised."""
        out = []
        try:
            for v in gen:
                out.append(v)
                if len(out) == nret:
                    break
        except Exception as e:  # noqa: BLE001 - user code
            return out, e
        if len(out) < nret:
            raise ValueError(f"Task returned {len(out)} objects, but num_returns={nret}.")
        try:
            next(gen)
            extra = f"it yielded more than num_returns={nret} values"
        except StopIteration:
            return out, None
        except Exception as e:  # noqa: BLE001 - user code
            extra = f"it raised {type(e).__name__}: {e}"
        finally:
            gen.close()
        print(f"Unhandled error: the generator task returned all {nret} values, then {extra}; "
              "the rest is ignored (as in Ray).", file=sys.stderr)
        return out, None

    def _error_reply(self, spec, e, nret):
        tb = user_traceback(e)
        actor = self.actor
        actor_id = actor_repr = None
        if actor is not None:
            actor_id = actor.actor_id.hex()
            actor_repr = actor.repr()
        err = exc.RayTaskError(spec["name"], tb, e, pid=os.getpid(), ip=self.node_ip,
                               actor_repr=actor_repr, actor_id=actor_id)
        blob = serialization.dumps_error(err)
        n = nret if isinstance(nret, int) else 1
        return {"rets": [["e", blob]] * max(n, 1), "app_error": True}

    def _store(self, spec, oid, value, reply, idx):
        sobj = serialization.serialize(value)
        kind, data = self.core.store_value_for(oid, sobj, spec["owner_id"])
        if sobj.contained:
            self._note_contained(spec, sobj.contained, reply, idx)
        return [kind, data]

    def _note_contained(self, spec, contained, reply, idx):
        me = self.core.address
        owner = spec["owner"]
        mine, third = [], reply.setdefault("_register", [])
        for r in contained:
            reply.setdefault("contained", []).append([idx, r.id, r.owner])
            if r.owner == me:
                mine.append(r.id)
            elif r.owner != owner:
                third.append((r.id, r.owner))
        if mine:
            self.core.io.post(self._add_borrowers, mine, owner)
        if not third:
            reply.pop("_register")

    def _add_borrowers(self, oids, addr):
        for oid in oids:
            self.core.refs.add_borrower(oid, addr)

    def _pack(self, spec, result, nret):
        tid = spec["tid"]
        reply = {}
        if nret == 1:
            reply["rets"] = [self._store(spec, ids.object_id(tid, 1), result, reply, 0)]
            return reply
        if nret == 0:
            reply["rets"] = []
            return reply
        try:
            values = list(result)
        except TypeError:
            raise ValueError(f"Task {spec['name']} has num_returns={nret} but returned a "
                             f"{type(result).__name__}, not a sequence of {nret} values.") from None
        if len(values) != nret:
            raise ValueError(f"Task {spec['name']} returned {len(values)} values, but num_returns={nret}.")
        reply["rets"] = [self._store(spec, ids.object_id(tid, i + 1), v, reply, i) for i, v in enumerate(values)]
        return reply

    async def run_async_generator(self, t, agen, nret, start):
        idx = first = 1 if nret == "streaming" else 2
        try:
            async for value in agen:
                self._emit_item(t, idx, value)
                idx += 1
        except Exception as e:  # noqa: BLE001
            self._emit_error(t, idx, e)
            idx += 1
        return self._generator_reply(nret, idx - first, start)

    def _emit_item(self, t, idx, value):
        """Store one yielded value and tell the caller at once (on the push connection)."""
        spec = t.spec
        item = {}
        ret = self._store(spec, ids.object_id(spec["tid"], idx), value, item, 0)
        msg = {"tid": spec["tid"], "idx": idx, "ret": ret}
        if item.get("contained"):
            msg["contained"] = [[o, w] for _, o, w in item["contained"]]
        self.core.io.post(t.conn.notify, "gen_item", msg)

    def _emit_error(self, t, idx, e):
        err = self._error_reply(t.spec, e, 1)["rets"][0]
        self.core.io.post(t.conn.notify, "gen_item", {"tid": t.spec["tid"], "idx": idx, "ret": err})

    @staticmethod
    def _generator_reply(nret, n, start):
        reply = {"gen_count": n} if nret == "streaming" else {"dynamic": n, "rets": []}
        reply["dur"] = time.perf_counter() - start
        return reply

    def _run_generator(self, t, gen, nret, start):
        spec = t.spec
        idx = first = 1 if nret == "streaming" else 2
        if not inspect.isgenerator(gen) and not hasattr(gen, "__next__"):
            try:
                gen = iter(gen)
            except TypeError:
                raise ValueError(f"Task {spec['name']} was called with num_returns={nret!r} "
                                 f"but returned {type(gen).__name__}, not a generator.") from None
        try:
            for value in gen:
                self._emit_item(t, idx, value)
                idx += 1
        except TaskCancelled:
            return {"cancelled": True, "dur": time.perf_counter() - start}
        except Exception as e:  # noqa: BLE001
            self._emit_error(t, idx, e)
            idx += 1
        return self._generator_reply(nret, idx - first, start)


DIRECT_REPLY = os.environ.get("LUMINARY_DIRECT_REPLY", "1") != "0"


def _inline(spec, reply):
    """Every return value travels in the reply itself (no store object, not a generator, whose
    items the I/O thread sends before the answer) and holds no ObjectRef (the caller asks the
    owner about those at once, so this process's I/O thread must have counted them first), and
    is not the last of a worker retiring for max_calls (the I/O thread ends the process after it)."""
    rets = reply.get("rets")
    if rets is None or spec["nret"].__class__ is not int or "contained" in reply or "exiting" in reply:
        return False            # refs inside: their counts and borrowers are set on the I/O thread first
    for r in rets:
        if r[0] != "v" and r[0] != "e":
            return False
    return True
