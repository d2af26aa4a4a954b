"""The deployment recipes in deploy/ (shown verbatim in docs/OPERATIONS.md) are real: the crontab line and the
systemd service run here against a real config, the units pass `systemd-analyze verify`, and every
audience-sync invocation in them parses with the real command line."""

from __future__ import annotations

import configparser
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from audience_sync.cli.main import cli
from audience_sync.config.crontab import cron_trigger
from tests.fakes.gist import FakeGist
from tests.harness import Harness

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BINARY = "/opt/audience-sync/venv/bin/audience-sync"
CONFIG = "/etc/audience-sync/audience_sync.toml"
ENV_FILE = "/etc/audience-sync/env"
METRICS = "/var/lib/node_exporter/textfile_collector/audience_sync.prom"
RECIPES = [
    "crontab",
    "systemd/audience-sync.service",
    "systemd/audience-sync.timer",
    "systemd/audience-sync-scheduler.service",
    "kubernetes/cronjob.yaml",
]


def check_invocation(args: list[str]) -> str:
    """Parse ``audience-sync ARGS`` with the real command line; UsageError if any option is wrong."""
    assert isinstance(cli, click.Group)
    command = cli.get_command(click.Context(cli), args[0])
    assert command is not None, f"no command {args[0]!r}"
    command.make_context(args[0], list(args[1:]))
    return args[0]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


@pytest.fixture
def sandbox(tmp_path: Path, harness: Harness, gist: FakeGist) -> dict[str, str]:
    """Stand-ins for the recipes' paths: a real config whose Gist key only the env file provides, and metrics
    and log locations under tmp_path."""
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = tmp_path / "audience_sync.toml"
    config.write_text(
        f'[state]\nurl = "{harness.state_url}"\n[source]\nurl = "{harness.warehouse.url}"\n'
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "RECIPE_GIST_KEY"\nendpoint = "{gist.url}"\n'
        + harness.audience("VIP")
    )
    env = tmp_path / "env"
    env.write_text(f"RECIPE_GIST_KEY={gist.api_key}\n")
    return {
        BINARY: str(Path(sys.executable).parent / "audience-sync"),
        CONFIG: str(config),
        ENV_FILE: str(env),
        METRICS: str(tmp_path / "metrics" / "audience_sync.prom"),
        "/var/log/audience-sync.log": str(tmp_path / "audience-sync.log"),
    }


def substitute(text: str, paths: dict[str, str]) -> str:
    for real, stand_in in paths.items():
        text = text.replace(real, stand_in)
    return text


@pytest.mark.parametrize("recipe", RECIPES)
def test_operations_doc_shows_each_recipe_verbatim(recipe: str) -> None:
    assert (DEPLOY / recipe).read_text().strip() in (ROOT / "docs" / "OPERATIONS.md").read_text()


@pytest.mark.slow
def test_crontab_line_parses_and_its_command_runs(sandbox: dict[str, str], tmp_path: Path) -> None:
    (line,) = [x for x in (DEPLOY / "crontab").read_text().splitlines() if x.strip() and not x.startswith("#")]
    fields = line.split(maxsplit=5)
    cron_trigger(" ".join(fields[:5]), dt.UTC)
    command = fields[5]
    argv = shlex.split(command.split(";")[-1].split(">>", 1)[0])  # after `set -a; . env; set +a;`
    assert argv[0] == BINARY and check_invocation(argv[1:]) == "run"
    clean_env = {k: v for k, v in os.environ.items() if k != "RECIPE_GIST_KEY"}
    proc = subprocess.run(
        ["bash", "-c", substitute(command, sandbox)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env,
        cwd=tmp_path,  # as cron would, nowhere near the checkout
    )
    assert proc.returncode == 0, proc.stderr + Path(sandbox["/var/log/audience-sync.log"]).read_text()
    assert Path(sandbox[METRICS]).read_text().count("audience_sync_last_run_success") >= 1
    log_lines = Path(sandbox["/var/log/audience-sync.log"]).read_text().splitlines()
    assert log_lines and all(json.loads(x) for x in log_lines if x.startswith("{"))


@pytest.mark.slow
def test_systemd_oneshot_service_runs_its_exec_start(sandbox: dict[str, str], gist: FakeGist) -> None:
    service = unit(DEPLOY / "systemd" / "audience-sync.service")
    argv = shlex.split(substitute(service["Service"]["ExecStart"], sandbox))
    assert check_invocation(argv[1:]) == "run"
    env_file = Path(substitute(service["Service"]["EnvironmentFile"], sandbox))
    environment = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(sandbox[CONFIG]).parent,
        env={**os.environ, **environment},
    )
    assert proc.returncode == 0, proc.stderr
    assert gist.properties("u1") == {"vip": True}
    assert service["Service"]["SuccessExitStatus"] == "3"  # pending changes are not a unit failure


def test_timer_and_scheduler_units_name_real_things() -> None:
    timer = unit(DEPLOY / "systemd" / "audience-sync.timer")
    assert (DEPLOY / "systemd" / timer["Timer"]["Unit"]).is_file()
    scheduler = unit(DEPLOY / "systemd" / "audience-sync-scheduler.service")
    assert check_invocation(shlex.split(scheduler["Service"]["ExecStart"])[1:]) == "schedule"
    assert scheduler["Service"]["KillSignal"] == "SIGTERM"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_pass_systemd_analyze(tmp_path: Path) -> None:
    stand_in = Path(sys.executable).parent / "audience-sync"
    for name in ("audience-sync.service", "audience-sync.timer", "audience-sync-scheduler.service"):
        (tmp_path / name).write_text((DEPLOY / "systemd" / name).read_text().replace(BINARY, str(stand_in)))
    names = ["audience-sync.service", "audience-sync.timer", "audience-sync-scheduler.service"]
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(f"./{n}" for n in names)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Unknown key" not in proc.stderr and "bad unit file" not in proc.stderr
    calendar = unit(DEPLOY / "systemd" / "audience-sync.timer")["Timer"]["OnCalendar"]
    check = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "Next elapse" in check.stdout


def test_kubernetes_cronjob_forbids_overlap_and_runs_a_real_command() -> None:
    doc = yaml.safe_load((DEPLOY / "kubernetes" / "cronjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    spec = doc["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    cron_trigger(spec["schedule"], dt.UTC)
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] >= 60
    (container,) = pod["containers"]
    assert check_invocation(container["args"]) == "run"
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(CONFIG).parent) in mounted
