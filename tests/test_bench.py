"""`tts bench` end to end on the CPU with the tiny config (speed numbers are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tts.bench import Variant, randomize_
from tts.cli import build_parser


def _device_script(name: str):
    """scripts/device/<name>.py imported as a module (its own name, not a package's)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "device" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_device_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_parse():
    assert Variant.parse("float32").name == "float32:float32:float32"
    assert Variant.parse("bfloat16:tf32").name == "bfloat16:tf32:tf32"
    assert Variant.parse("bfloat16:bfloat16:float32").vocoder == "float32"
    v = Variant.parse("bfloat16:bfloat16+compile:tf32@1,16")
    assert v.s2mel_compile and v.s2mel == "bfloat16" and v.batches == (1, 16)
    assert v.name == "bfloat16:bfloat16+compile:tf32"
    assert Variant.parse("float32@1#graph,graphc").decoders == ("graph", "graphc")
    assert Variant.parse("bfloat16:bfloat16").features == "float32"
    v = Variant.parse("bfloat16:bfloat16+compile:bfloat16:tf32@1#graphkk")
    assert (v.features, v.vocoder, v.batches, v.decoders) == (
        "tf32",
        "bfloat16",
        (1,),
        ("graphkk",),
    )
    assert v.name == "bfloat16:bfloat16+compile:bfloat16:tf32"
    assert Variant.parse("float32:float32:float32:float32").name == "float32:float32:float32"
    with pytest.raises(ValueError):
        Variant.parse("float32#fast")
    for bad in ("int8", "float32:half", "a:b:c:d", "", "float32@x", "float32:float32:float32:x"):
        with pytest.raises(ValueError):
            Variant.parse(bad)
    for bad in ("float32:float32:float32:float32:float32",):
        with pytest.raises(ValueError):
            Variant.parse(bad)


def test_randomize_is_deterministic_and_finite():
    from tts.models.bigvgan import BigVGAN

    def build():
        torch.manual_seed(0)
        return randomize_(
            BigVGAN(
                upsample_initial_channel=16,
                resblock_kernel_sizes=[3],
                resblock_dilation_sizes=[[1]],
            ),
            seed=5,
        )

    a, b = build().state_dict(), build().state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.isfinite(a[k]).all(), k
    # weight norm: the effective weight is v itself (g = ||v||)
    g, v = a["conv_pre.weight_g"], a["conv_pre.weight_v"]
    torch.testing.assert_close(g, torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))


def test_randomize_sets_every_norm_scale_to_one():
    """Norm scales are 1 whatever their name (an RMSNorm's ``gamma`` too: at 0, as before
    this test, the GPT's perceivers gave all-zero latents and emotion vectors on the benchmark
    set), so the random set's conditioning paths carry signal."""
    from tts.models.perceiver import PerceiverResampler

    torch.manual_seed(0)
    perceiver = randomize_(PerceiverResampler(32, dim_context=16, num_latents=2, heads=2), seed=3)
    assert torch.equal(perceiver.norm.gamma, torch.ones_like(perceiver.norm.gamma))
    with torch.no_grad():
        out = perceiver(torch.randn(1, 7, 16))
    assert out.abs().max() > 0.1


def test_bench_tiny_cpu(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    args = build_parser().parse_args(
        [
            "bench",
            "--tiny",
            "--device",
            "cpu",
            "--batch",
            "1,2",
            "--tokens",
            "3",
            "--text-tokens",
            "4",
            "--prompt-seconds",
            "1",
            "--diffusion-steps",
            "2",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--gpt-decoder",
            "graph,eager",
            "--precision",
            "float32",
            # The w2v-bert features at tf32: on the CPU, which has no TF32, float32's bits.
            "--precision",
            "float32:float32:float32:tf32@1#graph",
            "--write-checkpoints",
            str(tmp_path / "ckpt"),
            "--json",
            str(out),
        ]
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "ours (medians" in text and "RTF" in text
    data = json.loads(out.read_text())
    # The graph counters are reported (what other tests of this process counted included).
    assert "length-bucketed CUDA graphs (captures / replays): prefill " in text
    assert set(data["graphs"]) == {"prefill", "latent_pass", "conditioning"}
    results = data["results"]
    assert {(r["variant"], r["batch"], r["decoder"]) for r in results} == {
        ("float32:float32:float32", 1, "graph"),
        ("float32:float32:float32", 2, "graph"),
        ("float32:float32:float32", 1, "eager"),
        ("float32:float32:float32", 2, "eager"),
        ("float32:float32:float32:tf32", 1, "graph"),
    }
    for r in results:
        deviation = r["summary"].get("features_vs_float32")
        if r["variant"].endswith("tf32"):
            assert deviation == {"max_abs_diff": 0.0, "rel_l2": 0.0, "codes_equal": 1.0}
        else:
            assert deviation is None
    assert "w2v-bert features against float32" in text
    results = [r for r in results if not r["variant"].endswith("tf32")]
    for r in results:
        s = r["summary"]
        assert s["generated_tokens"] == 3  # the stop code is disabled: exactly --tokens
        assert s["all_finite"]
        assert s["audio_s_per_row"] > 0 and s["rtf"] > 0
        assert set(s["stages_median_s"]) >= {"spk_cond", "gpt_generate", "s2mel", "vocoder"}
        assert s["flops_per_row"]["s2mel"] > 0 and s["flops_per_row"]["vocoder"] > 0
        assert s["s2mel_tflops_per_s"] > 0 and s["vocoder_tflops_per_s"] > 0
    assert "TFLOP/s" in text
    assert all(r["summary"]["kv_cache_bytes"] > 0 for r in results)
    assert all("kv_cache_ms_per_token" in r["summary"] for r in results)  # NaN on the CPU
    assert "GPT per token: the floor (its weights) plus the KV cache" in text
    # The graph decoder's own host times are recorded per pass and printed on its line.
    for r in results:
        for run in r["runs"]:
            if r["decoder"] == "graph":
                assert run["decode_setup_s"] > 0 and run["decode_first_step_s"] > 0
            else:
                assert "decode_setup_s" not in run
    assert text.count("; decode loop ") == 3  # one line per pass of the graph decoder
    assert (tmp_path / "ckpt" / "gpt.pth").is_file()
    assert "(TINY)" in data["what"]


def test_decode_cache_bytes_equal_what_the_decode_steps_attend_over(monkeypatch):
    """decode_cache_bytes (the KV-cache share of a decode step's reads in `tts bench`) equals
    the keys and values the eager decoder's single-code steps hand to the attention, counted
    in a generation of 2 items x 2 beams, 7 codes, on the tiny configuration."""
    from tts.bench import bench_config, decode_cache_bytes, randomize_
    from tts.models.gpt import SPEAKER_LATENTS, KVCache, UnifiedVoice

    cfg, _, _ = bench_config(tiny=True)
    gpt = randomize_(UnifiedVoice.from_config(cfg["gpt"]), seed=5).eval()
    with torch.no_grad():
        gpt.mel_head.bias[gpt.stop_mel_token] = -1e4  # exactly max_mel_tokens codes
    read = {"bytes": 0, "steps": 0}
    write = KVCache.write

    def counting(self, layer, start, k, v):
        keys, values = write(self, layer, start, k, v)
        if k.size(2) == 1:  # a decode step (the prefill writes the whole prefix)
            read["bytes"] += (keys.numel() + values.numel()) * keys.element_size()
            read["steps"] += layer == 0
        return keys, values

    monkeypatch.setattr(KVCache, "write", counting)
    text = torch.randint(2, 200, (2, 5))
    with torch.no_grad():
        out, _ = gpt.inference_speech(
            torch.randn(2, 30, 1024),
            text,
            max_generate_length=7,
            num_beams=2,
            generator=torch.Generator().manual_seed(0),
        )
    assert out.codes.size(1) == 7 and read["steps"] == 6
    prefix = SPEAKER_LATENTS + 2 + text.size(1) + 2
    assert decode_cache_bytes(gpt, rows=4, prefix=prefix, tokens=7) == read["bytes"]


def test_render_flops_follow_steps_guidance_and_length():
    """render_flops counts every DiT call: twice the steps = twice the FLOPs, no guidance
    branch = half; the vocoder's count grows with its input and ignores the DiT's settings."""
    from tts.bench import bench_config, render_flops

    cfg, bigvgan, _ = bench_config(tiny=True)
    base = render_flops(cfg["s2mel"], bigvgan, 40, 20, steps=2, cfg_rate=0.7)
    assert render_flops(cfg["s2mel"], bigvgan, 40, 20, steps=4, cfg_rate=0.7)["s2mel"] == (
        2 * base["s2mel"]
    )
    single = render_flops(cfg["s2mel"], bigvgan, 40, 20, steps=2, cfg_rate=0.0)
    assert single["s2mel"] * 2 == base["s2mel"] and single["vocoder"] == base["vocoder"]
    longer = render_flops(cfg["s2mel"], bigvgan, 80, 40, steps=2, cfg_rate=0.7)
    assert longer["s2mel"] > 2 * base["s2mel"]  # attention grows with the square
    assert 1.9 * base["vocoder"] < longer["vocoder"] < 2.1 * base["vocoder"]


def test_kernel_rows_group_cuda_kernels_by_name():
    """scripts/device/'s kernel tables: CUDA events only, grouped by their names' first
    ``width`` characters, counted and summed, longest first."""
    from types import SimpleNamespace

    from tts.bench import kernel_rows

    def event(name, device, us):
        return SimpleNamespace(name=name, device_type=SimpleNamespace(name=device), device_time=us)

    events = [
        event("gemm_kernel_a", "CUDA", 5.0),
        event("aten::mm", "CPU", 100.0),
        event("gemm_kernel_b", "CUDA", 7.0),
        event("add", "CUDA", 1.5),
        event("add", "CUDA", 2.5),
    ]
    prof = SimpleNamespace(events=lambda: events)
    assert kernel_rows(prof) == [
        {"kernel": "gemm_kernel_b", "count": 1, "us": 7.0},
        {"kernel": "gemm_kernel_a", "count": 1, "us": 5.0},
        {"kernel": "add", "count": 2, "us": 4.0},
    ]
    assert kernel_rows(prof, width=4) == [
        {"kernel": "gemm", "count": 2, "us": 12.0},
        {"kernel": "add", "count": 2, "us": 4.0},
    ]


def test_bench_refuses_half_on_cpu(tmp_path):
    args = build_parser().parse_args(
        [
            "bench",
            "--tiny",
            "--device",
            "cpu",
            "--precision",
            "bfloat16",
            "--json",
            str(tmp_path / "x.json"),
        ]
    )
    with pytest.raises(ValueError, match="need CUDA"):
        args.func(args)


def test_cudnn_ab_script_runs_on_cpu(tmp_path, monkeypatch):
    """scripts/device/cudnn_ab.py (the GPU measurement of cuDNN's two modes) runs: tiny set,
    CPU, one round; both modes measured, every stage timed, cuDNN left deterministic."""
    torch.set_num_threads(1)
    script = _device_script("cudnn_ab")
    for name in ("benchmark", "deterministic", "enabled", "allow_tf32"):
        monkeypatch.setattr(torch.backends.cudnn, name, getattr(torch.backends.cudnn, name))
    out = tmp_path / "cudnn.json"
    assert (
        script.main(
            [
                "--tiny",
                "--device",
                "cpu",
                "--batch",
                "1",
                "--tokens",
                "3",
                "--text-tokens",
                "4",
                "--prompt-seconds",
                "1",
                "--diffusion-steps",
                "2",
                "--repeats",
                "1",
                "--rounds",
                "1",
                "--precision",
                "float32",
                "--write-checkpoints",
                str(tmp_path / "ckpt"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    medians = json.loads(out.read_text())["medians_s"]
    assert set(medians) == {"deterministic@1", "benchmark@1"}
    for stages in medians.values():
        assert stages["total"] > 0 and stages["gpt_generate"] > 0 and stages["vocoder"] > 0
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_loop_trace_script_runs_on_cpu(tmp_path):
    """scripts/device/loop_trace.py (the GPU comparison of the benchmark's decode loop with
    decode_profile's stepping) runs: tiny set, CPU; every measurement but the CUDA trace is
    there, the driver saw the benchmark's prompt, and the decoder is unwrapped afterwards."""
    from tts.fast import decode as fast_decode

    torch.set_num_threads(1)
    plain = fast_decode.generate
    script = _device_script("loop_trace")
    out = tmp_path / "trace.json"
    assert (
        script.main(
            [
                "--tiny",
                "--device",
                "cpu",
                "--batch",
                "1",
                "--tokens",
                "3",
                "--text-tokens",
                "4",
                "--prompt-seconds",
                "1",
                "--diffusion-steps",
                "2",
                "--repeats",
                "1",
                "--precision",
                "float32",
                "--gpt-decoder",
                "graphfi",
                "--buckets",
                "8",
                "--write-checkpoints",
                str(tmp_path / "ckpt"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    for key in ("bench", "bucket_8", "driver"):
        assert report[key]["loop_ms_per_step"] > 0, key
    assert report["driver"]["prefix"][0] == 1 and report["driver"]["prefix"][1] > 4
    assert report["trace"] == {}  # the profiler trace needs CUDA
    assert fast_decode.generate is plain


def _run_device_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """``scripts/device/<name>`` with ``args`` in a new Python with Triton's CPU interpreter
    (:func:`_run_device_scripts`); it must exit 0."""
    return _run_device_scripts(name, args)[0]


def _run_device_scripts(name: str, *arg_lists) -> list[subprocess.CompletedProcess]:
    """``scripts/device/<name>`` once per list of ``arg_lists``, all at the same time (the
    interpreter keeps one core busy), each in a new Python with Triton's CPU interpreter (set
    before Triton is imported), run as its ``__main__`` after tests/triton_interpreter.py's
    install; each must exit 0."""
    pytest.importorskip("triton")
    from triton_interpreter import run_all

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "device" / name
    run = (
        "import os, runpy, sys\n"
        "sys.argv[0] = sys.argv.pop(1)\n"
        "sys.path[0] = os.path.dirname(sys.argv[0])\n"  # as `python script`: its folder first
        "import triton_interpreter\n"
        "triton_interpreter.install()\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(root / "tests"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    cmds = [[sys.executable, "-c", run, str(script), *args] for args in arg_lists]
    done = run_all(cmds, env, 600)
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
    return done


def test_linear_bench_script_runs_interpreted(tmp_path):
    """scripts/device/linear_bench.py (the GPU measurement of the decode step's projections,
    the layer stack and its attention variants) runs every code path once on the CPU through
    Triton's interpreter (tiny width, one layer, 3 rows, another linear.py for the A/B),
    so a GPU call does not find its mistakes."""
    out = tmp_path / "linear.json"
    other = str(Path(__file__).resolve().parents[1] / "tts" / "fast" / "linear.py")
    args = ["--device", "cpu", "--tiny", "--rows", "3", "--other", other, "--json", str(out)]
    _run_device_script("linear_bench.py", *args)
    rows = json.loads(out.read_text())["rows"]
    stack = rows["3"]["stack"]
    for name in ("read_ahead", "c16", "grouped", "shared", "shared_grouped"):
        assert f"ours_attention_pdl_{name}_ms" in stack, sorted(stack)
    assert "other_linear_attention_pdl_read_ahead_ms" in stack
    assert rows["3"]["pdl_equal"] is True


def test_linear_bench_once_runs_interpreted(tmp_path):
    """``linear_bench.py --once`` (what scripts/device/kernel_counters.py runs under Nsight
    Compute) runs the stack with the attention for each row count without timing anything."""
    args = ["--device", "cpu", "--tiny", "--once", "--rows", "1,3"]
    done = _run_device_script("linear_bench.py", *args)
    assert "rows 1: one pass of 1 layers" in done.stdout
    assert "rows 3: one pass of 1 layers" in done.stdout
    assert "stack of" not in done.stdout  # nothing timed


def _ncu_csv(kc, layers: int, drop: int | None = None) -> str:
    """Text in the layout of ``ncu --csv --page raw --print-units base``: a tool message, the
    header, the units line, then one line per kernel (``layers`` layers of the stack; the
    kernel at index ``drop`` left out), for ``kc`` (the kernel_counters module). Kernel j of
    layer i takes 1000 * (j + 1) + 10 * i ns."""
    head = ["ID", "Process ID", "Kernel Name", "gpu__time_duration.sum"]
    head += ["launch__registers_per_thread", "dram__bytes_read.sum"]
    stalls = ["long_scoreboard", "barrier", "wait", "math_pipe_throttle", "no_instruction"]
    head += [f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio" for r in stalls]
    units = ["", "", "", "nsecond", "register/thread", "byte"] + ["ratio"] * len(stalls)
    lines = ["==PROF== Connected to process 1234", ",".join(f'"{h}"' for h in head)]
    lines.append(",".join(f'"{u}"' for u in units))
    n = 0
    for i in range(layers):
        for j, (_, kernel) in enumerate(kc.LAYER):
            if drop is not None and i * len(kc.LAYER) + j == drop:
                continue
            cells = [str(n), "1234", f"{kernel}(int)", f"{1000 * (j + 1) + 10 * i:,}"]
            cells += ["128", "9830400"] + [str(float(k + j)) for k in range(len(stalls))]
            lines.append(",".join(f'"{c}"' for c in cells))
            n += 1
    return "\n".join(lines) + "\n"


@pytest.fixture
def kernel_counters():
    """scripts/device/kernel_counters.py imported as a module."""
    return _device_script("kernel_counters")


def test_kernel_counters_labels_and_summarizes_ncu_csv(kernel_counters):
    """kernel_counters.py reads ncu's raw CSV (tool messages before it, a units line, numbers
    with thousands separators), labels each kernel by its place in the layer, and gives per
    label the median over the layers in microseconds and megabytes and the largest stalls."""
    kernels, units = kernel_counters.read_csv(_ncu_csv(kernel_counters, 3))
    assert len(kernels) == 24 and units["gpu__time_duration.sum"] == "nsecond"
    summary = kernel_counters.summarize(kernels, units)
    assert summary["layer_order_found"] is True
    rows = summary["kernels"]
    assert list(rows) == [name for name, _ in kernel_counters.LAYER]
    # qkv is place 1: 2000 + 10 * layer ns, median over layers 0-2 = 2010 ns
    assert rows["qkv"]["count"] == 3 and rows["qkv"]["us"] == pytest.approx(2.010)
    assert rows["proj"]["us"] == pytest.approx(8.010)
    assert rows["fc"]["dram_read_mb"] == pytest.approx(9.8304)
    assert rows["ln_1"]["registers"] == 128
    # stall k of kernel j is k + j: the four largest are the last four reasons, in order
    assert list(rows["out"]["stalls"]) == [
        "no_instruction",
        "math_pipe_throttle",
        "wait",
        "barrier",
    ]
    assert rows["out"]["stalls"]["no_instruction"] == pytest.approx(4 + 4)


def test_kernel_counters_keeps_names_when_the_layer_order_is_not_found(kernel_counters):
    """A profile that is not whole layers in the expected order (here one kernel missing) is
    not labelled by place: each kernel keeps its own name, and the summary says so."""
    kernels, units = kernel_counters.read_csv(_ncu_csv(kernel_counters, 2, drop=5))
    summary = kernel_counters.summarize(kernels, units)
    assert summary["layer_order_found"] is False
    assert set(summary["kernels"]) == {
        "_norm_kernel",
        "_linear_kernel",
        "_partial_kernel",
        "_combine_kernel",
    }
    assert summary["kernels"]["_norm_kernel"]["count"] == 3
    with pytest.raises(ValueError, match="no ncu CSV header"):
        kernel_counters.read_csv("==PROF== nothing profiled\n")


def test_kernel_counters_command_profiles_one_marked_pass(kernel_counters, tmp_path):
    """The ncu command leaves the clocks alone, records only the NVTX range that
    ``linear_bench.py --once`` marks, and can drop the named metrics (the retry when this ncu
    does not know one of them)."""
    log = tmp_path / "c.csv"
    cmd = kernel_counters.command("ncu", 3, 6, "bfloat16", log)
    assert cmd[cmd.index("--clock-control") + 1] == "none"
    assert cmd[cmd.index("--nvtx-include") + 1] == "measure/"
    assert cmd[cmd.index("--log-file") + 1] == str(log)
    assert cmd[-7:] == ["--once", "--rows", "3", "--layers", "6", "--dtype", "bfloat16"]
    assert cmd[-8].endswith("linear_bench.py")
    assert "--metrics" in cmd
    assert "--metrics" not in kernel_counters.command("ncu", 3, 6, "bfloat16", log, False)


def test_kernel_counters_retries_without_the_metrics_an_ncu_does_not_know(
    kernel_counters, tmp_path, monkeypatch
):
    """kernel_counters.py end to end with a stand-in for ncu that fails whenever metrics are
    named and otherwise writes a profile to its --log-file: the run is retried without them,
    the JSON says which options the kept run used, and the summary comes from its CSV."""
    import stat
    import sys

    profile = tmp_path / "profile.csv"
    profile.write_text(_ncu_csv(kernel_counters, 2))
    fake = tmp_path / "ncu"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        "args = sys.argv[1:]\n"
        "if '--metrics' in args:\n"
        "    sys.exit(1)\n"
        f"shutil.copy({str(profile)!r}, args[args.index('--log-file') + 1])\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "counters.json"
    argv = ["kernel_counters.py", "--ncu", str(fake), "--rows", "1,3"]
    argv += ["--raw", str(tmp_path / "raw"), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    kernel_counters.main()
    result = json.loads(out.read_text())["rows"]
    assert set(result) == {"1", "3"}
    assert result["3"]["metrics_named"] is False and result["3"]["nvtx_range"] is True
    assert result["3"]["kernels"]["fc"]["count"] == 2
    assert (tmp_path / "raw" / "counters_rows3.csv").is_file()


def test_barrier_bench_script_runs_interpreted(tmp_path):
    """scripts/device/barrier_bench.py runs its kernel-per-phase form on the CPU through Triton's
    interpreter, and each phase finds the stamps the phase before it wrote (the check that
    must also read 0 errors on the GPU)."""
    out = tmp_path / "barrier.json"
    args = ["--device", "cpu", "--programs", "3,5", "--warps", "1", "--phases", "4"]
    _run_device_script("barrier_bench.py", *args, "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["programs"], r["plain_errors"]) for r in rows] == [(3, 0), (5, 0)]


def test_persistent_bench_script_runs_interpreted(tmp_path):
    """scripts/device/persistent_bench.py's persistent stack kernel, each phase launched on its
    own through Triton's interpreter (tiny width, 2 layers), equals the tts.fast.linear chain
    (float32 within 1e-4, bf16 within its rounding bound; the script raises otherwise), at 1
    and 3 rows and two program counts."""
    dtypes = ("float32", "bfloat16")
    args = ["--device", "cpu", "--rows", "1,3", "--configs", "1x4,2x2"]
    _run_device_scripts(
        "persistent_bench.py",
        *([*args, "--dtype", d, "--json", str(tmp_path / f"persistent_{d}.json")] for d in dtypes),
    )
    for dtype in dtypes:
        rows = json.loads((tmp_path / f"persistent_{dtype}.json").read_text())["rows"]
        for r in ("1", "3"):
            assert sorted(k for k in rows[r] if k.endswith("_maxdiff")) == [
                "persistent_3x4_maxdiff",
                "persistent_6x2_maxdiff",
            ]
            assert not any(k.endswith("_failed") for k in rows[r])


def test_pass_timeline_charges_idle_time_to_the_host_stage():
    """pass_timeline.idle_report on a made-up trace: kernels overlapping in time count once,
    an idle gap is charged to the stage the host was in when it began, and the longest gap
    names the host's innermost operator then."""
    script = _device_script("pass_timeline")

    def mark(t, name):
        return {"name": script.MARK + name, "ph": "X", "ts": t, "dur": 0, "cat": "user_annotation"}

    events = [
        mark(0, "begin"),
        {"cat": "cuda_runtime", "ts": 5, "dur": 1, "args": {"correlation": 1}},
        {"cat": "kernel", "ts": 10, "dur": 40, "args": {"correlation": 1}},
        {"cat": "kernel", "ts": 30, "dur": 30},  # overlaps the first: busy 10-60
        {"cat": "gpu_memcpy", "ts": 100, "dur": 50},  # idle 60-100 (spk), busy 100-150
        mark(120, "spk"),
        {"cat": "cpu_op", "name": "outer", "ts": 140, "dur": 200},
        {"cat": "cpu_op", "name": "inner", "ts": 150, "dur": 50},
        {"cat": "cuda_driver", "ts": 160, "dur": 1, "args": {"correlation": 2}},
        # idle 150-400, begins in gpt, at "inner"; launched in gpt
        {"cat": "kernel", "ts": 400, "dur": 100, "args": {"correlation": 2}},
        mark(500, "gpt"),
    ]
    rec = script.idle_report(events, min_gap_us=1.0)
    assert rec["span_ms"] == 0.5 and rec["busy_ms"] == 0.2
    assert abs(rec["idle_ms"] - 0.3) < 1e-12
    assert rec["idle_ms_by_host_stage"] == {"spk": 0.05, "gpt": 0.25}
    assert rec["host_stage_ms"] == {"spk": 0.12, "gpt": 0.38}
    assert rec["gpu_ms_by_launching_stage"] == pytest.approx(
        {"spk": 0.04, "gpt": 0.1, "(unknown launch)": 0.08}
    )
    first = rec["longest_gaps"][0]
    assert first["ms"] == 0.25 and first["stage"] == "gpt" and first["host"] == "inner"


def test_pass_timeline_script_runs_on_cpu(tmp_path):
    """scripts/device/pass_timeline.py (the GPU's idle time in a whole benchmark pass) runs:
    tiny set, CPU; with no GPU events the whole pass is idle time, charged to the stages."""
    torch.set_num_threads(1)
    script = _device_script("pass_timeline")
    out = tmp_path / "timeline.json"
    argv = ["--tiny", "--device", "cpu", "--batch", "1", "--tokens", "3", "--text-tokens", "4"]
    argv += ["--prompt-seconds", "1", "--diffusion-steps", "2", "--precision", "float32"]
    argv += ["--gpt-decoder", "graphkk", "--passes", "1", "--json", str(out)]
    argv += ["--write-checkpoints", str(tmp_path / "ckpt")]
    assert script.main(argv) == 0
    rec = json.loads(out.read_text())["passes"][0]
    assert rec["busy_ms"] == 0 and rec["span_ms"] > 0
    assert set(rec["host_stage_ms"]) == {
        "spk_cond",
        "emo_cond",
        "gpt_generate",
        "gpt_latent",
        "s2mel",
        "vocoder",
        "post",
    }
    assert abs(sum(rec["idle_ms_by_host_stage"].values()) - rec["span_ms"]) < 1e-6


def test_compile_repro_script_runs_on_cpu(tmp_path):
    """scripts/device/compile_repro.py (whether the compiled DiT repeats its bits) runs its
    processes and compares them: tiny DiT, CPU, uncompiled, so every comparison must find the
    same bits (the inputs are seeded by batch size, not by the process); and its comparison
    does see a difference."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "repro.json"
    cmd = [
        sys.executable,
        str(root / "scripts" / "device" / "compile_repro.py"),
        *("--tiny", "--device", "cpu", "--no-compile", "--frames", "30", "--batches", "2,1"),
        *("--modes", "0,0,1", "--work", str(tmp_path / "work"), "--json", str(out), "--locate"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, check=False, cwd=root, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert sorted(result["runs"]) == ["run0_det0", "run1_det0", "run2_det1"]
    assert [result["runs"][r]["deterministic"] for r in sorted(result["runs"])] == [
        False,
        False,
        True,
    ]
    assert len(result["compared"]) == 4  # b1, b2: run0 vs run1, run0 vs run2
    for runs in result["runs"].values():
        assert runs["b1_first_difference"] is None and runs["b2_first_difference"] is None
        for batch in ("b1", "b2"):
            assert runs[batch]["run_to_run"]["identical"]
            assert runs[batch]["instance_to_instance"]["identical"]
            assert runs[batch]["calls_equal_uncompiled"] == [True] * 3
    assert all(diff["identical"] for diff in result["compared"].values())

    repro = _device_script("compile_repro")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    torch.save(torch.zeros(3), a / "b1.pt")
    torch.save(torch.tensor([0.0, 0.5, 0.0]), b / "b1.pt")
    assert repro.compare([str(a), str(b)]) == {"b1 a vs b": {"identical": False, "max_abs": 0.5}}
    # The locator names the first submodule whose output changes from call to call.
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 3))
    x = torch.randn(4, 3)
    found = repro.locate(net.train(), lambda: net(x), 3)
    assert found == {"call": 1, "module": "1", "type": "Dropout", "inputs_same": True}
    assert repro.locate(net.eval(), lambda: net(x), 3) is None


def test_cond_profile_script_runs_on_cpu(tmp_path):
    """scripts/device/cond_profile.py (where the prompt conditioning's time goes, and the
    w2v-bert precisions against each other) runs: tiny set, CPU, one repeat. The CPU has no
    TF32, so its tf32 features are float32's."""
    from tts.bench import write_random_set

    torch.set_num_threads(1)
    write_random_set(tmp_path / "ckpt", tiny=True, seed=0, device="cpu")
    script = _device_script("cond_profile")
    out = tmp_path / "cond.json"
    argv = ["--checkpoints", str(tmp_path / "ckpt"), "--device", "cpu", "--dtype", "float32"]
    argv += ["--seconds", "1", "--repeats", "1", "--rows", "3", "--json", str(out)]
    assert script.main(argv) == 0
    result = json.loads(out.read_text())
    found = result["features_precisions"]
    assert set(found) == {
        f"{kind}.{p}"
        for kind in ("w2v_bert.batch", "conditioning", "rel_l2", "kernels", "kernel_busy_ms")
        for p in ("float32", "tf32")
    }
    assert found["rel_l2.float32"] == found["rel_l2.tf32"] == 0.0
    assert found["conditioning.tf32"] > 0 and result["spk_cond_ms"] > 0


def test_features_precision_estimate_script_runs(tmp_path):
    """scripts/features_precision_estimate.py (the CPU's estimate of each features
    precision's effect, behind tests/test_gpu.py's bounds) runs on one layer and 20 frames,
    and each emulated precision moves the features, by less than bf16 for TF32 and fp16."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "features_precision_estimate.py"
    spec = importlib.util.spec_from_file_location("features_precision_estimate", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.set_num_threads(1)
    out = tmp_path / "est.json"
    assert script.main(["--layers", "1", "--frames", "20", "--json", str(out)]) == 0
    found = json.loads(out.read_text())
    assert len(found) == 4 and all(r["rel_l2"] > 0 for r in found.values())
    worst = found["bfloat16"]["rel_l2"]
    assert all(r["rel_l2"] < worst for name, r in found.items() if name != "bfloat16")
