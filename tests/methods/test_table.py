"""methods/table.py is the one place that says what a method needs; the classes read it."""

import dataclasses

import pytest

from dowser.methods import REGISTRY, _load_all, register
from dowser.methods.table import METHODS, Traits


def test_every_registered_method_has_the_table_traits():
    _load_all()
    assert set(REGISTRY) == set(METHODS)
    for name, cls in REGISTRY.items():
        for f in dataclasses.fields(Traits):
            assert getattr(cls, f.name) == getattr(METHODS[name], f.name), (name, f.name)


def test_method_files_do_not_restate_traits():
    # register() would silently overwrite a trait set in methods/<name>.py: keep them in the table only
    import inspect
    import re

    _load_all()
    traits = "|".join(f.name for f in dataclasses.fields(Traits))
    for name, cls in REGISTRY.items():
        found = re.findall(rf"^\s+({traits})\s*=", inspect.getsource(cls), re.M)
        assert not found, (name, found)


def test_register_refuses_a_method_missing_from_the_table():
    with pytest.raises(ValueError, match="unknown method 'nameless'"):
        register("nameless")(type("Nameless", (), {}))
