"""The driver model setting (hypervisor/driver_model.py): parsing and keeping it in the home."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from hypervisor import driver_model
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home


@pytest.mark.parametrize("text,model", [("microkernel", "microkernel"), ("Monolithic", "monolithic"),
                                        ("MICROKERNEL", "microkernel")])
def test_known_models_parse_case_insensitively(text, model):
    assert driver_model.parse(text) == model


@given(st.text(max_size=20).filter(lambda t: t.lower() not in driver_model.MODELS))
def test_anything_else_is_a_bad_request_naming_the_choices(text):
    with pytest.raises(HvError) as err:
        driver_model.parse(text)
    assert err.value.code == "BadRequest" and "microkernel or monolithic" in err.value.message


def test_the_model_is_kept_in_the_home_and_defaults_to_microkernel(tmp_path):
    home = Home.resolve(tmp_path)
    assert driver_model.load(home) == "microkernel"
    driver_model.save(home, "monolithic")
    assert driver_model.load(home) == "monolithic"
    (tmp_path / "host.json").write_text("{not json")
    assert driver_model.load(home) == "microkernel"   # a damaged file is the default, not a crash
