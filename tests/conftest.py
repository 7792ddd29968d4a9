import signal

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run many tiny ops; on a busy 2-core machine one thread is up to 10x faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PYTEST_HANDLERS = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


@pytest.fixture(autouse=True)
def signal_handlers_put_back():
    """A training script's main() run in this process (by a test or a module fixture) installs Ctrl-C / SIGTERM
    handlers (model.session): put pytest's back after every test, so that no later test's child processes (a
    multiprocessing pool, forked with the handlers) turn SIGTERM into a flag and outlive pool.terminate()."""
    yield
    for s, handler in PYTEST_HANDLERS.items():
        signal.signal(s, handler)
