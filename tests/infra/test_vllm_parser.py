"""Every rendered `vllm serve` command, parsed by the argument parser of the pinned image's vLLM.

Not a list of flags written here: vllm==0.33.0's own make_arg_parser (tools/vllm/parse_serve_args.py,
`make vllm-args`), so a flag that release does not know, a bad choice or a malformed value fails.
The shipped stacks, stacks hypothesis makes up (with extraArgs drawn from the catalog) and the
extraArgs config validation refuses all go through one start of vLLM's imports, which also gives
the flag catalog config validation reads (infra/catalog/vllm_cli.yaml), to hold it to its source.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from infra.catalog.vllm_flags import CATALOG, vllm_cli
from infra.config import DERIVED_DESTS, ConfigError, parse
from infra.plan.scheduling import pods
from infra.workloads.vllm_args import serve_args
from tests.infra.test_config import base
from tests.infra.test_generated_stacks import parse_generated, stack_configs
from tests.stacks import REPO, SENTINELS, SHIPPED, record_raw

PYTHON = REPO / ".venv-vllm" / "bin" / "python"
RELEASE = REPO / ".vllm-args"
SCRIPT = REPO / "tools" / "vllm" / "parse_serve_args.py"
GENERATED = 12
# extraArgs that config validation refuses because vLLM would (tests/infra/test_config.py has
# the messages); the parser must refuse each too, or the catalog is stricter than vLLM.
# (Stricter than vLLM on purpose: argparse takes an unambiguous prefix such as --max-num-seq,
# which config validation refuses, since a later release's new flag can make it ambiguous.)
REFUSED = [
    ["--dtype", "fp64"],
    ["--scheduling-policy=lifo"],
    ["--max-num-seqs"],
    ["--enforce-eager=yes"],
    ["--enforce-eager", "64"],
    ["--no-such-flag"],
]


def serve_commands(graph) -> list[list[str]]:
    argvs = []
    for pod in pods(graph):
        for c in pod.spec["containers"]:
            if c["name"] == "vllm":
                assert c["command"] == ["vllm", "serve"]
                argvs.append(c["args"])
    return argvs


def generated_commands(n: int) -> list[list[str]]:
    """The vllm commands of n stacks hypothesis makes up; each config passes validation first."""
    argvs: list[list[str]] = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(stack_configs())
    def collect(raw):
        parse_generated(raw)
        argvs.extend(serve_commands(record_raw("gen", raw, SENTINELS)))

    collect()
    return argvs


@pytest.fixture(scope="module")
def parsed(graphs, tmp_path_factory):
    if not (RELEASE / ".synced").exists():
        pytest.fail("no vLLM release for the parser: run `make vllm-args` (make test does)")
    shipped = [a for stack in SHIPPED for a in serve_commands(graphs[stack])]
    generated = generated_commands(GENERATED)
    model = shipped[0][:1]
    # Controls: the parser refuses what it does not know and malformed values.
    controls = [shipped[0] + ["--no-such-flag"], shipped[0] + ["--max-model-len", "lots"]]
    refused = [model + args for args in REFUSED]
    groups = {"shipped": shipped, "generated": generated, "controls": controls, "refused": refused}
    tmp = tmp_path_factory.mktemp("vllm-parser")
    src, dst = tmp / "argv.json", tmp / "out.json"
    src.write_text(json.dumps([a for g in groups.values() for a in g]))
    env = {"PYTHONPATH": str(RELEASE), "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(PYTHON), str(SCRIPT), str(src), str(dst)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(dst.read_text())
    errors = iter(out["errors"])
    results = {name: [(argv, next(errors)) for argv in argvs] for name, argvs in groups.items()}
    return out["version"], out["catalog"], results


def test_the_parser_is_the_pinned_images_release(parsed):
    version, _, _ = parsed
    assert version == vllm_cli().version
    image_tag = base()["images"]["vllm"].rsplit(":", 1)[1]
    assert image_tag == f"v{version}"


def test_every_shipped_vllm_command_parses(parsed):
    _, _, results = parsed
    assert results["shipped"]
    assert [(a, e) for a, e in results["shipped"] if e] == []


def test_every_generated_vllm_command_parses(parsed):
    """Config validation accepted these extraArgs (switches in every spelling, choices, -O<n>);
    vLLM must accept them too, or validation lets through a pod that exits on start."""
    _, _, results = parsed
    assert len(results["generated"]) >= GENERATED
    assert any(len(a) > len(results["shipped"][0]) for a, _ in results["generated"])  # extraArgs were drawn
    assert [(a, e) for a, e in results["generated"] if e] == []


def test_the_parser_refuses_what_config_validation_refuses(parsed):
    _, _, results = parsed
    (unknown, unknown_error), (malformed, malformed_error) = results["controls"]
    assert "unrecognized arguments: --no-such-flag" in unknown_error
    assert malformed_error is not None and "max-model-len" in malformed_error
    for (_argv, error), args in zip(results["refused"], REFUSED, strict=True):
        assert error is not None, f"vLLM accepts {args}, which config validation refuses"
        raw = base()
        raw["models"][0]["extraArgs"] = args
        with pytest.raises(ConfigError):
            parse(raw)


def catalog_drift(committed: dict, generated: dict) -> list[str]:
    """How the committed catalog differs from the one the parser gives."""
    problems = []
    if str(committed["version"]) != generated["version"]:
        problems.append(f"version {committed['version']} != {generated['version']}")
    for option in sorted(committed["flags"].keys() | generated["flags"].keys()):
        ours, theirs = committed["flags"].get(option), generated["flags"].get(option)
        if ours != theirs:
            problems.append(f"{option}: catalog {ours}, parser {theirs}")
    return problems


def test_the_flag_catalog_is_what_the_parser_gives(parsed):
    _, generated, _ = parsed
    committed = yaml.safe_load(CATALOG.read_text())
    assert catalog_drift(committed, generated) == [], "run `make vllm-flags`"
    # Control: a flag dropped from the catalog, and a choice added, are both reported.
    edited = json.loads(json.dumps(committed))
    del edited["flags"]["--max-num-seqs"]
    edited["flags"]["--dtype"]["choices"].append("fp64")
    assert len(catalog_drift(edited, generated)) == 2


def test_derived_flags_are_reserved():
    """Every flag the command derives from the model's keys is one extraArgs may not repeat."""
    cli = vllm_cli()
    model = parse(base()).models[0]
    derived = {o.flag.dest for o in cli.read(serve_args(model)[1:])}
    assert "max_model_len" in derived
    assert derived - {"enable_prefix_caching"} <= DERIVED_DESTS
    assert DERIVED_DESTS <= {f.dest for f in cli.flags.values()}
