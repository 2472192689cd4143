"""A griffe extension: the executors' constructor docstrings are rendered as Python sees them.

The entries of the arguments every executor takes are written once (``oarfutures.executors.CORE_ARGUMENTS``) and
put into each constructor's docstring when the module is imported; griffe reads the source, where a marker line
stands for them, so for those docstrings this takes the imported text instead.
"""

import inspect

import griffe

MARK = ": see CORE_ARGUMENTS)"


class RuntimeDocstrings(griffe.Extension):
    def on_function_instance(self, *, func: griffe.Function, **kwargs: object) -> None:
        if func.docstring is not None and MARK in func.docstring.value:
            func.docstring.value = inspect.cleandoc(griffe.dynamic_import(func.path).__doc__)
