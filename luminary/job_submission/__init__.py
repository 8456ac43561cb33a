"""Submit and follow jobs on a Luminary cluster, with Ray's client API.

    from luminary.job_submission import JobSubmissionClient, JobStatus
    client = JobSubmissionClient("http://127.0.0.1:8265")
    sid = client.submit_job(entrypoint="python train.py", runtime_env={"working_dir": "."})

The client authenticates with a bearer token derived from the cluster secret: on the machine
that started the head it is found automatically; elsewhere set ``$LUMINARY_JOB_TOKEN`` (print
it on the head with ``luminary job token``) or ``$LUMINARY_SECRET_FILE`` (a copy of the head's
secret file), or pass ``headers={"Authorization": "Bearer <token>"}``.
"""
from __future__ import annotations

import asyncio
import enum
import glob
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from .._private.jobs import DEFAULT_PORT, job_token


class JobStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self):
        return self.value

    def is_terminal(self):
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobDetails:
    """What get_job_info / list_jobs return (Ray's JobDetails fields)."""

    def __init__(self, d):
        self._d = dict(d)
        for k, v in d.items():
            setattr(self, k, v)
        self.status = JobStatus(d["status"])

    def __repr__(self):
        return f"JobDetails(submission_id={self.submission_id!r}, status={self.status.value}, entrypoint={self.entrypoint!r})"

    def dict(self):
        return dict(self._d)


JobInfo = JobDetails


def _resolve_address(address):
    address = address or os.environ.get("LUMINARY_JOB_ADDRESS") or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        ra = os.environ.get("RAY_ADDRESS", "")
        address = ra if ra.startswith("http") else f"http://127.0.0.1:{DEFAULT_PORT}"
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


def _find_token(address):
    if os.environ.get("LUMINARY_JOB_TOKEN"):
        return os.environ["LUMINARY_JOB_TOKEN"]
    from .._private.node import launch
    if os.environ.get("LUMINARY_SECRET_FILE"):
        return job_token(launch.read_named_secret(os.environ["LUMINARY_SECRET_FILE"], "$LUMINARY_SECRET_FILE"))
    hostport = urllib.parse.urlsplit(address).netloc
    try:
        files = glob.glob(os.path.join(launch.clusters_dir(), "*.json"))
    except OSError:
        files = []
    for path in files:
        try:
            data = launch.read_cluster_file(path)
        except (OSError, ValueError):
            continue
        api = data.get("job_api") or ""
        if api == hostport or (api.split(":")[-1] == hostport.split(":")[-1]
                               and hostport.split(":")[0] in ("localhost", "127.0.0.1")):
            return job_token(launch.read_named_secret(data["secret_file"], path))
    raise RuntimeError(f"No token for the job API at {address}: no cluster started on this machine serves it. "
                       "Set LUMINARY_JOB_TOKEN (run `luminary job token` on the head to print it) or "
                       "LUMINARY_SECRET_FILE (a 0600 copy of the head's secret file).")


class _Uploader:
    def __init__(self, client):
        self.client = client

    def has(self, sha):
        return self.client._request("GET", f"/api/packages/{sha}")["exists"]

    def put(self, sha, data):
        self.client._request("PUT", f"/api/packages/{sha}", data, raw=True)


class JobSubmissionClient:
    def __init__(self, address=None, create_cluster_if_needed=False, cookies=None, metadata=None,
                 headers=None, verify=True):
        self._address = _resolve_address(address)
        self._headers = dict(headers or {})
        self._metadata = dict(metadata or {})
        if not any(k.lower() == "authorization" for k in self._headers):
            self._headers["Authorization"] = f"Bearer {_find_token(self._address)}"
        self._request("GET", "/api/version")      # fails early, with the reason, when unreachable

    def _request(self, method, path, body=None, raw=False, timeout=60):
        data = body if raw else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self._address + path, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", "")
            except Exception:  # noqa: BLE001
                msg = e.reason
            if e.code == 401:
                raise PermissionError(f"The job API at {self._address} refused the token: {msg}") from None
            raise RuntimeError(f"Request {method} {path} failed ({e.code}): {msg}") from None
        except urllib.error.URLError as e:
            raise ConnectionError(f"Cannot reach the job API at {self._address}: {e.reason}. Is the head "
                                  "running (`luminary start --head`) with its job API on that port?") from None

    def submit_job(self, *, entrypoint, job_id=None, runtime_env=None, metadata=None, submission_id=None,
                   entrypoint_num_cpus=None, entrypoint_num_gpus=None, entrypoint_memory=None,
                   entrypoint_resources=None):
        from .._private.runtime_env import packaging
        spec = packaging.resolve(runtime_env, _Uploader(self)) if runtime_env else None
        body = {"entrypoint": entrypoint, "submission_id": submission_id or job_id,
                "runtime_env": _uri_form(spec), "metadata": dict(self._metadata, **(metadata or {})),
                "entrypoint_num_cpus": entrypoint_num_cpus, "entrypoint_num_gpus": entrypoint_num_gpus,
                "entrypoint_memory": entrypoint_memory, "entrypoint_resources": entrypoint_resources}
        return self._request("POST", "/api/jobs/", body)["submission_id"]

    def _job_path(self, job_id):
        return f"/api/jobs/{urllib.parse.quote(job_id, safe='')}"

    def get_job_info(self, job_id) -> JobDetails:
        return JobDetails(self._request("GET", self._job_path(job_id)))

    def get_job_status(self, job_id) -> JobStatus:
        return self.get_job_info(job_id).status

    def list_jobs(self):
        return [JobDetails(d) for d in self._request("GET", "/api/jobs/")["jobs"]]

    def stop_job(self, job_id) -> bool:
        return self._request("POST", self._job_path(job_id) + "/stop")["stopped"]

    def delete_job(self, job_id) -> bool:
        return self._request("DELETE", self._job_path(job_id))["deleted"]

    def get_job_logs(self, job_id) -> str:
        return self._request("GET", self._job_path(job_id) + "/logs")["logs"]

    def iter_job_logs(self, job_id):
        """Yield the job's output as it is written, until the job ends (sync form of tail_job_logs)."""
        offset = 0
        while True:
            r = self._request("GET", self._job_path(job_id) + f"/logs/tail?offset={offset}", timeout=60)
            offset = r["offset"]
            if r["data"]:
                yield r["data"]
            if r["done"]:
                return

    async def tail_job_logs(self, job_id):
        """Async generator of the job's output as it is written, ending when the job ends (as Ray's)."""
        loop = asyncio.get_event_loop()
        it = self.iter_job_logs(job_id)
        end = object()
        while True:
            chunk = await loop.run_in_executor(None, next, it, end)
            if chunk is end:
                return
            yield chunk

    def wait_until_terminal(self, job_id, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.iter_job_logs(job_id):
            if deadline is not None and time.monotonic() > deadline:
                break
        return self.get_job_status(job_id)


def _uri_form(spec):
    """A resolved spec back in runtime_env form, local paths replaced by the uploaded packages' URIs."""
    if not spec:
        return None
    out = dict(spec.get("user") or {})
    out.pop("excludes", None)
    for k in ("working_dir", "py_modules", "pip", "env_vars", "config"):
        if k in spec:
            out[k] = spec[k]
    if "uv" in out:
        del out["uv"]
    if isinstance(out.get("pip"), dict):
        out["pip"] = {"packages": out["pip"]["packages"], "pip_install_options": out["pip"]["options"]}
    return out


__all__ = ["JobSubmissionClient", "JobStatus", "JobDetails", "JobInfo"]
