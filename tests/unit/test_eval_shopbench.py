"""ShopBench scoring end to end through `tools/evaluate.py shopbench --predictions` on a fixture
of every task type and metric with hand-worked scores, and the refusals of bad input."""
from __future__ import annotations

import json

import pytest

from elama.eval.cli import main
from tests.eval_fixtures import EXPECTED_TASKS, expected_tracks, use_english_model_as_multilingual, write_shopbench


@pytest.fixture
def fixture_files(tmp_path, monkeypatch):
    use_english_model_as_multilingual(monkeypatch)
    return write_shopbench(tmp_path)


def test_predictions_report_matches_hand_scores(fixture_files, tmp_path, capsys):
    tasks, preds = fixture_files
    out = tmp_path / "report.json"
    assert main(["shopbench", str(tasks), "--predictions", str(preds), "--report", str(out),
                 "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"tasks", "tracks", "overall"}
    assert set(report["tasks"]) == set(EXPECTED_TASKS)
    for name, (score, unparsed) in EXPECTED_TASKS.items():
        t = report["tasks"][name]
        assert set(t) >= {"metric", "task_type", "n", "score", "unparsed"}
        assert t["score"] == pytest.approx(score, abs=1e-5), name
        assert t["unparsed"] == unparsed, name
    assert report["tasks"]["t_mc"]["n"] == 3 and report["tasks"]["t_ner"]["metric"] == "micro f1"
    tracks = expected_tracks()
    for track, score in tracks.items():
        assert report["tracks"][track]["score"] == pytest.approx(score, abs=1e-5)
    assert report["overall"] == pytest.approx(sum(tracks.values()) / 3, abs=1e-5)
    table = capsys.readouterr().out
    assert "| t_ner | reasoning | named_entity_recognition | micro f1 | 2 | 0 | 0.6667 |" in table
    assert "**overall**" in table


def _rewrite(path, lineno: int, **changes):
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[lineno - 1])
    for k, v in changes.items():
        if v is None:
            row.pop(k)
        else:
            row[k] = v
    lines[lineno - 1] = json.dumps(row, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("lineno, changes, message", [
    (2, {"track": None}, "line 2: field 'track' is missing"),
    (4, {"metric": "f2"}, "line 4: field 'metric' is 'f2'"),
    (5, {"task_type": "multichoice"}, "line 5: field 'task_type' is 'multichoice'"),
    (1, {"output_field": "0"}, "line 1: field 'output_field' must be an integer"),
    (6, {"metric": "rougel"}, "cannot score task_type 'ranking'"),
])
def test_bad_rows_are_refused_with_file_line_field(fixture_files, tmp_path, capsys, lineno,
                                                   changes, message):
    tasks, preds = fixture_files
    _rewrite(tasks, lineno, **changes)
    out = tmp_path / "report.json"
    assert main(["shopbench", str(tasks), "--predictions", str(preds), "--report", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(tasks) in err and message in err
    assert "Traceback" not in err and not out.exists()


def test_predictions_row_count_and_fields(fixture_files, tmp_path, capsys):
    tasks, preds = fixture_files
    lines = preds.read_text().splitlines()
    preds.write_text("\n".join(lines[:-1]) + "\n")
    out = tmp_path / "report.json"
    assert main(["shopbench", str(tasks), "--predictions", str(preds), "--report", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{preds}: {len(lines) - 1} predictions for {len(lines)} rows" in err and not out.exists()
    preds.write_text("\n".join(lines[:-1] + ['{"text": "x"}']) + "\n")
    assert main(["shopbench", str(tasks), "--predictions", str(preds)]) == 2
    assert f"line {len(lines)}: field 'output' is missing" in capsys.readouterr().err


def test_not_a_model_directory(fixture_files, tmp_path, capsys):
    tasks, _ = fixture_files
    assert main(["shopbench", str(tasks), "--model", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a model directory" in capsys.readouterr().err


def test_missing_multilingual_model_is_a_clear_error(fixture_files, monkeypatch, capsys):
    from elama.eval import metrics

    tasks, preds = fixture_files
    monkeypatch.delenv(metrics.MULTILINGUAL_ENV)
    metrics.sentence_model.cache_clear()
    assert main(["shopbench", str(tasks), "--predictions", str(preds), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "paraphrase-multilingual-MiniLM-L12-v2" in err and "--multilingual-model" in err
