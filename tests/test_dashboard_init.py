"""``init(include_dashboard=..., dashboard_host=..., dashboard_port=...)`` for a local cluster, as
in Ray: the returned context's ``dashboard_url`` is HOST:PORT ('' when turned off); an
explicit port that is taken is a ValueError.  Luminary adds ``dashboard_login_url``, a one-time
link that logs the browser in."""
import socket
import urllib.error
import urllib.request

import pytest

from _backend import IS_RAY, ray

pytestmark = pytest.mark.timeout(120)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def _get(url, cookie=None):
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_include_dashboard_false_gives_no_url():
    ctx = ray.init(num_cpus=1, include_dashboard=False)
    try:
        assert ctx.dashboard_url == ""
        assert not ctx.address_info.get("webui_url")
    finally:
        ray.shutdown()


def test_an_explicit_dashboard_port_that_is_taken():
    """An error when the dashboard was asked for; by default logged, and the cluster starts without."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ValueError, match="already occupied"):
            ray.init(num_cpus=1, include_dashboard=True, dashboard_port=s.getsockname()[1])
        assert not ray.is_initialized()
        ctx = ray.init(num_cpus=1, dashboard_port=s.getsockname()[1])
        try:
            assert ctx.dashboard_url is None             # as Ray: '' only when turned off
        finally:
            ray.shutdown()


@pytest.mark.skipif(IS_RAY, reason="Luminary's dashboard (Ray's needs the ray[default] extra)")
def test_local_cluster_serves_the_dashboard_and_a_login_link():
    ctx = ray.init(num_cpus=1, dashboard_port=0)
    try:
        host, port = ctx.dashboard_url.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert ctx.address_info["webui_url"] == ctx.dashboard_url
        assert ctx.dashboard_login_url.startswith(f"http://{ctx.dashboard_url}/login?token=")
        assert _get(f"http://{ctx.dashboard_url}/api/dash/events")[0] == 401
        status, headers = _get(ctx.dashboard_login_url)
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert _get(f"http://{ctx.dashboard_url}/", cookie)[0] == 200
        assert _get(ctx.dashboard_login_url)[0] == 401          # one-time
        again = ray.init(ignore_reinit_error=True)
        assert again.dashboard_url == ctx.dashboard_url
    finally:
        ray.shutdown()


@pytest.mark.skipif(IS_RAY, reason="Luminary's dashboard (Ray's needs the ray[default] extra)")
def test_default_port_is_8265_or_the_next_free_one():
    ctx = ray.init(num_cpus=1)
    try:
        assert 8265 <= int(ctx.dashboard_url.rsplit(":", 1)[1]) <= 8265 + 50
    finally:
        ray.shutdown()
