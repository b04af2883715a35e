"""`incident-manager run`: migrate, train the first model, make sure a key exists, start every
process of the Procfile and stop them all on Ctrl-C (docs/operations.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from cli.common import safe_url, settings_or_exit
from cli.flower import describe_credentials
from cli.supervisor import Child, Supervisor, file_exists, port_open

ROOT = Path(__file__).resolve().parent.parent
ALL_PROCESSES = ("web", "worker", "beat", "grpc", "flower")
# Celery warns once per worker start when run as root (containers usually are); `run` says it once.
_ROOT_WARNING = "You're running the worker with superuser privileges"


def read_procfile(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


WIDTH = 8  # the step names and the process names share one column


def _step(name: str, text: str) -> None:
    click.echo(f"{name:<{WIDTH}} | {text}")


def _seconds(since: float) -> str:
    return f"{time.monotonic() - since:.1f} s"


@click.command("run")
@click.option("--processes", default=",".join(ALL_PROCESSES), show_default=True,
              help="comma-separated Procfile processes to start")
def run_command(processes: str) -> None:
    """Migrate, train the first model, make sure an API key exists, start every process of the
    Procfile; Ctrl-C stops them all."""
    started = time.monotonic()
    settings = settings_or_exit()
    procfile = read_procfile(ROOT / "Procfile")
    wanted = [p.strip() for p in processes.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in procfile or p == "release"]
    if unknown:
        click.echo(f"unknown process(es): {', '.join(unknown)}; the Procfile has "
                   f"{', '.join(p for p in procfile if p != 'release')}", err=True)
        sys.exit(2)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    since = time.monotonic()
    _step("database", f"migrating {safe_url(settings.database_url)}")
    from app.adapters.migrate import upgrade

    upgrade(settings.database_url)
    _step("database", f"at the latest revision ({_seconds(since)})")

    since = time.monotonic()
    _step("model", "looking for a trained model (the first start trains one from ml/data: minutes on a busy machine)")
    # In a child process: the training's memory goes back to the system when it is done.
    training = subprocess.run([sys.executable, "-m", "cli", "ml", "bootstrap"], cwd=ROOT,
                              capture_output=True, text=True)
    if training.returncode != 0:
        click.echo(training.stdout + training.stderr[-5000:], err=True)
        _step("model", f"training the first model failed (status {training.returncode}); see above")
        sys.exit(1)
    said = (training.stdout.strip().splitlines() or ["done"])[-1]
    _step("model", f"{said} ({_seconds(since)})")

    key_file = settings.data_dir / "first-api-key"
    _step("key", _ensure_first_key(key_file))
    if "flower" in wanted:
        _step("flower", describe_credentials(settings, _shown))

    env = _process_env(settings.data_dir)
    if os.geteuid() == 0 and "worker" in wanted:
        _step("run", "running as root: Celery discourages it outside a container (its warning is muted here)")
    ready_dir = settings.data_dir / "run"
    shutil.rmtree(ready_dir, ignore_errors=True)
    ready_dir.mkdir(parents=True)
    host = "localhost"
    flower_port = int(env.get("FLOWER_PORT", "5555"))
    checks = {
        "web": (_web_ready(settings.api_port, ready_dir, int(env.get("WEB_CONCURRENCY", "2"))),
                f"http://{host}:{settings.api_port}"),
        "grpc": (port_open(settings.grpc_port), f"{host}:{settings.grpc_port}"),
        "flower": (port_open(flower_port), f"http://{host}:{flower_port}"),
        "worker": (file_exists(ready_dir / "worker"), "consuming every queue"),
        "beat": (file_exists(ready_dir / "beat"), "scheduling"),
    }
    children = []
    for name in wanted:
        ready, text = checks.get(name, (lambda: True, ""))
        children.append(Child(name, procfile[name], ready, text,
                              env={**env, "IM_READY_FILE": str(ready_dir / name)}))
    supervisor = Supervisor(children, ROOT, width=WIDTH)
    supervisor.start()
    failed = supervisor.wait_ready()
    if failed is None and not supervisor.stop_requested:
        supervisor.say("run", f"ready in {_seconds(started)}. Send the first event:")
        supervisor.say("run", f"  curl -X POST http://{host}:{settings.api_port}/api/v1/events/sentinel "
                              f"-H \"X-API-Key: $(cat {_shown(key_file)})\" -H 'Content-Type: application/json' "
                              f"-d @tests/fixtures/sentinel-event.json")
        supervisor.say("run", "Ctrl-C stops everything.")
        failed = supervisor.wait_stop()
    if failed is not None:
        assert failed.process is not None
        supervisor.say("run", f"{failed.name} exited on its own with status {failed.process.returncode}; "
                              "stopping the others")
    seconds, killed = supervisor.stop()
    names = ", ".join(c.name for c in children)
    forced = f"; killed {', '.join(killed)} after {seconds:.1f} s" if killed else ""
    supervisor.say("run", f"stopped {names} in {seconds:.1f} s{forced}")
    sys.stdout.flush()
    sys.stderr.flush()
    # Every child is gone and the summary is out; interpreter teardown measured 2-3 s under load
    # (in C, after the last Python frame) and would only delay the shell's prompt.
    os._exit(1 if failed is not None else 0)


def _web_ready(port: int, ready_dir: Path, workers: int) -> Callable[[], bool]:
    """The port accepts, and every gunicorn worker has loaded the app (api/gunicorn_conf.py)."""
    accepts = port_open(port)
    return lambda: len(list(ready_dir.glob("web.*"))) >= workers and accepts()


def _shown(path: Path) -> str:
    """The path as the user can type it from where they are."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _ensure_first_key(key_file: Path) -> str:
    from app.services.auth import create_api_key, list_api_keys

    if not any(k.revoked_at is None for k in list_api_keys()):
        created = create_api_key("first-admin", ["admin"])
        key_file.write_text(created.key + "\n")
        os.chmod(key_file, 0o600)
        return f"admin API key (shown once, saved in {_shown(key_file)}): {created.key}"
    if key_file.exists():
        return f"the first admin API key is in {_shown(key_file)}"
    return ("active API keys exist (a key is shown only when created); make one with "
            "`incident-manager apikey create --name NAME --permission admin`")


def _process_env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The Procfile's commands (gunicorn, celery) live beside this interpreter, venv or not.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.setdefault("DATA_DIR", str(data_dir))
    metrics_dir = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(data_dir / "metrics")))
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    warnings = [w for w in env.get("PYTHONWARNINGS", "").split(",") if w]
    env["PYTHONWARNINGS"] = ",".join([*warnings, f"ignore:{_ROOT_WARNING}"])
    env.setdefault("PYTHONUNBUFFERED", "1")  # lines reach the terminal as they are written
    return env
