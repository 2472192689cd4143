"""The API reference is generated from the docstrings: every public class, method and constructor parameter has one.

A name added to ``oarfutures.__all__`` without a docstring, or a constructor parameter that its ``__init__``
docstring does not explain, fails here before it leaves a hole in the documentation site.
"""

import dataclasses
import inspect
import re

import pytest

import oarfutures
from oarfutures import registry
from oarfutures.core.executor import ExecutorOptions

PUBLIC = sorted(name for name in oarfutures.__all__ if not name.startswith("_"))


def public_objects():
    for name in PUBLIC:
        yield name, getattr(oarfutures, name)
    yield "ExecutorOptions", ExecutorOptions  # what executor.options() returns


def own_methods(cls):
    """Public methods and properties the package defines (those inherited from the standard library keep theirs)."""
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__call__", "__exit__"):
            continue
        function = member.fget if isinstance(member, property) else member
        if callable(function) and getattr(function, "__module__", "").startswith("oarfutures"):
            yield name, function


def section_entries(doc, section):
    """Names given an entry in the docstring's ``section`` (``name:`` or ``**name:`` at an entry's start): the lines
    indented as the section's first one. Not a fixed indent: from 3.13, Python strips a docstring's common indent,
    so that the entries of an ``Args:`` written on the docstring's first line start at column 0."""
    if section not in doc:
        return set()
    lines = [line for line in doc.split(section, 1)[1].splitlines() if line.strip()]
    indent = len(lines[0]) - len(lines[0].lstrip()) if lines else 0
    return {m.group(1) for line in lines if (m := re.match(rf" {{{indent}}}\**(\w+):", line))}


def documented_parameters(doc):
    return section_entries(doc, "Args:")


@pytest.mark.parametrize("name,obj", list(public_objects()), ids=[n for n, _ in public_objects()])
def test_every_public_name_and_method_has_a_docstring(name, obj):
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if inspect.isclass(obj):
        missing = [m for m, f in own_methods(obj) if not (f.__doc__ or "").strip()]
        assert not missing, f"{name}: no docstring on {missing}"


@pytest.mark.parametrize("name,obj", list(public_objects()), ids=[n for n, _ in public_objects()])
def test_every_constructor_parameter_is_explained(name, obj):
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        fields = {f.name for f in dataclasses.fields(obj)}
        assert fields <= documented_attributes(obj.__doc__), f"{name}: fields without an Attributes entry"
        return
    function = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and not getattr(function, "__module__", "").startswith("oarfutures"):
        return  # the standard library's constructor (no parameters of ours)
    parameters = [p for p in inspect.signature(function).parameters if p != "self"]
    if not parameters:
        return
    doc = function.__doc__ or ""
    missing = [p for p in parameters if p not in documented_parameters(doc)]
    assert not missing, f"{name}: constructor parameters {missing} are not explained in its __init__ docstring"


def documented_attributes(doc):
    return section_entries(doc, "Attributes:")


@pytest.mark.parametrize("scheduler", registry.NAMES)
def test_each_executor_documents_its_backends_result_grace(scheduler):
    """``executors`` gives each constructor's docstring its backend's grace as a number (it does not import the
    cluster backends to read it): a backend changing its ``result_grace`` must be documented with it."""
    grace = registry.backend_class(scheduler).result_grace
    doc = registry.executor_class(scheduler).__init__.__doc__
    assert f"(default {grace:g} s)" in " ".join(doc.split())
