"""The actor-call half of the owner's state machine (a mixin of ``Owner``, owner.py): calls queue
per actor, are pushed strictly in submission order once the actor's address and incarnation are
known, survive a restart when ``max_task_retries`` allows, and fail with the actor's death cause
otherwise.  Pure, as the rest of the Owner: it only appends actions to ``self.out``."""
from __future__ import annotations

import pickle

from ... import exceptions as exc
from .owner_records import Actor, S


class ActorCalls:
    # --- actors ----------------------------------------------------------------------------------
    def _actor(self, actor_id):
        a = self.actors.get(actor_id)
        if a is None:
            a = self.actors[actor_id] = Actor(actor_id)
        return a

    def on_actor_created(self, actor_id, handle_oid, held, detached):
        a = self._actor(actor_id)
        a.handle_oid = handle_oid
        a.detached = detached
        if held[0]:
            a.held = held
        if handle_oid is not None:
            self.by_handle[handle_oid] = actor_id

    def _locate(self, a, min_incarnation):
        if a.asking:
            return
        a.asking = True
        self.out.append(("locate_actor", a.actor_id, min_incarnation))

    def on_actor_located(self, actor_id, ok, info):
        """The GCS's answer to ``wait_actor``: ALIVE at an address and incarnation, or DEAD."""
        a = self._actor(actor_id)
        a.asking = False
        if not ok:
            self._set_dead(a, None, f"Could not reach the GCS to find the actor: {info}")
        elif info["state"] == "DEAD":
            self._set_dead(a, info.get("cause"), info.get("cause_text"))
        else:
            a.incarnation = info["incarnation"]
            self.out.append(("connect_actor", actor_id, info["address"], a.incarnation))

    def on_actor_connected(self, actor_id, incarnation, ok):
        a = self._actor(actor_id)
        if incarnation != a.incarnation or a.state == "dead":
            return
        if not ok:
            self._locate(a, incarnation + 1)
            return
        a.state = "alive"
        self._pump(a)

    def _pump(self, a):
        if a.state != "alive":
            return
        queue = a.queue
        while queue and queue[0].deps_left == 0:
            call = queue.popleft()
            failed = self._resolve_args(call)
            if failed is not None:
                self._fail_blob(call, failed)
                continue
            if call.state == S.WAITING:
                self._to(call, S.QUEUED)
            self._to(call, S.PUSHED)
            a.inflight[call.tid] = call
            self.out.append(("push_actor", a.actor_id, a.incarnation, call))

    def on_actor_reply(self, actor_id, tid, ok, reply):
        if not ok and isinstance(reply, ConnectionError):
            return    # the connection dropped: actor_lost handles every call in flight on it
        a = self.actors.get(actor_id)
        call = a.inflight.pop(tid, None) if a is not None else None
        if call is None:
            return
        if not ok:
            # the actor's worker refused this one request (a payload it could not accept): the
            # call fails with that reason instead of waiting for an answer that never comes
            self._fail(call, exc.RaySystemError(f"The actor's worker refused the call {call.name}: {reply}"))
            self._pump(a)
            return
        if reply.get("cancelled"):
            # as Ray: a cancelled actor call raises an error that is both a RayTaskError and a
            # TaskCancelledError
            err = exc.TaskCancelledError(call.tid.hex())
            self._fail(call, exc.RayTaskError(call.name, str(err), err).as_instanceof_cause())
        elif reply.get("app_error") and self._should_retry(call, reply):
            call.retries_left -= 1
            self._to(call, S.QUEUED)
            a.queue.appendleft(call)
            self._pump(a)
        else:
            self._complete(call, reply)

    def on_actor_call_written(self, call, incarnation):
        """An actor call its caller's thread wrote to the actor's connection itself (the actor
        was ALIVE at ``incarnation``, nothing queued before it): in flight as if pushed here.
        When the connection it went on was lost first, it is a call lost in flight."""
        self.calls[call.tid] = call
        call.deps_left = 0
        a = self._actor(call.actor)
        if a.state == "alive" and a.incarnation == incarnation:
            self._to(call, S.QUEUED)
            self._to(call, S.PUSHED)
            a.inflight[call.tid] = call
        elif a.state == "dead":
            self._fail(call, a.cause)
        elif call.retries_left > 0:
            call.retries_left -= 1
            self._to(call, S.QUEUED)
            a.queue.appendleft(call)
            if a.state == "alive":
                self._pump(a)
            elif not self.closing:
                self._locate(a, incarnation + 1)
        else:
            self._fail(call, self._died_in_flight(a.actor_id))

    def _died_in_flight(self, actor_id):
        return exc.ActorDiedError(
            error_msg=f"The actor {actor_id.hex()} died while running this call (its worker process "
                      "exited). The call may or may not have run; set max_task_retries to retry calls "
                      "on a restarted actor.", actor_id=actor_id.hex())

    def on_actor_lost(self, actor_id, incarnation):
        """The connection to the actor's worker (incarnation ``incarnation``) dropped."""
        a = self.actors.get(actor_id)
        if a is None or a.incarnation != incarnation or a.state == "dead":
            return
        a.state = "unknown"
        inflight = sorted(a.inflight.values(), key=lambda c: c.tid)
        a.inflight = {}
        retry = []
        for call in inflight:
            if call.cancelled:
                self._fail(call, exc.TaskCancelledError(call.tid.hex()))
            elif call.retries_left > 0:
                call.retries_left -= 1
                self._to(call, S.QUEUED)
                retry.append(call)
            else:
                self._fail(call, self._died_in_flight(actor_id))
        a.queue.extendleft(reversed(retry))
        if not self.closing:
            self._locate(a, incarnation + 1)

    def _set_dead(self, a, cause_blob, text):
        a.state = "dead"
        cause = None
        if cause_blob:
            try:
                cause = pickle.loads(cause_blob)
            except Exception:
                cause = None
        msg = f"The actor {a.actor_id.hex()} is dead: {text or 'unknown cause'}"
        if cause is not None and not isinstance(cause, exc.RuntimeEnvSetupError):
            msg += f"\nIts constructor raised:\n{cause}"
        a.cause = exc.ActorDiedError(cause=cause, actor_id=a.actor_id.hex(), error_msg=msg)
        if isinstance(cause, exc.RuntimeEnvSetupError):   # as Ray: the setup error itself, at every call
            a.cause = cause
        self._fail_actor_queue(a)
        inflight, a.inflight = list(a.inflight.values()), {}
        for call in inflight:
            self._fail(call, a.cause)

    def _fail_actor_queue(self, a):
        while a.queue:
            self._fail(a.queue.popleft(), a.cause)

    def on_handle_freed(self, handle_oid, terminate_call):
        """No handle to a non-detached actor is left anywhere: end it after its queued calls
        (``terminate_call`` is a ready ``__ray_terminate__`` call record to queue)."""
        actor_id = self.by_handle.pop(handle_oid, None)
        if actor_id is None:
            return
        a = self.actors.get(actor_id)
        if a is None or a.state == "dead":
            return
        if a.held:
            self.out.append(("release", a.held[0]))
            a.held = None
        if a.state != "alive" and not a.queue and not a.inflight:
            # never reached by this process: the shell asks the GCS whether it runs (then it ends
            # gracefully, ``terminate_actor``) or is still pending (then it is removed at once)
            self.out.append(("end_actor", actor_id, terminate_call))
            return
        # graceful, as Ray 2.60: after the calls already queued, ``__ray_shutdown__``,
        # ``__del__`` and ``atexit`` run in the actor (bounded by its shutdown timeout)
        terminate_call.actor = actor_id
        self.on_submit(terminate_call, [])

    def on_terminate_actor(self, actor_id, terminate_call):
        """The GCS says an actor freed by ``on_handle_freed`` is running: end it gracefully."""
        a = self.actors.get(actor_id)
        if a is None or a.state == "dead":
            return
        terminate_call.actor = actor_id
        self.on_submit(terminate_call, [])
