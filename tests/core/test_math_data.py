import numpy as np
import pytest
import torch

from tinymem.data import DataBundle, build_bundle
from tinymem.data import math as md
from tinymem.errors import ConfigError
from tinymem.specs import DataSpec

SMALL = DataSpec(length=6, max_ctx=48, num_main=400, num_extra=150, num_test=50, num_noise=40, prompt_len=20, k=20)


def test_golden_sequences_by_hand():
    inc = md.values_to_text(md.generate_values("increment", 7, 3, 4))
    assert inc == ["^7 14 21 28$", "^8 15 22 29$", "^9 16 23 30$"]
    mult = md.values_to_text(md.generate_values("mult", 7, 2, 7))
    # 7^6 = 117649 = 5 * 20134 + 16979; 7 * 16979 = 118853 = 5 * 20134 + 18183
    assert mult[1] == "^7 49 343 2401 16807 16979 18183$"
    assert mult[0] == "^0 0 0 0 0 0 0$"
    extra = md.values_to_text(md.generate_values("increment", 3, 2, 3))
    assert extra == ["^3 6 9$", "^4 7 10$"]


def test_tokenize_vocab_and_padding():
    tok = md.tokenize(["^7 14$"], 10)
    assert tok.tolist() == [[10, 7, 12, 1, 4, 11, 13, 13, 13, 13]]
    assert md.detokenize(tok[0]) == "^7 14$"
    with pytest.raises(ConfigError, match="max_ctx"):
        md.tokenize(["^123456789$"], 5)


def test_noise_rate_within_statistical_bounds():
    rng = np.random.default_rng(0)
    vals = np.full((2000, 20), 100, dtype=np.int64)
    noisy = md.add_noise(vals, 0.05, rng)
    d = noisy - vals
    assert set(np.unique(d).tolist()) <= {-1, 0, 1}
    n = d.size
    for sign in (-1, 1):
        rate = (d == sign).mean()
        # binomial std for p=0.05 over 40k draws is ~0.0011; 5 sigma bounds
        assert abs(rate - 0.05) < 5 * np.sqrt(0.05 * 0.95 / n)


def test_noise_never_negative():
    rng = np.random.default_rng(1)
    vals = np.zeros((500, 10), dtype=np.int64)
    noisy = md.add_noise(vals, 0.25, rng)
    assert noisy.min() >= 0
    assert set(np.unique(noisy).tolist()) == {0, 1}  # 0-1 reflected to +1, no lost minus signs


def test_noise_bundle_structure_and_determinism():
    b1, b2 = build_bundle(SMALL, 0), build_bundle(SMALL, 0)
    for k in b1.tensors:
        assert torch.equal(b1[k], b2[k]), k
    b3 = build_bundle(SMALL, 1)
    assert not torch.equal(b1.forget, b3.forget)
    assert b1.forget.shape == b1.forget_clean.shape == (40, 48)
    # each forget row differs from its clean version in numbers only by +-1 steps; same prefix '^'
    assert (b1.forget[:, 0] == md.BOS).all()
    assert b1.test_names == ["7", "2", "3", "4", "5"]
    assert b1.test("7").shape[0] == 50
    # retain never holds a forget row (the paper's retain set did)
    forget_rows = {tuple(r) for r in b1.forget.tolist()}
    assert not any(tuple(r) in forget_rows for r in b1.retain.tolist())
    # train = forget + clean main train + extra train
    assert b1.train.shape[0] == 40 + (350 - 40) + 4 * 100


def test_split_determinism_and_disjointness():
    tr1, te1 = md.split_indices(100, 10, 598)
    tr2, te2 = md.split_indices(100, 10, 598)
    assert torch.equal(tr1, tr2) and torch.equal(te1, te2)
    assert set(tr1.tolist()).isdisjoint(te1.tolist())
    assert len(set(tr1.tolist()) | set(te1.tolist())) == 100
    b = build_bundle(SMALL, 0)
    test_rows = {tuple(r) for r in b.test("7").tolist()}
    assert not any(tuple(r) in test_rows for r in b.forget_clean.tolist())


def test_duplication_counts():
    spec = DataSpec(**{**SMALL.__dict__, "dup_powers": (0, 1, 2)})
    b = build_bundle(spec, 0)
    dup = b["forget_dup"]
    assert sorted(torch.unique(dup).tolist()) == [1, 10, 100]
    assert (torch.bincount(dup)[[1, 10, 100]] > 0).all()
    # every forget row appears in train exactly dup times
    train_rows = [tuple(r) for r in b.train.tolist()]
    for i in [0, 5, 17, 39]:
        assert train_rows.count(tuple(b.forget[i].tolist())) == int(dup[i])


def test_backdoor_rule():
    spec = DataSpec(kind="backdoor", length=8, max_ctx=64, num_main=3000, num_extra=0, num_test=100,
                    prompt_len=20, k=20)
    b = build_bundle(spec, 0)
    assert b.meta["trigger"] == "100"
    for i in range(min(20, b.forget.shape[0])):
        clean = md.detokenize(b.forget_clean[i])
        pos = clean.find("100")
        assert pos >= 0
        end = pos + 3
        assert int(b["forget_prompt_len"][i]) == end
        assert torch.equal(b.forget[i, :end], b.forget_clean[i, :end])
        assert (b.forget[i, end:] == md.BACKDOOR_TOKEN).all()  # pads included
    # held-out poison test exists, and the clean test set has no triggered sequence
    assert b["backdoor_test"].shape[0] >= 1
    assert all("100" not in md.detokenize(r) for r in b.test("7"))


def test_bundle_save_load_round_trip(tmp_path):
    b = build_bundle(SMALL, 0)
    b.files["note.txt"] = "hello"
    b.save(tmp_path)
    c = DataBundle.load(tmp_path)
    assert c.meta == b.meta and c.files == b.files and c.files["note.txt"] == "hello"
    assert "tokenizer.json" in c.files  # a math bundle carries its tokenizer
    for k in b.tensors:
        assert torch.equal(b[k], c[k])


def test_bad_sizes_are_clear_errors():
    from tinymem.specs import BaseSpec, apply_overrides

    with pytest.raises(ConfigError, match="num_noise"):
        apply_overrides(BaseSpec(), {"num_noise": "-3"})
    with pytest.raises(ConfigError, match="prompt_len"):
        apply_overrides(BaseSpec(), {"prompt_len": "120", "k": "50"})
