"""Make Triton's CPU interpreter skip work it repeats, for the tests that run kernels through it.

Triton 3.6's interpreter patches ``triton.language`` (every builtin of the language, its
tensor class and its math module, found by ``inspect.getmembers``) at the start of each kernel
launch and restores it at the end. It also patches the language modules that a ``@triton.jit``
helper sees (``tl``, or ``triton.language.core`` for Triton's own helpers such as ``tl.zeros``)
at every call of the helper from inside the launch, and never restores those: the launch's own
restore undoes them. In the interpreted decoder tests that repeat was ~40% of the time (one
helper call per program instance and helper, tens of thousands of calls). :func:`install`
patches each language module once per launch and skips the repeats; every kernel and helper
still runs through the interpreter's language, so the results are the same.

It also turns off the interpreter's integer overflow checks (``sanitize_overflow``: every
32-bit add, subtract and multiply recomputed in 64 bits and compared with the type's range),
as Triton compiles kernels for the GPU without them outside its debug mode. They change no
value: an interpreted beam-sampling decoder call (3 items x 3 beams, 10 steps, the Triton
logits processors) took 79 s without them against 161 s with them (under cProfile, on a
2-core CPU, 2026-12-07). The tests' small shapes could not overflow 32 bits anyway.
"""

from __future__ import annotations


class _NothingToRestore:
    """The scope of a skipped repeat: it changed nothing, so it restores nothing."""

    def restore(self) -> None:
        pass


def install() -> bool:
    """Skip the interpreter's repeated patching of ``triton.language`` inside a kernel launch.
    Returns False (and changes nothing) where Triton has no such private hook to wrap."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    _no_overflow_checks(interpreter)
    patch = getattr(interpreter, "_patch_lang", None)
    if patch is None or getattr(patch, "skips_repeats", False):
        return patch is not None
    patched: list[set[int]] = []  # per launch in progress: ids of the modules it patched

    lang_ids = (id(interpreter.tl), id(interpreter.tl.core))

    def languages(fn) -> set[int]:
        """The language modules ``_patch_lang`` patches for ``fn``: those in its globals now
        (not cached: the interpreter's rewrite of a helper can add ``tl`` to them)."""
        ids = set(map(id, fn.__globals__.values()))
        return {i for i in lang_ids if i in ids}

    class _LaunchScope:
        """A launch's patch: restoring it ends the launch."""

        def __init__(self, scope) -> None:
            self.scope = scope

        def restore(self) -> None:
            patched.pop()
            self.scope.restore()

    def patch_once(fn):
        wanted = languages(fn)
        if not patched:  # a kernel launch: restored when it ends
            patched.append(set(wanted))  # a copy: helpers add to it
            return _LaunchScope(patch(fn))
        if not wanted <= patched[-1]:  # a helper that sees a module not patched yet
            patched[-1] |= wanted
            patch(fn)
        return _NothingToRestore()

    patch_once.skips_repeats = True
    interpreter._patch_lang = patch_once
    return True


def _no_overflow_checks(interpreter) -> None:
    """The interpreter's kernels without integer overflow checks, as compiled kernels run."""
    import dataclasses

    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if getattr(options, "sanitize_overflow", False):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)


def run_all(cmds: list[list[str]], env: dict, timeout: int, cwd=None) -> list:
    """Run ``cmds`` at the same time (the interpreter keeps one core busy each) and return
    their ``subprocess.CompletedProcess`` results in order; any still running after
    ``timeout`` seconds, or when one wait fails, is killed. Output goes to files, not pipes:
    a process that filled a pipe nobody reads yet would stop until its turn came."""
    import contextlib
    import subprocess
    import tempfile

    def read_back(file) -> str:
        file.seek(0)
        return file.read()

    with contextlib.ExitStack() as files:
        logs = [[files.enter_context(tempfile.TemporaryFile("w+")) for _ in "oe"] for _ in cmds]
        procs = [
            subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
            for cmd, (out, err) in zip(cmds, logs, strict=True)
        ]
        try:
            for proc in procs:
                proc.wait(timeout=timeout)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return [
            subprocess.CompletedProcess(cmd, proc.returncode, *map(read_back, log))
            for cmd, proc, log in zip(cmds, procs, logs, strict=True)
        ]
