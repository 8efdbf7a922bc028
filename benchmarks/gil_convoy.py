"""How a thread that launches many small torch ops fares beside threads running Python.

    python -m benchmarks.gil_convoy

Each torch op drops the GIL and takes it back; beside a thread that holds the GIL in Python
code, taking it back waits up to the interpreter's switch interval (5 ms). A model pass on a
GPU is a few hundred such launches, so the host threads that share its process set its pace
(DESIGN.md, "Measured on a GPU"). Prints one pass of 300 ops alone, and beside 3 busy threads
at the default and a 10× shorter switch interval.
"""

from __future__ import annotations

import sys
import threading
import time


def main() -> None:
    import torch

    torch.set_num_threads(1)
    x = torch.randn(64, 64)

    def one_pass() -> None:
        y = x
        for _ in range(150):
            y = torch.relu(y * 1.0001)  # 2 small ops, each drops and takes back the GIL

    def per_pass(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            one_pass()
        return (time.perf_counter() - t) / n * 1e3

    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(i * i for i in range(1000))

    print(f"alone: {per_pass(20):.2f} ms per pass of 300 ops")
    default = sys.getswitchinterval()
    for interval in (default, default / 10):
        sys.setswitchinterval(interval)
        stop.clear()
        threads = [threading.Thread(target=busy) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        print(f"beside 3 threads running Python, switch interval {interval * 1e3:.1f} ms: "
              f"{per_pass(5):.1f} ms per pass")
        stop.set()
        for t in threads:
            t.join()
    sys.setswitchinterval(default)


if __name__ == "__main__":
    main()
