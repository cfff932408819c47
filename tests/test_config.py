import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose_train

GROUPS = ["backbone", "degradation", "data", "trainer", "logger", "callbacks", "size", "experiment", "debug"]


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_resolves(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if group == "backbone":
        overrides.append("dropout.position=none")  # not every backbone honours every position; test_models covers that
    cfg = compose_train(overrides, tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["module"]["backbone"] == resolved["backbone"]
    assert resolved["data"]["total_steps"] == resolved["trainer"]["max_steps"]


def test_every_group_has_options():
    for group in GROUPS[:6]:
        assert _options(group), f"conf/{group} is empty"


def test_quickstart_defaults_match_the_issue(tmp_path):
    cfg = compose_train([], tmp_path)
    assert cfg.dropout.position == "last" and cfg.dropout.dim == "channel" and cfg.dropout.p > 0
    assert cfg.degradation._target_.endswith("RealESRGANPipeline")
    assert cfg.data.train_sets == ["skimage"]
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    assert cfg.module.optimizer.lr == 2e-4 and list(cfg.module.optimizer.betas) == [0.9, 0.999]
    assert cfg.logger.wandb.offline is True


PAPER_POSITIONS = ["none", "last", "b4", "b8", "b12", "b16", "quarter", "half", "all"]


@pytest.mark.parametrize("position", PAPER_POSITIONS)
def test_every_paper_position_builds_on_the_default_model(tmp_path, position):
    import torch

    from src.models.loading import build_backbone

    cfg = compose_train([f"dropout.position={position}"], tmp_path)
    assert cfg.backbone.num_block == 16 and cfg.backbone._target_.endswith("MSRResNet")  # SRResNet's own depth
    module = OmegaConf.to_container(cfg.module, resolve=True)
    with torch.device("meta"):
        net = build_backbone(module["backbone"], scale=module["scale"], dropout=module["dropout"])
    dropped = [m for m in net.modules() if type(m).__name__.endswith("Dropout") and getattr(m, "p", 0) > 0]
    assert (len(dropped) > 0) == (position != "none")


def test_run_folder_is_named_by_overrides():
    from src.runs import run_id

    assert run_id("") == "default"
    assert run_id("dropout.p=0.5,init_from=/a/b") == "dropout.p-0.5_init_from-.a.b"
    # list values stay one item; nothing a shell or Hydra's parser would need quoted survives
    assert run_id("data.test_sets=[Set5,Set14],seed=1") == "data.test_sets-Set5+Set14_seed-1"
    assert run_id("+dropout.prob=0.5,x='a b'") == "+dropout.prob-0.5_x-ab"
    long = run_id(",".join(f"k{i}=v{i}" for i in range(40)))
    assert len(long) == 120 and long != run_id(",".join(f"k{i}=v{i}" for i in range(41)))


@pytest.mark.parametrize("launcher,key", [("slurm", "nodes"), ("local_parallel", "n_jobs"), ("joblib", "n_jobs")])
def test_launcher_configs_compose(tmp_path, launcher, key):
    cfg = compose_train([f"hydra/launcher={launcher}"], tmp_path)
    assert key in cfg.hydra.launcher


def test_dropout_is_one_node_chosen_by_value(tmp_path):
    assert not (CONF / "dropout").exists()
    cfg = compose_train(["backbone=srresnet", "dropout.position=b8", "dropout.p=0.5"], tmp_path)
    assert dict(cfg.dropout) == {"position": "b8", "dim": "channel", "p": 0.5}
    module = OmegaConf.to_container(cfg.module, resolve=True)
    assert (module["dropout"]["position"], module["dropout"]["p"]) == ("b8", 0.5)


def test_scale_is_the_sr_factor_everywhere(tmp_path):
    cfg = OmegaConf.to_container(compose_train(["scale=2"], tmp_path), resolve=True)
    assert {cfg["data"]["scale"], cfg["degradation"]["scale"], cfg["module"]["scale"]} == {2}
    assert "scale" not in cfg["backbone"] and "upscale" not in cfg["backbone"]  # passed in, not repeated
    with pytest.raises(Exception, match="upscale"):
        compose_train(["upscale=2"], tmp_path)


@pytest.mark.parametrize("backbone,narrowed", [
    ("srresnet", {"num_feat": 16, "num_block": 16}),
    ("rrdb", {"num_feat": 16, "num_grow_ch": 8, "num_block": 23}),
    ("swinir", {"embed_dim": 24, "window_size": 4, "depths": [2] * 6}),
])
def test_size_cpu_narrows_the_backbone_by_composition(tmp_path, backbone, narrowed):
    full = compose_train([f"backbone={backbone}"], tmp_path).backbone
    cpu = compose_train([f"backbone={backbone}", "size=cpu"], tmp_path).backbone
    assert {k: OmegaConf.to_container(cpu)[k] for k in narrowed} == narrowed
    assert any(full[k] != cpu[k] for k in narrowed)  # the full model differs: it really was narrowed
    assert set(full) == set(cpu)  # only values change, no key is added
    # a command-line value still wins over the narrowed one
    assert compose_train([f"backbone={backbone}", "size=cpu", f"backbone.{next(iter(narrowed))}=40"],
                         tmp_path).backbone[next(iter(narrowed))] == 40


def test_size_cpu_is_a_cpu_trial_of_the_paper_setting(tmp_path):
    paper = compose_train(["experiment=paper"], tmp_path)
    assert paper.trainer.max_steps == 500000 and paper.data.train_sets == ["DIV2K_train"]
    assert paper.backbone.num_feat == 64 and paper.trainer.accelerator == "gpu"
    trial = compose_train(["experiment=paper", "size=cpu"], tmp_path)
    assert trial.trainer.max_steps == 100 and trial.data.train_sets == ["skimage"]
    assert trial.backbone.num_feat == 16 and trial.backbone.num_block == 16 and trial.trainer.accelerator == "cpu"
    assert not (CONF / "size" / "paper.yaml").exists()


def test_data_options_share_one_base(tmp_path):
    base = OmegaConf.load(CONF / "data" / "_base.yaml")
    for option in _options("data"):
        own = OmegaConf.load(CONF / "data" / f"{option}.yaml")
        assert own.defaults[0] == "_base"
        repeated = {k for k in own if k != "defaults" and k in base and own[k] == base[k]}
        assert not repeated, f"conf/data/{option}.yaml repeats {repeated} from _base.yaml"
        cfg = compose_train([f"data={option}"], tmp_path).data
        assert set(cfg) == set(base) and cfg.val_crop == base.val_crop


def _compose_sweep(name, overrides=()):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    from src.resolvers import register_resolvers

    register_resolvers()
    search_path = create_config_search_path(str(CONF))
    search_path.prepend("sweeps", f"file://{CONF.parent / 'sweeps'}")
    return ConfigLoaderImpl(config_search_path=search_path).load_configuration(name, overrides=list(overrides),
                                                                              run_mode=RunMode.RUN)


PAPER_SETS = ["Set5", "Set14", "BSD100", "Urban100"]


@pytest.mark.parametrize("preset", ["experiment=paper", "experiment=official", "sweeps/backbones"])
@pytest.mark.parametrize("manga", [True, False], ids=["with-manga109", "without-manga109"])
def test_paper_presets_score_both_protocols_and_manga109_when_present(tmp_path, preset, manga, capsys):
    import src.resolvers

    root = tmp_path / "data"
    (root / ("Manga109" if manga else "Set5") / "HR").mkdir(parents=True)
    src.resolvers._NOTED.clear()
    if preset.startswith("sweeps/"):
        cfg = _compose_sweep(preset.split("/")[1], [f"data.root={root}"])
    else:
        cfg = compose_train([preset, f"data.root={root}"], tmp_path)
    assert cfg.eval.protocol == "both"
    assert list(cfg.data.test_sets) == PAPER_SETS + (["Manga109"] if manga else [])
    note = capsys.readouterr().err
    assert ("Manga109 is not scored" in note) == (not manga)
    assert note.count("\n") == (0 if manga else 1)  # one line, said once however often the list is read
    assert str(root / "Manga109" / "HR") in note or manga


def test_sets_present_falls_back_to_the_default_data_root(tmp_path, monkeypatch):
    from src.resolvers import sets_present

    monkeypatch.setenv("SR_DATA_ROOT", str(tmp_path))
    (tmp_path / "Manga109" / "HR").mkdir(parents=True)
    assert sets_present(["Set5"], ["Manga109", "Absent"], None) == ["Set5", "Manga109"]


TOOLS = ["eval", "infer", "analyze", "export"]


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_configs_take_their_shared_block_from_one_file(tool):
    shared = OmegaConf.load(CONF / "_tool.yaml")
    own = OmegaConf.load(CONF / f"{tool}.yaml")
    assert own.defaults[0] == "_tool"
    restated = [d for d in own.defaults if d in list(shared.defaults)]
    assert not restated, f"conf/{tool}.yaml restates {restated} from conf/_tool.yaml"
    cfg = _compose_sweep(tool)  # a tool config composes like a sweep file: with its Hydra part
    choices = cfg.hydra.runtime.choices
    assert (choices["hydra/hydra_logging"], choices["hydra/help"], choices["backbone"]) == ("disabled", tool, None)
    run_dir = OmegaConf.to_container(cfg.hydra.run)["dir"]  # unresolved: analyze's names the time
    assert (run_dir, cfg.hydra.output_subdir) == (("${out}", ".hydra") if tool == "analyze" else (".", None))


SWEEPS = sorted(p.stem for p in (CONF.parent / "sweeps").glob("*.yaml"))


def _overrides(defaults) -> dict:
    """{group: option} of a defaults list's `override` entries."""
    return {k.split("override ", 1)[1].lstrip("/"): v for d in defaults if isinstance(d, dict) or OmegaConf.is_dict(d)
            for k, v in d.items() if k.startswith("override ")}


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweeps_say_only_what_their_experiment_and_launcher_do_not(sweep):
    own = OmegaConf.load(CONF.parent / "sweeps" / f"{sweep}.yaml")
    overrides = _overrides(own.defaults)
    experiment = OmegaConf.load(CONF / "experiment" / f"{overrides['experiment']}.yaml")
    same = {g: o for g, o in _overrides(experiment.get("defaults", [])).items() if overrides.get(g) == o}
    assert not same, f"sweeps/{sweep}.yaml restates {same}, which experiment={overrides['experiment']} sets"
    assert "launcher" not in own.get("hydra", {}), f"sweeps/{sweep}.yaml sets hydra.launcher keys: use a preset " \
        f"of conf/hydra/launcher"
    cfg = _compose_sweep(sweep)
    if sweep.startswith("repro_"):  # CPU sweeps: two jobs side by side, as conf/hydra/launcher/local_parallel.yaml
        assert overrides["hydra/launcher"] == "local_parallel" and cfg.hydra.launcher.n_jobs == 2
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
