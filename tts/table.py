"""The texts table of the workflow: one row per utterance, read, validated and normalised.

:func:`read_table` parses ``texts.tsv`` (pandas, every cell a string) into one :class:`Row` per
line, whose ``spec`` holds the row's normalised settings (text, prompt files, emotion control,
seed, sampling overrides) and which :func:`request_from_spec` turns into the engine's request.
Faults of the whole table (bad bytes, duplicate or unsafe ids, missing or unknown columns)
raise :class:`TableError` naming every problem; faults of one row (empty text, a missing or
silent speaker file, a bad emotion vector, ...) become that row's ``error`` and never stop the
other rows. :data:`COLUMNS` documents every column (docs/workflow.md lists them).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

REQUIRED_COLUMNS = ("id", "text", "speaker")

# Sampling overrides a row may carry: column -> (type, lower bound, upper bound, description).
# Bounds are inclusive except where the description says otherwise; the config schema
# (workflow/schemas/config.schema.yaml) uses the same limits for the defaults.
SAMPLING_COLUMNS: dict[str, tuple[type, float | None, float | None, str]] = {
    "do_sample": (bool, None, None, "sample (true) or decode greedily/beam only (false)"),
    "top_k": (int, 0, 100000, "keep the k most likely GPT tokens (0 disables top-k)"),
    "top_p": (float, 0.0, 1.0, "nucleus sampling mass, in (0, 1]"),
    "temperature": (float, 0.0, 10.0, "GPT sampling temperature, > 0"),
    "num_beams": (int, 1, 64, "beam search width"),
    "repetition_penalty": (float, 0.0, 100.0, "penalty on repeated tokens, > 0"),
    "length_penalty": (float, -100.0, 100.0, "beam length penalty"),
    "max_mel_tokens": (int, 1, 100000, "most semantic tokens per segment"),
    "max_text_tokens_per_segment": (int, 1, 10000, "text tokens per segment"),
    "interval_silence_ms": (int, 0, 60000, "silence between segments, ms"),
    "diffusion_steps": (int, 1, 1000, "s2mel flow-matching steps"),
    "cfg_rate": (float, 0.0, 100.0, "s2mel classifier-free guidance rate"),
}
_EXCLUSIVE_LOW = {"top_p", "temperature", "repetition_penalty"}

COLUMNS: dict[str, str] = {
    "id": "unique row name, used for file names: letters, digits, '.', '_', '-' (max 100)",
    "text": "the text to speak (required, not empty, at most config limits.max_text_chars)",
    "speaker": "speaker prompt audio file; a relative path is relative to the table's folder",
    "emo_audio": "emotion prompt audio file (relative to the table's folder); empty: none",
    "emo_alpha": "emotion strength in [0, 1] (default 1)",
    "emo_vector": "8 comma-separated weights in [0, 1.2]: happy, angry, sad, afraid, disgusted, "
    "melancholic, surprised, calm",
    "use_emo_text": "true: derive the emotion from text with the Qwen emotion model",
    "emo_text": "text to derive the emotion from (implies use_emo_text; empty: the row's text)",
    "use_random": "true: pick emotion-matrix rows at random instead of by speaker similarity",
    "seed": "random seed, an integer in [0, 2**32 - 1] (empty: config seed, else a stable seed "
    "from id and text)",
    **{k: v[3] for k, v in SAMPLING_COLUMNS.items()},
}

# Ids become file names on every platform: no separators, no leading dot, no reserved names.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_TRUE = {"true", "yes", "1", "y", "on"}
_FALSE = {"false", "no", "0", "n", "off"}

DEFAULT_LIMITS = {"max_text_chars": 2000, "min_prompt_seconds": 0.5}


class TableError(ValueError):
    """The texts table as a whole cannot be used; the message names every problem."""


@dataclass
class Row:
    """One line of the table: its spec (normalised settings) or the reason it cannot run."""

    id: str
    line: int
    spec: dict
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Table:
    path: Path
    rows: list[Row]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rows]


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        bad = []
        for n, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.append(f"line {n} (byte {exc.start + 1}: {line[exc.start : exc.start + 1]!r})")
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise TableError(
            f"{path}: not valid UTF-8 text at {shown}; save the table as UTF-8 "
            "(e.g. 'iconv -f latin1 -t utf-8')"
        ) from None
    return text.removeprefix("\ufeff")


def _check_header(path: Path, header: list[str], first_line: str) -> None:
    if len(header) == 1 and ("," in first_line or ";" in first_line):
        raise TableError(
            f"{path}: the header has no tab characters; the table must be tab-separated "
            f"(found {first_line[:60]!r})"
        )
    problems = []
    seen: set[str] = set()
    dups = sorted({h for h in header if h in seen or seen.add(h)})
    if dups:
        problems.append(f"duplicate column(s): {', '.join(dups)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        problems.append(f"missing required column(s): {', '.join(missing)}")
    unknown = [h for h in header if h not in COLUMNS]
    for h in unknown:
        near = difflib.get_close_matches(h, list(COLUMNS), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        problems.append(f"unknown column {h!r}{hint}")
    if problems:
        raise TableError(
            f"{path}: " + "; ".join(problems) + f". Known columns: {', '.join(COLUMNS)} "
            "(see docs/workflow.md)"
        )


def _check_ids(path: Path, ids: list[str], lines: list[int]) -> None:
    problems = []
    seen: dict[str, int] = {}
    for rid, line in zip(ids, lines, strict=True):
        if not rid:
            problems.append(f"line {line}: empty id")
        elif not ID_PATTERN.match(rid) or rid.endswith("."):
            problems.append(
                f"line {line}: id {rid!r} is not safe as a file name (use letters, digits, "
                "'.', '_' and '-', starting with a letter or digit, at most 100 characters)"
            )
        elif _RESERVED.match(rid):
            problems.append(f"line {line}: id {rid!r} is a reserved file name on Windows")
        key = rid.lower()
        if rid and key in seen:
            problems.append(
                f"line {line}: duplicate id {rid!r} (first on line {seen[key]}; ids must be "
                "unique, ignoring case)"
            )
        else:
            seen.setdefault(key, line)
    if problems:
        raise TableError(f"{path}: " + "; ".join(problems))


def read_frame(path: str | Path):
    """The table as a pandas DataFrame of strings, plus each row's line number.

    Raises :class:`TableError` for every table-wide fault.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise TableError(
            f"{path}: texts table {what}; set texts in config/config.yaml or "
            "pass --config texts=PATH"
        )
    text = _decode(path, path.read_bytes())
    physical = text.splitlines()
    numbered = [(n, line) for n, line in enumerate(physical, start=1) if line.strip()]
    if not numbered:
        raise TableError(f"{path}: the table is empty (it needs a header line and rows)")
    header_line, header_text = numbered[0]
    header = [h.strip() for h in header_text.split("\t")]
    _check_header(path, header, header_text)
    lines = [n for n, _ in numbered[1:]]
    if not lines:
        raise TableError(f"{path}: the table has a header but no rows")
    try:
        frame = pd.read_csv(
            io.StringIO("\n".join(line for _, line in numbered)),
            sep="\t",
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=True,
            engine="python",
        )
    except pd.errors.ParserError as exc:
        msg = str(exc).strip().splitlines()[0]
        match = re.search(r"line (\d+)", msg)
        if match:  # pandas counts the lines it was given; map back to the file's lines
            k = int(match.group(1))
            real = numbered[k - 1][0] if 0 < k <= len(numbered) else k
            msg = f"line {real}: " + re.sub(r"\s*in line \d+", "", msg)
        raise TableError(f"{path}: {msg} (more fields than the header has columns?)") from None
    frame.columns = header
    frame = frame.fillna("").astype(str).apply(lambda col: col.str.strip())
    if len(frame) != len(lines):  # cannot happen with QUOTE_NONE; guard the line mapping
        raise TableError(
            f"{path}: could not map rows to lines ({len(frame)} rows, {len(lines)} lines)"
        )
    _check_ids(path, list(frame["id"]), lines)
    return frame, lines


def _parse_bool(value: str, column: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{column} = {value!r} is not true/false")


def parse_sampling_value(column: str, value: object) -> int | float | bool:
    """Parse and range-check one sampling option (from the table or the config)."""
    kind, lo, hi, _ = SAMPLING_COLUMNS[column]
    if kind is bool:
        return value if isinstance(value, bool) else _parse_bool(str(value), column)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{column} = {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{column} = {value!r} is not finite")
    if kind is int:
        if x != int(x):
            raise ValueError(f"{column} = {value!r} is not a whole number")
        x = int(x)
    low_ok = x > lo if column in _EXCLUSIVE_LOW else x >= lo
    if not low_ok or x > hi:
        bracket = "(" if column in _EXCLUSIVE_LOW else "["
        raise ValueError(f"{column} = {value!r} is outside {bracket}{lo:g}, {hi:g}]")
    return x


def _display_path(path: Path) -> str:
    """A path relative to the working directory when inside it (so moving a project keeps
    specs unchanged), else absolute."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def file_key(path: str | Path) -> str:
    """A file-name-safe key for an audio file: its stem plus a short hash of its path."""
    path = str(path)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:40] or "audio"
    return f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


_AUDIO_CHECKS: dict[tuple, str | None] = {}


def check_audio(path: Path, what: str, min_seconds: float) -> str | None:
    """Why ``path`` cannot be used as a prompt, or None. Cached by path, size and mtime."""
    if not path.exists():
        return f"{what} file not found: {path}"
    if path.is_dir():
        return f"{what} path is a folder, not an audio file: {path}"
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, min_seconds, what)
    if key not in _AUDIO_CHECKS:
        _AUDIO_CHECKS[key] = _check_audio_uncached(path, what, min_seconds)
    return _AUDIO_CHECKS[key]


def _check_audio_uncached(path: Path, what: str, min_seconds: float) -> str | None:
    from tts.audio import AudioError, load_audio

    try:
        wave, sr = load_audio(path, sr=None)
    except AudioError as exc:
        return f"{what}: {exc}"
    seconds = wave.shape[-1] / sr
    if seconds < min_seconds:
        return (
            f"{what}: {path}: too short ({seconds:.2f} s; a prompt needs at least "
            f"{min_seconds:g} s, config limits.min_prompt_seconds)"
        )
    return None


def _row_spec(
    record: dict[str, str],
    base: Path,
    sampling_defaults: dict,
    limits: dict,
    default_seed: int | None,
    check_files: bool,
) -> tuple[dict, str | None]:
    """Normalise one row; return (spec, error). The spec holds only what affects the audio."""
    errors: list[str] = []
    rid = record["id"]
    text = record.get("text", "")
    spec: dict = {"id": rid, "text": text}
    max_chars = int(limits["max_text_chars"])
    if not text:
        errors.append("text is empty")
    elif len(text) > max_chars:
        errors.append(
            f"text has {len(text)} characters, more than the maximum {max_chars} "
            "(config limits.max_text_chars)"
        )
    min_seconds = float(limits["min_prompt_seconds"])

    def audio(column: str, what: str) -> str | None:
        value = record.get(column, "")
        if not value:
            return None
        path = Path(value).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else base / path))
        if check_files:
            problem = check_audio(path, what, min_seconds)
            if problem:
                errors.append(problem)
        return _display_path(path)

    if not record.get("speaker", ""):
        errors.append("speaker is empty (a speaker prompt audio file is required)")
    spec["speaker"] = audio("speaker", "speaker")
    spec["emo_audio"] = audio("emo_audio", "emo_audio")

    from tts.emotion import validate_emo_alpha, validate_emo_vector

    spec["emo_alpha"] = 1.0
    if record.get("emo_alpha", ""):
        try:
            spec["emo_alpha"] = validate_emo_alpha(record["emo_alpha"])
        except ValueError as exc:
            errors.append(str(exc))
    spec["emo_vector"] = None
    if record.get("emo_vector", ""):
        parts = [p.strip() for p in re.split(r"[,\s]+", record["emo_vector"].strip()) if p.strip()]
        try:
            values = []
            for p in parts:
                try:
                    values.append(float(p))
                except ValueError:
                    raise ValueError(f"emotion vector: {p!r} is not a number") from None
            vec = validate_emo_vector(values)
            if not any(vec):
                raise ValueError("emotion vector is all zero; leave emo_vector empty for none")
            spec["emo_vector"] = vec
        except ValueError as exc:
            errors.append(f"emo_vector {record['emo_vector']!r}: {exc}")
    use_text = False
    if record.get("use_emo_text", ""):
        try:
            use_text = _parse_bool(record["use_emo_text"], "use_emo_text")
        except ValueError as exc:
            errors.append(str(exc))
    emo_text = record.get("emo_text", "")
    spec["emo_text"] = emo_text if emo_text else ("" if use_text else None)
    modes = [
        name
        for name, on in (
            ("emo_audio", spec["emo_audio"] is not None),
            ("emo_vector", bool(record.get("emo_vector", ""))),
            ("emo_text/use_emo_text", spec["emo_text"] is not None),
        )
        if on
    ]
    if len(modes) > 1:
        errors.append(f"give only one emotion source, not {' and '.join(modes)}")
    spec["use_random"] = False
    if record.get("use_random", ""):
        try:
            spec["use_random"] = _parse_bool(record["use_random"], "use_random")
        except ValueError as exc:
            errors.append(str(exc))
    spec["seed"] = default_seed
    if record.get("seed", ""):
        try:
            seed = float(record["seed"])
            if seed != int(seed) or not 0 <= seed <= 2**32 - 1:
                raise ValueError
            spec["seed"] = int(seed)
        except (ValueError, OverflowError):
            errors.append(f"seed = {record['seed']!r} is not an integer in [0, 4294967295]")
    sampling = dict(sampling_defaults)
    for column in SAMPLING_COLUMNS:
        if record.get(column, ""):
            try:
                sampling[column] = parse_sampling_value(column, record[column])
            except ValueError as exc:
                errors.append(str(exc))
    spec["sampling"] = dict(sorted(sampling.items()))
    return spec, ("; ".join(errors) if errors else None)


def read_table(
    path: str | Path,
    sampling_defaults: dict | None = None,
    limits: dict | None = None,
    seed: int | None = None,
    check_files: bool = True,
) -> Table:
    """Parse and validate the texts table.

    Raises :class:`TableError` for table-wide faults. Row faults are returned as
    ``Row.error``; such rows are never synthesised.
    """
    path = Path(path)
    frame, lines = read_frame(path)
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    base = path.resolve().parent
    rows = []
    for record, line in zip(frame.to_dict("records"), lines, strict=True):
        spec, error = _row_spec(record, base, sampling_defaults or {}, limits, seed, check_files)
        rows.append(Row(record["id"], line, spec, error))
    return Table(path, rows)


def request_from_spec(spec: dict):
    """The engine request for a row spec."""
    from tts.pipeline import SynthesisRequest

    return SynthesisRequest(
        id=spec["id"],
        text=spec["text"],
        speaker=Path(spec["speaker"]),
        emo_audio=Path(spec["emo_audio"]) if spec.get("emo_audio") else None,
        emo_alpha=float(spec.get("emo_alpha", 1.0)),
        emo_vector=list(spec["emo_vector"]) if spec.get("emo_vector") else None,
        emo_text=spec.get("emo_text"),
        use_random=bool(spec.get("use_random", False)),
        seed=spec.get("seed"),
        sampling=dict(spec.get("sampling", {})),
    )
