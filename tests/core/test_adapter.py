import pytest
import torch

from tinymem.adapter import ModelAdapter
from tinymem.errors import ConfigError


def make(family):
    torch.manual_seed(0)
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(vocab_size=14, n_positions=32, n_embd=16, n_layer=12, n_head=2,
                                                bos_token_id=0, eos_token_id=0))
    if family == "gpt_neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=14, hidden_size=16, num_hidden_layers=3,
                                                num_attention_heads=2, intermediate_size=48,
                                                max_position_embeddings=32))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=14, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=40, max_position_embeddings=32))


@pytest.mark.parametrize("family,layers,inner", [("gpt2", 12, 64), ("gpt_neox", 3, 48), ("llama", 2, 40)])
def test_adapter_parts(family, layers, inner):
    model = make(family).eval()
    a = ModelAdapter(model)
    assert a.num_layers == layers and a.inner_dim == inner and a.hidden_dim == 16
    assert a.lm_head() is model.get_output_embeddings()
    assert a.neuron_out_weight(0).shape == (inner, 16)
    x = torch.randint(0, 14, (2, 7))
    seen = {}

    def record(acts):
        seen["shape"] = acts.shape  # returns None: activations pass through unchanged

    with a.neuron_hooks({layers - 1: record}):
        model(input_ids=x)
    assert seen["shape"] == (2, 7, inner)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_ablation_silences_exactly_the_chosen_neurons(family):
    model = make(family).eval()
    a = ModelAdapter(model)
    layer = a.num_layers - 1  # in a 12-layer GPT-2 this is layer 11: the paper's substring match would miss it
    before = [p.detach().clone() for p in model.parameters()]
    a.ablate_neurons(layer, torch.tensor([1, 5]))
    acts = {}

    def record(t):
        acts["a"] = t.detach().clone()

    with a.neuron_hooks({layer: record}):
        model(input_ids=torch.randint(0, 14, (3, 6)))
    assert acts["a"][..., [1, 5]].abs().max() == 0
    assert acts["a"][..., [0, 2]].abs().max() > 0
    allowed = {id(p) for p, _ in a.neuron_in_params(layer)}
    changed = [p for p0, p in zip(before, model.parameters()) if not torch.equal(p0, p)]
    assert changed and all(id(p) in allowed for p in changed)  # only this layer's input projections changed


def test_unknown_family_is_a_clear_error():
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(ConfigError, match="unsupported model family 'bert'"):
        ModelAdapter(BertForMaskedLM(BertConfig(vocab_size=14, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32)))
