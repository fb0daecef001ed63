"""Write or check the lock: the exact package versions the test suite passed with (folder ``lock/``).

    python tools/lock.py write --venv V [--comet-venv C] [--note TEXT]   # lock/ from what V (and C) hold
    python tools/lock.py check --venv .venv [--comet-venv .venv-comet]   # does V hold exactly the locked set?

``tools/refresh_lock.sh`` runs ``write`` after the suite passed in fresh unlocked environments; setup.sh and
``iwslt-mc setup-comet`` install with the files as pip constraints (``-c``); ``.ci/run`` runs ``check``.

Files: ``lock/constraints.txt`` (iwslt-mc's environment, torch and the packages only torch needs left out),
``lock/torch.txt`` (the torch the suite ran with and the packages only it needs: setup.sh applies it only
when it installs torch itself, so a machine with another torch, e.g. a CUDA build reused through
``--system-site-packages``, still installs), ``lock/comet.txt`` (the COMET environment, torch group left out
the same way). The editable iwslt-mc and pip/setuptools/wheel are never pinned (as ``pip freeze``).
Stdlib only; the inventory runs in each environment's own Python.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "lock"
NOT_PINNED = {"pip", "setuptools", "wheel", "distribute", "iwslt-mc"}

# Run by the environment's Python: {name: {"version", "requires": [names], "editable"}} of what it holds.
INVENTORY = r"""
import json, re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
def norm(n):
    return re.sub(r"[-_.]+", "-", n).lower()
out = {}
for d in metadata.distributions():
    name = d.metadata["Name"]
    if not name or norm(name) in out:
        continue
    reqs = []
    for r in d.requires or []:
        try:
            req = Requirement(r)
        except Exception:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            reqs.append(norm(req.name))
    direct = d.read_text("direct_url.json") or "{}"
    out[norm(name)] = {"name": name, "version": d.version, "requires": reqs,
                       "editable": json.loads(direct).get("dir_info", {}).get("editable", False)}
print(json.dumps(out))
"""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def inventory(venv: Path) -> dict:
    py = venv / "bin" / "python"
    if not py.exists():
        sys.exit(f"lock: {venv}: not a virtual environment (no bin/python)")
    r = subprocess.run([str(py), "-I", "-c", INVENTORY], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"lock: {venv}: cannot list its packages: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout)


def torch_group(inv: dict) -> set[str]:
    """torch and the packages only torch needs (reachable from torch, from nothing else)."""
    if "torch" not in inv:
        return set()

    def closure(starts, stop=frozenset()):
        seen, todo = set(), list(starts)
        while todo:
            n = todo.pop()
            if n in seen or n not in inv or n in stop:
                continue
            seen.add(n)
            todo.extend(inv[n]["requires"])
        return seen

    of_torch = closure(["torch"])
    others = closure([n for n in inv if n not in of_torch], stop=frozenset({"torch"}))
    return of_torch - others


def pins(inv: dict, names) -> list[str]:
    return [f"{inv[n]['name']}=={inv[n]['version']}" for n in sorted(names, key=lambda n: inv[n]["name"].lower())
            if n not in NOT_PINNED and not inv[n]["editable"]]


def read_pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[norm(name)] = version.strip()
    return out


def _header(title: str, note: str | None) -> list[str]:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [f"# {title}",
             f"# The versions of the environment the test suite passed in, written on {when} by tools/lock.py write",
             f"# (tools/refresh_lock.sh; CPython {platform.python_version()}, {platform.machine()} {platform.system()}). "
             "Do not edit by hand.",
             "# Used as pip constraints (-c); IWSLT_MC_UNLOCKED=1 installs without them."]
    if note:
        lines.append(f"# suite: {note}")
    return lines


def write(args) -> None:
    inv = inventory(Path(args.venv))
    group = torch_group(inv)
    if "torch" not in group:
        sys.exit(f"lock: {args.venv} has no torch: nothing to lock against")
    LOCK.mkdir(exist_ok=True)
    torch_version = inv["torch"]["version"].split("+")[0]
    files = {
        "constraints.txt": _header("iwslt-mc's environment (setup.sh).", args.note) + [
            "# torch is not here: setup.sh chooses the build per machine. When it installs torch itself it takes the",
            f"# version of lock/torch.txt (torch=={torch_version}: the CPU wheel without a GPU, PyPI's CUDA build with one)",
            "# and that file's pins of the packages only torch needs; a torch already installed (a CUDA build reused",
            "# through --system-site-packages) is kept with its own dependencies, so another torch still installs.",
            *pins(inv, set(inv) - group)],
        "torch.txt": _header("torch and the packages only torch needs (setup.sh, setup-comet: when they install torch).",
                             args.note) + [
            f"# the suite ran with torch {inv['torch']['version']}; ==X.Y.Z also matches a CUDA build's +cuNNN label",
            *pins({**inv, "torch": {**inv["torch"], "version": torch_version}}, group)],
    }
    if args.comet_venv:
        cinv = inventory(Path(args.comet_venv))
        cgroup = torch_group(cinv) | {"torch"}
        files["comet.txt"] = _header("the COMET environment (iwslt-mc setup-comet; iwslt_mc/scoring/comet_env.py).", args.note) + [
            "# torch and the packages only it needs are not here: setup-comet reuses an installed torch or installs",
            "# lock/torch.txt's.",
            *pins(cinv, set(cinv) - cgroup)]
    for name, lines in files.items():
        tmp = LOCK / f".{name}.tmp"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(LOCK / name)
        print(f"lock: wrote {LOCK / name} ({sum(1 for ln in lines if not ln.startswith('#'))} pins)")


def _diff(inv: dict, locked: dict[str, str], where: str, skip=frozenset()) -> list[str]:
    have = {n: d["version"] for n, d in inv.items() if n not in NOT_PINNED and not d["editable"] and n not in skip}
    out = []
    for n in sorted(set(have) | set(locked)):
        if n in skip:
            continue
        if n not in have:
            out.append(f"{where}: {n}=={locked[n]} locked, not installed")
        elif n not in locked:
            out.append(f"{where}: {n}=={have[n]} installed, not in the lock")
        elif have[n].split("+")[0] != locked[n].split("+")[0]:
            out.append(f"{where}: {n} {have[n]} installed, {locked[n]} locked")
    return out


def check(args) -> int:
    inv = inventory(Path(args.venv))
    locked = read_pins(LOCK / "constraints.txt")
    torch_locked = read_pins(LOCK / "torch.txt")
    same_torch = "torch" in inv and inv["torch"]["version"].split("+")[0] == torch_locked.get("torch")
    problems = _diff(inv, {**locked, **(torch_locked if same_torch else {})}, str(args.venv),
                     skip=frozenset() if same_torch else frozenset(torch_group(inv)))
    if not same_torch:
        print(f"lock: {args.venv}: torch {inv.get('torch', {}).get('version')} is not the locked "
              f"{torch_locked.get('torch')}: torch and the packages only it needs not compared")
    n = len(locked) + (len(torch_locked) if same_torch else 0)
    if args.comet_venv:
        cinv = inventory(Path(args.comet_venv))
        clocked = read_pins(LOCK / "comet.txt")
        problems += _diff(cinv, clocked, str(args.comet_venv), skip=frozenset(torch_group(cinv) | {"torch"}))
        n += len(clocked)
    for p in problems:
        print(f"lock: {p}")
    print(f"lock: {'MISMATCH' if problems else 'OK'}: {n} locked versions compared, {len(problems)} differ")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write lock/ from environments the suite passed in")
    w.add_argument("--venv", required=True)
    w.add_argument("--comet-venv")
    w.add_argument("--note", help="one line on the suite run, kept in the files' headers")
    c = sub.add_parser("check", help="exit 1 unless the environments hold exactly the locked versions")
    c.add_argument("--venv", default=str(ROOT / ".venv"))
    c.add_argument("--comet-venv")
    args = ap.parse_args()
    if args.cmd == "write":
        write(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
