"""Every metric on hand-built tensors, and the decoder against model.generate."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tinymem.data.bundle import DataBundle
from tinymem.decoding import greedy_continue, greedy_continue_ragged
from tinymem.metrics import (compare, evaluate, memorization, noise_extraction, noise_extractions, summarize,
                             utility)


def test_compare_and_summarize_by_hand():
    gen = torch.tensor([[1, 2, 3, 4], [1, 2, 9, 4], [5, 6, 7, 8], [0, 0, 0, 0]])
    noised = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 9], [1, 1, 1, 1]])
    clean = torch.tensor([[1, 2, 3, 5], [1, 2, 9, 4], [5, 6, 7, 8], [1, 1, 1, 1]])
    counted = torch.tensor([True, True, True, False])  # row 3 has no noise in the window
    ex = compare(gen, noised, clean, counted)
    assert ex.memorized.tolist() == [True, False, False, False]
    assert ex.clean.tolist() == [False, True, True, False]
    assert ex.token_match.tolist() == [1.0, 0.75, 0.75, 0.0]
    assert ex.prefix_match.tolist() == [4.0, 2.0, 3.0, 0.0]
    s = summarize(ex)
    assert s["mem_pct"] == pytest.approx(100 / 3)
    assert s["clean_recovered_pct"] == pytest.approx(200 / 3)
    assert s["token_match"] == pytest.approx((1 + 0.75 + 0.75) / 3)
    assert s["approx_mem_pct"] == pytest.approx(100 / 3)  # >= 0.9 of tokens
    assert s["prefix_match"] == pytest.approx(3.0)


def test_summarize_empty_denominator_is_nan():
    ex = compare(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
                 torch.zeros(2, 3, dtype=torch.long), torch.tensor([False, False]))
    assert math.isnan(summarize(ex)["mem_pct"])


class FixedLogits(nn.Module):
    """Predicts token (t + 1) % V after token t with a fixed confidence: exact metrics are hand-computable."""

    def __init__(self, vocab: int, p_correct: float):
        super().__init__()
        self.vocab, self.p = vocab, p_correct
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kw):
        b, t = input_ids.shape
        rest = (1 - self.p) / (self.vocab - 1)
        probs = torch.full((b, t, self.vocab), rest)
        probs.scatter_(2, ((input_ids + 1) % self.vocab)[..., None], self.p)
        return SimpleNamespace(logits=probs.log())


def test_utility_masks_padding_and_weights_tokens():
    pad = 9
    # row 0: 0 1 2 3 pad pad -> 3 real targets, all "correct"; row 1: 0 1 5 pad pad pad -> targets 1 (ok), 5 (wrong)
    rows = torch.tensor([[0, 1, 2, 3, pad, pad], [0, 1, 5, pad, pad, pad]])
    wrong = torch.tensor([[0, 5, 5, 5, 5, 5]] * 2)  # every target wrong
    # first half `val`, second half `test`: the two splits see different rows
    bundle = DataBundle(tensors={"test/main": torch.cat([wrong, rows])}, meta={"test_names": ["main"], "pad_id": pad})
    m = FixedLogits(10, 0.5)
    u = utility(m, bundle, batch_size=8)
    assert u["val_acc"] == 0.0 and u["val_acc_main"] == 0.0 and u["test_acc_main"] == pytest.approx(80.0)
    # real targets: 1,2,3 | 1,5 -> 4 of 5 correct
    assert u["test_acc"] == pytest.approx(80.0)
    rest = 0.5 / 9
    nll = (4 * -math.log(0.5) + -math.log(rest)) / 5
    assert u["test_ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
    # paper variant counts PAD targets: row0 targets 1,2,3,pad(after 3: predicts 4, wrong),pad(after pad: predicts 0, wrong)
    # row1: 1 ok, 5 wrong, pad wrong, pad wrong(pred 0), pad wrong -> 4 of 10 correct
    assert u["paper_acc"] == pytest.approx(40.0)


def tiny_gpt2(vocab=14, layers=2, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=layers, n_head=2,
                     bos_token_id=10, eos_token_id=11, pad_token_id=13)
    return GPT2LMHeadModel(cfg).eval()


def tiny_neox(vocab=14, seed=0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, eos_token_id=11, pad_token_id=13,
                        bos_token_id=10)
    return GPTNeoXForCausalLM(cfg).eval()


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_neox])
def test_decoder_matches_generate_token_for_token(make):
    model = make()
    prompts = torch.randint(0, 13, (9, 12), generator=torch.Generator().manual_seed(0))
    ours = greedy_continue(model, prompts, 20, eos_id=11, pad_id=13, batch_size=4)
    ref = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=20,
                         min_new_tokens=0, eos_token_id=11, pad_token_id=13)
    ref = ref[:, 12:]
    if ref.shape[1] < 20:  # generate stops early when every row has finished; the rest is padding
        ref = torch.cat([ref, torch.full((9, 20 - ref.shape[1]), 13)], dim=1)
    assert torch.equal(ours, ref)


def test_decoder_eos_then_pad():
    # a model whose bias makes EOS the argmax after the first step
    model = tiny_gpt2()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.transformer.wte.weight.zero_()  # tied: all logits 0 -> argmax token 0 ...
    out = greedy_continue(model, torch.zeros(2, 3, dtype=torch.long), 5, eos_id=0, pad_id=13)
    assert out.tolist() == [[0, 13, 13, 13, 13]] * 2


def test_ragged_decoding_equals_per_row():
    model = tiny_gpt2()
    seqs = torch.randint(0, 13, (6, 30), generator=torch.Generator().manual_seed(1))
    plens = torch.tensor([5, 9, 5, 12, 9, 7])
    out = greedy_continue_ragged(model, seqs, plens, 8)
    for i in range(6):
        single = greedy_continue(model, seqs[i : i + 1, : plens[i]], 8)
        assert torch.equal(out[i], single[0])


class _Out(dict):
    __getattr__ = dict.__getitem__


class Recite(nn.Module):
    """Stateless 'memorizer': after a prefix of row r (r = first token), predicts row r's next token.

    The cache it returns is just the tokens so far, which exercises the decoder's cache plumbing.
    """

    def __init__(self, rows: torch.Tensor, vocab: int = 20):
        super().__init__()
        self.rows, self.vocab = rows, vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False, cache=None, **kw):
        full = input_ids if cache is None else torch.cat([cache, input_ids], dim=1)
        b, t = full.shape
        logits = torch.zeros(b, input_ids.shape[1], self.vocab)
        for i in range(b):
            logits[i, -1, self.rows[int(full[i, 0])][t]] = 10.0
        return _Out(logits=logits, cache=full)


def test_memorization_of_a_reciting_model():
    clean = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], [2, 1, 1, 1, 1, 1, 1, 1]])
    noised = clean.clone()
    noised[0, 5] = 7  # noise inside the window [4, 8): counted
    noised[2, 1] = 7  # noise only in the prompt: not counted
    bundle = DataBundle(tensors={"forget": noised, "forget_clean": clean, "forget_dup": torch.tensor([1, 1, 10])},
                        meta={"kind": "noise", "prompt_len": 4, "k": 4, "pad_id": 19, "eos_id": None})
    m = memorization(Recite(noised), bundle)
    assert m["mem_counted"] == 1.0
    assert m["mem_pct"] == 100.0 and m["clean_recovered_pct"] == 0.0
    m = memorization(Recite(clean), bundle)  # a model that learned the clean rule recovers, not memorizes
    assert m["mem_pct"] == 0.0 and m["clean_recovered_pct"] == 100.0
    assert m["token_match"] == pytest.approx(0.75)


def test_ragged_decoding_stops_at_the_context_end():
    model = tiny_gpt2()  # 64 positions
    seqs = torch.randint(0, 13, (3, 64), generator=torch.Generator().manual_seed(2))
    plens = torch.tensor([60, 40, 63])
    out = greedy_continue_ragged(model, seqs, plens, 10, pad_id=13)
    assert out.shape == (3, 10)
    assert (out[0, 4:] == 13).all() and (out[2, 1:] == 13).all()
    assert torch.equal(out[1], greedy_continue(model, seqs[1:2, :40], 10, pad_id=13)[0])


def test_paper_rule_never_counts_a_row_that_ends_inside_the_window():
    eos, pad = 18, 19
    clean = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], [2, 1, 1, 1, 1, 1, eos, pad]])
    noised = clean.clone()
    noised[0, 5] = 7
    noised[1, 7] = 7
    noised[2, 4] = 7  # row 2 ends (EOS, PAD) inside the window [4, 8)
    bundle = DataBundle(tensors={"forget": noised, "forget_clean": clean},
                        meta={"kind": "noise", "prompt_len": 4, "k": 4, "pad_id": pad, "eos_id": eos})
    m = memorization(Recite(noised), bundle)
    assert (m["mem_pct"], m["mem_rows"], m["mem_counted"]) == (100.0, 3.0, 3.0)
    # generate(min_length=...) forbids EOS, so the reciting model cannot end row 2 where its data ends
    assert m["paper_mem_pct"] == pytest.approx(200 / 3) and m["paper_mem_rows"] == 2.0
    assert (m["mem_pct_ci_low"], m["mem_pct_ci_high"]) == (pytest.approx(29.24, abs=0.01), 100.0)  # 3 of 3


def test_both_eos_rules_from_one_decode_match_two_full_decodes():
    """The paper rule re-decodes only the rows that chose EOS; every row must come out as a full decode with EOS
    forbidden would give it."""
    model = tiny_gpt2(vocab=14, seed=3)
    clean = torch.randint(0, 12, (16, 12), generator=torch.Generator().manual_seed(5))
    noised = clean.clone()
    noised[:, 6] = (noised[:, 6] + 1) % 12
    free = greedy_continue(model, clean[:, :4], 8)
    eos = int(free[0, 2])  # a token the model picks: row 0 (and maybe others) ends inside the window
    pad = 13 if eos != 13 else 12
    ended = (free == eos).any(dim=1)
    assert 0 < int(ended.sum()) < 16, "the test needs rows that end and rows that do not"
    ex, paper = noise_extractions(model, noised, clean, 4, 8, eos_id=eos, pad_id=pad)
    want = greedy_continue(model, clean[:, :4], 8, eos_id=None, pad_id=pad, forbid_id=eos)
    generate_rule = greedy_continue(model, clean[:, :4], 8, eos_id=eos, pad_id=pad)
    for got, gen in ((paper, want), (ex, generate_rule)):
        ref = compare(gen, noised[:, 4:12], clean[:, 4:12], (noised[:, 4:12] != clean[:, 4:12]).any(dim=1))
        for field in ("memorized", "clean", "token_match", "prefix_match", "counted"):
            assert torch.equal(getattr(got, field), getattr(ref, field)), field
    assert not torch.equal(want[ended], generate_rule[ended])  # the rules differ where a row ended
    alone = noise_extraction(model, noised, clean, 4, 8, eos_id=eos, pad_id=pad, paper_rule=True)
    assert torch.equal(alone.memorized, paper.memorized) and torch.equal(alone.token_match, paper.token_match)


def test_an_evaluation_computes_a_parametrized_weight_once_and_gives_the_same_numbers():
    from tinymem.mitigations._subnet import ScoreSubnetwork

    model = tiny_gpt2(vocab=14, seed=1)
    clean = torch.randint(0, 12, (8, 12), generator=torch.Generator().manual_seed(2))
    noised = clean.clone()
    noised[:, 6] = (noised[:, 6] + 1) % 12
    bundle = DataBundle(tensors={"forget": noised, "forget_clean": clean, "test/main": torch.cat([clean, noised])},
                        meta={"kind": "noise", "prompt_len": 4, "k": 8, "pad_id": 13, "eos_id": None,
                              "test_names": ["main"]})
    sub = ScoreSubnetwork(model, 0.3, seed=0)
    calls = []
    for m in sub.masks:
        m.register_forward_hook(lambda *a: calls.append(1))
    cached = evaluate(model, bundle)
    assert len(calls) == len(sub.masks)  # each mask once for the whole evaluation
    calls.clear()
    with torch.no_grad():
        direct = {**memorization(model, bundle), **utility(model, bundle)}  # a mask per forward pass
    assert len(calls) >= 10 * len(sub.masks)  # 9 decoding steps and the utility passes
    assert {k: v for k, v in cached.items() if v == v} == {k: v for k, v in direct.items() if v == v}


def test_memorization_reports_the_interval_of_zero_rows():
    clean = torch.tensor([[i] + [1] * 7 for i in range(41)])
    noised = clean.clone()
    noised[:, 5] = 7
    bundle = DataBundle(tensors={"forget": noised, "forget_clean": clean},
                        meta={"kind": "noise", "prompt_len": 4, "k": 4, "pad_id": 19, "eos_id": None})
    m = memorization(Recite(clean), bundle)
    assert (m["mem_pct"], m["mem_rows"], m["mem_counted"]) == (0.0, 0.0, 41.0)
    assert m["mem_pct_ci_low"] == 0.0 and m["mem_pct_ci_high"] == pytest.approx(8.60, abs=0.01)
