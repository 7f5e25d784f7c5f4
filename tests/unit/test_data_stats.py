"""Token accounting from manifests: per corpus and language, and epochs under a blend budget."""
from __future__ import annotations

import json

import pytest

from elama.data.stats import blend_rows, parse_blend, parse_token_count
from elama.data.tokenize import tokenize_files
from tests.unit.preprocess_corpus import write_jsonl
from tools import data_stats


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    ecom = write_jsonl(str(root / "ecom.jsonl"), [
        {"text": f"Rote Laufschuhe Größe {i}", "lang": "de"} for i in range(30)] + [
        {"text": f"red running shoes size {i}", "lang": "en"} for i in range(10)])
    general = write_jsonl(str(root / "general.jsonl"), [{"text": f"general text {i}"}
                                                        for i in range(20)])
    prefixes = (str(root / "ecom"), str(root / "general"))
    manifests = (tokenize_files([ecom], prefixes[0], language_key="lang", merge=True,
                                progress=False),
                 tokenize_files([general], prefixes[1], language="en", progress=False))
    return prefixes, manifests


@pytest.mark.parametrize("text,value", [("1T", 10**12), ("250B", 250 * 10**9), ("3.5M", 3_500_000),
                                        ("1e9", 10**9), ("1000", 1000), ("2k", 2000)])
def test_parse_token_count(text, value):
    assert parse_token_count(text) == value


def test_parse_errors():
    with pytest.raises(ValueError, match="K/M/B/T"):
        parse_token_count("lots")
    with pytest.raises(ValueError, match="pairs"):
        parse_blend(["0.5", "a", "0.5"])
    with pytest.raises(ValueError, match="not a number"):
        parse_blend(["a", "0.5"])


def test_blend_epochs_follow_the_manifests(two_corpora):
    (ecom, general), (m_ecom, m_general) = two_corpora
    rows = blend_rows(parse_blend(["3", ecom, "1", general]), 10**6)
    assert [r["weight"] for r in rows] == [0.75, 0.25]
    assert rows[0]["epochs"] == pytest.approx(750_000 / m_ecom["tokens_written"])
    assert rows[1]["epochs"] == pytest.approx(250_000 / m_general["tokens_written"])


def test_mixed_tokenizers_are_refused(two_corpora, tmp_path):
    (ecom, _), (m_ecom, _) = two_corpora
    other = str(tmp_path / "other")  # the same data, claiming another tokenizer.model
    for suffix in (".bin", ".idx"):
        (tmp_path / f"other{suffix}").symlink_to(ecom + suffix)
    with open(other + ".manifest.json", "w") as f:
        json.dump({**m_ecom, "tokenizer": {**m_ecom["tokenizer"], "sha256": "0" * 64}}, f)
    with pytest.raises(ValueError, match="mixes tokenizers"):
        blend_rows([(1.0, ecom), (1.0, other)], 1000)


def test_cli_prints_corpora_languages_and_epochs(two_corpora, capsys):
    (ecom, general), (m_ecom, _) = two_corpora
    assert data_stats.main([ecom, general, "--blend", "0.5", ecom, "0.5", general,
                            "--token-budget", "1M"]) == 0
    out = capsys.readouterr().out
    assert f"{m_ecom['tokens_written']:,}" in out and "de " in out and "epochs" in out
    assert data_stats.main(["--json", "--blend", "1", ecom, "--token-budget", "1k"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["blend"][0]["epochs"] == pytest.approx(1000 / m_ecom["tokens_written"])
    assert data_stats.main([str(ecom) + "-missing"]) == 2
    assert "no such manifest" in capsys.readouterr().err


def test_rescaled_weights_are_announced(two_corpora, capsys):
    (ecom, general), _ = two_corpora
    assert data_stats.main(["--blend", "0.7", ecom, "0.7", general, "--token-budget", "1M"]) == 0
    captured = capsys.readouterr()
    assert "note: blend weights 0.7, 0.7 sum to 1.4, not 1: normalised to 0.5, 0.5" in captured.err
    assert data_stats.main(["--json", "--blend", "0.7", ecom, "0.7", general]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["blend"]
    assert [(r["weight_given"], r["weight"]) for r in rows] == [(0.7, 0.5), (0.7, 0.5)]
    assert "normalised to 0.5, 0.5" in captured.err
    assert data_stats.main(["--blend", "0.25", ecom, "0.75", general]) == 0
    assert "note" not in capsys.readouterr().err


def test_bar_chart_of_tokens_per_source_and_language(two_corpora, tmp_path, capsys):
    (ecom, general), (m_ecom, _) = two_corpora
    png = tmp_path / "tokens.png"
    assert data_stats.main(["--blend", "0.5", ecom, "0.5", general, "--token-budget", "1M",
                            "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in capsys.readouterr().err
    from elama.data.stats import language_tokens

    rows = blend_rows(parse_blend(["0.5", ecom, "0.5", general]), 10**6)
    drawn = language_tokens(rows, budget=True)[ecom]
    assert set(drawn) == {"de", "en"} and sum(drawn.values()) == pytest.approx(500_000)
    assert drawn["de"] / drawn["en"] == pytest.approx(
        m_ecom["tokens_by_language"]["de"] / m_ecom["tokens_by_language"]["en"])
    assert data_stats.main([ecom, "--plot", str(tmp_path / "missing" / "x.png")]) == 2
    assert "--plot" in capsys.readouterr().err
