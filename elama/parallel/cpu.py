"""The CPU device layer: unmodified megatron-core 0.16.1 running on CPU (development, demo, CI).

megatron-core has no CPU path. Applied only for device=cpu, this module redirects the CUDA calls
megatron-core makes, each listed in SITES with the megatron-core function that needs it. A CUDA call
from any unlisted place raises CpuLayerError, and tests/unit/test_cpu_layer.py fails when a listed
call disappears from megatron-core's source, so an upgrade of megatron-core is loud, never silent.
"""
from __future__ import annotations

import collections
import contextlib
import importlib
import inspect
import sys
import types
from dataclasses import dataclass

import torch

_MCORE_MARK = "/megatron/core/"


class CpuLayerError(RuntimeError):
    """A CUDA call from a place the CPU device layer does not list."""


@dataclass(frozen=True)
class CudaSite:
    path: str
    """File under megatron/core/."""
    function: str
    """Qualified name of the megatron-core function making the call."""
    kind: str
    """current_device | synchronize | factory | tensor_cuda | type_check."""
    source: str
    """Text that must still appear in that function (checked by the tests)."""
    why: str


def _site(path, function, kind, source, why) -> CudaSite:
    return CudaSite(path, function, kind, source, why)


SITES: tuple[CudaSite, ...] = (
    _site("models/common/embeddings/rotary_pos_embedding.py", "RotaryEmbedding.get_emb",
          "current_device", "torch.cuda.current_device()", "moves inv_freq to the GPU on first use"),
    _site("utils.py", "GlobalMemoryBuffer.get_tensor", "current_device",
          "torch.cuda.current_device()", "sequence-parallel all-gather scratch buffer"),
    _site("tensor_parallel/mappings.py", "_gather_along_first_dim", "current_device",
          "torch.cuda.current_device()", "sequence-parallel all-gather output"),
    _site("tensor_parallel/mappings.py", "_reduce_scatter_along_first_dim", "current_device",
          "torch.cuda.current_device()", "sequence-parallel reduce-scatter output"),
    _site("tensor_parallel/layers.py", "LinearWithGradAccumulationAndAsyncCommunication.backward",
          "current_device", "torch.cuda.current_device()",
          "sequence-parallel all-gather and reduce-scatter buffers in the linear backward, and "
          "the unused placeholder wgrad of gradient_accumulation_fusion"),
    _site("tensor_parallel/mappings.py", "_gather_along_last_dim", "current_device",
          "torch.cuda.current_device()", "all-gather of vocab-parallel logits (inference)"),
    _site("pipeline_parallel/p2p_communication.py",
          "P2PCommunicator._communicate.create_tensor_recv_prev", "current_device",
          "torch.cuda.current_device()", "receive buffer from the previous pipeline stage"),
    _site("pipeline_parallel/p2p_communication.py",
          "P2PCommunicator._communicate.create_tensor_recv_next", "current_device",
          "torch.cuda.current_device()", "receive buffer from the next pipeline stage"),
    _site("pipeline_parallel/p2p_communication.py", "P2PCommunicator._communicate",
          "synchronize", "torch.cuda.synchronize()", "waits for batched p2p (race workaround)"),
    _site("distributed/param_and_grad_buffer.py", "_ParamAndGradBuffer.__init__",
          "current_device", "torch.cuda.current_device()", "DDP's contiguous param/grad buffers"),
    _site("optimizer/distrib_optimizer.py", "DistributedOptimizer.get_parameter_state_dp_zero",
          "current_device", "torch.cuda.current_device()", "gather buffer of optimizer state"),
    _site("optimizer/distrib_optimizer.py", "DistributedOptimizer.get_parameter_state_dp_zero",
          "tensor_cuda", ".cuda()", "moves optimizer-state send buffers to the GPU"),
    _site("models/common/language_module/language_module.py",
          "LanguageModule.setup_embeddings_and_output_layer", "tensor_cuda", ".cuda()",
          "tied embeddings: the last stage's copy, all-reduced from the first at build time"),
    _site("dist_checkpointing/strategies/state_dict_saver.py", "save_state_dict_async_finalize",
          "current_device", "torch.cuda.current_device()", "all-reduce of write-failure flags"),
    _site("dist_checkpointing/strategies/filesystem_async.py",
          "FileSystemWriterAsync.preload_tensors", "synchronize", "torch.cuda.synchronize()",
          "waits for D2H copies before the checkpoint write"),
    _site("dist_checkpointing/strategies/async_utils.py", "TemporalAsyncCaller.schedule_async_call",
          "synchronize", "torch.cuda.synchronize()", "async save: D2H copies done before the fork"),
    _site("dist_checkpointing/strategies/async_utils.py", "AsyncCaller.sync_all_async_calls",
          "current_device", "torch.cuda.current_device()", "async save: all-reduce of 'still writing'"),
    _site("dist_checkpointing/strategies/async_utils.py",
          "AsyncCallsQueue.maybe_finalize_async_calls", "current_device",
          "torch.cuda.current_device()", "async save: all-reduce of the finalized call index"),
    _site("pipeline_parallel/schedules.py", "forward_backward_no_pipelining", "factory",
          'device="cuda"', "total_num_tokens accumulator"),
    _site("pipeline_parallel/schedules.py", "forward_backward_pipelining_with_interleaving",
          "factory", 'device="cuda"', "total_num_tokens accumulator"),
    _site("pipeline_parallel/schedules.py", "forward_backward_pipelining_without_interleaving",
          "factory", 'device="cuda"', "total_num_tokens accumulator"),
    _site("optimizer/optimizer.py", "MixedPrecisionOptimizer.__init__", "factory",
          "device='cuda'", "loss-scale and overflow buffers"),
    _site("transformer/utils.py", "get_default_causal_mask", "factory", 'device="cuda"',
          "causal mask of the unfused (local) softmax when no mask is passed"),
    _site("optimizer/optimizer.py", "FP32Optimizer.__init__", "factory", "device='cuda'",
          "constant loss scale of the fp32 optimizer"),
    _site("optimizer/clip_grads.py", "get_grad_norm_fp32", "factory", "device='cuda'",
          "overflow buffer of the multi-tensor l2 norm"),
    _site("optimizer/clip_grads.py", "clip_grad_by_total_norm_fp32", "factory", "device='cuda'",
          "overflow buffer of the multi-tensor scale"),
    _site("utils.py", "local_multi_tensor_l2_norm", "factory", 'device="cuda"',
          "result of the fallback (non-apex) multi-tensor l2 norm"),
    _site("optimizer/distrib_optimizer.py", "DistributedOptimizer._build_model_and_main_param_groups",
          "type_check", "torch.cuda.FloatTensor", "accepts only CUDA parameter types"),
    _site("optimizer/distrib_optimizer.py", "DistributedOptimizer.__init__", "type_check",
          "torch.cuda.BFloat16Tensor", "accepts only CUDA parameter types"),
    _site("optimizer/optimizer.py", "Float16OptimizerWithFloat16Params.__init__", "type_check",
          "torch.cuda.FloatTensor", "accepts only CUDA parameter types"),
    _site("optimizer/clip_grads.py", "clip_grad_by_total_norm_fp32", "type_check",
          "torch.cuda.FloatTensor", "asserts fp32 CUDA grads"),
    _site("optimizer/clip_grads.py", "get_grad_norm_fp32", "exact_norm", "l2_norm_impl",
          "without apex/TE, megatron's fallback L2 norm (utils.local_multi_tensor_l2_norm) sums "
          "a tensor's squares in float32: 4e-3 relative off on a 128256x512 embedding "
          "(measured), and different per layout; replaced by float64 accumulation"),
)

_BY_KIND: dict[str, dict[tuple[str, str], CudaSite]] = collections.defaultdict(dict)
for _s in SITES:
    _BY_KIND[_s.kind][(_s.path, _s.function)] = _s

HITS: collections.Counter = collections.Counter()
"""(path, function, kind) -> calls redirected in this process, for the tests."""
_APPLIED = False


def _caller(depth: int) -> tuple[str, str, int]:
    frame = sys._getframe(depth + 1)
    filename = frame.f_code.co_filename
    path = filename.split(_MCORE_MARK, 1)[1] if _MCORE_MARK in filename else filename
    return path, frame.f_code.co_qualname.replace(".<locals>", ""), frame.f_lineno


def _admit(kind: str, depth: int = 2, *, strict: bool = True) -> bool:
    """Record a redirected call from a listed site; an unlisted caller raises (strict) or is
    passed through untouched (non-strict kinds such as .type())."""
    path, function, line = _caller(depth)
    if (path, function) in _BY_KIND[kind]:
        HITS[(path, function, kind)] += 1
        return True
    if strict:
        raise CpuLayerError(
            f"CUDA call ({kind}) at {path}:{line} in {function} is not listed in "
            "elama/parallel/cpu.py SITES: check what it needs on CPU and list it")
    return False


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


_FACTORIES = ("zeros", "tensor", "empty", "ones", "full")


class _CpuTorch(types.ModuleType):
    """Stands in for `torch` inside the megatron-core modules that create tensors with
    device="cuda": factory calls from listed sites get device="cpu", everything else is torch.
    Scoped to those modules so that torch itself (and its meta-device context) stays untouched."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        attr = getattr(torch, name)
        if name not in _FACTORIES:
            return attr

        def factory(*args, **kwargs):
            if _is_cuda(kwargs.get("device")):
                _admit("factory")
                kwargs["device"] = "cpu"
            return attr(*args, **kwargs)

        return factory


def _current_device():
    _admit("current_device")
    return torch.device("cpu")


def _synchronize(device=None):
    _admit("synchronize")


def _tensor_cuda(self, device=None, non_blocking=False, **kwargs):
    _admit("tensor_cuda")
    return self


_ORIG_TYPE = torch.Tensor.type


def _tensor_type(self, dtype=None, non_blocking=False, **kwargs):
    """megatron-core checks parameter types by name ('torch.cuda.FloatTensor'); at the listed
    sites a CPU tensor reports the CUDA name of its dtype, everywhere else torch's answer."""
    name = _ORIG_TYPE(self, dtype, non_blocking, **kwargs)
    if dtype is None and self.device.type == "cpu" and _admit("type_check", strict=False):
        return name.replace("torch.", "torch.cuda.", 1)
    return name


def apply_cpu_device_layer() -> None:
    """Install the redirects (idempotent). Call before building any megatron-core object."""
    global _APPLIED
    if _APPLIED:
        return
    if torch.cuda.is_available():
        raise CpuLayerError("the CPU device layer is for CPU-only runs; this machine has CUDA: "
                            "use device=cuda")
    proxy = _CpuTorch()
    for path in sorted({site.path for site in SITES if site.kind == "factory"}):
        importlib.import_module("megatron.core." + path[:-3].replace("/", ".")).torch = proxy
    torch.cuda.current_device = _current_device
    torch.cuda.synchronize = _synchronize
    torch.Tensor.cuda = _tensor_cuda
    torch.Tensor.type = _tensor_type
    _apply_rng_tracker()
    _apply_exact_grad_norm()
    _apply_wgrad_accumulation()
    _APPLIED = True


# --- gradient accumulation fusion: the weight gradient GEMM accumulates into main_grad ---------
# megatron's gradient_accumulation_fusion needs apex's CUDA kernel (fused_weight_gradient_mlp_cuda):
# C += A^T B into the DDP buffer's main_grad, instead of a fresh grad tensor per weight that DDP's
# hook then adds to main_grad. The CPU kernel is BLAS's own beta=1: addmm_ (measured on the body
# model of bench/step.py, paired in one process: 1.046 -> 1.032 of transformers' step). Needs every trained linear's weight to have main_grad, i.e. megatron's DDP (elama always
# wraps in it; megatron-LM has the same requirement).

class _CpuWgradAccumulation(types.ModuleType):
    """The two functions megatron's linear backward calls, with apex's argument order."""

    def __init__(self):
        super().__init__("fused_weight_gradient_mlp_cuda")

    @staticmethod
    def wgrad_gemm_accum_fp32(total_input, grad_output, main_grad):
        if total_input.dtype == main_grad.dtype:
            main_grad.addmm_(grad_output.t(), total_input)
        else:  # bf16 weights, fp32 main_grad: the unfused path's numbers (a bf16 GEMM, then add)
            main_grad.add_(grad_output.t().mm(total_input))

    wgrad_gemm_accum_fp16 = wgrad_gemm_accum_fp32


def _apply_wgrad_accumulation() -> None:
    layers = importlib.import_module("megatron.core.tensor_parallel.layers")
    if not layers._grad_accum_fusion_available:  # apex absent (always, on a CPU machine)
        layers.fused_weight_gradient_mlp_cuda = _CpuWgradAccumulation()
        layers._grad_accum_fusion_available = True


# --- the gradient norm, exact -------------------------------------------------------------------
_NORM_BLOCK = 4096  # float32 norms of blocks this long are exact to ~1e-9 once summed in float64


def _exact_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """Drop-in for megatron's l2_norm_impl (multi_tensor_l2norm's signature and result: a
    1-element float32 tensor, None): float32 norms of 4096-element blocks (fast, and exact at
    that length), their squares summed in float64, rounded to float32 once. float32 out, as
    megatron's all-reduce of the norms expects the same dtype on every rank."""
    _admit("exact_norm", depth=3)  # called by megatron's multi_tensor_applier
    total = torch.zeros((), dtype=torch.float64)
    for tensor_list in tensor_lists:
        for t in tensor_list:
            flat = t.detach().reshape(-1)
            cut = flat.numel() - flat.numel() % _NORM_BLOCK
            if cut:
                total += torch.linalg.vector_norm(flat[:cut].view(-1, _NORM_BLOCK), dim=1) \
                    .double().square().sum()
            total += flat[cut:].double().square().sum()
    return total.sqrt().float().reshape(1), None


def _apply_exact_grad_norm() -> None:
    clip_grads = importlib.import_module("megatron.core.optimizer.clip_grads")
    utils = importlib.import_module("megatron.core.utils")
    if clip_grads.l2_norm_impl is utils.local_multi_tensor_l2_norm:  # the fallback, not apex/TE
        clip_grads.l2_norm_impl = _exact_l2_norm


# --- the CUDA RNG tracker, backed by CPU generator states -------------------------------------
# megatron-core forks a per-tp-rank RNG stream around tensor-parallel regions (dropout, init) and
# enters it even with dropout 0. On CPU the default CPU generator plays the CUDA generator's role.

def _cpu_get_rng_state(device=-1, clone=False, graph_safe=False):
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _apply_rng_tracker() -> None:
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    base = random.CudaRNGStatesTracker

    class CpuRNGStatesTracker(base):
        """megatron's tracker with named CPU generator states."""

        def add(self, name, seed):
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self._is_initialized = True
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name=random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            # Unlike the CUDA version, no "CPU RNG changed" warning: here the forked stream IS
            # the CPU generator, so drawing from it inside the fork is the point.
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            outer = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(outer)

    random.CudaRNGStatesTracker = CpuRNGStatesTracker
    random._get_cuda_rng_state = _cpu_get_rng_state
    random._set_cuda_rng_state = _cpu_set_rng_state
    random.initialize_rng_tracker(force_reset=True)


def missing_sites() -> list[str]:
    """Listed sites whose megatron-core function no longer exists or no longer makes the call."""
    return [p for p in (site_problem(s.path, s.function, s.source) for s in SITES) if p]


def site_problem(path: str, function: str, text: str) -> str | None:
    """Why megatron-core's `function` in `path` (under megatron/core/) is gone or no longer
    contains `text`; None when it does. Shared with elama/parallel/patches.py."""
    try:
        obj = importlib.import_module("megatron.core." + path[:-3].replace("/", "."))
        for part in function.split("."):
            if not hasattr(obj, part) and inspect.isfunction(obj):
                break  # a nested function: its source is inside the enclosing one
            obj = getattr(obj, part)
        source = inspect.getsource(obj)
    except (ImportError, AttributeError, OSError, TypeError) as e:
        return f"{path}:{function}: {e.__class__.__name__}: {e}"
    if text not in source:
        return f"{path}:{function} no longer contains {text!r}"
    return None
