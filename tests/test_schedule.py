"""`segbalance schedule`: a KFP recurring run through a client object (a fake one that records
the calls), and, without a host, the printed request, crontab line and systemd timer."""
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from segbalance.kubeflow import schedule
from segbalance.pipeline import cli


def _package(folder):
    """The smallest file check_package takes for a compiled package (the real one: test below)."""
    package = folder / "pipeline.yaml"
    package.write_text("pipelineInfo: {name: segbalance}\nroot: {dag: {tasks: {}}}\ndeploymentSpec: {executors: {}}\n")
    return package


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
    package = _package(tmp_path)
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
    package = _package(tmp_path)
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
    assert request["cron_expression"] == "0 30 2 * * 1,4" and request["pipeline_package_path"] == "pipeline.yaml"
    crontab = next(line for line in out.splitlines() if line.startswith("30 2 * * 1,4 "))
    assert "segbalance run --data /data/spans --output-dir /srv/out" in crontab
    assert "OnCalendar=Mon,Thu *-*-* 02:30:00" in out and "Type=oneshot" in out
    assert "3 the drift gate blocked the new span" in out  # what a blocked run's exit status means
    assert "143 stopped by Ctrl-C / SIGTERM (systemctl stop)" in out.replace("130 / ", "")
    long = ConnectionError("Max retries exceeded with url: /apis/v2/healthz " + "(Caused by NewConnectionError) " * 9)
    cut = schedule._reason(long)[len("ConnectionError: "):]
    assert cut.endswith(" ...") and len(cut) <= 204 and (str(long) + " ").startswith(cut[:-4] + " ")  # at a word


@pytest.mark.parametrize("cron, message", [
    ("0 25 * * *", "hour 25 is outside 0-23"),
    ("daily", "give 5 fields"),
    ("0 3 * * 1 2026", "give 5 fields"),
    ("x 3 * * 1", "minute field 'x'"),
    ("*/0 * * * *", "the minute step /0 never advances"),
    ("0 5-1 * * *", "the hour range 5-1 runs backwards"),
    ("0 3 0 * *", "day of month 0 is outside 1-31"),
    ("10/20 * * * *", "the minute field '10/20' steps from a single number, which cron rejects; write "
                      "10-59/20 for every 20 from 10"),  # Debian's cron: "bad minute", the whole crontab ignored
    ("0 3 * * 1,3/2", "write 3-7/2"),
])
def test_bad_cron_expressions(cron, message, capsys):
    assert cli.main(["schedule", "--cron", cron]) == 2
    assert message in capsys.readouterr().err


def test_steps_ranges_and_lists_get_a_systemd_timer():
    """QA 96 L3: an expression with a step or a range ('0 3 * * 1-5', '*/15 * * * *') had a crontab line but no
    timer ('steps and ranges are not translated to systemd')."""
    text = schedule.local_schedule("*/15 * * * *", "d", "o", "/w")
    assert next(line for line in text.splitlines() if line.startswith("*/15")).startswith("*/15 * * * * cd /w && ")
    assert "OnCalendar=*-*-* *:00,15,30,45:00" in text and "not generated" not in text
    assert schedule.systemd_on_calendar("0 3 * * 1-5") == ["Mon,Tue,Wed,Thu,Fri *-*-* 03:00:00"]
    assert schedule.systemd_on_calendar("0 3 * * 0") == ["Sun *-*-* 03:00:00"]
    assert schedule.systemd_on_calendar("0 3 * * 1-7") == ["*-*-* 03:00:00"]  # every day: no day names
    assert schedule.systemd_on_calendar("5 * 1 6 *") == ["*-6-1 *:05:00"]
    assert schedule.systemd_on_calendar("10-59/20 9-17/4 * 1,6 *") == ["*-1,6-* 09,13,17:10,30,50:00"]
    assert schedule.systemd_on_calendar("0 0 */10 * 1") == ["Mon *-*-1,11,21,31 00:00:00"]  # '*': both must hold
    assert schedule.cron_values("1-10,20-30/5", 0, 59) == [*range(1, 11), 20, 25, 30]  # the step binds to the last


def _cron_times(cron: str, start: datetime.datetime, count: int) -> list:
    """The first ``count`` minutes from ``start`` cron (Vixie's rules) runs ``cron`` at, by trying every minute:
    an independent reading of the five fields."""
    def numbers(field, lo, hi):
        head, _, step = field.partition("/")
        items = head.split(",")
        found = set()
        for k, item in enumerate(items):
            stride = int(step) if step and k == len(items) - 1 else 1
            if item == "*":
                low, high = lo, hi
            elif "-" in item:
                low, high = map(int, item.split("-"))
            else:
                low = high = int(item)
            found |= set(range(low, high + 1, stride))
        return found

    minute, hour, dom, month, dow = cron.split()
    sets = [numbers(minute, 0, 59), numbers(hour, 0, 23), numbers(dom, 1, 31), numbers(month, 1, 12),
            {d % 7 for d in numbers(dow, 0, 7)}]
    times, t = [], start
    while len(times) < count:
        day_of_month, day_of_week = t.day in sets[2], t.isoweekday() % 7 in sets[4]
        either = not dom.startswith("*") and not dow.startswith("*")
        day = (day_of_month or day_of_week) if either else (day_of_month and day_of_week)
        if t.minute in sets[0] and t.hour in sets[1] and t.month in sets[3] and day:
            times.append(t)
        t += datetime.timedelta(minutes=1)
    return times


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze (systemd's own parser)")
@pytest.mark.parametrize("cron", ["0 3 * * 1-5", "*/15 * * * *", "5 1-3,22 * * 0", "0 12 13 * 5", "30 4 */2 * 1",
                                  "0 0 1-7 * 1", "10-59/20 9-17/4 * 1,6 *", "0 3 * * 1-7", "0 6 1,15 2-11/3 6-7"])
def test_timer_fires_when_cron_would(cron):
    """systemd's own reading of the timer's OnCalendar= lines (the first 12 times after New Year, merged over
    the lines) against every minute cron's rules match."""
    start = datetime.datetime(2026, 1, 1, 0, 1)  # systemd: the times after its base time
    fired = set()
    for calendar in schedule.systemd_on_calendar(cron):
        done = subprocess.run(["systemd-analyze", "calendar", "--iterations=12", "--base-time=2026-01-01 00:00:00 UTC",
                               calendar], capture_output=True, text=True, env={**os.environ, "TZ": "UTC"})
        assert done.returncode == 0, done.stderr
        fired |= {datetime.datetime.strptime(m, "%Y-%m-%d %H:%M:%S")
                  for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", done.stdout)}
    assert sorted(fired)[:12] == _cron_times(cron, start, 12)


def test_day_of_month_and_day_of_week_both_set_run_on_either_as_in_cron(capsys):
    """Cron runs '0 12 13 * 5' every Friday and every 13th; the timer said `Fri *-*-13` (Friday the 13th
    only: 2 runs a year for 64)."""
    assert schedule.systemd_on_calendar("0 12 13 * 5") == ["*-*-13 12:00:00", "Fri *-*-* 12:00:00"]
    assert schedule.systemd_on_calendar("30 3 1,15 6 1,7") == ["*-6-1,15 03:30:00", "Mon,Sun *-6-* 03:30:00"]
    assert cli.main(["schedule", "--cron", "0 12 13 * 5", "--output-dir", "/srv/out"]) == 0
    timer = capsys.readouterr().out.split("[Timer]")[1]
    assert [line for line in timer.splitlines() if line.startswith("OnCalendar=")] == [
        "OnCalendar=*-*-13 12:00:00", "OnCalendar=Fri *-*-* 12:00:00"]  # a timer fires on any of its calendars


def _cron_command(line: str) -> str:
    """What cron hands to /bin/sh from a crontab line: the text after the five fields up to the first
    unescaped %, with each \\% made %."""
    command = line.split(" ", 5)[5]
    cut = re.search(r"(?<!\\)%", command)
    return (command[:cut.start()] if cut else command).replace("\\%", "%")


def _systemd_words(value: str) -> list:
    """An Exec*= value split as systemd does for the words this module writes (bare words, and double quotes
    with C escapes), then its %% and $$ undone."""
    words = re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', value)
    out = []
    for quoted, bare in words:
        word = re.sub(r"\\(.)", r"\1", quoted) if quoted or not bare else bare
        assert not re.search(r"%[^%]", word.replace("%%", "")) and "$" not in word.replace("$$", "")
        out.append(word.replace("%%", "%").replace("$$", "$"))
    return out


@pytest.mark.parametrize("name", ["plain", "w d", "50%off", "it's", 'say "hi"', "$HOME", "back\\slash", "%h"])
def test_paths_reach_the_command_literally_through_cron_and_systemd(tmp_path, name):
    """A % in a path cut cron's command (the run never happened); systemd read % as a specifier and $ as a
    variable; an output folder given as "out/" logged to "out/.log", which then made `run` refuse it."""
    work = tmp_path / name
    config = work / f"{name}.yaml"
    text = schedule.local_schedule("0 3 * * 1", str(work / "data"), f"{name}/", str(work), str(config))
    crontab = next(line for line in text.splitlines() if line.startswith("0 3 * * 1 "))
    words = shlex.split(_cron_command(crontab))  # POSIX sh word splitting
    program = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "segbalance")
    assert words == ["cd", str(work), "&&", program, "run", "--config", str(config), "--data", str(work / "data"),
                     "--output-dir", f"{name}/", ">>", str(work / name) + ".log", "2>&1"]
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    sh, dash_c, command = _systemd_words(exec_start[len("ExecStart="):])
    assert (sh, dash_c) == ("/bin/sh", "-c")
    assert shlex.split(command) == words[:-3]  # the same command, without the redirect (journald keeps it)
    if shutil.which("systemd-analyze"):  # systemd's own parser: specifiers and quoting accepted
        unit = tmp_path / "segbalance.service"
        unit.write_text("\n".join(text.split("# systemd: ~/.config/systemd/user/segbalance.service\n")[1]
                                  .split("\n\n")[0].splitlines()) + "\n")
        done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert "specifier" not in done.stderr and "Invalid" not in done.stderr, done.stderr


def test_the_log_of_a_run_folder_given_as_dot_lies_beside_it():
    text = schedule.local_schedule("0 3 * * 1", "d", ".", "/srv/seg")
    assert next(line for line in text.splitlines() if line.startswith("0 3")).endswith(" >> /srv/seg.log 2>&1")


def test_a_missing_package_is_refused_before_any_call(tmp_path):
    client = FakeKfpClient("h")
    with pytest.raises(schedule.ScheduleError, match="does not exist"):
        schedule.create_recurring_run(client, str(tmp_path / "nope.json"), "0 3 * * 1", "e", "j")
    assert client.calls == []


@pytest.mark.parametrize("name, content, message", [
    ("p.json", '{"pipelineSpec": {}}', "Kubeflow Pipelines takes the YAML package (a .json file is the Vertex AI "
                                       "PipelineJob): run `segbalance compile-kfp --output {d}/p.yaml`"),
    ("p.yaml", "a: [1", "is not YAML"),
    ("p.yaml", "just: notes\n", "is not a compiled pipeline"),
    ("missing.json", None, "does not exist or is not a file: run `segbalance compile-kfp --output {d}/missing.yaml`"),
])
def test_a_package_kfp_cannot_take_is_one_line_before_connecting(name, content, message, tmp_path, capsys):
    """kfp.Client refuses a .json package (and the job JSON is not a PipelineSpec): the schedule
    used to reach the client and end in its ValueError traceback."""
    if content is not None:
        (tmp_path / name).write_text(content)
    connected = []
    args = cli.build_parser().parse_args(["schedule", "--cron", "0 3 * * 1", "--kfp-host", "http://kfp.local",
                                          "--package", str(tmp_path / name)])
    assert schedule._main(args, client_factory=lambda host: connected.append(host)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(d=tmp_path) in err and not connected


def test_an_upper_case_suffix_kfp_client_would_refuse_is_one_line(tmp_path, capsys):
    package = _package(tmp_path)
    shouting = package.with_name("P.YAML")
    package.rename(shouting)
    connected = []
    args = cli.build_parser().parse_args(["schedule", "--cron", "0 3 * * 1", "--kfp-host", "http://kfp.local",
                                          "--package", str(shouting)])
    assert schedule._main(args, client_factory=lambda host: connected.append(host)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reads only names ending in .yaml or .yml (lower case)" in err
    assert f"rename it to {tmp_path / 'P.yaml'}" in err and not connected


class LoudFailingClient(FakeKfpClient):
    """kfp.Client against a host that is not KFP: it logs each failed health check with a traceback."""

    def __init__(self, host):
        import logging

        for attempt in range(5):
            try:
                raise ConnectionError("Failed to get healthz info")
            except ConnectionError:
                logging.exception("Failed to get healthz info attempt %d of 5.", attempt + 1)
        raise TimeoutError("Failed getting healthz endpoint after 5 attempts.")


class RefusingClient(FakeKfpClient):
    def create_recurring_run(self, **request):
        import logging

        logging.error("HTTP response body: forbidden")
        raise RuntimeError("(403) Reason: Forbidden")


@pytest.mark.parametrize("factory, message", [
    (LoudFailingClient, "cannot connect to Kubeflow Pipelines (TimeoutError: Failed getting healthz endpoint"),
    (RefusingClient, "did not create the recurring run (RuntimeError: (403) Reason: Forbidden); check your access"),
])
def test_a_host_that_fails_is_one_line_without_kfp_s_log(tmp_path, capfd, caplog, factory, message):
    """Against a host that was not KFP, kfp's retries printed 5 tracebacks (226 lines) before our line; a
    server refusing the run (403) was a traceback, exit 1."""
    args = cli.build_parser().parse_args(["schedule", "--cron", "0 3 * * 1", "--kfp-host", "http://kfp.local",
                                          "--package", str(_package(tmp_path))])
    assert schedule._main(args, client_factory=factory) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not caplog.records  # (pytest holds log records back from stderr; a user's console showed them)
    import logging

    assert not logging.root.manager.disable  # logging is back on after the command


def test_kfp_s_own_client_takes_the_compiled_package(tmp_path, capsys):
    """The real kfp.Client code path (its package loading and request building), with only the server
    call replaced: the recurring run it would send carries our pipeline, root and cron."""
    kfp = pytest.importorskip("kfp")
    from tests.kubeflow_inputs import compile_into, write_span_data

    package, _ = compile_into(write_span_data(tmp_path), name="pipeline.yaml", pipeline_root="gs://b/root")
    sent = []

    class OfflineClient(kfp.Client):
        def __init__(self, host=None):
            self.host = host

        def get_experiment(self, experiment_name=None, **kwargs):
            return type("Experiment", (), {"experiment_id": "exp-1"})()

        @property
        def _recurring_run_api(self):
            class Api:
                def recurring_run_service_create_recurring_run(self, body):
                    sent.append(body)
                    return type("RecurringRun", (), {"recurring_run_id": "rr-9"})()
            return Api()

    args = cli.build_parser().parse_args(["schedule", "--cron", "0 3 * * 7", "--kfp-host", "http://kfp.local",
                                          "--package", str(package)])
    assert schedule._main(args, client_factory=OfflineClient) == 0
    (body,) = sent
    assert body.trigger.cron_schedule.cron == "0 0 3 * * 0"  # KFP's scheduler takes days 0-6
    assert body.pipeline_spec["pipelineInfo"]["name"] == "segbalance"
    assert len(body.pipeline_spec["root"]["dag"]["tasks"]) == 14
    # the compiled root travels in the package (KFP's defaultPipelineRoot); --pipeline-root would override it
    assert body.pipeline_spec["defaultPipelineRoot"] == "gs://b/root" and body.runtime_config.pipeline_root is None
    assert "rr-9" in capsys.readouterr().out


@pytest.mark.parametrize("field, kfp", [("7", "0"), ("1-7", "0,1,2,3,4,5,6"), ("5-7", "0,5,6"), ("1,7", "0,1"),
                                        ("1-7/2", "0,1,3,5"), ("2-6/2", "2-6/2"), ("*", "*"), ("0", "0"),
                                        ("*/2", "*/2"), ("6,7", "0,6")])
def test_day_of_week_7_becomes_0_for_kfp(field, kfp):
    assert schedule.kfp_day_of_week(field) == kfp
    assert schedule.kfp_cron(f"0 3 * * {field}") == f"0 0 3 * * {kfp}"


def test_a_pipeline_root_that_is_not_a_uri_or_absolute_is_refused(capsys):
    assert cli.main(["schedule", "--cron", "0 3 * * 1", "--pipeline-root", "not a uri"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pipeline-root 'not a uri' is neither a URI" in err


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


def test_a_local_schedule_refuses_what_every_run_would_and_notes_missing_data(tmp_path, capsys, monkeypatch):
    """QA 69: the crontab and systemd lines were printed for an --output-dir or --data that is a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine\n")
    for extra, message in ((["--output-dir", "afile"], "--output-dir afile is not a folder"),
                           (["--data", "afile"], "--data afile is not a folder")):
        assert cli.main(["schedule", "--cron", "0 3 * * 1", *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert cli.main(["schedule", "--cron", "0 3 * * 1", "--data", "later", "--output-dir", "out"]) == 0
    assert ("# note: later does not exist now: each scheduled run stops with exit 2 until it holds images/ and "
            "masks/ or Span-N/ folders") in capsys.readouterr().out
    (tmp_path / "later").mkdir()
    assert cli.main(["schedule", "--cron", "0 3 * * 1", "--data", "later", "--output-dir", "out"]) == 0
    assert "# note:" not in capsys.readouterr().out
    assert (tmp_path / "afile").read_text() == "mine\n" and not (tmp_path / "out").exists()
    # QA 94 L6: an output folder in the data, or a user's folder, was scheduled (each run then refused)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine\n")
    for extra, message in ((["--data", "later", "--output-dir", "later/out"], "is inside the data folder"),
                           (["--data", "later", "--output-dir", "user"], "is not a segbalance run directory")):
        assert cli.main(["schedule", "--cron", "0 3 * * 1", *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "later", "user"] and not any(
        (tmp_path / "later").iterdir())
