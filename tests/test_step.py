"""The training step as one unit, and the decisions around replaying it as a CUDA graph.

There is no GPU here, so the capture goes through a stand-in backend with CUDA's
semantics that matter to the trainer: capturing records the step without running it,
and a replay runs it again on whatever the static input buffers hold. What these tests
pin: which inputs the graph reads, that settings changed mid-run reach the recorded
step without a new capture (LR, label smoothing, dropout rates live in tensors), which
changes do need one, one graph per batch shape (the last partial batch included, not
one per epoch), and the fall-back to eager steps when a capture fails.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn as nn

from cifartui.config import OptimizerConfig
from cifartui.engine.train.models import ScheduledDropout
from cifartui.engine.train.optim import build_optimizer
from cifartui.engine.train.step import (CaptureOutOfMemory, CudaGraphBackend, GraphedSteps, NonFiniteWatch, StepState,
                                        TrainStep, graph_plan, is_out_of_memory)


class RecordingBackend:
    """CUDA graphs' contract on the CPU: capture records without running; replay runs the recording."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.captures = 0
        self.warm_ups = 0

    def warm_up(self, run):  # noqa: ANN001, ANN201
        self.warm_ups += 1
        run()

    def capture(self, run):  # noqa: ANN001, ANN201
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        backend = self

        class Graph:
            replays = 0

            def replay(self) -> None:
                Graph.replays += 1
                run()
        backend.last_graph = Graph
        return Graph()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), ScheduledDropout(0.0, "hidden"),
                         nn.Linear(16, 5))


def _step(model: nn.Module, optimizer_name: str = "sgd") -> TrainStep:
    optimizer = build_optimizer(model, OptimizerConfig(name=optimizer_name, lr=0.05, momentum=0.9),
                                torch.device("cpu"))
    state = StepState(torch.device("cpu"), 0.05, 0.0)
    for group in optimizer.param_groups:
        group["lr"] = state.lr  # as the trainer does for graphed steps
    return TrainStep(model, model, optimizer, state, autocast_dtype=None, device=torch.device("cpu"))


def _batches(count: int, size: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 4, 4, generator=generator), torch.randint(0, 5, (size,), generator=generator))
            for _ in range(count)]


def test_graphed_steps_train_exactly_as_eager_steps_reading_inputs_from_static_buffers() -> None:
    eager_model, graphed_model = _model(), _model()
    eager, graphed = _step(eager_model), _step(graphed_model)
    backend = RecordingBackend()
    runner = GraphedSteps(graphed, backend)
    for images, labels in _batches(10):
        torch.manual_seed(7)
        eager(images, labels)
        torch.manual_seed(7)
        runner(images, labels)
    assert backend.warm_ups == GraphedSteps.WARM_UP_STEPS and backend.captures == 1
    assert backend.last_graph.replays == 10 - GraphedSteps.WARM_UP_STEPS
    for a, b in zip(eager_model.parameters(), graphed_model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(eager.state.epoch, graphed.state.epoch)  # statistics accumulate in place
    assert int(graphed.state.steps_taken) == 10


def test_lr_label_smoothing_and_dropout_change_without_a_new_capture() -> None:
    model = _model()
    step = _step(model)
    backend = RecordingBackend()
    runner = GraphedSteps(step, backend)
    batches = _batches(12)
    for images, labels in batches[:5]:
        runner(images, labels)
    assert backend.captures == 1
    step.state.lr.fill_(0.0)  # LR 0: the replayed update must leave the weights alone
    before = [p.detach().clone() for p in model.parameters()]
    runner(*batches[5])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    step.state.lr.fill_(0.05)
    runner(*batches[6])
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # Dropout switched on after the capture: its mask kernels are recorded once (a layer at
    # rate 0 draws nothing), then a new nonzero rate is read from its tensor.
    dropout = next(m for m in model.modules() if isinstance(m, ScheduledDropout))
    loss_before = step.state.window.clone()
    dropout.set_rate(0.9)
    step.state.label_smoothing.fill_(0.5)
    runner(*batches[7])
    assert backend.captures == 2 and backend.warm_ups == GraphedSteps.WARM_UP_STEPS
    assert not torch.equal(loss_before, step.state.window)
    dropout.set_rate(0.3)
    runner(*batches[8])
    assert backend.captures == 2
    dropout.set_rate(0.0)  # off again: recorded without it
    runner(*batches[9])
    assert backend.captures == 3


def test_new_optimizer_hyperparameters_and_new_shapes_are_captured_once_each() -> None:
    step = _step(_model())
    backend = RecordingBackend()
    runner = GraphedSteps(step, backend)
    full, partial = _batches(30, size=8), _batches(6, size=3, seed=2)
    for epoch in range(3):  # 10 full batches and a partial last one per epoch
        for images, labels in full[epoch * 10:(epoch + 1) * 10]:
            runner(images, labels)
        runner(*partial[epoch])
    # The full shape is captured in the first epoch, the partial one in the second (one warm-up).
    assert backend.captures == 2 and len(runner.graphs) == 2
    for group in step.optimizer.param_groups:
        group["momentum"] = 0.5
    runner.invalidate()  # what the trainer does for momentum, betas, weight decay
    runner(*full[0])
    assert backend.captures == 3  # at once, without warming up again
    assert backend.warm_ups == GraphedSteps.WARM_UP_STEPS + 1


def test_a_failed_capture_falls_back_to_eager_steps_and_says_why() -> None:
    model = _model()
    step = _step(model)
    lines: list[str] = []
    runner = GraphedSteps(step, RecordingBackend(fail=True), log=lines.append)
    for images, labels in _batches(6):
        runner(images, labels)
    assert runner.failed and "stream is capturing" in runner.failed
    assert len(lines) == 1 and "training eagerly" in lines[0]
    assert int(step.state.steps_taken) == 6  # every batch was trained, none lost to the failed capture


def test_non_finite_steps_are_counted_on_the_device_and_reported_once() -> None:
    step = _step(_model())
    watch = NonFiniteWatch(step.state, torch.device("cpu"))
    images, labels = _batches(1)[0]
    step(images, labels)
    assert watch.poll() is None
    before = [p.detach().clone() for p in step.model.parameters()]
    step(images * float("nan"), labels)
    step(images * float("nan"), labels)
    assert all(torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
    step_number, loss = watch.poll()
    assert step_number == 1 and loss != loss  # the first bad one, and its NaN loss
    assert watch.poll() is None and watch.drain() is None


@pytest.mark.parametrize("device, setting, distributed, compiled, optimizer, expected, reason", [
    ("cpu", "auto", False, False, "sgd", False, ""),
    ("cuda", "auto", False, False, "sgd", True, ""),
    ("cuda", "auto", False, False, "adamw", True, ""),
    ("cuda", "off", False, False, "sgd", False, "train.cuda_graphs"),
    ("cuda", "auto", True, False, "sgd", False, "torchrun"),
    ("cuda", "auto", False, True, "sgd", False, "train.compile"),
    ("cuda", "auto", False, False, "rmsprop", False, "RMSprop has no fused kernel"),
])
def test_which_runs_replay_cuda_graphs(device: str, setting: str, distributed: bool, compiled: bool,
                                       optimizer: str, expected: bool, reason: str) -> None:
    built = build_optimizer(_model(), OptimizerConfig(name=optimizer, lr=0.1), torch.device("cpu"))
    graphed, note = graph_plan(device, setting=setting, distributed=distributed, compiled=compiled,
                               optimizer=built)
    assert graphed is expected and reason in note and (note == "") == (expected or device == "cpu")


def test_smoothed_cross_entropy_is_pytorchs() -> None:
    from cifartui.engine.train.step import smoothed_cross_entropy

    logits, labels = torch.randn(16, 7), torch.randint(0, 7, (16,))
    for smoothing in (0.0, 0.2):
        ours = smoothed_cross_entropy(logits, labels, torch.tensor(smoothing))
        theirs = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_graphed_dropout_layers_at_rate_zero_draw_no_mask() -> None:
    model = _model()
    runner = GraphedSteps(_step(model), RecordingBackend())
    dropout = next(m for m in model.modules() if isinstance(m, ScheduledDropout))
    model.train()
    x = torch.randn(4, 16)
    before = torch.get_rng_state()
    assert torch.equal(dropout(x), x)
    assert torch.equal(torch.get_rng_state(), before)  # no random numbers drawn at rate 0
    for images, labels in _batches(5):
        runner(images, labels)
    copy.deepcopy(model)  # still an ordinary module


class CaptureWithoutHostReads(RecordingBackend):
    """Captures run the step once, refusing what CUDA refuses inside a capture: reading a device value."""

    def capture(self, run):  # noqa: ANN001, ANN201
        original = torch.Tensor.item

        def refuse(tensor):  # noqa: ANN001, ANN202
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        torch.Tensor.item = refuse
        try:
            run()
        finally:
            torch.Tensor.item = original
        return super().capture(run)


def test_momentum_raised_from_zero_warms_up_eagerly_before_the_next_capture() -> None:
    model = _model()
    optimizer = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.05, momentum=0.0), torch.device("cpu"))
    step = TrainStep(model, model, optimizer, StepState(torch.device("cpu"), 0.05, 0.0), autocast_dtype=None,
                     device=torch.device("cpu"))
    backend = CaptureWithoutHostReads()
    runner = GraphedSteps(step, backend)
    batches = _batches(8)
    for images, labels in batches[:4]:
        runner(images, labels)
    assert backend.captures == 1 and runner.failed is None
    for group in optimizer.param_groups:
        group["momentum"] = 0.9
    runner.invalidate()
    warm_ups = backend.warm_ups
    runner(*batches[4])  # the first step with momentum reads found_inf on the host: eagerly
    assert backend.warm_ups == warm_ups + 1 and backend.captures == 1
    runner(*batches[5])
    assert backend.captures == 2 and runner.failed is None
    assert all(optimizer.state[p]["momentum_buffer"] is not None for p in model.parameters())


class OutOfMemoryBackend(RecordingBackend):
    def capture(self, run):  # noqa: ANN001, ANN201
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError as error:  # as a capture's exit reports it: a second error on top
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from error


def test_a_capture_out_of_memory_pauses_like_any_and_that_batch_size_then_trains_eagerly() -> None:
    step = _step(_model())
    labels_seen: list[str] = []
    runner = GraphedSteps(step, OutOfMemoryBackend(), on_label=labels_seen.append)
    batches = _batches(6)
    for images, labels in batches[:GraphedSteps.WARM_UP_STEPS]:
        runner(images, labels)
    with pytest.raises(CaptureOutOfMemory, match="batch size 8") as caught:
        runner(*batches[3])
    assert is_out_of_memory(caught.value)
    assert runner.failed is None and labels_seen == ["cuda graphs (batch size 8 eager: its capture ran out of memory)"]
    taken = int(step.state.steps_taken)
    runner(*batches[3])  # the retry after the pause: eagerly, no capture
    assert int(step.state.steps_taken) == taken + 1
    runner.forget_shapes()  # a new batch size: graphs again
    assert labels_seen[-1] == "cuda graphs" and not runner.eager_shapes


def test_a_failed_capture_updates_the_runs_graphs_label() -> None:
    labels_seen: list[str] = []
    runner = GraphedSteps(_step(_model()), RecordingBackend(fail=True), on_label=labels_seen.append)
    for images, labels in _batches(5):
        runner(images, labels)
    assert labels_seen == [f"eager (CUDA graphs gave up: {runner.failed})"]


@pytest.mark.parametrize("message", ["CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                                     "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                                     "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"])
def test_library_allocation_failures_count_as_out_of_memory(message: str) -> None:
    assert is_out_of_memory(RuntimeError(message))
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_the_cuda_backend_captures_on_its_own_stream_made_on_the_runs_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    current: list[object] = []
    made: list[tuple] = []

    class Device:
        def __init__(self, device):  # noqa: ANN001
            self.device = device

        def __enter__(self):  # noqa: ANN204
            current.append(self.device)

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            current.pop()

    class Stream:
        def __init__(self, device=None):  # noqa: ANN001
            made.append(("stream", device, current[-1] if current else None))

        def wait_stream(self, other):  # noqa: ANN001, ANN201
            pass

    class Graph:
        def __init__(self):
            made.append(("graph", current[-1] if current else None))

    class Capture:
        def __init__(self, graph, pool=None, stream=None, capture_error_mode="global"):  # noqa: ANN001
            made.append(("capture", stream, current[-1] if current else None))

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            return False

    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
    gpu = torch.device("cuda", 1)
    backend = CudaGraphBackend(gpu)
    ran: list[object] = []
    backend.warm_up(lambda: ran.append(current[-1]))
    backend.capture(lambda: ran.append(current[-1]))
    assert made[0] == ("stream", gpu, gpu)
    assert ("graph", gpu) in made and ("capture", backend.side_stream, gpu) in made
    assert ran == [gpu, gpu]


def test_a_new_batch_size_frees_the_old_sizes_graphs_and_warms_up_once() -> None:
    step = _step(_model())
    backend = RecordingBackend()
    runner = GraphedSteps(step, backend)
    for images, labels in _batches(5, size=8):
        runner(images, labels)
    assert list(runner.graphs) and backend.captures == 1
    runner.forget_shapes()
    assert not runner.graphs and not runner.seen
    warm_ups = backend.warm_ups
    for images, labels in _batches(3, size=4):
        runner(images, labels)
    assert backend.warm_ups == warm_ups + 1 and backend.captures == 2
    assert [key[0][0] for key in runner.graphs] == [4]
