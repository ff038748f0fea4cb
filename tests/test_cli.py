"""The command line: import, embed, map, datasets; exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from curation.cli import main


def test_import_embed_map_and_list(small_class_tree, fresh_name, capsys):
    assert main(["import", str(small_class_tree), "--name", fresh_name]) == 0
    assert f"imported 60 samples" in capsys.readouterr().out
    assert main(["embed", "--dataset", fresh_name, "--model", "efficientnet-lite0-imagenet", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "embedded 60 new samples with efficientnet-lite0-imagenet at 160 px on cpu" in out
    assert main(["embed", "--dataset", fresh_name, "--model", "efficientnet-lite0-imagenet"]) == 0
    rerun = capsys.readouterr().out
    assert "embedded 0 new samples" in rerun and "(60 already done, 0 skipped)" in rerun
    assert main(["map", "--dataset", fresh_name]) == 0
    assert "map of 60 samples" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith(fresh_name))
    assert row.split()[1] == "60" and "efficientnet-lite0-imagenet: 60/60" in row


def test_rerun_embeds_nothing(embedded_dataset, capsys):
    assert main(["embed", "--dataset", embedded_dataset.name, "--model", "efficientnet-lite0-imagenet"]) == 0
    assert "embedded 0 new samples" in capsys.readouterr().out


def test_default_model_falls_back_offline_and_says_why(embedded_dataset, capsys):
    # HF_HUB_OFFLINE=1 (conftest): CLIP weights cannot be had, the offline model is used.
    assert main(["embed", "--dataset", embedded_dataset.name]) == 0
    captured = capsys.readouterr()
    assert "HF_HUB_OFFLINE" in captured.err and "efficientnet-lite0-imagenet" in captured.err
    assert main(["embed", "--dataset", embedded_dataset.name, "--no-fallback"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["embed", "--dataset", "no-such-dataset"], "no FiftyOne dataset named 'no-such-dataset'"),
    (["import", "/no/such/folder", "--name", "x"], "/no/such/folder: no such file or directory"),
    (["map", "--dataset", "no-such-dataset"], "no FiftyOne dataset named 'no-such-dataset'"),
])
def test_failures_exit_non_zero_with_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith(f"curation {argv[0]}: error:")


def test_unknown_model_lists_the_available_ones(embedded_dataset, capsys):
    assert main(["embed", "--dataset", embedded_dataset.name, "--model", "resnet-9000"]) == 1
    err = capsys.readouterr().err
    assert "unknown embedding model 'resnet-9000'. Available: clip-vit-b32-laion2b, clip-vit-b32-openai" in err


def test_map_without_embeddings_says_what_to_run(small_class_tree, fresh_name, capsys):
    assert main(["import", str(small_class_tree / "bag"), "--name", fresh_name, "--format", "images"]) == 0
    assert main(["map", "--dataset", fresh_name]) == 1
    assert f"run `curation embed --dataset {fresh_name}`" in capsys.readouterr().err


def test_console_script_is_installed_and_reports_database():
    script = os.path.join(os.path.dirname(sys.executable), "curation")
    result = subprocess.run([script, "doctor"], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("database: ok:")
