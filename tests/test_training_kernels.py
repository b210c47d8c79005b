"""Fused training kernels (`engine.training_kernels`): when Liger's kernels are used and the errors when they
cannot be; on CPU, how they are wired in (every norm, MLP and rotation of the patched model, also in a
checkpointed backward on another thread, and no other model's), with stand-ins computing the same; on a GPU
with liger-kernel installed, the real kernels: fine-tuning losses and LoRA updates equal to the plain model's
(float32) and the fast path's greedy texts equal to the patched model's own forward, for every family."""

import importlib
import importlib.util
import sys
import types
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_families import FAMILIES, GREEDY, TRAIN, family_model, own_forward_texts, texts
from tiny_lm import COMPLETION, OTHER_PROMPT, PROMPT, one_thread, tokenizer  # noqa: F401 (fixtures)

from arcsl.config import ModelConfig
from arcsl.engine.finetune import collate, completion_loss
from arcsl.engine.hf import HFEngine
from arcsl.engine.training_kernels import apply_training_kernels, patch_model, why_not_liger

HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None


def test_why_not_names_the_device_the_package_and_the_family(tokenizer):
    config = family_model(tokenizer, "llama").config
    assert "GPU" in why_not_liger(config, "cpu", True)
    assert "not installed" in why_not_liger(config, "cuda", False)
    assert why_not_liger(config, "cuda", True) is None
    assert "gemma" in why_not_liger(types.SimpleNamespace(model_type="gemma"), "cuda", True)
    assert "gelu" in why_not_liger(types.SimpleNamespace(model_type="llama", hidden_act="gelu"), "cuda", True)


def test_on_cpu_auto_and_none_leave_the_model_alone_and_liger_is_an_error_naming_the_flag(tokenizer):
    model = family_model(tokenizer, "llama")
    forward = model.model.norm.forward
    assert not apply_training_kernels(model, "auto") and not apply_training_kernels(model, "none")
    assert model.model.norm.forward == forward and not getattr(model, "arcsl_liger", False)
    with pytest.raises(ValueError, match="--training-kernels liger: .*GPU"):
        apply_training_kernels(model, "liger")
    with pytest.raises(ValueError, match="--training-kernels must be one of auto, liger, none"):
        apply_training_kernels(model, "fast")
    with pytest.raises(ValueError, match="training_kernels must be one of"):
        ModelConfig(training_kernels="fast")
    engine = HFEngine(model, tokenizer, ModelConfig(model="llama", lora_rank=4))  # auto, by default
    assert not engine.uses_liger


@pytest.fixture
def stand_ins(monkeypatch):
    """Liger's functions replaced by PyTorch computing the same (counting their calls); the families' rotary
    functions unwrapped for the test (an earlier GPU test may have wrapped them) and restored after it."""
    calls = {"rms_norm": 0, "swiglu": 0, "rope": 0}
    originals = {}
    for family in ("llama", "qwen3"):
        modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        original = getattr(modeling.apply_rotary_pos_emb, "arcsl_original", modeling.apply_rotary_pos_emb)
        monkeypatch.setattr(modeling, "apply_rotary_pos_emb", original)
        originals[family] = original

    def rms_norm(x, w, eps, offset, casting_mode, in_place):
        calls["rms_norm"] += 1
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def swiglu(a, b):
        calls["swiglu"] += 1
        return F.silu(a) * b

    def rope(q, k, cos, sin):
        calls["rope"] += 1
        return originals["llama"](q, k, cos, sin)  # the same rotation in every family

    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_rms_norm, functional.liger_swiglu, functional.liger_rope = rms_norm, swiglu, rope
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    return calls


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_every_norm_mlp_and_rotation_of_the_patched_model_and_no_other_uses_the_kernels(tokenizer, stand_ins,
                                                                                       family):
    model, other = family_model(tokenizer, family), family_model(tokenizer, family)
    ids = torch.tensor([[5, 9, 11, 3, 7]])
    with torch.no_grad():
        expected = model(ids).logits
    patch_model(model)
    layers = model.config.num_hidden_layers
    norms = 1 + 2 * layers + (2 * layers if family == "qwen3" else 0)  # + Qwen3's q/k norms
    with torch.no_grad():
        ours = model(ids).logits
        other(ids)  # a model of the same family that was not patched: its own functions, as before
    assert stand_ins == {"rms_norm": norms, "swiglu": layers, "rope": layers}
    torch.testing.assert_close(ours, expected)


def test_a_checkpointed_backward_on_another_thread_recomputes_with_the_same_kernels(tokenizer, stand_ins):
    """A CUDA backward runs on the device's own thread and recomputes checkpointed layers there: the
    rotation must be the same function there (else checkpointing refuses the recomputed tensors)."""
    import threading

    model = family_model(tokenizer, "llama")
    patch_model(model)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss = model(torch.tensor([[5, 9, 11, 3, 7]])).logits.square().mean()
    before = stand_ins["rope"]
    outcome = []

    def backward():
        try:
            loss.backward()
            outcome.append("done")
        except Exception as e:  # e.g. torch.utils.checkpoint.CheckpointError
            outcome.append(e)

    thread = threading.Thread(target=backward)
    thread.start()
    thread.join()
    assert outcome == ["done"]
    assert stand_ins["rope"] == before + model.config.num_hidden_layers  # every layer recomputed with it


def test_the_finetuner_trains_through_the_kernels_with_the_plain_models_losses(tokenizer, stand_ins):
    model = family_model(tokenizer, "llama")
    engine = HFEngine(model, tokenizer, ModelConfig(model="llama", lora_rank=4, training_kernels="none"))
    patch_model(model)
    plain = HFEngine(family_model(tokenizer, "llama"), tokenizer, ModelConfig(model="llama", lora_rank=4))
    examples = [(PROMPT, COMPLETION), (OTHER_PROMPT, COMPLETION)]
    for cfg in (TRAIN, replace(TRAIN, gradient_checkpointing=True)):
        before = dict(stand_ins)
        ours, theirs = engine.finetune(examples, cfg), plain.finetune(examples, cfg)
        assert stand_ins["rope"] > before["rope"] and stand_ins["swiglu"] > before["swiglu"]
        assert ours.losses == pytest.approx(theirs.losses, rel=1e-5)
        engine.reset()
        plain.reset()


# --- the real kernels ---------------------------------------------------------------------------------

gpu_liger = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_LIGER),
                               reason="needs a CUDA GPU and liger-kernel")


def lora_values(engine: HFEngine) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in engine.finetuner.params[0]])


@gpu_liger
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_liger_fine_tunes_as_the_plain_model_and_the_fast_path_decodes_its_forward(tokenizer, family):
    engines = {kernels: HFEngine(family_model(tokenizer, family).cuda(), tokenizer,
                                 ModelConfig(model=family, lora_rank=4, training_kernels=kernels))
               for kernels in ("none", "liger")}
    assert engines["liger"].uses_liger and not engines["none"].uses_liger
    examples = [(PROMPT, COMPLETION), (OTHER_PROMPT, COMPLETION)] * 2
    for cfg in (TRAIN, replace(TRAIN, gradient_checkpointing=True)):
        plain, fused = (engines[k].finetune(examples, cfg) for k in ("none", "liger"))
        # float32 rounding differs, and 16 steps at learning rate 1e-2 carry it (2e-4 seen at the last step)
        assert fused.losses == pytest.approx(plain.losses, rel=1e-3), (family, cfg.gradient_checkpointing)
        a, b = lora_values(engines["none"]), lora_values(engines["liger"])
        assert ((a - b).norm() / a.norm()).item() < 1e-2  # Adam's first steps amplify float32 rounding a little
    liger = engines["liger"]
    expected = own_forward_texts(liger, [PROMPT, OTHER_PROMPT])  # the patched norms and MLPs, HF's rotary
    assert texts(liger.sample([PROMPT, OTHER_PROMPT], GREEDY)) == [[t] * 2 for t in expected]


@gpu_liger
def test_gpu_liger_bf16_loss_and_lora_gradients_match_the_plain_model():
    """Llama-3.1-8B's layer sizes (2 layers), bf16, 2 x 1,024 tokens: the loss within 1 % and the LoRA
    gradients' cosine above 0.99."""
    from test_gpu import random_example, small_llama

    gen = torch.Generator().manual_seed(0)
    batch = [random_example(1024, 256, gen) for _ in range(2)]
    losses, grads = {}, {}
    for kernels in ("none", "liger"):
        engine = HFEngine(small_llama(), None, ModelConfig(lora_rank=16, training_kernels=kernels))
        ids, mask, _ = collate([engine.codec.encode_example(*e) for e in batch], engine.codec.pad_id, "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = completion_loss(engine.lm, ids, mask) / mask.sum()
        loss.backward()
        losses[kernels] = loss.item()
        grads[kernels] = torch.cat([p.grad.flatten() for p in engine.finetuner.params[0]])
        del engine
        torch.cuda.empty_cache()
    assert losses["liger"] == pytest.approx(losses["none"], rel=1e-2)
    assert F.cosine_similarity(grads["liger"], grads["none"], dim=0).item() > 0.99
