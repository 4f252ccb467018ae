"""Parity with the official implementation: every case of every fixture set found.

Sets come from ../shared/fixtures and from TTS_PARITY_FIXTURES (os.pathsep-separated). Each case
is its own test, named ``<set>/<case id>``. A case type without a handler fails.
"""

import pytest
import torch

from tts import parity

CASES = list(parity.all_cases())


def _id(item):
    fs, case = item
    return f"{fs.name}/{parity.case_id(case)}"


@pytest.mark.parametrize("item", CASES, ids=[_id(c) for c in CASES])
def test_case(item):
    fs, case = item
    torch.set_num_threads(1)
    failures = parity.check_case(fs, case)
    assert not failures, "\n".join(failures)


def test_fixture_sets_found():
    assert CASES, "no fixture sets found under ../shared/fixtures or TTS_PARITY_FIXTURES"
