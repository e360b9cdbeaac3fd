"""LR schedules as pure functions of the step, plateau state, and the dropout schedule."""

import math

import pytest

from cifartui import presets
from cifartui.config import DropoutEvent, ModelConfig, OptimizerConfig, ScheduleConfig
from cifartui.engine.train.models import ModelError, build_model, dropout_groups
from cifartui.engine.train.schedules import DropoutSchedule, LRSchedule


def schedule(name: str, lr: float = 0.1, steps_per_epoch: int = 10, total: int = 100, decay: float = 0.0,
             **options: object) -> LRSchedule:
    config = OptimizerConfig(lr=lr, inverse_time_decay=decay, schedule=ScheduleConfig(name=name, **options))
    return LRSchedule(config, steps_per_epoch, total)


def test_constant_step_and_multistep() -> None:
    assert schedule("constant").lr_at(99) == 0.1
    step = schedule("step", step_size=3, gamma=0.5)
    assert [step.lr_at(s) for s in (0, 29, 30, 60)] == [0.1, 0.1, 0.05, 0.025]
    multi = schedule("multistep", unit="iteration", milestones=(35, 80), gamma=0.1)
    assert multi.lr_at(34) == 0.1 and math.isclose(multi.lr_at(35), 0.01) and math.isclose(multi.lr_at(80), 0.001)
    assert multi.discrete


def test_exponential_and_keras_inverse_time_decay() -> None:
    assert math.isclose(schedule("exponential", gamma=0.9).lr_at(25), 0.1 * 0.9 ** 2)
    decayed = schedule("constant", lr=1e-4, decay=0.05)
    assert math.isclose(decayed.lr_at(100), 1e-4 / (1 + 0.05 * 100))  # lr / (1 + decay * step)
    assert not decayed.discrete


def test_cosine_with_warmup() -> None:
    cosine = schedule("cosine", warmup=2, min_lr=0.0)  # 2 epochs = 20 steps of warmup
    assert math.isclose(cosine.lr_at(0), 0.1 / 20) and math.isclose(cosine.lr_at(19), 0.1)
    assert math.isclose(cosine.lr_at(20), 0.1) and math.isclose(cosine.lr_at(60), 0.05)
    assert cosine.lr_at(100) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_and_triangular() -> None:
    one = schedule("onecycle", lr=0.01, max_lr=0.1, pct_start=0.25, final_div=100)
    assert one.lr_at(0) == 0.01 and math.isclose(one.lr_at(25), 0.1) and math.isclose(one.lr_at(100), 0.0001)
    tri = schedule("triangular", lr=0.001, max_lr=0.1, unit="iteration", cycle_length=10)
    values = [tri.lr_at(s) for s in (0, 5, 10, 15, 20, 30)]
    assert values[0] == 0.001 and math.isclose(values[2], 0.1) and math.isclose(values[4], 0.001)
    assert math.isclose(values[1], 0.0505) and math.isclose(values[5], 0.1)


def test_reduce_on_plateau_like_keras() -> None:
    plateau = schedule("plateau", lr=1e-3, factor=0.1, patience=2, min_lr=1e-4)
    reductions = [plateau.observe_validation_loss(loss) for loss in (1.0, 0.9, 0.95, 0.91, 0.92)]
    assert reductions == [False, False, False, False, True]  # 3 epochs without improvement > patience 2
    assert math.isclose(plateau.lr_at(0), 1e-4)
    for _ in range(10):
        plateau.observe_validation_loss(5.0)
    assert math.isclose(plateau.lr_at(0), 1e-4)  # never below min_lr
    restored = schedule("plateau", lr=1e-3, factor=0.1, patience=2, min_lr=1e-4)
    restored.load_state_dict(plateau.state_dict())
    assert restored.state_dict() == plateau.state_dict()


def _keras_reference(losses: list[float], lr: float, factor: float, patience: int, min_delta: float,
                     cooldown: int, min_lr: float) -> list[float]:
    """tf.keras ReduceLROnPlateau.on_epoch_end (TF 2.x, mode min), transcribed: the LR after each epoch."""
    best, wait, cooldown_counter, out = math.inf, 0, 0, []
    for current in losses:
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if current < best - min_delta:
            best, wait = current, 0
        elif not cooldown_counter > 0:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr = max(lr * factor, min_lr)
                cooldown_counter, wait = cooldown, 0
        out.append(lr)
    return out


def test_reduce_on_plateau_keras_style_reduces_one_epoch_earlier() -> None:
    losses = [1.0, 0.9, 0.95, 0.91, 0.92]
    keras = schedule("plateau", lr=1e-3, factor=0.1, patience=2, min_lr=1e-4, plateau_style="keras")
    pytorch = schedule("plateau", lr=1e-3, factor=0.1, patience=2, min_lr=1e-4)
    # Keras: wait >= patience, so the second epoch without improvement reduces; PyTorch waits for the third.
    assert [keras.observe_validation_loss(loss) for loss in losses] == [False, False, False, True, False]
    assert [pytorch.observe_validation_loss(loss) for loss in losses] == [False, False, False, False, True]
    assert (keras.plateau_epochs, pytorch.plateau_epochs) == (2, 3)


@pytest.mark.parametrize("cooldown, min_delta", [(0, 1e-4), (2, 1e-4), (1, 0.05)])
def test_reduce_on_plateau_keras_style_matches_keras_step_for_step(cooldown: int, min_delta: float) -> None:
    # A loss that improves, stalls, improves by less than min_delta (which Keras does not count), and stalls.
    losses = [2.0, 1.5, 1.2, 1.2, 1.21, 1.19, 1.1999, 1.25, 1.0, 1.0, 0.99, 0.98, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1]
    ours = schedule("plateau", lr=1e-3, factor=0.5, patience=2, min_lr=1e-4, threshold=min_delta,
                    cooldown=cooldown, plateau_style="keras")
    got = []
    for loss in losses:
        ours.observe_validation_loss(loss)
        got.append(ours.lr_at(0))
    expected = _keras_reference(losses, 1e-3, 0.5, 2, min_delta, cooldown, 1e-4)
    assert got == pytest.approx(expected, rel=1e-12)
    assert expected[-1] == pytest.approx(1e-4) and len(set(expected)) > 2  # the sequence exercised reductions


def test_the_write_ups_plateau_recipes_follow_keras() -> None:
    for name in ("resnet18-dropout-cifar10", "resnet18-dropout-cifar100"):
        s = presets.load(name).optimizer.schedule
        # ReduceLROnPlateau(monitor="val_loss", min_lr=1e-4) with Keras' defaults.
        assert (s.name, s.plateau_style, s.factor, s.patience, s.threshold, s.cooldown, s.min_lr) == (
            "plateau", "keras", 0.1, 10, 1e-4, 0, 1e-4)


def test_elu_paper_dropout_schedule_exactly() -> None:
    config = presets.load("elu18-cifar100")
    model = build_model(config.model, 100)
    dropout = DropoutSchedule(config.dropout_schedule, model, steps_per_epoch=400)
    groups = dropout_groups(model)
    stack_rates = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0]

    def rates() -> list[list[float]]:
        return [[m.rate for _, m in members] for members in groups.values()]

    assert [r[-1] for r in rates()] == stack_rates and all(r[:-1] == [0.0] * (len(r) - 1) for r in rates())
    assert dropout.apply_due(74_999) is None
    change = dropout.apply_due(75_000)  # the later 50k iterations: every layer of each stack
    assert change is not None and change.old != change.new
    assert rates() == [[rate] * len(members) for rate, members in zip(stack_rates, groups.values())]
    dropout.apply_due(125_000)  # the last 40k iterations: x1.5
    assert rates() == [[pytest.approx(rate * 1.5)] * len(members) for rate, members in zip(stack_rates, groups.values())]


def test_add_and_cap_actions_and_epoch_units() -> None:
    model = build_model(ModelConfig(name="cnn3"), 10)
    events = (DropoutEvent(at=2, unit="epoch", action="add", rates=(0.1, 0.1, 0.1, 0.6), cap=0.8),
              DropoutEvent(at=30, unit="iteration", action="multiply", factor=3.0, cap=0.5))
    dropout = DropoutSchedule(events, model, steps_per_epoch=10)
    change = dropout.apply_due(20)
    assert list(change.new.values()) == [pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.5), 0.8]
    dropout.apply_due(30)
    assert list(dropout.rates().values()) == [0.5, 0.5, 0.5, 0.5]


def test_rates_must_match_the_models_groups() -> None:
    model = build_model(ModelConfig(name="cnn3"), 10)
    with pytest.raises(ModelError, match="has 7 values but the model has 4 dropout groups"):
        DropoutSchedule((DropoutEvent(rates=(0.1,) * 7),), model, 10)
