"""Steering a run between two steps: pause, resume, stop, checkpoint now, and live changes of settings.

`RunController` owns what happens at a step boundary: it answers the requests of the app
(`RunControl`, in this process) and of the control channel (RUN_DIR/control/, other
processes), waits while the run is paused (still answering), pauses the run on a fault
(a full disk, a non-finite loss, running out of memory) with the reason shown to the
user, agrees on stops under torchrun, and applies changes of the live settings: it
validates them against the run's `LiveSettings`, makes the optimizer, schedules,
augmentation and dropout follow, and records each change as a SettingsChanged event.

`ChannelListener` is a small thread that takes the control channel's requests as they
arrive, however long a step takes or while the run is paused: it answers status, pause,
resume and stop at once (RunControl is thread-safe), validates a change of settings at
once, and hands changes and checkpoints to the training thread, which carries them out
at the next step boundary. When that takes longer than QUICK_ANSWER_S (a slow step),
the reply says the request is queued and applies at the next step.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import torch

from cifartui.config import ConfigError, RunConfig, replace_path
from cifartui.engine.runs import events as ev
from cifartui.engine.runs.channel import ControlInbox
from cifartui.engine.runs.settings import OPTIMIZER_HYPERPARAMETERS, Change, parse_assignments, when_applied
from cifartui.engine.train.augment import Augmenter
from cifartui.engine.train.models import dropout_rates
from cifartui.engine.train.step import GraphedSteps

# Under torchrun the processes agree on stop requests every this many steps, so that all
# of them leave the loop at the same step.
AGREE_EVERY = 20
# How often the run looks for requests from other processes while it trains.
CONTROL_POLL_S = 0.2
# How long the listener waits for the training thread to carry a request out before it
# answers that the request is queued.
QUICK_ANSWER_S = 3.0


class RunController:
    """Requests served at step boundaries, the paused state, and live changes of settings."""

    def __init__(self, trainer: Any):
        # `trainer` is the Trainer this serves (not imported here: trainer.py imports this module).
        self.trainer = trainer
        self.listener: ChannelListener | None = None
        self.paused_reason: str | None = None
        self.paused_on_fault = False
        # Set while the loop waits in a pause: a pause asked for during a step holds only once the
        # step ends, and until then the run is "pausing", not "paused".
        self.holding = threading.Event()

    @property
    def control(self) -> Any:
        return self.trainer.control

    def open_channel(self) -> None:
        """Take requests from other processes from now on (rank 0 only), in a thread of their own."""
        self.listener = ChannelListener(self)
        self.listener.start()

    def close_channel(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    # --- pausing and stopping ---------------------------------------------------------------

    def pause_on_fault(self, reason: str) -> None:
        """The run pauses itself on a fault; headless, that stops it (see RunPaused.requested)."""
        if self.trainer.dist.enabled:  # nobody can resume a process of a torchrun job by hand
            self.control.stop(reason)
            return
        self.control.pause()
        self.paused_reason = reason
        self.paused_on_fault = True

    def non_finite_loss(self, step: int, value: float) -> None:
        """The device skipped an update whose loss was not finite: say so and pause."""
        epoch = self.trainer.progress.epoch
        message = (f"loss became {value} at step {step} (epoch {epoch + 1}); the update was skipped and "
                   "the weights are unchanged. Lower the learning rate or check the data, then resume or stop.")
        self.trainer._emit(ev.LossNotFinite(step=step, epoch=epoch, loss=value, message=message))
        self.pause_on_fault(f"non-finite loss: {message}")

    def out_of_memory(self, error: BaseException) -> None:
        """Release what the failed step held and pause; resuming retries the same batch."""
        t = self.trainer
        p = t.progress
        t.optimizer.zero_grad(set_to_none=True)
        if t.device.type == "cuda":
            torch.cuda.empty_cache()
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        message = (f"out of memory at step {p.step} (batch size {t.batch_size}): {first_line}. "
                   "The step was not applied and its memory released. Lower train.batch_size or pick a smaller "
                   "model, then resume or stop.")
        t._emit(ev.MemoryExhausted(step=p.step, epoch=p.epoch, message=message))
        self.pause_on_fault(f"out of memory: {message}")

    def between_steps(self) -> bool:
        """Serve requests; False when the run must stop now."""
        t, control = self.trainer, self.control
        self.serve()
        if t.dist.enabled:
            if control.take_checkpoint_request():
                t.checkpoints.save("requested")
            # Every process must leave the loop at the same step or the next collective hangs.
            if t.progress.step % AGREE_EVERY or not t.dist.agree(control.stop_reason is not None):
                return True
            control.stop("stopped with the other processes")
            return False
        if control.take_checkpoint_request():
            t.checkpoints.save("requested")
        if control.paused and control.stop_reason is None:
            self._wait_while_paused()
        return control.stop_reason is None

    def _wait_while_paused(self) -> None:
        t, control = self.trainer, self.control
        t._clock_stop()
        bad = t.non_finite.drain()  # what the device skipped before the pause, reported before it
        if bad:
            self.non_finite_loss(*bad)
        reason = self.paused_reason or "pause requested"
        t.emitter.status("paused", step=t.progress.step, reason=reason)
        if self.paused_on_fault:  # also when writing that status was what failed
            reason = self.paused_reason or reason
        on_fault = self.paused_on_fault
        self.paused_reason, self.paused_on_fault = None, False
        t._emit(ev.RunPaused(step=t.progress.step, epoch=t.progress.epoch, reason=reason, requested=not on_fault))
        self.holding.set()
        try:
            control.wait_while_paused(self._serve_while_paused)
        finally:
            self.holding.clear()
        if control.stop_reason is None:
            t.emitter.write_problem = None  # resumed: the user freed space; a new failure is reported again
            t.emitter.status("running", step=t.progress.step)
            t._emit(ev.RunResumed(step=t.progress.step, epoch=t.progress.epoch))
        t._clock_start()

    def _serve_while_paused(self) -> None:
        self.serve()
        if self.control.take_checkpoint_request():
            self.trainer.checkpoints.save("requested")

    # --- requests ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Answer the requests of the app (in this process) and those the channel's listener handed over."""
        for command, args, future in self.control.take_requests():
            answer = self.handle(command, args, str(args.get("source") or "app"))
            if not future.done():
                future.set_result(answer)

    def handle(self, command: str, args: Mapping[str, Any], source: str) -> dict[str, Any]:
        t, control = self.trainer, self.control
        p = t.progress
        here = {"step": p.step, "epoch": p.epoch}
        if command == "status":
            return {"ok": True, **self.status_report()}
        if command == "pause":
            if t.dist.enabled:
                return {"ok": False, "error": "a torchrun job cannot pause; stop it and resume it later"}
            control.pause()
            self.paused_reason = f"paused by {source}"
            return {"ok": True, "state": "paused", **here}
        if command == "resume":
            control.resume()
            return {"ok": True, "state": "running", **here}
        if command == "stop":
            control.stop(str(args.get("reason") or f"stopped by {source}"))
            return {"ok": True, "state": "stopping", **here}
        if command == "checkpoint":
            if t.checkpoints.save(f"requested by {source}"):
                return {"ok": True, "path": str(t.run_dir / "checkpoints" / "last.pt"), **here}
            return {"ok": False, "error": self.paused_reason or "the checkpoint could not be written", **here}
        if command == "set":
            try:
                updates = args.get("updates")
                if not isinstance(updates, Mapping):
                    updates = parse_assignments(args.get("assignments") or [], source)
            except ConfigError as error:
                return {"ok": False, "error": str(error), "key": error.key}
            return self.apply_settings(dict(updates), source)
        return {"ok": False, "error": f"unknown command '{command}'"}

    def status_report(self) -> dict[str, Any]:
        """Where the run is and what it trains with now (the answer to `control status`)."""
        t = self.trainer
        p = t.progress
        state = "paused" if self.holding.is_set() else "pausing" if self.control.paused else "running"
        return {"state": state, "step": p.step, "epoch": p.epoch,
                "total_steps": t.total_steps, "steps_per_epoch": t.steps_per_epoch, "lr": t.current_lr,
                "batch_size": t.batch_size, "dropout": t.dropout_schedule.group_rates(),
                "settings": t.config.to_dict(), "changes": len(t.settings.history),
                "run_dir": str(t.run_dir), "device": str(t.device), "graphs": t.graphs_note}

    # --- live settings ----------------------------------------------------------------------

    def apply_settings(self, updates: dict[str, Any], source: str) -> dict[str, Any]:
        """Validate and apply a change of settings now (a step boundary); the answer says what changed.

        Called in the training thread only. An invalid value refuses the whole change.
        """
        t = self.trainer
        p = t.progress
        if t.dist.enabled:
            return {"ok": False, "error": "settings cannot change while a torchrun job trains; stop it, then "
                                          "resume with the change"}
        try:
            config, diff = t.settings.check(updates, source, t.dropout_schedule.group_rates())
        except ConfigError as error:
            return {"ok": False, "error": str(error), "key": error.key, "step": p.step, "epoch": p.epoch}
        if diff:
            config = self._take_effect(config, diff, source)
            t.settings.apply(config, Change(p.step, p.epoch, source, diff))
            t.checkpoints.save_settings()
            t._emit(ev.SettingsChanged(step=p.step, epoch=p.epoch, source=source, changes=diff))
            self._after_change(diff, source)
        return {"ok": True, "step": p.step, "epoch": p.epoch, "changes": diff,
                "when": {key: when_applied(key) for key in diff}}

    def apply_scheduled(self, epoch: int) -> None:
        """The changes of config.settings_schedule for `epoch`, as the epoch begins (source "schedule").

        A checkpoint at an epoch's start is written before its change, so a resumed run
        applies it once; a change the run refuses (a dropout group the model lacks) fails it.
        """
        t = self.trainer
        for index, change in enumerate(t.config.settings_schedule):
            if change.epoch != epoch:
                continue
            updates = parse_assignments(change.set, f"settings_schedule[{index}].set")
            answer = self.apply_settings(updates, "schedule")
            if not answer["ok"]:
                raise ConfigError(f"settings_schedule[{index}]", answer.get("key", ""), answer["error"])

    def _take_effect(self, config: RunConfig, diff: dict[str, list[Any]], source: str) -> RunConfig:
        """Make the objects the loop uses follow `config`; returns it (completed where a change implies more)."""
        t = self.trainer
        p, keys = t.progress, set(diff)
        optimizer = config.optimizer
        if keys & OPTIMIZER_HYPERPARAMETERS:
            previous = t.config.optimizer
            for group in t.optimizer.param_groups:
                if "optimizer.momentum" in keys and "momentum" in group:
                    group["momentum"] = optimizer.momentum
                if "optimizer.nesterov" in keys and "nesterov" in group:
                    group["nesterov"] = optimizer.nesterov
                if "optimizer.betas" in keys and "betas" in group:
                    group["betas"] = tuple(optimizer.betas)
                if "optimizer.eps" in keys and "eps" in group:
                    group["eps"] = optimizer.eps
                if "optimizer.alpha" in keys and "alpha" in group:
                    group["alpha"] = optimizer.alpha
                # Groups kept free of decay (norms, biases) stay free of it.
                if "optimizer.weight_decay" in keys and group.get("weight_decay") == previous.weight_decay:
                    group["weight_decay"] = optimizer.weight_decay
            if isinstance(t.run_step, GraphedSteps):
                t.run_step.invalidate()  # the recorded kernels hold the old values
        if "optimizer.schedule.name" in keys:
            # A new schedule from this step on, starting from the LR in force now unless one was given.
            if "optimizer.lr" not in keys and t.current_lr != config.optimizer.lr:
                config = replace_path(config, "optimizer.lr", t.current_lr, source)
                diff["optimizer.lr"] = [t.config.optimizer.lr, t.current_lr]
            t.lr_schedule = t.lr_schedule.replace(config.optimizer, p.step)
        elif any(key == "optimizer.lr" or key.startswith("optimizer.schedule.") or key == "optimizer.inverse_time_decay"
                 for key in keys):
            t.lr_schedule.reconfigure(config.optimizer)
        if "train.label_smoothing" in keys:
            t.step_state.label_smoothing.fill_(config.train.label_smoothing)
        if any(key.startswith("augment.") for key in keys):
            t.augment = Augmenter(config.augment)
        for key in keys:
            if key.startswith("dropout."):
                t.dropout_schedule.set_group_rate(key[len("dropout."):], diff[key][1])
        return config

    def _after_change(self, diff: dict[str, list[Any]], source: str) -> None:
        """Consequences that need the new settings in force: the run's length, the LR now, dropout events."""
        t = self.trainer
        p = t.progress
        t.total_steps = t._total_steps()
        t.lr_schedule.set_total(t.total_steps)
        t._set_lr(t.lr_schedule.lr_at(p.step), f"changed by {source}")
        dropout_keys = [key for key in diff if key.startswith("dropout.")]
        if dropout_keys:
            old = dropout_rates(t.model)
            for key in dropout_keys:  # the rates before this change, to report old and new whole
                group = key[len("dropout."):]
                name = t.dropout_schedule.groups[group][-1][0]
                old[name] = diff[key][0]
            t._emit(ev.DropoutChanged(step=p.step, epoch=p.epoch, old=old, new=dropout_rates(t.model)))


class ChannelListener:
    """Takes the control channel's requests at once and answers within seconds, whatever a step costs."""

    def __init__(self, controller: RunController):
        self.controller = controller
        self.inbox = ControlInbox(controller.trainer.run_dir)
        self._closing = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True,
                                       name=f"cifartui-control-{controller.trainer.run_dir.name}")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self._closing.set()
        self.thread.join(timeout=QUICK_ANSWER_S + 1.0)

    def _listen(self) -> None:
        while not self._closing.wait(CONTROL_POLL_S):
            for request in self.inbox.take():
                try:
                    answer = self.answer(request.command, request.args)
                except Exception as error:  # noqa: BLE001 - the client gets a reply, the run goes on
                    answer = {"ok": False, "error": f"the run could not take the request: {error}"}
                self.inbox.reply(request, answer)

    def answer(self, command: str, args: Mapping[str, Any]) -> dict[str, Any]:
        controller = self.controller
        t = controller.trainer
        if command == "pause" and not t.dist.enabled:
            answer = controller.handle(command, args, "control")
            if controller.holding.wait(QUICK_ANSWER_S):  # the step in progress ended: paused, at this step
                p = t.progress
                return {**answer, "step": p.step, "epoch": p.epoch}
            return {**answer, "state": "pausing", "applies": "when the step ends"}
        if command in ("status", "pause", "resume", "stop") or t.dist.enabled:
            return controller.handle(command, args, "control")  # thread-safe requests, or torchrun's refusals
        diff: dict[str, list[Any]] = {}
        handed: dict[str, Any] = {"source": "control"}
        if command == "set":
            try:
                updates = args.get("updates")
                if not isinstance(updates, Mapping):
                    updates = parse_assignments(args.get("assignments") or [], "control")
                _, diff = t.settings.check(dict(updates), "control", t.dropout_schedule.group_rates())
            except ConfigError as error:
                p = t.progress
                return {"ok": False, "error": str(error), "key": error.key, "step": p.step, "epoch": p.epoch}
            handed["updates"] = dict(updates)
        elif command != "checkpoint":
            return {"ok": False, "error": f"unknown command '{command}'"}
        future = controller.control.submit(command, handed)
        try:
            return future.result(timeout=QUICK_ANSWER_S)
        except TimeoutError:
            pass  # a slow step: the training thread carries it out when the step ends
        p = t.progress
        return {"ok": True, "queued": True, "applies": "at the next step", "step": p.step, "epoch": p.epoch,
                "changes": diff, "when": {key: when_applied(key) for key in diff},
                "path": str(t.run_dir / "checkpoints" / "last.pt")}


__all__ = ["RunController", "ChannelListener", "AGREE_EVERY", "CONTROL_POLL_S", "QUICK_ANSWER_S"]
