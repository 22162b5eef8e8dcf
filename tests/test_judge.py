"""The LLM judge against a real HTTP server on 127.0.0.1: both orders, ties, retries, cache, statistics."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from omegaconf import OmegaConf

from trustregion.errors import ConfigError, DataError
from trustregion.judge import (
    ChatClient,
    EndpointConfig,
    JudgeCache,
    combine,
    judge_pairs,
    parse_verdict,
    summarize,
    wilson,
)

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast


class JudgeServer:
    """A chat-completions endpoint on 127.0.0.1 whose verdicts come from ``decide(response_1, response_2)``.

    ``failures`` makes the first requests fail with that HTTP status; every request is recorded.
    """

    def __init__(self, decide, failures: int = 0, status: int = 503) -> None:
        self.decide, self.failures, self.status = decide, failures, status
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    return self.reply(404, {"error": "not found"})
                if outer.failures > 0:
                    outer.failures -= 1
                    return self.reply(outer.status, {"error": "try later"})
                text = body["messages"][-1]["content"]
                r1 = re.search(r"Response 1:\n(.*?)\n\nResponse 2:", text, re.S).group(1)
                r2 = re.search(r"Response 2:\n(.*?)\n\nAnswer", text, re.S).group(1)
                self.reply(200, {"choices": [{"message": {"role": "assistant", "content": outer.decide(r1, r2)}}]})

            def reply(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(decide, **kw) -> JudgeServer:
        servers.append(JudgeServer(decide, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def endpoint(url: str, **kw) -> EndpointConfig:
    return EndpointConfig(base_url=url, model="local-judge", api_key_env=None, backoff_s=0.01, timeout_s=5, **kw)


PROMPTS = [f"prompt {i}" for i in range(10)]
GOOD = [f"a good answer {i}" for i in range(10)]
BAD = [f"a bad answer {i}" for i in range(10)]
prefers_good = lambda r1, r2: "1" if "good" in r1 else ("2" if "good" in r2 else "tie")  # noqa: E731


def test_a_better_policy_wins_every_prompt_in_both_orders(serve):
    server = serve(prefers_good)
    client = ChatClient(endpoint(server.url))
    records = judge_pairs(client, EndpointConfig().template, PROMPTS, GOOD, BAD)
    assert [(r["a_first"], r["b_first"]) for r in records] == [("1", "2")] * 10
    assert summarize([r["score"] for r in records])["win_rate"] == 1.0
    assert len(server.requests) == 20


def test_a_judge_that_always_picks_the_first_answer_gives_ties(serve):
    server = serve(lambda r1, r2: "1")
    records = judge_pairs(ChatClient(endpoint(server.url)), EndpointConfig().template, PROMPTS, GOOD, BAD)
    s = summarize([r["score"] for r in records])
    assert (s["win_rate"], s["tie_rate"], s["loss_rate"]) == (0.0, 1.0, 0.0)


def test_failed_requests_are_retried_with_backoff(serve):
    server = serve(prefers_good, failures=2, status=503)
    waits = []
    client = ChatClient(endpoint(server.url, retries=3), sleep=waits.append)
    assert client.complete(EndpointConfig().template.format(prompt="p", response_1="good", response_2="x")) == "1"
    assert len(server.requests) == 3 and waits == [0.01, 0.02]


def test_retries_give_up_with_one_clear_error(serve):
    server = serve(prefers_good, failures=10, status=429)
    client = ChatClient(endpoint(server.url, retries=1), sleep=lambda s: None)
    with pytest.raises(
        DataError, match=r"failed 2 times \(last: HTTP 429 .*\); raise judge.retries or check the server"
    ):
        client.complete("Response 1:\na\n\nResponse 2:\nb\n\nAnswer")


def test_a_client_error_is_not_retried(serve):
    server = serve(prefers_good, failures=1, status=400)
    client = ChatClient(endpoint(server.url), sleep=lambda s: None)
    with pytest.raises(DataError, match="refused the request: HTTP 400"):
        client.complete("Response 1:\na\n\nResponse 2:\nb\n\nAnswer")
    assert len(server.requests) == 1


def test_a_rerun_reads_the_cache_and_sends_nothing(serve, tmp_path):
    server = serve(prefers_good)
    first = ChatClient(endpoint(server.url), JudgeCache(tmp_path / "cache.json"))
    judge_pairs(first, EndpointConfig().template, PROMPTS, GOOD, BAD)
    again = ChatClient(endpoint(server.url), JudgeCache(tmp_path / "cache.json"))
    records = judge_pairs(again, EndpointConfig().template, PROMPTS, GOOD, BAD)
    assert len(server.requests) == 20 and again.cache_hits == 20 and again.requests_sent == 0
    assert all(r["score"] == 1.0 for r in records)


def test_the_key_is_sent_as_a_bearer_token_and_never_cached(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    server = serve(prefers_good)
    cfg = endpoint(server.url)
    cfg.api_key_env = "TEST_JUDGE_KEY"
    ChatClient(cfg, JudgeCache(tmp_path / "c.json")).complete("Response 1:\ngood\n\nResponse 2:\nb\n\nAnswer")
    assert server.headers[0]["Authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in (tmp_path / "c.json").read_text()


def test_an_unset_key_variable_is_one_config_error(monkeypatch):
    monkeypatch.delenv("TEST_JUDGE_KEY", raising=False)
    cfg = endpoint("http://127.0.0.1:9/v1")
    cfg.api_key_env = "TEST_JUDGE_KEY"
    with pytest.raises(ConfigError, match="judge.api_key_env=TEST_JUDGE_KEY names an unset environment variable"):
        ChatClient(cfg)


def test_verdicts_are_read_from_the_first_matching_word():
    assert [parse_verdict(x) for x in ("1", "Response 2.", "TIE", "2 is better", "cannot decide")] == [
        "1",
        "2",
        "tie",
        "2",
        "tie",
    ]
    assert combine("1", "2") == 1.0 and combine("1", "1") == 0.5 and combine("tie", "2") == 0.75


def test_wilson_interval_contains_the_rate_and_narrows_with_more_prompts():
    lo, hi = wilson(30, 50)
    lo2, hi2 = wilson(300, 500)
    assert lo < 0.6 < hi and hi2 - lo2 < hi - lo
    assert wilson(0, 10) == pytest.approx((0.0, 1.96**2 / (10 + 1.96**2)), abs=1e-3)  # z^2 / (n + z^2)


def test_the_judge_command_compares_two_response_files(serve, tmp_path):
    from conftest import compose

    import trustregion.judge as judge

    server = serve(prefers_good)
    for name, answers in (("a", GOOD), ("b", BAD)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for p, r in zip(PROMPTS, answers):
                f.write(json.dumps({"prompt": p, "response": r}) + "\n")
    cfg = compose(
        f"a={tmp_path / 'b.jsonl'}",
        f"b={tmp_path / 'a.jsonl'}",
        f"judge.base_url={server.url}",
        "judge.api_key_env=null",
        f"cache={tmp_path / 'cache.json'}",
        "prompts=8",
        config_name="judge",
    )
    summary = judge.run_judge(cfg, tmp_path / "out")
    assert summary["loss_rate"] == 1.0 and summary["prompts"] == 8
    assert json.loads((tmp_path / "out" / "judge.json").read_text())["loss_ci"][0] > 0.6  # Wilson: 8 / (8 + z^2)
    assert len((tmp_path / "out" / "judgments.jsonl").read_text().splitlines()) == 8


def test_the_judge_samples_responses_from_saved_models(serve, tmp_path):
    """a and b may be model dirs: the judge samples one response per prompt from each."""
    from conftest import compose

    import trustregion.judge as judge
    from trustregion.models.loading import build_tokenizer, tiny_model

    tok = build_tokenizer(PROMPTS + GOOD + BAD, 300)
    mcfg = OmegaConf.create(
        {
            "hidden_size": 16,
            "num_layers": 1,
            "num_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 64,
            "attn_implementation": None,
            "dtype": "float32",
        }
    )
    for name, seed in (("a", 0), ("b", 1)):
        tiny_model(mcfg, len(tok), seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    with open(tmp_path / "prompts.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
    server = serve(lambda r1, r2: "tie")
    cfg = compose(
        f"a={tmp_path / 'a'}",
        f"b={tmp_path / 'b'}",
        f"judge.base_url={server.url}",
        "judge.api_key_env=null",
        f"cache={tmp_path / 'cache.json'}",
        f"prompts_file={tmp_path / 'prompts.jsonl'}",
        "max_new_tokens=4",
        config_name="judge",
    )
    summary = judge.run_judge(cfg, tmp_path / "out")
    judged = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    differing = sum(r["a"].strip() != r["b"].strip() for r in judged)
    assert summary["tie_rate"] == 1.0 and len(server.requests) == 2 * differing > 0


def test_identical_responses_tie_without_a_request(serve):
    server = serve(prefers_good)
    records = judge_pairs(ChatClient(endpoint(server.url)), EndpointConfig().template, PROMPTS[:2], GOOD[:2], GOOD[:2])
    assert [r["score"] for r in records] == [0.5, 0.5] and server.requests == []


def test_a_template_without_its_placeholders_is_one_config_error(tmp_path):
    from conftest import compose

    import trustregion.judge as judge

    cfg = compose("a=x.jsonl", "b=y.jsonl", "judge.template=Which is better?", config_name="judge")
    with pytest.raises(ConfigError, match=r"judge.template lacks \{prompt\}"):
        judge.run_judge(cfg, tmp_path)
