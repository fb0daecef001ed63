"""Packager and checker on real files: tiny safetensors model dirs, hypothesis files, provenance."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from iwslt_mc import cli
from iwslt_mc.submission import provenance
from iwslt_mc.submission import check as sub_check, description as sub_desc, files as sub_files
from iwslt_mc.submission import names as sub_names, package as sub_package
from iwslt_mc.errors import InputFileError, UserError
from iwslt_mc.fsutil import sha256_file

LAYER_KEY = "language_model.model.layers.0.mlp.up_proj.weight"


# ---------------------------------------------------------------------------------------------- helpers


def make_model(path: Path, *, techniques=("layer pruning 32->24",), data=("acl6060",), rows=16) -> Path:
    """A tiny model dir: real safetensors (float32) and a provenance.json written via provenance.append."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({LAYER_KEY: np.arange(rows * 4, dtype=np.float32).reshape(rows, 4),
               "audio_tower.layers.0.fc1.weight": np.ones((4, 4), dtype=np.float32)},
              str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    if techniques is not None or data is not None:
        provenance.append(None, path, provenance.make_record("prune", {}, techniques=list(techniques or []),
                                                             data=list(data or [])))
    return path


def write_exact_safetensors(path: Path, total: int) -> None:
    """A valid one-tensor (U8) safetensors file of exactly ``total`` bytes, written sparse (instant)."""
    d = total
    while True:
        header = json.dumps({LAYER_KEY: {"dtype": "U8", "shape": [d], "data_offsets": [0, d]}}).encode()
        n = -(-len(header) // 8) * 8
        new_d = total - 8 - n
        if new_d == d:
            break
        d = new_d
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + header.ljust(n, b" "))
        f.truncate(total)


def make_sized_model(path: Path, total: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_exact_safetensors(path / "model.safetensors", total)
    (path / "config.json").write_text("{}")
    provenance.append(None, path, provenance.make_record("quantize", {}, techniques=["int8"], data=[]))
    return path


def hyp(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


HYP_DE = "Guten Morgen.\n\nWir übersetzen Sprache.\nEnde — 完\n".encode()  # 4 lines, one empty


def pkg(model, tmp_path, **kw):
    """2025 packaging of hypotheses without a decode log (tests of the 2025 rules and the file format)."""
    args = dict(team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                hyps={"tst": hyp(tmp_path / "h.de", HYP_DE)}, out=tmp_path / "subs", edition="2025",
                allow_unlogged=True)
    args.update(kw)
    return sub_package.package(model, **args)


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "model")


# ---------------------------------------------------------------------------------------------- normalization


@pytest.mark.parametrize("raw, expected, lines", [
    (b"a\nb\n", b"a\nb\n", 2),
    (b"a\r\nb\r\n", b"a\nb\n", 2),  # CRLF
    (b"a\rb\r", b"a\nb\n", 2),  # old Mac CR
    (b"a\r\n\r\nb", b"a\n\nb\n", 3),  # empty line kept, final newline added
    (b"\xef\xbb\xbfa\nb", b"a\nb\n", 2),  # BOM removed
    (b"\n\n\n", b"\n\n\n", 3),  # three empty hypotheses
    (b"", b"", 0),
    (b"\xef\xbb\xbf", b"", 0),
    ("x\u2028y\n".encode(), b"x y\n", 1),  # a line separator must not split a segment
])
def test_normalize_keeps_line_count(raw, expected, lines):
    data, _ = sub_files.normalize_hypothesis_bytes(raw, "h.txt")
    assert data == expected
    assert sub_files.count_lines(data) == lines


def test_invalid_utf8_names_line_of_first_bad_byte(tmp_path):
    f = hyp(tmp_path / "bad.de", b"gut\r\nauch gut\r\nschlecht \xff hier\nund \xfe\n")
    with pytest.raises(InputFileError) as e:
        sub_files.read_hypothesis(f, "tst")
    assert e.value.path == str(f)
    assert "line 3" in str(e.value) and "UTF-8" in str(e.value)
    # lone CR line ends count as line ends too
    with pytest.raises(InputFileError, match="line 4"):
        sub_files.read_hypothesis(hyp(tmp_path / "cr.de", b"a\rb\r\rc\x80\r"), "tst")
    # latin-1 encoded umlaut on line 1
    g = hyp(tmp_path / "latin1.de", "Grüße\n".encode("latin-1"))
    with pytest.raises(InputFileError, match="line 1"):
        sub_files.read_hypothesis(g, "tst")


def test_invalid_utf8_cli_one_line_error_nothing_written(model, tmp_path, capsys):
    f = hyp(tmp_path / "bad.de", b"a\nb\nc\xc3\n")
    rc = cli.main(["package", str(model), "--team", "KIT", "--lang", "en-de", "--condition", "constrained",
                   "--type", "primary", "--hyp", f"tst={f}", "--out", str(tmp_path / "subs"), "--edition", "2025",
                   "--allow-unlogged"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and str(f) in err[0] and "line 3" in err[0]
    assert not (tmp_path / "subs").exists()


# ---------------------------------------------------------------------------------------------- package


def test_package_writes_normalized_files_description_manifest(model, tmp_path):
    crlf = hyp(tmp_path / "crlf.de", b"\xef\xbb\xbfeins\r\n\r\ndrei")
    res = pkg(model, tmp_path, hyps={"tst": hyp(tmp_path / "h.de", HYP_DE), "dev": crlf})
    name = "KIT_IWSLT25_ModelCompression_en-de_Bin5_constrained_primary"
    assert res.name == name and res.dir == tmp_path / "subs" / name
    assert sorted(p.name for p in res.dir.iterdir()) == sorted(
        [f"{name}.tst.txt", f"{name}.dev.txt", "description.txt", "manifest.json"])
    assert (res.dir / f"{name}.tst.txt").read_bytes() == HYP_DE
    assert (res.dir / f"{name}.dev.txt").read_bytes() == b"eins\n\ndrei\n"

    st = model / "model.safetensors"
    m = json.loads((res.dir / "manifest.json").read_text())
    assert m["bytes"] == st.stat().st_size
    assert m["params"] == 16 * 4 + 4 * 4
    assert (m["edition"], m["bin"], m["lp"], m["condition"], m["type"]) == ("2025", "Bin5", "en-de", "constrained", "primary")
    assert m["model_dir"] == str(model.resolve())
    assert m["tool"] == "iwslt-mc" and m["tool_version"] and m["created"].endswith("Z")
    for fname in (f"{name}.tst.txt", f"{name}.dev.txt", "description.txt"):
        f = res.dir / fname
        assert m["files"][fname] == {"sha256": sha256_file(f), "bytes": f.stat().st_size,
                                     "lines": f.read_bytes().count(b"\n")}
    assert m["test_sets"]["tst"]["lines"] == 4 and m["test_sets"]["dev"]["lines"] == 3
    assert any("CRLF" in c for c in m["test_sets"]["dev"]["normalized"])

    desc = sub_desc.parse_description((res.dir / "description.txt").read_text())
    assert desc["Model name"] == name
    assert desc["Storage size"] == (f"{m['bytes']:,} bytes = " + f"0.{m['bytes']:09d}".rstrip("0")
                                    + " GB (safetensors files)")
    assert desc["Number of parameters"].startswith("80 ")
    assert desc["Compression techniques"] == "layer pruning 32->24"
    assert desc["Datasets used"] == "ACL 60/60"  # named, not as the provenance spelled it
    assert desc["Size bin"] == "Bin5"
    assert not list((tmp_path / "subs").glob(".*"))  # no temporary folder left behind


@pytest.mark.parametrize("total, edition, expected", [
    (200_000_000, "2025", "KIT_IWSLT25_ModelCompression_en-de_Bin4_constrained_primary"),
    (199_999_999, "2025", "KIT_IWSLT25_ModelCompression_en-de_Bin5_constrained_primary"),
    (1_000_000_000, "2025", "KIT_IWSLT25_ModelCompression_en-de_Bin2_constrained_primary"),
    (3_999_999_999, "2025", "KIT_IWSLT25_ModelCompression_en-de_Bin1_constrained_primary"),
    (4_000_000_000, "2026", "KIT_IWSLT26_ModelCompression_en-de_constrained_primary"),
])
def test_boundary_sizes_name_the_right_bin(tmp_path, total, edition, expected, monkeypatch):
    m = make_sized_model(tmp_path / "m", total)
    with safe_open(str(m / "model.safetensors"), framework="numpy") as f:  # a real safetensors file
        assert list(f.keys()) == [LAYER_KEY]
    # 2026 also states the torch.save measure; this sparse placeholder cannot be loaded (measured on the kit below)
    monkeypatch.setattr(sub_desc, "torch_save_bytes", lambda d, report=None: (total + 123, "stub"))
    kw = {"hyps": {"acl": hyp(tmp_path / "h.de", HYP_DE)}, "partial": True} if edition == "2026" else {}
    res = pkg(m, tmp_path, edition=edition, **kw)
    assert res.name == expected
    desc = sub_desc.parse_description(res.description)
    if total == 200_000_000:
        assert desc["Storage size"] == "200,000,000 bytes = 0.2 GB (safetensors files)"
    if edition == "2026":  # no bins: torch.save after loading first (the ranking's measure), safetensors beside it
        assert res.manifest["bytes"] == total + 123
        assert res.manifest["sizes"] == {"torch_save_bytes": total + 123, "safetensors_bytes": total}
        assert desc["Storage size"].startswith(f"{total + 123:,} bytes = ")
        assert desc["Other size measures"].startswith(f"{total:,} bytes = ")
    else:
        assert res.manifest["bytes"] == total
        assert desc["Storage size"].startswith(f"{total:,} bytes = ")
    assert sub_check.check([res.dir]).ok


def test_model_of_4gb_cannot_be_packaged_for_2025(tmp_path):
    m = make_sized_model(tmp_path / "m", 4_000_000_000)
    with pytest.raises(UserError, match="fits no size bin of edition 2025"):
        pkg(m, tmp_path)
    assert not (tmp_path / "subs").exists()


@pytest.mark.parametrize("team", ["../x", "a_b", "a/b", "", "KIT ", "..", "Tëam", "-KIT", "x" * 300])
def test_bad_team_names_refused_and_nothing_escapes(model, tmp_path, team):
    with pytest.raises(UserError, match="letters, digits|at most 32") as e:
        pkg(model, tmp_path, team=team)
    assert "\n" not in str(e.value) and len(str(e.value)) < 250  # one line, not the whole 300 characters
    assert not (tmp_path / "subs").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("field, value, edition", [
    ("lp", "en-fr", "2025"), ("lp", "en-ar", "2027"), ("condition", "open", "2025"), ("submission_type", "main", "2025"),
])
def test_lists_of_the_edition(model, tmp_path, field, value, edition):
    with pytest.raises(UserError, match=f"not in edition {edition}"):
        pkg(model, tmp_path, edition=edition, **{field: value})


def test_en_ar_allowed_in_2025(model, tmp_path):
    assert pkg(model, tmp_path, lp="en-ar").name == "KIT_IWSLT25_ModelCompression_en-ar_Bin5_constrained_primary"


def test_unconstrained_needs_datasets(tmp_path):
    m = make_model(tmp_path / "m", data=())
    with pytest.raises(UserError, match="datasets are mandatory for an unconstrained"):
        pkg(m, tmp_path, condition="unconstrained")
    assert not (tmp_path / "subs").exists()
    res = pkg(m, tmp_path, condition="unconstrained", datasets="CoVoST 2 en-de; ACL 60/60 dev")
    assert sub_desc.parse_description(res.description)["Datasets used"] == "CoVoST 2 en-de; ACL 60/60 dev"
    assert res.manifest["datasets_from"] == "--datasets"
    # constrained without datasets is fine (e.g. post-training quantization without calibration data)
    assert pkg(m, tmp_path, condition="constrained").manifest["datasets"] == []


def test_provenance_wins_and_typed_facts_only_where_missing(tmp_path):
    m = make_model(tmp_path / "m", techniques=("nf4 quantization",), data=("covost2",))
    with pytest.raises(UserError, match="already records the techniques"):
        pkg(m, tmp_path, techniques="something else")
    with pytest.raises(UserError, match="already records the datasets"):
        pkg(m, tmp_path, condition="unconstrained", datasets="other")
    res = pkg(m, tmp_path, condition="unconstrained")
    assert res.manifest["techniques"] == ["nf4 quantization"] and res.manifest["datasets"] == ["CoVoST 2"]
    # a constrained package listing non-ACL data is flagged
    res2 = pkg(m, tmp_path, condition="constrained", submission_type="contrastive")
    assert any("constrained condition allows only" in w for w in res2.warnings)


def test_techniques_mandatory(tmp_path):
    m = make_model(tmp_path / "m", techniques=None, data=None)
    assert not (m / "provenance.json").exists()
    with pytest.raises(UserError, match="techniques are mandatory"):
        pkg(m, tmp_path)
    res = pkg(m, tmp_path, techniques="layer pruning; int8 quantization")
    assert res.manifest["techniques"] == ["layer pruning", "int8 quantization"]
    assert "Compression techniques: layer pruning; int8 quantization\n" in res.description


# ---------------------------------------------------------------------------------------------- line counts


def test_segments_option_must_match_line_count(model, tmp_path):
    with pytest.raises(InputFileError, match="4 lines, but test set 'tst' has 5 segments"):
        pkg(model, tmp_path, segments={"tst": 5})
    assert pkg(model, tmp_path, segments={"tst": 4}).manifest["test_sets"]["tst"]["expected_segments"] == 4


@pytest.mark.parametrize("log_name", ["h.de.jsonl", "h.jsonl"])
def test_decoder_log_next_to_hypothesis_is_used(model, tmp_path, log_name):
    log = tmp_path / log_name
    log.write_text("".join(json.dumps({"id": i, "text": "x"}) + "\n" for i in range(5)))
    with pytest.raises(InputFileError, match=f"4 lines, but test set 'tst' has 5 segments \\(from {log}\\)"):
        pkg(model, tmp_path)
    # a resumed log may repeat a segment: distinct ids count
    log.write_text("".join(json.dumps({"id": i}) + "\n" for i in [0, 1, 2, 2, 3]))
    res = pkg(model, tmp_path)
    assert res.manifest["test_sets"]["tst"]["segments_from"] == str(log)


def test_explicit_log_and_bad_log(model, tmp_path):
    log = tmp_path / "decode.log"
    log.write_text('{"segment_id": "a"}\n{"segment_id": "b"}\n{"segment_id": "c"}\n')
    with pytest.raises(InputFileError, match="has 3 segments"):
        pkg(model, tmp_path, logs={"tst": log})
    log.write_text('{"segment_id": "a"}\nnot json\n')
    with pytest.raises(InputFileError, match="line 2"):
        pkg(model, tmp_path, logs={"tst": log})
    with pytest.raises(UserError, match="either --segments or --log"):
        pkg(model, tmp_path, logs={"tst": log}, segments={"tst": 4})
    with pytest.raises(UserError, match="no --hyp"):
        pkg(model, tmp_path, segments={"other": 4})


def test_unknown_segment_count_is_a_warning(model, tmp_path):
    res = pkg(model, tmp_path)
    assert any("not verified" in w for w in res.warnings)
    assert res.manifest["test_sets"]["tst"]["expected_segments"] is None


def test_bad_hyp_options(model, tmp_path, capsys):
    with pytest.raises(UserError, match="TESTSET=FILE"):
        sub_names.parse_assignments(["just-a-file.txt"], "--hyp")
    with pytest.raises(UserError, match="given twice"):
        sub_names.parse_assignments(["a=x", "a=y"], "--hyp")
    with pytest.raises(UserError, match="test set name"):
        sub_names.parse_assignments(["../a=x"], "--hyp")
    with pytest.raises(InputFileError, match="does not exist"):
        pkg(model, tmp_path, hyps={"tst": tmp_path / "missing.txt"})


# ---------------------------------------------------------------------------------------------- existing / primaries


def test_existing_submission_needs_force(model, tmp_path):
    first = pkg(model, tmp_path)
    with pytest.raises(UserError, match="already exists"):
        pkg(model, tmp_path, hyps={"tst": hyp(tmp_path / "h2.de", b"neu\n")})
    assert (first.dir / f"{first.name}.tst.txt").read_bytes() == HYP_DE
    again = pkg(model, tmp_path, hyps={"tst": hyp(tmp_path / "h2.de", b"neu\n")}, force=True)
    assert again.dir == first.dir
    assert (again.dir / f"{again.name}.tst.txt").read_bytes() == b"neu\n"
    assert sub_check.check([again.dir]).ok
    assert [p.name for p in (tmp_path / "subs").iterdir()] == [first.name]


def test_second_primary_refused(tmp_path):
    small = make_model(tmp_path / "small")
    big = make_sized_model(tmp_path / "big", 300_000_000)
    first = pkg(small, tmp_path)
    with pytest.raises(UserError, match=f"{first.dir}: already a primary submission for KIT en-de constrained"):
        pkg(big, tmp_path)
    # a contrastive, another condition, another language pair or another edition is fine
    assert pkg(big, tmp_path, submission_type="contrastive").name.endswith("Bin4_constrained_contrastive")
    assert pkg(big, tmp_path, condition="unconstrained", datasets="x").name.endswith("Bin4_unconstrained_primary")
    assert pkg(big, tmp_path, lp="en-zh").name.endswith("en-zh_Bin4_constrained_primary")


def test_out_must_be_a_directory(model, tmp_path):
    (tmp_path / "subs").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        pkg(model, tmp_path)


def test_failed_write_leaves_nothing(model, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(sub_package, "atomic_write_json", boom)
    with pytest.raises(OSError):
        pkg(model, tmp_path)
    assert list((tmp_path / "subs").iterdir()) == []


# ---------------------------------------------------------------------------------------------- check


def test_check_passes_fresh_and_fails_after_any_one_byte_changes(model, tmp_path):
    res = pkg(model, tmp_path)
    assert sub_check.check([res.dir]).ok
    f = res.dir / f"{res.name}.tst.txt"
    orig = f.read_bytes()
    for i in range(len(orig)):
        for new in {orig[i] ^ 0x01, ord("\n") if orig[i] != ord("\n") else ord("x")}:
            f.write_bytes(orig[:i] + bytes([new]) + orig[i + 1:])
            r = sub_check.check([res.dir], use_recorded_model=False)
            assert not r.ok, (i, new)
            assert any("sha256 differs" in p for p in r.all_problems())
    f.write_bytes(orig)
    assert sub_check.check([res.dir]).ok


def test_check_cli_exit_codes_and_json(model, tmp_path, capsys):
    res = pkg(model, tmp_path)
    assert cli.main(["check", str(res.dir)]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "re-measured" in out
    (res.dir / "notes.txt").write_text("x\n")
    f = res.dir / f"{res.name}.tst.txt"
    f.write_bytes(f.read_bytes().replace(b"\n", b"\r\n"))
    assert cli.main(["check", str(res.dir), "--json"]) == 1
    j = json.loads(capsys.readouterr().out)
    probs = j["submissions"][0]["problems"]
    assert j["ok"] is False
    assert any("notes.txt: not listed in the manifest" in p for p in probs)
    assert any("CR line ends at line 1" in p for p in probs)
    assert any("sha256 differs" in p for p in probs)


def test_check_line_count_against_test_set_even_with_rewritten_manifest(model, tmp_path):
    res = pkg(model, tmp_path, segments={"tst": 4})
    f = res.dir / f"{res.name}.tst.txt"
    f.write_bytes(b"nur eine Zeile\n")
    man = json.loads((res.dir / "manifest.json").read_text())
    man["files"][f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size, "lines": 1}
    (res.dir / "manifest.json").write_text(json.dumps(man))
    probs = sub_check.check([res.dir]).all_problems()
    assert probs == [f"{f}: 1 lines but test set 'tst' has 4 segments (from --segments)"]


def test_check_description_fields(tmp_path):
    m = make_model(tmp_path / "m", data=("covost2",))
    res = pkg(m, tmp_path, condition="unconstrained")
    d = res.dir / "description.txt"
    d.write_text(d.read_text().replace("Datasets used: CoVoST 2\n", "").replace("Number of parameters: 80", "Number of parameters: 81"))
    probs = sub_check.check([res.dir]).all_problems()
    assert any("mandatory field 'Datasets used'" in p for p in probs)
    assert any("'Number of parameters' says" in p for p in probs)
    assert any(p.startswith(f"{d}: sha256 differs") for p in probs)


def test_check_against_a_changed_model(tmp_path):
    m = make_sized_model(tmp_path / "m", 199_999_999)
    res = pkg(m, tmp_path)
    assert res.name.endswith("_Bin5_constrained_primary")
    write_exact_safetensors(m / "model.safetensors", 200_000_000)  # now Bin4: the name is wrong
    probs = sub_check.check([res.dir]).all_problems()  # recorded model dir re-measured
    assert any("model is in Bin4 now" in p for p in probs)
    assert any("Bin4_constrained_primary" in p for p in probs)
    other = make_model(tmp_path / "other")
    assert sub_check.check([res.dir], model_dir=other).all_problems()
    assert sub_check.check([res.dir], use_recorded_model=False).ok
    # the recorded model is gone: a note, not a problem
    (m / "model.safetensors").unlink()
    m.joinpath("config.json").unlink()
    m.joinpath("provenance.json").unlink()
    m.rmdir()
    r = sub_check.check([res.dir])
    assert r.ok and any("no longer exists" in n for n in r.submissions[0].notes)


def test_check_renamed_folder_and_tampered_name(model, tmp_path):
    res = pkg(model, tmp_path)
    renamed = res.dir.with_name(res.name.replace("Bin5", "Bin3"))
    res.dir.rename(renamed)
    probs = sub_check.check([renamed]).all_problems()
    assert any("folder name differs" in p for p in probs)
    man = json.loads((renamed / "manifest.json").read_text())
    man["name"] = renamed.name
    (renamed / "manifest.json").write_text(json.dumps(man))
    probs = sub_check.check([renamed], use_recorded_model=False).all_problems()
    assert any("does not match its recorded size" in p for p in probs)


def test_check_one_primary_across_dirs_and_missing_things(tmp_path):
    a = pkg(make_model(tmp_path / "a"), tmp_path, out=tmp_path / "s1")
    b = pkg(make_sized_model(tmp_path / "b", 250_000_000), tmp_path, out=tmp_path / "s2")
    r = sub_check.check([a.dir, b.dir])
    assert r.submissions[0].problems == [] and r.submissions[1].problems == []
    assert len(r.problems) == 1 and "2 primary submissions for KIT en-de constrained" in r.problems[0]
    assert not r.ok
    # the same folder twice is one submission
    assert sub_check.check([a.dir, a.dir / "."]).ok
    missing = sub_check.check([tmp_path / "nope"])
    assert missing.all_problems() == [f"{tmp_path / 'nope'}: not a directory"]
    (b.dir / "manifest.json").unlink()
    (b.dir / f"{b.name}.tst.txt").write_bytes(b"a\r\nb")
    probs = sub_check.check([b.dir]).all_problems()
    assert any("manifest.json: missing" in p for p in probs)
    assert any("CR line ends" in p for p in probs) and any("no final newline" in p for p in probs)


def test_check_survives_a_malformed_manifest(model, tmp_path):
    res = pkg(model, tmp_path)
    man = json.loads((res.dir / "manifest.json").read_text())
    man["files"] = ["not", "a", "dict"]
    (res.dir / "manifest.json").write_text(json.dumps(man))
    r = sub_check.check([res.dir, tmp_path / "nope"])
    assert len(r.submissions) == 2 and not r.ok
    assert "malformed" in r.submissions[0].problems[0]


def test_package_cli_json_and_help(model, tmp_path, capsys):
    h = hyp(tmp_path / "h.zh", "你好\n世界\n".encode())
    rc = cli.main(["package", str(model), "--team", "Team1", "--lang", "en-zh", "--condition", "constrained",
                   "--type", "contrastive", "--hyp", f"acl6060={h}", "--segments", "acl6060=2", "--out",
                   str(tmp_path / "subs"), "--note", "decoding: 1.2x real time on one H100", "--json",
                   "--edition", "2025", "--allow-unlogged"])
    assert rc == 0
    j = json.loads(capsys.readouterr().out)
    assert j["name"] == "Team1_IWSLT25_ModelCompression_en-zh_Bin5_constrained_contrastive"
    assert j["test_sets"]["acl6060"]["file"] == f"{j['name']}.acl6060.txt"
    assert "Other details: decoding: 1.2x real time on one H100" in (Path(j["dir"]) / "description.txt").read_text()
    assert cli.main(["check", j["dir"]]) == 0
    capsys.readouterr()
    rc = cli.main(["package", str(model), "--team", "Team1", "--lang", "en-zh", "--condition", "constrained",
                   "--type", "contrastive", "--hyp", f"acl6060={h}", "--segments", "acl6060=two", "--edition", "2025"])
    assert rc == 2 and "whole number" in capsys.readouterr().err
    for cmd in ("package", "check"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_parse_name_inverts_model_name():
    assert sub_names.parse_name("KIT_IWSLT25_ModelCompression_en-de_Bin4_constrained_primary") == {
        "edition": "2025", "team": "KIT", "lp": "en-de", "condition": "constrained", "type": "primary", "bin": "Bin4"}
    assert sub_names.parse_name("KIT_IWSLT26_ModelCompression_en-zh_unconstrained_contrastive")["bin"] is None
    assert sub_names.parse_name("KIT_IWSLT25_ModelCompression_en-de_Bin9_constrained_primary") is None
    assert sub_names.parse_name("a_b_IWSLT25_ModelCompression_en-de_Bin4_constrained_primary") is None


def test_decoder_log_header_gives_segment_count(tmp_path):
    """The real `iwslt-mc decode` log: header (input segment count), segment records, summary."""
    from iwslt_mc.submission.files import count_log_segments

    log = tmp_path / "hyp.de.jsonl"
    recs = [{"type": "header", "segments": 5, "lang": "en-de"}]
    recs += [{"type": "segment", "index": i, "id": str(i), "text": "x"} for i in range(3)]
    recs += [{"type": "summary", "segments": 5, "decoded": 3}]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert count_log_segments(log) == 5
    log.write_text("".join(json.dumps(r) + "\n" for r in recs[1:4]))  # no header: count the segment records
    assert count_log_segments(log) == 3


# ---------------------------------------------------------------------------------------------- 2026/2027 editions


TEST_SETS_DE = ("tvseries", "acl", "callcenter", "youtube", "businessnews", "accent")


def decode_log(hyp_path: Path, model_dir: Path, n: int, lang: str = "en-de", fingerprint: str | None = None) -> Path:
    """A decode log as 'iwslt-mc decode' writes it beside its output (header, segments, summary)."""
    from iwslt_mc.floor.modeldir import model_fingerprint

    recs = [{"type": "header", "format": "iwslt-mc-decode/1", "model": str(model_dir),
             "model_fingerprint": fingerprint or model_fingerprint(model_dir), "segments": n, "lang": lang}]
    recs += [{"type": "segment", "index": i, "text": "x"} for i in range(n)]
    recs += [{"type": "summary", "segments": n}]
    log = Path(str(hyp_path) + ".jsonl")
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return log


@pytest.fixture
def kit_copy(kit, tmp_path):
    """A writable copy of the kit model (a real, loadable Qwen2-Audio) with a constrained-build provenance."""
    import shutil

    d = tmp_path / "kitmodel"
    shutil.copytree(kit / "model", d)
    return d


def hyp_set(tmp_path: Path, model_dir: Path, keys=TEST_SETS_DE, tgt="de", logged=True) -> dict[str, Path]:
    """One hypothesis file per test set (distinct texts) with its decode log, in tmp_path/hyp/."""
    (tmp_path / "hyp").mkdir(exist_ok=True)
    out = {}
    for i, k in enumerate(keys):
        f = hyp(tmp_path / "hyp" / f"{k}.{tgt}", f"Satz {i} eins.\nSatz {i} zwei.\n(Applaus)\n".encode())
        if logged:
            decode_log(f, model_dir, 3, lang=f"en-{tgt}")
        out[k] = f
    return out


def test_2027_package_names_files_per_test_set_and_check_passes(kit_copy, tmp_path, capsys):

    import torch

    from iwslt_mc.floor.modeldir import model_fingerprint
    from iwslt_mc.modelio import load_model

    res = sub_package.package(kit_copy, team="HW-TSC", lp="en-de", condition="constrained", submission_type="primary",
                            hyps=hyp_set(tmp_path, kit_copy), out=tmp_path / "subs")
    assert "Loading weights" not in capsys.readouterr().err  # the measure loads the model quietly
    name = "HW-TSC_IWSLT27_ModelCompression_en-de_constrained_primary"
    assert res.name == name and res.manifest["edition"] == "2027"
    assert sorted(p.name for p in res.dir.iterdir()) == sorted(
        [f"{name}.{k}.txt" for k in TEST_SETS_DE] + ["description.txt", "manifest.json"])
    m = res.manifest
    assert [m["test_sets"][k]["label"] for k in TEST_SETS_DE] == [
        "TVSERIES / en-de", "ACL / en-de", "CALLCENTER / en-de", "YOUTUBE / en-de", "BUSINESSNEWS / en-de",
        "ACCENT / en-de"]
    # the organizers' measure (the sizer's, computed from metadata; proven equal to real torch.save runs in
    # test_sizer): the model on one GPU as their script loads it, and on a CPU a real torch.save to a file
    # named like their temporary file gives the CPU figure byte for byte
    from iwslt_mc.sizing import sizer, torchsave

    ts = sizer.measure(kit_copy, None).torch_save
    path = tmp_path / f"{torchsave.ORGANIZERS_ARCHIVE}.pt"
    torch.save(load_model(kit_copy, device="cpu").state_dict(), path)
    assert m["size_measure"] == "torch_save_bytes" and m["bytes"] == ts.bytes
    assert ts.bytes_cpu == path.stat().st_size
    assert m["sizes"]["safetensors_bytes"] == sum(f.stat().st_size for f in kit_copy.glob("*.safetensors"))
    assert m["bytes"] != m["sizes"]["safetensors_bytes"]
    assert m["model_fingerprint"] == model_fingerprint(kit_copy)
    assert m["partial"] is None and m["unverified_hypotheses"] == []
    assert all(ts["model_check"].startswith("model fingerprint ") for ts in m["test_sets"].values())
    desc = sub_desc.parse_description(res.description)
    gib = sub_desc.exact_unit(m["bytes"], "GiB")
    assert desc["Storage size"] == f"{m['bytes']:,} bytes = {gib} (torch.save(model.state_dict()))"
    assert "Size bin" not in desc and "GiB" in desc["Storage size"]
    assert desc["Test sets"].startswith("TVSERIES / en-de (3 segments), ACL / en-de (3 segments)")
    # hypotheses are never altered: the (Applaus) tag is still there
    assert (res.dir / f"{name}.acl.txt").read_bytes() == (tmp_path / "hyp" / "acl.de").read_bytes()
    chk = sub_check.check([res.dir])
    assert chk.ok, chk.all_problems()
    assert any("fingerprint" in n for n in chk.submissions[0].notes)


def test_missing_test_set_refused_unless_partial(kit_copy, tmp_path):
    hyps = hyp_set(tmp_path, kit_copy, keys=("acl", "tvseries"))
    args = dict(team="KIT", lp="en-de", condition="constrained", submission_type="primary", out=tmp_path / "subs",
                edition="2026")
    with pytest.raises(UserError, match=r"misses 4: callcenter \(CALLCENTER / en-de\), youtube .*--partial"):
        sub_package.package(kit_copy, hyps=hyps, **args)
    assert not (tmp_path / "subs").exists()
    res = sub_package.package(kit_copy, hyps=hyps, partial=True, **args)
    assert res.name == "KIT_IWSLT26_ModelCompression_en-de_constrained_primary"
    assert res.manifest["partial"] == {"missing": ["callcenter", "youtube", "businessnews", "accent"], "deliberate": True}
    desc = sub_desc.parse_description(res.description)
    assert desc["Partial upload"].startswith("2 of 6 test sets; not included: CALLCENTER / en-de")
    # 2026: the torch.save bytes after loading are the stated size (the ranking's measure), in GB; safetensors beside it
    assert res.manifest["size_measure"] == "torch_save_bytes" and "GB" in desc["Storage size"]
    assert "GiB" not in desc["Storage size"] and res.manifest["bytes"] == res.manifest["sizes"]["torch_save_bytes"]
    assert set(res.manifest["sizes"]) == {"safetensors_bytes", "torch_save_bytes"}
    chk = sub_check.check([res.dir])
    assert chk.ok and any("partial upload (declared)" in n for n in chk.submissions[0].notes)
    # a manifest whose partial declaration is removed no longer passes
    man = json.loads((res.dir / "manifest.json").read_text())
    man["partial"] = None
    (res.dir / "manifest.json").write_text(json.dumps(man))
    probs = sub_check.check([res.dir], use_recorded_model=False).all_problems()
    assert any("misses 4 of edition 2026's 6 en-de test sets" in p and "not declared" in p for p in probs)


def test_unknown_test_set_names_and_label_names(kit_copy, tmp_path):
    hyps = hyp_set(tmp_path, kit_copy)
    hyps["TVSERIES"] = hyps.pop("tvseries")  # the label's name works too, in any case
    res = sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                            hyps=hyps, out=tmp_path / "subs")
    assert "tvseries" in res.manifest["test_sets"]
    with pytest.raises(UserError, match="'tst' is not one of edition 2027's en-de test sets: tvseries"):
        sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="contrastive",
                          hyps={"tst": hyps["acl"]}, out=tmp_path / "subs", partial=True)


def test_hypotheses_of_another_model_are_refused(kit_copy, tmp_path):
    hyps = hyp_set(tmp_path, kit_copy)
    decode_log(hyps["youtube"], Path("/models/big-16gb"), 3, fingerprint="0123456789abcdef")
    with pytest.raises(InputFileError, match="decoded by another model: its log .*youtube.de.jsonl records model "
                                             "fingerprint 0123456789abcdef"):
        sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                          hyps=hyps, out=tmp_path / "subs")
    # not even --allow-unlogged lets a known mismatch through
    with pytest.raises(InputFileError, match="decoded by another model"):
        sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                          hyps=hyps, out=tmp_path / "subs", allow_unlogged=True)
    decode_log(hyps["youtube"], kit_copy, 3, lang="en-zh")
    with pytest.raises(InputFileError, match="decoded as en-zh"):
        sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                          hyps=hyps, out=tmp_path / "subs")
    assert not (tmp_path / "subs").exists()


def test_hypotheses_without_log_need_the_flag_and_are_recorded(kit_copy, tmp_path, capsys):
    hyps = hyp_set(tmp_path, kit_copy)
    Path(str(hyps["accent"]) + ".jsonl").unlink()
    args = dict(team="KIT", lp="en-de", condition="constrained", submission_type="primary", out=tmp_path / "subs")
    with pytest.raises(InputFileError, match="cannot tell which model decoded it \\(no decode log found\\).*--allow-unlogged"):
        sub_package.package(kit_copy, hyps=hyps, **args)
    res = sub_package.package(kit_copy, hyps=hyps, allow_unlogged=True, **args)
    assert res.manifest["unverified_hypotheses"] == ["accent"] and res.manifest["allow_unlogged"] is True
    assert res.manifest["test_sets"]["accent"]["model_check"].startswith("unverified: no decode log found")
    assert sub_desc.parse_description(res.description)["Unverified hypotheses"].startswith("ACCENT / en-de")
    chk = sub_check.check([res.dir])
    assert chk.ok and any("without a model check" in n for n in chk.submissions[0].notes)
    # the CLI: one line, exit 2, without the flag
    capsys.readouterr()
    rc = cli.main(["package", str(kit_copy), "--team", "KIT", "--lang", "en-de", "--condition", "constrained",
                   "--type", "contrastive", "--hyp-dir", str(tmp_path / "hyp"), "--out", str(tmp_path / "s2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "accent.de" in err[0] and "--allow-unlogged" in err[0]


def test_zero_line_hypothesis_is_an_error(kit_copy, tmp_path):
    hyps = hyp_set(tmp_path, kit_copy)
    hyps["acl"].write_bytes(b"")
    decode_log(hyps["acl"], kit_copy, 0)
    with pytest.raises(InputFileError, match="acl.de: empty: 0 lines for test set 'acl'"):
        sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                          hyps=hyps, out=tmp_path / "subs", allow_unlogged=True)
    # 2025 too: never a warning
    with pytest.raises(InputFileError, match="empty: 0 lines"):
        pkg(make_model(tmp_path / "m"), tmp_path, hyps={"tst": hyp(tmp_path / "e.de", b"")})


def test_check_catches_a_model_rebuilt_in_place_at_the_same_size(kit_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    res = sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                            hyps=hyp_set(tmp_path, kit_copy), out=tmp_path / "subs")
    assert sub_check.check([res.dir]).ok
    st = kit_copy / "model.safetensors"
    size = st.stat().st_size
    tensors = load_file(str(st))
    for k in tensors:  # "rebuilt": every weight changes, shapes and dtypes do not
        tensors[k] = tensors[k] * 0.5
    save_file(tensors, str(st), metadata={"format": "pt"})
    assert st.stat().st_size == size
    probs = sub_check.check([res.dir]).all_problems()
    assert len(probs) == 1 and "model changed after packaging (fingerprint" in probs[0]


def test_hyp_dir_and_2027_cli(kit_copy, tmp_path, capsys):
    hyp_set(tmp_path, kit_copy)
    (tmp_path / "hyp" / "accent.de").rename(tmp_path / "hyp" / "ACCENT.de")
    (tmp_path / "hyp" / "accent.de.jsonl").rename(tmp_path / "hyp" / "ACCENT.de.jsonl")
    rc = cli.main(["package", str(kit_copy), "--team", "HW-TSC", "--lang", "en-de", "--condition", "constrained",
                   "--type", "primary", "--hyp-dir", str(tmp_path / "hyp"), "--out", str(tmp_path / "subs")])
    out = capsys.readouterr().out
    assert rc == 0, out
    name = "HW-TSC_IWSLT27_ModelCompression_en-de_constrained_primary"
    assert f"name:        {name}" in out and "upload as 'ACCENT / en-de'" in out
    assert (tmp_path / "subs" / name / f"{name}.accent.txt").is_file()
    assert cli.main(["check", str(tmp_path / "subs" / name)]) == 0


def test_contrastive_without_primary_warns(kit_copy, tmp_path):
    args = dict(team="KIT", lp="en-de", condition="constrained", out=tmp_path / "subs", edition="2026")
    res = sub_package.package(kit_copy, hyps=hyp_set(tmp_path, kit_copy), submission_type="contrastive", **args)
    assert any("only contrastive runs, so the latest upload will count as primary" in w for w in res.warnings)
    chk = sub_check.check([res.dir])
    assert chk.ok and len(chk.warnings) == 1 and "no primary submission for KIT en-de constrained" in chk.warnings[0]
    prim = sub_package.package(kit_copy, hyps=hyp_set(tmp_path, kit_copy), submission_type="primary", **args)
    assert not any("primary" in w for w in prim.warnings)
    assert sub_check.check([res.dir, prim.dir]).warnings == []


def test_team_names_with_hyphens():
    from iwslt_mc.sizing import track

    n = track.model_name(team="HW-TSC", lp="en-de", condition="constrained", submission_type="primary",
                         edition="2025", bin_name="Bin3")
    assert n == "HW-TSC_IWSLT25_ModelCompression_en-de_Bin3_constrained_primary"
    assert sub_names.parse_name(n)["team"] == "HW-TSC"
    assert sub_names.parse_name("HW-TSC_IWSLT27_ModelCompression_en-zh_unconstrained_contrastive") == {
        "edition": "2027", "team": "HW-TSC", "lp": "en-zh", "condition": "unconstrained", "type": "contrastive",
        "bin": None}


# ---------------------------------------------------------------------------------------------- descriptions name datasets


def fake_build(tmp_path: Path, data_dir: Path, extra=()) -> Path:
    """A build directory as 'iwslt-mc build' leaves it: build.json (data names), a distillation output
    from the fine-tuned teacher, and a model whose provenance records local paths."""
    run = tmp_path / "run"
    dd = run / "stages" / "02-distill" / "distill_data"
    dd.mkdir(parents=True)
    (run / "build.json").write_text(json.dumps({"data": {"acl6060": str(data_dir)} | dict(extra)}))
    (dd / "provenance.json").write_text(json.dumps({
        "format": 1, "kind": "distillation data", "data": [{"path": str(data_dir), "split": "train"}],
        "teacher": {"path": str(run / "stages" / "01-ft"), "stages": ["finetune"], "techniques": ["full fine-tuning"]}}))
    model = make_model(run / "model", techniques=("full fine-tuning",), data=())
    prov = json.loads((model / "provenance.json").read_text())
    prov["stages"] = [
        {"stage": "finetune", "techniques": ["full fine-tuning"], "data": [{"path": str(data_dir), "split": "train"}]},
        {"stage": "distill", "techniques": ["sequence-level knowledge distillation"],
         "data": [{"path": str(data_dir), "split": "train"}]},
        {"stage": "finetune", "techniques": ["QLoRA fine-tuning"],
         "data": [{"path": str(dd), "split": "train", "repeat": 10}] + [{"path": p, "size": 100000}
                                                                         for _, p in extra]},
    ]
    (model / "provenance.json").write_text(json.dumps(prov))
    return model


def test_datasets_are_named_never_paths_and_derived_data_is_constrained(tmp_path):
    data = tmp_path / "my" / "local" / "data"
    data.mkdir(parents=True)
    model = fake_build(tmp_path, data)
    res = pkg(model, tmp_path)
    desc = sub_desc.parse_description(res.description)
    assert desc["Datasets used"] == "ACL 60/60; ACL 60/60 translated by the fine-tuned teacher"
    assert str(tmp_path) not in res.description and "/my/local" not in res.description
    assert not any("constrained condition" in w for w in res.warnings)  # derived from ACL 60/60: allowed


def _relative_records(tmp_path: Path, model: Path) -> None:
    """Rewrite fake_build's records as an older iwslt-mc wrote them for a build run from tmp_path: relative paths."""
    def rel(v):
        return str(Path(v).relative_to(tmp_path)) if isinstance(v, str) and v.startswith(str(tmp_path)) else v

    for f in (model / "provenance.json", tmp_path / "run" / "stages" / "02-distill" / "distill_data" / "provenance.json"):
        prov = json.loads(f.read_text())
        for rec in prov.get("stages", [prov]):
            rec["data"] = [dict(d, path=rel(d["path"])) for d in rec.get("data", [])]
        f.write_text(json.dumps(prov))
    b = tmp_path / "run" / "build.json"
    b.write_text(json.dumps({"data": {k: rel(v) for k, v in json.loads(b.read_text())["data"].items()}}))


def test_relative_provenance_paths_read_the_same_from_any_directory(tmp_path, monkeypatch):
    """Records of an older build hold paths relative to where it ran: package reads them relative to the model's
    directories (and a record's cwd), so another working directory gives the same description, no false warning."""
    data = tmp_path / "my" / "local" / "data"
    data.mkdir(parents=True)
    model = fake_build(tmp_path, data)
    _relative_records(tmp_path, model)
    assert json.loads((model / "provenance.json").read_text())["stages"][2]["data"][0]["path"] == \
        "run/stages/02-distill/distill_data"
    descs = []
    for cwd in (tmp_path, tmp_path / "my", model):
        monkeypatch.chdir(cwd)
        res = pkg(model, tmp_path, out=tmp_path / f"subs-{len(descs)}")
        descs.append(sub_desc.parse_description(res.description)["Datasets used"])
        assert not any("constrained condition" in w for w in res.warnings), (cwd, res.warnings)
    assert descs == ["ACL 60/60; ACL 60/60 translated by the fine-tuned teacher"] * 3


def test_new_records_store_absolute_paths_and_their_cwd(tmp_path, monkeypatch):
    (tmp_path / "my" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    rec = provenance.make_record("finetune", {}, data=[{"path": "my/data?split=train", "size": 3}, {"path": "my/nothing"},
                                                       "ymoslem/acl-6060", "my/data"])
    assert rec["data"] == [{"path": f"{tmp_path / 'my' / 'data'}?split=train", "size": 3}, {"path": "my/nothing"},
                           "ymoslem/acl-6060", str(tmp_path / "my" / "data")]
    assert rec["cwd"] == str(tmp_path)


def test_real_outside_data_still_warns_under_constrained(tmp_path):
    data = tmp_path / "acl"
    data.mkdir()
    tsv = tmp_path / "cv" / "covost_v2.en_de.train.tsv"
    tsv.parent.mkdir()
    tsv.write_text("")
    model = fake_build(tmp_path, data, extra=[("covost2", str(tsv))])
    res = pkg(model, tmp_path)
    assert sub_desc.parse_description(res.description)["Datasets used"] == (
        "ACL 60/60; ACL 60/60 translated by the fine-tuned teacher; CoVoST 2 en-de train 100k")
    warn = [w for w in res.warnings if "constrained condition" in w]
    assert len(warn) == 1 and "CoVoST 2 en-de train 100k" in warn[0] and "ACL 60/60 translated" not in warn[0]
    assert str(tmp_path) not in res.description


def test_300_character_team_name_cli_one_line(model, tmp_path, capsys):
    rc = cli.main(["package", str(model), "--team", "T" * 300, "--lang", "en-de", "--condition", "constrained",
                   "--type", "primary", "--hyp", f"tst={hyp(tmp_path / 'h.de', HYP_DE)}", "--edition", "2025",
                   "--allow-unlogged", "--out", str(tmp_path / "subs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("iwslt-mc package: error: team name is 300 characters") and "at most 32" in err[0]
    assert "T" * 40 not in err[0] and not (tmp_path / "subs").exists()


def test_a_tensor_changed_in_the_middle_refuses_the_old_hypotheses(kit_copy, tmp_path, capsys):
    """The fingerprint covers every weight byte: 'package' refuses hypotheses decoded before a same-shape change in
    the middle of the weight file (which the old first-and-last-MiB fingerprint missed) and 'check' reports it."""
    from test_fingerprint import change_middle_tensor

    from iwslt_mc.floor.modeldir import legacy_model_fingerprint, model_fingerprint

    hyps = hyp_set(tmp_path, kit_copy)
    res = sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                            hyps=hyps, out=tmp_path / "subs")
    fp, legacy = model_fingerprint(kit_copy), legacy_model_fingerprint(kit_copy)
    change_middle_tensor(kit_copy)
    assert legacy_model_fingerprint(kit_copy) == legacy and model_fingerprint(kit_copy) != fp
    probs = sub_check.check([res.dir]).all_problems()
    assert len(probs) == 1 and f"model changed after packaging (fingerprint {fp} then" in probs[0]
    capsys.readouterr()
    rc = cli.main(["package", str(kit_copy), "--team", "KIT", "--lang", "en-de", "--condition", "constrained",
                   "--type", "primary", "--hyp-dir", str(tmp_path / "hyp"), "--out", str(tmp_path / "subs"), "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "decoded by another model" in err[0] and f"fingerprint {fp}" in err[0], err
    assert cli.main(["check", str(res.dir)]) == 1


def test_logs_and_manifests_of_the_older_partial_fingerprint_still_match(kit_copy, tmp_path):
    """Decode logs and manifests written before the full-content fingerprint record the old one: accepted with a
    warning/note saying so, never reported as another model."""
    from iwslt_mc.floor.modeldir import legacy_model_fingerprint

    old = legacy_model_fingerprint(kit_copy)
    hyps = hyp_set(tmp_path, kit_copy)
    decode_log(hyps["acl"], kit_copy, 3, fingerprint=old)
    res = sub_package.package(kit_copy, team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                            hyps=hyps, out=tmp_path / "subs")
    assert res.manifest["test_sets"]["acl"]["model_check"].startswith(f"older partial model fingerprint {old}")
    assert any("written by an older iwslt-mc" in w and "acl.de" in w for w in res.warnings)
    man = json.loads((res.dir / "manifest.json").read_text())
    man["model_fingerprint"] = old
    (res.dir / "manifest.json").write_text(json.dumps(man))
    chk = sub_check.check([res.dir])
    assert chk.ok, chk.all_problems()
    assert any(f"model fingerprint {old} recorded by an older iwslt-mc" in n for n in chk.submissions[0].notes)


def test_force_replaces_only_a_submission_folder_or_an_empty_one(model, tmp_path, capsys):
    """--force deletes the old folder's files: refused (one line, nothing deleted) for a folder that is not one
    iwslt-mc packaged; allowed for an earlier submission and for an empty folder."""
    res = pkg(model, tmp_path)
    name = res.name
    assert pkg(model, tmp_path, force=True).dir == res.dir  # an earlier submission: replaced
    other = tmp_path / "o" / name
    other.mkdir(parents=True)
    (other / "thesis.tex").write_text("years of work\n")
    with pytest.raises(UserError, match=rf"{other}: not a submission folder written by iwslt-mc package \(no valid "
                                        r"manifest.json\); --force would delete its files"):
        pkg(model, tmp_path, out=tmp_path / "o", force=True)
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]
    capsys.readouterr()
    rc = cli.main(["package", str(model), "--team", "KIT", "--lang", "en-de", "--condition", "constrained", "--type",
                   "primary", "--edition", "2025", "--hyp", f"tst={tmp_path / 'h.de'}", "--allow-unlogged",
                   "--out", str(tmp_path / "o"), "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a submission folder written by iwslt-mc" in err[0]
    assert (other / "thesis.tex").read_text() == "years of work\n"
    (other / "thesis.tex").unlink()
    assert pkg(model, tmp_path, out=tmp_path / "o", force=True).dir == other  # empty: fine
    f = tmp_path / "f" / name
    f.parent.mkdir()
    f.write_text("a file")
    with pytest.raises(UserError, match="exists and is not a folder"):
        pkg(model, tmp_path, out=tmp_path / "f", force=True)
    assert f.read_text() == "a file"
