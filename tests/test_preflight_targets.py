"""Preflight: every `_target_` node's keys are arguments its target takes, so an experiment composes with every
degradation option and a key one pipeline does not take fails before training, naming the key."""
import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose_train
from src.preflight import check_constructor_args, check_job

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
DEGRADATIONS = sorted(p.stem for p in (CONF / "degradation").glob("*.yaml"))


def test_a_key_the_pipeline_does_not_take_is_named(tmp_path):
    cfg = compose_train(["experiment=repro_small", "degradation=bicubic", "+degradation.jpeg=real"], tmp_path)
    with pytest.raises(ValueError, match=r"^degradation\.jpeg: src\.data\.pipelines\.BicubicPipeline takes no "
                                         r"argument 'jpeg' \(it takes: scale\)"):
        check_job(cfg, [])


def test_the_bicubic_setting_of_the_reduced_campaign_composes(tmp_path):
    cfg = compose_train(["experiment=repro_small_deep", "degradation=bicubic"], tmp_path)
    check_job(cfg, [])
    assert list(OmegaConf.to_container(cfg.degradation)) == ["_target_", "scale"]


def test_nested_targets_and_kwargs_targets():
    cfg = OmegaConf.create({"a": {"b": {"_target_": "src.data.pipelines.BicubicPipeline", "scale": 4, "bad": 1}}})
    with pytest.raises(ValueError, match=r"^a\.b\.bad: "):
        check_constructor_args(cfg)
    # a target taking **kwargs accepts any key; `_partial_` and other Hydra keys are not arguments
    ok = OmegaConf.create({"x": {"_target_": "builtins.dict", "anything": 1, "_partial_": True},
                           "y": {"_target_": "src.data.pipelines.BicubicPipeline", "scale": "${x.anything}"}})
    check_constructor_args(ok)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_every_experiment_composes_with_every_degradation(tmp_path, experiment, degradation):
    cfg = compose_train([f"experiment={experiment}", f"degradation={degradation}"], tmp_path)
    check_job(cfg, [])


def test_the_scorecards_swinir_command_composes(tmp_path):
    cfg = compose_train(["experiment=repro_small", "backbone=swinir_small", "name=repro_swinir", "dropout.p=0.5",
                         "seed=1", "eval.protocol=both"], tmp_path)
    check_job(cfg, [])
