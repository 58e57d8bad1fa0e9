"""Image work spread over threads: PIL's decoders, zlib and numpy release the GIL, so threads scale
without copying archives or arrays into worker processes."""
from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable, Iterable, Iterator


def ordered_map(function: Callable, items: Iterable, workers: int, desc: str, progress: bool) -> Iterator:
    """``map(function, items)`` on ``workers`` threads, results in input order, with a tqdm bar."""
    from tqdm import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit="image", disable=not progress, file=sys.stderr)
    with bar, concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        window = max(1, workers) * 4
        futures = [pool.submit(function, item) for item in items[:window]]
        for index in range(len(items)):
            result = futures[index].result()
            if index + window < len(items):
                futures.append(pool.submit(function, items[index + window]))
            futures[index] = None
            bar.update()
            yield result
