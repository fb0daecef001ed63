"""Rules of the IWSLT model-compression track, one table per edition.

Pure data plus a few tiny functions; no heavy imports. Adding an edition is adding an ``Edition``
to ``EDITIONS``. Sources: the track pages of 2025, 2026 and 2027 and the organizers' 2027 scripts
(see shared/reference/track-rules.md).

What each edition decides, as data:

- ``name_pattern``: the standardized model name (2025 has a size bin in it, 2026/2027 do not);
- ``ranking``: ``"bins"`` (2025: storage-size bins) or ``"pareto"`` (2026/2027: quality-size
  Pareto frontier, no bins);
- ``test_sets[lp]``: the test sets a submission covers, each with a short stable ``key`` (used in
  file names: ``<model name>.<key>.txt``) and its ``label`` on the evaluation server's upload page;
- ``size_measures``: which size measures apply, the first being the one the description's
  "exact storage size" states (see ``SIZE_MEASURES``);
- ``mandatory_description`` / ``optional_description``: the description fields the page asks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UserError

KB, MB, GB = 10**3, 10**6, 10**9
KiB, MiB, GiB = 2**10, 2**20, 2**30

RANKINGS = ("bins", "pareto")


@dataclass(frozen=True)
class SizeBin:
    name: str
    low: int  # inclusive, bytes
    high: int | None  # exclusive, bytes; None = unbounded


@dataclass(frozen=True)
class SizeMeasure:
    """A way of measuring a model's storage size; ``id`` is what editions and reports refer to."""

    id: str
    description: str
    source: str  # who defines it


SIZE_MEASURES: dict[str, SizeMeasure] = {
    "safetensors_bytes": SizeMeasure(
        "safetensors_bytes", "total bytes of the model's safetensors weight files",
        "2025 track page (storage size; decimal units, matching the published 16.79 GB of the base model)"),
    "torch_save_bytes": SizeMeasure(
        "torch_save_bytes", "bytes of the file torch.save(model.state_dict()) writes",
        "the organizers' 2027 scripts (hlt-mt/iwslt-modelcompression, 2027/), printed in GiB"),
}


@dataclass(frozen=True)
class TestSet:
    """One test set of an edition and language pair."""

    __test__ = False  # not a pytest test class despite the name

    key: str  # short, stable, file-name safe: "tvseries"
    label: str  # upload label on the evaluation server: "TVSERIES / en-de"
    domain: str = ""  # what it is, in words


@dataclass(frozen=True)
class Edition:
    key: str  # "2025"
    tag: str  # "IWSLT25", used in the model name
    base_model: str | None  # None: the edition names no base model
    base_model_rule: str  # the rule, in words
    language_pairs: tuple[str, ...]
    official_language_pairs: tuple[str, ...]
    conditions: tuple[str, ...]
    submission_types: tuple[str, ...]
    name_pattern: str  # str.format pattern over team, tag, lp, bin, condition, type
    ranking: str  # "bins" or "pareto"
    bins: tuple[SizeBin, ...]  # empty unless ranking == "bins"
    boundary_rule: str  # how sizes are ranked, in words (which bin a boundary value goes to)
    size_measures: tuple[str, ...]  # ids in SIZE_MEASURES; the first is the primary one
    size_unit: str  # unit of the primary measure in descriptions: "GB" (decimal) or "GiB" (binary)
    size_rule: str  # what "storage size" means for this edition, in words
    # lp -> the test sets a submission covers. Empty tuple: the edition does not name them (2025).
    test_sets: dict[str, tuple[TestSet, ...]] = field(default_factory=dict)
    # lp -> number of test sets as published (equals len(test_sets[lp]) when they are named).
    published_test_set_counts: dict[str, int] = field(default_factory=dict)
    test_set_label_pattern: str = ""  # how the upload page labels a test set
    primary_rule: str = ("one primary per language pair and condition; if none is marked primary, "
                         "the latest upload counts as primary")
    metric: str = "COMET (Unbabel/wmt22-comet-da) after mwerSegmenter resegmentation"
    mandatory_description: tuple[str, ...] = ("exact storage size", "number of parameters",
                                              "compression techniques")
    mandatory_description_unconstrained: tuple[str, ...] = ("datasets used",)
    optional_description: tuple[str, ...] = ("inference time", "FLOPs", "other details")
    speed_evaluated: bool = False
    notes: str = ""

    def __post_init__(self):
        if self.ranking not in RANKINGS:
            raise ValueError(f"edition {self.key}: ranking must be one of {RANKINGS}")
        if (self.ranking == "bins") != bool(self.bins):
            raise ValueError(f"edition {self.key}: bins are given exactly when ranking is 'bins'")
        unknown = [m for m in self.size_measures if m not in SIZE_MEASURES]
        if not self.size_measures or unknown:
            raise ValueError(f"edition {self.key}: unknown or no size measures {unknown}")
        for lp, sets in self.test_sets.items():
            keys = [t.key for t in sets]
            if len(set(keys)) != len(keys) or not all(_TEST_SET_KEY_RE.match(k) for k in keys):
                raise ValueError(f"edition {self.key} {lp}: test-set keys must be unique and file-name safe")

    @property
    def has_bins(self) -> bool:
        return self.ranking == "bins"

    @property
    def primary_size_measure(self) -> str:
        return self.size_measures[0]

    def test_set_keys(self, lp: str) -> tuple[str, ...]:
        return tuple(t.key for t in self.test_sets.get(lp, ()))

    def find_test_set(self, lp: str, key: str) -> TestSet | None:
        for t in self.test_sets.get(lp, ()):
            if t.key == key:
                return t
        return None


_TEST_SET_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# Bins in bytes, decimal units: 2 GB <= S < 4 GB is Bin1 ... S < 200 MB is Bin5.
_BINS_2025 = (
    SizeBin("Bin1", 2 * GB, 4 * GB),
    SizeBin("Bin2", 1 * GB, 2 * GB),
    SizeBin("Bin3", 500 * MB, 1 * GB),
    SizeBin("Bin4", 200 * MB, 500 * MB),
    SizeBin("Bin5", 0, 200 * MB),
)

# The test sets shared with the offline track in 2026 and 2027: 6 for en-de, the same minus
# accented speech for en-zh. The pages give the upload label's pattern, "${TESTSET} / ${LANGUAGE_PAIR}",
# but not the server's test-set names (the example is "XXXXXXXXX / en-de"); the names below are ours,
# written the way the reference's example does (TVSERIES / en-de): check them against the server's
# list when uploading. The keys are what the files are named by and never change.
_OFFLINE_DOMAINS = (
    ("tvseries", "TVSERIES", "TV series"),
    ("acl", "ACL", "ACL talks (scientific presentations)"),
    ("callcenter", "CALLCENTER", "call-centre two-person conversations"),
    ("youtube", "YOUTUBE", "YouTube videos"),
    ("businessnews", "BUSINESSNEWS", "business news"),
    ("accent", "ACCENT", "accented speech (accent challenge data)"),
)


def _offline_test_sets(lp: str, *, with_accent: bool) -> tuple[TestSet, ...]:
    return tuple(TestSet(key, f"{name} / {lp}", domain) for key, name, domain in _OFFLINE_DOMAINS
                 if with_accent or key != "accent")


_TEST_SETS_2026 = {
    "en-de": _offline_test_sets("en-de", with_accent=True),
    "en-zh": _offline_test_sets("en-zh", with_accent=False),
}

EDITIONS: dict[str, Edition] = {
    "2025": Edition(
        key="2025",
        tag="IWSLT25",
        base_model="Qwen/Qwen2-Audio-7B-Instruct",
        base_model_rule="derived from Qwen2-Audio (Qwen2-Audio-7B-Instruct in practice)",
        language_pairs=("en-de", "en-ar", "en-zh"),
        official_language_pairs=("en-de", "en-zh"),
        conditions=("constrained", "unconstrained"),
        submission_types=("primary", "contrastive"),
        name_pattern="{team}_{tag}_ModelCompression_{lp}_{bin}_{condition}_{type}",
        ranking="bins",
        bins=_BINS_2025,
        boundary_rule="a size exactly on a boundary goes to the larger bin (200 MB exactly is Bin4); 4 GB or more fits no bin",
        size_measures=("safetensors_bytes",),
        size_unit="GB",
        size_rule="total bytes of the model's weight files (safetensors), decimal units",
        test_sets={"en-de": (), "en-zh": ()},  # the 2025 page names no test sets
        published_test_set_counts={"en-de": 1, "en-zh": 1},  # the page also says 4 for en-de in one place
        notes="constrained: only ACL 60/60 data; unconstrained: any public data",
    ),
    "2026": Edition(
        key="2026",
        tag="IWSLT26",
        base_model="Qwen/Qwen2-Audio-7B",
        base_model_rule='"strictly derived from the original Qwen2-Audio model" (the page links Qwen2-Audio-7B)',
        language_pairs=("en-de", "en-ar", "en-zh"),
        official_language_pairs=("en-de", "en-zh"),
        conditions=("constrained", "unconstrained"),
        submission_types=("primary", "contrastive"),
        name_pattern="{team}_{tag}_ModelCompression_{lp}_{condition}_{type}",
        ranking="pareto",
        bins=(),
        boundary_rule="no bins: ranked on the Pareto frontier of quality (COMET) and size on disk",
        # The page defines no measuring method; the 2026 ranking used the organizers' measure after loading
        # the model (torch.save of its state dict: the project's brief and issue 31), so that is primary, with
        # the safetensors bytes (what a model on disk is) beside it.
        size_measures=("torch_save_bytes", "safetensors_bytes"),
        size_unit="GB",
        size_rule='"size of the model on disk"; the page defines no measuring method',
        test_sets=_TEST_SETS_2026,
        published_test_set_counts={"en-de": 6, "en-zh": 5},
        test_set_label_pattern="${TESTSET} / ${LANGUAGE_PAIR}",
    ),
    "2027": Edition(
        key="2027",
        tag="IWSLT27",
        base_model=None,
        base_model_rule=("any large multilingual speech-to-text foundation model (the page names none; "
                         "the organizers' scripts use google/gemma-4-12B-it)"),
        language_pairs=("en-de", "en-zh"),
        official_language_pairs=("en-de", "en-zh"),
        conditions=("constrained", "unconstrained"),
        submission_types=("primary", "contrastive"),
        name_pattern="{team}_{tag}_ModelCompression_{lp}_{condition}_{type}",
        ranking="pareto",
        bins=(),
        boundary_rule="no bins: a year-round leaderboard ranked on the Pareto frontier of quality (COMET) and size",
        size_measures=("torch_save_bytes", "safetensors_bytes"),
        size_unit="GiB",
        size_rule="bytes of torch.save(model.state_dict()), printed in GiB (1024^3), as the organizers' scripts do",
        test_sets={lp: tuple(TestSet(t.key, t.label, t.domain) for t in sets) for lp, sets in _TEST_SETS_2026.items()},
        published_test_set_counts={"en-de": 6, "en-zh": 5},
        test_set_label_pattern="${TESTSET} / ${LANGUAGE_PAIR}",
        notes="year-round leaderboard; download ALL the test sets",
    ),
}

DEFAULT_EDITION = "2027"  # the newest: what a participant works on today
CONSTRAINED_DATASETS = ("acl6060",)  # the only data allowed under the constrained condition

_ALIASES = {f"{y}": f"20{y}" for y in ("25", "26", "27")} | {f"IWSLT{y}": f"20{y}" for y in ("25", "26", "27")}


def get_edition(key: str | None = None) -> Edition:
    """The edition ``key`` ("2027", "27", "IWSLT27"); the newest when None."""
    key = DEFAULT_EDITION if key is None else str(key)
    key = _ALIASES.get(key, _ALIASES.get(key.upper(), key))
    if key not in EDITIONS:
        raise UserError(f"unknown edition {key!r} (known: {', '.join(EDITIONS)})")
    return EDITIONS[key]


def _ed(edition: str | Edition | None) -> Edition:
    return edition if isinstance(edition, Edition) else get_edition(edition)


def size_bin(nbytes: int, edition: str | Edition = "2025", *, unit: int = 1) -> str | None:
    """The bin of a model of ``nbytes`` storage, or None when it fits no bin (or the edition has none).

    The default edition here is 2025, the only one with bins. ``unit`` scales the boundaries;
    use :func:`size_bin_binary` to read the boundaries as binary units.
    """
    ed = _ed(edition)
    for b in ed.bins:
        lo = b.low * unit
        hi = None if b.high is None else b.high * unit
        if nbytes >= lo and (hi is None or nbytes < hi):
            return b.name
    return None


def size_bin_binary(nbytes: int, edition: str | Edition = "2025") -> str | None:
    """The bin if the boundaries were read as binary units (GiB/MiB); used only to warn."""
    ed = _ed(edition)
    for b in ed.bins:
        lo = _to_binary(b.low)
        hi = None if b.high is None else _to_binary(b.high)
        if nbytes >= lo and (hi is None or nbytes < hi):
            return b.name
    return None


def _to_binary(n: int) -> int:
    if n and n % GB == 0:
        return n // GB * GiB
    if n and n % MB == 0:
        return n // MB * MiB
    return n


def model_name(*, team: str, lp: str, condition: str, submission_type: str, edition: str | Edition,
               bin_name: str | None = None) -> str:
    """The standardized model name; validates every part against the edition's lists."""
    ed = _ed(edition)
    validate_team(team)
    if lp not in ed.language_pairs:
        raise UserError(f"language pair {lp!r} is not in edition {ed.key} (allowed: {', '.join(ed.language_pairs)})")
    if condition not in ed.conditions:
        raise UserError(f"condition {condition!r} is not in edition {ed.key} (allowed: {', '.join(ed.conditions)})")
    if submission_type not in ed.submission_types:
        raise UserError(f"submission type {submission_type!r} is not in edition {ed.key} (allowed: {', '.join(ed.submission_types)})")
    if ed.has_bins and bin_name is None:
        raise UserError(f"the model fits no size bin of edition {ed.key} (>= 4 GB): it cannot be submitted")
    return ed.name_pattern.format(team=team, tag=ed.tag, lp=lp, bin=bin_name, condition=condition,
                                  type=submission_type)


# Team names: what the organizers' name pattern allows. Underscores separate the name's fields, so
# a team name has none; letters, digits and hyphens (real teams: KIT, HW-TSC, NAIST, CMU). It starts
# with a letter or digit (a leading '-' would read as a command-line option). Real team short names
# are a few characters; 32 keeps the model name under ~90 characters and every packaged file name
# (``<model name>.<test set>.txt``) far below the 255-byte file-name limit of common file systems.
TEAM_MAX_CHARS = 32
TEAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def validate_team(team: str) -> str:
    if not team:
        raise UserError("team name is empty: give your team's short name (letters, digits, hyphens; e.g. KIT, HW-TSC)")
    if len(team) > TEAM_MAX_CHARS:
        raise UserError(f"team name is {len(team)} characters ({team[:20]!r}...); at most {TEAM_MAX_CHARS} "
                        "(it is the first field of the model name and of every file name): use the team's short name")
    if not team.isascii() or not TEAM_RE.match(team):
        raise UserError(f"team name {team!r} may contain only letters, digits and hyphens and must start with a "
                        "letter or digit (underscores separate the model name's fields; e.g. KIT, HW-TSC)")
    return team


def format_size(nbytes: int, unit: str = "GB") -> str:
    div = {"GB": GB, "MB": MB, "KB": KB, "GiB": GiB, "MiB": MiB}[unit]
    return f"{nbytes / div:.3f} {unit}"
