"""compat: wrapping ticks arithmetic and the asyncio shim (Queue, wait_for, tasks)."""

from gateway.core import compat

PERIOD = compat.TICKS_PERIOD
HALF = PERIOD // 2


def test_period_is_a_power_of_two_and_30_bits_on_cpython():
    assert PERIOD & (PERIOD - 1) == 0
    if not compat.MICROPYTHON:
        assert PERIOD == 1 << 30


def test_ticks_add_wraps_past_the_period():
    assert compat.ticks_add(PERIOD - 10, 25) == 15
    assert compat.ticks_add(0, -1) == PERIOD - 1
    assert compat.ticks_add(5, -5) == 0
    assert compat.ticks_add(PERIOD - 1, 1) == 0


def test_ticks_diff_across_the_wrap_is_small_and_signed():
    before = PERIOD - 10
    after = compat.ticks_add(before, 25)
    assert compat.ticks_diff(after, before) == 25
    assert compat.ticks_diff(before, after) == -25
    assert compat.ticks_diff(0, PERIOD - 1) == 1
    assert compat.ticks_diff(PERIOD - 1, 0) == -1


def test_ticks_diff_range_is_half_open():
    assert compat.ticks_diff(HALF - 1, 0) == HALF - 1
    assert compat.ticks_diff(HALF, 0) == -HALF
    assert compat.ticks_diff(0, HALF) == -HALF
    assert compat.ticks_diff(compat.ticks_add(123, HALF - 1), 123) == HALF - 1


def test_ticks_are_within_the_period_and_move_forward():
    first = compat.ticks_ms()
    first_us = compat.ticks_us()
    assert 0 <= first < PERIOD
    assert 0 <= first_us < PERIOD

    async def wait():
        await compat.sleep_ms(20)

    compat.run(wait())
    assert compat.ticks_diff(compat.ticks_ms(), first) >= 19
    assert compat.ticks_diff(compat.ticks_us(), first_us) >= 19000


def test_time_seconds_is_unix_time():
    assert compat.time_seconds() > 1.6e9


def test_run_returns_the_coroutine_result():
    async def answer():
        await compat.sleep(0)
        return 42

    assert compat.run(answer()) == 42


def _check_queue(make_queue):
    async def scenario():
        queue = make_queue(2)
        assert queue.empty() and not queue.full() and queue.qsize() == 0
        queue.put_nowait("a")
        await queue.put("b")
        assert queue.full() and queue.qsize() == 2
        try:
            queue.put_nowait("c")
        except compat.QueueFull:
            pass
        else:
            raise AssertionError("put_nowait on a full queue must raise QueueFull")
        assert queue.get_nowait() == "a"
        assert await queue.get() == "b"
        try:
            queue.get_nowait()
        except compat.QueueEmpty:
            pass
        else:
            raise AssertionError("get_nowait on an empty queue must raise QueueEmpty")
        return True

    assert compat.run(scenario())


def test_queue_nowait_and_sizes():
    _check_queue(compat.Queue)


def test_list_queue_nowait_and_sizes():
    _check_queue(compat.ListQueue)


def _check_blocking(make_queue):
    async def scenario():
        queue = make_queue(1)
        got = []

        async def consumer():
            for _ in range(5):
                got.append(await queue.get())

        task = compat.create_task(consumer())
        for number in range(5):
            await queue.put(number)  # blocks while the single slot is taken
        await compat.wait_for(task, 2)
        return got

    assert compat.run(scenario()) == [0, 1, 2, 3, 4]


def test_queue_put_and_get_wait_for_each_other():
    _check_blocking(compat.Queue)


def test_list_queue_put_and_get_wait_for_each_other():
    _check_blocking(compat.ListQueue)


def _check_many_getters_and_timeouts(make_queue):
    async def scenario():
        queue = make_queue()
        try:
            await compat.wait_for(queue.get(), 0.01)
        except compat.TimeoutError:
            pass
        else:
            raise AssertionError("get on an empty queue must time out")
        got = []

        async def getter():
            got.append(await queue.get())

        tasks = [compat.create_task(getter()) for _ in range(3)]
        await compat.sleep(0)  # let all three wait
        for number in range(3):
            queue.put_nowait(number)
        await compat.wait_for(compat.gather(*tasks), 2)
        # the timed-out get took nothing: every item reached a getter
        return sorted(got), queue.qsize()

    assert compat.run(scenario()) == ([0, 1, 2], 0)


def test_queue_waiting_getters_and_timeouts():
    _check_many_getters_and_timeouts(compat.Queue)


def test_list_queue_waiting_getters_and_timeouts():
    _check_many_getters_and_timeouts(compat.ListQueue)


def test_list_queue_keeps_order_over_many_items():
    queue = compat.ListQueue()
    for number in range(1000):
        queue.put_nowait(number)
    out = []
    for number in range(1000, 1500):
        out.append(queue.get_nowait())
        queue.put_nowait(number)
    while not queue.empty():
        out.append(queue.get_nowait())
    assert out == list(range(1500))


def test_wait_for_timeout_and_result():
    async def slow():
        await compat.sleep(5)

    async def quick():
        return "done"

    async def scenario():
        try:
            await compat.wait_for(slow(), 0.01)
        except compat.TimeoutError:
            timed_out = True
        else:
            timed_out = False
        return timed_out, await compat.wait_for(quick(), 1)

    assert compat.run(scenario()) == (True, "done")


def test_gather_keeps_order():
    async def value(number):
        await compat.sleep(0)
        return number * 2

    async def scenario():
        return await compat.gather(value(1), value(2), value(3))

    assert list(compat.run(scenario())) == [2, 4, 6]


def test_cancelled_task_raises_cancelled_error():
    async def scenario():
        started = compat.Event()

        async def forever():
            started.set()
            await compat.sleep(60)

        task = compat.create_task(forever())
        await started.wait()
        task.cancel()
        try:
            await task
        except compat.CancelledError:
            return "cancelled"
        return "not cancelled"

    assert compat.run(scenario()) == "cancelled"


def test_lock_serialises_critical_sections():
    async def scenario():
        lock = compat.Lock()
        trace = []

        async def worker(name):
            async with lock:
                trace.append(name + " in")
                await compat.sleep(0)
                trace.append(name + " out")

        await compat.gather(worker("a"), worker("b"))
        return trace

    assert compat.run(scenario()) == ["a in", "a out", "b in", "b out"]
