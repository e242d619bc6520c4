"""Loss terms as objects: presets are mappings of terms, a new term is a class and a config."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from mrsr.config import config_orders
from mrsr.data.degrade import degrade
from mrsr.errors import ConfigError
from mrsr.losses.objective import (
    SLOTS,
    SRObjective,
    build_terms,
    l1_phase_terms,
    needed_extractors,
    pretrains_with_l1,
)
from mrsr.losses.terms import LossTerm, TermInputs
from mrsr.ops import upsample
from mrsr.report.tables import method_order
from tests.test_sr import TinyViT


class Brightness(LossTerm):
    """A term defined outside the package: squared difference of the mean intensities."""

    after_l1 = False

    def __call__(self, inputs: TermInputs) -> Tensor:
        return (inputs.sr.mean() - inputs.hr.mean()).pow(2)


def loss_of(make_cfg, *overrides: str) -> dict:
    return OmegaConf.to_container(make_cfg(*overrides).loss, resolve=True)


def test_a_new_term_is_a_class_and_a_config(make_cfg) -> None:
    """Added on the command line to the default preset: built, summed with its weight, given a
    scale slot after the standard ones, and no extractor or discriminator is asked for."""
    loss = loss_of(
        make_cfg,
        "loss=l1",
        f"+loss.terms.bright={{_target_: {__name__}.Brightness, weight: 0.5}}",
    )
    assert list(build_terms(loss)) == ["pixel", "bright"]
    assert needed_extractors(loss) == [] and not pretrains_with_l1(loss)
    objective = SRObjective(loss, 2)
    assert objective.slots == [*SLOTS, "bright"] and objective.term_scale.shape == (6,)
    hr = torch.rand(2, 1, 16, 16)
    lr = degrade(hr, 2, "bicubic")
    sr = upsample(lr, 2)
    terms = objective.terms(lr, hr, sr)
    expected = torch.nn.functional.l1_loss(sr, hr) + 0.5 * (sr.mean() - hr.mean()).pow(2)
    assert torch.allclose(objective.total(terms), expected)


def test_null_or_zero_weight_switches_a_term_and_its_extractor_off(make_cfg) -> None:
    assert needed_extractors(loss_of(make_cfg, "loss=paper")) == ["vit", "disent"]
    assert needed_extractors(loss_of(make_cfg, "loss=paper", "loss.terms.vit=null")) == ["disent"]
    zero = ["loss=paper", "loss.terms.str.weight=0", "loss.terms.tex.weight=0"]
    assert needed_extractors(loss_of(make_cfg, *zero)) == ["vit"]
    objective = SRObjective(loss_of(make_cfg, *zero), 2, "bicubic", TinyViT())
    assert list(objective.loss_terms) == ["adv", "vit"] and objective.uses_discriminator


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.terms.pixel.kind=l2", r"loss.terms.pixel.kind='l2' is unknown: choose l1 or"),
        ("loss.terms.pixel.target=lr", r"loss.terms.pixel.target='lr' is not for this term"),
        ("loss.terms.pixel.weight=-1", r"loss.terms.pixel.weight=-1 must be >= 0"),
        ("+loss.terms.pixel.relative=true", r"loss.terms.pixel.relative=true: .* the reference"),
        ("+loss.terms.x.weight=1", r"loss.terms.x has no _target_: .*\+loss_term@loss.terms.x="),
        ("loss.terms.pixel.weight=0", r"loss=l1: no term with a weight > 0"),
    ],
)
def test_bad_loss_configs_are_refused_in_one_line(make_cfg, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        SRObjective(loss_of(make_cfg, "loss=l1", f"{override}"), 2)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv,new",
    [
        ("loss.adv=0.1", "loss.terms.adv.weight=0.1"),
        ("+loss.pixel_type=charbonnier", "loss.terms.pixel.kind=charbonnier"),
        ("loss.features=spatial", "loss.terms.<vit|str>.spatial=true"),
        ("loss.features=pooled", "loss.terms.<vit|str>.spatial=false"),
    ],
)
def test_flat_loss_keys_of_earlier_versions_get_their_new_spelling(argv: str, new: str) -> None:
    from mrsr.run import check_flat_loss_keys

    said = check_flat_loss_keys(["stage=sr", argv])
    assert said is not None and "flat form of earlier versions" in said and new in said
    assert check_flat_loss_keys(["stage=sr", "loss.terms.adv.weight=0.1"]) is None
    with pytest.raises(ConfigError, match=r"flat form.*\(loss.terms.adv.weight=0.1\)"):
        build_terms({"name": "mine", "adv": 0.1})  # a preset file in that form


def test_texture_has_no_map_and_an_extractor_term_needs_its_extractor(make_cfg) -> None:
    with pytest.raises(ConfigError, match="loss.terms.tex.spatial=true: this feature is a vector"):
        build_terms(loss_of(make_cfg, "loss=paper", "+loss.terms.tex.spatial=true"))
    with pytest.raises(ConfigError, match="^loss.terms.vit need the vit feature extractor"):
        SRObjective(loss_of(make_cfg, "loss=vit"), 2)


def test_the_l1_phase_keeps_the_presets_pixel_kind(make_cfg) -> None:
    gan = loss_of(make_cfg, "loss=gan", "loss.terms.pixel.kind=charbonnier")
    phase = l1_phase_terms(gan)
    assert phase["pixel"]["kind"] == "charbonnier" and phase["pixel"]["target"] == "hr"
    assert l1_phase_terms(loss_of(make_cfg, "loss=paper"))["pixel"]["kind"] == "l1"
    off = ["loss=paper_dc", "loss.terms.pixel.kind=charbonnier", "loss.terms.pixel.weight=0"]
    assert l1_phase_terms(loss_of(make_cfg, *off))["pixel"]["kind"] == "charbonnier"
    assert list(build_terms({"terms": phase})) == ["pixel"]


def test_report_rows_follow_the_configs_order(make_cfg) -> None:
    """Baselines, then networks (``edsr_small`` takes ``edsr``'s order), then presets, each by
    the ``order`` of its config; an unknown preset goes last."""
    loss, model = config_orders("loss"), config_orders("model")
    assert loss["l1"] == 1 and model["edsr_small"] == model["edsr"]
    methods = ["gan", "zzz_new", "l1", "edsr_small+paper", "srcnn", "bicubic", "zerofill", "paper"]
    ranked = sorted(methods, key=method_order)
    assert ranked == ["bicubic", "zerofill", "srcnn", "edsr_small+paper", "l1", "paper", "gan"] + [
        "zzz_new"
    ]
    for group in ("loss", "model"):  # the composed config carries the same order
        name = next(iter(config_orders(group)))
        assert make_cfg(f"{group}={name}")[group].order == config_orders(group)[name]


def test_a_preset_composed_alone_is_the_preset_a_run_composes(make_cfg) -> None:
    """What the docs' loss table reads (:func:`mrsr.config.compose_option`)."""
    from mrsr.config import compose_option

    for name in ("gan_feat", "paper_dc", "tex_vit"):
        alone = OmegaConf.to_container(compose_option("loss", name), resolve=True)
        assert alone == loss_of(make_cfg, f"loss={name}")
