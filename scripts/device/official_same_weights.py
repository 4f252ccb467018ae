#!/usr/bin/env python3
"""Time the official IndexTTS2 path on the very weights `tts bench` times ours on.

The official-speed harness (``official_bench.py`` of ``../shared/bench/official``, copied into
``.bench/official`` by ``scripts/device/prepare.sh``) builds every official module with random
weights of its own. This script runs that harness unchanged, but first wraps the constructors
it calls so that each module is loaded, right after it is built, from a checkpoint set written
by ``tts.bench.write_random_set`` (``tts bench --write-checkpoints DIR``), the way
``IndexTTS2.__init__`` loads a real set - except that every load is ``strict=True``. Classes keep
their identity (a hook runs at the end of their ``__init__``); functions are swapped in their
modules. Nothing of the harness or of the official code is copied or edited:

======================  ================================================================
harness construction     loaded from the set
======================  ================================================================
UnifiedVoice             ``cfg.gpt_checkpoint`` (gpt.pth)
Wav2Vec2BertConfig       ``w2v-bert-2.0/config.json``
Wav2Vec2BertModel        ``w2v-bert-2.0/model.safetensors``
SeamlessM4TFeature...    ``w2v-bert-2.0/preprocessor_config.json``
w2v-bert mean / std      ``cfg.w2v_stat`` (mean, sqrt(var)), copied into the harness's tensors
build_semantic_codec     ``semantic_codec/model.safetensors``
MyModel (s2mel)          ``cfg.s2mel_checkpoint`` ``{"net": {part: state}}``, every part
CAMPPlus                 ``campplus_cn_common.bin``
BigVGAN                  ``bigvgan/config.json`` + ``bigvgan/bigvgan_generator.pt``
                         ``{"generator": ...}`` before ``remove_weight_norm`` (as from_pretrained)
config                   ``--config <set>/config.yaml`` (also for ``--tiny``: the harness's own
                         shrinking is switched off, the set's sizes are used)
======================  ================================================================

The emotion matrices (``feat1.pt``/``feat2.pt``) take part in neither timed path (the emotion
comes from the prompt audio). The inputs are the harness's (prompt tone, seed, text ids), which
``tts bench`` reproduces. Every other argument goes to the harness unchanged; the harness's JSON
(``--out``) gets a ``same_weights`` entry listing what was loaded from where.

Usage (the harness's packages first on the path, as scripts/device/run_gpu.sh does)::

    python3 scripts/device/official_same_weights.py --site /tmp/site_official \\
        --weights /tmp/bench_ckpt --fp16 --num-beams 3 --tokens 500 --out official.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where tts.bench.write_random_set puts the auxiliary models (the flat layout).
AUX = {
    "semantic_codec": "semantic_codec/model.safetensors",
    "campplus": "campplus_cn_common.bin",
    "bigvgan_config": "bigvgan/config.json",
    "bigvgan": "bigvgan/bigvgan_generator.pt",
    "w2v_bert": "w2v-bert-2.0",
}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--weights",
        required=True,
        type=Path,
        help="checkpoint set written by tts bench (write_random_set)",
    )
    p.add_argument(
        "--harness",
        type=Path,
        default=ROOT / ".bench" / "official",
        help="folder with official_bench.py and ref/ (default .bench/official)",
    )
    p.add_argument(
        "--site",
        type=Path,
        help="folder of the harness's packages (transformers 4.52.1, ...), put first "
        "on sys.path (or give it first on PYTHONPATH)",
    )
    return p.parse_known_args(argv)


def load_harness(folder: Path, site: Path | None):
    """Import official_bench.py from ``folder`` with ``folder/ref`` (the official sources)."""
    if site is not None:
        if "transformers" in sys.modules:
            sys.exit("--site must take effect before transformers is imported")
        sys.path.insert(0, str(site))
    ref = folder / "ref"
    if not (ref / "indextts").is_dir():
        sys.exit(f"{ref}/indextts missing: run scripts/device/prepare.sh")
    sys.path.insert(1 if site is not None else 0, str(ref))
    spec = importlib.util.spec_from_file_location("official_bench", folder / "official_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["official_bench"] = module
    spec.loader.exec_module(module)
    return module


def after_init(cls: type, hook) -> None:
    """Run ``hook(instance)`` at the end of ``cls.__init__`` (for ``cls`` itself, not for its
    subclasses). The class stays the same object: the official classes call
    ``super(ClassName, self)``, which a replacement of the module's name would break."""
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if type(self) is cls:
            hook(self)

    cls.__init__ = __init__


class SameWeights:
    """Wraps the harness's construction points; records what each load matched."""

    def __init__(self, root: Path):
        from omegaconf import OmegaConf

        self.root = root
        self.cfg = OmegaConf.load(root / "config.yaml")
        self.loaded: dict[str, dict] = {}

    def _record(self, name: str, rel: str, n: int, result) -> None:
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        ok = not missing and not unexpected  # strict=True raised otherwise
        self.loaded[name] = {"file": rel, "tensors": n, "all_keys_matched": ok}
        print(
            f">> same weights: {name:16s} {n:5d} tensors from {rel}: "
            f"{'All keys matched' if ok else result}",
            flush=True,
        )

    def _strict(self, name: str, module, state: dict, rel: str) -> None:
        self._record(name, rel, len(state), module.load_state_dict(state, strict=True))

    def _torch_load(self, rel: str):
        import torch

        return torch.load(self.root / rel, map_location="cpu", weights_only=True)

    def install(self, harness) -> None:
        """Patch the names official_bench.main imports (it imports them inside main)."""
        import indextts.codec.maskgct_codec as codec_mod
        import indextts.gpt.model_v2 as gpt_mod
        import indextts.s2mel.modules.bigvgan.bigvgan as bigvgan_mod
        import indextts.s2mel.modules.campplus.DTDNN as campplus_mod
        import indextts.s2mel.modules.commons as commons_mod
        import transformers

        cfg, w2v_dir = self.cfg, self.root / AUX["w2v_bert"]

        def gpt(model):
            state = self._torch_load(cfg.gpt_checkpoint)
            state = state.get("model", state)  # as indextts.utils.checkpoint.load_checkpoint
            self._strict("gpt", model, state, cfg.gpt_checkpoint)
            stop = int(cfg.gpt.stop_mel_token)
            self.loaded["gpt"]["stop_bias_in_set"] = model.mel_head.bias.detach()[stop].item()

        after_init(gpt_mod.UnifiedVoice, gpt)

        orig_w2v_cfg = transformers.Wav2Vec2BertConfig
        orig_w2v = transformers.Wav2Vec2BertModel
        orig_fe = transformers.SeamlessM4TFeatureExtractor

        def w2v_config(**kwargs):
            if kwargs:
                print(f">> same weights: ignoring the harness's w2v-bert sizes {kwargs}")
            return orig_w2v_cfg.from_pretrained(str(w2v_dir))

        def w2v_model(config, *args, **kwargs):
            from safetensors.torch import load_file

            model = orig_w2v(config, *args, **kwargs)
            rel = f"{AUX['w2v_bert']}/model.safetensors"
            self._strict("w2v_bert", model, load_file(str(self.root / rel)), rel)
            return model

        def feature_extractor(**kwargs):
            fe = orig_fe.from_pretrained(str(w2v_dir), local_files_only=True)
            differ = {
                k: (v, getattr(fe, k, None)) for k, v in kwargs.items() if getattr(fe, k, None) != v
            }
            print(
                f">> same weights: feature extractor from {AUX['w2v_bert']}/"
                f"preprocessor_config.json (harness arguments that differ: {differ or 'none'})"
            )
            self.loaded["feature_extractor"] = {
                "file": f"{AUX['w2v_bert']}/preprocessor_config.json",
                "differs": str(differ),
            }
            return fe

        transformers.Wav2Vec2BertConfig = w2v_config
        transformers.Wav2Vec2BertModel = w2v_model
        transformers.SeamlessM4TFeatureExtractor = feature_extractor

        orig_codec = codec_mod.build_semantic_codec

        def build_semantic_codec(*args, **kwargs):
            from safetensors.torch import load_file

            # The harness draws the w2v-bert mean/std just before this call, as locals of main:
            # overwrite their values in place with the set's (IndexTTS2: mean, sqrt(var)).
            self._stats_into(sys._getframe(1))
            model = orig_codec(*args, **kwargs)
            rel = AUX["semantic_codec"]
            self._strict("semantic_codec", model, load_file(str(self.root / rel)), rel)
            return model

        codec_mod.build_semantic_codec = build_semantic_codec

        def s2mel(model):
            rel = cfg.s2mel_checkpoint
            net = self._torch_load(rel)["net"]
            if set(net) != set(model.models):
                raise RuntimeError(
                    f"s2mel parts: set {sorted(net)} vs model {sorted(model.models)}"
                )
            for part in model.models:  # as load_checkpoint2, per part, but strict
                self._strict(f"s2mel.{part}", model.models[part], net[part], f"{rel} [{part}]")

        after_init(commons_mod.MyModel, s2mel)

        def campplus(model):
            rel = AUX["campplus"]
            self._strict("campplus", model, self._torch_load(rel), rel)

        after_init(campplus_mod.CAMPPlus, campplus)

        orig_hparams = bigvgan_mod.load_hparams_from_json

        def load_hparams_from_json(path):
            self.loaded["bigvgan_config"] = {"file": AUX["bigvgan_config"], "instead_of": path}
            return orig_hparams(str(self.root / AUX["bigvgan_config"]))

        def bigvgan(model):
            rel = AUX["bigvgan"]
            self._strict("bigvgan", model, self._torch_load(rel)["generator"], rel)

        bigvgan_mod.load_hparams_from_json = load_hparams_from_json
        after_init(bigvgan_mod.BigVGAN, bigvgan)

        def keep_set_sizes(*_args):
            print(
                ">> same weights: --tiny keeps the set's (tiny) sizes; the harness's own "
                "shrinking is off"
            )

        harness.shrink_config = keep_set_sizes

    def _stats_into(self, frame) -> None:
        import torch

        names = frame.f_locals
        if "semantic_mean" not in names or "semantic_std" not in names:
            raise RuntimeError(
                "official_bench.main no longer holds semantic_mean/semantic_std "
                "where this script expects them: update _stats_into"
            )
        stats = self._torch_load(self.cfg.w2v_stat)
        mean, std = names["semantic_mean"], names["semantic_std"]
        with torch.no_grad():
            mean.copy_(stats["mean"].to(mean))
            std.copy_(torch.sqrt(stats["var"]).to(std))
        self.loaded["w2v_stats"] = {
            "file": self.cfg.w2v_stat,
            "tensors": 2,
            "all_keys_matched": set(stats) == {"mean", "var"},
        }
        print(
            f">> same weights: {'w2v_stats':16s}     2 tensors from {self.cfg.w2v_stat}: "
            "mean, sqrt(var) copied into the harness's semantic_mean / semantic_std",
            flush=True,
        )

    def check(self, hargs) -> list[str]:
        """Problems: a construction point never reached, or a setting that differs."""
        want = [
            "gpt",
            "w2v_bert",
            "w2v_stats",
            "semantic_codec",
            "campplus",
            "bigvgan",
            "feature_extractor",
            "bigvgan_config",
        ]
        problems = [
            f"{n} was not loaded from the set (the harness changed?)"
            for n in want
            if n not in self.loaded
        ]
        if not any(k.startswith("s2mel.") for k in self.loaded):
            problems.append("s2mel was not loaded from the set (the harness changed?)")
        problems += [
            f"{n}: keys differ"
            for n, v in self.loaded.items()
            if v.get("all_keys_matched") is False
        ]
        in_set = self.loaded.get("gpt", {}).get("stop_bias_in_set")
        if in_set is not None and in_set != hargs.stop_bias:
            problems.append(
                f"stop bias: set {in_set}, harness --stop-bias {hargs.stop_bias} "
                "(give --stop-bias to match)"
            )
        layer = self.cfg.get("w2v_bert_layer")
        if layer is not None:
            w2v_cfg = json.loads((self.root / AUX["w2v_bert"] / "config.json").read_text())
            harness_layer = min(17, int(w2v_cfg["num_hidden_layers"]))
            if int(layer) != harness_layer:
                problems.append(f"w2v-bert layer: set {layer}, harness {harness_layer}")
        return problems


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    root = args.weights.resolve()
    if not (root / "config.yaml").is_file():
        sys.exit(f"{root}/config.yaml missing: write the set with tts bench first")
    if "--config" not in rest:
        rest += ["--config", str(root / "config.yaml")]
    harness = load_harness(args.harness.resolve(), args.site)
    hargs = harness.parse_args(rest)
    import transformers

    if not transformers.__version__.startswith("4.52.") and not hargs.no_version_check:
        sys.exit(
            f"transformers {transformers.__version__} ({transformers.__file__}): the official "
            "code needs 4.52.x; give --site with the harness's packages (prepare.sh bundle)"
        )
    same = SameWeights(root)
    same.install(harness)
    print(f">> official harness {args.harness / 'official_bench.py'} on the set {root}", flush=True)
    result = harness.main(rest)
    problems = same.check(hargs)
    summary = {"weights": str(root), "loaded": same.loaded, "problems": problems}
    if hargs.out and result is not None:
        result["same_weights"] = summary
        Path(hargs.out).write_text(json.dumps(result, indent=1, default=str))
    if problems:
        print(">> same weights: PROBLEMS\n   " + "\n   ".join(problems))
        return 1
    parts = sorted(same.loaded)
    print(f">> same weights: every official module matched the set strictly ({', '.join(parts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
