"""One training step as a unit, and its replay as a CUDA graph.

`TrainStep` is a function of (images, labels) -> nothing: it runs the forward pass, the
loss, the backward pass and the optimizer update (skipped on the device when the loss
is not finite), and adds the step's loss, correct answers and images to accumulators
that live on the device. Every value it reads that can change during a run (the
learning rate, label smoothing, dropout rates) is a tensor it reads in place, and
everything it produces is written in place, so the same kernels can be recorded once
and replayed for every later batch of the same shape.

`GraphedSteps` does that on a GPU: a few eager warm-up steps per batch shape (cuDNN
picks its algorithms, lazy state is created), then one capture, then one replay per
step: one launch from Python instead of hundreds. It falls back to eager steps, and
says why, when a run cannot be captured. The capture itself goes through a small
backend object so that the decisions around it can be exercised without a GPU.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifartui.engine.train.models import ScheduledDropout
from cifartui.engine.train.optim import needs_host_read, skips_on_device, step_unless

# Allocation failures inside cuBLAS and cuDNN reach Python as plain RuntimeErrors.
_LIBRARY_OUT_OF_MEMORY = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
                          "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED", "CUFFT_ALLOC_FAILED",
                          "CUSOLVER_STATUS_ALLOC_FAILED", "CUSPARSE_STATUS_ALLOC_FAILED")


class CaptureOutOfMemory(RuntimeError):
    """Capturing the step as a CUDA graph ran out of memory (the same step had fit eagerly)."""


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, cuBLAS/cuDNN allocation failures, or the CPU allocator's errors for the same.

    Looks through the exceptions this one was raised from: a failed capture often ends in
    a second error about the invalidated capture.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (torch.OutOfMemoryError, MemoryError, CaptureOutOfMemory)):
            return True
        text = str(error)
        if ("can't allocate memory" in text or "DefaultCPUAllocator" in text or "CUDA out of memory" in text
                or any(code in text for code in _LIBRARY_OUT_OF_MEMORY)):
            return True
        error = error.__cause__ or error.__context__
    return False


class StepState:
    """The device tensors a step reads and writes; their storage never moves during a run."""

    def __init__(self, device: torch.device, lr: float, label_smoothing: float):
        # Read by the optimizer when the learning rate is a tensor (graphed steps).
        self.lr = torch.tensor(float(lr), dtype=torch.float32, device=device)
        self.label_smoothing = torch.tensor(float(label_smoothing), dtype=torch.float32, device=device)
        # loss sum, correct, images: since the last StepMetrics, and in this epoch
        self.window = torch.zeros(3, dtype=torch.float64, device=device)
        self.epoch = torch.zeros(3, dtype=torch.float64, device=device)
        # Non-finite losses: count since the last look, and the first such step and loss.
        self.steps_taken = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_count = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.first_bad_loss = torch.zeros((), dtype=torch.float32, device=device)

    def set_steps_taken(self, step: int) -> None:
        self.steps_taken.fill_(step)

    def clear_bad(self) -> None:
        self.bad_count.zero_()
        self.first_bad_step.fill_(-1)


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing read from a tensor (as F.cross_entropy defines it)."""
    log_probabilities = F.log_softmax(logits.float(), dim=1)
    nll = -log_probabilities.gather(1, labels[:, None]).squeeze(1)
    uniform = -log_probabilities.mean(dim=1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


class TrainStep:
    """Forward, backward and update of one batch, with its statistics kept on the device."""

    def __init__(self, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, state: StepState, *, autocast_dtype: torch.dtype | None,
                 device: torch.device, agree_on_skip: Callable[[torch.Tensor], None] | None = None):
        self.model = model
        self.forward = forward
        self.optimizer = optimizer
        self.state = state
        self.autocast_dtype = autocast_dtype
        self.device = device
        self.agree_on_skip = agree_on_skip  # under torchrun: every process skips the same steps
        self.autocast_cache = True  # off while graphs are captured (autocast's cache is not graph-safe)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        state = self.state
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=self.autocast_cache)
                    if self.autocast_dtype is not None else nullcontext())
        with autocast:
            logits = self.forward(images)
        loss = smoothed_cross_entropy(logits, labels, state.label_smoothing)
        # A non-finite loss must never reach the weights. The check stays on the device:
        # the optimizer skips the update when found_inf is set (see step_unless).
        found_inf = torch.logical_not(torch.isfinite(loss.detach())).float()
        if self.agree_on_skip is not None:
            self.agree_on_skip(found_inf)
        loss.backward()
        step_unless(self.optimizer, found_inf)
        with torch.no_grad():
            ok = found_inf == 0
            count = len(labels)
            correct = (logits.argmax(1) == labels).sum()
            stats = torch.stack([torch.where(ok, loss.detach(), 0.0).double() * count,
                                 torch.where(ok, correct, 0).double(), ok.double() * count])
            state.window += stats
            state.epoch += stats
            bad = ~ok
            state.first_bad_step.copy_(torch.where(bad & (state.first_bad_step < 0), state.steps_taken,
                                                   state.first_bad_step))
            state.first_bad_loss.copy_(torch.where(bad & (state.bad_count == 0), loss.detach().float(),
                                                   state.first_bad_loss))
            state.bad_count += bad.long()
            state.steps_taken += 1


class NonFiniteWatch:
    """Tells the host about steps skipped for a non-finite loss, without making it wait for a GPU.

    The optimizer already skipped those steps on the device; this only lets the run
    pause. On the CPU the counters are read at once (there is no device to wait for). On
    a GPU they are copied to pinned memory behind an event every POLL_EVERY steps and
    read once the event has passed, so the run pauses a few dozen steps after the bad
    one at most, having changed nothing meanwhile.
    """

    POLL_EVERY = 16

    def __init__(self, state: StepState, device: torch.device):
        self.state = state
        self.lagged = device.type == "cuda"
        self.polls = 0
        if self.lagged:
            self.host = torch.zeros(3, dtype=torch.float64, pin_memory=True)
            self.event = torch.cuda.Event()
            self.pending = False

    def poll(self) -> tuple[int, float] | None:
        """(step, loss) of the first bad step seen since the last report, if any."""
        state = self.state
        if not self.lagged:
            if not state.bad_count.item():  # CPU tensors: no device to wait for
                return None
            return self._report(int(state.first_bad_step.item()), float(state.first_bad_loss.item()))
        self.polls += 1
        result = None
        if self.pending and self.event.query():
            result = self._read_host()
        if not self.pending and self.polls % self.POLL_EVERY == 0:
            self.host.copy_(torch.stack([state.bad_count.double(), state.first_bad_step.double(),
                                         state.first_bad_loss.double()]), non_blocking=True)
            self.event.record()
            self.pending = True
        return result

    def drain(self) -> tuple[int, float] | None:
        """Everything up to now, waiting for the device if need be (epoch ends, pauses)."""
        if self.lagged:
            self.pending = False  # a copy in flight is superseded by this read
        if not self.state.bad_count.item():  # sync point on a GPU: epoch ends only
            return None
        return self._report(int(self.state.first_bad_step.item()), float(self.state.first_bad_loss.item()))

    def _read_host(self) -> tuple[int, float] | None:
        self.pending = False
        count, step, loss = self.host.tolist()
        return self._report(int(step), loss) if count else None

    def _report(self, step: int, loss: float) -> tuple[int, float]:
        self.state.clear_bad()
        return step, loss


class GraphBackend(Protocol):
    """How steps are warmed up and captured: CUDA's, or a stand-in that runs on the CPU."""

    def warm_up(self, run: Callable[[], None]) -> None: ...

    def capture(self, run: Callable[[], None]) -> Any: ...  # an object with replay()


# One capture at a time in a process (CUDA's rule), whichever run's thread captures.
_CAPTURE_LOCK = threading.Lock()


class CudaGraphBackend:
    """Warm-up on a side stream and capture with torch.cuda.graph, as PyTorch's whole-network recipe does."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # The run's own stream on the run's own GPU. torch.cuda.graph without stream= would
        # capture on one stream per process, made on whichever GPU asked first: a run on
        # cuda:1 would then record nothing of its own kernels.
        with torch.cuda.device(device):
            self.side_stream = torch.cuda.Stream(device=device)

    def warm_up(self, run: Callable[[], None]) -> None:
        with torch.cuda.device(self.device):
            side, current = self.side_stream, torch.cuda.current_stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                run()
            current.wait_stream(side)

    def capture(self, run: Callable[[], None]) -> Any:
        with torch.cuda.device(self.device):  # the graph, its memory pool and its RNG state: this GPU's
            graph = torch.cuda.CUDAGraph()
            with _CAPTURE_LOCK:
                # thread_local: other runs of the app keep launching work on their own threads meanwhile.
                with torch.cuda.graph(graph, stream=self.side_stream, capture_error_mode="thread_local"):
                    run()
        return graph


def graph_plan(device_type: str, *, setting: str, distributed: bool, compiled: bool,
               optimizer: torch.optim.Optimizer) -> tuple[bool, str]:
    """Whether steps run as CUDA graphs, and if not on a GPU, why (for the run's log)."""
    if device_type != "cuda":
        return False, ""
    if setting == "off":
        return False, "CUDA graphs are off (train.cuda_graphs = \"off\"); steps run eagerly"
    if distributed:
        return False, "steps run eagerly under torchrun (gradients are averaged between processes each step)"
    if compiled:
        return False, "steps run eagerly around the compiled model (train.compile = true)"
    if not skips_on_device(optimizer):
        return False, (f"steps run eagerly: {type(optimizer).__name__} has no fused kernel that can skip a step "
                       "with a non-finite loss on the GPU")
    return True, ""


class GraphedSteps:
    """Runs `step` eagerly for its first batches of each shape, then as a replayed graph.

    Inputs are copied into static buffers the graph reads; the graph writes its results
    into the step's StepState. `invalidate` drops the graphs when something the kernels
    were recorded with changes (momentum, betas, weight decay); the next step captures
    again without warming up, unless its update would need the host (SGD's first step
    with momentum), which runs eagerly first. Dropout layers at rate 0 draw no mask: the
    graphs are recorded again when a layer turns on or off, while a rate changing between
    nonzero values is read from its tensor by the recorded kernels.
    """

    WARM_UP_STEPS = 3

    def __init__(self, step: TrainStep, backend: GraphBackend, log: Callable[[str], None] | None = None,
                 on_label: Callable[[str], None] | None = None):
        self.step = step
        self.backend = backend
        self.log = log or (lambda _text: None)
        self.on_label = on_label or (lambda _note: None)  # the run's "graphs" label follows
        self.graphs: dict[tuple, tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self.seen: dict[tuple, int] = {}
        self.eager_shapes: set[tuple] = set()  # shapes whose capture ran out of memory: they train eagerly
        self.captures = 0
        self.failed: str | None = None  # why graphs were given up, if they were
        self.dropouts = [m for m in step.model.modules() if isinstance(m, ScheduledDropout)]
        self.dropout_layout = self._layout()
        self.layout_changes = 0  # dropout layers turned on or off since the start (each one records again)

    def _layout(self) -> tuple[bool, ...]:
        return tuple(module.active for module in self.dropouts)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        layout = self._layout()
        if layout != self.dropout_layout:  # a layer turned on or off: its kernels are in the graph or not
            self.dropout_layout = layout
            self.layout_changes += 1
            self.graphs.clear()
        key = (tuple(images.shape), images.dtype, tuple(labels.shape))
        entry = self.graphs.get(key)
        if entry is None:
            if self.failed is not None or key in self.eager_shapes:
                self.step(images, labels)
                return
            seen = self.seen.get(key, 0)
            # The first shape warms up the whole run (lazy CUDA state, optimizer state, cuDNN);
            # a later one (the last partial batch) only needs cuDNN to time its algorithms once.
            # An update that reads the host (a sync) cannot be captured: it runs eagerly first.
            if seen < (self.WARM_UP_STEPS if not self.captures else 1) or needs_host_read(self.step.optimizer):
                self.seen[key] = seen + 1
                self.backend.warm_up(lambda: self.step(images, labels))
                return
            entry = self._capture(key, images, labels)
            if entry is None:
                self.step(images, labels)
                return
        graph, static_images, static_labels = entry
        static_images.copy_(images)
        static_labels.copy_(labels)
        graph.replay()

    def _capture(self, key: tuple, images: torch.Tensor, labels: torch.Tensor) -> tuple | None:
        static_images, static_labels = images.clone(), labels.clone()
        self.step.autocast_cache = False
        try:
            graph = self.backend.capture(lambda: self.step(static_images, static_labels))
        except Exception as error:  # noqa: BLE001 - any failure to capture means: train eagerly
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            if is_out_of_memory(error):
                # The same step fit eagerly: this shape trains eagerly from now on, and the
                # trainer pauses as for any step that ran out of memory.
                self.graphs.clear()
                self.eager_shapes.add(key)
                batch = key[0][0]
                self.on_label(f"cuda graphs (batch size {batch} eager: its capture ran out of memory)")
                raise CaptureOutOfMemory(
                    f"capturing the step at batch size {batch} as a CUDA graph ran out of memory ({first_line}); "
                    f"batch size {batch} fit when run eagerly, so it trains eagerly from here on (a lower "
                    "train.batch_size is captured again)") from error
            self.failed = f"{type(error).__name__}: {first_line}"
            self.graphs.clear()
            self.log(f"CUDA graphs could not capture this run's step ({self.failed}); training eagerly")
            self.on_label(f"eager (CUDA graphs gave up: {self.failed})")
            return None
        finally:
            self.step.autocast_cache = True
        self.captures += 1
        self.graphs[key] = (graph, static_images, static_labels)
        return self.graphs[key]

    def invalidate(self) -> None:
        """Forget the recorded graphs; shapes already warmed up are captured again at their next step."""
        self.graphs.clear()

    def forget_shapes(self) -> None:
        """A new batch size: free the old sizes' graphs (and their memory pools); new shapes warm up once."""
        self.graphs.clear()
        self.seen.clear()
        if self.eager_shapes and self.failed is None:
            self.on_label("cuda graphs")
        self.eager_shapes.clear()


__all__ = ["StepState", "TrainStep", "GraphedSteps", "CudaGraphBackend", "NonFiniteWatch", "graph_plan",
           "smoothed_cross_entropy", "is_out_of_memory", "CaptureOutOfMemory"]
