"""Regenerate the broken audio files and the tables of this corpus (cases.yaml lists them all).

    python tests/bad_inputs/make_corpus.py

Tables and configs are small text files kept as they are; only files that are awkward to write
by hand (audio, bad encodings, very long lines) come from here.
"""

from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
AUDIO = HERE / "audio"
TABLES = HERE / "tables"
GOOD = "../../../config/speakers/espeak_en_us_male.wav"
HEADER = "id\ttext\tspeaker\n"


def audio() -> None:
    AUDIO.mkdir(exist_ok=True)
    (AUDIO / "empty.wav").write_bytes(b"")
    (AUDIO / "not_audio.wav").write_text("<html>404 Not Found</html>\n")
    sf.write(AUDIO / "silent.wav", np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    t = np.arange(800) / 8000
    sf.write(
        AUDIO / "too_short.wav",
        (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
        8000,
        subtype="PCM_16",
    )
    nan = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 8000)).astype(np.float32)
    nan[100:200] = np.nan
    sf.write(AUDIO / "nan.wav", nan, 8000, subtype="FLOAT")
    # The first 12 bytes of a WAV file ("RIFF", size, "WAVE"), cut off before any chunk.
    (AUDIO / "truncated.wav").write_bytes(_wav_header(16000)[:12])
    (AUDIO / "zero_samples.wav").write_bytes(_wav_header(0))
    folder = AUDIO / "folder.wav"
    folder.mkdir(exist_ok=True)
    (folder / ".gitkeep").write_text("")


def _wav_header(n_bytes: int) -> bytes:
    import struct

    return (
        b"RIFF"
        + struct.pack("<I", 36 + n_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", n_bytes)
    )


def tables() -> None:
    TABLES.mkdir(exist_ok=True)
    (TABLES / "table_invalid_utf8.tsv").write_bytes(
        (HEADER + f"a\tfine\t{GOOD}\n").encode() + b"b\tcaf\xe9 cr\xe8me\t" + GOOD.encode() + b"\n"
    )
    (TABLES / "table_utf16.tsv").write_bytes((HEADER + f"a\thello\t{GOOD}\n").encode("utf-16"))
    (TABLES / "row_text_too_long.tsv").write_text(
        HEADER + f"good\tHello.\t{GOOD}\nbad\t{'word ' * 500}end.\t{GOOD}\n"
    )


if __name__ == "__main__":
    audio()
    tables()
