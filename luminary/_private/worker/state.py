"""The process's current core worker (None outside an initialized driver or a worker)."""
core = None


def require_core():
    if core is None:
        raise RuntimeError(
            "Luminary is not initialized: call luminary.init() before using remote functions, "
            "ObjectRefs, put, get or wait.")
    return core
