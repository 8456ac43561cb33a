"""``luminary job ...``: submit, follow, stop, list and delete jobs through the head's job API."""
from __future__ import annotations

import json
import sys


def add_parsers(sub):
    job = sub.add_parser("job", help="submit and manage jobs on a cluster (its head's job API)")
    jsub = job.add_subparsers(dest="job_cmd", required=True)

    def with_address(p):
        p.add_argument("--address", help="the job API, e.g. http://127.0.0.1:8265 (default: $LUMINARY_JOB_ADDRESS, "
                                         "$RAY_API_SERVER_ADDRESS, then http://127.0.0.1:8265)")
        return p
    s = with_address(jsub.add_parser("submit", help="run a command on the cluster as a job: job submit -- CMD"))
    s.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    s.add_argument("--working-dir", help="a local directory (or .zip) uploaded and made the job's working dir")
    s.add_argument("--runtime-env-json", help="a runtime_env as JSON, e.g. '{\"pip\": [\"requests\"]}'")
    s.add_argument("--submission-id", help="the job's id (default: generated)")
    s.add_argument("--metadata-json", help="metadata as a JSON object of strings")
    s.add_argument("entrypoint", nargs="+", help="the command (after --)")
    for name, helptext in (("status", "a job's status"), ("stop", "stop a running job"),
                           ("delete", "delete a finished job and its logs")):
        with_address(jsub.add_parser(name, help=helptext)).add_argument("job_id")
    lg = with_address(jsub.add_parser("logs", help="a job's output"))
    lg.add_argument("job_id")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing output until the job ends")
    with_address(jsub.add_parser("list", help="every job of the cluster"))
    tk = jsub.add_parser("token", help="print the job API token of a cluster started on this machine")
    tk.add_argument("--address", help="the job API address (default http://127.0.0.1:8265)")


def _fail(msg):
    sys.exit(f"luminary job: {msg}")


def run(args):
    from ...job_submission import JobSubmissionClient, _find_token, _resolve_address
    if args.job_cmd == "token":
        try:
            print(_find_token(_resolve_address(args.address)))
        except (OSError, RuntimeError, ValueError) as e:
            _fail(str(e))
        return
    try:
        client = JobSubmissionClient(args.address)
        _run(client, args)
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        _fail(str(e))


def _run(client, args):
    cmd = args.job_cmd
    if cmd == "submit":
        env = {}
        if args.runtime_env_json:
            try:
                env = json.loads(args.runtime_env_json)
            except ValueError as e:
                _fail(f"--runtime-env-json is not valid JSON: {e}")
            if not isinstance(env, dict):
                _fail("--runtime-env-json must be a JSON object")
        if args.working_dir:
            env["working_dir"] = args.working_dir
        meta = json.loads(args.metadata_json) if args.metadata_json else None
        entry = " ".join(a for a in args.entrypoint)
        sid = client.submit_job(entrypoint=entry, runtime_env=env or None, submission_id=args.submission_id,
                                metadata=meta)
        print(f"Job '{sid}' submitted successfully.", flush=True)
        if args.no_wait:
            print(f"  Follow it: luminary job logs --follow {sid}\n  Status:    luminary job status {sid}\n"
                  f"  Stop it:   luminary job stop {sid}")
            return
        _follow(client, sid)
        status = client.get_job_status(sid)
        info = client.get_job_info(sid)
        print(f"Job '{sid}' {status.value}: {info.message.splitlines()[0] if info.message else ''}")
        sys.exit(0 if status.value == "SUCCEEDED" else 1)
    elif cmd == "status":
        info = client.get_job_info(args.job_id)
        print(f"Job '{args.job_id}': {info.status.value}\n{info.message}")
    elif cmd == "logs":
        if args.follow:
            _follow(client, args.job_id)
        else:
            sys.stdout.write(client.get_job_logs(args.job_id))
    elif cmd == "stop":
        stopped = client.stop_job(args.job_id)
        print(f"Job '{args.job_id}' " + ("is stopping." if stopped else "had already finished."))
    elif cmd == "delete":
        client.delete_job(args.job_id)
        print(f"Job '{args.job_id}' deleted.")
    elif cmd == "list":
        for j in client.list_jobs():
            print(f"{j.submission_id}  {j.status.value:<9}  {j.entrypoint}")


def _follow(client, sid):
    for chunk in client.iter_job_logs(sid):
        sys.stdout.write(chunk)
        sys.stdout.flush()
