"""Launching Triton and Gluon kernels without Triton's per-call dispatch, and compiling them ahead of time.

`kernel[grid](*args, **constexprs)` binds and specializes every argument and
looks its kernel up on each call; with the Gluon forward's TMA layouts rebuilt
each time that was most of the 160-290 µs of host time a launch cost on the
H200 (docs/tuning-gluon.md, entry 20), more than the GPU time of a GPT-2-sized
attention. `Launcher` goes through Triton's path once per key and then calls
the CompiledKernel it returned. The key holds all that Triton specializes on:
the device, the constexprs and launch options, and per runtime argument its
`spec_class` (a superset of what Triton's binder looks at; tests/kernels/
test_launch.py checks it against the binder). A caller that works a launch
out once per configuration (a launch plan) passes the plan as the key instead,
and builds its TMA descriptors without the dataclass checks
(`rebased`): the per-argument key of the pre-pass's 22 arguments cost ~9 µs
on the H200's host, the dataclass checks 2-3 µs a descriptor on our CPU
(docs/tuning-gluon.md, entry 45).
"""
import torch
import triton
from triton import knobs
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime import driver
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import create_function_from_signature


def spec_class(arg):
    """What Triton's specialization can see of one runtime argument: a tensor's dtype and 16-byte alignment, an
    int's width, whether it is 1 and whether it divides by 16, a tensor descriptor's type."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, (bool, float)) or arg is None:
        return type(arg)
    if isinstance(arg, int):
        return -2**31 <= arg < 2**31, arg == 1, arg % 16 == 0
    if isinstance(arg, tuple):  # e.g. a tensor's strides: Triton specializes each element
        return tuple(spec_class(a) for a in arg)
    # Host tensor descriptors (triton.tools's and Gluon's): typed by dtype, block and (Gluon) shared layout.
    return arg.base.dtype, tuple(arg.block_shape), getattr(arg, "layout", None), arg.padding


# Plans a Launcher remembers: a caller's plan caches evict (lru), so this table is cleared when full rather than
# keeping an entry per plan ever seen; an evicted plan costs one per-argument key again.
PLANNED_LIMIT = 1024


class Launcher:
    """Launches one kernel: Triton's JIT on the first call of a key (compile or disk cache), the compiled kernel
    directly after. Runtime arguments positionally, constexprs by name (declared after them), launch options.
    Under TRITON_INTERPRET=1, and while a launch hook is installed, every call goes through Triton's own path."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = {}  # per-argument key -> (CompiledKernel, constexpr values in signature order)
        self.planned = {}  # (device, plan) -> the same entry, at most PLANNED_LIMIT

    def __call__(self, grid, args, constexprs, options, plan=None):
        """plan: a hashable that fixes every argument's `spec_class`, the constexprs and the options (a caller's
        cached launch plan, with whatever of its tensors' alignment varies), looked up before the key built from
        every argument."""
        if isinstance(self.fn, InterpretedFunction) or launch_hooked():
            self.fn[grid](*args, **constexprs, **options)
            return
        device = driver.active.get_current_device()
        hit = None if plan is None else self.planned.get((device, plan))
        if hit is None:
            key = self.key(device, args, constexprs, options)
            hit = self.compiled.get(key)
            if hit is None:
                kernel = self.fn[grid](*args, **constexprs, **options)
                self.compiled[key] = (kernel, constexpr_tail(self.fn, args, constexprs))
                return
            if plan is not None:
                if len(self.planned) >= PLANNED_LIMIT:
                    self.planned.clear()
                self.planned[device, plan] = hit
        kernel, tail = hit
        # What CompiledKernel's own runner passes, without launch metadata or hooks (none are installed).
        kernel.run(*(*grid, 1, 1)[:3], driver.active.get_current_stream(device), kernel.function,
                   kernel.packed_metadata, None, None, None, *args, *tail)

    @staticmethod
    def key(device, args, constexprs, options):
        return (device, *constexprs.values(), *options.values(), *(spec_class(a) for a in args))


def rebased(desc, base):
    """A copy of host TensorDescriptor `desc` (triton.tools's or Gluon's) over `base`, a tensor of the dtype, shape
    and strides of desc.base (a launch plan's meta tensor), without the dataclass's checks, which desc passed:
    base must be 16-byte aligned, as tma_ready and fresh allocations keep it."""
    new = object.__new__(type(desc))
    new.__dict__.update(desc.__dict__)
    new.base = base
    return new


def launch_hooked() -> bool:
    """Whether a launch hook is installed (profilers install them): such launches go through Triton's own path.

    Triton 3.6 keeps the hooks in a HookChain that is never None; an empty chain means no hook."""
    return bool(knobs.runtime.launch_enter_hook.calls or knobs.runtime.launch_exit_hook.calls)


def constexpr_tail(fn, args, constexprs):
    """The constexpr values that follow `args` in fn's signature, in its order (a compiled kernel takes all)."""
    return [constexprs[name] for name in fn.arg_names[len(args):]]


def specialization(fn, args, constexprs, options, target):
    """Triton's (bound arguments, specialization) of a launch with `args` for `target`; its kernel cache key is
    built from the specialization."""
    binder = create_function_from_signature(fn.signature, fn.params, make_backend(target))
    return binder(*args, **constexprs, **options)[:2]


def compile_for(fn, args, constexprs, options, target):
    """Compile `fn` for `target` (no GPU needed) through the specialization a launch with `args` would get."""
    kwargs = dict(**constexprs, **options)
    backend = make_backend(target)
    bound, spec = specialization(fn, args, constexprs, options, target)
    opts, signature, constexpr_vals, attrs = fn._pack_args(backend, kwargs, bound, spec, kwargs)
    if fn.is_gluon():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    else:
        source = ASTSource
    return triton.compile(source(fn, signature, constexpr_vals, attrs), target=target, options=opts.__dict__)
