"""Hybrid routing: rules choose self-hosted models or hosted providers, a chain of providers on
429, 5xx or unavailability, and spill to hosted on a TTFT budget or a cold model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from gateway_testkit import FAST, eventually, gateway_env, metric_sum, scrape
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.devstack import free_port, make_key, start_gateway, start_simulator
from app.gateway.hybrid import Match, RouteInput, Rule, first_match, matches
from app.gateway.settings import GatewaySettings, describe_error

HOSTED_KEY_A = "sk-SENTINEL0provider0a"
HOSTED_KEY_B = "sk-SENTINEL0provider0b"

# -- rules as plain objects --------------------------------------------------------------------

_names = st.sampled_from(["free", "pro", "chat", "big", "summarize", "code"])
_inputs = st.builds(
    RouteInput,
    tier=st.none() | _names,
    model=_names,
    prompt_tokens=st.integers(0, 20_000),
    ttft_budget_ms=st.none() | st.floats(1, 10_000),
    task=st.none() | _names,
)
_conditions = st.fixed_dictionaries(
    {},
    optional={
        "tiers": st.lists(_names, min_size=1, max_size=3),
        "models": st.lists(_names, min_size=1, max_size=3),
        "tasks": st.lists(_names, min_size=1, max_size=3),
        "min_prompt_tokens": st.integers(0, 10_000),
        "max_prompt_tokens": st.integers(10_000, 20_000),
        "max_ttft_budget_ms": st.floats(1, 10_000),
    },
)


@given(_conditions, _inputs)
def test_each_condition_a_rule_adds_narrows_what_it_matches(conditions, request):
    # Every condition must hold: a rule matches only where each of its one-condition rules does,
    # and the rule without conditions matches everything.
    assert matches(Match(), request)
    alone = [matches(Match(**{k: v}), request) for k, v in conditions.items()]
    assert matches(Match(**conditions), request) == all(alone)


@given(st.lists(_conditions, min_size=1, max_size=5), _inputs)
def test_the_first_matching_rule_decides(conditions, request):
    rules = tuple(Rule(name=f"r{i}", match=Match(**c), model="m") for i, c in enumerate(conditions))
    chosen = first_match(rules, request)
    fitting = [r for r in rules if matches(r.match, request)]
    assert chosen == (fitting[0] if fitting else None)


def test_conditions_read_the_request_as_documented():
    r = RouteInput(tier="free", model="chat", prompt_tokens=5000, ttft_budget_ms=300, task="summarize")
    assert matches(Match(tiers=("free",), models=("chat",), tasks=("summarize",)), r)
    assert not matches(Match(tiers=("pro",)), r)
    assert matches(Match(min_prompt_tokens=5000, max_prompt_tokens=5000), r)
    assert not matches(Match(min_prompt_tokens=5001), r)
    assert matches(Match(max_ttft_budget_ms=300), r)
    assert not matches(Match(max_ttft_budget_ms=299), r)
    # A request without a budget is not a tight one.
    no_budget = RouteInput(tier=None, model="chat", prompt_tokens=1, ttft_budget_ms=None, task=None)
    assert not matches(Match(max_ttft_budget_ms=10_000), no_budget)
    assert not matches(Match(tiers=("free",)), no_budget)


# -- bad rules are refused at start with one line naming the variable --------------------------

_PROVIDERS = json.dumps([{"name": "a", "base_url": "https://a.example/v1"}])
_KEYS = json.dumps({"a": "sk-a"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"routes": '[{"name": "r", "providers": ["nope"]}]'},
            "GATEWAY_ROUTES[0] (r).providers[0]: unknown provider 'nope' (providers: a)",
        ),
        ({"routes": '[{"name": "r"}]'}, "GATEWAY_ROUTES[0]: rule 'r' sets neither model nor providers"),
        (
            {"routes": '[{"name": "r", "model": "m", "match": {"tier": ["free"]}}]'},
            "GATEWAY_ROUTES[0].match.tier: Extra inputs are not permitted",
        ),
        (
            {"routes": '[{"name": "r", "model": "m", "match": {"min_prompt_tokens": 9, "max_prompt_tokens": 1}}]'},
            "GATEWAY_ROUTES[0].match: min_prompt_tokens (9) is above max_prompt_tokens (1)",
        ),
        (
            {"routes": '[{"name": "r", "model": "m"}, {"name": "r", "model": "m"}]'},
            "GATEWAY_ROUTES[1] (r): a rule of that name comes earlier; names must be unique",
        ),
        ({"routes": '[{"name": "r", "model": "other"}]', "models": "m"}, "GATEWAY_ROUTES[0] (r).model: "),
        ({"routes": "[{"}, "GATEWAY_ROUTES='[{': not JSON"),
        ({"fallback_chain": "a,ghost:gpt"}, "GATEWAY_FALLBACK_CHAIN[1]: unknown provider 'ghost' (providers: a)"),
        ({"fallback_chain": "a b"}, "GATEWAY_FALLBACK_CHAIN='a b': 'a b' is not `<provider>` or `<provider>:<model>`"),
        ({"provider_keys": "{}"}, "GATEWAY_PROVIDER_KEYS has no key for provider 'a'"),
        ({"provider_keys": '{"a": "sk-a", "b": "sk-b"}'}, "GATEWAY_PROVIDER_KEYS: 'b' is not a provider"),
        ({"provider_keys": "sk-not-json"}, "GATEWAY_PROVIDER_KEYS: not JSON"),
        (
            {"providers": '[{"name": "a", "base_url": "https://a.example"}]'},
            "GATEWAY_PROVIDERS[0].base_url='https://a.example': ",
        ),
    ],
)
def test_bad_rules_and_providers_fail_with_one_line(env, message, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("")
    values = {"upstreams": "http://r:8000", "api_keys_file": str(keys), "providers": _PROVIDERS, "provider_keys": _KEYS}
    with pytest.raises(ValidationError) as err:
        GatewaySettings(**{**values, **env})
    text = describe_error(err.value)
    assert text.startswith(message), text
    assert "\n" not in text and "sk-not-json" not in text and "sk-a" not in text


def test_good_rules_are_accepted(tmp_path):
    # The control for the table above: the same settings with nothing wrong.
    keys = tmp_path / "keys"
    keys.write_text("")
    s = GatewaySettings(
        upstreams="http://r:8000",
        api_keys_file=str(keys),
        providers=_PROVIDERS,
        provider_keys=_KEYS,
        fallback_chain="a:gpt-4o-mini",
        models="m",
        routes='[{"name": "r", "model": "m", "providers": ["a"], "match": {"tiers": ["free"]}}]',
    )
    assert [str(h) for h in s.default_chain()] == ["a:gpt-4o-mini"]
    assert s.routes[0].match.tiers == ("free",)


# -- against processes -------------------------------------------------------------------------


class _TooMany(BaseHTTPRequestHandler):
    """A hosted provider that is over its rate limit: 429 in OpenAI's shape, every time."""

    hits = 0

    def do_POST(self) -> None:  # the name http.server calls
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}})
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def too_many():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TooMany)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def tiered_keys(log_dir):
    made = {name: make_key() for name in ("free", "pro", "budget")}
    options = {"free": "tier=free", "pro": "tier=pro", "budget": "ttft_budget_ms=200"}
    path = log_dir / "tiered-keys"
    path.write_text("".join(f"{n} {d} {options[n]}\n" for n, (_, d) in made.items()))
    return path, {n: k for n, (k, _) in made.items()}


@pytest.fixture(scope="module")
def hybrid(log_dir, procs, redis_server, tiered_keys, too_many):
    """A replica serving sim-model at 1 ms a prompt token, and three hosted providers: one over
    its rate limit, one failing every request, one good that serves `hosted-model`."""
    replica = procs(start_simulator(log_dir, ttft_ms=5, itl_ms=1, prefill_ms_per_token=1.0))
    failing = procs(start_simulator(log_dir, api_key=HOSTED_KEY_A, fail_rate=1.0, **FAST))
    good = procs(start_simulator(log_dir, api_key=HOSTED_KEY_B, model="hosted-model", **FAST))
    dead = f"http://127.0.0.1:{free_port()}"
    providers = [
        {"name": "limited", "base_url": too_many + "/v1"},
        {"name": "down", "base_url": dead + "/v1"},
        {"name": "failing", "base_url": failing.url + "/v1"},
        {"name": "good", "base_url": good.url + "/v1"},
    ]
    keys = {"limited": "sk-x", "down": "sk-y", "failing": HOSTED_KEY_A, "good": HOSTED_KEY_B}
    routes = [
        {"name": "free-to-hosted", "match": {"tiers": ["free"]}, "providers": ["limited", "down", "good:hosted-model"]},
        {"name": "alias", "match": {"models": ["gpt-4o-mini"]}, "model": "sim-model"},
        {"name": "summaries", "match": {"tasks": ["summarize"]}, "providers": ["failing", "good:hosted-model"]},
        {"name": "doomed", "match": {"tasks": ["doomed"]}, "providers": ["down", "limited"]},
        {"name": "lost", "match": {"tasks": ["lost"]}, "providers": ["down"]},
    ]
    path, plain = tiered_keys
    env = gateway_env(
        _Keys(path),
        redis_server.url,
        [replica.url],
        models="sim-model",
        providers=json.dumps(providers),
        provider_keys=json.dumps(keys),
        fallback_chain="good:hosted-model",
        routes=json.dumps(routes),
        # The replica's own pace: 1 ms a token, so 1,000 tokens a second.
        prefill_tokens_per_s=1000,
        affinity_prefix_chars=0,
    )
    gw = procs(start_gateway(log_dir, env))
    return gw, replica, plain


class _Keys:
    def __init__(self, path):
        self.path = path


def _chat(gw, key, content="hello there", model="sim-model", headers=None, stream=False):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=2,
        extra_headers=headers or {},
        stream=stream,
    )


def _replica_served(replica) -> float:
    return metric_sum(scrape(replica.url), "vllm:request_success_total")


def test_a_tier_rule_sends_to_hosted_down_the_chain_past_429_and_unreachable(hybrid, too_many):
    gw, replica, keys = hybrid
    before, limited_before = _replica_served(replica), _TooMany.hits
    out = _chat(gw, keys["free"])
    assert out.model == "hosted-model"  # the chain's third hop asked for its own model
    streamed = list(_chat(gw, keys["free"], stream=True))
    assert streamed and streamed[0].model == "hosted-model"
    assert _replica_served(replica) == before  # never the replica: the rule names providers only
    assert _TooMany.hits - limited_before == 2
    # A stream's attempt is counted once the gateway has sent its last byte, which the client
    # may have read a moment before.
    eventually(lambda: metric_sum(scrape(gw.metrics_url), "gateway_hosted_requests_total", provider="good") == 2)
    m = scrape(gw.metrics_url)
    assert metric_sum(m, "gateway_hosted_requests_total", provider="limited", outcome="error") == 2
    assert metric_sum(m, "gateway_hosted_requests_total", provider="down", outcome="error") == 2
    assert metric_sum(m, "gateway_hosted_requests_total", provider="good", outcome="ok") == 2
    assert metric_sum(m, "gateway_route_rules_total", rule="free-to-hosted") == 2
    assert metric_sum(m, "gateway_upstream_requests_total", upstream="hosted:limited", outcome="http_429") == 2
    # The control: a key of another tier is served here.
    assert _chat(gw, keys["pro"]).model == "sim-model"
    assert _replica_served(replica) == before + 1
    log = gw.log()
    assert '"rule":"free-to-hosted"' in log
    assert HOSTED_KEY_B not in log and "sk-x" not in log


def test_an_alias_rule_asks_the_self_hosted_model(hybrid):
    gw, replica, keys = hybrid
    before = _replica_served(replica)
    out = _chat(gw, keys["pro"], model="gpt-4o-mini")
    assert out.model == "sim-model"
    assert _replica_served(replica) == before + 1
    assert metric_sum(scrape(gw.metrics_url), "gateway_route_rules_total", rule="alias") >= 1
    # The control: a name no rule maps and no replica serves goes down the fallback chain.
    assert _chat(gw, keys["pro"], model="gpt-unknown").model == "hosted-model"
    assert _replica_served(replica) == before + 1


def test_a_task_header_rule_and_a_5xx_provider_passing_to_the_next(hybrid):
    gw, replica, keys = hybrid
    before = _replica_served(replica)
    out = _chat(gw, keys["pro"], headers={"x-task": "summarize"})
    assert out.model == "hosted-model"
    assert _replica_served(replica) == before
    assert metric_sum(scrape(gw.metrics_url), "gateway_hosted_requests_total", provider="failing", outcome="error") >= 1
    # Without the header the replica serves it.
    assert _chat(gw, keys["pro"]).model == "sim-model"


def test_a_request_over_its_ttft_budget_spills_to_hosted(hybrid):
    gw, replica, keys = hybrid
    long_prompt = "word " * 400  # ~500 tokens estimated: 0.5 s predicted at 1,000 tokens a second
    before = _replica_served(replica)
    spills = metric_sum(scrape(gw.metrics_url), "gateway_spills_total", reason="ttft_budget")
    assert _chat(gw, keys["pro"], long_prompt, headers={"x-ttft-budget-ms": "100"}).model == "hosted-model"
    # The key's own budget (200 ms) does the same without a header ...
    assert _chat(gw, keys["budget"], long_prompt).model == "hosted-model"
    # ... and a budget the prediction fits, or no budget at all, stays here.
    assert _chat(gw, keys["pro"], long_prompt, headers={"x-ttft-budget-ms": "5000"}).model == "sim-model"
    assert _chat(gw, keys["pro"], long_prompt).model == "sim-model"
    assert _chat(gw, keys["budget"], "short").model == "sim-model"
    assert _replica_served(replica) == before + 3
    m = scrape(gw.metrics_url)
    assert metric_sum(m, "gateway_spills_total", model="sim-model", reason="ttft_budget") == spills + 2


def test_a_bad_budget_header_is_a_400_naming_it(hybrid):
    gw, _, keys = hybrid
    for bad in ("soon", "0", "-5"):
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {keys['pro']}", "x-ttft-budget-ms": bad},
            json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "x-ttft-budget-ms"


def test_a_cold_model_spills_to_hosted_instead_of_waiting(log_dir, procs, redis_server, tiered_keys):
    good = procs(start_simulator(log_dir, api_key=HOSTED_KEY_B, model="hosted-model", **FAST))
    path, keys = tiered_keys
    env = gateway_env(
        _Keys(path),
        redis_server.url,
        [],
        scale_from_zero_models="big-model",
        hold_timeout_s=20,
        providers=json.dumps([{"name": "good", "base_url": good.url + "/v1"}]),
        provider_keys=json.dumps({"good": HOSTED_KEY_B}),
        fallback_chain="good:hosted-model",
    )
    gw = procs(start_gateway(log_dir, env))
    out = _chat(gw, keys["pro"], model="big-model")
    assert out.model == "hosted-model"
    assert metric_sum(scrape(gw.metrics_url), "gateway_spills_total", model="big-model", reason="cold_start") == 1


def test_a_chain_that_fails_everywhere_answers_with_the_last_providers_error(hybrid):
    gw, replica, keys = hybrid
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {keys['pro']}", "x-task": "doomed"},
        json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}]},
    )
    # `down` cannot be reached and `limited` answers 429: the client gets that 429.
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit"
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {keys['pro']}", "x-task": "lost"},
        json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
