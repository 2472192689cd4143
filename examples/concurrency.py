"""The Grid'5000 page's "other features": concurrent jobs, submissions from a ThreadPoolExecutor, and asyncio."""

import asyncio
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed

from oarfutures import AutoPoolExecutor


def add(a, b):
    return a + b


async def with_asyncio(executor):
    loop = asyncio.get_running_loop()
    first = loop.run_in_executor(executor, add, 1, 2)  # a job seen as an awaitable
    second = asyncio.wrap_future(executor.submit(add, 3, 4))
    return await asyncio.gather(first, second)


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="log_test-")
    with AutoPoolExecutor(folder=folder, timeout_min=5) as executor:
        concurrent = [executor.submit(add, i, i) for i in range(4)]  # several jobs at once
        print("concurrent jobs:", sorted(f.result() for f in as_completed(concurrent)))

        with ThreadPoolExecutor(4) as threads:  # submit() is thread-safe
            futures = list(threads.map(lambda i: executor.submit(add, i, 100), range(4)))
        print("from threads:", [f.result() for f in futures])

        print("asyncio:", asyncio.run(with_asyncio(executor)))
