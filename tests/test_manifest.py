"""`tts manifest` at the official config equals the official tensor manifests, file by file."""

import csv
import io

import pytest
from conftest import MANIFESTS, OFFICIAL_CONFIG

from tts import cli

FILES = {
    "gpt.pth": "gpt.pth.tsv",
    "s2mel.pth": "s2mel.pth.tsv",
    "semantic_codec_model.safetensors": "semantic_codec_model.safetensors.tsv",
    "campplus_cn_common.bin": "campplus_cn_common.bin.tsv",
    "bigvgan_generator.pt": "bigvgan_generator.pt.tsv",
    "w2v-bert-2.0.model.safetensors": "w2v-bert-2.0.model.safetensors.tsv",
}


@pytest.fixture(scope="module")
def printed():
    buf = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buf):
        assert cli.main(["manifest", "--config", str(OFFICIAL_CONFIG)]) == 0
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for file, name, shape, dtype in csv.reader(io.StringIO(buf.getvalue()), delimiter="\t"):
        rows.setdefault(file, []).append((name, shape, dtype))
    return rows


@pytest.mark.parametrize("file", list(FILES))
def test_manifest_equals_official(printed, file):
    with open(MANIFESTS / FILES[file], encoding="utf-8") as fh:
        expected = [tuple(r) for r in csv.reader(fh, delimiter="\t")][1:]
    got = printed[file]
    assert sorted(got) == sorted(expected), (
        f"{file}: missing {sorted(set(expected) - set(got))[:5]}, extra {sorted(set(got) - set(expected))[:5]}"
    )


def test_packaged_official_config_is_the_spec_one():
    from tts.cli import OFFICIAL_CONFIG as packaged

    assert packaged.read_text(encoding="utf-8") == OFFICIAL_CONFIG.read_text(encoding="utf-8")
