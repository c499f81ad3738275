"""`segbalance schedule`: a KFP recurring run through a client object (a fake one that records
the calls), and, without a host, the printed request, crontab line and systemd timer."""
import json
import os

import pytest

from segbalance.kubeflow import schedule
from segbalance.pipeline import cli


class FakeKfpClient:
    """Records what segbalance asks of a kfp.Client (no network, no mock of our own code)."""

    def __init__(self, host, experiments=()):
        self.host, self.calls, self.experiments = host, [], dict(experiments)

    def get_experiment(self, experiment_name):
        self.calls.append(("get_experiment", experiment_name))
        if experiment_name not in self.experiments:
            raise ValueError("experiment not found")  # as kfp.Client does
        return type("Experiment", (), {"experiment_id": self.experiments[experiment_name]})()

    def create_experiment(self, name):
        self.calls.append(("create_experiment", name))
        return type("Experiment", (), {"experiment_id": "exp-new"})()

    def create_recurring_run(self, **request):
        self.calls.append(("create_recurring_run", request))
        return type("RecurringRun", (), {"recurring_run_id": "rr-1"})()


def test_recurring_run_request_through_the_client(tmp_path, capsys):
    package = tmp_path / "pipeline.json"
    package.write_text("{}")
    clients = []

    def factory(host):
        clients.append(FakeKfpClient(host))
        return clients[-1]

    args = cli.build_parser().parse_args(["schedule", "--cron", "0 3 * * 1", "--kfp-host", "http://kfp.local",
                                          "--package", str(package), "--pipeline-root", "gs://b/root"])
    assert schedule._main(args, client_factory=factory) == 0
    (client,) = clients
    assert client.host == "http://kfp.local"
    assert [c[0] for c in client.calls] == ["get_experiment", "create_experiment", "create_recurring_run"]
    request = client.calls[-1][1]
    assert request == {
        "experiment_id": "exp-new", "job_name": "segbalance-retraining", "cron_expression": "0 0 3 * * 1",
        "pipeline_package_path": str(package), "max_concurrency": 1, "no_catchup": True, "enabled": True,
        "description": request["description"], "pipeline_root": "gs://b/root"}
    assert "rr-1" in capsys.readouterr().out


def test_an_existing_experiment_is_reused(tmp_path):
    package = tmp_path / "pipeline.json"
    package.write_text("{}")
    client = FakeKfpClient("h", experiments={"segbalance": "exp-7"})
    schedule.create_recurring_run(client, str(package), "15 4 1 * *", "segbalance", "monthly")
    assert [c[0] for c in client.calls] == ["get_experiment", "create_recurring_run"]
    assert client.calls[-1][1]["experiment_id"] == "exp-7" and client.calls[-1][1]["cron_expression"] == "0 15 4 1 * *"


def test_the_recurring_run_request_matches_kfp_client_signature():
    import inspect

    kfp = pytest.importorskip("kfp")
    parameters = inspect.signature(kfp.Client.create_recurring_run).parameters
    request = schedule.recurring_run_request("p.json", "0 3 * * 1", "e", "j", "gs://b")
    assert set(request) <= set(parameters), set(request) - set(parameters)


def test_without_host_prints_the_request_crontab_and_systemd_timer(capsys):
    assert cli.main(["schedule", "--cron", "30 2 * * 1,4", "--data", "/data/spans", "--output-dir", "/srv/out"]) == 0
    out = capsys.readouterr().out
    request = json.loads(out[out.index("{"):out.index("}") + 1])
    assert request["cron_expression"] == "0 30 2 * * 1,4" and request["pipeline_package_path"] == "pipeline.json"
    crontab = next(line for line in out.splitlines() if line.startswith("30 2 * * 1,4 "))
    assert "segbalance run --data /data/spans --output-dir /srv/out" in crontab
    assert "OnCalendar=Mon,Thu *-*-* 02:30:00" in out and "Type=oneshot" in out


@pytest.mark.parametrize("cron, message", [
    ("0 25 * * *", "hour 25 is outside 0-23"),
    ("daily", "give 5 fields"),
    ("0 3 * * 1 2026", "give 5 fields"),
    ("x 3 * * 1", "minute field 'x'"),
    ("*/0 * * * *", "the minute step /0 never advances"),
    ("0 5-1 * * *", "the hour range 5-1 runs backwards"),
    ("0 3 0 * *", "day of month 0 is outside 1-31"),
])
def test_bad_cron_expressions(cron, message, capsys):
    assert cli.main(["schedule", "--cron", cron]) == 2
    assert message in capsys.readouterr().err


def test_steps_get_a_crontab_line_but_no_systemd_translation():
    text = schedule.local_schedule("*/15 * * * *", "d", "o", "/w")
    assert next(line for line in text.splitlines() if line.startswith("*/15")).startswith("*/15 * * * * cd /w && ")
    assert "systemd timer: not generated" in text
    assert schedule.systemd_on_calendar("0 3 * * 0") == "Sun *-*-* 03:00:00"
    assert schedule.systemd_on_calendar("5 * 1 6 *") == "*-6-1 *:05:00"


def test_a_missing_package_is_refused_before_any_call(tmp_path):
    client = FakeKfpClient("h")
    with pytest.raises(schedule.ScheduleError, match="does not exist"):
        schedule.create_recurring_run(client, str(tmp_path / "nope.json"), "0 3 * * 1", "e", "j")
    assert client.calls == []


def test_a_local_schedule_runs_with_the_config_it_was_given(tmp_path, capsys, monkeypatch):
    """The crontab / systemd lines ran `segbalance run` without --config: every scheduled run
    trained with the defaults (loss, epochs, drift thresholds, class names)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("output_dir: /srv/seg\ntraining: {epochs: 3}\n")
    assert cli.main(["schedule", "--cron", "0 3 * * 1", "--config", "c.yaml"]) == 0
    out = capsys.readouterr().out
    crontab = next(line for line in out.splitlines() if line.startswith("0 3 * * 1 "))
    assert f"segbalance run --config {tmp_path / 'c.yaml'} --data /srv/seg/data --output-dir /srv/seg" in crontab
    program = crontab.split(" && ")[1].split(" run ")[0]  # absolute: cron starts elsewhere, without the venv
    assert os.path.isabs(program) and os.access(program, os.X_OK)
    assert f"--config {tmp_path / 'c.yaml'}" in next(line for line in out.splitlines() if line.startswith("ExecStart"))
    assert "no --config" not in out
    # without one, the output says what the runs will use
    assert cli.main(["schedule", "--cron", "0 3 * * 1"]) == 0
    out = capsys.readouterr().out
    assert "# no --config: each scheduled run uses the default configuration" in out
    assert "run --data segbalance_output/data --output-dir segbalance_output" in out


@pytest.mark.parametrize("extra, message", [
    (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["--config", "bad.yaml"], "training.epochs: must be >= 1"),
    (["--config", "bad.yaml", "--kfp-host", "http://kfp"], "--config is for local runs"),
])
def test_a_bad_or_misplaced_config_is_refused(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("training: {epochs: 0}\n")
    assert cli.main(["schedule", "--cron", "0 3 * * 1", *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1
    assert captured.out == ""  # nothing printed before the error
