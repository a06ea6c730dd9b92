"""Fill the README's generated blocks from the commands that compute them (no typed numbers).

A block is ``<!-- NAME: ARGS -->`` ... ``<!-- /NAME -->``; its body is the output of
``preftune memory ARGS`` (NAME ``memory``, in a fenced block, the command named above it), the table
of a saved ``make bench`` run (NAME ``bench``, ARGS its JSON file: ``python bench/run.py --render``),
or the results of a saved run (NAME ``results``, ARGS its results file and any flags: ``preftune report FILE --markdown``).

    python scripts/render_readme.py           rewrite README.md in place
    python scripts/render_readme.py --check   exit 1 (and say which block) if README.md is stale
"""

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

from preftune.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- (memory|bench|results): (.*?) -->\n.*?<!-- /\1 -->\n", re.S)


def render(text: str) -> str:
    def fill(m: re.Match) -> str:
        name, args = m.group(1), m.group(2)
        if name == "bench":
            cmd = [sys.executable, str(ROOT / "bench/run.py"), "--render", str(ROOT / args)]
            table = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.rstrip()
            return f"<!-- {name}: {args} -->\n{table}\n<!-- /{name} -->\n"
        out = io.StringIO()
        command = ["report", *shlex.split(args), "--markdown"] if name == "results" else [name, *shlex.split(args)]
        with contextlib.redirect_stdout(out):
            if main(command) != 0:
                raise SystemExit(f"README block `preftune {' '.join(command)}` failed")
        if name == "results":
            return f"<!-- {name}: {args} -->\n{out.getvalue().rstrip()}\n<!-- /{name} -->\n"
        return f"<!-- {name}: {args} -->\n`preftune {name} {args}`:\n\n```\n{out.getvalue().rstrip()}\n```\n<!-- /{name} -->\n"

    return BLOCK.sub(fill, text)


if __name__ == "__main__":
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv[1:]:
        if new != text:
            sys.exit("README.md is stale: run `python scripts/render_readme.py` (generated blocks differ)")
    else:
        README.write_text(new)
