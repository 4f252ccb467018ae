"""`tts bench` end to end on the CPU with the tiny config (speed numbers are not checked)."""

from __future__ import annotations

import json

import pytest
import torch

from tts.bench import Variant, randomize_
from tts.cli import build_parser


def test_variant_parse():
    assert Variant.parse("float32").name == "float32:float32:float32"
    assert Variant.parse("bfloat16:tf32").name == "bfloat16:tf32:tf32"
    assert Variant.parse("bfloat16:bfloat16:float32").vocoder == "float32"
    v = Variant.parse("bfloat16:bfloat16+compile:tf32@1,16")
    assert v.s2mel_compile and v.s2mel == "bfloat16" and v.batches == (1, 16)
    assert v.name == "bfloat16:bfloat16+compile:tf32"
    assert Variant.parse("float32@1#graph,graphc").decoders == ("graph", "graphc")
    with pytest.raises(ValueError):
        Variant.parse("float32#fast")
    for bad in ("int8", "float32:half", "a:b:c:d", "", "float32@x"):
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
    results = data["results"]
    assert {(r["batch"], r["decoder"]) for r in results} == {
        (1, "graph"),
        (2, "graph"),
        (1, "eager"),
        (2, "eager"),
    }
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
    assert text.count("; decode loop ") == 2
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
    import importlib.util
    from pathlib import Path

    torch.set_num_threads(1)
    path = Path(__file__).resolve().parents[1] / "scripts" / "device" / "cudnn_ab.py"
    spec = importlib.util.spec_from_file_location("cudnn_ab", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
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
    import importlib.util
    from pathlib import Path

    from tts.fast import decode as fast_decode

    torch.set_num_threads(1)
    plain = fast_decode.generate
    path = Path(__file__).resolve().parents[1] / "scripts" / "device" / "loop_trace.py"
    spec = importlib.util.spec_from_file_location("loop_trace", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
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


def test_linear_bench_script_runs_interpreted(tmp_path):
    """scripts/device/linear_bench.py (the GPU measurement of the decode step's projections,
    the layer stack and its attention variants) runs every code path once on the CPU through
    Triton's interpreter (tiny width, one layer, 3 rows, another linear.py for the A/B),
    so a GPU call does not find its mistakes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "linear.json"
    cmd = [
        sys.executable,
        str(root / "scripts" / "device" / "linear_bench.py"),
        "--device",
        "cpu",
        "--tiny",
        "--rows",
        "3",
        "--other",
        str(root / "tts" / "fast" / "linear.py"),
        "--json",
        str(out),
    ]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    stack = rows["3"]["stack"]
    for name in ("read_ahead", "c16", "grouped", "shared", "shared_grouped"):
        assert f"ours_attention_pdl_{name}_ms" in stack, sorted(stack)
    assert "other_linear_attention_pdl_read_ahead_ms" in stack
    assert rows["3"]["pdl_equal"] is True


def test_barrier_bench_script_runs_interpreted(tmp_path):
    """scripts/device/barrier_bench.py runs its kernel-per-phase form on the CPU through Triton's
    interpreter, and each phase finds the stamps the phase before it wrote (the check that
    must also read 0 errors on the GPU)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "barrier.json"
    cmd = [sys.executable, str(root / "scripts" / "device" / "barrier_bench.py"), "--device"]
    cmd += ["cpu", "--programs", "3,5", "--warps", "1", "--phases", "4", "--json", str(out)]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["programs"], r["plain_errors"]) for r in rows] == [(3, 0), (5, 0)]


def test_persistent_bench_script_runs_interpreted(tmp_path):
    """scripts/device/persistent_bench.py's persistent stack kernel, each phase launched on its
    own through Triton's interpreter (tiny width, 2 layers), equals the tts.fast.linear chain
    (float32 within 1e-4, bf16 within its rounding bound; the script raises otherwise), at 1
    and 3 rows and two program counts."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"persistent_{dtype}.json"
        cmd = [sys.executable, str(root / "scripts" / "device" / "persistent_bench.py")]
        cmd += ["--device", "cpu", "--rows", "1,3", "--configs", "1x4,2x2", "--dtype", dtype]
        cmd += ["--json", str(out)]
        env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = json.loads(out.read_text())["rows"]
        for r in ("1", "3"):
            assert sorted(k for k in rows[r] if k.endswith("_maxdiff")) == [
                "persistent_3x4_maxdiff",
                "persistent_6x2_maxdiff",
            ]
            assert not any(k.endswith("_failed") for k in rows[r])
