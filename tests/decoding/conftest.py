import pytest


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Decoding tests run the tiny kit models: they gain nothing from threads, and on a shared CPU two threads
    thrash each other (the segmenter's tests, which load no model, are not slowed by it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
