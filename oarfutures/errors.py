"""Exceptions a future can fail with, besides the user's own ones.

A remote exception is re-raised as itself (original type and args); these types cover what is left: a job that
ended without a result, and a remote exception that could not travel back.
"""

from __future__ import annotations


class RemoteTraceback(Exception):
    """Carries the formatted remote traceback; set as ``__cause__`` so it prints like ProcessPoolExecutor's."""

    def __init__(self, text: str) -> None:
        """Args:
        text: The remote traceback as ``traceback.format_exception`` printed it in the job.
        """
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class RemoteError(Exception):
    """Stands in for a remote exception that could not be pickled back: its type name, message and traceback."""

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        """Args:
        type_name: Qualified name of the remote exception's type, to catch or report it by name.
        message: ``str()`` of the remote exception.
        traceback_text: The remote traceback, formatted in the job.
        """
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message} (the exception could not be pickled back to the client)"


class JobFailedError(Exception):
    """The job running a task ended without writing a result (killed, timed out, crashed, cancelled outside)."""

    def __init__(
        self,
        task_id: str,
        job_id: str | None,
        state: str,
        exit_code: str | None = None,
        reason: str = "",
        log_tail: str = "",
    ) -> None:
        """Carry what the scheduler said, so that the error explains itself without a trip to the front-end.

        Args:
            task_id: oarfutures' id of the task (``oarfutures logs FOLDER TASK_ID`` shows its output).
            job_id: The scheduler's job id that ran it last, if it was submitted.
            state: The scheduler's final state (``TIMEOUT``, ``FAILED``, ``CANCELLED``...) or oarfutures' own
                (``LOST``, ``INTERRUPTED``).
            exit_code: The job's exit code or signal as the scheduler reported it, when known.
            reason: Why, in words (OAR: its events).
            log_tail: The last lines of the job's stdout and stderr.
        """
        super().__init__(task_id, job_id, state, exit_code, reason, log_tail)
        self.task_id = task_id
        self.job_id = job_id
        self.state = state
        self.exit_code = exit_code
        self.reason = reason
        self.log_tail = log_tail

    def __str__(self) -> str:
        text = f"task {self.task_id} (job {self.job_id}) ended without a result: state {self.state}"
        if self.exit_code is not None:
            text += f", exit code {self.exit_code}"
        if self.reason:
            text += f" ({self.reason})"
        if self.log_tail:
            text += "\n--- tail of the job's logs ---\n" + self.log_tail
        return text
