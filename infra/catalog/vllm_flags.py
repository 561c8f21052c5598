"""The `vllm serve` flags of the pinned image's vLLM release (vllm_cli.yaml, written by that
release's own parser: `make vllm-flags`), and how vLLM's parser reads an argument list, so
config validation refuses what `vllm serve` would refuse before a pod ever starts."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

CATALOG = Path(__file__).parent / "vllm_cli.yaml"
_NUMBER = re.compile(r"^-\d+(\.\d*)?$|^-\.\d+$")


@dataclass(frozen=True)
class VllmFlag:
    dest: str
    # None: a switch; "one", "optional" or "many": what it takes after it (argparse's nargs).
    value: str | None = None
    choices: tuple[str, ...] = ()
    json: bool = False


@dataclass(frozen=True)
class Option:
    """One option of an argument list as vLLM reads it."""

    text: str
    flag: VllmFlag
    values: tuple[str, ...]


@dataclass(frozen=True)
class VllmCli:
    version: str
    flags: dict[str, VllmFlag]

    def flag(self, option: str) -> VllmFlag | None:
        """The flag an option names, as FlexibleArgumentParser.parse_args reads it
        (vllm/utils/argparse_utils.py, vLLM 0.33.0): dashes and underscores alike in a long
        name up to its first dot, `--x.key` a sub-key of a JSON flag `--x`, `-O<n>` for
        `--optimization-level <n>`."""
        if option.startswith("--"):
            name, dot, _ = option[2:].partition(".")
            found = self.flags.get("--" + name.replace("_", "-"))
            if dot:
                return found if found is not None and found.json else None
            return found
        if option.startswith("-O"):
            return self.flags.get("--optimization-level")
        return self.flags.get(option)

    def read(self, args: list[str]) -> list[Option]:
        """The options of `args` (what follows the model in `vllm serve MODEL ...`); ValueError
        naming the argument vLLM's parser would refuse, and what it would take instead."""
        options: list[Option] = []
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if not arg.startswith("-") or _NUMBER.match(arg):
                raise ValueError(f"{arg!r} is neither a flag nor the value of one")
            text, eq, inline = arg.partition("=")
            if text.startswith("-O") and not text.startswith("--") and text != "-O":
                text, eq, inline = "-O", "=", text[2:].lstrip("=")
            flag = self.flag(text)
            if flag is None and text.startswith("--"):
                longer = sorted(o for o in self.flags if o.startswith(text.replace("_", "-")))
                if len(longer) == 1:
                    # argparse takes an unambiguous prefix (allow_abbrev), but a flag a later
                    # release adds can make it ambiguous, so the config names flags in full.
                    raise ValueError(f"{text} abbreviates {longer[0]}; write it in full")
            if flag is None:
                near = difflib.get_close_matches(text, self.flags, n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                raise ValueError(f"{text} is not a `vllm serve` flag in vLLM {self.version}{hint}")
            if flag.value is None:
                if eq:
                    raise ValueError(f"{text} is a switch and takes no value")
                options.append(Option(text, flag, ()))
                continue
            values: list[str] = [inline] if eq else []
            if not eq:
                while i < len(args) and (not args[i].startswith("-") or _NUMBER.match(args[i])):
                    values.append(args[i])
                    i += 1
                    if flag.value != "many" or "." in text:
                        break
            if not values and flag.value in ("one", "many"):
                raise ValueError(f"{text} takes a value")
            if flag.choices and "." not in text:
                wrong = [v for v in values if v not in flag.choices]
                if wrong:
                    raise ValueError(f"{text} takes one of {', '.join(flag.choices)}; not {wrong[0]!r}")
            options.append(Option(text, flag, tuple(values)))
        return options


@cache
def vllm_cli() -> VllmCli:
    raw = yaml.safe_load(CATALOG.read_text())
    flags = {
        option: VllmFlag(
            dest=entry["dest"],
            value=entry.get("value"),
            choices=tuple(entry.get("choices", ())),
            json=bool(entry.get("json", False)),
        )
        for option, entry in raw["flags"].items()
    }
    return VllmCli(version=str(raw["version"]), flags=flags)
