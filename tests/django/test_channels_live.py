"""A real daphne server (subprocess, free port) and a real websocket client.

``asgi_server`` is also used by the browser test. The server runs the example
project's ASGI application on the test database; the test process plays a
second process that advances instances, so updates must cross processes
(in-memory layer: the consumer's database poll).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

import durable_django as dd
from durable_django.models import Status
from tests.django.conftest import ROOT, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, proc: subprocess.Popen, log) -> None:
        self.port, self.proc, self.log = port, proc, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def asgi_server(transactional_db, tmp_path, request):
    """``daphne example_project.asgi:application`` on a free port, on the test database."""
    from django.db import connection

    port = free_port()
    log = tmp_path / "daphne.log"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings", "DJANGO_DEBUG": "1",
           "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"])}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                 "example_project.asgi:application"], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    server = Server(port, proc, log)
    try:
        wait_until(lambda: proc.poll() is not None or _up(f"{server.url}/accounts/login/"), timeout=60,
                   interval=0.2, message="daphne to answer")
        if proc.poll() is not None:
            raise AssertionError(f"daphne exited:\n{server.output()}")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n----- daphne log -----\n{server.output()[-6000:]}")


def session_cookie(user: User) -> str:
    c = Client()
    c.force_login(user)
    return c.cookies["sessionid"].value


def test_real_websocket_refusals_and_cross_process_updates(asgi_server, inline, uid):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from tests.django.testapp.durable_programs import two_events

    watcher = User.objects.create_user("ws-watcher", password="pw")
    watcher.user_permissions.add(Permission.objects.get(codename="view_durableinstance"))
    plain = User.objects.create_user("ws-plain", password="pw")
    dd.start(two_events, "k", instance_id=uid)
    ws_url = f"ws://127.0.0.1:{asgi_server.port}/ws/durable/instances/{uid}/"
    origin = asgi_server.url

    with pytest.raises(InvalidStatus):  # anonymous: refused before the handshake completes
        connect(ws_url, origin=origin, open_timeout=10).close()
    with pytest.raises(InvalidStatus):  # logged in, no permission
        connect(ws_url, origin=origin, open_timeout=10,
                additional_headers={"Cookie": f"sessionid={session_cookie(plain)}"}).close()
    with pytest.raises(InvalidStatus):  # a foreign origin (cross-site websocket hijacking)
        connect(ws_url, origin="http://evil.example", open_timeout=10,
                additional_headers={"Cookie": f"sessionid={session_cookie(watcher)}"}).close()

    with connect(ws_url, origin=origin, open_timeout=10,
                 additional_headers={"Cookie": f"sessionid={session_cookie(watcher)}"}) as ws:
        def next_status(wanted: str, deadline: float) -> dict:
            while True:
                msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if msg["type"] == "status" and msg["instance"]["status"] == wanted:
                    return msg["instance"]

        first = next_status(Status.PAUSED, time.monotonic() + 20)
        assert first["waiting_for"] == "first"
        dd.publish_event(uid, "first", 1)  # runs inline here, in another process than daphne
        dd.publish_event(uid, "second", 2)
        done = next_status(Status.COMPLETED, time.monotonic() + 20)
        assert done["version"] > first["version"]
