"""Packager and checker on real files: tiny safetensors model dirs, hypothesis files, provenance."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from iwslt_mc import cli, packaging, provenance
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
    args = dict(team="KIT", lp="en-de", condition="constrained", submission_type="primary",
                hyps={"tst": hyp(tmp_path / "h.de", HYP_DE)}, out=tmp_path / "subs")
    args.update(kw)
    return packaging.package(model, **args)


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
    data, _ = packaging.normalize_hypothesis_bytes(raw, "h.txt")
    assert data == expected
    assert packaging.count_lines(data) == lines


def test_invalid_utf8_names_line_of_first_bad_byte(tmp_path):
    f = hyp(tmp_path / "bad.de", b"gut\r\nauch gut\r\nschlecht \xff hier\nund \xfe\n")
    with pytest.raises(InputFileError) as e:
        packaging.read_hypothesis(f, "tst")
    assert e.value.path == str(f)
    assert "line 3" in str(e.value) and "UTF-8" in str(e.value)
    # lone CR line ends count as line ends too
    with pytest.raises(InputFileError, match="line 4"):
        packaging.read_hypothesis(hyp(tmp_path / "cr.de", b"a\rb\r\rc\x80\r"), "tst")
    # latin-1 encoded umlaut on line 1
    g = hyp(tmp_path / "latin1.de", "Grüße\n".encode("latin-1"))
    with pytest.raises(InputFileError, match="line 1"):
        packaging.read_hypothesis(g, "tst")


def test_invalid_utf8_cli_one_line_error_nothing_written(model, tmp_path, capsys):
    f = hyp(tmp_path / "bad.de", b"a\nb\nc\xc3\n")
    rc = cli.main(["package", str(model), "--team", "KIT", "--lang", "en-de", "--condition", "constrained",
                   "--type", "primary", "--hyp", f"tst={f}", "--out", str(tmp_path / "subs")])
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

    desc = packaging.parse_description((res.dir / "description.txt").read_text())
    assert desc["Model name"] == name
    assert desc["Storage size"] == f"{m['bytes']:,} bytes = " + f"0.{m['bytes']:09d}".rstrip("0") + " GB"
    assert desc["Number of parameters"].startswith("80 ")
    assert desc["Compression techniques"] == "layer pruning 32->24"
    assert desc["Datasets used"] == "acl6060"
    assert desc["Size bin"] == "Bin5"
    assert not list((tmp_path / "subs").glob(".*"))  # no temporary folder left behind


@pytest.mark.parametrize("total, edition, expected", [
    (200_000_000, "2025", "KIT_IWSLT25_ModelCompression_en-de_Bin4_constrained_primary"),
    (199_999_999, "2025", "KIT_IWSLT25_ModelCompression_en-de_Bin5_constrained_primary"),
    (1_000_000_000, "2025", "KIT_IWSLT25_ModelCompression_en-de_Bin2_constrained_primary"),
    (3_999_999_999, "2025", "KIT_IWSLT25_ModelCompression_en-de_Bin1_constrained_primary"),
    (4_000_000_000, "2026", "KIT_IWSLT26_ModelCompression_en-de_constrained_primary"),
])
def test_boundary_sizes_name_the_right_bin(tmp_path, total, edition, expected):
    m = make_sized_model(tmp_path / "m", total)
    with safe_open(str(m / "model.safetensors"), framework="numpy") as f:  # a real safetensors file
        assert list(f.keys()) == [LAYER_KEY]
    res = pkg(m, tmp_path, edition=edition)
    assert res.name == expected
    assert res.manifest["bytes"] == total
    desc = packaging.parse_description(res.description)
    assert desc["Storage size"].startswith(f"{total:,} bytes = ")
    if total == 200_000_000:
        assert desc["Storage size"] == "200,000,000 bytes = 0.2 GB"
    assert packaging.check([res.dir]).ok


def test_model_of_4gb_cannot_be_packaged_for_2025(tmp_path):
    m = make_sized_model(tmp_path / "m", 4_000_000_000)
    with pytest.raises(UserError, match="fits no size bin of edition 2025"):
        pkg(m, tmp_path)
    assert not (tmp_path / "subs").exists()


@pytest.mark.parametrize("team", ["../x", "a_b", "a/b", "", "KIT ", "..", "Tëam"])
def test_bad_team_names_refused_and_nothing_escapes(model, tmp_path, team):
    with pytest.raises(UserError, match="letters and digits"):
        pkg(model, tmp_path, team=team)
    assert not (tmp_path / "subs").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("field, value, edition", [
    ("lp", "en-fr", "2025"), ("lp", "en-ar", "2026"), ("condition", "open", "2025"), ("submission_type", "main", "2025"),
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
    assert packaging.parse_description(res.description)["Datasets used"] == "CoVoST 2 en-de; ACL 60/60 dev"
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
    assert res.manifest["techniques"] == ["nf4 quantization"] and res.manifest["datasets"] == ["covost2"]
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
        packaging.parse_assignments(["just-a-file.txt"], "--hyp")
    with pytest.raises(UserError, match="given twice"):
        packaging.parse_assignments(["a=x", "a=y"], "--hyp")
    with pytest.raises(UserError, match="test set name"):
        packaging.parse_assignments(["../a=x"], "--hyp")
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
    assert packaging.check([again.dir]).ok
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
    res26 = pkg(big, tmp_path, edition="2026")
    assert res26.name == "KIT_IWSLT26_ModelCompression_en-de_constrained_primary"
    assert "edition 2026 publishes 6 en-de test set(s); this submission has 1" in res26.warnings


def test_out_must_be_a_directory(model, tmp_path):
    (tmp_path / "subs").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        pkg(model, tmp_path)


def test_failed_write_leaves_nothing(model, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(packaging, "atomic_write_json", boom)
    with pytest.raises(OSError):
        pkg(model, tmp_path)
    assert list((tmp_path / "subs").iterdir()) == []


# ---------------------------------------------------------------------------------------------- check


def test_check_passes_fresh_and_fails_after_any_one_byte_changes(model, tmp_path):
    res = pkg(model, tmp_path)
    assert packaging.check([res.dir]).ok
    f = res.dir / f"{res.name}.tst.txt"
    orig = f.read_bytes()
    for i in range(len(orig)):
        for new in {orig[i] ^ 0x01, ord("\n") if orig[i] != ord("\n") else ord("x")}:
            f.write_bytes(orig[:i] + bytes([new]) + orig[i + 1:])
            r = packaging.check([res.dir], use_recorded_model=False)
            assert not r.ok, (i, new)
            assert any("sha256 differs" in p for p in r.all_problems())
    f.write_bytes(orig)
    assert packaging.check([res.dir]).ok


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
    probs = packaging.check([res.dir]).all_problems()
    assert probs == [f"{f}: 1 lines but test set 'tst' has 4 segments (from --segments)"]


def test_check_description_fields(tmp_path):
    m = make_model(tmp_path / "m", data=("covost2",))
    res = pkg(m, tmp_path, condition="unconstrained")
    d = res.dir / "description.txt"
    d.write_text(d.read_text().replace("Datasets used: covost2\n", "").replace("Number of parameters: 80", "Number of parameters: 81"))
    probs = packaging.check([res.dir]).all_problems()
    assert any("mandatory field 'Datasets used'" in p for p in probs)
    assert any("'Number of parameters' says" in p for p in probs)
    assert any(p.startswith(f"{d}: sha256 differs") for p in probs)


def test_check_against_a_changed_model(tmp_path):
    m = make_sized_model(tmp_path / "m", 199_999_999)
    res = pkg(m, tmp_path)
    assert res.name.endswith("_Bin5_constrained_primary")
    write_exact_safetensors(m / "model.safetensors", 200_000_000)  # now Bin4: the name is wrong
    probs = packaging.check([res.dir]).all_problems()  # recorded model dir re-measured
    assert any("model is in Bin4 now" in p for p in probs)
    assert any("Bin4_constrained_primary" in p for p in probs)
    other = make_model(tmp_path / "other")
    assert packaging.check([res.dir], model_dir=other).all_problems()
    assert packaging.check([res.dir], use_recorded_model=False).ok
    # the recorded model is gone: a note, not a problem
    (m / "model.safetensors").unlink()
    m.joinpath("config.json").unlink()
    m.joinpath("provenance.json").unlink()
    m.rmdir()
    r = packaging.check([res.dir])
    assert r.ok and any("no longer exists" in n for n in r.submissions[0].notes)


def test_check_renamed_folder_and_tampered_name(model, tmp_path):
    res = pkg(model, tmp_path)
    renamed = res.dir.with_name(res.name.replace("Bin5", "Bin3"))
    res.dir.rename(renamed)
    probs = packaging.check([renamed]).all_problems()
    assert any("folder name differs" in p for p in probs)
    man = json.loads((renamed / "manifest.json").read_text())
    man["name"] = renamed.name
    (renamed / "manifest.json").write_text(json.dumps(man))
    probs = packaging.check([renamed], use_recorded_model=False).all_problems()
    assert any("does not match its recorded size" in p for p in probs)


def test_check_one_primary_across_dirs_and_missing_things(tmp_path):
    a = pkg(make_model(tmp_path / "a"), tmp_path, out=tmp_path / "s1")
    b = pkg(make_sized_model(tmp_path / "b", 250_000_000), tmp_path, out=tmp_path / "s2")
    r = packaging.check([a.dir, b.dir])
    assert r.submissions[0].problems == [] and r.submissions[1].problems == []
    assert len(r.problems) == 1 and "2 primary submissions for KIT en-de constrained" in r.problems[0]
    assert not r.ok
    # the same folder twice is one submission
    assert packaging.check([a.dir, a.dir / "."]).ok
    missing = packaging.check([tmp_path / "nope"])
    assert missing.all_problems() == [f"{tmp_path / 'nope'}: not a directory"]
    (b.dir / "manifest.json").unlink()
    (b.dir / f"{b.name}.tst.txt").write_bytes(b"a\r\nb")
    probs = packaging.check([b.dir]).all_problems()
    assert any("manifest.json: missing" in p for p in probs)
    assert any("CR line ends" in p for p in probs) and any("no final newline" in p for p in probs)


def test_check_survives_a_malformed_manifest(model, tmp_path):
    res = pkg(model, tmp_path)
    man = json.loads((res.dir / "manifest.json").read_text())
    man["files"] = ["not", "a", "dict"]
    (res.dir / "manifest.json").write_text(json.dumps(man))
    r = packaging.check([res.dir, tmp_path / "nope"])
    assert len(r.submissions) == 2 and not r.ok
    assert "malformed" in r.submissions[0].problems[0]


def test_package_cli_json_and_help(model, tmp_path, capsys):
    h = hyp(tmp_path / "h.zh", "你好\n世界\n".encode())
    rc = cli.main(["package", str(model), "--team", "Team1", "--lang", "en-zh", "--condition", "constrained",
                   "--type", "contrastive", "--hyp", f"acl6060={h}", "--segments", "acl6060=2", "--out",
                   str(tmp_path / "subs"), "--note", "decoding: 1.2x real time on one H100", "--json"])
    assert rc == 0
    j = json.loads(capsys.readouterr().out)
    assert j["name"] == "Team1_IWSLT25_ModelCompression_en-zh_Bin5_constrained_contrastive"
    assert j["test_sets"]["acl6060"]["file"] == f"{j['name']}.acl6060.txt"
    assert "Other details: decoding: 1.2x real time on one H100" in (Path(j["dir"]) / "description.txt").read_text()
    assert cli.main(["check", j["dir"]]) == 0
    capsys.readouterr()
    rc = cli.main(["package", str(model), "--team", "Team1", "--lang", "en-zh", "--condition", "constrained",
                   "--type", "contrastive", "--hyp", f"acl6060={h}", "--segments", "acl6060=two"])
    assert rc == 2 and "whole number" in capsys.readouterr().err
    for cmd in ("package", "check"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_parse_name_inverts_model_name():
    assert packaging.parse_name("KIT_IWSLT25_ModelCompression_en-de_Bin4_constrained_primary") == {
        "edition": "2025", "team": "KIT", "lp": "en-de", "condition": "constrained", "type": "primary", "bin": "Bin4"}
    assert packaging.parse_name("KIT_IWSLT26_ModelCompression_en-zh_unconstrained_contrastive")["bin"] is None
    assert packaging.parse_name("KIT_IWSLT25_ModelCompression_en-de_Bin9_constrained_primary") is None
    assert packaging.parse_name("a_b_IWSLT25_ModelCompression_en-de_Bin4_constrained_primary") is None


def test_decoder_log_header_gives_segment_count(tmp_path):
    """The real `iwslt-mc decode` log: header (input segment count), segment records, summary."""
    from iwslt_mc.packaging import count_log_segments

    log = tmp_path / "hyp.de.jsonl"
    recs = [{"type": "header", "segments": 5, "lang": "en-de"}]
    recs += [{"type": "segment", "index": i, "id": str(i), "text": "x"} for i in range(3)]
    recs += [{"type": "summary", "segments": 5, "decoded": 3}]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert count_log_segments(log) == 5
    log.write_text("".join(json.dumps(r) + "\n" for r in recs[1:4]))  # no header: count the segment records
    assert count_log_segments(log) == 3
