"""A joblib backend: ``Parallel(...)(delayed(f)(x) for x in xs)`` through any oarfutures executor.

    import joblib
    import oarfutures.joblib_backend  # registers the "oarfutures" backend
    with joblib.parallel_config(backend="oarfutures", executor=SlurmPoolExecutor(...)):
        results = joblib.Parallel(n_jobs=50)(joblib.delayed(f)(x) for x in xs)

Without ``executor=``, an ``AutoPoolExecutor`` is made from the other keywords. Jobs take seconds to start, so
joblib's automatic batching aims at batches of 10-60 s of work instead of its default fraction of a second.
"""

from __future__ import annotations

from typing import Any, Callable

import joblib
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from oarfutures.core.executor import JobExecutor
from oarfutures.core.futures import JobFuture


class OarfuturesBackend(AutoBatchingMixin, ParallelBackendBase):
    MIN_IDEAL_BATCH_DURATION = 10
    MAX_IDEAL_BATCH_DURATION = 60
    supports_retrieve_callback = True

    def __init__(self, executor: JobExecutor | None = None, **executor_parameters: Any) -> None:
        super().__init__()
        self._executor = executor
        self._owned = executor is None  # made here, so shut down here
        self._parameters = executor_parameters

    @property
    def executor(self) -> JobExecutor:
        if self._executor is None:
            from oarfutures.executors import AutoPoolExecutor

            self._executor = AutoPoolExecutor(**self._parameters)
        return self._executor

    def configure(
        self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None, **kwargs: Any
    ) -> int:
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs is None or n_jobs < 0:
            return self.executor._max_workers
        return max(1, n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> JobFuture:
        future = self.executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    apply_async = submit  # the name joblib < 1.5 calls

    def retrieve_result_callback(self, out: JobFuture) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        self.executor.abort("joblib aborted the remaining tasks")
        if not ensure_ready:
            self.terminate()

    def terminate(self) -> None:
        if self._owned and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


joblib.register_parallel_backend("oarfutures", OarfuturesBackend)
