"""Workaround for triton-lang/triton#9171 in Triton 3.6's CPU interpreter.

The interpreter converts a scalar tensor to a Python int with int(array) on a
one-element 1-d array, which NumPy >= 2.4 refuses, so any kernel loop with a
run-time bound fails under TRITON_INTERPRET=1. The upstream fix (triton#9172)
converts through .item(); this applies the same change. It only touches the
interpreter; compiled kernels are unaffected. Drop it once the pinned Triton
carries the fix.
"""
from triton.runtime import interpreter


def _install():
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_kernels_fixed", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor._kernels_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor


_install()
