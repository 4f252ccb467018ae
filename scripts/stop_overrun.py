"""How many steps past its last row's stop code a graph decode call runs (issue 8; CPU only).

The CUDA-graph decoder of :mod:`tts.fast.decode` learns that every row has finished from
snapshots of its flags that the host reads late (:meth:`StaticDecoder._checkpoint`), so a call
runs some steps after the last row finished; those steps change no result, only cost time.
This script runs the decoder's own rule (its ``_checkpoint`` and ``_queue``) on a stand-in
decoder whose GPU is never ahead of the host (each snapshot is read only when the rule makes
the host wait for it), for a call whose last row finishes at each step from 1 to ``--last``
in turn, and prints the mean and largest overrun: with every window's graph captured (a kept
decoder, ``graphkk``), with none captured (a new decoder, e.g. ``graphke``), and for the rule
before 2026-12-06 (a synchronous test every 32 steps).

    python3 scripts/stop_overrun.py [--prompt 96] [--bucket 64] [--steps 500] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tts.fast.decode import DEFAULT_CHECK_EVERY, StaticDecoder  # noqa: E402

OLD_CHECK_EVERY = 32  # the synchronous test's interval before 2026-12-06


class _Unread:
    """A snapshot the GPU has not reached: never ready; waited for, it tells whether the last
    row had finished by its step."""

    def __init__(self, step: int, finished_by: int):
        self.step, self._done = step, step >= finished_by

    def ready(self) -> bool:
        return False

    def finished(self) -> bool:
        return self._done


class _Decoder:
    """The part of a graph decoder that its "all finished?" rule reads, with the decoder's own
    methods for that rule; a capture only marks its window captured."""

    _window_index = StaticDecoder._window_index
    _queue = StaticDecoder._queue
    _checkpoint = StaticDecoder._checkpoint

    def __init__(self, prompt: int, bucket: int, steps: int, kept: bool, finished_by: int):
        self.s_len, self.bucket, self.max_new = prompt, bucket, steps
        self.use_graph = self.ahead = True
        self.cur, self.check_every = 0, DEFAULT_CHECK_EVERY
        windows = range(self._window_index(steps) + 1) if kept else ()
        self.graphs = {(w, 0): None for w in windows}
        self.finished_by = finished_by
        self._capture_ahead(0, self.check_every + 1)  # step 0's window and the first check's

    def _capture_ahead(self, step: int, steps: int) -> None:
        for s in range(step, min(step + steps, self.max_new)):
            self.graphs[(self._window_index(s), 0)] = None

    def _snapshot(self, step: int) -> _Unread:
        return _Unread(step, self.finished_by)


def steps_run(dec: _Decoder) -> int:
    """The steps a call runs under the decoder's rule (the loop of StaticDecoder.run)."""
    pending: list = []
    step = 0
    while True:
        step += 1
        if step >= dec.max_new or dec._checkpoint(step, dec.check_every, pending):
            return step


def old_steps_run(finished_by: int, steps: int) -> int:
    """The steps a call ran under the synchronous test every OLD_CHECK_EVERY steps."""
    step = -(-finished_by // OLD_CHECK_EVERY) * OLD_CHECK_EVERY
    return min(max(step, OLD_CHECK_EVERY), steps)


def overruns(prompt: int, bucket: int, steps: int, last: int) -> dict:
    """Mean and largest overrun (steps run minus the last row's finishing step) by rule."""
    rows = {"kept": [], "new": [], "before": []}
    for f in range(1, last + 1):
        rows["kept"].append(steps_run(_Decoder(prompt, bucket, steps, True, f)) - f)
        rows["new"].append(steps_run(_Decoder(prompt, bucket, steps, False, f)) - f)
        rows["before"].append(old_steps_run(f, steps) - f)
    return {k: {"mean": statistics.fmean(v), "max": max(v)} for k, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompt", type=int, default=96, help="prompt positions (cache)")
    p.add_argument("--bucket", type=int, default=64, help="cache-window bucket")
    p.add_argument("--steps", type=int, default=500, help="max_mel_tokens")
    p.add_argument("--last", type=int, default=459, help="latest finishing step simulated")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = overruns(args.prompt, args.bucket, args.steps, args.last)
    for rule, r in result.items():
        print(f"{rule:6s}: {r['mean']:.2f} steps past the stop on average, at most {r['max']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
