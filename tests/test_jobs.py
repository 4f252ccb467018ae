"""tts.jobs: the texts table, row specs, batch planning, fingerprints, and the bad-input corpus."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tts import jobs, table
from tts.checkpoints import merge_config

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
CONFIG_SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TEXTS_SCHEMA = REPO / "workflow" / "schemas" / "texts.schema.yaml"


def _base_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))


def _validate_config(cfg: dict) -> None:
    from snakemake.utils import validate

    validate(cfg, str(CONFIG_SCHEMA))


# ---------------------------------------------------------------------------------------------
# The corpus of bad inputs
# ---------------------------------------------------------------------------------------------


def test_corpus_is_big_enough():
    assert len(CASES) >= 40
    assert {c["kind"] for c in CASES} == {"table", "row", "config"}
    listed = {c["file"] for c in CASES}
    on_disk = {f"{p.parent.name}/{p.name}" for p in CORPUS.glob("*/*.tsv")}
    on_disk |= {f"configs/{p.name}" for p in (CORPUS / "configs").glob("*.yaml")}
    assert on_disk <= listed, f"corpus files without an expected error: {on_disk - listed}"


@pytest.mark.parametrize("case", CASES, ids=[Path(c["file"]).stem for c in CASES])
def test_bad_input(case):
    path = CORPUS / case["file"]
    if case["kind"] == "table":
        with pytest.raises(table.TableError) as err:
            table.read_table(path)
        assert case["error"] in str(err.value)
        assert str(path) in str(err.value)  # the message names the file
    elif case["kind"] == "row":
        parsed = table.read_table(path)
        by_id = {r.id: r for r in parsed.rows}
        bad = by_id.pop(case["row"])
        assert bad.error is not None and case["error"] in bad.error, bad.error
        assert all(r.ok for r in by_id.values()), [(r.id, r.error) for r in by_id.values()]
    else:
        from snakemake.exceptions import WorkflowError

        cfg = merge_config(_base_config(), yaml.safe_load(path.read_text(encoding="utf-8")))
        with pytest.raises(WorkflowError) as err:
            _validate_config(cfg)
        assert case["error"] in str(err.value) + str(err.value.__cause__ or "")


# ---------------------------------------------------------------------------------------------
# Good tables
# ---------------------------------------------------------------------------------------------


def test_example_table_is_valid():
    parsed = table.read_table(REPO / "config" / "texts.tsv")
    assert len(parsed.rows) >= 3
    assert all(r.ok for r in parsed.rows), [(r.id, r.error) for r in parsed.rows]
    happy = {r.id: r for r in parsed.rows}["happy_news"]
    assert happy.spec["emo_vector"] == [0.8, 0, 0, 0, 0, 0, 0, 0.2]
    assert happy.spec["emo_alpha"] == 0.9


def test_example_config_is_valid():
    cfg = _base_config()
    _validate_config(cfg)
    assert cfg["scoring"]["thresholds"]["max_wer"] == 0.5


def test_texts_schema_accepts_example_and_rejects_unknown_column():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    frame, _ = table.read_frame(REPO / "config" / "texts.tsv")
    validate(frame, str(TEXTS_SCHEMA), set_default=False)
    frame["voice"] = "x"
    with pytest.raises(WorkflowError):
        validate(frame, str(TEXTS_SCHEMA), set_default=False)


def test_relative_speaker_is_resolved_against_the_table_folder(tmp_path, monkeypatch):
    (tmp_path / "sub" / "voices").mkdir(parents=True)
    shutil.copy(REPO / "config/speakers/flite_slt_female.wav", tmp_path / "sub/voices/v.wav")
    tsv = tmp_path / "sub" / "t.tsv"
    tsv.write_text("id\ttext\tspeaker\na\tHello.\tvoices/v.wav\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    row = table.read_table(tsv).rows[0]
    assert row.ok, row.error
    assert row.spec["speaker"] == os.path.join("sub", "voices", "v.wav")  # relative to the cwd


def test_quotes_bom_blank_lines_and_short_rows(tmp_path):
    speaker = REPO / "config/speakers/flite_slt_female.wav"
    tsv = tmp_path / "t.tsv"
    tsv.write_text(
        "\ufeffid\ttext\tspeaker\tseed\n\n"
        f'q\tHe said "hi" -- twice.\t{speaker}\n'  # short row: seed missing
        f"s\t  Spaces around.  \t{speaker}\t7\n",
        encoding="utf-8",
    )
    rows = table.read_table(tsv).rows
    assert [r.id for r in rows] == ["q", "s"]
    assert [r.line for r in rows] == [3, 4]
    assert rows[0].spec["text"] == 'He said "hi" -- twice.'
    assert rows[1].spec["text"] == "Spaces around."
    assert rows[1].spec["seed"] == 7 and rows[0].spec["seed"] is None


def test_sampling_defaults_and_row_overrides():
    parsed = table.read_table(CORPUS / "tables" / "row_top_p_zero.tsv", {"top_p": 0.8, "top_k": 30})
    good = {r.id: r for r in parsed.rows}["good"]
    assert good.spec["sampling"] == {"top_k": 30, "top_p": 0.8}
    assert table.parse_sampling_value("num_beams", "3") == 3
    assert table.parse_sampling_value("do_sample", "False") is False


def test_emotion_text_modes(tmp_path):
    speaker = REPO / "config/speakers/flite_slt_female.wav"
    tsv = tmp_path / "t.tsv"
    tsv.write_text(
        "id\ttext\tspeaker\tuse_emo_text\temo_text\n"
        f"a\tHello.\t{speaker}\ttrue\t\n"
        f"b\tHello.\t{speaker}\t\tI am so angry!\n"
        f"c\tHello.\t{speaker}\tfalse\t\n",
        encoding="utf-8",
    )
    specs = {r.id: r.spec for r in table.read_table(tsv).rows}
    assert specs["a"]["emo_text"] == ""  # use the row's own text
    assert specs["b"]["emo_text"] == "I am so angry!"
    assert specs["c"]["emo_text"] is None


def test_schema_sampling_limits_match_the_table_reader():
    schema = yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))
    props = schema["properties"]["sampling"]["properties"]
    assert set(props) == set(table.SAMPLING_COLUMNS)
    for name, (kind, lo, hi, _) in table.SAMPLING_COLUMNS.items():
        if kind is bool:
            assert props[name]["type"] == "boolean"
            continue
        low = props[name].get("minimum", props[name].get("exclusiveMinimum"))
        assert (low, props[name]["maximum"]) == (lo, hi), name
        assert ("exclusiveMinimum" in props[name]) == (name in table._EXCLUSIVE_LOW), name
    table_schema = yaml.safe_load(TEXTS_SCHEMA.read_text(encoding="utf-8"))
    assert set(table_schema["properties"]) == set(table.COLUMNS)
    assert table_schema["properties"]["id"]["pattern"] == table.ID_PATTERN.pattern


def test_schema_decoder_names_match_the_decoder_variants():
    """The schema lists every decoder variant; the workflow's default (schema, config.yaml)
    and `tts synth`'s, processes that make one GPT call, is ONE_CALL_DECODER."""
    from tts.fast.decode import VARIANTS
    from tts.pipeline import DEFAULT_DECODER, ONE_CALL_DECODER

    schema = yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))
    prop = schema["properties"]["gpt_decoder"]
    assert set(prop["enum"]) == set(VARIANTS)
    assert ONE_CALL_DECODER in VARIANTS and DEFAULT_DECODER in VARIANTS
    assert prop["default"] == ONE_CALL_DECODER
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    assert config["gpt_decoder"] == ONE_CALL_DECODER
    from tts.cli import build_parser

    synth = build_parser().parse_args(
        ["synth", "--text", "x", "--speaker", "s.wav", "--out", "o.wav", "--checkpoints", "ck"]
    )
    assert synth.gpt_decoder == ONE_CALL_DECODER


def test_workflow_engine_defaults_to_the_workflow_decoder(tmp_path):
    """A job's Engine gets ONE_CALL_DECODER when the config has no gpt_decoder key, and the
    configured one otherwise."""
    from tts.demo import write_demo_checkpoints
    from tts.jobs import open_engine
    from tts.pipeline import ONE_CALL_DECODER

    root = write_demo_checkpoints(tmp_path / "ckpt", seed=1)
    config = {"checkpoints": str(root), "device": "cpu", "compile_cache": None}
    assert open_engine(config).gpt_decoder == ONE_CALL_DECODER
    assert open_engine({**config, "gpt_decoder": "graphkt"}).gpt_decoder == "graphkt"


def test_request_from_spec_round_trip():
    row = table.read_table(REPO / "config" / "texts.tsv", {"top_k": 5}).rows[2]
    req = table.request_from_spec(row.spec)
    assert req.id == row.id and req.emo_vector == row.spec["emo_vector"]
    assert req.sampling_options()["top_k"] == 5


# ---------------------------------------------------------------------------------------------
# Files and batches
# ---------------------------------------------------------------------------------------------


def test_write_if_changed_keeps_mtime(tmp_path):
    p = tmp_path / "spec.json"
    assert jobs.write_if_changed(p, {"a": 1})
    old = p.stat().st_mtime_ns
    time.sleep(0.02)
    assert not jobs.write_if_changed(p, {"a": 1})
    assert p.stat().st_mtime_ns == old
    assert jobs.write_if_changed(p, {"a": 2})
    assert not list(tmp_path.glob(".*.tmp"))


def test_plan_batches_never_reforms_started_batches():
    ids = [f"r{i}" for i in range(7)]
    plan = jobs.plan_batches(ids, {}, lambda b: False, 3)
    assert sorted(len(m) for m in plan.values()) == [1, 3, 3]
    # Same rows, nothing started: the same plan again (names are deterministic).
    assert jobs.plan_batches(ids, plan, lambda b: False, 3) == plan
    # All started; two rows added (one in the middle of the table): only a new batch appears.
    sealed = set(plan)
    more = ids[:3] + ["new1"] + ids[3:] + ["new2"]
    plan2 = jobs.plan_batches(more, plan, lambda b: b in sealed, 3)
    assert {k: v for k, v in plan2.items() if k in plan} == plan
    assert [v for k, v in plan2.items() if k not in plan] == [["new1", "new2"]]
    # A row removed from a started batch keeps the batch intact (nothing reruns).
    plan3 = jobs.plan_batches([i for i in more if i != "r1"], plan2, lambda b: b in plan2, 3)
    assert plan3 == plan2
    # A batch that never started is re-formed together with new rows.
    half = {k for k in plan if "r0" in plan[k]}
    plan4 = jobs.plan_batches(ids + ["x"], plan, lambda b: b in half, 3)
    assert sorted(sum(plan4.values(), [])) == sorted(ids + ["x"])
    assert all(plan4[k] == plan[k] for k in half)


def test_speaker_groups_keep_started_groups(tmp_path):
    """Prompt files are conditioned in groups of batch_size per job; a started group (its folder
    exists) keeps its members, so new speakers form new groups and nothing else reruns."""
    res = str(tmp_path)
    spk = {f"k{i}": f"/v/{i}.wav" for i in range(5)}
    groups = jobs.plan_speaker_groups(res, spk, 2)
    assert [list(m) for m in groups.values()] == [["k0", "k1"], ["k2", "k3"], ["k4"]]
    assert all(g.startswith("s") and len(g) == 13 for g in groups)
    assert jobs.plan_speaker_groups(res, spk, 2) == groups  # same input, same plan
    started = list(groups)[:2]
    for g in started:
        Path(jobs.speaker_group_dir(res, g)).mkdir()
    # k1 is no longer used, k5 and k6 are new: the started groups stay as they were.
    fewer = {k: v for k, v in spk.items() if k != "k1"} | {"k5": "/v/5.wav", "k6": "/v/6.wav"}
    again = jobs.plan_speaker_groups(res, fewer, 2)
    assert {g: again[g] for g in started} == {g: groups[g] for g in started}
    assert again[started[0]]["k1"] == "/v/1.wav"  # kept with its path
    assert [list(m) for g, m in again.items() if g not in started] == [["k4", "k5"], ["k6"]]


def test_speaker_group_job_fails_a_bad_file_alone(tmp_path):
    """One job conditions every prompt of its group; a broken file fails its own speaker only,
    and the group folder appears whole (no temporary folder left)."""
    from tts.demo import write_demo_checkpoints

    root = write_demo_checkpoints(tmp_path / "ckpt", seed=1)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    speakers = {
        "good": str(REPO / "config/speakers/flite_slt_female.wav"),
        "bad": str(bad),
        "gone": str(tmp_path / "deleted.wav"),
    }
    out = tmp_path / "speakers" / "s000000000001"
    cfg = {"checkpoints": str(root), "device": "cpu"}
    jobs.run_speakers(cfg, speakers, str(out))
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    status = {k: jobs.read_json(out / f"{k}.json") for k in speakers}
    assert status["good"]["ok"] and status["good"]["seconds"] > 0
    for key in ("bad", "gone"):
        assert not status[key]["ok"] and speakers[key] in status[key]["error"], status[key]
    specs, speaker = jobs._batch_inputs([], [str(out)])
    tensors, error = speaker("good")
    assert error is None and tensors["spk_cond_emb"].shape[-1] == 1024
    assert speaker("bad")[0] is None and "bad.wav" in speaker("bad")[1]
    assert speaker("unknown")[0] is None


def test_checkpoint_fingerprint_caches_hashes(tmp_path, monkeypatch):
    from tts import checkpoints

    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "config.yaml").write_text("gpt: {}\n")
    (root / "gpt.pth").write_bytes(b"weights-1")
    calls = []
    real = checkpoints.sha256
    monkeypatch.setattr(checkpoints, "sha256", lambda p: calls.append(p) or real(p))
    cache = tmp_path / "cache.json"
    fp1 = jobs.checkpoint_fingerprint(root, cache)
    assert "s2mel" in fp1["missing"] and fp1["files"]["gpt"]["sha256"]
    n = len(calls)
    fp2 = jobs.checkpoint_fingerprint(root, cache)
    assert len(calls) == n and fp2["hash"] == fp1["hash"]  # nothing re-hashed
    os.utime(root / "gpt.pth")  # touched, same content: re-hashed, same fingerprint
    assert jobs.checkpoint_fingerprint(root, cache)["hash"] == fp1["hash"]
    (root / "gpt.pth").write_bytes(b"weights-2")
    assert jobs.checkpoint_fingerprint(root, cache)["hash"] != fp1["hash"]


def test_prepare_writes_specs_only_when_changed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = _base_config()
    cfg["checkpoints"] = str(tmp_path / "no-checkpoints")
    _validate_config(cfg)
    plan = jobs.prepare(cfg)
    assert len(plan.batches) == 1 and plan.fingerprint["missing"]
    spec = tmp_path / "results/specs/weather.json"
    old = spec.stat().st_mtime_ns
    time.sleep(0.02)
    tsv = tmp_path / "config/texts.tsv"
    tsv.write_text(tsv.read_text().replace("lovely", "rainy"), encoding="utf-8")
    plan = jobs.prepare(cfg)
    assert spec.stat().st_mtime_ns > old
    assert (tmp_path / "results/specs/welcome.json").stat().st_mtime_ns < spec.stat().st_mtime_ns
    planned = {key for group in plan.speaker_groups.values() for key in group}
    assert planned == {plan.specs[r]["speaker_key"] for r in plan.specs}


def test_emotion_audio_files_join_the_speaker_groups_of_new_batches_only(tmp_path, monkeypatch):
    """A batch planned now has its rows' emotion audio files conditioned by the speaker jobs
    (in the speaker groups, and the folders its emotion job reads); a batch sealed under a plan
    that did not record this (an earlier version's) keeps the inputs it ran with, and stays
    so when the plan is written again."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "config", tmp_path / "config")
    tsv = tmp_path / "config/texts.tsv"
    lines = tsv.read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") + [""] * (6 - len(line.split("\t"))) for line in lines]
    edited = ["\t".join([*rows[0], "emo_audio"])]
    shutil.copy(tmp_path / "config/speakers/flite_slt_female.wav", tmp_path / "config/mood.wav")
    edited += ["\t".join([*r, "mood.wav" if i == 1 else ""]) for i, r in enumerate(rows[1:], 1)]
    tsv.write_text("\n".join(edited) + "\n", encoding="utf-8")
    cfg = {**_base_config(), "checkpoints": str(tmp_path / "no-checkpoints")}
    plan = jobs.prepare(cfg)
    (batch,) = plan.batches
    emo = plan.specs["welcome"]["emo_audio"]
    key = table.file_key(emo)
    assert batch in plan.emotion_prompt_batches
    groups = {g for g, members in plan.speaker_groups.items() if key in members}
    assert len(groups) == 1 and plan.batch_emotion_prompt_dirs(batch) == [
        jobs.speaker_group_dir(plan.results, groups.pop())
    ]
    # The same batch sealed under an earlier version's plan (no emotion_prompt_batches).
    plan_path = tmp_path / "results/batches/plan.json"
    jobs.write_json(plan_path, {"batches": plan.batches})
    shutil.rmtree(tmp_path / "results/speakers")
    (tmp_path / "results/batches" / batch).mkdir(parents=True)
    jobs.write_json(tmp_path / f"results/batches/{batch}/emotion.json", {"rows": {}})
    for _ in range(2):
        old = jobs.prepare(cfg)
        assert list(old.batches) == [batch] and old.emotion_prompt_batches == set()
        assert old.batch_emotion_prompt_dirs(batch) == []
        assert key not in {k for members in old.speaker_groups.values() for k in members}


def test_print_summary_lists_failed_rows(tmp_path):
    import io

    metrics = tmp_path / "metrics.tsv"
    metrics.write_text(
        "id\tstatus\terror\tverdict\na\tok\t\tpass\nb\tfailed\ttext is empty\tfail\n"
    )
    out = io.StringIO()
    jobs.print_summary(metrics, out=out)
    assert "2 row(s): 1 ok (1 pass the thresholds), 1 failed" in out.getvalue()
    assert "FAILED b: text is empty" in out.getvalue()


def test_engine_call_splits_batches_on_out_of_memory():
    import torch

    from tts.pipeline import RowResult

    calls = []

    def stage(requests, values):
        calls.append([r.id for r in requests])
        if len(requests) > 1 or requests[0].id == "huge":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [
            RowResult(r.id, value={"x": torch.tensor(v)})
            for r, v in zip(requests, values, strict=True)
        ]

    reqs = [
        table.request_from_spec({"id": i, "text": "t", "speaker": "s.wav"})
        for i in ("a", "b", "huge", "c")
    ]
    out = jobs._engine_call(stage, reqs, [1, 2, 3, 4])
    assert [r.id for r in out] == ["a", "b", "huge", "c"]
    assert [r.ok for r in out] == [True, True, False, True]
    assert "out of GPU memory" in out[2].error
    assert calls[0] == ["a", "b", "huge", "c"]


def test_engine_call_turns_a_crash_into_row_errors():
    reqs = [table.request_from_spec({"id": i, "text": "t", "speaker": "s.wav"}) for i in "ab"]

    def stage(requests):
        raise RuntimeError("kernel exploded\nsecond line")

    out = jobs._engine_call(stage, reqs)
    assert [r.error for r in out] == ["RuntimeError: kernel exploded"] * 2


def test_stale_locks_of_a_dead_run_are_cleared(tmp_path):
    import socket
    import subprocess
    import sys

    state = tmp_path / ".snakemake"
    (state / "locks").mkdir(parents=True)
    lock = state / "locks" / "0.input.lock"
    lock.write_text("x")
    jobs.record_run(state)  # this (live) process holds the locks
    assert not jobs.clear_stale_locks(state) and lock.exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    jobs.write_json(
        state / jobs.RUN_RECORD,
        {"pid": int(dead.stdout), "host": socket.gethostname(), "start": "1"},
    )
    assert jobs.clear_stale_locks(state) and not lock.exists()
    assert not (state / jobs.RUN_RECORD).exists()
    lock.write_text("x")  # a run on another machine is never touched
    jobs.write_json(state / jobs.RUN_RECORD, {"pid": 1, "host": "elsewhere", "start": "1"})
    assert not jobs.clear_stale_locks(state) and lock.exists()


def test_text_stage_plans_each_row_and_fails_a_bad_one_alone(tmp_path):
    """The CPU text stage writes each row's front-end plan (what the GPU stage consumes) and
    fails only the row whose text the front-end rejects."""
    import json

    from tts.checkpoints import CheckpointSet
    from tts.demo import write_demo_checkpoints
    from tts.text.frontend import TextFrontend, TextPlan

    root = write_demo_checkpoints(tmp_path / "ckpt", seed=1)
    texts = {"a": "Hello world.", "b": "   ", "c": "A second, longer row of text."}
    specs = []
    for rid, text in texts.items():
        path = tmp_path / f"{rid}.json"
        path.write_text(
            json.dumps(
                {
                    "id": rid,
                    "text": text,
                    "speaker": "x.wav",
                    "sampling": {"max_text_tokens_per_segment": 8},
                }
            )
        )
        specs.append(str(path))
    out = tmp_path / "text.json"
    jobs.run_text({"checkpoints": str(root)}, specs, str(out))
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert rows["a"]["ok"] and rows["c"]["ok"]
    assert not rows["b"]["ok"] and rows["b"]["plan"] is None
    assert rows["b"]["error"].startswith("text: ") and "text is empty" in rows["b"]["error"]
    frontend = TextFrontend.for_checkpoints(CheckpointSet.open(root), 8)
    for rid in ("a", "c"):
        assert TextPlan.from_dict(rows[rid]["plan"]) == frontend.process(texts[rid])
        assert rows[rid]["timings"]["text"] >= 0
    assert len(rows["c"]["plan"]["segment_ids"]) > 1  # the row's own segment length was used


@pytest.mark.parametrize("setting", ["render_precision", "features_precision"])
def test_precisions_are_checked_and_need_cuda(setting):
    import torch

    from tts.cli import PRECISIONS as CLI_PRECISIONS
    from tts.pipeline import Engine
    from tts.precision import PRECISIONS

    schema = yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))
    assert set(schema["properties"][setting]["enum"]) == set(PRECISIONS)
    assert CLI_PRECISIONS == PRECISIONS
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=f"{setting} bfloat16 needs CUDA and fast: true"):
        Engine(None, cpu, torch.float32, **{setting: "bfloat16"})
    with pytest.raises(ValueError, match="is not one of"):
        Engine(None, cpu, torch.float32, **{setting: "int8"})
    assert getattr(Engine(None, cpu, torch.float32), setting) == "float32"


def test_settings_name_the_features_precision_only_when_it_is_not_the_default(
    tmp_path, monkeypatch
):
    """settings.json (an input of the prompt conditioning's rules) names the features
    precision when one is set, so that changing it reruns them; at its default it is left out,
    so results made before the setting existed stay current."""
    import json

    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = _base_config()
    cfg["checkpoints"] = str(tmp_path / "no-checkpoints")
    settings = tmp_path / "results/settings.json"
    for value, want in (
        (None, {"dtype": "float32"}),
        ("float32", {"dtype": "float32"}),
        ("tf32", {"dtype": "float32", "features_precision": "tf32"}),
    ):
        if value is not None:
            cfg["features_precision"] = value
        _validate_config(cfg)
        jobs.prepare(cfg)
        assert json.loads(settings.read_text()) == want


def test_cudnn_benchmark_is_opt_in():
    """Off by default (deterministic kernels); on, cuDNN may time its kernels per shape."""
    import torch

    from tts import cli
    from tts.pipeline import configure_cudnn

    schema = yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))
    assert schema["properties"]["cudnn_benchmark"]["default"] is False
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    assert config["cudnn_benchmark"] is False
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (
        cudnn.benchmark,
        cudnn.deterministic,
        cudnn.enabled,
        cudnn.allow_tf32,
        matmul.allow_tf32,
    )
    try:
        for on in (True, False):
            configure_cudnn(on)
            assert cudnn.benchmark is on and cudnn.deterministic is (not on)
            assert cudnn.enabled and not cudnn.allow_tf32 and not matmul.allow_tf32
    finally:
        (
            cudnn.benchmark,
            cudnn.deterministic,
            cudnn.enabled,
            cudnn.allow_tf32,
            matmul.allow_tf32,
        ) = saved
    parser = cli.build_parser()
    assert (
        parser.parse_args(
            ["synth", "--checkpoints", "c", "--text", "t", "--speaker", "s", "--out", "o"]
        ).cudnn_benchmark
        is False
    )
    assert parser.parse_args(["bench", "--cudnn-benchmark"]).cudnn_benchmark is True


@pytest.fixture
def cache_env(monkeypatch):
    """Neither cache variable set, and both restored afterwards: use_compile_cache writes
    os.environ itself, which monkeypatch restores only for variables it has recorded."""
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(var, "recorded")
        monkeypatch.delenv(var)
    return monkeypatch


def test_compile_cache_points_inductor_and_triton_at_the_configured_folder(tmp_path, cache_env):
    cache_env.chdir(tmp_path)
    chosen = jobs.use_compile_cache({"compile_cache": "cache/tts"})
    assert chosen == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache" / "tts" / "inductor"),
        "TRITON_CACHE_DIR": str(tmp_path / "cache" / "tts" / "triton"),
    }
    assert all(os.environ[k] == v for k, v in chosen.items())


def test_compile_cache_leaves_a_users_variable_and_null_alone(tmp_path, cache_env):
    cache_env.setenv("TRITON_CACHE_DIR", "/mine")
    chosen = jobs.use_compile_cache({"compile_cache": str(tmp_path)})
    assert os.environ["TRITON_CACHE_DIR"] == "/mine" and "TRITON_CACHE_DIR" not in chosen
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert jobs.use_compile_cache({"compile_cache": None}) == {}
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
