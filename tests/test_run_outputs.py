"""What the latest run made, from ML Metadata lineage (not the newest artifact of each type).

Runs with config A, then B, then A again in one folder: the third run's ClassStatsGen and SegTrainer
are cache hits on the first run's artifacts, so the newest ClassStats and Model are the second run's;
the summary and `segbalance report RUN_DIR` named (and mixed in) those. A run the drift gate blocked
(SegTrainer, Pusher skipped) was said to have pushed the previous run's model."""
import json

from tests.mlmd_inputs import new_store


class Runs:
    """A store laid out as TFX's launcher records runs: a ``node`` context per component, a
    ``pipeline_run`` context per run, executions with OUTPUT events keyed by output name."""

    def __init__(self, path):
        from ml_metadata.proto import metadata_store_pb2 as pb

        self.pb, self.store, self.folder = pb, new_store(path), path.parent
        self.run_type = self.store.put_context_type(pb.ContextType(name="pipeline_run"))
        self.node_type = self.store.put_context_type(pb.ContextType(name="node"))
        self.execution_type = self.store.put_execution_type(pb.ExecutionType(name="component"))
        self.types, self.nodes, self.runs = {}, {}, 0

    def node(self, name):
        if name not in self.nodes:
            [self.nodes[name]] = self.store.put_contexts([self.pb.Context(type_id=self.node_type,
                                                                          name=f"segbalance.{name}")])
        return self.nodes[name]

    def artifact(self, type_name, name, files=()):
        if type_name not in self.types:
            self.types[type_name] = self.store.put_artifact_type(self.pb.ArtifactType(name=type_name))
        uri = self.folder / name
        uri.mkdir()
        for file_name, content in dict(files).items():
            (uri / file_name).write_text(content)
        [artifact_id] = self.store.put_artifacts([self.pb.Artifact(type_id=self.types[type_name], uri=str(uri),
                                                                   state=self.pb.Artifact.LIVE)])
        return self.store.get_artifacts_by_id([artifact_id])[0]

    def run(self, executions):
        """executions: [(node, state, {output key: artifact})]."""
        self.runs += 1
        [run] = self.store.put_contexts([self.pb.Context(type_id=self.run_type, name=f"run-{self.runs}")])
        for node, state, outputs in executions:
            events = []
            for key, artifact in outputs.items():
                event = self.pb.Event(type=self.pb.Event.OUTPUT)
                event.path.steps.add().key = key
                events.append((artifact, event))
            contexts = [self.store.get_contexts_by_id([run])[0], self.store.get_contexts_by_id([self.node(node)])[0]]
            self.store.put_execution(self.pb.Execution(type_id=self.execution_type, last_known_state=state), events,
                                     contexts)


def test_the_latest_run_s_outputs_are_its_own_cached_or_made(tmp_path):
    from segbalance.pipeline.report_sources import sources_from_metadata
    from segbalance.pipeline.run_summary import last_run_outputs, open_store, summarize

    runs = Runs(tmp_path / "metadata.sqlite")
    done, cached = runs.pb.Execution.COMPLETE, runs.pb.Execution.CACHED
    stats_file = {"class_stats.json": json.dumps({"class_names": ["bg", "a"], "pixel_counts": [5, 5]})}
    stats_a = runs.artifact("segbalance.ClassStats", "stats_a", stats_file)
    model_a, run_a = runs.artifact("Model", "model_a"), runs.artifact("ModelRun", "model_run_a")
    eval_a = runs.artifact("ModelEvaluation", "eval_a", {"evaluation.json": json.dumps(
        {"miou": 0.8, "num_images": 4, "blessed": True, "reason": "ok", "per_class_iou": [0.9, 0.7]})})
    runs.run([("ClassStatsGen", done, {"class_stats": stats_a}), ("SegTrainer", done, {"model": model_a,
              "model_run": run_a}), ("SegEvaluator", done, {"evaluation": eval_a})])
    stats_b = runs.artifact("segbalance.ClassStats", "stats_b", stats_file)
    model_b, run_b = runs.artifact("Model", "model_b"), runs.artifact("ModelRun", "model_run_b")
    runs.run([("ClassStatsGen", done, {"class_stats": stats_b}), ("SegTrainer", done, {"model": model_b,
              "model_run": run_b})])
    eval_a2 = runs.artifact("ModelEvaluation", "eval_a2", {"evaluation.json": json.dumps(
        {"miou": 0.8, "num_images": 4, "blessed": False, "reason": "already blessed", "per_class_iou": [0.9, 0.7]})})
    runs.run([("ClassStatsGen", cached, {"class_stats": stats_a}),  # config A again: cache hits on run 1
              ("SegTrainer", cached, {"model": model_a, "model_run": run_a}),
              ("SegEvaluator", done, {"evaluation": eval_a2}),
              ("latest_blessed_model_resolver", done, {"model": model_b})])  # a resolver hands over older ones
    store = open_store(str(tmp_path / "metadata.sqlite"))
    last = last_run_outputs(store)
    assert last.get("ClassStatsGen", "class_stats").uri == stats_a.uri and "ClassStatsGen" in last.cached
    assert last.get("SegTrainer", "model").uri == model_a.uri and "SegEvaluator" not in last.cached
    assert last.artifacts["latest_blessed_model_resolver"] == {"model": model_b}  # a node's own outputs only
    paths = {"output_dir": str(tmp_path), "metadata": str(tmp_path / "metadata.sqlite")}
    summary = summarize(paths)
    assert summary["class_stats"] == stats_a.uri and summary["model"] == model_a.uri  # not run 2's
    assert summary["evaluation"] == eval_a2.uri and summary["blessed"] is False
    sources = sources_from_metadata(str(tmp_path / "metadata.sqlite"))
    assert (sources.class_stats_dir, sources.model_run_dir, sources.evaluation_dir) == \
        (stats_a.uri, run_a.uri, eval_a2.uri)

    # a run the drift gate blocked: nothing trained, evaluated or pushed, whatever earlier runs left
    stats_c = runs.artifact("segbalance.ClassStats", "stats_c", stats_file)
    drift = runs.artifact("segbalance.DriftReport", "drift_c", {"drift.json": json.dumps(
        {"anomalies": ["pixel frequency of a changed"], "status": "blocked"})})
    drift.custom_properties["blocked"].int_value = 1
    drift.custom_properties["action"].string_value = "block_training"
    runs.store.put_artifacts([drift])
    report = runs.artifact("segbalance.HtmlReport", "report_c", {"report.html": "<html></html>"})
    runs.run([("ClassStatsGen", done, {"class_stats": stats_c}),
              ("ClassDistributionValidator", done, {"drift_report": drift}),
              ("DataReportBlocked", done, {"report": report})])
    summary = summarize(paths)
    assert summary["training_blocked"] and "model" not in summary and "miou" not in summary
    assert summary["report_artifact"] == str(tmp_path / "report_c" / "report.html")
    sources = sources_from_metadata(str(tmp_path / "metadata.sqlite"))
    assert sources.evaluation_dir is None and sources.model_run_dir is None and sources.drift_dir == drift.uri

    # a run stopped before its report: `segbalance report RUN_DIR` shows the last run that wrote one
    stats_d = runs.artifact("segbalance.ClassStats", "stats_d", stats_file)
    runs.run([("ClassStatsGen", done, {"class_stats": stats_d})])
    assert sources_from_metadata(str(tmp_path / "metadata.sqlite")).class_stats_dir == stats_c.uri
    assert summarize(paths)["class_stats"] == stats_d.uri  # the run itself (the summary is written by it)

    # a run without the gate (drift off in its config): no drift section, not run c's decision
    stats_e = runs.artifact("segbalance.ClassStats", "stats_e", stats_file)
    report_e = runs.artifact("segbalance.HtmlReport", "report_e", {"report.html": "<html></html>"})
    runs.run([("ClassStatsGen", done, {"class_stats": stats_e}), ("DataReport", done, {"report": report_e})])
    sources = sources_from_metadata(str(tmp_path / "metadata.sqlite"))
    assert sources.class_stats_dir == stats_e.uri and sources.drift_dir is None


def test_pushed_this_run_is_the_run_s_own_pusher(tmp_path):
    from segbalance.pipeline.run_summary import summarize

    runs = Runs(tmp_path / "metadata.sqlite")
    done, cached = runs.pb.Execution.COMPLETE, runs.pb.Execution.CACHED

    def pushed(name, flag):
        artifact = runs.artifact("PushedModel", name)
        artifact.custom_properties["pushed"].int_value = flag
        artifact.custom_properties["pushed_destination"].string_value = f"/serving/{name}"
        runs.store.put_artifacts([artifact])
        return runs.store.get_artifacts_by_id([artifact.id])[0]

    first = pushed("v1", 1)
    runs.run([("Pusher", done, {"pushed_model": first})])
    paths = {"output_dir": str(tmp_path), "metadata": str(tmp_path / "metadata.sqlite")}
    assert summarize(paths)["pushed_this_run"] and summarize(paths)["pushed_model"] == "/serving/v1"
    runs.run([("Pusher", cached, {"pushed_model": first})])  # a cache hit pushed nothing
    assert not summarize(paths)["pushed_this_run"]
    runs.run([("ClassStatsGen", done, {})])  # Pusher skipped (drift gate)
    summary = summarize(paths)
    assert not summary["pushed_this_run"] and summary["pushed_model"] == "/serving/v1"
    runs.run([("Pusher", done, {"pushed_model": pushed("not", 0)})])  # not blessed: Pusher ran, pushed nothing
    assert not summarize(paths)["pushed_this_run"]
    # QA 27: a push killed after its version folder took its place, before ML Metadata recorded it: that version
    # is served, and the summary says so instead of the older recorded one (or "none")
    serving = tmp_path / "serving_model"
    (serving / "v1").mkdir(parents=True)  # not a version name: ignored
    (serving / "100").mkdir()
    (serving / "9").mkdir()
    paths["serving_model_dir"] = str(serving)
    summary = summarize(paths)
    assert summary["pushed_model"] == str(serving / "100") and summary["push_unrecorded"]
    assert not summary["pushed_this_run"]
    (serving / "100").rmdir()
    (serving / "9").rmdir()
    assert summarize(paths)["pushed_model"] == "/serving/v1"  # nothing there: what ML Metadata recorded


def test_the_exit_status_tells_a_scheduler_that_the_drift_gate_blocked(tmp_path, monkeypatch, capsys):
    """A run the drift gate blocked exited 0, like a good one: cron and a systemd timer saw success and
    only run_summary.json said otherwise. It exits 3; ok and warn runs exit 0; each prints the decision."""
    from segbalance.pipeline import cli, run

    cases = [({"status": "ok", "action": "block"}, 0, "ok, "),
             ({"status": "warned", "action": "warn"}, 0, "warned (drift.action: warn; recorded only), "),
             ({"status": "warned", "action": "block"}, 0,  # QA 92 L1: said "drift.action: warn"
              "warned (the same data a run with drift.action: warn accepted; recorded only), "),
             ({"status": "blocked", "action": "block"}, 3, "blocked (the model was not pushed; exit status 3), "),
             ({"status": "blocked", "action": "block_training"}, 3,
              "blocked (nothing was trained; exit status 3), "),
             (None, 0, None)]
    for drift, code, line in cases:
        summary = {"seconds": 1, "output_dir": str(tmp_path), "metadata": "m.sqlite", "log": "run.log"}
        if drift is not None:
            summary["drift"] = dict(drift, report=str(tmp_path / "drift.json"))
        monkeypatch.setattr(run, "run_local", lambda config, verbose=False, announce=False, _s=summary, **_: _s)
        assert cli.main(["run", "--output-dir", str(tmp_path / "out")]) == code, drift
        printed = capsys.readouterr().out
        if line is None:
            assert "drift gate:" not in printed
        else:
            assert f"  drift gate:       {line}{tmp_path / 'drift.json'}\n" in printed
    assert run.exit_status({"drift": {"status": "blocked"}}) == run.EXIT_DRIFT_BLOCKED == 3
