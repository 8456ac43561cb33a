"""The ``luminary`` command: start, stop and inspect nodes of a cluster.

    luminary start --head [--port 6380] [--node-ip-address IP] [--num-cpus N] [--num-gpus N]
                          [--resources JSON] [--object-store-memory BYTES]
                          [--storage PATH | sqlite:PATH | redis://HOST:PORT/DB | memory]
    luminary start --address HOST:PORT [--secret-file PATH] [...same options]
    luminary stop      stops every node this user started on this machine, with all their processes
    luminary status [--pending-after S]   nodes (alive or dead), resources used and free, pending and
                       infeasible demand, tasks and actors pending longer than S seconds and why
    luminary stack [--address HOST:PORT] [--timeout S]   live stacks of every worker, actor and driver
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys
import time

from .._private import procutil
from .._private.node import launch

DEFAULT_PORT = 6380


def _nodes_dir():
    return procutil.state_dir("nodes")


def _fail(cmd, msg):
    sys.exit(f"luminary {cmd}: {msg}")


def cmd_start(args):
    if bool(args.head) == bool(args.address):
        _fail("start", "give either --head (start a new cluster) or --address HOST:PORT (join one).")
    resources = {}
    if args.resources:
        try:
            resources = json.loads(args.resources)
        except ValueError:
            resources = None
        if not isinstance(resources, dict):
            _fail("start", f"--resources must be a JSON object such as '{{\"gadget\": 2}}', got {args.resources!r}")
    from .._private.worker.options import check_node_resources
    try:
        check_node_resources(args.num_cpus, args.num_gpus, resources, None, args.object_store_memory,
                             names={"num_cpus": "--num-cpus", "num_gpus": "--num-gpus", "resources": "--resources",
                                    "object_store_memory": "--object-store-memory",
                                    "cpu_gpu_hint": "--num-cpus/--num-gpus"})
    except (TypeError, ValueError) as e:
        _fail("start", str(e))
    try:
        _start(args, resources)
    except (OSError, ValueError) as e:   # unsafe local state, a missing --secret-file, no cluster there
        _fail("start", str(e))


def _start(args, resources):
    ip = args.node_ip_address or "127.0.0.1"
    if args.head:
        secret = os.urandom(32)
        gcs_address = None
    else:
        # everything that can refuse the join is checked before anything is written
        gcs_address = launch.normalize_address(args.address)
        secret = launch.read_secret(gcs_address, args.secret_file)
        from .._private.worker.connect import query_nodes
        # a head whose GCS is restarting answers again within a second: wait that long, not more
        deadline = time.monotonic() + float(os.environ.get("LUMINARY_JOIN_WAIT_S", "3"))
        while True:
            try:
                query_nodes(gcs_address, secret)
                break
            except ConnectionError as e:
                if "refused this secret" in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    nodes_dir = _nodes_dir()
    if args.head and args.metrics_port is not None:
        os.environ["LUMINARY_METRICS_PORT"] = str(args.metrics_port)
    session_dir = launch.new_session_dir(prefix="node")
    storage = _storage_spec(args, session_dir) if args.head else None
    try:
        proc, info = launch.start_node(
            secret=secret, session_dir=session_dir, head=bool(args.head), gcs_address=gcs_address, node_ip=ip,
            gcs_port=args.port if args.head else None, tcp_port=args.node_manager_port, num_cpus=args.num_cpus,
            num_gpus=args.num_gpus, resources=resources, object_store_memory=args.object_store_memory,
            watch_stdin=False, daemon=True, gcs_storage=storage,
            job_api=(args.dashboard_host, args.dashboard_port) if args.head and args.include_dashboard else None)
    except BaseException as e:
        procutil.remove_session_dir(session_dir)     # a failed start or join leaves nothing behind
        if not isinstance(e, (RuntimeError, ValueError)):
            raise
        msg = str(e)
        if "address already in use" in msg.lower():
            port, flag = (args.port, "--port") if args.head else (args.node_manager_port, "--node-manager-port")
            _fail("start", f"port {port} is already in use (another cluster, or another program). Pick a "
                           f"free one with {flag}, or stop the other cluster with `luminary stop`.")
        _fail("start", f"the node failed to start: {msg}")
    if args.head:
        launch.write_cluster_file(info["gcs_address"], secret, {"kind": "cli", "job_api": info.get("job_api")})
    # what `luminary stop` checks before it signals this PID: the start time and the title
    ident = procutil.process_identity(info["pid"])
    record = {"pid": info["pid"], "start_time": ident[0] if ident else None, "title": ident[1] if ident else None,
              "node_id": info["node_id"], "gcs_address": info["gcs_address"], "session_dir": session_dir,
              "head": bool(args.head)}
    procutil.write_private_file(os.path.join(nodes_dir, f"{info['pid']}.json"), json.dumps(record), replace=True)
    addr = info["gcs_address"][4:]
    if args.head:
        secret_file = launch.cluster_file(info["gcs_address"])[:-5] + ".secret"
        print(f"Luminary head node started: cluster address {addr} (node {info['node_id'][:12]}).\n"
              f"  Connect a driver here:    luminary.init(address='{addr}')  (or address='auto')\n"
              f"  Join from another machine: copy {secret_file} there (mode 0600), then\n"
              f"                             LUMINARY_SECRET_FILE=<copy> luminary start --address {addr}\n"
              f"  Inspect: luminary status    Stop: luminary stop")
        if info.get("job_api"):
            print(f"  Jobs: luminary job submit --address http://{info['job_api']} -- python script.py")
            from .._private.dashboard import login_url
            print(f"  Dashboard (one-time login link; `luminary dashboard` prints a fresh one):\n"
                  f"    {login_url(info['job_api'], secret)}")
        from .observe import metrics_line
        print(metrics_line(info["gcs_address"], secret))
    else:
        print(f"Luminary node {info['node_id'][:12]} joined the cluster at {addr}.")


def _storage_spec(args, session_dir):
    """Where the head's GCS keeps the cluster's state so it can be restarted: --storage, else
    $RAY_REDIS_ADDRESS (Ray's spelling), else SQLite in the head's session directory."""
    from .._private.gcs.storage import StorageError, parse_spec, redis_from_env
    spec = args.storage
    if not spec and os.environ.get("RAY_REDIS_ADDRESS"):
        spec = redis_from_env(os.environ["RAY_REDIS_ADDRESS"])
    if not spec:
        return "sqlite:" + os.path.join(session_dir, "gcs.sqlite")
    try:
        kind, where = parse_spec(spec)
    except StorageError as e:
        procutil.remove_session_dir(session_dir)
        _fail("start", str(e))
    if kind == "sqlite":
        return "sqlite:" + os.path.abspath(os.path.expanduser(where))
    if kind == "redis":
        try:
            import redis  # noqa: F401
        except ImportError:
            procutil.remove_session_dir(session_dir)
            _fail("start", f"--storage {spec} needs the redis package: pip install 'luminary[redis]'.")
    return spec


def _read_record(path):
    """A node record, checked (ours, 0600, not a link, sane fields) before anything in it is used."""
    rec = json.loads(procutil.read_private_file(path, "node record"))
    pid = rec.get("pid") if isinstance(rec, dict) else None
    if (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0
            or os.path.basename(path) != f"{pid}.json" or not isinstance(rec.get("start_time"), int)
            or not isinstance(rec.get("title"), str)):
        raise ValueError("it does not name a process with its start time and title")
    return rec


def cmd_stop(args):
    try:
        nodes_dir = _nodes_dir()
        root = procutil.session_root()
    except OSError as e:
        _fail("stop", str(e))
    records = []
    for path in glob.glob(os.path.join(nodes_dir, "*.json")):
        try:
            records.append((path, _read_record(path)))
        except (OSError, ValueError) as e:
            print(f"Ignoring the node record {path}: {e}. Remove it once you have checked it.", file=sys.stderr)
    # worker nodes first, then heads (they hold the GCS)
    records.sort(key=lambda pr: bool(pr[1].get("head", False)))
    stopped = 0
    for path, rec in records:
        pid, start, title = rec["pid"], rec["start_time"], rec["title"]
        if procutil.signal_if_same(pid, start, title, signal.SIGTERM):
            deadline = time.monotonic() + (0 if args.force else 10)
            while procutil.is_same_process(pid, start, title) and time.monotonic() < deadline:
                time.sleep(0.05)
            # the node leads its own process group (start_new_session): end whatever is left of it
            procutil.signal_if_same(pid, start, title, signal.SIGKILL, group=True)
            stopped += 1
        elif procutil.pid_alive(pid):
            print(f"Left PID {pid} alone: it is no longer the Luminary node of {path} (the PID was reused).",
                  file=sys.stderr)
        session_dir = rec.get("session_dir")
        if session_dir and os.path.exists(session_dir) and not procutil.remove_session_dir(session_dir, root):
            print(f"Did not remove {session_dir!r}: it is not a session directory inside {root}.", file=sys.stderr)
        if rec.get("head") and isinstance(rec.get("gcs_address"), str):
            launch.remove_cluster_file(rec["gcs_address"])
        os.unlink(path)
    print(f"Stopped {stopped} Luminary node{'s' if stopped != 1 else ''}.")


def cmd_status(args):
    if args.pending_after is not None and not 0 <= args.pending_after < float("inf"):
        _fail("status", f"--pending-after takes a number of seconds >= 0, got {args.pending_after}")
    from .._private.worker.connect import query_nodes, resolve_address
    try:
        gcs = resolve_address(args.address or "auto")
        secret = launch.read_secret(gcs)
        nodes = query_nodes(gcs, secret)
    except (OSError, ValueError) as e:
        _fail("status", str(e))
    alive = [n for n in nodes if n["Alive"]]
    print(f"Cluster {gcs[4:]}: {len(alive)} alive node(s), {len(nodes) - len(alive)} dead")
    total, avail = {}, {}
    for n in nodes:
        mark = "alive" if n["Alive"] else f"DEAD ({n.get('death_reason', '')})"
        res = {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}
        print(f"  node {n['NodeID'][:12]} {n['NodeManagerAddress']:<15} {'head ' if n.get('IsHead') else ''}{mark}")
        if n["Alive"]:
            free = n.get("Available", {})
            parts = [f"{k} {res[k] - free.get(k, 0):g}/{res[k]:g} used" for k in sorted(res)
                     if k not in ("memory", "object_store_memory")]
            print(f"      {', '.join(parts)}")
            for k, v in n["Resources"].items():
                total[k] = total.get(k, 0) + v
            for k, v in free.items():
                avail[k] = avail.get(k, 0) + v
    demand = [d for n in alive for d in n.get("pending", [])]
    infeasible = [d for d in demand if not any(all(m["Resources"].get(k, 0) >= v for k, v in d.items())
                                                for m in alive)]
    print(f"Resources: CPU {total.get('CPU', 0) - avail.get('CPU', 0):g}/{total.get('CPU', 0):g} used"
          + (f", GPU {total.get('GPU', 0) - avail.get('GPU', 0):g}/{total.get('GPU', 0):g} used" if total.get("GPU") else ""))
    print(f"Pending demand: {len(demand)} lease request(s)" + (f": {demand[:5]}" if demand else ""))
    try:
        from .._private.worker.connect import query_gcs
        actors = query_gcs(gcs, secret, "list_actors")
        alive_actors = sum(1 for a in actors if a["state"] == "ALIVE")
        print(f"Actors: {alive_actors} alive, {len(actors) - alive_actors} other (pending, restarting or dead)")
    except ConnectionError:
        pass
    if infeasible:
        print(f"Infeasible (no node can ever run these): {infeasible[:5]}")
    from .debug import print_stuck
    print_stuck(gcs[4:], args.pending_after)


def cmd_dashboard(args):
    from .._private.dashboard import login_url
    from .._private.worker.connect import resolve_address
    try:
        gcs = resolve_address(args.address or "auto")
        data = launch.read_cluster_file(launch.cluster_file(gcs))
        secret = launch.read_secret(gcs)
    except (ConnectionError, OSError, ValueError) as e:
        _fail("dashboard", f"no cluster found ({e}); start one with `luminary start --head`.")
    if not data.get("job_api"):
        _fail("dashboard", "this cluster's head serves no dashboard (started with --include-dashboard=false, "
                           "or its port was taken).")
    print(login_url(data["job_api"], secret))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="luminary", description="Start, stop and inspect Luminary nodes.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start a node (a new cluster's head, or one joining a cluster)")
    st.add_argument("--head", action="store_true")
    st.add_argument("--address")
    st.add_argument("--port", type=int, default=DEFAULT_PORT, help="the head's GCS port (default 6380)")
    st.add_argument("--node-manager-port", type=int, default=0, help="this node's port (default: any free)")
    st.add_argument("--node-ip-address", help="address to bind (default 127.0.0.1: loopback only)")
    st.add_argument("--num-cpus", type=float)
    st.add_argument("--num-gpus", type=float)
    st.add_argument("--resources")
    st.add_argument("--object-store-memory", type=int)
    st.add_argument("--secret-file")
    # the job API (Ray's dashboard flags): authenticated, loopback unless --dashboard-host
    st.add_argument("--dashboard-port", type=int, default=8265, help="the head's job API port (default 8265)")
    st.add_argument("--dashboard-host", default="127.0.0.1", help="address the job API binds (default loopback)")
    st.add_argument("--include-dashboard", type=lambda v: v.lower() not in ("0", "false", "no"), default=True)
    st.add_argument("--metrics-port", type=int, help="the head's Prometheus endpoint port (default: any free)")
    st.add_argument("--storage", help="head only: where the GCS keeps cluster state so it survives a GCS restart: "
                                      "a SQLite PATH (default: the head's session directory), "
                                      "redis://HOST:PORT/DB, or 'memory' (no restart)")
    sp = sub.add_parser("stop", help="stop every node started on this machine")
    sp.add_argument("--force", action="store_true")
    ss = sub.add_parser("status", help="show the cluster's nodes and resources")
    ss.add_argument("--address")
    ss.add_argument("--pending-after", type=float, metavar="SECONDS",
                    help="list tasks and actors pending longer than this (default $LUMINARY_WAIT_WARN_S, 60)")
    sd = sub.add_parser("dashboard", help="print a fresh one-time login link to the head's web dashboard")
    sd.add_argument("--address", help="the cluster (default: the one started on this machine)")
    from .._private.jobs import cli as job_cli
    job_cli.add_parsers(sub)
    from .observe import add_parsers   # list, get, summary, memory, timeline, logs, metrics, report
    observe = add_parsers(sub)
    from .debug import add_parsers as add_debug_parsers   # stack
    observe.update(add_debug_parsers(sub))
    args = parser.parse_args(argv)
    {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "job": job_cli.run,
     "dashboard": cmd_dashboard, **observe}[args.cmd](args)


if __name__ == "__main__":
    main()
