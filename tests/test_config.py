import pytest

from longtail.config import available_recipes, load_recipe
from longtail.config import Recipe, from_dict, scale_epochs
from longtail.engine.optim import lr_at
from longtail.config import ScheduleConfig
from longtail.errors import ConfigError


def test_every_shipped_recipe_loads():
    names = available_recipes()
    assert {"cifar100-lt/ce", "cifar100-lt/cbs", "cifar10-lt/ce", "cifar10-lt/cbs"} <= set(names)
    for name in names:
        r = load_recipe(name)
        assert r.stages and r.name == name


def test_cifar_recipe_matches_spec():
    r = load_recipe("cifar100-lt/ce")
    s = r.stages[0]
    assert (r.data.dataset, r.data.imbalance, r.model.backbone) == ("cifar100-lt", 100, "resnet32")
    assert (s.epochs, s.batch_size, s.optim.lr, s.optim.momentum, s.optim.weight_decay) == (200, 128, 0.1, 0.9, 2e-4)
    assert (s.schedule.warmup_epochs, s.schedule.milestones, s.schedule.gamma) == (5, [160, 180], 0.01)
    assert load_recipe("cifar100-lt/cbs").stages[0].sampler == "class_balanced"


def test_unknown_key_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'stages.a.optim.lrr'"):
        from_dict(Recipe, {"stages": [{"name": "a", "optim": {"lrr": 1}}]})
    with pytest.raises(ConfigError, match=r"unknown config key 'data.imbalanse'"):
        load_recipe("cifar100-lt/ce", ["data.imbalanse=50"])


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"stages.0.epochs: expected an integer"):
        from_dict(Recipe, {"stages": [{"epochs": "many"}]})
    with pytest.raises(ConfigError, match=r"stages.0.sampler: 'balanced' is not one of"):
        from_dict(Recipe, {"stages": [{"sampler": "balanced"}]})
    with pytest.raises(ConfigError, match=r"data.imbalance must be >= 1, got 0.5"):
        load_recipe("cifar100-lt/ce", ["data.imbalance=0.5"])


def test_unknown_recipe():
    with pytest.raises(ConfigError, match=r"unknown recipe 'cifar100-lt/nope'"):
        load_recipe("cifar100-lt/nope")


def test_overrides_by_stage_name_and_types():
    r = load_recipe("cifar100-lt/ce", ["stages.ce.optim.lr=0.05", "data.imbalance=10", "runtime.amp=off"])
    assert r.stages[0].optim.lr == 0.05 and r.data.imbalance == 10.0 and r.runtime.amp == "off"
    with pytest.raises(ConfigError, match=r"no stage 'teacher'"):
        load_recipe("cifar100-lt/ce", ["stages.teacher.epochs=3"])


def test_epochs_scale_shrinks_schedule_with_minimum_one():
    r = load_recipe("cifar100-lt/ce", epochs_scale=0.05)
    s = r.stages[0]
    assert s.epochs == 10 and s.schedule.milestones == [8, 9] and s.schedule.warmup_epochs == pytest.approx(0.25)
    r = load_recipe("cifar100-lt/ce", epochs_scale=0.0001)
    assert r.stages[0].epochs == 1


def test_recipe_hash_changes_with_content():
    a, b = load_recipe("cifar100-lt/ce"), load_recipe("cifar100-lt/ce", ["runtime.seed=1"])
    assert a.hash() == load_recipe("cifar100-lt/ce").hash() != b.hash()


def test_lr_schedule_warmup_multistep_cosine():
    ms = ScheduleConfig(kind="multistep", warmup_epochs=2, milestones=[4, 6], gamma=0.1)
    # 10 steps per epoch: warm-up over 20 steps, x0.1 at step 40 and again at 60.
    assert lr_at(0, 100, 10, 1.0, ms) == pytest.approx(1 / 20)
    assert lr_at(19, 100, 10, 1.0, ms) == pytest.approx(1.0)
    assert lr_at(39, 100, 10, 1.0, ms) == 1.0
    assert lr_at(40, 100, 10, 1.0, ms) == pytest.approx(0.1)
    assert lr_at(60, 100, 10, 1.0, ms) == pytest.approx(0.01)
    cos = ScheduleConfig(kind="cosine")
    assert lr_at(0, 100, 10, 0.2, cos) == pytest.approx(0.2)
    assert lr_at(50, 100, 10, 0.2, cos) == pytest.approx(0.1)
    assert lr_at(100, 100, 10, 0.2, cos) == pytest.approx(0.0)


def test_bbn_warmup_from_a_third_per_epoch_then_x001_at_120_and_160():
    # BBN's WarmupMultiStepLR: lr * (1/3 + 2/3 * e/5) in epoch e < 5, constant within an epoch.
    bbn = ScheduleConfig(kind="multistep", warmup_epochs=5, warmup_from=1 / 3, warmup_by="epoch", milestones=[120, 160], gamma=0.01)
    spe, total = 10, 2000
    for e, f in [(0, 1 / 3), (1, 1 / 3 + 2 / 15), (4, 1 / 3 + 8 / 15)]:
        assert lr_at(e * spe, total, spe, 0.1, bbn) == pytest.approx(0.1 * f)
        assert lr_at(e * spe + 9, total, spe, 0.1, bbn) == pytest.approx(0.1 * f)  # set once per epoch
    assert lr_at(5 * spe, total, spe, 0.1, bbn) == pytest.approx(0.1)
    assert lr_at(120 * spe - 1, total, spe, 0.1, bbn) == pytest.approx(0.1)
    assert lr_at(120 * spe, total, spe, 0.1, bbn) == pytest.approx(1e-3)
    assert lr_at(160 * spe, total, spe, 0.1, bbn) == pytest.approx(1e-5)
    per_step = ScheduleConfig(kind="multistep", warmup_epochs=2, warmup_from=0.5)
    assert lr_at(0, 100, 10, 1.0, per_step) == pytest.approx(0.5 + 0.5 / 20)


def test_ssd_stages_1_and_3_follow_bbn_and_the_baselines_ldam():
    ssd = load_recipe("cifar100-lt/ssd")
    for name in ("stage1", "stage3"):
        s = ssd.stage(name)
        assert (s.optim.nesterov, s.schedule.milestones, s.schedule.gamma) == (True, [120, 160], 0.01)
        assert (s.schedule.warmup_epochs, s.schedule.warmup_by, s.schedule.warmup_from) == (5, "epoch", pytest.approx(1 / 3))
    ce = load_recipe("cifar100-lt/ce").stage("ce")
    assert (ce.optim.nesterov, ce.schedule.milestones, ce.schedule.warmup_from) == (False, [160, 180], 0.0)
    bbn = load_recipe("cifar100-lt/decoupling").stage("ce_bbn")
    assert (bbn.init, bbn.optim.nesterov, bbn.schedule.milestones) == ("fresh", True, [120, 160])
    assert load_recipe("cifar100-lt/ce_bbn").stages[0].schedule == ssd.stage("stage1").schedule


def test_method_params_are_checked_by_name():
    from longtail.config import parse_params
    from longtail.methods.ssd import DistillParams

    with pytest.raises(ConfigError, match=r"stages.s3.params.mode: 'both' is not one of decoupled, coupled, single"):
        parse_params(DistillParams, {"mode": "both"}, "s3")
    with pytest.raises(ConfigError, match=r"unknown config key 'stages.s3.params.temperature'"):
        parse_params(DistillParams, {"temperature": 2}, "s3")
    assert parse_params(DistillParams, {"mode": "single", "T": 4}, "s3").T == 4.0


def test_hash_ignores_fields_added_later_at_their_default():
    import copy
    import dataclasses

    from longtail.config import RuntimeConfig

    old = load_recipe("cifar100-lt/ssd")
    Newer = dataclasses.make_dataclass("Newer", [("new_knob", int, dataclasses.field(default=7))], bases=(RuntimeConfig,))
    new = copy.deepcopy(old)
    new.runtime = Newer(**dataclasses.asdict(old.runtime))
    assert new.hash() == old.hash()  # a run recorded before the field existed still matches
    new.runtime.new_knob = 8
    assert new.hash() != old.hash()
    moved = copy.deepcopy(old)
    moved.stages[1].epochs = 6
    assert moved.hash() != old.hash()
