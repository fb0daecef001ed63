"""tools/toy_teacher_data.py: generated sentences (dev/test removed), spoken, translated by the toy teacher; resumable."""

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
TEACHER = ROOT / "tests" / "fixtures" / "toy" / "teacher"
TOY_DATA = ROOT / "tests" / "fixtures" / "toy" / "data"

pytestmark = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng not installed (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(TOOLS))
    try:
        import toy_teacher_data

        yield toy_teacher_data
    finally:
        sys.path.remove(str(TOOLS))


def test_excluded_sentences_are_never_drawn(tool):
    import toy_grammar

    # the fixture's test slice was drawn from the same grammar with seed 0: draw with seed 0 and exclude it
    excl = tool.excluded_sentences([str(TOY_DATA)], ("test",))
    assert len(excl) == 24
    # (the corpus's test split follows its 8,000 train and 300 dev sentences in the draw)
    rows = tool.plan_sentences(9000, seed=0, level="tiny", exclude=excl, voices=4)
    assert len(rows) == 9000
    assert not {r["text_en"].lower() for r in rows} & excl
    # without the exclusion the same draw contains them all (the test is not vacuous)
    drawn = {t.en.lower() for t in toy_grammar.generate(9000 + 24, seed=0, level="tiny")}
    assert drawn >= excl


def test_kill_and_rerun_continues(tool, tmp_path, monkeypatch):
    import make_toy_corpus

    from iwslt_mc import modelio
    from iwslt_mc.decoding import core as decoding
    from iwslt_mc.training import data

    calls = []
    real_render = make_toy_corpus._render

    def render(job):
        calls.append(job["index"])
        if len(calls) == 3:  # killed while rendering the second chunk
            raise KeyboardInterrupt
        return real_render(job)

    out = tmp_path / "td"
    argv = ["--out", str(out), "--sentences", "4", "--chunk", "2", "--jobs", "1", "--exclude", str(TOY_DATA),
            "--exclude-splits", "test", "--max-seconds", "30", "--text", "10"]
    monkeypatch.setattr(make_toy_corpus, "_render", render)
    with pytest.raises(KeyboardInterrupt):
        tool.main(argv)
    done = [json.loads(x)["chunk"] for x in (out / "work" / "audio" / "done.jsonl").read_text().splitlines()]
    assert done == [0] and not (out / "speech").exists()
    calls.clear()
    assert tool.main(argv) == 0
    assert len(calls) == 2  # only the second chunk was rendered again

    speech = data.load_examples(str(out / "speech"), "train")
    kd = data.load_examples(str(out / "teacher"), "train")
    assert len(speech) == 4 and len(kd) <= 4 and len(kd) >= 1
    assert all(e.text_de and e.text_en for e in speech)
    excl = tool.excluded_sentences([str(TOY_DATA)], ("test",))
    assert not {e.text_en.lower() for e in speech} & excl
    lines = (out / "text.txt").read_text().splitlines()
    assert len(lines) == 20 and lines[0] == speech[0].text_en and lines[1] == speech[0].text_de
    # the teacher pairs are the teacher's own greedy translations of the same audio
    import torch

    model = modelio.load_model(TEACHER, dtype=torch.float32, device="cpu")
    hyps = decoding.translate(model, modelio.load_processor(TEACHER), [e.waveform() for e in speech], "en-de",
                              mode="fast", batch_size=4, max_new_tokens=64)
    by_source = {e.meta["source_id"]: e.text_de for e in kd}
    assert by_source == {s.id: h.text for s, h in zip(speech, hyps) if h.text.strip()}
    assert all(e.meta["origin"] == "teacher" for e in kd)
    rec = json.loads((out / "data.json").read_text())
    assert rec["speech"]["utterances"] == 4 and rec["teacher"]["teacher_pairs"] == len(kd)
    # a rerun with other options refuses instead of mixing two data sets
    assert tool.main(argv[:3] + ["5"] + argv[4:]) == 2
