"""The floor's option text (iwslt_mc/floor/options.py): ``--set`` read and written, option type checks."""

from __future__ import annotations

import typing

import pytest

from iwslt_mc.errors import UserError
from iwslt_mc.floor.options import choice, coerce, parse_set, set_value_text


def test_what_plan_writes_for_set_is_read_back_as_the_same_values():
    values = {"remove": 8, "llm_layers": [3, 5], "skip": ["lm_head", "audio_tower"], "merge": True, "lr": 0.0002}
    pairs = [f"{k}={set_value_text(v)}" for k, v in values.items()]
    assert pairs == ["remove=8", "llm_layers=[3,5]", "skip=[lm_head,audio_tower]", "merge=true", "lr=0.0002"]
    assert parse_set(pairs) == values
    assert parse_set(["name=", "text=a: b: c"]) == {"name": "", "text": "a: b: c"}  # not YAML: kept as text
    with pytest.raises(UserError, match=r"^--set 'r64': expected key=value$"):
        parse_set(["r64"])


def test_coerce_reads_yaml_and_set_text_into_the_declared_type():
    assert coerce("1_000", int, "o") == 1000 and coerce(3.0, int, "o") == 3
    assert coerce("lm_head, audio_tower", list[str], "o") == ["lm_head", "audio_tower"]
    assert coerce("[3, 5]", list[int], "o") == [3, 5]
    assert coerce("none", typing.Optional[int], "o") is None and coerce("off", bool, "o") is False
    assert coerce("{a: 1}", dict[str, int], "o") == {"a": 1}
    with pytest.raises(UserError, match=r"^option 'r': expected an integer, got True$"):
        coerce(True, int, "option 'r'")
    with pytest.raises(UserError, match=r"^option 'skip': '\[lm_head' is not valid YAML .*; write a list, e\.g\. "):
        coerce("[lm_head", list[str], "option 'skip'")
    with pytest.raises(UserError, match=r"^option 'm' must be one of nf4, int8, not 'fp4'$"):
        coerce("fp4", typing.Literal["nf4", "int8"], "option 'm'")
    assert choice("nf4", ("nf4",), "m") == "nf4"
