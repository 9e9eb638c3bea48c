"""numpy's BLAS on one thread during the validation: set by whichever thread enters first (the server runs
requests on worker threads), held while any block is open, restored after the last one."""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_info, threadpool_limits

from gotd.server.selection.blas import single_threaded_blas


def _blas_threads() -> list[int]:
    """Threads of numpy's BLAS (another loaded BLAS, such as scipy's, is not the validation's)."""
    return [
        int(i["num_threads"])
        for i in threadpool_info()
        if i["user_api"] == "blas" and "numpy" in str(i.get("filepath", ""))
    ]


def test_one_thread_inside_restored_after() -> None:
    before = _blas_threads()
    assert before, "numpy's BLAS is loaded"
    with single_threaded_blas():
        assert set(_blas_threads()) == {1}
        with single_threaded_blas():  # re-entrant
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {1}, "the outer block still holds the limit"
    assert _blas_threads() == before


def test_blocks_of_several_threads_hold_the_limit_until_the_last_leaves() -> None:
    with threadpool_limits(limits=2, user_api="blas"):  # this thread took control of OpenBLAS before
        before = _blas_threads()
        entered, release = threading.Barrier(2), threading.Event()
        seen: list[set[int]] = []

        def worker() -> None:  # a request's thread: enters first, leaves last
            with single_threaded_blas():
                seen.append(set(_blas_threads()))
                entered.wait()
                release.wait()
                seen.append(set(_blas_threads()))

        thread = threading.Thread(target=worker)
        thread.start()
        entered.wait()
        assert set(_blas_threads()) == {1}, "set by the worker thread, seen process-wide"
        with single_threaded_blas():
            pass
        assert set(_blas_threads()) == {1}, "the worker's block still holds the limit"
        release.set()
        thread.join()
        assert seen == [{1}, {1}]
        assert _blas_threads() == before
