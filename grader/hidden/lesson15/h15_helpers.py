"""Test code that lesson 15's hidden tests run on the learner's side (the ``learner_helper`` fixture).

The engine calls ``step`` from its own thread, and the engine loop's coroutines share one
event loop with the test's: that code has to run where the engine does. What it observes
comes back as plain data, and the tests judge it.
"""

import asyncio
import threading
import time


def slowed(step, delay: float):
    """``step`` made ``delay`` seconds slower a call: a request lasts long enough to be cancelled mid-way."""

    def slow_step():
        time.sleep(delay)
        return step()

    return slow_step


async def _collect(async_engine, token_ids, params) -> list:
    """One request's outputs as [(new token ids, finish reason), ...]."""
    outputs = []
    async for output in async_engine.generate(token_ids, params):
        outputs.append((list(output.new_token_ids), output.finish_reason))
    return outputs


def run_concurrently(async_engine, jobs, timeout: float) -> list:
    """Run every (token ids, params) job at once through ``async_engine.generate``; their outputs."""

    async def main():
        return await asyncio.gather(*(_collect(async_engine, ids, params) for ids, params in jobs))

    return asyncio.run(asyncio.wait_for(main(), timeout))


def abort_a_waiting_request(async_engine, engine, first_ids, second_ids, params, timeout: float) -> dict:
    """Start two requests on a one-sequence engine, close the second while it waits; what was seen."""

    async def main():
        first = asyncio.ensure_future(_collect(async_engine, first_ids, params))
        second = async_engine.generate(second_ids, params)
        waiter = asyncio.ensure_future(second.__anext__())
        await asyncio.sleep(0.2)
        seen = {"second_done_early": waiter.done(), "waiting": len(engine.scheduler.waiting)}
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await second.aclose()
        seen["first_outputs"] = await first
        return seen

    return asyncio.run(asyncio.wait_for(main(), timeout))


def put_from_a_thread(stream_class, params, output, delay: float) -> tuple:
    """A RequestStream on a running loop gets ``output`` put from a plain thread; (what the loop got, closed)."""

    async def main():
        stream = stream_class([1], params, asyncio.get_running_loop())
        threading.Timer(delay, stream.put, args=(output,)).start()
        got = await asyncio.wait_for(stream.queue.get(), timeout=5)
        return got, stream.closed

    return asyncio.run(main())
