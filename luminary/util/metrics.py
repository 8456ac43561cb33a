"""Application metrics with Ray's API (``ray.util.metrics``): Counter, Gauge, Histogram.

Usable from drivers, tasks and actors.  Each process adds up its changes and sends them to the
GCS with its task events (at most every 100 ms); the GCS aggregates them over the cluster and
serves them in Prometheus' text format on the head (``luminary metrics`` prints the URL).
Counters add up over processes; a gauge keeps the last value set for each tag set; histograms
add up their bucket counts.
"""
from __future__ import annotations

import re

from .._private.worker import events as _events

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class Metric:
    _kind = "counter"

    def __init__(self, name: str, description: str = "", tag_keys: tuple = None):
        if not isinstance(name, str) or not name:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        if not _NAME.match(name):
            raise ValueError(f"Invalid metric name {name!r}: use letters, digits, '_' and ':' "
                             "(not starting with a digit).")
        if tag_keys is None:
            tag_keys = ()
        if isinstance(tag_keys, str) or not isinstance(tag_keys, (tuple, list)):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(tag_keys)}")
        for k in tag_keys:
            if not isinstance(k, str):
                raise TypeError(f"Tag keys must be str, got {type(k)}.")
        self._name = name
        self._description = description
        self._tag_keys = tuple(tag_keys)
        self._default_tags = {}
        self._define()

    def _define(self):
        _events.REGISTRY.define(self._name, self._kind, self._description)

    @property
    def info(self):
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": dict(self._default_tags)}

    def set_default_tags(self, default_tags: dict):
        for k, v in default_tags.items():
            if k not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {k!r}; tag_keys are {self._tag_keys}.")
            if not isinstance(v, str):
                raise TypeError(f"Tag values must be str, got {type(v)}.")
        self._default_tags = dict(default_tags)
        return self

    def _tags(self, tags):
        final = dict(self._default_tags)
        if tags:
            for k, v in tags.items():
                if k not in self._tag_keys:
                    raise ValueError(f"Unrecognized tag key {k!r}; tag_keys are {self._tag_keys}.")
                if not isinstance(v, str):
                    raise TypeError(f"Tag values must be str, got {type(v)}.")
            final.update(tags)
        missing = [k for k in self._tag_keys if k not in final]
        if missing:
            raise ValueError(f"Missing value for tag key(s) {missing}.")
        return tuple(sorted(final.items()))

    @staticmethod
    def _poke():
        from .._private.worker import state
        core = state.core
        if core is not None and not core.events.armed:
            core.events._arm()


class Counter(Metric):
    """A cumulative value that only goes up."""
    _kind = "counter"

    def inc(self, value: float = 1.0, tags: dict = None):
        if not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"value must be > 0, got {value}")
        _events.REGISTRY.add(self._name, self._tags(tags), float(value))
        self._poke()


class Gauge(Metric):
    """The current value of something (the last value set wins)."""
    _kind = "gauge"

    def set(self, value: float, tags: dict = None):
        if value is None:
            return
        if not isinstance(value, (int, float)):
            raise TypeError(f"value must be int or float, got {type(value)}.")
        _events.REGISTRY.set(self._name, self._tags(tags), float(value))
        self._poke()


class Histogram(Metric):
    """The distribution of observed values over fixed bucket ``boundaries``."""
    _kind = "histogram"

    def __init__(self, name: str, description: str = "", boundaries: list = None, tag_keys: tuple = None):
        if not boundaries:
            raise ValueError("boundaries must be a non-empty list of numbers.")
        b = [float(x) for x in boundaries]
        if any(x <= 0 for x in b):
            raise ValueError(f"Invalid `boundaries` argument at index 0, {boundaries}. Use positive values.")
        if b != sorted(b):
            raise ValueError("boundaries must be sorted in ascending order.")
        self.boundaries = b
        super().__init__(name, description, tag_keys)

    def _define(self):
        _events.REGISTRY.define(self._name, self._kind, self._description, self.boundaries)

    def observe(self, value: float, tags: dict = None):
        if not isinstance(value, (int, float)):
            raise TypeError(f"value must be int or float, got {type(value)}.")
        _events.REGISTRY.observe(self._name, self._tags(tags), float(value), self.boundaries)
        self._poke()

    @property
    def info(self):
        return dict(super().info, boundaries=self.boundaries)


__all__ = ["Counter", "Gauge", "Histogram"]
