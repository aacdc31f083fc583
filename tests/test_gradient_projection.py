"""Per-row gradient surgery against the mask loss, by hand and in a training step."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from iuq_d2.layers.gradient_projection import project_conflicting_gradient

from .test_query_bank import _two_image_batch, iuq_config


def test_only_conflicting_rows_lose_their_component_along_the_protected_one():
    x = torch.zeros(3, 2, requires_grad=True)
    protected = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    seen = []
    y = project_conflicting_gradient(x, protected, seen.append)
    grad = torch.tensor([[-2.0, 3.0], [2.0, 3.0], [-2.0, 3.0]])
    (y * grad).sum().backward()
    # Row 0 conflicts (dot -2): its x part goes; row 1 agrees and row 2 has nothing to protect.
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 3.0], [2.0, 3.0], [-2.0, 3.0]]))
    assert len(seen) == 1 and seen[0].item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="protected gradient"):
        project_conflicting_gradient(x, protected[:2])


def _gradients_at_the_queries(**overrides):
    """The mask loss's and the inter-scene loss's gradients with respect to the controller's
    output on a second batch (the first fills the bank), and the logged conflict fraction."""
    torch.manual_seed(0)
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.LOSS_WEIGHT": 1.0, **overrides}))
    captured = {}
    forward_train = model.forward_train

    def keep_outputs(*args, **kwargs):
        captured["outputs"] = forward_train(*args, **kwargs)
        return captured["outputs"]

    with EventStorage() as storage:
        model(_two_image_batch())
        model.forward_train = keep_outputs
        losses = model(_two_image_batch())
        params = captured["outputs"].queries.mask_head_params
        (g_mask,) = torch.autograd.grad(losses["loss_mask"], params, retain_graph=True)
        (g_inter,) = torch.autograd.grad(losses["loss_inter"], params, retain_graph=True)
        # The fraction measured in that backward is logged by the next step's forward.
        model(_two_image_batch())
        conflict = storage.latest().get("iuq/inter_conflict_frac", (None,))[0]
    return g_mask, g_inter, conflict


def test_without_projection_the_two_gradients_conflict_on_some_query():
    """The premise, on the batch of the next test: some queries' inter-scene gradient works
    against their mask loss when nothing is projected."""
    g_mask, g_inter, conflict = _gradients_at_the_queries()
    assert ((g_mask * g_inter).sum(dim=1) < 0).any()
    assert conflict is None


def test_projected_inter_scene_gradient_never_works_against_the_mask_loss():
    g_mask, g_inter, conflict = _gradients_at_the_queries(
        **{"MODEL.IUQ.INTER.PROJECT_CONFLICT": True}
    )
    assert g_inter.abs().sum() > 0
    dots = (g_mask * g_inter).sum(dim=1)
    assert (dots >= -1e-6 * g_mask.norm(dim=1) * g_inter.norm(dim=1)).all()
    assert 0.0 < conflict < 1.0


def test_projection_without_the_mask_loss_is_an_error():
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.PROJECT_CONFLICT": True}))
    with pytest.raises(ValueError, match="PROJECT_CONFLICT"):
        model.inter_scene.protect_mask_loss(None, None)
