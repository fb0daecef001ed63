"""Run every command of the README's walkthrough, as written, on the demo kit.

    python tools/walkthrough_kit.py [--work DIR]

Commands are read from the ```bash blocks of README.md's "Walkthrough" section (step 0, which
downloads, is skipped), with BASE/ACL/TEST pointing at a fresh kit. On the kit, `build` gets
`--smoke` (the recipes remove more layers than the kit has); the COMET line uses a tiny offline
checkpoint when the COMET environment exists, and is skipped otherwise. Stops at the first failure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def walkthrough_commands(readme: Path) -> list[str]:
    text = readme.read_text()
    section = text.split("## Walkthrough", 1)[1].split("### Several GPUs", 1)[0]
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith(("hf download", "python -c")):
                cmds.append(line)
    return cmds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="working directory (default: a new temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="iwslt-mc-walkthrough-"))
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               BASE=str(work / "kit" / "model"), ACL=str(work / "kit" / "data"), TEST=str(work / "kit" / "data" / "long"))
    subprocess.run(["iwslt-mc", "kit", str(work / "kit")], env=env, check=True, stdout=subprocess.DEVNULL)
    # TESTS: the kit's two test-set folders under two of the edition's test-set names
    tests = work / "tests"
    tests.mkdir(exist_ok=True)
    for name, kit_set in (("acl", "KITTALKS"), ("tvseries", "KITCLIPS")):
        if not (tests / name).exists():
            (tests / name).symlink_to(work / "kit" / "data" / "testsets" / kit_set)
    env["TESTS"] = str(tests)
    from iwslt_mc.scoring import comet_env

    tiny = None
    if comet_env.is_ready(comet_env.default_env_dir()):
        tiny = str(comet_env.make_tiny_checkpoint(work / "tiny-comet"))
    for cmd in walkthrough_commands(ROOT / "README.md"):
        run = cmd
        if " build " in f" {cmd} " and "--smoke" not in cmd:
            run = cmd.replace(" && iwslt-mc build", " && iwslt-mc build") + " --smoke"
        if "--comet " in cmd:
            if tiny is None:
                print(f"SKIP (no COMET environment): {cmd}")
                continue
            run = re.sub(r"--comet \S+", f"--comet {tiny}", cmd)
        t = time.time()
        r = subprocess.run(["bash", "-c", run], cwd=work, env=env, capture_output=True, text=True)
        status = "ok" if r.returncode == 0 else f"FAILED (exit {r.returncode})"
        print(f"{status:>6} {time.time() - t:6.1f}s  {run}")
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
            return 1
    print(f"all walkthrough commands ran in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
