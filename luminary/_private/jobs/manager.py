"""The job table and supervisor, in the head's node manager process.

    submit ─▶ PENDING (runtime env prepared by the node's EnvAgent) ─▶ RUNNING: the entrypoint
    runs under ``/bin/sh -c`` in its own process group, as a driver of this cluster
    ($LUMINARY_ADDRESS / $RAY_ADDRESS), stdout and stderr into logs/job-<id>.log
    ─▶ SUCCEEDED (exit 0) | FAILED (non-zero, or the env failed: message with the log tail)
    | STOPPED (stop: SIGTERM to the group, SIGKILL after a grace period)

Each job's record lives in the GCS KV (namespace ``jobs``), so it outlives the client that
submitted it; the log file lives in the head's session directory.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

from .. import procutil
from ..runtime_env import packaging

logger = logging.getLogger(__name__)
TERMINAL = ("STOPPED", "SUCCEEDED", "FAILED")
STOP_GRACE_S = 3.0
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class JobError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _NoUpload:
    def has(self, sha):
        return False

    def put(self, sha, data):
        raise ValueError("the job API takes runtime_env packages by URI: upload local directories first "
                         "(luminary.job_submission.JobSubmissionClient and `luminary job submit` do it for you)")


class JobManager:
    def __init__(self, nm):
        self.nm = nm
        self.procs = {}            # submission id -> Popen of its entrypoint
        self.stopping = set()
        self.log_dir = os.path.join(nm.session_dir, "logs")

    # --- the table (GCS KV) --------------------------------------------------------------------------
    async def get(self, sid):
        raw = await self.nm.gcs.call("kv_get", {"key": f"job:{sid}".encode(), "ns": "jobs"})
        return json.loads(raw) if raw else None

    async def _put(self, info):
        await self.nm.gcs.call("kv_put", {"key": f"job:{info['submission_id']}".encode(),
                                          "value": json.dumps(info).encode(), "ns": "jobs"})

    async def list(self):
        keys = await self.nm.gcs.call("kv_keys", {"prefix": b"job:", "ns": "jobs"})
        out = []
        for k in keys:
            info = await self.get(k.decode()[4:])
            if info:
                out.append(info)
        return sorted(out, key=lambda i: i.get("start_time") or 0)

    def log_path(self, sid):
        return os.path.join(self.log_dir, f"job-{sid}.log")

    # --- submit, run, stop, delete ---------------------------------------------------------------------
    async def submit(self, body):
        entry = body.get("entrypoint")
        if not isinstance(entry, str) or not entry.strip():
            raise JobError(400, "entrypoint must be a non-empty shell command string")
        sid = body.get("submission_id") or f"luminary_submit_{os.urandom(8).hex()}"
        if not isinstance(sid, str) or not _ID_RE.match(sid):
            raise JobError(400, f"submission_id {sid!r} must be 1-128 letters, digits, '_', '-' or '.'")
        if await self.get(sid) is not None:
            raise JobError(400, f"a job with submission_id {sid!r} already exists; pick another or delete it")
        try:
            spec = packaging.resolve(body.get("runtime_env"), _NoUpload()) if body.get("runtime_env") else None
        except (TypeError, ValueError) as e:
            raise JobError(400, f"bad runtime_env: {e}") from None
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise JobError(400, "metadata must be a dict of str to str")
        info = {"submission_id": sid, "job_id": None, "type": "SUBMISSION", "status": "PENDING", "entrypoint": entry,
                "message": "Job is waiting for its runtime environment and driver to start.",
                "start_time": int(time.time() * 1000), "end_time": None, "metadata": meta,
                "runtime_env": (spec or {}).get("user") or {}, "driver_exit_code": None, "driver_pid": None,
                "entrypoint_num_cpus": body.get("entrypoint_num_cpus"),
                "entrypoint_num_gpus": body.get("entrypoint_num_gpus"),
                "entrypoint_memory": body.get("entrypoint_memory"),
                "entrypoint_resources": body.get("entrypoint_resources")}
        await self._put(info)
        asyncio.ensure_future(self._run(info, spec))
        return sid

    async def _run(self, info, spec):
        sid = info["submission_id"]
        try:
            ctx = await self.nm.envs.ensure(spec) if spec else {}
        except Exception as e:  # noqa: BLE001
            await self._finish(info, "FAILED", f"Runtime environment setup failed: {e}")
            return
        if sid in self.stopping:
            await self._finish(info, "STOPPED", "Job was stopped before its driver started.")
            return
        env = dict(os.environ)
        env.update(ctx.get("env_vars") or {})
        addr = self.nm.cfg["gcs_address"]
        addr = addr[4:] if addr.startswith("tcp:") else addr
        env.update(LUMINARY_ADDRESS=addr, RAY_ADDRESS=addr, LUMINARY_SUBMISSION_ID=sid, RAY_JOB_ID=sid,
                   PYTHONUNBUFFERED="1")
        if spec:
            env["LUMINARY_JOB_RUNTIME_ENV"] = json.dumps(spec)
        paths = list(ctx.get("paths") or ())
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        # `python` in the entrypoint is the cluster's interpreter (or the pip env's)
        python = ctx.get("python") or sys.executable
        env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")
        if ctx.get("python"):
            env["VIRTUAL_ENV"] = os.path.dirname(os.path.dirname(python))
        try:
            log = open(self.log_path(sid), "ab")
            proc = subprocess.Popen(["/bin/sh", "-c", info["entrypoint"]], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=ctx.get("cwd") or os.path.expanduser("~"),
                                    env=env, start_new_session=True, preexec_fn=procutil.die_with_parent)
            log.close()
        except OSError as e:
            await self._finish(info, "FAILED", f"The entrypoint could not be started: {e}")
            return
        self.procs[sid] = proc
        info.update(status="RUNNING", driver_pid=proc.pid, message="Job is running.")
        await self._put(info)
        loop = asyncio.get_event_loop()
        done = loop.create_future()
        threading.Thread(target=lambda: loop.call_soon_threadsafe(
            lambda rc=proc.wait(): done.done() or done.set_result(rc)), daemon=True, name=f"job-{sid}").start()
        rc = await done
        self.procs.pop(sid, None)
        info["driver_exit_code"] = rc
        if sid in self.stopping:
            await self._finish(info, "STOPPED", "Job was stopped.")
        elif rc == 0:
            await self._finish(info, "SUCCEEDED", "Job finished successfully.")
        else:
            await self._finish(info, "FAILED", f"Job entrypoint command failed with exit code {rc}, last "
                                               f"lines of its output:\n{self._tail(sid)}")

    def _tail(self, sid, n=20):
        try:
            with open(self.log_path(sid), "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path(sid)) - 8192))
                return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    async def _finish(self, info, status, message):
        self.stopping.discard(info["submission_id"])
        info.update(status=status, message=message, end_time=int(time.time() * 1000))
        if not self.nm.gcs.closed:
            await self._put(info)

    async def stop(self, sid):
        info = await self.get(sid)
        if info is None:
            raise JobError(404, f"no job with submission_id {sid!r}")
        if info["status"] in TERMINAL:
            return False
        self.stopping.add(sid)
        proc = self.procs.get(sid)
        if proc is not None:
            _killpg(proc.pid, signal.SIGTERM)
            asyncio.get_event_loop().call_later(STOP_GRACE_S, _killpg, proc.pid, signal.SIGKILL)
        return True

    async def delete(self, sid):
        info = await self.get(sid)
        if info is None:
            raise JobError(404, f"no job with submission_id {sid!r}")
        if info["status"] not in TERMINAL:
            raise JobError(400, f"job {sid!r} is {info['status']}: stop it before deleting it")
        await self.nm.gcs.call("kv_del", {"key": f"job:{sid}".encode(), "ns": "jobs"})
        try:
            os.unlink(self.log_path(sid))
        except OSError:
            pass
        return True

    def shutdown(self):
        """The head is stopping: every job's driver and what it started end with it."""
        for proc in list(self.procs.values()):
            _killpg(proc.pid, signal.SIGKILL)


def _killpg(pid, sig):
    try:
        os.killpg(pid, sig)
    except OSError:
        pass
