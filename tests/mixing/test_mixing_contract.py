"""The contract a mixing method is written against (issue 37): the package finds its modules, a plan
carries k partners per sample, a method says where its weights come from, a config class that was
never registered is refused, and every list of methods is read from the registry."""

import dataclasses
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import REPO

import mixtrain.mixing
from mixtrain.cli import main
from mixtrain.config import config_dir
from mixtrain.config.registry import REGISTRY, option_names, options
from mixtrain.errors import MixtrainError
from mixtrain.mixing import Mixer, MixPlan, MixSpec, MixupConfig, create_mixer, draw_plan, mix_images, mix_targets
from mixtrain.mixing.plans import draw_many, draw_one, group_partners, pair_partners
from mixtrain.mixing.preview import caption, render_grid

# --------------------------------------------------------------------------- found by the package


def test_every_module_of_the_package_is_imported_and_every_method_has_its_yaml():
    modules = {m.__name__ for m in mixtrain.mixing.MODULES}
    for method in options("augment").values():
        assert method.schema.__module__ in modules | {"mixtrain.config.augment"}  # `none` is the base schema
    assert {p.stem for p in (config_dir() / "augment").glob("*.yaml")} == set(option_names("augment"))


def test_a_module_put_in_the_package_registers_with_no_other_edit(tmp_path, monkeypatch):
    (tmp_path / "halfmix.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        from mixtrain.config.augment import MixConfig
        from mixtrain.mixing.method import Mixer, register_method, spec_of


        @dataclass
        class HalfConfig(MixConfig):
            """Half: a blend at 0.5."""

            name: str = "halfmix"

            def spec(self):
                return spec_of(self, mixup_alpha=1.0)


        register_method("halfmix", HalfConfig, Mixer)
    '''))
    monkeypatch.setattr(mixtrain.mixing, "__path__", [*mixtrain.mixing.__path__, str(tmp_path)])
    try:
        modules = mixtrain.mixing.import_modules()
        assert "mixtrain.mixing.halfmix" in {m.__name__ for m in modules}
        assert options("augment")["halfmix"].schema.__module__ == "mixtrain.mixing.halfmix"
    finally:
        REGISTRY["augment"].pop("halfmix", None)
        sys.modules.pop("mixtrain.mixing.halfmix", None)


def test_a_methods_names_come_from_the_package_as_well_as_its_module():
    from mixtrain.mixing import FMixConfig, stage_modules
    from mixtrain.mixing.fmix import FMixConfig as own
    from mixtrain.mixing.manifold import stage_modules as own_stages

    assert FMixConfig is own and stage_modules is own_stages
    with pytest.raises(AttributeError):
        mixtrain.mixing.NoSuchMixer


# --------------------------------------------------------------------------- refused when never registered


@dataclasses.dataclass
class QuietMixupConfig(MixupConfig):
    """A subclass whose module never called register_method."""

    name: str = "quiet"


def test_an_unregistered_config_subclass_is_refused_not_trained_as_its_base():
    with pytest.raises(MixtrainError, match=r"augment config test_mixing_contract.QuietMixupConfig is not registered "
                                            r"\(it derives from MixupConfig, augment=mixup\): its module must call "
                                            r"mixtrain.mixing.register_method\(name, QuietMixupConfig, ...\)"):
        create_mixer(QuietMixupConfig(), 3, epochs=1)


def test_an_unregistered_users_config_stops_the_command_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "quiet_method.py").write_text(
        "from dataclasses import dataclass\nfrom mixtrain.mixing import MixupConfig\n\n\n"
        "@dataclass\nclass Quiet(MixupConfig):\n    name: str = 'quiet'\n")
    (tmp_path / "conf" / "augment").mkdir(parents=True)
    (tmp_path / "conf" / "augment" / "quiet.yaml").write_text("_target_: quiet_method.Quiet\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["train", "-cd", str(tmp_path / "conf"), "augment=quiet", "trainer.device=cpu",
                 f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "augment config quiet_method.Quiet is not registered (it derives from MixupConfig, augment=mixup)" in err
    assert not (tmp_path / "run").exists()
    sys.modules.pop("quiet_method", None)


# --------------------------------------------------------------------------- where the weights come from


def test_a_uniform_draw_is_the_one_the_methods_without_beta_always_drew():
    # ResizeMix and SmoothMix once wrote Beta(1, 1) as mixup's alpha: their streams (and results) stay the same.
    for mode_draw in (draw_many, lambda spec, rng, h, w: draw_one(spec, rng, h, w)):
        uniform, beta = np.random.default_rng(3), np.random.default_rng(3)
        for _ in range(50):
            args = (1,) if mode_draw is draw_many else ()
            a = mode_draw(MixSpec(lam_draw="uniform", prob=0.7), uniform, *args, 8, 8)
            b = mode_draw(MixSpec(mixup_alpha=1.0, prob=0.7), beta, *args, 8, 8)
            assert repr(a) == repr(b)


def test_k_partners_need_the_method_to_draw_the_weights():
    with pytest.raises(ValueError, match="3 partners per sample need lam_draw='method'"):
        MixSpec(mixup_alpha=1.0, partners=3)

    @dataclasses.dataclass
    class Unfinished(MixupConfig):
        def spec(self):
            return MixSpec(lam_draw="method", partners=2)

    with pytest.raises(NotImplementedError, match=r"Mixer draws its own weights .*define draw_weights"):
        Mixer(Unfinished(), 3, epochs=1).draw_plan(4, 2, 2)


# --------------------------------------------------------------------------- plans of k partners


@pytest.mark.parametrize("batch,k", [(8, 3), (9, 3), (7, 2), (6, 1), (2, 3)])
def test_groups_mix_among_themselves_each_member_once_in_every_slot(batch, k):
    partner, leader, grouped = group_partners(batch, k, np.random.default_rng(batch))
    assert grouped.sum() == batch // (k + 1) * (k + 1)
    for i in range(batch):
        if not grouped[i]:  # left over: its own partner, unmixed
            assert (partner[:, i] == i).all() and leader[i] == i
            continue
        group = sorted({i, *partner[:, i].tolist()})
        assert len(group) == k + 1 and {leader[g] for g in group} == {leader[i]}
        for slot in partner:  # in each slot every member takes another member once
            assert sorted(slot[group]) == group and all(slot[g] != g for g in group)
    if k == 1:  # pairs: the pair rule's partners, from the same random numbers
        assert np.array_equal(partner[0], pair_partners(batch, np.random.default_rng(batch))[0])


def indexed(batch, size=6):
    return torch.eye(batch)[:, :, None, None].expand(batch, batch, size, size).contiguous()


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("regions", [True, False])
def test_a_plan_of_k_partners_applies_pixel_by_pixel(shared, regions):
    batch, k, n = 5, 2, 1 if shared else 5
    rng = np.random.default_rng(0)
    partner = torch.from_numpy(np.stack([rng.permutation(batch) for _ in range(k)]))
    if regions:  # partner 0 takes rows [0, 2) x cols [0, 3); partner 1 rows [3, 6) x cols [2, 6)
        boxes = torch.tensor([[0, 2, 0, 3], [3, 6, 2, 6]]).view(k, 1, 4).expand(k, n, 4).clone()
        weights = torch.tensor([1 - 6 / 36 - 12 / 36, 6 / 36, 12 / 36], dtype=torch.float64).view(3, 1).expand(3, n)
    else:
        boxes = torch.zeros(k, n, 4, dtype=torch.long)
        weights = torch.from_numpy(rng.dirichlet([1.0] * (k + 1), n).T.copy())
    plan = MixPlan(partner, weights[0].clone(), torch.full((n,), regions), boxes, shared=shared,
                   weights=weights.clone())
    images = torch.randn(batch, 2, 6, 6, dtype=torch.float64)
    mixed = mix_images(images.clone(), plan, inplace=True)
    for i in range(batch):
        e = 0 if shared else i
        for y in range(6):
            for x in range(6):
                if regions:
                    inside = [bool(boxes[j, e, 0] <= y < boxes[j, e, 1] and boxes[j, e, 2] <= x < boxes[j, e, 3])
                              for j in range(k)]
                    source = int(partner[inside.index(True), i]) if any(inside) else i
                    assert torch.equal(mixed[i, :, y, x], images[source, :, y, x])
                else:
                    expected = weights[0, e] * images[i, :, y, x] + sum(
                        weights[j + 1, e] * images[int(partner[j, i]), :, y, x] for j in range(k))
                    torch.testing.assert_close(mixed[i, :, y, x], expected)
    targets = mix_targets(torch.eye(batch, dtype=torch.float64), plan)
    provenance = mix_images(indexed(batch).double(), plan).mean(dim=(2, 3))
    torch.testing.assert_close(targets, provenance)


def test_the_rule_shares_a_groups_draw_and_leaves_unmixed_entries_whole():
    spec = MixSpec(lam_draw="method", partners=3, mode="pair", prob=0.5)
    draws = []

    def weights(n, height, width):
        w = np.random.default_rng(len(draws)).dirichlet([1.0] * 4, n).T
        draws.append(w)
        return w, None

    plan = draw_plan(spec, np.random.default_rng(1), 10, 4, 4, weights)
    partner, w = plan.partner.numpy(), plan.weights.numpy()
    for i in range(10):
        group = [i, *partner[:, i]]
        if w[0, i] == 1.0:  # unmixed: all of itself
            assert (w[1:, i] == 0).all()
        else:
            assert len(set(group)) == 4 and all(np.array_equal(w[:, g], w[:, i]) for g in group)
    assert (w[0] == 1.0).sum() >= 2  # the two samples left over at least
    assert draw_plan(MixSpec(lam_draw="method", partners=3, prob=0.0), np.random.default_rng(1), 8, 4, 4,
                     weights).is_identity


# --------------------------------------------------------------------------- every label in the preview


def test_the_preview_captions_every_label_of_a_target():
    target = torch.tensor([0.4, 0.02, 0.3, 0.2, 0.08, 0.0])
    classes = ["ant", "bee", "cat", "dog", "eel", "fox"]
    assert caption(target, classes) == ["ant 0.40", "cat 0.30", "dog 0.20", "eel 0.08", "bee 0.02"]
    smoothed = torch.tensor([0.02, 0.42, 0.02, 0.25, 0.27, 0.02])  # smoothing's floor is no label
    assert caption(smoothed, classes) == ["bee 0.42", "eel 0.27", "dog 0.25"]
    grid = render_grid(torch.zeros(2, 3, 16, 16), torch.stack([target, smoothed]), classes, [0.5] * 3, [0.5] * 3)
    assert grid.shape == (96 + 5 * 12 + 2, 2 * 96, 3)  # the caption strip holds five lines


# --------------------------------------------------------------------------- lists read from the registry


def test_the_bench_measures_every_registered_method():
    import importlib.util

    path = REPO / "bench" / "mixing.py"
    spec = importlib.util.spec_from_file_location("bench_mixing", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    measured = set(bench.family_methods()) | {"mixup", "cutmix", "switch"}
    assert measured == {name for name, m in options("augment").items() if m.previewable and name != "none"}
