"""compat: wrapping ticks arithmetic and the asyncio shim (wait_for, tasks)."""

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
