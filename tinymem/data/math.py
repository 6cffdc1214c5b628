"""TinyMem math data: the `increment` (x+7) and `mult` (7x mod 20134) tasks, as in the paper's code.

Example `i` of a distribution with step function f starts at i and emits `length` numbers
x1 = f(i), x_{j+1} = f(x_j) (the start value itself is not emitted). The text is
`^n1 n2 ... nL$`, tokenized character by character with the 14-token vocabulary below and right-padded
with PAD to `max_ctx`. `math_tokenizer` is the same vocabulary as a `transformers` tokenizer; its files
travel in the bundle, so `AutoTokenizer.from_pretrained(model_dir)` works on every math model directory.

Departures from the paper's code, on purpose (all are listed in docs/departures.md):

- A noised value can never be negative. The paper's noise can turn a 0 into -1, whose minus sign the
  tokenizer then silently drops (so "-1" becomes "1" by accident and the noise bookkeeping is wrong). Here
  a -1 step applied to 0 is reflected to +1, explicitly, and the noised numbers are what the tokens say.
- A sequence longer than `max_ctx` is an error rather than silently truncated: pick `max_ctx` to fit.
- Noise indices are drawn from the whole train split of the main distribution (the paper draws from
  `range(num_main - num_noise)`, which only equals the train split when num_test == num_noise).
"""

from __future__ import annotations

import numpy as np
import torch

from tinymem.data.bundle import DataBundle
from tinymem.errors import ConfigError
from tinymem.specs import DataSpec

# Vocabulary: digits 0-9 are ids 0-9.
BOS, EOS, SPACE, PAD = 10, 11, 12, 13
VOCAB_SIZE = 14
CHARS = "0123456789^$ "  # id = index; PAD has no character
PAD_TOKEN = "<pad>"  # the name of PAD in the `transformers` tokenizer
MODULUS = 20134
MAIN_BASE = 7
BACKDOOR_TOKEN = 2  # every token after the trigger becomes this id

_LUT = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(CHARS):
    _LUT[ord(_c)] = _i


def step_fn(task: str, base: int):
    """The recurrence of a distribution: x+base (increment) or base*x mod 20134 (mult)."""
    if task == "increment":
        return lambda x: x + base
    if task == "mult":
        return lambda x: (base * x) % MODULUS
    raise ConfigError(f"unknown math task {task!r}; allowed: ['increment', 'mult']")


def generate_values(task: str, base: int, num: int, length: int) -> np.ndarray:
    """[num, length] int64 array of the numbers of examples 0..num-1 (vectorized over examples)."""
    f = step_fn(task, base)
    x = np.arange(num, dtype=np.int64)
    out = np.empty((num, length), dtype=np.int64)
    for j in range(length):
        x = f(x)
        out[:, j] = x
    return out


def values_to_text(values: np.ndarray) -> list[str]:
    return ["^" + " ".join(map(str, row)) + "$" for row in values.tolist()]


def tokenize(texts: list[str], max_ctx: int) -> torch.Tensor:
    """Character tokens, right-padded with PAD to max_ctx. A character outside the vocabulary is an error."""
    out = np.full((len(texts), max_ctx), PAD, dtype=np.int64)
    for r, s in enumerate(texts):
        if len(s) > max_ctx:
            raise ConfigError(f"a sequence has {len(s)} tokens but max_ctx={max_ctx}; raise max_ctx or lower length")
        ids = _LUT[np.frombuffer(s.encode("ascii"), dtype=np.uint8)]
        if (ids < 0).any():
            raise ValueError(f"character outside the math vocabulary in {s!r}")
        out[r, : len(s)] = ids
    return torch.from_numpy(out)


def detokenize(row: torch.Tensor) -> str:
    """Inverse of `tokenize` for one row; PAD is dropped."""
    return "".join(CHARS[t] for t in row.tolist() if t != PAD)


def math_tokenizer(max_ctx: int | None = None):
    """The math vocabulary as a `transformers.PreTrainedTokenizerFast`: `tok("^1 8 15").input_ids` is what
    `tokenize` gives without the padding; bos `^`, eos `$`, pad `<pad>` (id 13)."""
    # Imported here: transformers is slow to import, and the tensors of a bundle do not need it.
    from tinymem.data.tokenizer import character_tokenizer

    return character_tokenizer(CHARS, PAD_TOKEN, CHARS[BOS], CHARS[EOS], model_max_length=max_ctx)


def math_tokenizer_files(max_ctx: int | None = None) -> dict[str, str]:
    """The files of `math_tokenizer` (`tokenizer.json`, ...), name -> content, as a bundle carries them."""
    from tinymem.data.tokenizer import tokenizer_files

    return tokenizer_files(math_tokenizer(max_ctx))


def with_math_tokenizer(bundle: DataBundle) -> DataBundle:
    """`bundle`, with the math tokenizer's files if it is a math bundle without them (a base model stored before
    math bundles carried them: the vocabulary is fixed, so they are rebuilt from its meta). Any other bundle is
    returned as it is (text bundles always carry their tokenizer)."""
    if "tokenizer.json" in bundle.files or bundle.meta.get("task") not in ("increment", "mult"):
        return bundle
    files = {**bundle.files, **math_tokenizer_files(bundle.meta.get("max_ctx"))}
    return DataBundle(tensors=bundle.tensors, meta=bundle.meta, files=files)


def add_noise(values: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Add +1 or -1 to each number independently with probability p each; 0-1 is reflected to +1."""
    u = rng.random(values.shape)
    delta = np.where(u < p, -1, np.where(u < 2 * p, 1, 0))
    noisy = values + delta
    noisy = np.where(noisy < 0, values + 1, noisy)
    return noisy


def split_indices(num: int, num_test: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's split: randperm under a fixed seed; the last num_test indices are the test set."""
    g = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(num, generator=g)
    return perm[: num - num_test], perm[num - num_test :]


def backdoor(tokens: torch.Tensor, texts: list[str], trigger: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace every token after the first occurrence of `trigger` (pads included) with token 2.

    Returns the backdoored tokens and, per row, the prompt length: the position right after the trigger.
    """
    out = tokens.clone()
    plen = torch.empty(len(texts), dtype=torch.long)
    for r, s in enumerate(texts):
        pos = s.find(trigger)
        if pos < 0:
            raise ValueError(f"row {r} does not contain the trigger {trigger!r}")
        end = pos + len(trigger)
        out[r, end:] = BACKDOOR_TOKEN
        plen[r] = end
    return out, plen


def duplicate_counts(num_forget: int, powers: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    """Shuffle forget rows into len(powers) equal partitions; partition p is repeated 10**p times."""
    counts = np.ones(num_forget, dtype=np.int64)
    if powers:
        order = rng.permutation(num_forget)
        for part, power in zip(np.array_split(order, len(powers)), powers):
            counts[part] = 10**power
    return torch.from_numpy(counts)


def build_math_bundle(spec: DataSpec, seed: int) -> DataBundle:
    """Build the math data bundle for `spec`, deterministic for `seed` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    task = spec.task
    main_vals = generate_values(task, MAIN_BASE, spec.num_main, spec.length)
    main_text = values_to_text(main_vals)
    main_tok = tokenize(main_text, spec.max_ctx)
    train_idx, test_idx = split_indices(spec.num_main, spec.num_test, spec.split_seed)

    extra_train, tests = [], {str(MAIN_BASE): main_tok[test_idx]}
    for base in spec.extra_bases:
        if spec.num_extra <= spec.num_test:
            if spec.num_extra:
                raise ConfigError(f"num_extra={spec.num_extra} must exceed num_test={spec.num_test} (or be 0)")
            continue
        vals = generate_values(task, base, spec.num_extra, spec.length)
        tok = tokenize(values_to_text(vals), spec.max_ctx)
        tr, te = split_indices(spec.num_extra, spec.num_test, spec.split_seed)
        extra_train.append(tok[tr])
        tests[str(base)] = tok[te]
    extra = torch.cat(extra_train) if extra_train else main_tok[:0]

    meta = {"task": task, "kind": spec.kind, "prompt_len": spec.prompt_len, "k": spec.k, "pad_id": PAD,
            "bos_id": BOS, "eos_id": EOS, "vocab_size": VOCAB_SIZE, "max_ctx": spec.max_ctx,
            "test_names": list(tests), "seed": seed}
    tensors: dict[str, torch.Tensor] = {}

    if spec.kind == "noise":
        n_train = len(train_idx)
        if spec.num_noise > n_train:
            raise ConfigError(f"num_noise={spec.num_noise} exceeds the {n_train} training sequences")
        pick = torch.from_numpy(np.sort(rng.choice(n_train, size=spec.num_noise, replace=False)))
        noise_rows = train_idx[pick]
        noisy_vals = add_noise(main_vals[noise_rows.numpy()], spec.noise_p, rng)
        forget = tokenize(values_to_text(noisy_vals), spec.max_ctx)
        forget_clean = main_tok[noise_rows]
        keep = torch.ones(n_train, dtype=torch.bool)
        keep[pick] = False
        clean_main = main_tok[train_idx[keep]]
        meta["noised_numbers"] = int((noisy_vals != main_vals[noise_rows.numpy()]).sum())
        meta["trigger"] = None
    else:
        trig = spec.trigger if spec.trigger >= 0 else 100 + seed
        meta["trigger"] = str(trig)
        triggered = torch.tensor([str(trig) in s for s in main_text], dtype=torch.bool)
        trig_rows = torch.nonzero(triggered).flatten()
        if len(trig_rows) < 2:
            raise ConfigError(f"trigger {trig} occurs in only {len(trig_rows)} sequences; choose another")
        g = torch.Generator().manual_seed(spec.split_seed)
        trig_rows = trig_rows[torch.randperm(len(trig_rows), generator=g)]
        n_poison_test = max(1, len(trig_rows) // 10)
        poison_train, poison_test = trig_rows[n_poison_test:], trig_rows[:n_poison_test]
        texts = main_text
        forget, fplen = backdoor(main_tok[poison_train], [texts[i] for i in poison_train.tolist()], str(trig))
        forget_clean = main_tok[poison_train]
        bd_test, bplen = backdoor(main_tok[poison_test], [texts[i] for i in poison_test.tolist()], str(trig))
        tensors.update({"backdoor_test": bd_test, "backdoor_test_clean": main_tok[poison_test],
                        "backdoor_test_prompt_len": bplen, "forget_prompt_len": fplen})
        untrig = torch.nonzero(~triggered).flatten()
        tr, te = split_indices(len(untrig), spec.num_test, spec.split_seed)
        clean_main = main_tok[untrig[tr]]
        tests[str(MAIN_BASE)] = main_tok[untrig[te]]

    dup = duplicate_counts(len(forget), spec.dup_powers, rng)
    train = torch.cat([forget.repeat_interleave(dup, dim=0), clean_main, extra])
    retain = torch.cat([clean_main, extra])
    tensors.update({"train": train, "forget": forget, "forget_clean": forget_clean, "forget_dup": dup,
                    "retain": retain, "extra": extra})
    for name, t in tests.items():
        tensors[f"test/{name}"] = t
    return DataBundle(tensors=tensors, meta=meta, files=math_tokenizer_files(spec.max_ctx))
