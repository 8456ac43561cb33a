"""Connecting a driver to a cluster that is already running (``init(address=...)``).

Resolution, as in Ray: an explicit address, then $LUMINARY_ADDRESS (or $RAY_ADDRESS), then the
cluster started on this machine with ``luminary start``.  The secret comes from the cluster's
file (mode 0600, checked before it is read) on this machine, or from $LUMINARY_SECRET_FILE (an
error naming it if it does not exist: never a silent fall back to another secret).
"""
from __future__ import annotations

import asyncio
import glob
import os

from .. import ids
from ..node import launch
from ..rpc import protocol
from ..rpc.loop import new_event_loop


def resolve_address(address):
    if address == "auto":
        env = os.environ.get("LUMINARY_ADDRESS") or os.environ.get("RAY_ADDRESS")
        if env and env not in ("auto", "local"):
            return launch.normalize_address(env)
        files = sorted(glob.glob(os.path.join(launch.clusters_dir(), "*.json")), key=os.path.getmtime)
        if not files:
            raise ConnectionError("Could not find any running Luminary cluster on this machine. Start one with "
                                  "`luminary start --head`, or call luminary.init() with no address for a "
                                  "private local cluster.")
        return launch.read_cluster_file(files[-1])["gcs_address"]   # checked: ours, 0600, not a link
    return launch.normalize_address(address)


def _my_ips():
    ips = {"127.0.0.1", "localhost"}
    try:
        import socket
        ips.add(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    return ips


def _is_local(ip):
    """An address is this machine's if we can bind to it."""
    import socket
    try:
        with socket.socket() as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


class _NoAnswer(Exception):
    pass


async def _ask(gcs_address, secret, method, payload, timeout):
    conn = await protocol.connect(gcs_address, secret, {}, name="gcs", timeout=5)
    try:
        return await asyncio.wait_for(conn.call(method, payload), timeout)
    except asyncio.TimeoutError:
        raise _NoAnswer(f"The GCS at {gcs_address[4:]} accepted the connection but did not answer "
                           f"{method!r} within {timeout:g} s; it may be stopped (SIGSTOP) or overloaded") from None
    finally:
        conn.close()


QUERY_TIMEOUT_S = 60.0    # one CLI request to the GCS (a handler answers in milliseconds unless stuck)


def query_nodes(gcs_address, secret):
    return query_gcs(gcs_address, secret, "get_nodes")


def query_gcs(gcs_address, secret, method, payload=None, timeout=QUERY_TIMEOUT_S):
    """One request to a cluster's GCS from outside a driver (the CLI, start-up checks); the answer
    within ``timeout`` seconds, else TimeoutError naming the GCS."""
    loop = new_event_loop()
    try:
        return loop.run_until_complete(_ask(gcs_address, secret, method, payload, timeout))
    except protocol.AuthenticationError as e:
        raise ConnectionError(f"The cluster at {gcs_address[4:]} refused this secret ({e}). Use the secret "
                              "file of that cluster (LUMINARY_SECRET_FILE).") from None
    except _NoAnswer as e:
        raise TimeoutError(str(e)) from None
    except (OSError, asyncio.TimeoutError, protocol.ConnectionLost) as e:
        raise ConnectionError(f"Could not reach a Luminary cluster at {gcs_address[4:]} ({type(e).__name__}: {e}). "
                              "Check the address (HOST:PORT of the head node's GCS) and that "
                              "`luminary start --head` is running there.") from None
    finally:
        loop.close()


def connect_existing(address):
    from .api import _Session
    gcs = resolve_address(address)
    secret = launch.read_secret(gcs)
    nodes = [n for n in query_nodes(gcs, secret) if n["Alive"]]
    mine = _my_ips()
    local = [n for n in nodes if n["NodeManagerAddress"] in mine]
    local = local or [n for n in nodes if _is_local(n["NodeManagerAddress"])]
    if not local:
        raise ConnectionError(f"The cluster at {gcs[4:]} has no node on this machine; a driver connects through "
                              "the node manager of its own machine. Run `luminary start --address "
                              f"{gcs[4:]}` here first.")
    node = sorted(local, key=lambda n: not n.get("IsHead"))[0]
    sess = _Session()
    sess.session_dir = launch.new_session_dir(prefix="driver")
    sess.owns_cluster = False
    sess.info = {"gcs_address": gcs, "node_id": node["NodeID"]}
    cfg = {"secret": secret, "session_dir": sess.session_dir, "nm_address": node["Address"],
           "gcs_address": gcs, "node_ip": node["NodeManagerAddress"], "worker_id": ids.random_id(), "tcp": True}
    return sess, cfg
