"""Recipes: YAML lists of stages. ``RECIPES`` (every family's shipped recipes, in registry order) is what ``iwslt-mc ls`` prints.

A recipe file::

    # <what it does>
    # Run: iwslt-mc build recipe-b --lang en-de --base PATH --data PATH
    name: recipe-b
    description: one line
    paper: the paper it follows
    stages:
      - id: ft-full            # unique; names the stage's output directory and --set targets
        stage: finetune        # a stage name from iwslt_mc.stages.REGISTRY
        data: [acl6060]        # data references (see below); optional
        when: unconstrained    # optional: run only under this condition
        options: {mode: full}  # the stage's options, validated strictly

Data references: ``acl6060`` (the ACL 60/60 data given by ``--data``), ``NAME`` for any
``--data NAME=PATH`` the user gives (e.g. ``covost2``), and ``@ID`` for the dataset written by an
earlier stage (a distill stage's output). Option values ``@ID`` name an earlier stage's output model
(e.g. a distillation ``teacher``). Under the constrained condition only ACL 60/60 and data derived
from it by earlier stages may be used.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputFileError, UserError
from .families import default_family, families

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

# name, file: every family's shipped recipes (:attr:`iwslt_mc.families.base.Family.recipes`), in registry
# order. What each does is written once, in the file (its ``description:``, read by ``iwslt-mc ls``).
RECIPES: list[tuple[str, str]] = [entry for fam in families() for entry in fam.recipes]
DEFAULT_FAMILY = default_family().name  # a recipe without a family: line (the registry's first family)

CONDITIONS = ("constrained", "unconstrained")
BUILTIN_DATA = "acl6060"
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass
class StageEntry:
    id: str
    stage: str
    options: dict
    data: list[str] = field(default_factory=list)
    when: str | None = None
    line: int = 0  # line in the recipe file, for error messages


@dataclass
class Recipe:
    name: str
    description: str
    paper: str
    stages: list[StageEntry]
    path: Path
    text: str  # the file's text, kept for provenance and `cp`
    family: str = DEFAULT_FAMILY  # the model family (iwslt_mc.families) the recipe is written for

    def active_stages(self, condition: str) -> list[StageEntry]:
        return [s for s in self.stages if s.when in (None, condition)]


def split_ref(ref: str) -> tuple[str, str]:
    """``"@distill?repeat=10"`` -> ``("@distill", "repeat=10")``; the query is passed on to the data loader."""
    name, _, query = str(ref).partition("?")
    return name, query


def join_query(spec: str, query: str) -> str:
    if not query:
        return spec
    return f"{spec}{'&' if '?' in spec else '?'}{query}"


def recipe_path(name_or_path: str) -> Path:
    """A shipped recipe by name, or a path to a recipe file."""
    for name, fname in RECIPES:
        if name_or_path in (name, fname):
            return RECIPES_DIR / fname
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise UserError(f"{p}: recipe file not found")
        if p.is_dir():
            raise UserError(f"{p}: is a directory, not a recipe file (give a recipe .yaml or a name from iwslt-mc ls)")
        return p
    raise UserError(f"unknown recipe {name_or_path!r} (shipped: {', '.join(n for n, _ in RECIPES)}; or give a path to a .yaml)")


def load_recipe(name_or_path: str) -> Recipe:
    """Parse and strictly validate a recipe; errors name the file and line."""
    import yaml

    from .stages import REGISTRY, make_stage

    path = recipe_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start}); save the recipe as UTF-8") from None
    except OSError as e:
        raise InputFileError(path, f"cannot read recipe ({e.strerror or e})") from None
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a recipe is a mapping with 'name' and 'stages'")
    top_allowed = {"name", "description", "paper", "family", "stages"}
    lines = _key_lines(node)
    for k in doc:
        if k not in top_allowed:
            raise UserError(f"{path}:{lines.get(k, 0)}: unknown recipe key {k!r} (allowed: {', '.join(sorted(top_allowed))})")
    from .families import family_names

    family = doc.get("family", DEFAULT_FAMILY)
    if family not in family_names():
        raise UserError(f"{path}:{lines.get('family', 0)}: unknown family {family!r} (known: {', '.join(family_names())})")
    stages_raw = doc.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise UserError(f"{path}: 'stages' must be a non-empty list")
    stage_nodes = _seq_item_nodes(node, "stages")
    entries: list[StageEntry] = []
    seen_ids: set[str] = set()
    for i, raw in enumerate(stages_raw):
        line = stage_nodes[i].start_mark.line + 1 if i < len(stage_nodes) else 0
        where = f"{path}:{line}"
        if not isinstance(raw, dict):
            raise UserError(f"{where}: a stage is a mapping with 'stage' and 'options'")
        allowed = {"id", "stage", "options", "data", "when"}
        for k in raw:
            if k not in allowed:
                raise UserError(f"{where}: unknown stage key {k!r} (allowed: {', '.join(sorted(allowed))})")
        name = raw.get("stage")
        if name not in REGISTRY:
            raise UserError(f"{where}: unknown stage {name!r} (known: {', '.join(REGISTRY)})")
        sid = str(raw.get("id") or name)
        if not _ID.match(sid):
            raise UserError(f"{where}: stage id {sid!r} must be lower-case letters, digits, '-' or '_'")
        if sid in seen_ids:
            raise UserError(f"{where}: duplicate stage id {sid!r} (give each stage a unique 'id')")
        seen_ids.add(sid)
        when = raw.get("when")
        if when is not None and when not in CONDITIONS:
            raise UserError(f"{where}: 'when' must be one of {', '.join(CONDITIONS)}, not {when!r}")
        options = raw.get("options") or {}
        if not isinstance(options, dict):
            raise UserError(f"{where}: 'options' must be a mapping")
        data = raw.get("data") or []
        if isinstance(data, str):
            data = [data]
        for ref in data:
            if ref.startswith("@") and split_ref(ref)[0][1:] not in seen_ids:
                raise UserError(f"{where}: data reference {ref!r} names no earlier stage")
        for k, v in options.items():
            if isinstance(v, str) and v.startswith("@") and v[1:] not in seen_ids:
                raise UserError(f"{where}: option {k}={v!r} names no earlier stage")
        try:
            options = normalized_options(make_stage(name, _strip_refs(options)), options)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        entries.append(StageEntry(id=sid, stage=name, options=options, data=list(data), when=when, line=line))
    return Recipe(name=str(doc.get("name") or path.stem), description=str(doc.get("description") or ""),
                  paper=str(doc.get("paper") or ""), stages=entries, path=path, text=text, family=family)


def normalized_options(stage, raw: dict) -> dict:
    """The recipe's options as the stage reads them (its option schema's coercion: ``skip: lm_head`` is
    ``['lm_head']``, ``remove: "8"`` is 8), keeping ``@ID`` references as written. Everything that reads a
    recipe's options afterwards (the build, the planner, the fingerprints) sees this one reading. A value
    equal to its reading stays as written (``epochs: 3``, not 3.0), so the stage fingerprints of builds
    started before this normalization still match on --resume."""
    out = {}
    for k, v in raw.items():
        read = getattr(stage.options, k)
        out[k] = v if _is_ref(v) or v == read else read
    return out


def _is_ref(v) -> bool:
    return isinstance(v, str) and v.startswith("@")


def _strip_refs(options: dict) -> dict:
    """Options with ``@ID`` references replaced by a placeholder path, for validation only."""
    return {k: ("/nonexistent/" + v[1:] if isinstance(v, str) and v.startswith("@") else v) for k, v in options.items()}


def apply_overrides(recipe: Recipe, sets: list[str]) -> Recipe:
    """``--set ID.key=value`` (or ``STAGE.key=value`` when the stage name is unique) -> new options."""
    from .stages import make_stage
    from .floor.options import parse_set

    if not sets:
        return recipe
    entries = [dataclasses.replace(s, options=dict(s.options)) for s in recipe.stages]
    for item in sets:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--set {item!r}: expected STAGE_ID.key=value (stage ids: {', '.join(s.id for s in entries)})")
        target, kv = item.split(".", 1)
        matches = [s for s in entries if s.id == target] or [s for s in entries if s.stage == target]
        if not matches:
            raise UserError(f"--set {item!r}: no stage {target!r} in {recipe.name} (ids: {', '.join(s.id for s in entries)})")
        if len(matches) > 1:
            raise UserError(f"--set {item!r}: stage name {target!r} is used {len(matches)} times; use its id ({', '.join(s.id for s in matches)})")
        for m in matches:
            m.options.update(parse_set([kv]))
            try:
                m.options = normalized_options(make_stage(m.stage, _strip_refs(m.options)), m.options)
            except UserError as e:
                raise UserError(f"--set {item!r}: {e}") from None
    return dataclasses.replace(recipe, stages=entries)


def recipe_header(path: Path) -> dict:
    """The ``family:`` and ``description:`` of a recipe file, read without validating the stages (``ls`` stays
    light). A file that cannot be read says so in its description."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return {"family": DEFAULT_FAMILY, "description": f"(unreadable: {type(e).__name__})"}
    doc = doc if isinstance(doc, dict) else {}
    return {"family": str(doc.get("family", DEFAULT_FAMILY)), "description": str(doc.get("description") or "")}


def recipe_family(path: Path) -> str:
    """The ``family:`` of a recipe file (read without validating the stages)."""
    return recipe_header(path)["family"]


def list_recipes() -> list[dict]:
    """The shipped recipes: name, family, file and description, the last two as the file says."""
    rows = []
    for n, f in RECIPES:
        h = recipe_header(RECIPES_DIR / f)
        rows.append({"name": n, "family": h["family"], "file": str(RECIPES_DIR / f), "description": h["description"]})
    return rows


def check_recipe_family(recipe: Recipe, base) -> None:
    """One line, before any work, when a local ``base`` is of another family than the recipe's."""
    from .families import family_for, family_named
    from .floor.modeldir import read_model_type
    from .modelio import is_local

    if not is_local(base) or not (Path(base) / "config.json").is_file():
        return
    fam = family_for(base)
    if fam.name != recipe.family:
        raise UserError(f"recipe {recipe.name} is for {family_named(recipe.family).label} models (family: {recipe.family}), "
                        f"but {base} is a {fam.label} model (model_type {read_model_type(base)!r}); "
                        f"pick a {fam.name} recipe (iwslt-mc ls)")


def copy_recipe(name: str, dest: str | Path, *, force: bool = False) -> Path:
    src = recipe_path(name)
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        raise UserError(f"{dest}: already exists (use --force to overwrite)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def _key_lines(mapping_node) -> dict:
    out = {}
    for k, v in getattr(mapping_node, "value", []) or []:
        if hasattr(k, "value"):
            out[k.value] = k.start_mark.line + 1
    return out


def _seq_item_nodes(mapping_node, key: str) -> list:
    for k, v in getattr(mapping_node, "value", []) or []:
        if getattr(k, "value", None) == key:
            return list(getattr(v, "value", []) or [])
    return []
