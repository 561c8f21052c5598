"""Parses `vllm serve` argument lists with vLLM's own parser: `parse_serve_args.py IN.json OUT.json`.

IN is a JSON list of argument lists (what follows `vllm serve`); OUT gets {"version": ...,
"errors": [...]}, one entry per list: null when vLLM accepts it, else argparse's message.
Run with the pinned image's vLLM release on PYTHONPATH (`make vllm-args` puts vllm==0.33.0,
without its dependencies, in .vllm-args/) over the vLLM environment's torch and libraries.
That wheel is a CUDA build; VLLM_TARGET_DEVICE=cpu lets it load its configuration classes
without a GPU (vllm/platforms/__init__.py, cpu_platform_plugin).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


def main(src: str, dst: str) -> None:
    argvs = json.loads(open(src).read())
    import vllm
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    errors: list[str | None] = []
    for argv in argvs:
        parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                parser.parse_args(argv)
            errors.append(None)
        except SystemExit:
            lines = captured.getvalue().strip().splitlines()
            errors.append(lines[-1] if lines else "refused")
    with open(dst, "w") as out:
        json.dump({"version": vllm.__version__, "errors": errors}, out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: parse_serve_args.py IN.json OUT.json")
    main(sys.argv[1], sys.argv[2])
