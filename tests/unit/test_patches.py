"""The megatron-core patches: each one's site is still in megatron's source, the choice per
optimizer backend and optimizer kind (TE's and apex's FusedAdam need none), and a vanished site
refuses to patch instead of patching blindly."""
from __future__ import annotations

import dataclasses

import pytest

from elama.parallel import patches

ALL = ["torch_adam_state_init", "torch_adam_step_passthrough", "torch_adam_step_unshare"]


def test_every_patch_site_is_still_in_megatron_core():
    assert patches.missing_sites() == []
    assert patches.megatron_version().startswith(patches.VERIFIED_MEGATRON)


@pytest.mark.parametrize("fmt", ["dp_reshardable", "fully_reshardable"])
@pytest.mark.parametrize("device,backend,distributed,want", [
    ("cpu", "torch", True, ALL),
    ("cuda", "torch", True, ALL),  # a GPU without TE or apex falls back to torch's Adam
    ("cpu", "torch", False, []),  # the plain optimizer restores torch Adam's own state dict
    ("cuda", "te", True, []),  # FusedAdam: step in the param groups, restored by megatron
    ("cuda", "te", False, []),
    ("cuda", "apex", True, []),
    ("cuda", "apex", False, []),
])
def test_patch_choice_per_backend(device, backend, distributed, want, fmt):
    chosen = patches.select_patches(device=device, backend=backend, distributed=distributed,
                                    optimizer_format=fmt)
    assert [p.name for p in chosen] == want


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="'jax' is not one of"):
        patches.select_patches(device="cpu", backend="jax", distributed=True,
                               optimizer_format="dp_reshardable")


def test_this_machine_builds_torch_adam():
    assert patches.optimizer_backend() == "torch"  # neither TE nor apex on the CPU lane


def test_a_vanished_site_is_reported_and_refuses_to_patch(monkeypatch):
    moved = dataclasses.replace(patches.PATCHES[0], source="assert len(steps) == 2")
    gone = dataclasses.replace(patches.PATCHES[1], function="DistributedOptimizer.no_such")
    monkeypatch.setattr(patches, "PATCHES", (moved, gone, patches.PATCHES[2]))
    problems = patches.missing_sites(patches.PATCHES)
    assert len(problems) == 2
    assert "torch_adam_state_init" in problems[0] and "no longer contains" in problems[0]
    assert "no_such" in problems[1]

    class FakeDistributed:  # only the isinstance check and the chained list are consulted
        pass

    from megatron.core.optimizer import distrib_optimizer

    monkeypatch.setattr(distrib_optimizer, "DistributedOptimizer", FakeDistributed)
    with pytest.raises(patches.PatchError, match="changed where elama patches it"):
        patches.prepare_optimizer_load(FakeDistributed(), "dp_reshardable", "cpu")
