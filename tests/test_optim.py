"""
nanogpt2.optim: parameter groups with `lr_scale`, set_lr, freezing by name, and the trainer's optimizer factory
(a scaled group really trains at its scaled rate inside the training loop).

    python -m pytest -q tests/test_optim.py
"""

import pytest
import torch

from nanogpt2.model import GPT, GPTConfig
from nanogpt2.optim import freeze, make_adamw, param_groups, set_lr, unfreeze
from test_trainer import cfg_for, records, tiny_trainer


def small():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32))


def test_default_groups_have_scale_one_and_scaled_names_get_their_own_groups():
    model = small()
    plain = param_groups(model, 0.1)
    assert [(g["weight_decay"], g["lr_scale"]) for g in plain] == [(0.1, 1.0), (0.0, 1.0)]
    scaled = param_groups(model, 0.1, lr_scale=lambda n: 10.0 if ".h.1." in n else 1.0)
    assert [(g["weight_decay"], g["lr_scale"]) for g in scaled[:2]] == [(0.1, 1.0), (0.0, 1.0)]
    assert sorted((g["weight_decay"], g["lr_scale"]) for g in scaled[2:]) == [(0.0, 10.0), (0.1, 10.0)]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".h.1." in names[id(p)] for g in scaled[2:] for p in g["params"])
    assert sum(len(g["params"]) for g in scaled) == sum(len(g["params"]) for g in plain)
    with pytest.raises(ValueError, match="lr_scale"):
        param_groups(model, 0.1, lr_scale=lambda n: float("nan"))


def test_set_lr_multiplies_each_groups_scale_and_tolerates_old_groups():
    model = small()
    opt = make_adamw(param_groups(model, 0.1, lr_scale=lambda n: 0.5 if "ln" in n else 1.0), lr=1.0)
    opt.param_groups.append({**opt.param_groups[0], "params": []})
    del opt.param_groups[-1]["lr_scale"]  # a group restored from a checkpoint saved before lr_scale existed
    set_lr(opt, 3e-4)
    assert [g["lr"] for g in opt.param_groups] == [3e-4 * g.get("lr_scale", 1.0) for g in opt.param_groups]
    assert {g["lr"] for g in opt.param_groups} == {3e-4, 1.5e-4}


def test_freeze_and_unfreeze_by_name_pattern():
    model = small()
    n = freeze(model, ["transformer.h.0.*", "transformer.wpe.weight"])
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert n == len(frozen) and "transformer.wpe.weight" in frozen
    assert all(name.startswith("transformer.h.0.") or name == "transformer.wpe.weight" for name in frozen)
    assert all(id(p) not in {id(q) for n_, q in model.named_parameters() if n_ in frozen}
               for g in param_groups(model, 0.1) for p in g["params"])
    with pytest.raises(ValueError, match="no parameter name matches"):
        freeze(model, ["transformer.h.9.*"])
    unfreeze(model, "transformer.h.0.*")
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == {"transformer.wpe.weight"}


def test_trainer_uses_the_optimizer_factory_and_each_groups_scale(tmp_path, monkeypatch):
    """A factory whose layer-1 groups have lr_scale 0: those weights stay exactly as they were, the rest train,
    and the logged lr is the schedule's (scale 1.0)."""
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    cfg = cfg_for(tmp_path, "--max_iters=4", "--warmup_iters=0", "--checkpoint_interval=0", "--vocab_size=65")
    calls = []

    def factory(trainer, model):
        calls.append(trainer)
        return make_adamw(param_groups(model, 0.1, lr_scale=lambda n: 0.0 if ".h.1." in n else 1.0), lr=1e-3,
                          device_type=trainer.device.type)

    tr = tiny_trainer(cfg, make_optimizer=factory)
    before = {n: p.detach().clone() for n, p in tr.raw_model.named_parameters()}
    tr.train()
    assert calls == [tr]
    for n, p in tr.raw_model.named_parameters():
        assert torch.equal(p, before[n]) == (".h.1." in n), n
    assert [r["lr"] for r in records(cfg) if "lr" in r] == [tr.schedule.lr_at(s) for s in range(4)]
    assert [g["lr"] for g in tr.optimizer.param_groups] == [tr.schedule.lr_at(3) * g["lr_scale"] for g in tr.optimizer.param_groups]
