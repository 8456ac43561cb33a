"""``python -m luminary._private.gcs``: a GCS started again by its head node (node/gcs_supervisor.py).
Config (msgpack, length-prefixed, with the secret) on stdin; one line on stdout: the bound address,
or ``error:<why>``."""
import logging
import os

from .. import procutil
from ..node.main import read_config
from .server import run_gcs


def main():
    procutil.die_with_parent()
    cfg = read_config()
    procutil.set_name("luminary::gcs")
    logging.basicConfig(filename=cfg["log_path"], level=logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    ready = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)      # stdout is the ready line only
    os.close(devnull)
    run_gcs(cfg["secret"], cfg["address"], ready, cfg.get("storage"), cfg.get("lock_token", ""),
            session_dir=cfg.get("session_dir"))


if __name__ == "__main__":
    main()
