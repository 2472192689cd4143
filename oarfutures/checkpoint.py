"""Checkpointable calls: saved when the scheduler is about to stop the job, resumed in the same future.

When the job is told it will be stopped (Slurm's ``--signal``, OAR's ``--checkpoint``, a preemption, or
``executor.interrupt(future)``), the worker interrupts ``__call__`` and calls ``checkpoint`` with the same
arguments. It returns what to run when the job comes back (a ``Resubmission``), or None to give up. The worker
stores that under the same task id and asks the scheduler to run the task again (Slurm: ``scontrol requeue``;
OAR: exit 99 of an idempotent job, kept alive past OAR's 60 s minimum; local: requeued in place). The future the
user holds resolves with the final result, whatever job ids the scheduler used meanwhile.
"""

from __future__ import annotations

from typing import Any, Callable


class Resubmission:
    """What to run when a checkpointed task comes back: a callable (usually the same object) and its arguments."""

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Name the call to make when the task comes back; it is pickled then, so ``function`` may carry state.

        Args:
            function: Usually the ``Checkpointable`` itself (``self``), holding the progress made so far.
            *args: Positional arguments of that call, usually the ones ``checkpoint`` received.
            **kwargs: Keyword arguments of that call.
        """
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Resubmission({self.function!r}, *{self.args!r}, **{self.kwargs!r})"


class Checkpointable:
    """Base class for callables that can be stopped and resumed.

    Keep the state you need on ``self`` (or in files), resume from it at the top of ``__call__``. The default
    ``checkpoint`` resubmits ``self`` with the same arguments, which pickles ``self`` as it is at that moment.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; it starts again from the top after a resubmission, so resume from ``self`` here."""
        raise NotImplementedError("a Checkpointable defines __call__")

    def checkpoint(self, *args: Any, **kwargs: Any) -> Resubmission | None:
        """Called in the job when it is about to be stopped, with the arguments of ``__call__``.

        Override it to save what does not fit on ``self`` (files) and return ``super().checkpoint(*args,
        **kwargs)``, or a ``Resubmission`` of another call. Returning None gives up: the future fails with
        ``JobFailedError`` (state ``INTERRUPTED``), as a plain function would.
        """
        return Resubmission(self, *args, **kwargs)
