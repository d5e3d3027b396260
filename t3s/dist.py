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


def weights_digest(model: Any) -> tuple[list[str], list[str], list[list[float]]]:
    """The names of a model's parameters and buffers (in module order), the names of those on the meta device
    (never loaded), and per tensor a short numeric digest: its sum, its sum of squares and 16 values at evenly
    spaced positions (so that placeholders, zeros and permuted weights all differ), computed where the tensor
    lives and read back in one transfer."""
    import torch

    names, meta, rows = [], [], []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        names.append(name)
        if t.device.type == "meta" or t.numel() == 0:
            meta += [name] if t.device.type == "meta" else []
            rows.append(torch.zeros(18, dtype=torch.float64))
            continue
        x = t.detach().reshape(-1)
        x = x if x.is_floating_point() else x.double()
        sample = x[:: max(1, x.numel() // 16)][:16].double().cpu()
        head = torch.stack([x.sum(dtype=torch.float64), x.float().pow(2).sum(dtype=torch.float64)]).cpu()
        rows.append(torch.cat([head, torch.nn.functional.pad(sample, (0, 16 - sample.numel()))]))
    return names, meta, (torch.stack(rows).tolist() if rows else [])


def _same(a: list[float], b: list[float]) -> bool:
    import math

    return all(x == y or (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-6 * abs(y) for x, y in zip(a, b))


def check_same_weights(model: Any, what: str) -> None:
    """Refuse, on every process alike, a model whose processes hold different weights or buffers (a loader that
    left placeholders for a broadcast that never came, other files on another node): their scores and samples
    would be finite and wrong. A no-op in a single-process run. Collective: every process calls it."""
    if not launched():
        return
    from accelerate.utils import gather_object

    everyone = gather_object([weights_digest(model)])
    ref_names, _, ref = everyone[0]
    for r, (names, meta, digest) in enumerate(everyone):
        if meta:
            raise T3SError(
                f"{what}: process {r} holds {len(meta)} tensor(s) that were never loaded (first: {meta[0]}, on the "
                "meta device); every process must load the whole model for this stage"
            )
        if names != ref_names:
            raise T3SError(f"{what}: process {r} loaded another architecture than process 0 (other tensor names)")
        bad = [names[i] for i, (a, b) in enumerate(zip(digest, ref)) if not _same(a, b)]
        if bad:
            raise T3SError(
                f"{what}: process {r} holds other weights than process 0 in {len(bad)} of {len(names)} tensors "
                f"(first: {bad[0]}); every process must read the same model files (a shared filesystem, the same "
                "revision)"
            )


def planned_sharding(training_kwargs: dict[str, Any], env: Any = None) -> str | None:
    """How the Trainer about to be built will hold the parameters, from its arguments and the variables that
    `accelerate launch` exports (pure given `env`): "ZeRO-3", "FSDP", or None (whole on every process: DDP,
    ZeRO-1/2, one process). Known before anything is loaded, so that a combination that cannot work is refused
    before the compute is spent."""
    import json

    env = os.environ if env is None else env

    def true(name: str) -> bool:
        return str(env.get(name, "")).strip().lower() in ("1", "true", "yes")

    if true("ACCELERATE_USE_FSDP") or training_kwargs.get("fsdp"):
        return "FSDP"
    ds = training_kwargs.get("deepspeed") or env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") if true("ACCELERATE_USE_DEEPSPEED") or ds else None
    if ds and isinstance(ds, (str, Path)) and str(ds) not in ("", "none"):
        try:
            ds = json.loads(Path(ds).read_text())
        except (OSError, ValueError) as e:
            raise T3SError(f"{ds}: cannot read the DeepSpeed config ({e})") from None
    if isinstance(ds, dict):
        stage = (ds.get("zero_optimization") or {}).get("stage", stage)
    return "ZeRO-3" if str(stage).strip() == "3" else None


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


# ---------------------------------------------------------------------------------------- saving what was trained


def master_state_dict(module: Any, fp32_of: Callable[[Any], Any] | None = None, whole: Callable | None = None) -> dict:
    """A DeepSpeed-trained module's weights as its optimizer holds them, on the main process ({} elsewhere): the
    fp32 master copy of every trained parameter (ZeRO 1/2/3 train the module itself in bf16, and a save of it
    rounds every weight to bf16: 5.5% of the anchor set flips on bf16 weights, BENCHMARKS.md), the module's value
    of a frozen one and the persistent buffers (16-bit values widened to fp32, exactly). Collective: every
    process calls it and takes part in each parameter's gather, in the same order. `fp32_of(p)` (DeepSpeed's
    `safe_get_full_fp32_param`: None for a parameter with no master copy) and `whole(p)` (the full module value
    of a ZeRO-3 partitioned one) are taken from deepspeed unless given (tests)."""
    if fp32_of is None:
        from deepspeed.utils import safe_get_full_fp32_param as fp32_of
    if whole is None:
        whole = _gathered
    main = is_main()
    out: dict[str, Any] = {}
    for name, p in module.named_parameters():
        full = fp32_of(p)
        if full is None:  # frozen: no master copy, the module's weight is all there is
            full = whole(p)
        if main:  # a frozen 16-bit value widens exactly: one dtype in the files, as the masters are
            out[name] = _wide(full)
    params = set(out) | {n for n, _ in module.named_parameters()}
    keys = set(module.state_dict(keep_vars=True))  # persistent buffers are state; non-persistent ones are not
    for name, b in module.named_buffers():
        if main and name in keys and name not in params:
            out[name] = _wide(b)
    return out


def _wide(t: Any) -> Any:
    t = t.detach().to("cpu", copy=True).contiguous()
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def _gathered(p: Any) -> Any:
    if not hasattr(p, "ds_id"):  # ZeRO 1/2: every process holds the whole parameter
        return p.data
    import deepspeed

    with deepspeed.zero.GatheredParameters([p]):  # collective
        return p.data.clone()


def deepspeed_trained(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_deepspeed_enabled", False))


def master_dtype(trainer: Any, model: Any) -> str:
    """The dtype of the weights the optimizer updates: DeepSpeed keeps fp32 masters of a 16-bit module; otherwise
    the module's own (t3s trains in fp32 unless its precision plan says otherwise)."""
    if deepspeed_trained(trainer):
        return "float32"
    return str(getattr(model, "dtype", "float32")).removeprefix("torch.")


def save_trained(trainer: Any, out: str | Path, fp32_of: Callable[[Any], Any] | None = None) -> None:
    """Save the model a Trainer trains, whole, into `out` (the main process writes; every process calls it).
    Under DeepSpeed, the fp32 master weights (`master_state_dict`), not the engine's 16-bit module; otherwise
    the Trainer's own save (FSDP gathers a full state dict; DDP and one process save the module, which t3s
    trains in fp32)."""
    if not deepspeed_trained(trainer):
        trainer.save_model(str(out))
        return
    import torch

    model = trainer.accelerator.unwrap_model(trainer.model)
    state = master_state_dict(model, fp32_of)  # fp32_of: DeepSpeed's own unless given (tests)
    if trainer.args.should_save:
        model.save_pretrained(str(out), state_dict=state)
        dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
        if dtypes == {torch.float32}:
            _config_dtype(Path(out), "float32")  # the module says bfloat16; the files hold float32


def _config_dtype(out: Path, dtype: str) -> None:
    import json

    f = out / "config.json"
    conf = json.loads(f.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in conf:
            conf[key] = dtype
    tmp = f.with_name(".config.json.tmp")
    tmp.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    tmp.replace(f)
