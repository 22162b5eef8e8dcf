"""Side-by-side LLM judge: which of two policies answers the same prompts better (win/tie/loss rates).

    python -m trustregion.judge a=<run dir or model dir> b=<run dir or model dir> \
        judge.base_url=https://api.openai.com/v1 judge.model=gpt-4o-mini judge.api_key_env=OPENAI_API_KEY

Any OpenAI-compatible chat-completions endpoint works. Each prompt is judged twice, once in each
answer order, so position bias cancels; a verdict may be a tie. Calls are retried with exponential
backoff and cached in a JSON file keyed by the full request (not the key), so a rerun pays only for
what is new. ``a``/``b`` may also be JSON-lines files of ``{"prompt", "response"}`` rows.

Configured with Hydra like training (``conf/judge.yaml``, schema ``JudgeRunConfig`` below), so the
same override syntax, run dirs and multirun apply; results go to ``<run dir>/judgments.jsonl`` and
``<run dir>/judge.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from trustregion.cli.app import entry_point
from trustregion.errors import ConfigError, DataError
from trustregion.schema import setting

DEFAULT_SYSTEM = "You are a careful, impartial judge of AI assistant responses."
DEFAULT_TEMPLATE = (
    "Compare two responses to the same prompt. Judge helpfulness, correctness, coherence and harmlessness; "
    "ignore the order in which they are shown and their length as such.\n\n"
    "Prompt:\n{prompt}\n\nResponse 1:\n{response_1}\n\nResponse 2:\n{response_2}\n\n"
    "Answer with exactly one word: 1 if Response 1 is better, 2 if Response 2 is better, or tie."
)


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat-completions endpoint: ``{base_url}/chat/completions``."""

    base_url: str = setting("https://api.openai.com/v1", "the endpoint; requests go to {base_url}/chat/completions")
    model: str = setting("gpt-4o-mini", "the judge model's name at that endpoint")
    api_key_env: Optional[str] = setting(
        "OPENAI_API_KEY", "the environment variable holding the API key; null for a local server without a key"
    )
    temperature: float = setting(0.0, "the judge's sampling temperature")
    max_tokens: int = setting(8, "the longest verdict the judge may write")
    timeout_s: float = setting(60.0, "seconds to wait for one reply")
    retries: int = setting(5, "further attempts after a failed one (429, 5xx, network errors)")
    backoff_s: float = setting(2.0, "the first wait before a retry, doubled each retry (a Retry-After header wins)")
    system_prompt: str = setting(DEFAULT_SYSTEM, "the judge's system message")
    template: str = setting(DEFAULT_TEMPLATE, "the judge's prompt, with {prompt}, {response_1} and {response_2}")


@dataclass
class JudgeRunConfig:
    a: str = setting(MISSING, 'a run dir (its policy/), a model dir, or a .jsonl of {"prompt", "response"} rows')
    b: str = setting(MISSING, "the other side, in the same forms as a")
    prompts: int = setting(64, "how many prompts to judge")
    prompts_file: Optional[str] = setting(
        None, 'a .jsonl with a "prompt" field; null: the held-out prompts of a\'s dataset (its config.yaml)'
    )
    max_new_tokens: int = setting(64, "the longest response generated, where a or b is a model")
    temperature: float = setting(1.0, "the sampling temperature of those responses")
    greedy: bool = setting(False, "greedy decoding instead of sampling")
    seed: int = setting(0, "the seed of the responses' sampling, where a or b is a model")
    cache: str = setting(
        "outputs/judge/cache.json",
        "the verdicts' cache, shared by reruns: a request already answered is not sent again",
    )
    confidence: float = setting(
        0.95, "the confidence level of the reported intervals (Wilson, on the win, tie and loss rates)"
    )
    judge: EndpointConfig = setting(meaning="the judge's endpoint", factory=EndpointConfig)


def register_judge() -> None:
    """Store the judge's schema (called from the entry point, not at import)."""
    ConfigStore.instance().store(name="base_judge", node=JudgeRunConfig)


# --- the HTTP client ---------------------------------------------------------------------------------
class JudgeCache:
    """Judge replies by request hash, in one JSON file rewritten atomically after each new reply."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = {}
        if path.exists():
            try:
                self.entries = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}: the judge cache is not valid JSON ({e}); delete it or set cache to a new file"
                ) from e

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def get(self, request: dict) -> str | None:
        return self.entries.get(self.key(request))

    def put(self, request: dict, reply: str) -> None:
        self.entries[self.key(request)] = reply
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.entries, indent=0), encoding="utf-8")
        tmp.replace(self.path)


class ChatClient:
    """POSTs chat-completion requests with urllib; retries 429/5xx/network errors with exponential backoff."""

    def __init__(
        self,
        cfg: EndpointConfig | DictConfig,
        cache: JudgeCache | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.sleep = sleep
        self.requests_sent = 0
        self.cache_hits = 0
        self.api_key = None
        if cfg.api_key_env:
            self.api_key = os.environ.get(cfg.api_key_env)
            if not self.api_key:
                raise ConfigError(
                    f"judge.api_key_env={cfg.api_key_env} names an unset environment variable: export "
                    f"{cfg.api_key_env}=<key>, or set judge.api_key_env=null for an endpoint without a key"
                )

    def request_body(self, user: str) -> dict:
        c = self.cfg
        return {
            "model": c.model,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            "messages": [{"role": "system", "content": c.system_prompt}, {"role": "user", "content": user}],
        }

    def complete(self, user: str) -> str:
        """The assistant message for ``user`` (from the cache if this exact request was answered before)."""
        body = self.request_body(user)
        cached = self.cache.get({**body, "base_url": self.cfg.base_url}) if self.cache else None
        if cached is not None:
            self.cache_hits += 1
            return cached
        reply = self._post(body)
        if self.cache:
            self.cache.put({**body, "base_url": self.cfg.base_url}, reply)
        return reply

    def _post(self, body: dict) -> str:
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.cfg.retries + 1):
            wait = self.cfg.backoff_s * 2**attempt
            try:
                self.requests_sent += 1
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    payload = json.loads(resp.read().decode())
                return str(payload["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:200]
                if e.code != 429 and e.code < 500:
                    raise DataError(
                        f"judge endpoint {url} refused the request: HTTP {e.code} {detail}; "
                        f"check judge.base_url, judge.model and the key in ${self.cfg.api_key_env}"
                    ) from e
                last = f"HTTP {e.code} {detail}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = float(retry_after)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
                raise DataError(
                    f"judge endpoint {url} sent a reply without choices[0].message.content ({e}); "
                    f"is judge.base_url an OpenAI-compatible /v1 URL?"
                ) from e
            if attempt < self.cfg.retries:
                self.sleep(wait)
        raise DataError(
            f"judge endpoint {url} failed {self.cfg.retries + 1} times (last: {last}); "
            f"raise judge.retries or check the server"
        )


# --- verdicts and statistics -------------------------------------------------------------------------
def parse_verdict(reply: str) -> str:
    """'1', '2' or 'tie' from the judge's reply (first matching word); 'tie' when it says neither."""
    match = re.search(r"\b(1|2|tie)\b", reply.strip().lower())
    return match.group(1) if match else "tie"


def combine(first: str, second: str) -> float:
    """A's score in [0, 1] from two verdicts: ``first`` with A shown as Response 1, ``second`` with A as Response 2."""
    s1 = {"1": 1.0, "2": 0.0, "tie": 0.5}[first]
    s2 = {"2": 1.0, "1": 0.0, "tie": 0.5}[second]
    return (s1 + s2) / 2


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def summarize(scores: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Win/tie/loss rates of A over B (a prompt is a win when A's two-order score is above 1/2), with intervals."""
    n = len(scores)
    wins = sum(s > 0.5 for s in scores)
    ties = sum(s == 0.5 for s in scores)
    losses = n - wins - ties
    mean = sum(scores) / n if n else math.nan
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else math.nan
    half = _z(confidence) * sd / math.sqrt(n) if n > 1 else math.nan
    return {
        "prompts": n,
        "confidence": confidence,
        "win_rate": wins / n if n else math.nan,
        "win_ci": wilson(wins, n, confidence),
        "tie_rate": ties / n if n else math.nan,
        "tie_ci": wilson(ties, n, confidence),
        "loss_rate": losses / n if n else math.nan,
        "loss_ci": wilson(losses, n, confidence),
        "score": mean,
        "score_ci": (mean - half, mean + half),  # wins + ties/2, averaged over both orders
    }


def judge_pairs(
    client: ChatClient, template: str, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]
) -> list[dict]:
    """Both orders per prompt (identical responses tie unasked); one record per prompt with both verdicts and A's score."""
    out = []
    for prompt, ra, rb in zip(prompts, a, b):
        if ra.strip() == rb.strip():  # nothing to judge: a tie, without paying for two calls
            out.append({"prompt": prompt, "a": ra, "b": rb, "a_first": "tie", "b_first": "tie", "score": 0.5})
            continue
        first = parse_verdict(client.complete(template.format(prompt=prompt, response_1=ra, response_2=rb)))
        second = parse_verdict(client.complete(template.format(prompt=prompt, response_1=rb, response_2=ra)))
        out.append(
            {"prompt": prompt, "a": ra, "b": rb, "a_first": first, "b_first": second, "score": combine(first, second)}
        )
    return out


# --- responses -----------------------------------------------------------------------------------------
def read_jsonl(path: Path, field_name: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); fix the line or remove it") from e
            if not isinstance(row, dict) or not isinstance(row.get(field_name), str):
                raise DataError(f"{path}:{n}: no string field {field_name!r}; every row needs one")
            rows.append(row)
    return rows


def model_dir(source: str) -> Path:
    """The model directory of a run dir (its ``policy/``) or of a model dir."""
    path = Path(source).expanduser()
    if (path / "policy" / "config.json").exists():
        return path / "policy"
    if (path / "config.json").exists():
        return path
    raise ConfigError(
        f"{source}: neither a run dir with policy/ nor a model dir with config.json; "
        f"set a/b to a finished run dir, a saved model, or a .jsonl of responses"
    )


def load_prompts(cfg: DictConfig) -> list[str]:
    """``cfg.prompts`` prompts: from ``prompts_file``, else from a's responses file, else a's run dataset (held-out)."""
    n = int(cfg.prompts)
    if cfg.prompts_file:
        rows = read_jsonl(Path(cfg.prompts_file), "prompt")
        return [r["prompt"] for r in rows][:n]
    a = Path(cfg.a)
    if a.suffix == ".jsonl":
        return [r["prompt"] for r in read_jsonl(a, "prompt")][:n]
    run_cfg = a / "config.yaml"
    if not run_cfg.exists():
        raise ConfigError(
            f"prompts_file is null and {run_cfg} does not exist: set prompts_file=<.jsonl with a prompt field>"
        )
    from trustregion.cli.app import register
    from trustregion.data import load_preferences

    register()
    data = load_preferences(OmegaConf.load(run_cfg).dataset)
    return data.eval_prompts()[:n]


def responses_for(source: str, prompts: list[str], cfg: DictConfig) -> list[str]:
    """One response per prompt from ``source``: looked up in a .jsonl, or sampled from a model."""
    path = Path(source)
    if path.suffix == ".jsonl":
        table = {r["prompt"]: r["response"] for r in read_jsonl(path, "response")}
        missing = [p for p in prompts if p not in table]
        if missing:
            raise DataError(
                f"{path}: no response for {len(missing)} of the prompts (first: {missing[0]!r}); "
                f"add them or judge fewer prompts"
            )
        return [table[p] for p in prompts]
    import torch

    from trustregion.models.loading import load_for_sampling
    from trustregion.models.sampling import SamplingOptions, encode_prompts, sample_texts

    model, tokenizer = load_for_sampling(str(model_dir(source)), key="a/b")
    ids = encode_prompts(prompts, tokenizer, getattr(model.config, "max_position_embeddings", 2048) // 2)
    return sample_texts(
        model,
        tokenizer,
        ids,
        SamplingOptions(int(cfg.max_new_tokens), float(cfg.temperature), bool(cfg.greedy)),
        generator=torch.Generator().manual_seed(int(cfg.seed)),
        batch_size=max(1, len(ids)),
        skip_special_tokens=True,
    )


def check(cfg: DictConfig) -> None:
    """Range checks: one ConfigError naming the field and the fix."""
    if cfg.prompts < 1:
        raise ConfigError(f"prompts={cfg.prompts} is invalid: set prompts to an integer >= 1")
    if not 0 < cfg.confidence < 1:
        raise ConfigError(f"confidence={cfg.confidence} is invalid: set confidence in (0, 1), e.g. 0.95")
    if cfg.judge.retries < 0:
        raise ConfigError(f"judge.retries={cfg.judge.retries} is invalid: set judge.retries to an integer >= 0")
    for key in ("prompt", "response_1", "response_2"):
        if "{" + key + "}" not in cfg.judge.template:
            raise ConfigError(f"judge.template lacks {{{key}}}: include {{prompt}}, {{response_1}} and {{response_2}}")


def run_judge(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Judge ``cfg.a`` against ``cfg.b``; write judgments.jsonl and judge.json into ``out_dir``; return the summary."""
    check(cfg)
    client = ChatClient(cfg.judge, JudgeCache(Path(cfg.cache)))
    prompts = load_prompts(cfg)
    if not prompts:
        raise DataError("no prompts to judge: check prompts_file or a's dataset")
    a, b = responses_for(cfg.a, prompts, cfg), responses_for(cfg.b, prompts, cfg)
    records = judge_pairs(client, cfg.judge.template, prompts, a, b)
    summary = summarize([r["score"] for r in records], float(cfg.confidence))
    summary.update(
        {
            "a": cfg.a,
            "b": cfg.b,
            "judge_model": cfg.judge.model,
            "requests_sent": client.requests_sent,
            "cache_hits": client.cache_hits,
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "judgments.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out_dir / "judge.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def format_summary(s: dict[str, Any]) -> str:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    ci = lambda lo_hi: f"[{pct(lo_hi[0])}, {pct(lo_hi[1])}]"  # noqa: E731
    c = int(round(100 * s["confidence"]))
    return (
        f"A={s['a']} vs B={s['b']} on {s['prompts']} prompts (judge {s['judge_model']}, both orders; "
        f"{s['requests_sent']} requests, {s['cache_hits']} cached)\n"
        f"  win  {pct(s['win_rate'])} {ci(s['win_ci'])}\n  tie  {pct(s['tie_rate'])} {ci(s['tie_ci'])}\n"
        f"  loss {pct(s['loss_rate'])} {ci(s['loss_ci'])}\n"
        f"  score (win + tie/2) {s['score']:.3f} [{s['score_ci'][0]:.3f}, {s['score_ci'][1]:.3f}]  ({c}% intervals)"
    )


def show(cfg: DictConfig, summary: dict[str, Any]) -> None:
    print(format_summary(summary), flush=True)


main = entry_point("trustregion-judge", "judge", run_judge, register_judge, show)

if __name__ == "__main__":
    main()
