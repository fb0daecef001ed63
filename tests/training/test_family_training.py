"""Training examples on every registered family's kit (conftest ``family_kit``): the prompt is what decoding
gives the model, masked out of the labels; the target ends with the family's end-of-turn token; inputs aligned
with the tokens are extended with zeros; a padded batch gives each example its own logits.
What only one family has (its prompt's text, its audio features) stays in its own test file."""

from __future__ import annotations

import pytest

from iwslt_mc import modelio
from iwslt_mc.families import prompt_text
from iwslt_mc.training import data, training


pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared


def test_examples_mask_the_decoding_prompt_and_end_the_turn(family_kit):
    import torch

    _, fam, kit = family_kit
    proc = modelio.load_processor(kit / "model")
    tok = proc.tokenizer
    exs = data.load_examples(kit / "data", "test")[:3]
    items = [training.encode_example(proc, e.waveform(), e.text_de, "en-de") for e in exs]
    for ex, it in zip(exs, items):
        prompt = proc(text=prompt_text(proc, "en-de"), audio=ex.waveform(), sampling_rate=16000,
                      return_tensors="pt")["input_ids"][0].tolist()
        n = len(prompt)
        assert it["input_ids"][:n] == prompt and len(it["input_ids"]) > n
        assert it["labels"][:n] == [training.IGNORE_INDEX] * n and it["labels"][n:] == it["input_ids"][n:]
        assert tok.decode(it["labels"][n:]) == ex.text_de + fam.turn_end_token
        assert it["labels"][-1] == fam.turn_end_id(tok)
        for k in fam.token_aligned_inputs:
            assert len(it[k]) == len(it["input_ids"]) and it[k][n:] == [0] * (len(it["input_ids"]) - n)
    # a padded batch (audio of different lengths) gives each example its own logits
    assert len({len(it["input_ids"]) for it in items}) > 1
    model = modelio.load_model(kit / "model", device="cpu")
    batch = training.Collator(training.pad_token_id(proc))(items)
    with torch.no_grad():
        together = model(**batch).logits
        for b, x in enumerate(items):
            alone = model(**training.Collator(0)([x])).logits[0]
            assert torch.allclose(together[b, :len(x["input_ids"])], alone, atol=1e-4, rtol=0)
