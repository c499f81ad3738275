"""Every `segbalance` sub-command under bad input: exit code 2, ONE line on stderr that names the
input, no Python traceback (issue 13, "Done when" 2). `--debug` adds the traceback.

Most cases call `cli.main` in-process (fast); two run the installed command in a subprocess, where
library start-up output (TensorFlow, Beam, google-api-core warnings) would show too.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segbalance.pipeline import cli

SEGBALANCE = os.path.join(os.path.dirname(sys.executable), "segbalance")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace of good and bad inputs; tests must not change it (checked at the end)."""
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "afile.txt").write_text("not a folder, not a TFRecord\n")
    (root / "emptydir").mkdir()
    (root / "pipeline.yaml").write_text("pipelineInfo: {name: p}\nroot: {}\ndeploymentSpec: {}\n")  # a KFP package
    (root / "bad.yaml").write_text("training: [1\n")
    (root / "devices.yaml").write_text("training:\n  devices: [/gpu:7]\n")
    (root / "user_output.yaml").write_text(f"output_dir: {root / 'user'}\n")  # the output folder from the config
    (root / "fewnames.yaml").write_text("classes: {names: [a, b]}\n")  # names for sample data of 4 classes
    (root / "numbernames.yaml").write_text("classes: {names: 5}\n")
    raw = root / "runout" / "data" / "raw"  # images/ + masks/ inside OUTPUT/data, where run writes spans
    for sub in ("images", "masks"):
        (raw / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(raw / sub / "a.png")
    (root / "data_in_output.yaml").write_text(f"data:\n  dir: {raw}\n")
    (root / "bad.json").write_text('{"img0": [0, 1')
    (root / "user").mkdir()  # somebody's folder: never written into
    (root / "spans[1]" / "Span-0").mkdir(parents=True)  # a folder of spans whose name Beam reads as a pattern
    (root / "spanslink").symlink_to(root / "spans[1]")  # ... behind a link (run reads the folder it leads to)
    (root / "user" / "notes.txt").write_text("mine\n")
    (root / "report.txt").write_text("my own notes, not a report\n")
    (root / "myreport").mkdir()  # only names a run writes, but the user's: a run overwrote report.html
    (root / "myreport" / "report.html").write_text("<html>my own report</html>\n")
    (root / "mydb").mkdir()  # a metadata.sqlite beside the user's thesis: not a run directory either
    (root / "mydb" / "metadata.sqlite").write_bytes(b"SQLite format 3\x00")
    (root / "mydb" / "thesis.docx").write_text("mine\n")
    # QA 56: names alone made these outputs "ours" (classes.json, metadata.sqlite, "pipelineSpec", results.json)
    tiles = root / "tiles"  # a user's data folder whose files look like a sample's: sample-data deleted them
    for sub in ("images", "masks"):
        (tiles / sub).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 7, np.uint8)).save(tiles / sub / "buildings_00001.png")
    (tiles / "classes.json").write_text(json.dumps({"class_names": ["background", "building"]}))
    import sqlite3

    (root / "appdb").mkdir()  # an application's metadata.sqlite, alone: run made it an ML Metadata store
    with sqlite3.connect(root / "appdb" / "metadata.sqlite") as db:
        db.execute("CREATE TABLE photos (name TEXT)")
        db.execute("INSERT INTO photos VALUES ('holiday.jpg')")
    db.close()
    (root / "other.json").write_text('{"displayName": "fraud-detection", "pipelineSpec": {"root": {}}}\n')
    (root / "myresults").mkdir()  # another tool's results.json: experiment overwrote it
    (root / "myresults" / "results.json").write_text('{"model": "resnet50", "top1": 0.812}\n')
    data = root / "data"  # a valid images/masks pair
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "masks" / "a.png")
    (data / "classes.json").write_text(json.dumps({"class_names": ["bg", "fg"]}))
    bad_labeled = root / "bad_labeled"  # good pairs, labeled.json with a syntax error
    for sub in ("images", "masks"):
        (bad_labeled / sub).mkdir(parents=True)
        (bad_labeled / sub / "a.png").write_bytes((data / sub / "a.png").read_bytes())
    (bad_labeled / "labeled.json").write_text('{"a": [0, 1],\n "b": [0 1]}')
    (root / "masks_is_file").mkdir()
    (root / "masks_is_file" / "images").mkdir()
    (root / "masks_is_file" / "masks").write_text("x")
    # QA 73: pages of the user's taken for reports and overwritten by `report --output`
    (root / "mynotes.html").write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>My notes '
                                       'about segbalance</title></head><body><p>mine</p></body></html>\n')
    (root / "quoting.html").write_text('<html><body><p>my copy</p>\n<!-- <meta name="generator" content="segbalance '
                                       'report"> -->\n</body></html>\n')
    # QA 73: an earlier run's folder whose report.html a run overwrote: a user's file, one behind a link (outside
    # the folder), or a folder (a traceback once the whole pipeline had run)
    from segbalance.pipeline import output_guard

    for name in ("run_userpage", "run_linkpage", "run_folderpage"):
        (root / name).mkdir()
        output_guard.write_marker(root / name, "run")
    (root / "run_userpage" / "report.html").write_text("<html>my own page</html>\n")
    (root / "run_linkpage" / "report.html").symlink_to(root / "mynotes.html")
    (root / "run_folderpage" / "report.html").mkdir()
    return root


def _snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _cases():
    """(id, argv with {w} for the workspace, text the one line must contain)."""
    return [
        # sample-data
        ("sample-data output is a file", ["sample-data", "shapes", "--output", "{w}/afile.txt"], "{w}/afile.txt"),
        ("sample-data output below a file", ["sample-data", "shapes", "--output", "{w}/afile.txt/x"], "{w}/afile.txt"),
        ("sample-data output is a user's folder", ["sample-data", "shapes", "--output", "{w}/user"], "{w}/user"),
        ("sample-data output is a user's data folder", ["sample-data", "shapes", "--output", "{w}/tiles"],
         "{w}/tiles is not empty and was not written by segbalance sample-data"),
        ("sample-data num-images 0", ["sample-data", "shapes", "--output", "{w}/new", "--num-images", "0"],
         "--num-images"),
        ("sample-data size not a number", ["sample-data", "shapes", "--output", "{w}/new", "--size", "big"], "--size"),
        ("sample-data unknown kind", ["sample-data", "cats", "--output", "{w}/new"], "'cats'"),
        ("sample-data no output", ["sample-data", "shapes"], "--output"),
        # ingest
        ("ingest missing images folder", ["ingest", "{w}/nope", "{w}/data/masks", "--output", "{w}/new"], "{w}/nope"),
        ("ingest images folder is a file", ["ingest", "{w}/afile.txt", "{w}/data/masks", "--output", "{w}/new"],
         "{w}/afile.txt"),
        ("ingest empty folders", ["ingest", "{w}/emptydir", "{w}/emptydir", "--output", "{w}/new"], "{w}/emptydir"),
        ("ingest output is a file", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/afile.txt"],
         "{w}/afile.txt"),
        ("ingest output holds the inputs", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/data",
                                            "--overwrite"], "{w}/data"),
        ("ingest output is a user's folder", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/user",
                                              "--overwrite"], "{w}/user"),
        ("ingest labeled missing", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                    "--labeled", "{w}/nope.json"], "{w}/nope.json"),
        ("ingest labeled is a folder", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                        "--labeled", "{w}/emptydir"], "{w}/emptydir"),
        ("ingest labeled syntax", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                   "--labeled", "{w}/bad.json"], "{w}/bad.json"),
        ("ingest palette not JSON", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                     "--palette", "{w}/afile.txt"], "{w}/afile.txt"),
        ("ingest num-classes 0", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                  "--num-classes", "0"], "--num-classes"),
        ("ingest num-classes not a number", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                             "--num-classes", "three"], "--num-classes"),
        ("ingest shards 0", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new", "--shards", "0"],
         "--shards"),
        ("ingest span -1", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new", "--span", "-1"],
         "--span"),
        # QA 69 F12: TFX holds span numbers as int32 (a Span-10**20 was written, then no pipeline could read it)
        ("ingest span 2**31", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new", "--span",
                               str(2 ** 31)], "--span must be from 0 to 2147483647, got 2147483648"),
        # QA 69 F21: a name starting with '-' is read as an option; argparse named neither it nor the fix
        ("ingest images folder starting with a dash", ["ingest", "-imgs", "{w}/data/masks", "--output", "{w}/new"],
         "'-imgs' is read as an option: write ./-imgs for a file or folder whose name starts with '-'"),
        ("run config starting with a dash", ["run", "--config", "-x.yaml"],
         "'-x.yaml' is read as an option: write --config=-x.yaml for a value that starts with '-'"),
        # QA 75: the hint paired another word with the option, and told `-output` to be ./-output
        ("ingest value after a dashed folder", ["ingest", "-imgs", "{w}/data/masks", "--output", "{w}/new", "--span",
                                                "-3x"], "'-3x' is read as an option: write --span=-3x"),
        ("ingest option with one dash", ["ingest", "{w}/data/images", "{w}/data/masks", "-output", "{w}/new"],
         "'-output' is not an option: write --output"),
        ("ingest ignore-index 300", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                     "--ignore-index", "300"], "--ignore-index"),
        # an ignore index inside the class range turned that class's pixels into "no label" (QA, session 18)
        ("ingest ignore-index is a class", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                            "--num-classes", "4", "--ignore-index", "2"],
         "--ignore-index 2 collides with a class id (< 4)"),
        ("ingest 256 classes", ["ingest", "{w}/data/images", "{w}/data/masks", "--output", "{w}/new",
                                "--num-classes", "256"], "--num-classes must be between 1 and 255"),
        # stats
        ("stats no file matches", ["stats", "{w}/nope/data-*", "--num-classes", "2", "--output", "{w}/new"],
         "{w}/nope/data-*"),
        ("stats input is not a TFRecord", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new"],
         "{w}/afile.txt"),
        ("stats input is a folder", ["stats", "{w}/emptydir", "--num-classes", "2", "--output", "{w}/new"],
         "{w}/emptydir"),
        ("stats output is a file", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/afile.txt"],
         "{w}/afile.txt"),
        # QA 63: one Beam flag as the value of --beam-args was an argparse error ("expected one argument")
        ("stats beam-args one flag, misspelt", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new",
                                                "--beam-args", "--direct_num_workerz=2"],
         "'--direct_num_workerz=2' is not an option of Beam's direct runner"),
        # QA 63: an unknown option was the top-level parser's error, pointing at `segbalance --help`
        ("run unknown option", ["run", "--bogus"], "unrecognized arguments: --bogus (see `segbalance run --help`)"),
        ("stats num-classes 0", ["stats", "{w}/afile.txt", "--num-classes", "0", "--output", "{w}/new"],
         "--num-classes"),
        ("stats ignore-index is a class", ["stats", "{w}/afile.txt", "--num-classes", "21", "--output", "{w}/new",
                                           "--ignore-index", "5"], "--ignore-index 5 collides with a class id (< 21)"),
        ("stats ignore-index 300", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new",
                                    "--ignore-index", "300"], "--ignore-index 300 is not an 8-bit mask value"),
        ("stats num-classes 256", ["stats", "{w}/afile.txt", "--num-classes", "256", "--output", "{w}/new"],
         "--num-classes must be between 1 and 255"),
        ("stats weight-clip", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new",
                               "--weight-clip", "1"], "--weight-clip"),
        # QA 27: the checks named the pipeline's fields (stats.beta, stats.clip, ...), not the flags typed
        ("stats weight-beta", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new",
                               "--weight-beta", "1.5"], "error: --weight-beta: must be in [0, 1) (leave it out for 1 - 1/N)"),
        ("stats class-names count", ["stats", "{w}/afile.txt", "--num-classes", "3", "--output", "{w}/new",
                                     "--class-names", "a,b"], "error: --class-names gives 2 names for --num-classes 3"),
        ("stats weight-clip order", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new",
                                     "--weight-clip", "5,1"], "error: --weight-clip: "),
        ("stats suspect-threshold", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new",
                                     "--suspect-threshold", "2"], "error: --suspect-threshold"),
        ("stats zero-count-weight", ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new",
                                     "--zero-count-weight", "-1"], "error: --zero-count-weight: "),
        # report
        ("report missing input", ["report", "{w}/nope", "--output", "{w}/new.html"], "{w}/nope"),
        ("report input is a file", ["report", "{w}/afile.txt", "--output", "{w}/new.html"], "{w}/afile.txt"),
        ("report input is empty", ["report", "{w}/emptydir", "--output", "{w}/new.html"], "{w}/emptydir"),
        ("report output is a folder", ["report", "{w}/emptydir", "--output", "{w}/user"], "{w}/user"),
        # QA 27: a folder not made yet was "[Errno 21] Is a directory: 'newdir/'"
        ("report output a new folder", ["report", "{w}/emptydir", "--output", "{w}/newdir/"],
         "--output {w}/newdir/ is a folder; give a file name, e.g. {w}/newdir/report.html"),
        ("report output is a user's file", ["report", "{w}/emptydir", "--output", "{w}/report.txt"],
         "{w}/report.txt"),
        ("report output is a user's page starting as ours", ["report", "{w}/emptydir", "--output", "{w}/mynotes.html"],
         "--output {w}/mynotes.html exists and was not written by segbalance"),
        ("report output is a user's page quoting the generator", ["report", "{w}/emptydir", "--output",
                                                                  "{w}/quoting.html"],
         "--output {w}/quoting.html exists and was not written by segbalance"),
        ("run folder's report.html is a user's file", ["run", "--data", "{w}/data", "--output-dir", "{w}/run_userpage"],
         "--output-dir {w}/run_userpage: its report.html, which a run replaces with its data report, is a file "
         "segbalance did not write: move it out of the folder"),
        ("run folder's report.html links to a user's file", ["run", "--data", "{w}/data", "--output-dir",
                                                             "{w}/run_linkpage"],
         "its report.html, which a run replaces with its data report, is a link to {w}/mynotes.html, a file "
         "segbalance did not write"),
        ("run folder's report.html is a folder", ["run", "--data", "{w}/data", "--output-dir", "{w}/run_folderpage"],
         "its report.html, which a run replaces with its data report, is a folder"),
        # run (errors found before the pipeline starts)
        ("run config missing", ["run", "--config", "{w}/nope.yaml"], "{w}/nope.yaml"),
        ("run config is a folder", ["run", "--config", "{w}/emptydir"], "{w}/emptydir"),
        ("run config syntax", ["run", "--config", "{w}/bad.yaml"], "{w}/bad.yaml"),
        ("run data missing", ["run", "--data", "{w}/nope", "--output-dir", "{w}/new"], "--data: {w}/nope is not a"),
        ("run data empty string", ["run", "--data", "", "--output-dir", "{w}/new"], "--data is empty"),  # QA 69
        # QA 27: it failed at SegTrainer's first step, with TensorFlow's traceback
        ("run devices not here", ["run", "--config", "{w}/devices.yaml", "--output-dir", "{w}/new"],
         "training.devices: '/gpu:7' is not a device of this machine"),
        ("run data is a file", ["run", "--data", "{w}/afile.txt", "--output-dir", "{w}/new"], "{w}/afile.txt"),
        ("run data is empty", ["run", "--data", "{w}/emptydir", "--output-dir", "{w}/new"], "{w}/emptydir"),
        ("run data masks is a file", ["run", "--data", "{w}/masks_is_file", "--output-dir", "{w}/new"],
         "{w}/masks_is_file"),
        ("run labeled.json syntax", ["run", "--data", "{w}/bad_labeled", "--output-dir", "{w}/new"],
         "{w}/bad_labeled/labeled.json is not valid JSON: Expecting ',' delimiter at line 2, column 10"),
        ("run output is a file", ["run", "--data", "{w}/data", "--output-dir", "{w}/afile.txt"], "{w}/afile.txt"),
        ("run output is a user's folder", ["run", "--data", "{w}/data", "--output-dir", "{w}/user"], "{w}/user"),
        # QA 63: run wrote 240 sample images, then blamed the sample's own classes.json
        ("run class names other than the sample's", ["run", "--config", "{w}/fewnames.yaml", "--output-dir",
                                                     "{w}/new"],
         "classes.names: ['a', 'b'] are not the classes of the shapes sample data"),
        # QA 65: a number or null there was a TypeError traceback (exit 1) once the sample's names were checked
        ("run class names a number", ["run", "--config", "{w}/numbernames.yaml", "--output-dir", "{w}/new"],
         "classes.names"),
        ("config validate class names a number", ["config", "validate", "{w}/numbernames.yaml"], "classes.names"),
        # the message named a --output-dir flag the user never gave (note 28)
        ("run output from the config is a user's folder", ["run", "--data", "{w}/data", "--config",
                                                           "{w}/user_output.yaml"],
         "output_dir (in {w}/user_output.yaml) {w}/user is not empty"),
        ("run output holds a user's report.html", ["run", "--data", "{w}/data", "--output-dir", "{w}/myreport"],
         "{w}/myreport is not empty and was not written by segbalance run"),
        ("run output holds metadata.sqlite and user files", ["run", "--data", "{w}/data", "--output-dir", "{w}/mydb"],
         "{w}/mydb is not empty and is not a segbalance run directory: it holds thesis.docx"),
        ("run output holds an application's metadata.sqlite", ["run", "--data", "{w}/data", "--output-dir",
                                                               "{w}/appdb"],
         "{w}/appdb is not a segbalance run directory: its metadata.sqlite is not the ML Metadata store of a "
         "segbalance pipeline"),
        ("run output inside the data", ["run", "--data", "{w}/data", "--output-dir", "{w}/data/out"],
         "is inside the data folder {w}/data"),
        # the data folder from the config, in the folder run writes its spans to: no --data flag to name
        ("run data from the config inside the output's data", ["run", "--config", "{w}/data_in_output.yaml",
                                                               "--output-dir", "{w}/runout"],
         "the data folder {w}/runout/data/raw lies in {w}/runout/data"),
        # experiment (refused before any training)
        ("experiment output is a file", ["experiment", "--output", "{w}/afile.txt"], "{w}/afile.txt"),
        # a path Beam and TFX read as a pattern: a traceback in ImportExampleGen or Beam's write (QA 96, seen beside)
        ("run output path with a pattern character", ["run", "--output-dir", "{w}/new/out[1]"],
         "--output-dir {w}/new/out[1]: its path holds '[', which Beam and TFX read as a file-name pattern"),
        ("run output path with a backslash", ["run", "--output-dir", "{w}/new/run\\x"],  # TensorFlow's escape
         "--output-dir {w}/new/run\\x: its path holds '\\\\'"),
        ("schedule spans folder with a pattern character",
         ["schedule", "--cron", "0 3 * * 1", "--data", "{w}/spans[1]", "--output-dir", "{w}/new/o"],
         "--data {w}/spans[1]: its path"),
        ("run output path with a regex character", ["run", "--output-dir", "{w}/new/out$1"],  # TFX's regex of it
         "--output-dir {w}/new/out$1: its path holds '$'"),
        ("run spans folder behind a link", ["run", "--data", "{w}/spanslink", "--output-dir", "{w}/new/o"],
         "--data: {w}/spanslink: its path ({w}/spans[1]) holds '['"),
        ("compile-kfp pipeline root with a pattern character", ["compile-kfp", "--output", "{w}/new.json", "--image",
                                                                "gcr.io/p/s:1", "--pipeline-root", "gs://b/r[1]"],
         "--pipeline-root gs://b/r[1]: its path holds '['"),
        ("run spans folder with a pattern character", ["run", "--data", "{w}/spans[1]", "--output-dir", "{w}/new/o"],
         "--data: {w}/spans[1]: its path holds '['"),
        ("stats output path with pattern characters",
         ["stats", "{w}/afile.txt", "--num-classes", "2", "--output", "{w}/new/o*?"],
         "--output {w}/new/o*?: its path holds '*' and '?'"),
        ("experiment work folder with a pattern character",
         ["experiment", "--output", "{w}/new", "--work-dir", "{w}/new/w?"], "--work-dir {w}/new/w?: its path holds '?'"),
        ("experiment output holds another tool's results.json", ["experiment", "--output", "{w}/myresults"],
         "{w}/myresults is not empty and was not written by segbalance experiment"),
        ("experiment work-dir below a file", ["experiment", "--output", "{w}/new", "--work-dir", "{w}/afile.txt/w"],
         "{w}/afile.txt"),
        # compile-kfp
        ("compile-kfp output is a folder", ["compile-kfp", "--output", "{w}/emptydir", "--image", "r/s:1",
                                            "--pipeline-root", "gs://b/r"], "e.g. {w}/emptydir/pipeline.yaml"),
        ("compile-kfp output is a user's file", ["compile-kfp", "--output", "{w}/report.txt", "--image", "r/s:1",
                                                 "--pipeline-root", "gs://b/r"], "{w}/report.txt"),
        ("compile-kfp output is another pipeline's job", ["compile-kfp", "--output", "{w}/other.json", "--image",
                                                          "r/s:1", "--pipeline-root", "gs://b/r"],
         "{w}/other.json exists and was not written by segbalance"),
        ("compile-kfp without --pipeline-root", ["compile-kfp", "--output", "{w}/new.json", "--image", "r/s:1"],
         "--pipeline-root"),
        ("compile-kfp config missing", ["compile-kfp", "--output", "{w}/new.json", "--pipeline-root", "/tmp/root",
                                        "--config", "{w}/nope.yaml"],
         "{w}/nope.yaml"),
        ("compile-kfp span not a number", ["compile-kfp", "--output", "{w}/new.json", "--span", "last"], "--span"),
        ("compile-kfp span negative", ["compile-kfp", "--output", "{w}/new.json", "--span", "-1", "--image",
                                       "gcr.io/p/s:1", "--pipeline-root", "gs://b/r"],
         "--span -1: spans are numbered from 0"),  # QA 69: with remote data it compiled a span range -1..-1
        ("compile-kfp ftp pipeline root", ["compile-kfp", "--output", "{w}/new.json", "--image", "gcr.io/p/s:1",
                                           "--pipeline-root", "ftp://b/r"],  # QA 69 F22: it compiled
         "Kubeflow Pipelines keeps artifacts in gs://, s3://, minio:// buckets (or an absolute path its pods mount), "
         "not ftp://"),
        # schedule
        ("schedule cron", ["schedule", "--cron", "every monday"], "every monday"),
        ("schedule cron field", ["schedule", "--cron", "0 25 * * 1"], "0 25 * * 1"),
        ("schedule package missing", ["schedule", "--cron", "0 3 * * 1", "--kfp-host", "http://127.0.0.1:9",
                                      "--package", "{w}/nope.json"], "{w}/nope.json"),
        ("schedule host unreachable", ["schedule", "--cron", "0 3 * * 1", "--kfp-host", "http://127.0.0.1:9",
                                       "--package", "{w}/pipeline.yaml"], "http://127.0.0.1:9"),
        ("schedule package not yaml", ["schedule", "--cron", "0 3 * * 1", "--kfp-host", "http://127.0.0.1:9",
                                       "--package", "{w}/afile.txt"], "Kubeflow Pipelines takes the YAML package "
                                                                      "(.yaml or .yml)"),
    ] + _config_cases()


def _config_cases():
    """`segbalance config` (helper "config"'s command) when it is registered."""
    if "segbalance.pipeline.config_cmd" not in cli.COMMAND_MODULES:
        return []
    return [
        ("config validate missing file", ["config", "validate", "{w}/nope.yaml"], "{w}/nope.yaml"),
        ("config validate a folder", ["config", "validate", "{w}/emptydir"], "{w}/emptydir"),
        ("config validate syntax", ["config", "validate", "{w}/bad.yaml"], "{w}/bad.yaml"),
        ("config validate not YAML", ["config", "validate", "{w}/afile.txt"], "{w}/afile.txt"),
        ("config show missing file", ["config", "show", "--config", "{w}/nope.yaml"], "{w}/nope.yaml"),
        ("config unknown action", ["config", "edit"], "'edit'"),
    ]


CASES = _cases()


@pytest.mark.parametrize("argv, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(ws, argv, names, capsys):
    argv = [a.format(w=ws) for a in argv]
    before = _snapshot(ws)
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    printed = capsys.readouterr()
    err = printed.err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    # and nothing before it on stdout: `run` printed "output in DIR" first, though it wrote nothing there
    assert printed.out == "", printed.out
    assert re.match(rf"segbalance {argv[0]}( [a-z]+)?: (config )?error: ", lines[0]), lines[0]
    assert names.format(w=ws) in lines[0], lines[0]
    after = _snapshot(ws)
    assert {k: after.get(k, "deleted") for k in before} == before, "a refused command changed or deleted inputs"
    # a failed run may leave its new output folder with the run's log; nothing else may appear
    created = sorted(set(after) - set(before))
    assert all(k.split(os.sep)[0] == "new" for k in created), created
    shutil.rmtree(ws / "new", ignore_errors=True)


def test_every_command_is_walked():
    walked = {c[1][0] for c in CASES}
    parser = cli.build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    assert commands <= walked, sorted(commands - walked)


def _subprocess(*argv):
    # as a user's shell has it (an in-process cli.main of another test may have set both)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    return subprocess.run([SEGBALANCE, *argv], capture_output=True, text=True, env=env, timeout=300)


def test_installed_command_prints_exactly_one_line(ws):
    """Through the installed entry point: nothing but the line on stderr (library start-up output
    included: `stats` imports Beam, which printed four google-api-core FutureWarnings)."""
    result = _subprocess("ingest", f"{ws}/data/images", f"{ws}/data/masks", "--output", f"{ws}/data", "--overwrite")
    assert result.returncode == 2
    assert result.stderr == (f"segbalance ingest: error: --output {ws}/data contains the input folder "
                             f"{ws}/data/images: choose an output folder outside the inputs (nothing was written)\n")
    result = _subprocess("stats", f"{ws}/nope/data-*", "--num-classes", "2", "--output", f"{ws}/new")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("segbalance stats: error: "), result.stderr


def test_debug_shows_the_traceback(ws, capsys):
    assert cli.main(["--debug", "ingest", f"{ws}/nope", f"{ws}/data/masks", "--output", f"{ws}/new"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "IngestError" in err
    assert err.strip().splitlines()[-1] == f"segbalance ingest: error: image folder {ws}/nope does not exist or is " \
                                           f"not a folder"


@pytest.mark.parametrize("argv, line", [
    (["config", "validate", "{w}/bad.yaml"], "segbalance config validate: error: "),
    (["stats", "{w}/data/images/img0.png", "--num-classes", "2", "--output", "{w}/new"], "segbalance stats: error: "),
    (["report", "{w}/nope", "--output", "{w}/new/r.html"], "segbalance report: error: "),
    (["compile-kfp", "--output", "{w}/new/p.yaml", "--image", "r/s:1", "--pipeline-root", "gs://b/r", "--config",
      "{w}/bad.yaml"], "segbalance compile-kfp: error: "),
    (["schedule", "--cron", "every monday"], "segbalance schedule: error: "),
    (["run", "--config", "{w}/bad.yaml"], "segbalance run: error: "),
], ids=["config", "stats", "report", "compile-kfp", "schedule", "run"])
def test_debug_shows_the_traceback_of_commands_that_report_their_own_errors(ws, argv, line, capsys):
    """QA 27: the commands that catch their own errors printed the line alone with --debug."""
    assert cli.main(["--debug", *(a.format(w=ws) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith(line), err
    assert cli.main([a.format(w=ws) for a in argv]) == 2
    assert "Traceback" not in capsys.readouterr().err
    shutil.rmtree(ws / "new", ignore_errors=True)


def test_a_reader_that_stops_reading_is_no_traceback(ws):
    """`segbalance schedule | head -1` (the reader leaves before the writer is done) printed a BrokenPipeError
    traceback and exited 1 (QA 27): nothing now, and 141 (128 + SIGPIPE), as a shell reports it. A pipe whose
    reader is gone from the start makes it certain."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    try:
        result = subprocess.run([SEGBALANCE, "schedule", "--cron", "0 3 * * 1"], stdout=write,
                                stderr=subprocess.PIPE, text=True, env=env, timeout=300, cwd=ws)
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == "", result.stderr


def test_a_broken_pipe_that_is_not_stdout_keeps_its_traceback(monkeypatch, capsys):
    """Review 27: every BrokenPipeError was taken for stdout's reader leaving (exit 141, nothing said); one from
    another pipe (a worker's, a socket) is a bug and keeps its traceback."""
    from segbalance.pipeline import sample_data

    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sample_data, "write_sample_data", broken)
    monkeypatch.setattr(cli, "stdout_reader_gone", lambda: False)
    with pytest.raises(BrokenPipeError):
        cli.main(["sample-data", "shapes", "--output", "x"])
    monkeypatch.setattr(cli, "stdout_reader_gone", lambda: True)  # stdout's reader did leave
    assert cli.main(["sample-data", "shapes", "--output", "x"]) == 141
    assert capsys.readouterr().err == ""


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors are shortened: anything else propagates (a bug must be visible)."""
    from segbalance.pipeline import sample_data

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(sample_data, "write_sample_data", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["sample-data", "shapes", "--output", "x"])


def test_ctrl_c_is_one_line_exit_130(monkeypatch, capsys):
    from segbalance.pipeline import sample_data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_data, "write_sample_data", interrupted)
    assert cli.main(["sample-data", "shapes", "--output", "x"]) == 130
    assert capsys.readouterr().err == "segbalance sample-data: interrupted\n"  # (run adds how to resume)


def test_a_run_folder_with_a_damaged_metadata_store_is_one_line(tmp_path, capsys):
    """`run` opens its folder's metadata.sqlite first (to cancel what a stopped run left): a damaged one
    was ML Metadata's traceback; it is one line naming the file and what to do, exit 2, the file kept."""
    from segbalance.pipeline import output_guard

    output_guard.write_marker(tmp_path, "run")
    (tmp_path / "metadata.sqlite").write_bytes(b"garbage")
    assert cli.main(["run", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "metadata.sqlite cannot be opened as an ML Metadata store (file is not a database)" in err
    assert "move it aside with the pipeline_root/ folder beside it" in err and "run `segbalance run` again" in err
    assert (tmp_path / "metadata.sqlite").read_bytes() == b"garbage"


def test_a_run_folder_whose_store_was_moved_from_its_artifacts_is_refused(tmp_path, capsys):
    """QA 91 H1: the store moved aside (as the damaged-store line said), the next run's new store numbered its
    executions from 1 and wrote into the earlier runs' artifact folders (their Examples, ClassStats, drift.json
    overwritten; a traceback in Transform). Such a folder is refused, one line, nothing written."""
    from segbalance.pipeline import output_guard

    output_guard.write_marker(tmp_path, "run")
    old = tmp_path / "pipeline_root" / "ClassStatsGen" / "class_stats" / "4"
    old.mkdir(parents=True)
    (old / "class_stats.json").write_text("{}")
    assert cli.main(["run", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "holds pipeline_root/ (the artifacts of earlier runs) but no metadata.sqlite" in err
    assert "move pipeline_root/ aside too" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".segbalance.json", "pipeline_root"]
    assert (old / "class_stats.json").read_text() == "{}"


def test_sigterm_stops_like_ctrl_c_exit_143(monkeypatch, capsys):
    """systemd's stop, `timeout` and `kill` send SIGTERM: Python died at once (exit 143, no message, `run`
    left no run_summary.json); it now stops through the commands' clean-up, one line, exit 143."""
    import signal

    from segbalance.pipeline import sample_data

    cleaned = []

    def terminated(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(sample_data, "write_sample_data", terminated)
    assert cli.main(["sample-data", "shapes", "--output", "x"]) == 143
    assert capsys.readouterr().err == ("segbalance sample-data: stopped (SIGTERM); run the same command again to "
                                       "resume\n")
    assert cleaned == [True] and signal.getsignal(signal.SIGTERM) == before  # the handler is the command's only
    assert isinstance(cli.Terminated(), KeyboardInterrupt)  # run's summary: status interrupted


@pytest.mark.parametrize("signum, status, line", [
    ("SIGTERM", 143, "stopped (SIGTERM); run the same command again to resume"),
    ("SIGINT", 130, "interrupted")])
def test_a_stop_raised_inside_tensorflow_as_another_error_is_still_a_stop(monkeypatch, capsys, signum, status, line):
    """QA: SIGTERM while SegEvaluator loaded a SavedModel arrived through TensorFlow's pybind11 callback as a
    RuntimeError ("MISMATCH of original and normalized active exception types ... REPLACED BY Terminated"):
    a traceback, exit 1, and run_summary.json "failed" although the run had only been stopped."""
    import signal

    from segbalance.pipeline import sample_data
    from segbalance.pipeline.run_summary import unfinished_summary

    summaries = []

    def stopped_inside_a_callback(*args, **kwargs):
        try:
            os.kill(os.getpid(), getattr(signal, signum))
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        except KeyboardInterrupt:  # what pybind11 does with it
            error = RuntimeError("pybind11::error_already_set: MISMATCH of original and normalized active "
                                 "exception types: ORIGINAL InvalidArgumentError REPLACED BY Terminated")
            summaries.append(unfinished_summary(error, None, None))
            raise error from None

    monkeypatch.setattr(sample_data, "write_sample_data", stopped_inside_a_callback)
    assert cli.main(["sample-data", "shapes", "--output", "x"]) == status
    assert capsys.readouterr().err == f"segbalance sample-data: {line}\n"
    [summary] = summaries
    assert summary["status"] == "interrupted" and summary["error"].startswith(
        ("Terminated" if signum == "SIGTERM" else "KeyboardInterrupt") + ": (raised as RuntimeError: pybind11")
    assert unfinished_summary(RuntimeError("x"), None, None)["status"] == "failed"  # the next command starts clean
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_run_help_lists_every_exit_status(capsys):
    """A scheduler's author reads `run --help` for the statuses: 143 (SIGTERM) was missing there."""
    import signal

    from segbalance.pipeline.run import EXIT_DRIFT_BLOCKED

    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for status in (0, 2, EXIT_DRIFT_BLOCKED, 128 + signal.SIGINT, 128 + signal.SIGTERM):
        assert f" {status} " in text, status


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs (not writable, even by root)")
@pytest.mark.parametrize("argv", [["sample-data", "shapes", "--output", "/sys/segbalance_test"],
                                  ["run", "--output-dir", "/sys/segbalance_test"]])
def test_an_unwritable_output_is_one_line_not_a_traceback(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "permission denied: /sys/segbalance_test" in err and "Traceback" not in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs procfs (no folder can be made there)")
@pytest.mark.parametrize("argv", [["run", "--output-dir", "/proc/segbalance_test"],
                                  ["experiment", "--quick", "--output", "/proc/segbalance_test"]])
def test_an_output_that_cannot_be_made_is_one_line_not_a_traceback(argv, capsys):
    """QA 69: run's own mkdir let /proc's ENOENT through as a traceback (make_folder said it for the others)."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "/proc/segbalance_test" in err and ": cannot create the folder (No such file or directory); give a " \
                                               "folder path" in err


def _full_disk_inside_tfx():
    """What the CI run hit: TFX's copy fails with ENOSPC (a shutil.Error listing it as text), and its
    launcher raises again while publishing the failed execution."""
    import shutil

    try:
        try:
            raise shutil.Error([("/venv/tfx/py.typed", "/tmp/tmpx/build/tfx/tfx/py.typed",
                                 "[Errno 28] No space left on device: '/tmp/tmpx/build/tfx/tfx/py.typed'")])
        except shutil.Error:
            raise RuntimeError("publishing the failed execution failed")
    except RuntimeError as exc:
        return exc


class ResourceExhausted(Exception):
    """Stands for tensorflow.errors.ResourceExhaustedError (its str() is its message; no TensorFlow import here)."""


def _wrapped(inner: BaseException) -> BaseException:
    """``inner`` raised again as the cause of another error, as TFX's launcher does."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("the component failed") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("raised, where", [
    (OSError(28, "No space left on device", "/out/model/variables.data"), "/out/model/variables.data"),
    # QA 91 L1: a copy (shutil's sendfile) names its source first; the destination is the full one
    (OSError(28, "No space left on device", "/data/masks_full/a.png", None, "/out/data/Span-0/.refs/a.png"),
     "/out/data/Span-0/.refs/a.png"),
    (_full_disk_inside_tfx(), "/tmp/tmpx/build/tfx/tfx/py.typed"),
    # QA 27 (a tmpfs filled at each step): TensorFlow's and SQLite's words for it were a traceback, exit 1
    (_wrapped(ResourceExhausted("/out/pipeline_root/SegTrainer/model/10/Format-Serving/"
                                                            "saved_model.pb.tmp4a92; No space left on device")),
     "/out/pipeline_root/SegTrainer/model/10/Format-Serving/saved_model.pb.tmp4a92"),
    (ResourceExhausted("{{function_node __wrapped__CreateSummaryFileWriter_device_/job:"
                                                  "localhost/replica:0/task:0/device:CPU:0}} /out/logs/events.out; No "
                                                  "space left on device [Op:CreateSummaryFileWriter]"), "/out/logs/events.out"),
    (_wrapped(RuntimeError("Failed to establish connection to Metadata storage with error: Error when executing query: "
                           "database or disk is full query: COMMIT;")), "the ML Metadata store (metadata.sqlite)"),
    # QA 77: h5py's error (BackupAndRestore's weights file) names the file in its text only: it was "writing ?"
    (OSError(28, "Can't close file (file write failed: time = Mon Dec  7 05:40:01 2026, filename = "
                 "'/out/pipeline_root/SegTrainer/model_run/backup-1/incoming.weights.h5', file descriptor = 41, "
                 "errno = 28, error message = 'No space left on device')"),
     "/out/pipeline_root/SegTrainer/model_run/backup-1/incoming.weights.h5"),
])
def test_a_full_disk_is_one_line_exit_2(raised, where, monkeypatch, capsys):
    from segbalance.pipeline import sample_data

    def full(*args, **kwargs):
        raise raised

    monkeypatch.setattr(sample_data, "write_sample_data", full)
    assert cli.main(["sample-data", "shapes", "--output", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no space left on the device (writing {where})" in err
    assert "run the same command again" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["sample-data", "shapes", "--output", "x"], ["run", "--output-dir", "x"]])
def test_a_read_only_file_system_is_one_line_exit_2(command, monkeypatch, tmp_path, capsys):
    """A read-only mount (EROFS; root ignores permissions, not a read-only mount) was a traceback and exit 1
    from run, ingest, sample-data and stats (QA): only PermissionError was the user's. Also when TFX wraps it."""
    from segbalance.pipeline import output_guard, sample_data

    def read_only(*args, **kwargs):
        try:
            raise OSError(30, "Read-only file system", str(tmp_path / "x" / ".segbalance.json"))
        except OSError as exc:
            raise RuntimeError("publishing the failed execution failed") from exc

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sample_data, "write_sample_data", read_only)
    monkeypatch.setattr(output_guard, "write_marker", read_only)
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"error: read-only file system: {tmp_path / 'x' / '.segbalance.json'}: choose a folder" in err


class PermissionDenied(Exception):
    """Stands for tensorflow.errors.PermissionDeniedError (its str() is its message)."""


@pytest.mark.parametrize("raised, line", [
    (_wrapped(PermissionDenied("/out/pipeline_root/SegTrainer; Read-only file system")),
     "error: read-only file system: /out/pipeline_root/SegTrainer: choose a folder"),
    (_wrapped(PermissionDenied("/out/pipeline_root/SegTrainer/model; Permission denied")),
     "error: permission denied: /out/pipeline_root/SegTrainer/model: choose a folder you can write"),
    # QA 79: a path with a space was cut at it; "Operation not permitted" was a traceback
    (PermissionDenied("{{function_node x}} /data/my models/run 1/pipeline_root; Read-only file system"),
     "error: read-only file system: /data/my models/run 1/pipeline_root: choose a folder"),
    (PermissionDenied("/sys/fs/x; Operation not permitted"), "error: permission denied: /sys/fs/x: choose a folder"),
])
def test_tensorflow_s_words_for_an_unwritable_folder_are_one_line_exit_2(raised, line, monkeypatch, capsys):
    """QA 77: a pipeline_root made read-only part-way through a run was TensorFlow's PermissionDeniedError (not
    an OSError), a traceback and exit 1."""
    from segbalance.pipeline import sample_data

    def unwritable(*args, **kwargs):
        raise raised

    monkeypatch.setattr(sample_data, "write_sample_data", unwritable)
    assert cli.main(["sample-data", "shapes", "--output", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err and "Traceback" not in err, err


def _undecodable_png_error():
    """TensorFlow's own error for a PNG whose pixel data is damaged (a broken zlib stream; every CRC right)."""
    import io
    import struct
    import zlib

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 9, 3), np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    at = data.find(b"IDAT")
    body = bytearray(data[at + 4:at + 4 + int.from_bytes(data[at - 4:at], "big")])
    body[5] ^= 0xFF
    damaged = data[:at] + b"IDAT" + bytes(body) + struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body))) + \
        data[at + 8 + len(body):]
    try:
        tf.io.decode_png(damaged, channels=3)
    except tf.errors.InvalidArgumentError as exc:
        return exc
    raise AssertionError("TensorFlow decoded the damaged PNG")


@pytest.mark.parametrize("jpeg", [False, True])
def test_records_tensorflow_cannot_decode_are_one_line_exit_2(jpeg, monkeypatch, capsys):
    """QA 80 H1: a record whose image TensorFlow could not decode stopped a run inside Transform with three
    tracebacks and exit 1. ClassStatsGen does not inflate images' pixel data (cost), so such a record of a user's
    own may still reach Transform: the line says what to do. TensorFlow's own error, wrapped as TFX wraps it."""
    from segbalance.pipeline import sample_data

    if jpeg:
        import tensorflow as tf

        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            tf.io.decode_jpeg(b"\xff\xd8\xff\xe0 not a JPEG")
        raised = _wrapped(caught.value)
    else:
        raised = _wrapped(_undecodable_png_error())

    def undecodable(*args, **kwargs):
        raise raised

    monkeypatch.setattr(sample_data, "write_sample_data", undecodable)
    assert cli.main(["sample-data", "shapes", "--output", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    what = "Invalid JPEG data or crop window" if jpeg else "Invalid PNG data, size "
    assert f"error: TensorFlow could not decode an image or mask of the records ({what}" in err
    assert err.rstrip().endswith("(it checks every file's pixel data and names each damaged one)")


@pytest.mark.parametrize("raised", [OSError(5, "Input/output error", "/out/x"), RuntimeError("a bug"),
                                    ValueError("a bug")])
def test_other_failures_keep_their_traceback(raised, monkeypatch):
    from segbalance.pipeline import sample_data

    def broken(*args, **kwargs):
        raise raised

    monkeypatch.setattr(sample_data, "write_sample_data", broken)
    with pytest.raises(type(raised)):
        cli.main(["sample-data", "shapes", "--output", "x"])


@pytest.mark.parametrize("argv", [["config", "validate", "{f}"], ["compile-kfp", "--output", "{d}/p.json", "--image",
                                  "gcr.io/p/s:1", "--pipeline-root", "gs://b/r", "--config", "{f}"],
                                  ["schedule", "--cron", "0 3 * * 1", "--config", "{f}"],
                                  ["run", "--config", "{f}", "--output-dir", "{d}/out"]])
def test_a_config_file_that_is_not_utf8_is_one_line(argv, tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    raw = "classes:\n  names: [background, Stra\u00dfe]\n".encode("latin-1")
    config.write_bytes(raw)
    assert cli.main([a.format(f=config, d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    where = raw.index(b"\xdf")
    assert err.count("\n") == 1 and f"config file {config} is not UTF-8 text (byte 0xdf at position {where})" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["run", "--data", "{loop}", "--output-dir", "{d}/out"],
                                  ["ingest", "{loop}", "{d}/masks", "--output", "{d}/out"],
                                  ["ingest", "{d}/images", "{d}/masks", "--output", "{loop}"],
                                  ["compile-kfp", "--output", "{loop}", "--image", "gcr.io/p/s:1", "--pipeline-root",
                                   "gs://b/r"],
                                  ["config", "validate", "{d}/loop.yaml"]])
def test_a_link_that_loops_is_one_line_exit_2(argv, tmp_path, capsys, monkeypatch):
    """QA 69: pathlib's RuntimeError ('Symlink loop from ...') was a traceback and exit 1 in five commands."""
    from segbalance.pipeline import sample_data

    sample_data.write_sample_data("shapes", tmp_path, num_images=2, size=16)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    (tmp_path / "loop.yaml").write_text(f"data:\n  dir: {loop}\n")
    before = sorted(str(p) for p in tmp_path.rglob("*") if p != loop)
    monkeypatch.setenv("UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES", "1")
    assert cli.main([a.format(loop=loop, d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{loop} is a link that loops (it leads back to itself): point it at a real " in err, err
    assert loop.is_symlink() and os.readlink(loop) == str(loop)  # the user's link as it was
    assert sorted(str(p) for p in tmp_path.rglob("*") if p != loop and "out" not in p.parts) == before


def test_outputs_that_are_links_to_nothing_or_inside_the_input_are_refused(tmp_path, capsys):
    """QA 69: report --output replaced the user's looping link with the page, and wrote into the statistics
    folder it read; ingest --output (no --span) wrote through a link to nothing, making the folders it named."""
    from segbalance.pipeline import sample_data
    from tests.report_inputs import write_report_inputs

    (tmp_path / "inputs").mkdir()
    stats = write_report_inputs(tmp_path / "inputs").class_stats_dir
    loop = tmp_path / "loop.html"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "deep")
    before = sorted(os.listdir(stats))
    for argv, line in (
            (["report", stats, "--output", str(loop)], f"--output {loop} is a link that loops (it leads back to "
                                                       f"itself): point it at a real file, or give another file name"),
            (["report", stats, "--output", str(dangling)], f"--output {dangling} is a link to nothing: point it at a "
                                                           f"real file"),
            (["report", stats, "--output", os.path.join(stats, "r.html")],
             f"--output {os.path.join(stats, 'r.html')} lies inside {stats}, the statistics folder it reads"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and line in err, err
    assert os.readlink(loop) == str(loop) and sorted(os.listdir(stats)) == before
    data = sample_data.write_sample_data("shapes", tmp_path / "d", num_images=2, size=16)
    assert cli.main(["ingest", str(data / "images"), str(data / "masks"), "--output", str(dangling)]) == 2
    err = capsys.readouterr().err
    assert f"--output {dangling} is a link to a folder that does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "nowhere").exists() and dangling.is_symlink()


@pytest.mark.parametrize("argv", [["run", "--output-dir", "{loop}"], ["sample-data", "shapes", "--output", "{loop}"],
                                  ["stats", "{d}/*.gz", "--num-classes", "2", "--output", "{loop}"]])
def test_an_output_folder_that_is_a_looping_link_is_not_told_to_create_it(argv, tmp_path, capsys):
    """QA 69: a looping --output link got "create that folder", which the loop makes impossible."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert cli.main([a.format(loop=loop, d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{loop} is a link that loops (it leads back to itself): point it at a real " \
                                   f"folder, or give another path" in err, err
    assert os.readlink(loop) == str(loop)


def test_an_output_that_is_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    """QA 73: `report --output` on a FIFO read its head to tell whether it was a report, and waited for ever."""
    import signal

    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)

    def waited(signum, frame):
        raise AssertionError("report waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(60)
    try:
        assert cli.main(["report", str(tmp_path), "--output", str(fifo)]) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert f"--output {fifo} is not a regular file" in capsys.readouterr().err


def test_ctrl_c_says_resume_only_where_the_command_resumes(capsys):
    """QA 79: Ctrl-C told `ingest` and `report` to run again "to resume"; they start over. `run` resumes."""
    import signal

    assert cli._stopped("segbalance run", signal.SIGINT, False) == 130
    assert cli._stopped("segbalance ingest", signal.SIGINT, False) == 130
    assert capsys.readouterr().err == ("segbalance run: interrupted; run the same command again to resume\n"
                                       "segbalance ingest: interrupted\n")


def test_a_store_a_killed_run_left_mid_write_is_not_called_damaged(tmp_path, capsys):
    """QA 91 M1: a run killed while it wrote metadata.sqlite leaves metadata.sqlite-journal beside it; `report`
    (read-only) said "empty or damaged; move it aside", which parts the store from its journal and damages it.
    `run` (read-write) rolls the write back. The line now says so."""
    from segbalance.pipeline import output_guard

    output_guard.write_marker(tmp_path, "run")
    (tmp_path / "metadata.sqlite").write_bytes(b"garbage")
    (tmp_path / "metadata.sqlite-journal").write_bytes(b"journal")
    assert cli.main(["report", str(tmp_path), "--output", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "move it aside" not in err, err
    assert "a run was stopped while it wrote the store (metadata.sqlite-journal is beside it); run `segbalance " \
           "run` in this folder once" in err
    assert (tmp_path / "metadata.sqlite-journal").read_bytes() == b"journal"
