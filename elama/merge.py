"""Model merging over Hugging Face safetensors checkpoints: linear (e-Llama's), SLERP, task
arithmetic and TIES, streamed tensor by tensor in float32 row blocks (elama.merge_stream);
compatibility checks that refuse what cannot be merged (non-finite inputs included); alpha sweeps
with an evaluation hook. No megatron."""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from elama import merge_stream
from elama.convert.hf import (DEFAULT_MAX_SHARD_BYTES, HFCheckpointReader, ShardedSafetensorsWriter,
                              TensorMeta, check_output_dir, copy_side_files, staged_output_dir,
                              tokenizer_hashes, write_json)

logger = logging.getLogger(__name__)

METHODS = ("linear", "slerp", "task_arithmetic", "ties")
INTERPOLATIONS = ("linear", "slerp")  # exactly one model; alpha in [0, 1]
# config.json fields that change what the weights mean; any difference refuses the merge.
ARCH_FIELDS = ("model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
               "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
               "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
               "tie_word_embeddings", "attention_bias", "mlp_bias")
MERGE_INFO_FILE = "elama_merge.json"


class MergeError(ValueError):
    """Checkpoints or options that cannot be merged; the message lists every problem found."""


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise MergeError(f"cannot merge, {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class MergeSpec:
    """How to merge. alpha is, for every method, how far to move from the base toward the model(s):
    linear (1-alpha)*base + alpha*model; slerp the same along the arc; task_arithmetic
    base + alpha*sum_i w_i*(model_i - base); ties base + alpha*disjoint_mean(trimmed w_i*tau_i)."""

    method: str = "linear"
    alpha: float = 0.5
    weights: tuple[float, ...] | None = None
    """Per-model task-vector weights (task_arithmetic, ties); None means 1.0 each."""
    density: float = 1.0
    """TIES: fraction of each task vector's entries kept per tensor, largest magnitudes first."""
    overrides: tuple[tuple[str, float], ...] = ()
    """(fnmatch pattern on tensor names, alpha) pairs; the first match replaces alpha."""
    out_dtype: torch.dtype | None = None
    """Output dtype; None keeps each base tensor's dtype."""
    slerp_colinear_eps: float = 1e-6
    """SLERP falls back to linear where |cos(angle)| > 1 - eps (the arc is undefined there)."""

    def alpha_for(self, name: str) -> float:
        return next((a for pattern, a in self.overrides if fnmatch.fnmatchcase(name, pattern)),
                    self.alpha)

    def model_weights(self, num_models: int) -> tuple[float, ...]:
        return self.weights if self.weights is not None else (1.0,) * num_models


def validate_spec(spec: MergeSpec, num_models: int) -> None:
    """Raise one MergeError listing every problem of spec for num_models merged into a base."""
    _raise_if(spec_problems(spec, num_models))


def spec_problems(spec: MergeSpec, num_models: int) -> list[str]:
    problems = []
    if spec.method not in METHODS:
        problems.append(f"method={spec.method!r} is not one of {', '.join(METHODS)}")
    if spec.method in INTERPOLATIONS and num_models != 1:
        problems.append(f"method={spec.method} merges exactly one model into the base, got {num_models}")
    if num_models < 1:
        problems.append("no model to merge into the base")
    high = 1.0 if spec.method in INTERPOLATIONS else math.inf
    for label, a in [("alpha", spec.alpha)] + [(f"alpha for {p!r}", a) for p, a in spec.overrides]:
        if not (math.isfinite(a) and 0.0 <= a <= high):
            problems.append(f"{label}={a} is out of range [0, {high}] for method={spec.method}")
    if spec.weights is not None and (len(spec.weights) != num_models
                                     or not all(math.isfinite(w) for w in spec.weights)):
        problems.append(f"weights={list(spec.weights)} must be {num_models} finite number(s)")
    if spec.weights is not None and spec.method in INTERPOLATIONS:
        problems.append(f"weights apply to task_arithmetic and ties, not method={spec.method}")
    if not 0.0 < spec.density <= 1.0:
        problems.append(f"density={spec.density} is out of range (0, 1]")
    if spec.density != 1.0 and spec.method != "ties":
        problems.append(f"density applies to method=ties only, not method={spec.method}")
    if spec.out_dtype is not None and not spec.out_dtype.is_floating_point:
        problems.append(f"out_dtype={spec.out_dtype} is not a floating-point dtype")
    return problems


def check_compatible(base: HFCheckpointReader, models: Sequence[HFCheckpointReader],
                     spec: MergeSpec | None = None) -> None:
    """Refuse, listing every problem: architecture fields, tokenizer files, tensor names, shapes,
    and override patterns that match no tensor."""
    problems = []
    base_tok = tokenizer_hashes(base.path)
    for m in models:
        for key in ARCH_FIELDS:
            if base.config.get(key) != m.config.get(key):
                problems.append(f"config.json field {key}: {base.config.get(key)!r} in {base.path} "
                                f"but {m.config.get(key)!r} in {m.path}")
        tok = tokenizer_hashes(m.path)
        for fname in sorted(base_tok.keys() & tok.keys()):
            if base_tok[fname] != tok[fname]:
                problems.append(f"{fname} differs between {base.path} and {m.path} (sha256 "
                                f"{base_tok[fname][:12]} vs {tok[fname][:12]}): different tokenizers")
        for fname in sorted(base_tok.keys() ^ tok.keys()):
            logger.warning("%s is in only one of %s and %s; tokenizer equality not verified by it",
                           fname, base.path, m.path)
        problems += _tensor_problems(base, m)
    if spec is not None:
        names = base.names()
        problems += [f"override pattern {p!r} matches no tensor of {base.path}"
                     for p, _ in spec.overrides if not fnmatch.filter(names, p)]
    _raise_if(problems)


def _tensor_problems(base: HFCheckpointReader, model: HFCheckpointReader, shown: int = 5) -> list[str]:
    problems = []
    missing = [n for n in base.names() if n not in model]
    extra = [n for n in model.names() if n not in base]
    if missing:
        problems.append(f"{model.path} lacks {len(missing)} tensor(s) of the base: {missing[:shown]}")
    if extra:
        problems.append(f"{model.path} has {len(extra)} tensor(s) the base lacks: {extra[:shown]}")
    shapes = [n for n in base.names() if n in model and base.meta(n).shape != model.meta(n).shape]
    problems += [f"tensor {n}: shape {list(base.meta(n).shape)} in {base.path} but "
                 f"{list(model.meta(n).shape)} in {model.path}" for n in shapes[:shown]]
    if len(shapes) > shown:
        problems.append(f"... and {len(shapes) - shown} more tensors with mismatched shapes")
    return problems


# Tensor kernels: float32 in, float32 out; `models` are the non-base checkpoints' tensors.

def merge_linear(base: torch.Tensor, model: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1-alpha)*base + alpha*model; exact at alpha 0 and 1 (x*1 and x*0 + y are exact)."""
    return base.mul(1.0 - alpha).add_(model, alpha=alpha)


def _dot64(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 20) -> float:
    """Dot product accumulated in float64, chunked so no float64 copy of a large tensor exists."""
    a, b = a.reshape(-1), b.reshape(-1)
    return sum(torch.dot(a[i:i + chunk].double(), b[i:i + chunk].double()).item()
               for i in range(0, a.numel(), chunk))


def merge_slerp(base: torch.Tensor, model: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors (Shoemake 1985):
    sin((1-t)theta)/sin(theta)*base + sin(t theta)/sin(theta)*model, theta the angle between them.
    With |base| = |model| the result keeps that norm; linear where the angle is (nearly) 0 or pi."""
    if t in (0.0, 1.0):
        return (base if t == 0.0 else model).clone()
    coefficients = slerp_coefficients(_dot64(base, base), _dot64(model, model),
                                      _dot64(base, model), t, eps)
    if coefficients is None:
        return merge_linear(base, model, t)
    return base.mul(coefficients[0]).add_(model, alpha=coefficients[1])


def slerp_coefficients(bb: float, mm: float, bm: float, t: float,
                       eps: float) -> tuple[float, float] | None:
    """SLERP's (s0, s1) from the dot products, or None where the arc is undefined (linear)."""
    norms = math.sqrt(bb) * math.sqrt(mm)
    cos = bm / norms if norms > 0 else 1.0
    if abs(cos) > 1.0 - eps:
        return None
    theta = math.acos(max(-1.0, min(1.0, cos)))
    return math.sin((1.0 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def merge_task_arithmetic(base: torch.Tensor, models: Sequence[torch.Tensor],
                          weights: Sequence[float], alpha: float) -> torch.Tensor:
    """base + alpha * sum_i w_i (model_i - base) (Ilharco et al. 2023, task vectors)."""
    out = base.clone()
    for model, w in zip(models, weights):
        out.add_(model - base, alpha=alpha * w)
    return out


def trim_to_density(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ceil(density*n) largest-magnitude entries (ties at the threshold kept)."""
    k = math.ceil(density * tau.numel())
    if k >= tau.numel():
        return tau
    magnitude = tau.abs().reshape(-1)
    threshold = magnitude.kthvalue(tau.numel() - k + 1).values
    return torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau))


def merge_ties(base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float],
               density: float, alpha: float) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023): trim each task vector to its top-density magnitudes, elect
    each entry's sign as the sign of the summed trimmed vectors (the heavier side), average only
    the nonzero values agreeing with it, add alpha times that to the base."""
    taus = torch.stack([w * trim_to_density(m - base, density) for m, w in zip(models, weights)])
    return ties_combine(base, taus, alpha)


def ties_combine(base: torch.Tensor, taus: torch.Tensor, alpha: float) -> torch.Tensor:
    """base + alpha * the disjoint mean of the weighted, trimmed task vectors (stacked)."""
    sign = taus.sum(dim=0).sign()
    agree = (taus.sign() == sign) & (taus != 0)
    merged = (taus * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
    return base + alpha * merged


Kernel = Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


def _kernel(spec: MergeSpec, alpha: float, num_models: int) -> Kernel:
    """fn(base, models) -> merged for this spec and a tensor's alpha."""
    weights = spec.model_weights(num_models)
    return {
        "linear": lambda b, ms: merge_linear(b, ms[0], alpha),
        "slerp": lambda b, ms: merge_slerp(b, ms[0], alpha, spec.slerp_colinear_eps),
        "task_arithmetic": lambda b, ms: merge_task_arithmetic(b, ms, weights, alpha),
        "ties": lambda b, ms: merge_ties(b, ms, weights, spec.density, alpha),
    }[spec.method]


def output_dtype(meta: TensorMeta, spec: MergeSpec) -> torch.dtype:
    """spec.out_dtype for floating tensors, else the base tensor's own dtype."""
    return spec.out_dtype if spec.out_dtype and meta.dtype.is_floating_point else meta.dtype


def merge_tensor(name: str, base: HFCheckpointReader, models: Sequence[HFCheckpointReader],
                 spec: MergeSpec) -> torch.Tensor:
    """One whole merged tensor in the output dtype, computed in float32."""
    meta = base.meta(name)
    if not meta.dtype.is_floating_point:  # integer buffers cannot be interpolated: must agree
        tensor = base.get(name)
        if any(not torch.equal(tensor, m.get(name)) for m in models):
            raise MergeError(f"tensor {name} ({meta.dtype}) differs between {base.path} and a "
                             "model; non-floating tensors are copied and must be equal")
        return tensor
    fn = _kernel(spec, spec.alpha_for(name), len(models))
    ins = [r.get(name).float() for r in (base, *models)]
    return fn(ins[0], ins[1:]).to(output_dtype(meta, spec))


def write_merged_tensor(name: str, base: HFCheckpointReader, models: Sequence[HFCheckpointReader],
                        spec: MergeSpec, writer: ShardedSafetensorsWriter, bufs: dict) -> None:
    """Merge one tensor into a planned writer, in row blocks for every method: SLERP first reads
    the tensor for its angle, TIES for each task vector's magnitude threshold."""
    meta = base.meta(name)
    try:
        if not meta.dtype.is_floating_point or meta.numel == 0 or not meta.shape:
            writer.add(name, _checked(name, (base, *models), merge_tensor(name, base, models, spec)))
            return
        merge_stream.write_blocks(name, (base, *models), _block_kernel(name, base, models, spec, bufs),
                                  output_dtype(meta, spec), writer, bufs)
    except merge_stream.NonFiniteInput as e:
        raise MergeError(str(e)) from None


def _block_kernel(name: str, base, models, spec: MergeSpec, bufs: dict) -> Kernel:
    """The in-place chunk kernel (elama.merge_stream) equal to this tensor's whole-tensor one."""
    alpha = spec.alpha_for(name)
    weights = spec.model_weights(len(models))
    if spec.method == "slerp" and alpha not in (0.0, 1.0):
        dots = merge_stream.slerp_dots(name, (base, *models), bufs)
        coefficients = slerp_coefficients(*dots, alpha, spec.slerp_colinear_eps)
        if coefficients is not None:
            return merge_stream.weighted_kernel(*coefficients)
    elif spec.method == "task_arithmetic":
        return merge_stream.task_arithmetic_kernel(weights, alpha)
    elif spec.method == "ties":
        thresholds = merge_stream.ties_thresholds(name, (base, *models), bufs, spec.density)
        return merge_stream.ties_kernel(thresholds, weights, alpha, bufs)
    return merge_stream.linear_kernel(alpha)  # linear, SLERP's exact endpoints or a colinear pair


def _checked(name: str, readers: Sequence, merged: torch.Tensor) -> torch.Tensor:
    """A whole (scalar or integer) tensor: its inputs must be finite too."""
    for r in readers:
        tensor = r.get(name)
        if not merge_stream.all_finite(tensor):
            raise merge_stream.NonFiniteInput(f"tensor {name} of {r.path} holds NaN or inf: "
                                              "nothing was written; repair or leave out that "
                                              "checkpoint")
    return merged


@dataclass
class MergeResult:
    """What one merge wrote."""

    path: Path
    num_tensors: int
    total_bytes: int
    num_shards: int
    seconds: float
    info: dict = field(default_factory=dict)

    def row(self) -> dict:
        """One line of a sweep table."""
        return {"alpha": self.info.get("alpha"), "path": str(self.path), "tensors": self.num_tensors,
                "gbytes": round(self.total_bytes / 1e9, 3), "shards": self.num_shards,
                "merge_s": round(self.seconds, 2)}


def merge_checkpoints(base_dir, model_dirs: Sequence, out_dir, spec: MergeSpec = MergeSpec(), *,
                      force: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      progress: bool = True) -> MergeResult:
    """Merge model_dirs into base_dir per spec and write a complete HF directory at out_dir."""
    validate_spec(spec, len(model_dirs))
    _check_out_dir(out_dir, [base_dir, *model_dirs], force)
    with open_checkpoints(base_dir, model_dirs) as (base, models):
        check_compatible(base, models, spec)
        return _merge_opened(base, models, Path(out_dir), spec, force=force,
                             max_shard_bytes=max_shard_bytes, progress=progress)


def _check_out_dir(out_dir, inputs: Sequence, force: bool) -> None:
    out = Path(out_dir).resolve()
    for src in inputs:
        src = Path(src).resolve()
        if out == src or out in src.parents:
            raise MergeError(f"output {out_dir} would replace input {src}; choose another directory")
    check_output_dir(out, force=force)


@contextlib.contextmanager
def open_checkpoints(base_dir, model_dirs: Sequence) -> Iterator[tuple[HFCheckpointReader, list]]:
    """(base reader, model readers), all closed on exit."""
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(HFCheckpointReader(d)) for d in (base_dir, *model_dirs)]
        yield readers[0], readers[1:]


def _merge_opened(base: HFCheckpointReader, models: Sequence[HFCheckpointReader], out_dir: Path,
                  spec: MergeSpec, *, force: bool, max_shard_bytes: int, progress: bool) -> MergeResult:
    start = time.perf_counter()
    info = {"method": spec.method, "alpha": spec.alpha, "weights": spec.weights,
            "density": spec.density, "overrides": [list(o) for o in spec.overrides],
            "out_dtype": str(spec.out_dtype).removeprefix("torch.") if spec.out_dtype else None,
            "base": str(base.path.resolve()), "models": [str(m.path.resolve()) for m in models]}
    with staged_output_dir(out_dir, force=force) as tmp:
        writer = ShardedSafetensorsWriter(tmp, max_shard_bytes)
        bar = tqdm(total=base.total_bytes, unit="B", unit_scale=True, disable=not progress,
                   desc=f"{spec.method} alpha={spec.alpha:g}")
        # Planned: every output shape is known now, so blocks go straight to disk.
        writer.plan((n, base.meta(n).shape, output_dtype(base.meta(n), spec)) for n in base.names())
        bufs: dict = {}
        with writer, bar, merge_stream.compute_threads():
            for name in base.names():
                write_merged_tensor(name, base, models, spec, writer, bufs)
                bar.update(base.meta(name).nbytes)
        copy_side_files(base.path, tmp)
        if spec.out_dtype is not None:
            _set_config_dtype(tmp / "config.json", base.config, spec.out_dtype)
        write_json(tmp / MERGE_INFO_FILE, info)
    result = MergeResult(out_dir, writer.num_tensors, writer.total_bytes,
                         len(set(writer.close()["weight_map"].values())),
                         time.perf_counter() - start, info)
    logger.info("merged %d tensors (%.3f GB) into %s in %.1f s", result.num_tensors,
                result.total_bytes / 1e9, out_dir, result.seconds)
    return result


def _set_config_dtype(path: Path, config: dict, dtype: torch.dtype) -> None:
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    write_json(path, {**config, **dict.fromkeys(keys, str(dtype).removeprefix("torch."))})


def sweep(base_dir, model_dirs: Sequence, out_dir, alphas: Sequence[float],
          spec: MergeSpec = MergeSpec(), *, on_merged: Callable[[float, Path], dict] | None = None,
          keep_merged: bool = True, force: bool = False,
          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool = True) -> list[dict]:
    """One merged model per alpha under out_dir/alpha_<a>, each optionally evaluated by
    on_merged(alpha, path) -> metrics (added to its row; the model is then deleted unless
    keep_merged). Writes out_dir/sweep.tsv and sweep.json after every alpha; returns the rows."""
    if not alphas or len(set(alphas)) != len(alphas):
        raise MergeError(f"alphas={list(alphas)} must be non-empty and without repeats")
    problems = [p for a in alphas for p in spec_problems(replace(spec, alpha=a), len(model_dirs))]
    _raise_if(list(dict.fromkeys(problems)))
    _check_out_dir(out_dir, [base_dir, *model_dirs], force)
    out, rows = Path(out_dir), []
    with open_checkpoints(base_dir, model_dirs) as (base, models):
        check_compatible(base, models, spec)
        out.mkdir(parents=True, exist_ok=True)
        for a in alphas:
            result = _merge_opened(base, models, out / f"alpha_{a:g}", replace(spec, alpha=a),
                                   force=force, max_shard_bytes=max_shard_bytes, progress=progress)
            rows.append(_sweep_row(result, on_merged, keep_merged))
            write_sweep_table(out, rows)
    return rows


def _sweep_row(result: MergeResult, on_merged, keep_merged: bool) -> dict:
    row, alpha = result.row(), result.info["alpha"]
    if on_merged is not None:
        metrics = on_merged(alpha, result.path)
        if not isinstance(metrics, dict) or row.keys() & metrics.keys():
            raise MergeError(f"on_merged must return a dict of metrics not named {sorted(row)}; "
                             f"got {metrics!r} for alpha={alpha:g}")
        row.update(metrics)
        if not keep_merged:
            shutil.rmtree(result.path)
            row["path"] = f"{result.path} (deleted after evaluation)"
    return row


def table_cells(rows: Sequence[dict]) -> list[list[str]]:
    """A header of every column (first-seen order) and one line of text cells per row."""
    cols = list(dict.fromkeys(k for row in rows for k in row))
    return [cols] + [[f"{v:.6g}" if isinstance(v := row.get(c, ""), float) else str(v) for c in cols]
                     for row in rows]


def write_sweep_table(out_dir: Path, rows: Sequence[dict]) -> None:
    cells = table_cells(rows)
    cols, lines = cells[0], ["\t".join(line) for line in cells]
    (out_dir / "sweep.tsv").write_text("\n".join(lines) + "\n")
    write_json(out_dir / "sweep.json", {"columns": cols, "rows": list(rows)})
