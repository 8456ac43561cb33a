"""Errors raised by Luminary, with Ray's class names and hierarchy.

    Exception
     └── RayError
          ├── RayTaskError            an exception raised by user code in a task or actor method;
          │                           ``as_instanceof_cause()`` makes one that is also the user's type
          ├── WorkerCrashedError      the process running the task died
          ├── TaskCancelledError      ``cancel()`` stopped the task
          ├── GetTimeoutError         ``get(timeout=...)`` ran out (also a TimeoutError)
          ├── ObjectLostError         no copy of the object is left
          │    ├── OwnerDiedError     the process that owned the object died
          │    ├── ObjectFetchTimedOutError
          │    └── ObjectReconstructionFailedError
          ├── ObjectStoreFullError    the store is full and spilling cannot help
          ├── RayActorError           the actor died
          │    └── ActorDiedError
          ├── ActorUnavailableError
          ├── RaySystemError          an internal failure, with the cause
          ├── RuntimeEnvSetupError
          └── LocalRayletDiedError / NodeDiedError

Errors cross processes pickled; when the user's exception cannot be pickled, a text copy of it
and its traceback travels instead (``RayTaskError`` keeps the remote traceback as text).
"""
from __future__ import annotations


class RayError(Exception):
    """Base class of every Luminary error."""


class RaySystemError(RayError):
    def __init__(self, client_exc="", traceback_str=None):
        self.client_exc = client_exc
        self.traceback_str = traceback_str
        super().__init__(str(client_exc))


class CrossLanguageError(RayError):
    pass


class RayTaskError(RayError):
    """An exception raised in a remote task or actor method, carried to the caller.

    ``cause`` is the original exception (or None when it could not be pickled) and
    ``traceback_str`` the remote traceback as text.
    """

    def __init__(self, function_name="", traceback_str="", cause=None, proctitle=None,
                 pid=None, ip=None, actor_repr=None, actor_id=None):
        _dual_init(self, function_name, traceback_str, cause, proctitle, pid, ip, actor_repr, actor_id)
        RayError.__init__(self, self._message())

    def _message(self):
        where = ""
        if self.pid:
            extra = f", actor_id={self.actor_id}" if self.actor_id else ""
            extra += f", repr={self.actor_repr}" if self.actor_repr else ""
            where = f" (pid={self.pid}, ip={self.ip}{extra})"
        head = f"{type(self.cause).__name__ if self.cause is not None else 'Exception'}"
        lines = [f"ray::{self.function_name}(){where}"]
        if self.traceback_str:
            lines.append(self.traceback_str.rstrip())
        elif self.cause is not None:
            lines.append(f"{head}: {self.cause}")
        return "\n".join(lines)

    def __str__(self):
        return self._message()

    def __reduce__(self):
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause,
                                      self.pid, self.ip, self.actor_repr, self.actor_id))

    def as_instanceof_cause(self):
        """Return an error that is both a RayTaskError and an instance of the cause's class."""
        cause = self.cause
        if cause is None or isinstance(cause, RayTaskError):
            return cause if isinstance(cause, RayTaskError) else self
        cause_cls = type(cause)
        if issubclass(RayTaskError, cause_cls):
            return self
        try:
            name = f"RayTaskError({cause_cls.__name__})"
            cls = _DUAL_CLASSES.get(cause_cls)
            if cls is None:
                cls = type(name, (RayTaskError, cause_cls), {
                    "__init__": _dual_init, "__str__": RayTaskError.__str__,
                    "__reduce__": RayTaskError.__reduce__, "__module__": cause_cls.__module__})
                cls.__qualname__ = name
                _DUAL_CLASSES[cause_cls] = cls
            err = cls.__new__(cls)
            err.__dict__.update(getattr(cause, "__dict__", {}))
            _dual_init(err, self.function_name, self.traceback_str, cause, self.proctitle,
                       self.pid, self.ip, self.actor_repr, self.actor_id)
            err.args = getattr(cause, "args", ())
            return err
        except TypeError:  # final classes or incompatible layouts: fall back to the plain error
            return self


_DUAL_CLASSES: dict = {}


def _dual_init(self, function_name="", traceback_str="", cause=None, proctitle=None, pid=None,
               ip=None, actor_repr=None, actor_id=None):
    self.function_name = function_name
    self.traceback_str = traceback_str
    self.cause = cause
    self.proctitle = proctitle
    self.pid = pid
    self.ip = ip
    self.actor_repr = actor_repr
    self.actor_id = actor_id


def _rebuild_task_error(function_name, traceback_str, cause, pid, ip, actor_repr, actor_id):
    err = RayTaskError(function_name, traceback_str, cause, None, pid, ip, actor_repr, actor_id)
    return err.as_instanceof_cause()


class WorkerCrashedError(RayError):
    def __init__(self, message="The worker died unexpectedly while executing this task. "
                               "Check the worker's log in the session directory for the cause "
                               "(killed by the OOM killer, a segfault, or os._exit)."):
        super().__init__(message)


class TaskCancelledError(RayError):
    def __init__(self, task_id=None, error_message=None):
        self.task_id = task_id
        msg = error_message or (f"Task {task_id} was cancelled." if task_id else "This task or its dependency was cancelled.")
        super().__init__(msg)

    def __reduce__(self):
        return (TaskCancelledError, (self.task_id, str(self)))


class GetTimeoutError(RayError, TimeoutError):
    pass


class TaskTimeoutError(RayError, TimeoutError):
    """A task or actor call ran longer than its ``timeout_s`` (beyond Ray) and was interrupted."""

    def __init__(self, task_name="", timeout_s=None, message=None):
        self.task_name = task_name
        self.timeout_s = timeout_s
        super().__init__(message or (f"{task_name} did not finish within its timeout_s={timeout_s:g} s and was "
                                     "interrupted. Raise timeout_s, or list TaskTimeoutError in retry_exceptions "
                                     "to run it again."))

    def __reduce__(self):
        return (TaskTimeoutError, (self.task_name, self.timeout_s, str(self)))


class DeadlockError(RayError):
    """(Beyond Ray) A ``get`` waits on a call that can never run: the actors and tasks named in
    ``cycle`` each wait, through ``get`` in every slot they have, on calls queued behind blocked ones."""

    def __init__(self, message="", cycle=None):
        # [{"actor_id" (a task's id for a task), "class_name" ("task" for a task), "method", "waits_for"}]
        self.cycle = list(cycle or [])
        super().__init__(message)

    def __reduce__(self):
        return (DeadlockError, (str(self), self.cycle))


class ObjectLostError(RayError):
    def __init__(self, object_ref_hex="", owner_address="", call_site="", message=None):
        self.object_ref_hex = object_ref_hex
        self.owner_address = owner_address
        self.call_site = call_site
        super().__init__(message or f"Object {object_ref_hex} is lost: no copy of it is left.")

    def __reduce__(self):
        return (type(self), (self.object_ref_hex, self.owner_address, self.call_site, str(self)))


class OwnerDiedError(ObjectLostError):
    def __init__(self, object_ref_hex="", owner_address="", call_site="", message=None):
        super().__init__(object_ref_hex, owner_address, call_site, message or (
            f"Object {object_ref_hex} is lost because its owner ({owner_address or 'unknown'}) died. "
            "Objects are owned by the process that created them (the caller of .remote() or put()); "
            "keep that process alive while others use the object."))


class ObjectFetchTimedOutError(ObjectLostError):
    pass


class ObjectReconstructionFailedError(ObjectLostError):
    pass


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectLostError):
    pass


class ObjectReconstructionFailedLineageEvictedError(ObjectLostError):
    pass


class ReferenceCountingAssertionError(ObjectLostError):
    pass


class ObjectFreedError(ObjectLostError):
    pass


class ObjectStoreFullError(RayError):
    pass


class OutOfDiskError(RayError):
    pass


class OutOfMemoryError(RayError):
    pass


class NodeDiedError(RayError):
    pass


class LocalRayletDiedError(RayError):
    def __init__(self, message="The local node manager died."):
        super().__init__(message)


class RayActorError(RayError):
    def __init__(self, cause=None, actor_id=None, error_msg=None):
        self.actor_id = actor_id
        self.cause = cause
        self.error_msg = error_msg or (str(cause) if cause else "The actor died unexpectedly before finishing this task.")
        super().__init__(self.error_msg)

    def __reduce__(self):
        return (type(self), (self.cause, self.actor_id, self.error_msg))


class ActorDiedError(RayActorError):
    pass


class ActorUnavailableError(RayError):
    pass


class ActorUnschedulableError(RayError):
    pass


class TaskUnschedulableError(RayError):
    pass


class TaskPlacementGroupRemoved(RayError):
    pass


class ActorPlacementGroupRemoved(RayError):
    pass


class RuntimeEnvSetupError(RayError):
    pass


class PendingCallsLimitExceeded(RayError):
    pass


class AsyncioActorExit(RayError):
    pass


class RayChannelError(RaySystemError):
    pass


__all__ = [name for name, val in list(globals().items())
           if isinstance(val, type) and issubclass(val, BaseException)]
