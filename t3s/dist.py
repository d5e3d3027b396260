"""Running on several processes (`torchrun`, `accelerate launch`): who am I, which rows are mine, gather the
results back in the original order, and let only the main process write artifacts.

A run is distributed when the launcher sets WORLD_SIZE > 1. Single-process runs never touch torch.distributed:
every helper here is then the identity or a no-op, so the one-process path costs nothing extra.

Rows are split deterministically: sorted by a cost (e.g. length, longest first, ties by index) and dealt
round-robin, so every process gets a similar amount of work; results are gathered with accelerate's
`gather_object` and put back in the original order, so N processes produce what one process produces.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from t3s import T3SError

_alone = False  # inside `on_main`: the main process works alone, every helper acts as in a 1-process run


def launched() -> bool:
    """True when this process is one of several (the launcher sets WORLD_SIZE) and not working alone."""
    return not _alone and int(os.environ.get("WORLD_SIZE", "1")) > 1


def state() -> Any:
    """accelerate's PartialState (initialises the process group: gloo on CPU, NCCL on GPU, and selects this
    process's GPU), or None in a single-process run. Call it before loading a model on a GPU."""
    if not launched():
        return None
    import torch
    from accelerate import PartialState

    # the Trainer asks for PartialState(cpu=use_cpu) with use_cpu = no CUDA: the same singleton either way
    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    s = state()
    return 0 if s is None else s.process_index


def world() -> int:
    s = state()
    return 1 if s is None else s.num_processes


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    s = state()
    if s is not None:
        s.wait_for_everyone()


def finish() -> None:
    """End a launched command's process once every process is done: wait for the others, then exit at once
    (`os._exit(0)`: no interpreter teardown). Left to the teardown, a gloo communication thread still running
    sometimes aborts the process (`terminate called without an active exception`) and the launcher reports a
    finished command as failed. A no-op in a single-process run."""
    if not launched():
        return
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def deal(costs: Sequence[float], part: int, parts: int) -> list[int]:
    """Indices of part `part` of `parts`: items sorted by cost (largest first, ties by index), dealt round-robin."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    return sorted(order[part::parts])


def gather_ordered(local: dict[int, Any], n: int) -> list[Any]:
    """Merge every process's {original index: result} into one list of length n, on every process."""
    if not launched():
        merged = local
    else:
        from accelerate.utils import gather_object

        merged = dict(gather_object(list(local.items())))
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise RuntimeError(f"gather: no process produced rows {missing[:10]}")
    return [merged[i] for i in range(n)]


def map_rows(
    fn: Callable[[list], list],
    items: list,
    costs: Sequence[float] | None = None,
    *,
    part: int | None = None,
    parts: int | None = None,
) -> list:
    """fn(items) computed in shares: each process runs fn on its rows (see `deal`), the results are gathered in
    the original order on every process. `part`/`parts` override the share (processes that must compute the
    same rows, e.g. a tensor-parallel group, pass the same part)."""
    if not launched():
        return fn(items)
    part = rank() if part is None else part
    parts = world() if parts is None else parts
    mine = deal(costs if costs is not None else [0] * len(items), part, parts)
    out = fn([items[i] for i in mine]) if mine else []
    if len(out) != len(mine):
        raise RuntimeError(f"map_rows: {len(out)} results for {len(mine)} rows")
    return gather_ordered(dict(zip(mine, out)), len(items))


def map_forward(model: Any, fn: Callable[[list], list], items: list, costs: Sequence[float] | None = None) -> list:
    """`map_rows` for forward passes of a model being trained. With sharded parameters (ZeRO-3, FSDP) every
    forward is a collective, so instead every process computes every row (the same calls in the same order)."""
    if params_sharded(model):
        with root_unsharded(model):
            return fn(items)
    return map_rows(fn, items, costs)


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside, this process acts as if it were the only one (no sharding, no collectives)."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def on_main(fn: Callable[[], Any]) -> Any:
    """Run fn on the main process only (e.g. write an artifact), working alone; the others wait, then get its
    result. A T3SError raised on the main process is raised on every process, so all exit with its message."""
    if not launched():
        return fn()
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if is_main():
        try:
            with alone():
                box[0] = ("ok", fn())
        except T3SError as e:
            box[0] = ("error", str(e))
        except BaseException as e:  # noqa: BLE001 -- reported to the others, then re-raised here
            broadcast_object_list([("crash", f"{type(e).__name__}: {e}")])
            raise
    broadcast_object_list(box)
    kind, value = box[0]
    if kind == "error":
        raise T3SError(value)
    if kind == "crash":
        raise RuntimeError(f"the main process failed: {value}")
    return value


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """`t3s.artifacts.atomic_dir` for a distributed run: the main process creates the temporary directory and
    tells the others its path (only the main process should write into it); at the end every process waits
    and the main process renames it into place."""
    from t3s.artifacts import atomic_dir as local_atomic_dir

    if not launched():
        with local_atomic_dir(out, overwrite) as tmp:
            yield tmp
        return
    stack = contextlib.ExitStack()  # holds the main process's local atomic_dir open
    tmp = Path(on_main(lambda: str(stack.enter_context(local_atomic_dir(out, overwrite)))))
    try:
        yield tmp
    except BaseException:
        if is_main():
            stack.__exit__(*sys.exc_info())  # removes the temporary directory
        raise
    barrier()
    on_main(stack.close)  # the rename; every process returns once `out` is in place


def zero3_init_args(training_kwargs: dict[str, Any]) -> Any:
    """DeepSpeed ZeRO-3 partitions the weights while they load (zero.Init) only if the Trainer's arguments exist
    before the model is loaded, and transformers keeps only a weak reference to them: the caller holds the
    returned TrainingArguments until the model is loaded. None when DeepSpeed is not in use."""
    if not launched():
        return None
    if not (training_kwargs.get("deepspeed") or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"):
        return None
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return TrainingArguments(**{k: v for k, v in training_kwargs.items() if k in names})


def params_sharded(model: Any) -> bool:
    """True when the model's parameters are split across processes (DeepSpeed ZeRO-3 or FSDP): every forward is
    then a collective, so all processes must run the same number of forwards."""
    if not launched():
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    from transformers.integrations import is_deepspeed_zero3_enabled

    # accelerate's FSDP2 makes the model an FSDPModule (transformers' is_fsdp_managed_module does not see it)
    return bool(is_deepspeed_zero3_enabled() or isinstance(model, (FSDPModule, FullyShardedDataParallel)))


@contextlib.contextmanager
def root_unsharded(model: Any) -> Iterator[None]:
    """Under FSDP2, keep the root module's own parameters (embeddings, final norm, LM head) gathered while
    code calls submodules directly (the fast scorer runs the backbone and the head separately); the decoder
    layers still gather their own parameters in their forward hooks. A no-op otherwise."""
    unshard = getattr(model, "unshard", None)
    if not (launched() and callable(unshard) and hasattr(model, "reshard")):
        yield
        return
    unshard()
    try:
        yield
    finally:
        model.reshard()
