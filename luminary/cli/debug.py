"""``luminary stack`` (live stacks of every worker, actor and driver) and the stuck-work part of
``luminary status``; registered by main.py."""
from __future__ import annotations

import sys


def add_parsers(sub):
    sk = sub.add_parser("stack", help="print the Python stack of every thread of every worker, actor and driver "
                                      "(over Luminary's connections; no ptrace or root needed)")
    sk.add_argument("--address", help="the cluster's HOST:PORT (default: the cluster started on this machine)")
    sk.add_argument("--timeout", type=float, default=3.0,
                    help="seconds each process has to answer before it is reported as not answering (default 3)")
    return {"stack": cmd_stack}


def cmd_stack(args):
    from ..util import diagnostics
    try:
        text = diagnostics.stack(address=args.address or "auto", timeout=args.timeout)
    except (OSError, ValueError) as e:      # ConnectionError is an OSError
        sys.exit(f"luminary stack: {e}")
    sys.stdout.write(text)


def print_stuck(address, pending_after):
    """The tasks and actors pending longer than ``pending_after`` seconds, with why."""
    from .._private.stuck import default_threshold, format_rows
    from ..util import diagnostics
    threshold = default_threshold() if pending_after is None else pending_after
    try:
        rows = diagnostics.stuck(threshold, address=address)
    except (OSError, ValueError) as e:
        print(f"Stuck: could not ask the cluster ({e})")
        return
    sys.stdout.write(format_rows(rows, threshold))
