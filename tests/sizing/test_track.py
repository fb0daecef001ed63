"""Editions as data: names, ranking, test sets with upload labels, size measures, team names."""

from __future__ import annotations

import dataclasses

import pytest

from iwslt_mc.sizing import track
from iwslt_mc.errors import UserError

DE_KEYS = ["tvseries", "acl", "callcenter", "youtube", "businessnews", "accent"]


def test_default_is_the_newest_edition_and_aliases():
    assert track.DEFAULT_EDITION == "2027" == max(track.EDITIONS)
    assert track.get_edition().key == "2027" and track.get_edition(None).tag == "IWSLT27"
    for alias, key in (("27", "2027"), ("IWSLT26", "2026"), ("iwslt25", "2025"), (2025, "2025")):
        assert track.get_edition(alias).key == key
    with pytest.raises(UserError, match="unknown edition '2024' \\(known: 2025, 2026, 2027\\)"):
        track.get_edition("2024")


@pytest.mark.parametrize("key, ranking, measures, unit, bins", [
    ("2025", "bins", ("safetensors_bytes",), "GB", 5),
    ("2026", "pareto", ("torch_save_bytes", "safetensors_bytes"), "GB", 0),
    ("2027", "pareto", ("torch_save_bytes", "safetensors_bytes"), "GiB", 0),
])
def test_ranking_and_size_measures(key, ranking, measures, unit, bins):
    ed = track.get_edition(key)
    assert ed.ranking == ranking and ed.has_bins == (ranking == "bins") and len(ed.bins) == bins
    assert ed.size_measures == measures and ed.primary_size_measure == measures[0] and ed.size_unit == unit
    assert all(m in track.SIZE_MEASURES for m in measures)


def test_test_sets_and_upload_labels():
    for key in ("2026", "2027"):
        ed = track.get_edition(key)
        de, zh = ed.test_sets["en-de"], ed.test_sets["en-zh"]
        assert [t.key for t in de] == DE_KEYS and [t.key for t in zh] == DE_KEYS[:-1]  # en-zh: no accented speech
        assert [t.label for t in de][:2] == ["TVSERIES / en-de", "ACL / en-de"] and zh[0].label == "TVSERIES / en-zh"
        assert all(t.label.endswith(" / en-de") for t in de)
        assert ed.published_test_set_counts == {"en-de": 6, "en-zh": 5}
        assert ed.test_set_keys("en-de") == tuple(DE_KEYS) and ed.find_test_set("en-zh", "accent") is None
        assert ed.find_test_set("en-de", "accent").domain.startswith("accented speech")
    ed25 = track.get_edition("2025")
    assert ed25.test_sets == {"en-de": (), "en-zh": ()}  # not named by the 2025 page
    assert ed25.published_test_set_counts == {"en-de": 1, "en-zh": 1}


def test_editions_reject_inconsistent_data():
    ed = track.get_edition("2027")
    with pytest.raises(ValueError, match="ranking"):
        dataclasses.replace(ed, ranking="stars")
    with pytest.raises(ValueError, match="bins are given exactly when"):
        dataclasses.replace(ed, ranking="bins")
    with pytest.raises(ValueError, match="size measures"):
        dataclasses.replace(ed, size_measures=("gzip_bytes",))
    with pytest.raises(ValueError, match="file-name safe"):
        dataclasses.replace(ed, test_sets={"en-de": (track.TestSet("a/b", "A / en-de"),)})


@pytest.mark.parametrize("edition, lp, bin_name, expected", [
    ("2025", "en-de", "Bin3", "KIT_IWSLT25_ModelCompression_en-de_Bin3_constrained_primary"),
    ("2026", "en-ar", None, "KIT_IWSLT26_ModelCompression_en-ar_constrained_primary"),
    ("2027", "en-zh", None, "KIT_IWSLT27_ModelCompression_en-zh_constrained_primary"),
])
def test_model_names(edition, lp, bin_name, expected):
    assert track.model_name(team="KIT", lp=lp, condition="constrained", submission_type="primary",
                            edition=edition, bin_name=bin_name) == expected


def test_model_name_rules():
    with pytest.raises(UserError, match="fits no size bin of edition 2025"):
        track.model_name(team="KIT", lp="en-de", condition="constrained", submission_type="primary", edition="2025")
    with pytest.raises(UserError, match="language pair 'en-ar' is not in edition 2027"):
        track.model_name(team="KIT", lp="en-ar", condition="constrained", submission_type="primary", edition="2027")


def test_size_bins_2025_unchanged_and_none_without_bins():
    assert [track.size_bin(n) for n in (199_999_999, 200_000_000, 999_999_999, 1_000_000_000, 3_999_999_999,
                                        4_000_000_000)] == ["Bin5", "Bin4", "Bin3", "Bin2", "Bin1", None]
    assert track.size_bin(300_000_000, "2027") is None and track.size_bin(300_000_000, "2026") is None
    assert track.size_bin_binary(1_050_000_000) == "Bin3"  # < 1 GiB: why the sizer warns


@pytest.mark.parametrize("team", ["KIT", "HW-TSC", "NAIST", "team2", "A" * 32])
def test_team_names_the_organizers_pattern_allows(team):
    assert track.validate_team(team) == team


@pytest.mark.parametrize("team, message", [
    ("HW_TSC", "only letters, digits and hyphens"),
    ("-KIT", "must start with a letter or digit"),
    ("KIT TEAM", "only letters, digits and hyphens"),
    ("Ünï", "only letters, digits and hyphens"),
    ("", "team name is empty"),
    ("A" * 33, "team name is 33 characters"),
    ("X" * 300, "team name is 300 characters"),
])
def test_bad_team_names_one_line(team, message):
    with pytest.raises(UserError, match=message) as e:
        track.validate_team(team)
    assert "\n" not in str(e.value) and len(str(e.value)) < 250


@pytest.mark.parametrize("command", ["package", "report", "demo"])
def test_commands_take_edition_defaulting_to_the_newest(command):
    from iwslt_mc import cli

    parser = cli.build_parser()
    args = {"package": ["M", "--team", "KIT", "--lang", "en-de", "--condition", "constrained", "--type", "primary"],
            "report": ["RUN"], "demo": []}[command]
    ns = parser.parse_args([command, *args])
    assert track.get_edition(ns.edition).key == "2027"
    assert track.get_edition(parser.parse_args([command, *args, "--edition", "2025"]).edition).key == "2025"
