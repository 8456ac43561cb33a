"""User metrics (``util.metrics``) and the head's Prometheus endpoint: what a user scrapes."""
import urllib.error
import urllib.request

import pytest

from _backend import IS_RAY, poll_for, ray

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(IS_RAY, reason="Luminary's metrics endpoint (Ray's needs its dashboard agent)")]

if not IS_RAY:
    from prometheus_client.parser import text_string_to_metric_families

    from luminary.util import state
    from luminary.util.metrics import Counter, Gauge, Histogram


def _scrape():
    url = state.cluster_info()["metrics_url"]
    assert url.startswith("http://127.0.0.1:")      # loopback by default
    from luminary._private.jobs import job_token
    from luminary._private.worker import state as wstate
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {job_token(wstate.core.secret)}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families, name, **labels):
    fam = families.get(name)
    if fam is None:
        return None
    for s in fam.samples:
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith(("_created", "_bucket")):
            if s.name in (name, name + "_total"):
                return s.value
    return None


@ray.remote
def mt_work(n):
    c = Counter("mt_requests", description="requests served", tag_keys=("route",))
    c.set_default_tags({"route": "/a"})
    for _ in range(n):
        c.inc()
    c.inc(2.5, tags={"route": "/b"})
    return n


def test_counter_incremented_in_tasks_shows_its_sum(ray_start):
    assert ray.get([mt_work.remote(3), mt_work.remote(4)]) == [3, 4]
    fams = poll_for(lambda: (lambda f: _value(f, "mt_requests", route="/a") == 7 and f)(_scrape()),
                    desc="counter summed over tasks")
    assert fams["mt_requests"].type == "counter"
    assert fams["mt_requests"].documentation == "requests served"
    assert _value(fams, "mt_requests", route="/b") == 5.0


def test_gauge_and_histogram_from_the_driver(ray_start):
    g = Gauge("mt_queue_depth", description="items waiting", tag_keys=("q",))
    g.set(5, tags={"q": "in"})
    g.set(3, tags={"q": "in"})
    h = Histogram("mt_latency_s", description="latency", boundaries=[0.1, 1.0], tag_keys=())
    for v in (0.05, 0.5, 0.7, 3.0):
        h.observe(v)
    fams = poll_for(lambda: (lambda f: _value(f, "mt_queue_depth", q="in") == 3 and "mt_latency_s" in f and f)(_scrape()))
    hist = {(s.name, s.labels.get("le")): s.value for s in fams["mt_latency_s"].samples}
    assert hist[("mt_latency_s_bucket", "0.1")] == 1
    assert hist[("mt_latency_s_bucket", "1.0")] == 3
    assert hist[("mt_latency_s_bucket", "+Inf")] == 4
    assert hist[("mt_latency_s_count", None)] == 4
    assert abs(hist[("mt_latency_s_sum", None)] - 4.25) < 1e-9


def test_builtin_metrics(ray_start):
    ray.get(mt_work.remote(1))
    fams = poll_for(lambda: (lambda f: (_value(f, "luminary_tasks", State="FINISHED") or 0) >= 1 and f)(_scrape()))
    for name in ("luminary_object_store_used_bytes", "luminary_object_store_spilled_bytes", "luminary_node_cpu_percent",
                 "luminary_node_mem_used_bytes", "luminary_scheduler_pending_leases", "luminary_actors"):
        assert name in fams, name
    assert _value(fams, "luminary_node_mem_used_bytes") > 0


def test_metric_arguments_are_checked(ray_start):
    with pytest.raises(ValueError):
        Counter("")
    with pytest.raises(TypeError):
        Counter("mt_x", tag_keys="route")
    c = Counter("mt_y", tag_keys=("a",))
    with pytest.raises(ValueError):
        c.inc(1.0, tags={"b": "1"})        # not a declared tag key
    with pytest.raises(ValueError):
        c.inc(1.0)                          # tag "a" has no value
    with pytest.raises(ValueError):
        Histogram("mt_z", boundaries=[])


def test_metrics_cli_prints_the_url(ray_start, capsys):
    from luminary.cli.main import main
    main(["metrics"])
    assert capsys.readouterr().out.strip() == state.cluster_info()["metrics_url"]


def test_metrics_endpoint_refuses_requests_without_the_token(ray_start):
    url = state.cluster_info()["metrics_url"]
    for headers in ({}, {"Authorization": "Bearer " + "0" * 64}):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert info.value.code == 401
