"""The embedded default's broker (kombu's filesystem transport, tasks/embedded_broker.py): a message
becomes visible to consumers only once written in full, so a consumer polling while a producer
writes never reads half a message (a worker died on such a JSONDecodeError)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from kombu import Connection

from tasks.embedded_broker import AtomicFilesystemTransport

ROOT = Path(__file__).resolve().parents[2]


def test_the_embedded_config_uses_the_atomic_transport(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", "from tasks.celery_app import app\n"
                          "with app.connection_for_write() as c: print(type(c.transport).__name__)"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "AtomicFilesystemTransport"


def test_a_consumer_polling_during_writes_reads_only_whole_messages(tmp_path):
    folder = str(tmp_path)
    options = {"data_folder_in": folder, "data_folder_out": folder, "store_processed": False}
    body = {"payload": "x" * 200_000}  # big enough that a write takes several system calls
    sent, read, errors = 300, [], []

    def produce() -> None:
        with Connection(transport=AtomicFilesystemTransport, transport_options=options) as conn:
            for i in range(sent):
                conn.default_channel._put("pipeline", {**body, "n": i})

    def consume() -> None:
        with Connection(transport=AtomicFilesystemTransport, transport_options=options) as conn:
            channel = conn.default_channel
            while len(read) < sent:
                try:
                    read.append(channel._get("pipeline")["n"])
                except Exception as exc:  # Empty while the producer is behind; anything else is a failure
                    if type(exc).__name__ != "Empty":
                        errors.append(repr(exc))
                        return

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted(read) == list(range(sent))
    assert not [n for n in os.listdir(folder) if n.startswith(".partial-")]


def test_a_broker_url_given_later_still_picks_its_own_transport(tmp_path):
    """Celery reads CELERY_BROKER_URL at every connection: a process whose configuration was loaded
    on the embedded default (the test harness, a CLI run before the variable is set) connects
    through the transport of the URL it is given, not the filesystem one."""
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    script = ("import os\nfrom tasks.celery_app import app\n"
              "assert app.conf.broker_url.startswith('filesystem://')\n"
              "os.environ['CELERY_BROKER_URL'] = 'redis://127.0.0.1:6379/15'\n"
              "with app.connection_for_write() as c: print(type(c.transport).__module__)")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "kombu.transport.redis"
