"""Scorer: sacrebleu numbers equal the sacrebleu command line, resegmentation, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from iwslt_mc import cli
from iwslt_mc.scoring import scoring

# Case, punctuation, umlauts, a number, a quote, a hyphen: what 13a and chrF++ must treat alike.
DE_REF = [
    "Heute sprechen wir über die Kompression großer Sprachmodelle.",
    "Das Modell muss in weniger als 500 MB passen.",
    "Wir haben drei Schichten entfernt und den Rest quantisiert.",
    "„Funktioniert das?“, fragte sie.",
    "Ja – aber die Übersetzung wird etwas schlechter.",
]
DE_HYP = [
    "Heute sprechen wir über die Komprimierung großer Sprachmodelle.",
    "Das Modell muss in weniger als 500 MB passen.",
    "wir haben drei Schichten gelöscht und den Rest quantisiert .",
    "\"Funktioniert das?\", fragte sie.",
    "Ja, aber die Übersetzung wird ein wenig schlechter.",
]
ZH_REF = [
    "今天我们讨论大型语言模型的压缩。",
    "模型必须小于500MB。",
    "我们删除了三层，并对其余部分进行了量化。",
    "“这样可行吗？”她问道。",
]
ZH_HYP = [
    "今天我们谈论大语言模型的压缩。",
    "模型必须小于 500 MB。",
    "我们去掉了三层，其余部分做了量化。",
    "她问：“这可行吗？”",
]


def write(path, lines, *, eol="\n"):
    path.write_bytes("".join(line + eol for line in lines).encode("utf-8"))
    return path


def sacrebleu_cli(ref, hyp, *args) -> str:
    r = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-w", "10", *args],
                       capture_output=True, text=True, check=True)
    return r.stdout


@pytest.mark.parametrize("lang,ref,hyp,tok,word_order,chrf_name", [
    ("en-de", DE_REF, DE_HYP, "13a", "2", "chrF2++"),
    ("en-zh", ZH_REF, ZH_HYP, "zh", "0", "chrF2"),
])
def test_corpus_scores_equal_sacrebleu_command_line(tmp_path, lang, ref, hyp, tok, word_order, chrf_name):
    # CRLF, trailing blanks and a byte-order mark in the hypothesis: both readers must treat them alike.
    ref_f = write(tmp_path / "ref.txt", ref)
    hyp_f = write(tmp_path / "hyp.txt", ["\ufeff" + hyp[0]] + [h + "  " for h in hyp[1:]], eol="\r\n")
    result = scoring.score_files(hyp_f, ref_f, lang)
    assert not result["resegmentation"]["applied"]
    cli_out = json.loads(sacrebleu_cli(ref_f, hyp_f, "-m", "bleu", "chrf", "-tok", tok,
                                       "--chrf-word-order", word_order, "-f", "json"))
    bleu_cli, chrf_cli = cli_out
    bleu, chrf = result["metrics"]["bleu"], result["metrics"]["chrf"]
    assert float(f"{bleu['score']:.10f}") == bleu_cli["score"]
    assert float(f"{chrf['score']:.10f}") == chrf_cli["score"]
    tags = "|tags:stripped(sound-events)"  # no tag in these lines: same numbers, and the signature says it
    assert bleu["signature"] == bleu_cli["signature"] + tags and f"tok:{tok}" in bleu["signature"]
    assert chrf["signature"] == chrf_cli["signature"] + tags and f"nw:{word_order}" in chrf["signature"]
    assert result["tags"]["removed"] == {"hyp": 0, "ref": 0}
    assert chrf["name"] == chrf_name == chrf_cli["name"]
    assert 0 < bleu["score"] < 100 and 0 < chrf["score"] < 100


def test_segment_scores_equal_sacrebleu_sentence_level(tmp_path):
    ref_f, hyp_f = write(tmp_path / "ref.de", DE_REF), write(tmp_path / "hyp.de", DE_HYP)
    result = scoring.score_files(hyp_f, ref_f, "en-de")
    segs = result["segments"]
    assert [s["index"] for s in segs] == [1, 2, 3, 4, 5]
    assert [s["hyp"] for s in segs] == DE_HYP and [s["ref"] for s in segs] == DE_REF
    for metric, args in (("bleu", ["-m", "bleu", "-tok", "13a"]), ("chrf", ["-m", "chrf", "--chrf-word-order", "2"])):
        lines = sacrebleu_cli(ref_f, hyp_f, *args, "--sentence-level").strip().splitlines()
        parsed = [re.match(r"^[^|]+\|(\S+) = ([0-9.]+)", line) for line in lines]
        assert [float(f"{s[metric]:.10f}") for s in segs] == [float(m.group(2)) for m in parsed]
        assert result["segment_signatures"][metric] == parsed[0].group(1) + "|tags:stripped(sound-events)"
    assert segs[1]["bleu"] == pytest.approx(100.0)  # the identical line


def test_case_and_punctuation_count():
    refs = ["Das ist gut."]
    assert scoring.corpus_scores(["Das ist gut."], refs, "en-de")["bleu"]["score"] == pytest.approx(100)
    assert scoring.corpus_scores(["das ist gut."], refs, "en-de")["bleu"]["score"] < 100
    assert scoring.corpus_scores(["Das ist gut"], refs, "en-de")["bleu"]["score"] < 100


# --------------------------------------------------------------------------------- resegmentation

def test_resegment_german_restores_reference_segmentation():
    # The same words as the reference, broken at other places (mid-sentence), one line fewer.
    stream = " ".join(DE_REF).split()
    hyp = [" ".join(stream[:5]), " ".join(stream[5:17]), " ".join(stream[17:30]), " ".join(stream[30:])]
    assert len(hyp) != len(DE_REF)
    r = scoring.resegment(hyp, DE_REF, "en-de")
    assert r.lines == DE_REF
    assert r.as_wer == 0.0 and r.errors == 0 and r.ref_tokens == len(stream)
    assert r.tokenizer == "whitespace" and "mweralign:" in r.signature


def test_resegment_german_errors_case_and_as_wer():
    hyp = ["HEUTE sprechen wir über die Kompression großer Sprachmodelle. Das Modell muss",
           "in weniger als 500 MB passen. Wir haben drei Schichten entfernt",  # lost: "und den Rest quantisiert."
           "„Funktioniert das?“, fragte sie. Ja – aber die Übersetzung wird etwas besser."]
    r = scoring.resegment(hyp, DE_REF, "en-de")
    assert len(r.lines) == len(DE_REF)
    assert r.lines[0].startswith("HEUTE sprechen")  # the hypothesis keeps its casing
    assert r.lines[1] == "Das Modell muss in weniger als 500 MB passen."
    assert r.lines[2] == "Wir haben drei Schichten entfernt"
    assert r.lines[4] == "Ja – aber die Übersetzung wird etwas besser."
    # 4 deletions + 1 substitution ("HEUTE" matches case-insensitively) over 38 reference words.
    assert (r.errors, r.ref_tokens) == (5, 38)
    assert r.as_wer == pytest.approx(100 * 5 / 38)
    assert r.as_wer_aligner == pytest.approx(r.as_wer, abs=1e-3)  # the aligner's own number agrees


def test_resegment_chinese_character_mode():
    # Breaks fall inside words (not inside a Latin word: see test_..._keeps_latin_words_apart);
    # lines are glued without spaces before alignment.
    stream = "".join(ZH_REF)
    hyp = [stream[:9], stream[9:22], stream[22:]]
    assert stream[21:23] == "于5"
    r = scoring.resegment(hyp, ZH_REF, "en-zh")
    assert r.lines == ZH_REF
    assert r.as_wer == 0.0 and r.tokenizer == "cj"
    # With errors: still one line per reference line, characters as tokens for AS-WER.
    r = scoring.resegment(["今天我们讨论模型的压缩。模型必须小于500MB。我们删除了三层，", "并对其余部分进行了量化。“这样可行吗？”她问道。"],
                          ZH_REF, "en-zh")
    assert len(r.lines) == 4 and r.lines[2] == ZH_REF[2] and r.lines[3] == ZH_REF[3]
    assert r.errors == 4 and r.ref_tokens == sum(len(scoring._Tokenizer("cj").encode(x)) for x in ZH_REF)


def test_resegment_chinese_keeps_latin_words_apart():
    refs = ["我们用GPU。", "CPU很慢。"]
    r = scoring.resegment(["我们用GPU", "CPU很慢。"], refs, "en-zh")
    assert len(r.lines) == 2 and "GPUCPU" not in "".join(r.lines)


def test_resegment_with_local_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = write(tmp_path / "corpus.txt", DE_REF * 20)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=120,
                                   model_type="unigram", hard_vocab_limit=False, minloglevel=2)
    stream = " ".join(DE_REF).split()
    hyp = [" ".join(stream[:7]), " ".join(stream[7:])]
    r = scoring.resegment(hyp, DE_REF, "en-de", spm_model=str(tmp_path / "m.model"))
    assert r.lines == DE_REF and r.tokenizer == "spm:m.model" and r.as_wer == 0.0


def test_resegment_empty_hypothesis_gives_empty_lines():
    r = scoring.resegment([], DE_REF[:2], "en-de")
    assert r.lines == ["", ""] and r.as_wer == 100.0


def test_auto_always_never(tmp_path):
    ref_f = write(tmp_path / "ref.de", DE_REF)
    same = write(tmp_path / "same.de", DE_HYP)
    fewer = write(tmp_path / "fewer.de", [" ".join(DE_HYP[:2]), *DE_HYP[2:]])
    assert not scoring.score_files(same, ref_f, "en-de", resegment_mode="auto")["resegmentation"]["applied"]
    assert scoring.score_files(same, ref_f, "en-de", resegment_mode="always")["resegmentation"]["applied"]
    res = scoring.score_files(fewer, ref_f, "en-de", resegment_mode="auto")
    assert res["resegmentation"]["applied"] and res["lines"] == {"hyp": 4, "ref": 5}
    assert [s["hyp"] for s in res["segments"]][:2] == DE_HYP[:2]


# --------------------------------------------------------------------------------- CLI and bad input

def test_cli_json_is_clean_and_out_json_written(tmp_path, capfd):
    ref_f = write(tmp_path / "ref.zh", ZH_REF)
    hyp_f = write(tmp_path / "hyp.zh", ["".join(ZH_HYP[:2]), *ZH_HYP[2:]])
    out = tmp_path / "run" / "scores-en-zh.json"
    rc = cli.main(["score", "--hyp", str(hyp_f), "--ref", str(ref_f), "--lang", "en-zh", "--json",
                   "--out-json", str(out), "--testset", "acl6060-test"])
    captured = capfd.readouterr()
    assert rc == 0
    result = json.loads(captured.out)  # the aligner's native prints must not leak into stdout
    assert result == json.loads(out.read_text(encoding="utf-8"))
    assert result["testset"] == "acl6060-test" and result["lang"] == "en-zh"
    assert result["resegmentation"]["applied"] and len(result["segments"]) == 4
    assert result["metrics"]["bleu"]["signature"].count("tok:zh") == 1
    assert "AS-WER" not in captured.out


def test_cli_text_output_prints_signatures(tmp_path, capsys):
    ref_f, hyp_f = write(tmp_path / "ref.de", DE_REF), write(tmp_path / "hyp.de", DE_HYP)
    assert cli.main(["score", "--hyp", str(hyp_f), "--ref", str(ref_f), "--lang", "en-de"]) == 0
    out = capsys.readouterr().out
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    assert re.search(r"chrF2\+\+ = +\d+\.\d  nrefs:1\|case:mixed\|eff:yes\|nc:6\|nw:2", out)


def _error(capsys, argv):
    rc = cli.main(["score", *argv])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("iwslt-mc score: error: ")
    return err


def test_bad_input_one_line_errors(tmp_path, capsys, monkeypatch):
    ref_f, hyp_f = write(tmp_path / "ref.de", DE_REF), write(tmp_path / "hyp.de", DE_HYP[:3])
    base = ["--lang", "en-de"]
    err = _error(capsys, ["--hyp", str(tmp_path / "missing.de"), "--ref", str(ref_f), *base])
    assert "missing.de: hypothesis not found" in err
    err = _error(capsys, ["--hyp", str(hyp_f), "--ref", str(tmp_path / "nope.de"), *base])
    assert "nope.de: reference not found" in err
    empty = tmp_path / "empty.de"
    empty.write_text("\n\n", encoding="utf-8")
    assert "empty.de: reference is empty" in _error(capsys, ["--hyp", str(hyp_f), "--ref", str(empty), *base])
    bad = tmp_path / "bad.de"
    bad.write_bytes("erste Zeile\nzweite Zeile\ndritte \xff Zeile\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    assert "bad.de: line 3 is not valid UTF-8" in _error(capsys, ["--hyp", str(bad), "--ref", str(ref_f), *base])
    err = _error(capsys, ["--hyp", str(hyp_f), "--ref", str(ref_f), "--resegment", "never", *base])
    assert "hyp.de: 3 lines for 5 reference lines" in err
    src = write(tmp_path / "src.en", ["one", "two"])
    assert "src.en: 2 source lines for 5 reference lines" in _error(
        capsys, ["--hyp", str(hyp_f), "--ref", str(ref_f), "--src", str(src), *base])
    assert "--comet needs --src" in _error(
        capsys, ["--hyp", str(hyp_f), "--ref", str(ref_f), "--comet", str(tmp_path), *base])
    full_src = write(tmp_path / "full.en", ["s"] * 5)
    err = _error(capsys, ["--hyp", str(hyp_f), "--ref", str(ref_f), "--src", str(full_src),
                          "--comet", str(tmp_path / "no.ckpt"), *base])
    assert "no.ckpt: COMET checkpoint not found" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _error(capsys, ["--hyp", str(hyp_f), "--ref", str(ref_f), "--src", str(full_src),
                          "--comet", "Unbabel/wmt22-comet-da", *base])
    assert "HF_HUB_OFFLINE" in err
    assert "spm.model: SentencePiece model not found" in _error(
        capsys, ["--hyp", str(hyp_f), "--ref", str(ref_f), "--spm", str(tmp_path / "spm.model"), *base])


def test_read_lines_matches_sacrebleu_reader(tmp_path, capsys):
    p = tmp_path / "x.txt"
    p.write_bytes("\ufeffa  \r\n\n b\u2028c\nlast".encode("utf-8"))
    # Trailing blanks and CR stripped, an empty line kept, U+2028 is not a line break, and a BOM is
    # kept as sacrebleu keeps it, with a warning.
    assert scoring.read_lines(p) == ["\ufeffa", "", " b\u2028c", "last"]
    assert "x.txt: starts with a UTF-8 byte-order mark" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- tags


@pytest.mark.parametrize("line, expected", [
    ("(Applause) Danke schön.", "Danke schön."),
    ("Das war's. (Laughter)", "Das war's."),
    ("[Applaus] Gut (Gelächter) , oder?", "Gut, oder?"),
    ("谢谢（笑声）。", "谢谢。"),
    ("(笑声) 好的", "好的"),
    ("(Laughter and applause) Ja", "Ja"),
    ("[MUSIK]", ""),
    ("(siehe Abbildung 3) bleibt", "(siehe Abbildung 3) bleibt"),  # a parenthetical is text, not a tag
    ("Die Methode (das heißt, Pruning) bleibt", "Die Methode (das heißt, Pruning) bleibt"),
    ("keine Tags hier", "keine Tags hier"),
])
def test_tag_rule(line, expected):
    out, n = scoring.TagFilter().strip(line)
    assert out == expected
    assert (n > 0) == (expected != line)


def test_tags_are_stripped_from_both_sides_before_scoring(tmp_path):
    ref = write(tmp_path / "ref.de", ["(Applaus) " + DE_REF[0], DE_REF[1], DE_REF[2] + " (Lachen)"])
    hyp = write(tmp_path / "hyp.de", [DE_REF[0] + " (Applause)", "[Laughter] " + DE_REF[1], DE_REF[2]])
    hyp_before = hyp.read_bytes()
    stripped = scoring.score_files(hyp, ref, "en-de")
    assert stripped["metrics"]["bleu"]["score"] == pytest.approx(100.0)
    assert stripped["metrics"]["chrf"]["score"] == pytest.approx(100.0)
    assert stripped["tags"]["removed"] == {"hyp": 2, "ref": 2}
    assert stripped["metrics"]["bleu"]["signature"].endswith("|tags:stripped(sound-events)")
    assert [s["hyp"] for s in stripped["segments"]] == DE_REF[:3]
    kept = scoring.score_files(hyp, ref, "en-de", tags="keep")
    assert kept["metrics"]["bleu"]["score"] < 90
    assert kept["metrics"]["bleu"]["signature"].endswith("|tags:kept") and kept["tags"]["removed"] == {"hyp": 0, "ref": 0}
    # kept: exactly the sacrebleu command line
    cli_bleu = json.loads(sacrebleu_cli(ref, hyp, "-m", "bleu", "-tok", "13a", "-f", "json"))
    assert float(f"{kept['metrics']['bleu']['score']:.10f}") == cli_bleu["score"]
    # a pattern of one's own: only [..] removed
    own = scoring.score_files(hyp, ref, "en-de", tag_pattern=r"\[[^\]]*\]")
    assert own["tags"]["removed"] == {"hyp": 1, "ref": 0}
    assert "|tags:stripped(re:" in own["metrics"]["chrf"]["signature"]
    assert hyp.read_bytes() == hyp_before  # the file is never changed


def test_tags_chinese_and_resegmentation(tmp_path):
    ref = write(tmp_path / "ref.zh", [ZH_REF[0] + "（掌声）", ZH_REF[1]])
    hyp = write(tmp_path / "hyp.zh", ["（笑声）" + ZH_REF[0] + ZH_REF[1]])  # one line: resegmented after stripping
    r = scoring.score_files(hyp, ref, "en-zh")
    assert r["resegmentation"]["applied"] and r["tags"]["removed"] == {"hyp": 1, "ref": 1}
    assert [s["hyp"] for s in r["segments"]] == [ZH_REF[0], ZH_REF[1]]
    assert r["metrics"]["bleu"]["score"] == pytest.approx(100.0)


def test_tag_options_cli(tmp_path, capsys):
    ref = write(tmp_path / "ref.de", ["Hallo Welt, wie geht es dir heute? (Applaus)"])
    hyp = write(tmp_path / "hyp.de", ["Hallo Welt, wie geht es dir heute?"])
    assert cli.main(["score", "--hyp", str(hyp), "--ref", str(ref), "--lang", "en-de"]) == 0
    out = capsys.readouterr().out
    assert "tags removed before scoring: 0 in the hypothesis, 1 in the reference" in out
    assert re.search(r"^BLEU\s+=\s+100\.0000?\s", out, re.M) or re.search(r"^BLEU\s+=\s+100\.0\s", out, re.M)
    assert cli.main(["score", "--hyp", str(hyp), "--ref", str(ref), "--lang", "en-de", "--keep-tags", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["tags"]["mode"] == "keep" and j["metrics"]["bleu"]["score"] < 100
    rc = cli.main(["score", "--hyp", str(hyp), "--ref", str(ref), "--lang", "en-de", "--tag-pattern", "("])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--tag-pattern" in err[0]
    with pytest.raises(SystemExit):
        cli.main(["score", "--hyp", str(hyp), "--ref", str(ref), "--lang", "en-de", "--keep-tags", "--tag-pattern", "x"])


EN_SRC = [
    "Today we talk about the compression of large language models.",
    "The model has to fit in less than 500 MB.",
    "We removed three layers and quantized the rest of it.",
    "\"Does that work?\", she asked, and it was not clear to them.",
    "Yes, but the translation is a little worse for you and for us.",
]


def test_zero_line_hypothesis_and_a_reference_of_another_language_are_one_line_errors(tmp_path, capsys):
    ref_de, ref_zh = write(tmp_path / "ref.de", DE_REF), write(tmp_path / "ref.zh", ZH_REF)
    hyp_de = write(tmp_path / "hyp.de", DE_HYP)
    empty = tmp_path / "hyp0.de"
    empty.write_bytes(b"")
    err = _error(capsys, ["--hyp", str(empty), "--ref", str(ref_de), "--lang", "en-de"])
    assert err == (f"iwslt-mc score: error: {empty}: hypothesis is empty (0 lines) for 5 reference lines in {ref_de}: "
                   "did decoding fail? a hypothesis file has one line per segment")
    err = _error(capsys, ["--hyp", str(hyp_de), "--ref", str(ref_de), "--teacher-hyp", str(empty), "--lang", "en-de"])
    assert f"{empty}: teacher hypothesis is empty (0 lines)" in err
    # the other pair's reference, the English source as reference
    err = _error(capsys, ["--hyp", str(hyp_de), "--ref", str(ref_zh), "--lang", "en-de"])
    assert err == (f"iwslt-mc score: error: {ref_zh}: reference reads as Chinese text, not German (--lang en-de): "
                   "pass the German reference, or the right --lang")
    err = _error(capsys, ["--hyp", str(hyp_de), "--ref", str(ref_de), "--lang", "en-zh"])
    assert f"{ref_de}: reference reads as German text, not Chinese (--lang en-zh)" in err
    src = write(tmp_path / "src.en", EN_SRC)
    err = _error(capsys, ["--hyp", str(hyp_de), "--ref", str(src), "--lang", "en-de"])
    assert f"{src}: reference reads as English text, not German (--lang en-de)" in err
    # the right reference still scores; too little text to tell is never refused
    assert cli.main(["score", "--hyp", str(hyp_de), "--ref", str(ref_de), "--lang", "en-de"]) == 0
    assert scoring.text_language(["ok", "yes"]) is None
    assert scoring.text_language(ZH_REF) == "zh" and scoring.text_language(DE_REF) == "de"
