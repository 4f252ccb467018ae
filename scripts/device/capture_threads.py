"""Which work of another thread fails a CUDA graph capture, in each capture mode (GPU).

`tts.fast.graphs.capture` captures in CUDA's thread-local mode so that another thread of the
process using the GPU meanwhile does not fail it. This script measures what that buys: for
each capture mode ("global", "thread_local") and each kind of work a second thread does
during the captures (below), on the legacy default stream or on a side stream of its own,
it makes ``--captures`` small captures through `capture` and counts those that failed (and
the worker's own errors). Each successful capture is replayed and checked.

Worker kinds: ``none``; ``kernels`` (matrix products only); ``item`` (a product and a copy of
one value to the host, which waits for the worker's stream); ``stream_sync`` (a product and
that stream's synchronisation); ``device_sync`` (a product and ``torch.cuda.synchronize()``);
``malloc`` (a new allocation after ``torch.cuda.empty_cache()``: cudaFree and cudaMalloc).

    python3 scripts/device/capture_threads.py --json threads.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import warnings

import torch

from tts.fast import graphs

KINDS = ("none", "kernels", "item", "stream_sync", "device_sync", "malloc")


def _work(kind: str, x: torch.Tensor, n: int) -> None:
    """One iteration of the worker's ``kind`` of work (``n`` varies the allocation size)."""
    y = x @ x
    if kind == "item":
        float(y[0, 0])
    elif kind == "stream_sync":
        torch.cuda.current_stream().synchronize()
    elif kind == "device_sync":
        torch.cuda.synchronize()
    elif kind == "malloc":
        torch.cuda.empty_cache()
        torch.empty((1 << 20) + 4096 * (n % 64), device="cuda").fill_(1.0)


def _worker(kind: str, side_stream: bool, stop: threading.Event, errors: list) -> None:
    """Do ``kind`` of work until ``stop`` is set; errors go to ``errors``."""
    try:
        stream = torch.cuda.Stream() if side_stream else torch.cuda.default_stream()
        with torch.cuda.stream(stream):
            x = torch.randn(256, 256, device="cuda")
            n = 0
            while not stop.is_set():
                _work(kind, x, n)
                n += 1
                if kind == "kernels" and n % 64 == 0:
                    time.sleep(0.0005)  # let the queue drain a little, without a CUDA call
    except Exception as exc:  # noqa: BLE001 - counted in the report
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def trial(mode: str, kind: str, side_stream: bool, captures: int) -> dict:
    """``captures`` captures in ``mode`` while a worker does ``kind``; the counts."""
    saved_mode, graphs.CAPTURE_MODE = graphs.CAPTURE_MODE, mode
    stop, errors, failed, wrong = threading.Event(), [], [], 0
    worker = None
    if kind != "none":
        worker = threading.Thread(target=_worker, args=(kind, side_stream, stop, errors))
        worker.start()
        time.sleep(0.05)
    try:
        stream, x = torch.cuda.Stream(), torch.randn(64, 64, device="cuda")
        for i in range(captures):
            graph, out = torch.cuda.CUDAGraph(), []
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    graphs.capture(graph, lambda out=out, i=i: out.append(x * i + 1), stream=stream)
            except Exception as exc:  # noqa: BLE001 - counted in the report
                failed.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            graph.replay()
            wrong += not torch.equal(out[0], x * i + 1)
    finally:
        graphs.CAPTURE_MODE = saved_mode
        stop.set()
        if worker is not None:
            worker.join()
        torch.cuda.synchronize()
    return {
        "mode": mode,
        "worker": kind,
        "worker_stream": "side" if side_stream else "legacy default",
        "captures": captures,
        "failed": len(failed),
        "wrong_replays": wrong,
        "worker_errors": len(errors),
        "first_failure": failed[0] if failed else None,
        "first_worker_error": errors[0] if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=30)
    parser.add_argument("--json", default=None, help="write the rows here too")
    args = parser.parse_args()
    rows = []
    for mode in ("thread_local", "global"):
        for kind in KINDS:
            for side in (False, True) if kind != "none" else (False,):
                row = trial(mode, kind, side, args.captures)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
