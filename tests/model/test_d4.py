"""The D4 network: its layers turn with the image, so its answers do not depend on which way up
or which way round a galaxy is, before any training."""

from __future__ import annotations

import torch

from galaxy_core.data.geometry import dihedral
from galaxy_core.model.d4 import ORDER, GroupConv, LiftingConv, act
from galaxy_core.model.network import Architecture, build_model


def test_group_convolutions_are_equivariant() -> None:
    torch.manual_seed(0)
    lift, conv = LiftingConv(3, 2, 3, 1, 1), GroupConv(2, 2, 3, 2, 1)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        y = conv(lift(x)).view(1, 2, ORDER, 6, 6)
        for g in range(ORDER):
            turned = conv(lift(act(g, x))).view(1, 2, ORDER, 6, 6)
            # The same features, turned, with the 8 copies permuted among themselves.
            assert torch.allclose(turned.sum(2), act(g, y.sum(2)), atol=1e-5)
            assert g == 0 or not torch.allclose(turned, y, atol=1e-3)


def test_d4_network_answers_the_same_for_all_eight_views() -> None:
    torch.manual_seed(1)
    model = build_model(Architecture("d4_resnet", width=8, depth=1, aux_outputs=3, tree_outputs=28)).eval()
    model = model.to(memory_format=torch.channels_last)  # as training lays it out
    plain = build_model(Architecture("resnet_small", width=8, depth=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.heads(x)
        for k in range(8):
            heads = model.heads(dihedral(x, k))
            assert torch.allclose(heads.logits, ref.logits, atol=1e-5)
            assert torch.allclose(heads.tree, ref.tree, atol=1e-5)
        assert not torch.allclose(plain(dihedral(x, 1)), plain(x), atol=1e-4)  # what the D4 network fixes


def test_served_filters_are_built_once_and_follow_every_change_of_the_weights() -> None:
    torch.manual_seed(2)
    model = build_model(Architecture("d4_resnet", width=4, depth=1)).eval()
    other = build_model(Architecture("d4_resnet", width=4, depth=1)).eval()
    conv = next(m for m in model.modules() if isinstance(m, GroupConv))
    x = torch.randn(2, 3, 16, 16)

    def served() -> torch.Tensor:
        with torch.inference_mode():
            return model.heads(x).logits.clone()

    def built_afresh() -> torch.Tensor:  # with gradients on, every call builds its filters
        with torch.enable_grad():
            return model.heads(x).logits.detach()

    first = served()
    kept = conv._kept
    model.eval()  # as every call to the classifier does
    assert kept is not None and torch.equal(served(), first) and conv._kept is kept
    assert torch.allclose(first, built_afresh(), atol=1e-6)
    model.load_state_dict(other.state_dict())  # a model loaded into a served network
    with torch.inference_mode():
        assert torch.allclose(served(), other.heads(x).logits, atol=1e-6)
    with torch.no_grad():  # an in-place change without leaving eval mode
        for p in model.parameters():
            p.mul_(1.1)
    assert torch.allclose(served(), built_afresh(), atol=1e-6)
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    model.heads(x).logits.sum().backward()
    optimiser.step()
    model.eval()
    changed = served()
    assert not torch.allclose(changed, first, atol=1e-3) and torch.allclose(changed, built_afresh(), atol=1e-6)
