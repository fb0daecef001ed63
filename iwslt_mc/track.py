"""Rules of the IWSLT model-compression track, one table per edition.

Pure data plus two tiny functions; no heavy imports. Adding an edition is adding an ``Edition``
to ``EDITIONS``. Sources: the track pages of 2025 and 2026 (see shared/reference/track-rules.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError

KB, MB, GB = 10**3, 10**6, 10**9
KiB, MiB, GiB = 2**10, 2**20, 2**30


@dataclass(frozen=True)
class SizeBin:
    name: str
    low: int  # inclusive, bytes
    high: int | None  # exclusive, bytes; None = unbounded


@dataclass(frozen=True)
class Edition:
    key: str  # "2025"
    tag: str  # "IWSLT25", used in the model name
    base_model: str
    language_pairs: tuple[str, ...]
    official_language_pairs: tuple[str, ...]
    conditions: tuple[str, ...]
    submission_types: tuple[str, ...]
    name_pattern: str  # str.format pattern over team, tag, lp, bin, condition, type
    bins: tuple[SizeBin, ...]  # empty: no bins (Pareto ranking)
    boundary_rule: str  # human-readable statement of which bin a boundary value goes to
    size_measure: str  # what "storage size" means
    size_unit: str  # unit used in descriptions: "GB" or "MB" decimal
    test_sets: dict = field(default_factory=dict)  # lp -> number of test sets (as published)
    primary_rule: str = "exactly one primary per language pair and condition"
    metric: str = "COMET (Unbabel/wmt22-comet-da) after mwerSegmenter resegmentation"
    mandatory_description: tuple[str, ...] = ("storage size", "parameters", "techniques")
    mandatory_description_unconstrained: tuple[str, ...] = ("datasets",)
    notes: str = ""

    @property
    def has_bins(self) -> bool:
        return bool(self.bins)


# Bins in bytes, decimal units: 2 GB <= S < 4 GB is Bin1 ... S < 200 MB is Bin5.
_BINS_2025 = (
    SizeBin("Bin1", 2 * GB, 4 * GB),
    SizeBin("Bin2", 1 * GB, 2 * GB),
    SizeBin("Bin3", 500 * MB, 1 * GB),
    SizeBin("Bin4", 200 * MB, 500 * MB),
    SizeBin("Bin5", 0, 200 * MB),
)

EDITIONS: dict[str, Edition] = {
    "2025": Edition(
        key="2025",
        tag="IWSLT25",
        base_model="Qwen/Qwen2-Audio-7B-Instruct",
        language_pairs=("en-de", "en-ar", "en-zh"),
        official_language_pairs=("en-de", "en-zh"),
        conditions=("constrained", "unconstrained"),
        submission_types=("primary", "contrastive"),
        name_pattern="{team}_{tag}_ModelCompression_{lp}_{bin}_{condition}_{type}",
        bins=_BINS_2025,
        boundary_rule="a size exactly on a boundary goes to the larger bin (200 MB exactly is Bin4); 4 GB or more fits no bin",
        size_measure="total bytes of the model's weight files (safetensors), decimal units",
        size_unit="GB",
        test_sets={"en-de": 1, "en-zh": 1},  # the 2025 page also says 4 for en-de in one place
        notes="constrained: only ACL 60/60 data; unconstrained: any public data",
    ),
    "2026": Edition(
        key="2026",
        tag="IWSLT26",
        base_model="Qwen/Qwen2-Audio-7B-Instruct",
        language_pairs=("en-de", "en-zh"),
        official_language_pairs=("en-de", "en-zh"),
        conditions=("constrained", "unconstrained"),
        submission_types=("primary", "contrastive"),
        name_pattern="{team}_{tag}_ModelCompression_{lp}_{condition}_{type}",
        bins=(),
        boundary_rule="no bins: ranked on the Pareto frontier of COMET and on-disk size",
        size_measure="total bytes of the model's weight files (safetensors), decimal units",
        size_unit="GB",
        test_sets={"en-de": 6, "en-zh": 5},
    ),
}

DEFAULT_EDITION = "2025"
CONSTRAINED_DATASETS = ("acl6060",)  # the only data allowed under the constrained condition


def get_edition(key: str | None) -> Edition:
    key = DEFAULT_EDITION if key is None else str(key)
    aliases = {"25": "2025", "26": "2026", "IWSLT25": "2025", "IWSLT26": "2026"}
    key = aliases.get(key, key)
    if key not in EDITIONS:
        raise UserError(f"unknown edition {key!r} (known: {', '.join(EDITIONS)})")
    return EDITIONS[key]


def size_bin(nbytes: int, edition: str | Edition = DEFAULT_EDITION, *, unit: int = 1) -> str | None:
    """The bin of a model of ``nbytes`` storage, or None when it fits no bin (or the edition has none).

    ``unit`` scales the boundaries: 1 for decimal (the rule), or e.g. ``MiB // MB`` is not meaningful;
    use :func:`size_bin_binary` to read the boundaries as binary units.
    """
    ed = edition if isinstance(edition, Edition) else get_edition(edition)
    for b in ed.bins:
        lo = b.low * unit
        hi = None if b.high is None else b.high * unit
        if nbytes >= lo and (hi is None or nbytes < hi):
            return b.name
    return None


def size_bin_binary(nbytes: int, edition: str | Edition = DEFAULT_EDITION) -> str | None:
    """The bin if the boundaries were read as binary units (GiB/MiB); used only to warn."""
    ed = edition if isinstance(edition, Edition) else get_edition(edition)
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
               bin_name: str | None) -> str:
    """The standardized model name; validates every part against the edition's lists."""
    ed = edition if isinstance(edition, Edition) else get_edition(edition)
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


def validate_team(team: str) -> str:
    if not team or not team.isascii() or not team.isalnum():
        raise UserError(
            f"team name {team!r} must be letters and digits only (an underscore, space or path separator would break the model name)")
    return team


def format_size(nbytes: int, unit: str = "GB") -> str:
    div = {"GB": GB, "MB": MB, "KB": KB, "GiB": GiB, "MiB": MiB}[unit]
    return f"{nbytes / div:.3f} {unit}"
