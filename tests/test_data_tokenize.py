"""Tokenization: separate prompt/response ids, the truncation rule and its counts, chat templates,
the disk cache, mismatched pairs, unpaired KTO rows, collation and padding."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from tests.fixtures.tiny_models import llama3_tokenizer, pythia_tokenizer
from trustregion.data import PreferenceData
from trustregion.data.tokenize import (
    PairCollator,
    UnpairedCollator,
    length_grouped_order,
    padding_fraction,
    tokenize_options,
    tokenize_pairs,
    tokenize_sft,
    tokenize_unpaired,
)

pytestmark = pytest.mark.unit  # no training run, no subprocess: make test-fast

PAIRS = Dataset.from_list(
    [
        {"prompt": "How do I bake bread?", "chosen": " Start small and note what works.", "rejected": " No idea."},
        {"prompt": "Give me one tip to grow tomatoes.", "chosen": " Keep notes every day.", "rejected": " Tomatoes."},
        {
            "prompt": "Human: How do I fix a bicycle? Assistant:",
            "chosen": " Start small.",
            "rejected": " I don't know.",
        },
    ]
)


@pytest.fixture(scope="module")
def neox_tok():
    return pythia_tokenizer()


@pytest.fixture(scope="module")
def llama_tok():
    return llama3_tokenizer()


def ids(tok, text: str, special: bool = False) -> list[int]:
    return tok(text, add_special_tokens=special)["input_ids"]


def test_prompt_and_responses_are_tokenized_separately_and_responses_end_with_eos(neox_tok):
    rows, _ = tokenize_pairs(PAIRS, neox_tok, max_length=128, max_prompt_length=64)
    row = rows[0]
    assert row["prompt_ids"] == ids(neox_tok, PAIRS[0]["prompt"], special=True)
    assert row["chosen_ids"] == ids(neox_tok, PAIRS[0]["chosen"]) + [neox_tok.eos_token_id]
    assert row["rejected_ids"] == ids(neox_tok, PAIRS[0]["rejected"]) + [neox_tok.eos_token_id]


def test_long_prompt_keeps_its_last_max_prompt_length_tokens(neox_tok):
    rows, stats = tokenize_pairs(PAIRS, neox_tok, max_length=128, max_prompt_length=4)
    assert rows[1]["prompt_ids"] == ids(neox_tok, PAIRS[1]["prompt"])[-4:]
    assert stats.truncated_prompts == 3


def test_llama_bos_survives_when_the_prompt_is_cut_from_the_left(llama_tok):
    rows, _ = tokenize_pairs(PAIRS, llama_tok, max_length=128, max_prompt_length=4)
    full = ids(llama_tok, PAIRS[1]["prompt"], special=True)
    assert full[0] == llama_tok.bos_token_id
    assert rows[1]["prompt_ids"] == [llama_tok.bos_token_id] + full[-3:]


def test_responses_are_cut_on_the_right_to_fit_max_length_and_counted(neox_tok):
    rows, stats = tokenize_pairs(PAIRS, neox_tok, max_length=8, max_prompt_length=4)
    chosen = ids(neox_tok, PAIRS[0]["chosen"])
    assert rows[0]["chosen_ids"] == chosen[:4]  # room = 8 - 4 prompt tokens; the EOS is cut with the rest
    assert all(len(r["prompt_ids"]) + len(r["chosen_ids"]) <= 8 for r in rows)
    assert stats.truncated_responses == sum(
        len(ids(neox_tok, PAIRS[i][k])) + 1 > 8 - len(rows[i]["prompt_ids"])
        for i in range(3)
        for k in ("chosen", "rejected")
    )
    assert stats.truncated_rows == 3 and stats.rows == 3


def test_chat_prompt_is_the_tokenizers_template_with_the_generation_prompt(llama_tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"}]
    chat = Dataset.from_list(
        [{"prompt": "plain", "chosen": " Knead.", "rejected": " No.", "prompt_messages": messages}]
    )
    rows, _ = tokenize_pairs(chat, llama_tok, max_length=128, max_prompt_length=96)
    rendered = llama_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert rows[0]["prompt_ids"] == ids(llama_tok, rendered)
    assert rows[0]["prompt_ids"].count(llama_tok.bos_token_id) == 1
    assert rows[0]["chosen_ids"][-1] == llama_tok.convert_tokens_to_ids("<|eot_id|>")


def test_chat_rows_use_the_plain_prompt_with_a_tokenizer_without_a_template(neox_tok):
    messages = [{"role": "user", "content": "How do I bake bread?"}]
    chat = Dataset.from_list(
        [
            {
                "prompt": "\n\nUser: How do I bake bread?\n\nAssistant:",
                "chosen": " Knead.",
                "rejected": " No.",
                "prompt_messages": messages,
            }
        ]
    )
    rows, _ = tokenize_pairs(chat, neox_tok, max_length=128, max_prompt_length=96)
    assert rows[0]["prompt_ids"] == ids(neox_tok, chat[0]["prompt"], special=True)


def test_second_tokenization_loads_the_cache_instead_of_tokenizing_again(neox_tok, tmp_path):
    first, stats1 = tokenize_pairs(PAIRS, neox_tok, 16, 8, cache_dir=str(tmp_path))
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "tokenized").glob("*.arrow")}
    second, stats2 = tokenize_pairs(PAIRS, neox_tok, 16, 8, cache_dir=str(tmp_path))
    assert len(written) == 1 and (stats1.from_cache, stats2.from_cache) == (False, True)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "tokenized").glob("*.arrow")} == written
    assert first.to_list() == second.to_list() and stats1.truncated_responses == stats2.truncated_responses


def test_cache_is_keyed_by_lengths_and_tokenizer(neox_tok, llama_tok, tmp_path):
    tokenize_pairs(PAIRS, neox_tok, 16, 8, cache_dir=str(tmp_path))
    _, other_lengths = tokenize_pairs(PAIRS, neox_tok, 32, 8, cache_dir=str(tmp_path))
    _, other_tokenizer = tokenize_pairs(PAIRS, llama_tok, 16, 8, cache_dir=str(tmp_path))
    assert not other_lengths.from_cache and not other_tokenizer.from_cache
    assert len(list((tmp_path / "tokenized").glob("*.arrow"))) == 3


def test_two_processes_tokenize_to_the_same_rows(neox_tok, tmp_path):
    one, _ = tokenize_pairs(PAIRS, neox_tok, 16, 8, mismatched=True)
    two, _ = tokenize_pairs(PAIRS, neox_tok, 16, 8, mismatched=True, cache_dir=str(tmp_path), num_proc=2)
    assert one.to_list() == two.to_list()


def test_mismatched_ids_are_the_next_rows_chosen_response_fitted_to_this_prompt(neox_tok):
    rows, _ = tokenize_pairs(PAIRS, neox_tok, 12, 6, mismatched=True)
    for i in range(3):
        nxt = rows[(i + 1) % 3]["chosen_ids"]
        assert rows[i]["mismatched_ids"] == nxt[: 12 - len(rows[i]["prompt_ids"])]


def test_sft_rows_hold_prompt_and_response_ids(neox_tok):
    sft = PreferenceData(train=PAIRS, eval=PAIRS).sft_view()
    rows, _ = tokenize_sft(sft, neox_tok, 128, 64)
    assert rows[2]["chosen_ids"] == ids(neox_tok, PAIRS[2]["chosen"]) + [neox_tok.eos_token_id]
    assert "rejected_ids" not in rows.column_names


def test_unpaired_rows_carry_the_label_and_a_mismatched_completion(neox_tok):
    unpaired = Dataset.from_list(
        [
            {"prompt": "Hi?", "completion": " Hello.", "label": True},
            {"prompt": "Bye?", "completion": " Go away.", "label": False},
        ]
    )
    rows, _ = tokenize_unpaired(unpaired, neox_tok, 64, 32)
    assert rows["desirable"] == [True, False]
    assert rows[0]["mismatched_ids"] == rows[1]["completion_ids"]
    batch = UnpairedCollator(neox_tok.pad_token_id or 0)([rows[0], rows[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["desirable"].tolist() == [True, False]


def test_unpaired_batch_trains_with_the_kto_unpaired_loss(neox_tok):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from trustregion.models.loading import sequence_logps
    from trustregion.objectives.losses import kto_unpaired_loss

    unpaired = Dataset.from_list(
        [
            {"prompt": "Hi?", "completion": " Hello.", "label": True},
            {"prompt": "Bye?", "completion": " Go away.", "label": False},
        ]
    )
    rows, _ = tokenize_unpaired(unpaired, neox_tok, 64, 32)
    batch = UnpairedCollator(0)([rows[0], rows[1]])
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=len(neox_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )
    logps, _ = sequence_logps(model, batch)
    pol = logps.view(2, -1)
    losses, _ = kto_unpaired_loss(
        pol[0],
        pol[0].detach() - 0.1,
        batch["desirable"],
        0.1,
        policy_mismatched_logps=pol[1],
        reference_mismatched_logps=pol[1].detach(),
    )
    losses.mean().backward()
    assert torch.isfinite(losses).all() and model.get_input_embeddings().weight.grad is not None


def test_padding_fraction_is_the_share_of_padded_positions(neox_tok):
    rows, _ = tokenize_pairs(PAIRS, neox_tok, 128, 64)
    batch = PairCollator(0)([rows[i] for i in range(3)])
    mask = batch["attention_mask"]
    assert padding_fraction(batch).item() == pytest.approx(1 - mask.sum().item() / mask.numel())
    assert PairCollator(0)([rows[0]])["attention_mask"].numel() > 0


def test_length_grouped_order_is_a_seeded_permutation_that_cuts_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(400)]
    order = length_grouped_order(lengths, batch_size=8, seed=0)
    assert sorted(order) == list(range(400)) and order == length_grouped_order(lengths, 8, seed=0)
    assert order != length_grouped_order(lengths, 8, seed=1)

    def padding(perm: list[int]) -> int:
        return sum(
            max(lengths[i] for i in perm[s : s + 8]) * 8 - sum(lengths[i] for i in perm[s : s + 8])
            for s in range(0, 400, 8)
        )

    shuffled = list(range(400))
    import random

    random.Random(0).shuffle(shuffled)
    assert padding(order) < padding(shuffled) / 5


def test_tokenize_options_come_from_file_sources_and_default_to_no_cache_elsewhere():
    from omegaconf import OmegaConf

    from trustregion.data.files import FileDatasetConfig
    from trustregion.data.toy_source import ToyDatasetConfig

    files = OmegaConf.merge(OmegaConf.structured(FileDatasetConfig), {"cache_dir": "/tmp/c", "num_proc": 2})
    assert tokenize_options(files) == {"cache_dir": "/tmp/c", "num_proc": 2}
    assert tokenize_options(OmegaConf.structured(ToyDatasetConfig)) == {"cache_dir": None, "num_proc": None}


def test_a_22k_character_hh_row_is_cut_to_max_length_before_collation(neox_tok):
    # The long row of tests/fixtures/hh_long: its tokenized pair and its collated batch stay within max_length.
    import json
    from pathlib import Path

    from trustregion.data.hh import split_dialogues

    lines = (Path(__file__).parent / "fixtures" / "hh_long" / "train.jsonl").read_text().splitlines()
    pairs = [split_dialogues(r["chosen"], r["rejected"]) for r in map(json.loads, lines)]
    assert max(len(p["prompt"]) + len(p["chosen"]) for p in pairs) > 20_000
    rows, stats = tokenize_pairs(Dataset.from_list(pairs), neox_tok, max_length=512, max_prompt_length=256)
    assert stats.truncated_prompts == 1 and stats.truncated_responses == 1
    assert max(rows["length"]) == 512
    assert all(len(r["prompt_ids"]) <= 256 and len(r["prompt_ids"]) + len(r["chosen_ids"]) <= 512 for r in rows)
    assert PairCollator(pad_token_id=0)(list(rows))["input_ids"].shape == (120, 512)
